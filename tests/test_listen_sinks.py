"""The alert sinks of `emergency-ensemble listen` against a real local HTTP server and real
subprocesses, and the private clip folder."""

import io
import json
import logging
import os
import shlex
import stat
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ensemble.listen.clips import private_dir, prune_clips, save_clip
from ensemble.listen.sinks import (
    CommandSink,
    LogSink,
    StdoutSink,
    WebhookSink,
    json_line,
    sign,
    verify,
)

SECRET_ENV = "EMERGENCY_WEBHOOK_SECRET"
ALERT = {"id": "a1", "label": "도와주세요", "score": 0.93, "clip": "/clips/a1.wav"}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Requests to the local server go straight to it, whatever proxy the machine sets."""
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


class Receiver:
    """What a local webhook server got, and how it answers: `statuses` in turn, then `default`;
    with `hang`, it does not answer until the test ends."""

    def __init__(self, statuses=(), default=200, hang=False):
        self.statuses, self.default, self.hang = list(statuses), default, hang
        self.requests = []  # (headers, body)
        self.release = threading.Event()


@pytest.fixture
def serve():
    """serve(**Receiver options) -> (url, receiver): a ThreadingHTTPServer on 127.0.0.1."""
    servers = []

    def start(**options):
        receiver = Receiver(**options)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.headers, body))
                if receiver.hang:
                    receiver.release.wait(5)
                    return
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, receiver))
        return f"http://127.0.0.1:{server.server_address[1]}/hook", receiver

    yield start
    for server, receiver in servers:
        receiver.release.set()
        server.shutdown()
        server.server_close()


# stdout and the log


def test_stdout_sink_writes_one_json_line_per_alert():
    stream = io.StringIO()
    sink = StdoutSink(stream)
    sink.send(ALERT)
    sink.send({"id": "a2", "transcript": "불이야! 119 불러"})
    sink.close()
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        ALERT,
        {"id": "a2", "transcript": "불이야! 119 불러"},
    ]
    assert "도와주세요" in lines[0]  # not \\uXXXX escapes
    assert json_line(ALERT) == lines[0] + "\n"


def test_log_sink_is_private_and_appends(tmp_path):
    path = tmp_path / "logs" / "alerts.jsonl"
    sink = LogSink(path)
    sink.send(ALERT)
    sink.close()
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    sink = LogSink(path)  # a second run appends
    sink.send({"id": "a2"})
    sink.close()
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        ALERT,
        {"id": "a2"},
    ]
    sink.send({"id": "a3"})  # after close: a warning, no exception


def test_log_sink_tightens_an_existing_open_file(tmp_path, caplog):
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"id": "old"}\n', encoding="utf-8")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ensemble.listen.sinks"):
        sink = LogSink(path)
    sink.send(ALERT)
    sink.close()
    assert mode(path) == 0o600
    assert "600" in caplog.text
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


# the webhook


def test_webhook_posts_the_alert_signed(serve, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    url, receiver = serve()
    sink = WebhookSink(url, timeout_s=2)
    sink.send(ALERT)
    sink.close(timeout_s=5)
    assert (sink.delivered, sink.failed) == (1, 0)
    [(headers, body)] = receiver.requests
    assert json.loads(body) == ALERT
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Emergency-Alert-Id"] == "a1"
    signature = headers["X-Emergency-Signature"]
    assert signature == sign(body, "s3cret") and signature.startswith("sha256=")
    assert verify(body, "s3cret", signature)
    assert not verify(body.replace(b"0.93", b"0.01"), "s3cret", signature)
    assert not verify(body, "wrong", signature)
    assert not verify(body, "s3cret", "")


def test_webhook_without_a_secret_is_unsigned(serve, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    url, receiver = serve()
    sink = WebhookSink(url, timeout_s=2)
    sink.send(ALERT)
    sink.close(timeout_s=5)
    [(headers, _)] = receiver.requests
    assert headers.get("X-Emergency-Signature") is None
    assert headers["X-Emergency-Alert-Id"] == "a1"


def test_webhook_retries_until_delivered(serve):
    url, receiver = serve(statuses=[500, 500])
    sink = WebhookSink(url, timeout_s=2, retries=3, backoff_s=0.01)
    sink.send(ALERT)
    sink.close(timeout_s=5)
    assert (sink.delivered, sink.failed) == (1, 0)
    assert len(receiver.requests) == 3


def test_webhook_hanging_server_never_blocks_the_caller(serve):
    url, receiver = serve(hang=True)
    sink = WebhookSink(url, timeout_s=0.3, retries=0)
    t0 = time.perf_counter()
    sink.send(ALERT)
    assert time.perf_counter() - t0 < 0.1
    sink.close(timeout_s=3)
    assert time.perf_counter() - t0 < 3
    assert (sink.delivered, sink.failed) == (0, 1)
    assert len(receiver.requests) == 1  # it got there, and was not answered in time


def test_webhook_failure_is_counted_and_logged(serve, caplog):
    url, receiver = serve(default=500)
    sink = WebhookSink(url, timeout_s=2, retries=1, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="ensemble.listen.sinks"):
        sink.send(ALERT)
        sink.close(timeout_s=5)
    assert (sink.delivered, sink.failed) == (0, 1)
    assert len(receiver.requests) == 2
    [record] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert record.levelno == logging.WARNING and "'a1'" in record.getMessage()


def test_webhook_url_must_be_http(caplog):
    for url in ("ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "http://"):
        with pytest.raises(ValueError, match="webhook URL"):
            WebhookSink(url)
    with caplog.at_level(logging.WARNING, logger="ensemble.listen.sinks"):
        WebhookSink("http://localhost:9/hook").close(0)
        WebhookSink("http://[::1]:9/hook").close(0)
        WebhookSink("https://example.com/hook").close(0)
        assert "unencrypted" not in caplog.text
        WebhookSink("http://example.com/hook?token=abc").close(0)
    assert "unencrypted" in caplog.text and "token" not in caplog.text


# the command


def writer_command(out) -> str:
    """A command that copies its stdin to `out`."""
    code = f"import sys; open({str(out)!r}, 'w', encoding='utf-8').write(sys.stdin.read())"
    return shlex.join([sys.executable, "-c", code])


def test_command_gets_the_alert_on_stdin(tmp_path):
    out = tmp_path / "alert.json"
    sink = CommandSink(writer_command(out))
    sink.send(ALERT)
    sink.close(timeout_s=10)
    assert (sink.delivered, sink.failed) == (1, 0)
    assert out.read_text(encoding="utf-8") == json_line(ALERT)


def test_command_never_interprets_the_alert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "alert.json"
    alert = {
        "id": "$(touch PWNED)",
        "transcript": '"; rm -rf ~ $(touch PWNED) `touch PWNED2` | tee x && echo"',
    }
    sink = CommandSink(writer_command(out))
    sink.send(alert)
    sink.close(timeout_s=10)
    assert sink.delivered == 1
    assert json.loads(out.read_text(encoding="utf-8")) == alert
    assert sorted(os.listdir(tmp_path)) == ["alert.json"]


def test_command_failure_is_counted_and_logged(caplog):
    code = "import sys; sys.stderr.write('first\\nboom\\n'); sys.exit(1)"
    sink = CommandSink(shlex.join([sys.executable, "-c", code]))
    with caplog.at_level(logging.WARNING, logger="ensemble.listen.sinks"):
        sink.send(ALERT)
        sink.close(timeout_s=10)
    assert (sink.delivered, sink.failed) == (0, 1)
    assert "exit code 1" in caplog.text and "boom" in caplog.text and "first" not in caplog.text


def test_close_names_the_alerts_not_delivered_in_time(caplog):
    sink = CommandSink(shlex.join([sys.executable, "-c", "import time; time.sleep(0.5)"]))
    with caplog.at_level(logging.WARNING, logger="ensemble.listen.sinks"):
        sink.send(ALERT)
        sink.send({"id": "a2"})
        t0 = time.perf_counter()
        sink.close(timeout_s=0.1)
    assert time.perf_counter() - t0 < 0.5
    assert "2 alert(s) not delivered" in caplog.text
    sink.send({"id": "a3"})  # after close: counted as failed, not queued
    assert sink.failed == 1


def test_command_must_split():
    for command in ("", "   ", "notify 'unclosed"):
        with pytest.raises(ValueError, match="--on-alert"):
            CommandSink(command)


# clips


def test_save_clip_is_private_and_reads_back(tmp_path):
    samples = np.sin(np.linspace(0, 40, 16000)).astype(np.float32) * 1.2  # some clipped
    path = save_clip(tmp_path / "clips", "alert-1", samples)
    assert path == tmp_path / "clips" / "alert-1.wav"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    with wave.open(str(path), "rb") as w:
        assert (w.getnframes(), w.getframerate(), w.getnchannels(), w.getsampwidth()) == (
            16000,
            16000,
            1,
            2,
        )
        back = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32767
    assert np.abs(back - np.clip(samples, -1, 1)).max() <= 1 / 32767
    pcm = np.array([0, 1, -32768, 32767], dtype=np.int16)
    with wave.open(str(save_clip(tmp_path / "clips", "int16", pcm)), "rb") as w:
        assert np.array_equal(np.frombuffer(w.readframes(4), dtype="<i2"), pcm)
    with pytest.raises(FileExistsError):
        save_clip(tmp_path / "clips", "alert-1", samples)


def test_save_clip_rejects_bad_names(tmp_path):
    for name in ("../escape", "a/b", ".hidden", "", "a\\b"):
        with pytest.raises(ValueError, match="clip name"):
            save_clip(tmp_path, name, np.zeros(10, dtype=np.float32))
    assert os.listdir(tmp_path) == []


def test_private_dir_tightens_an_open_folder(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert private_dir(folder) == folder and mode(folder) == 0o700


def test_prune_clips_removes_only_old_clips(tmp_path):
    now = time.time()
    folder = tmp_path / "clips"
    for name, age_days in (("old", 10), ("older", 40), ("new", 1)):
        path = save_clip(folder, name, np.zeros(10, dtype=np.float32))
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    (folder / "notes.txt").write_text("kept")
    os.utime(folder / "notes.txt", (now - 100 * 86400, now - 100 * 86400))
    assert prune_clips(folder, keep_days=0, now=now) == 0  # keep forever
    assert prune_clips(folder, keep_days=7, now=now) == 2
    assert sorted(os.listdir(folder)) == ["new.wav", "notes.txt"]
    assert prune_clips(tmp_path / "missing", keep_days=7) == 0
