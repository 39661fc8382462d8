"""`emergency-ensemble listen`: the ring buffer, the alert gate, and streams through the real
command with scripted members (the unit under test is the listener) and with tiny real members."""

from __future__ import annotations

import http.server
import io
import json
import os
import stat
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from helpers import write_noise
from scripted import script_config

from ensemble.cli import main
from ensemble.listen.listener import AlertGate, Listener, ListenOptions, Ring, Scorer, alerting
from ensemble.listen.sinks import verify
from ensemble.listen.sources import FfmpegSource, StdinSource, open_source, pcm_blocks

SR = 16000
SECRET = "correct horse battery staple"
NASTY = "불이야! $(touch PWNED) `touch PWNED2`; rm -rf ~ | tee x && echo \"'"


def pcm(segments: list[tuple[float, float]], seed: int = 0) -> bytes:
    """s16le PCM: (seconds, level) segments of noise."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, level, int(s * SR)) for s, level in segments])
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


class Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver; the server's `mode` is ok | fail (500) | hang."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        if server.mode == "hang":
            server.release.wait(60)  # answers only when the test ends
        if server.mode in ("fail", "hang"):
            self.send_response(500)
            self.end_headers()
            return
        server.posts.append((body, self.headers.get("X-Emergency-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hooks():
    servers = {}
    for mode in ("ok", "fail", "hang"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        server.mode, server.posts, server.daemon_threads = mode, [], True
        server.release = threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[mode] = server
    yield servers
    for server in servers.values():
        server.release.set()
        server.shutdown()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/alert"


def listen(monkeypatch, stdin: bytes, *args: str) -> int:
    """`emergency-ensemble listen - ARGS` in this process, `stdin` piped in."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return main(["listen", "-", *args])


def alerts(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_ring_keeps_the_newest_samples_across_the_wrap():
    ring = Ring(5)
    ring.append(np.arange(3, dtype=np.float32))
    assert ring.last(10).tolist() == [0, 1, 2]
    ring.append(np.arange(3, 7, dtype=np.float32))
    assert ring.last(5).tolist() == [2, 3, 4, 5, 6] and ring.last(2).tolist() == [5, 6]
    ring.append(np.arange(10, 22, dtype=np.float32))  # longer than the ring
    assert ring.last(5).tolist() == [17, 18, 19, 20, 21]
    ring.clear()
    assert ring.last(5).size == 0


def test_alert_gate_confirms_holds_back_and_clears():
    gate = AlertGate(confirm=2, cooldown_s=10)
    said = [gate.update(e, t) for t, e in enumerate([0, 1, 1, 1, 0, 1, 1, 1, 0, 0], start=1)]
    # t=2,3: confirmed at 3; t=5: clear; t=6,7: confirmed at 7 but within 10 s of 3: held back
    assert said == [None, None, "alert", None, "clear", None, "held", None, None, None]
    assert [gate.update(True, t) for t in (13, 14)] == [None, "alert"]  # cooled down at 13
    with pytest.raises(ValueError, match="confirm"):
        AlertGate(confirm=0)


def test_min_score_is_a_stricter_bar_on_top_of_the_vote():
    rows = [
        {"emergency": True, "score": 0.95},
        {"emergency": True, "score": 0.7},
        {"emergency": False, "score": 0.99},  # the vote says normal: never an alert
        {"emergency": True, "score": None},  # no member had an opinion
    ]
    assert [alerting(r, None) for r in rows] == [True, True, False, True]
    assert [alerting(r, 0.9) for r in rows] == [True, False, False, False]


def test_a_stream_of_two_events_gives_two_alerts_to_every_sink(
    tmp_path, monkeypatch, capsys, hooks
):
    """normal 20 s, fire 8 s, normal 30 s, fall 8 s, normal 14 s through `listen -`: exactly two
    alerts, each with its class, a time inside its event and a 0600 WAV; the good webhook gets
    both, signed; a failing and a hanging webhook neither block nor lose them."""
    events = [[20.0, 28.0, "fire"], [58.0, 66.0, "fall"]]
    config = script_config(tmp_path / "cfg", events, transcript=NASTY)
    stream = pcm([(20, 0.01), (8, 0.3), (30, 0.01), (8, 0.3), (14, 0.01)])
    got = tmp_path / "on_alert.jsonl"
    command = (
        f"{sys.executable} -c 'import sys; open(sys.argv[1], \"a\").write(sys.stdin.read())' {got}"
    )
    monkeypatch.setenv("EMERGENCY_WEBHOOK_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    code = listen(
        monkeypatch,
        stream,
        *("--config", str(config), "--out", "out", "--hop", "2", "--window", "10"),
        *("--cooldown", "20", "--location", "living room", "--device-id", "home-1"),
        *("--webhook", url(hooks["ok"]), "--webhook", url(hooks["fail"])),
        *("--webhook", url(hooks["hang"]), "--webhook-timeout", "20"),
        *("--webhook-retries", "0", "--on-alert", command),
    )
    wall = time.monotonic() - t0
    assert code == 0
    out = alerts(capsys.readouterr().out)
    assert [a["class"] for a in out] == ["fire", "fall"]
    assert [a["class_ko"] for a in out] == ["화재", "낙상"]
    for alert, (start, _, _) in zip(out, events, strict=True):
        assert start <= alert["stream_s"] <= start + 2  # the first hop that hears it
        assert alert["since_s"] <= start
        assert alert["location"] == "living room" and alert["device_id"] == "home-1"
        assert alert["transcript"] == NASTY
        assert all(v["vote"] for v in alert["votes"].values())
        clip = Path(alert["clip"])
        assert stat.S_IMODE(clip.stat().st_mode) == 0o600
        with wave.open(str(clip)) as w:
            assert w.getframerate() == SR and w.getnframes() == alert["clip_s"] * SR
    log = Path("out/alerts.jsonl")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert alerts(log.read_text()) == out  # the log holds every alert, whatever the webhooks did
    posts = hooks["ok"].posts
    assert [json.loads(body) for body, _ in posts] == out
    assert all(verify(body, SECRET, signature) for body, signature in posts)
    assert not verify(posts[0][0], "wrong secret", posts[0][1])
    # the hanging webhook holds each POST for its 20 s timeout: had a send blocked the listener,
    # the two alerts alone would take 40 s; it costs only the sinks' 10 s wait when closing
    assert wall < 30
    # the nasty transcript reached the command only as JSON on stdin, never a shell
    assert [json.loads(line) for line in got.read_text().splitlines()] == out
    assert not any(Path(name).exists() for name in ("PWNED", "PWNED2", "x"))


def test_confirm_needs_hops_in_a_row_and_cooldown_holds_alerts_back(tmp_path, monkeypatch, caplog):
    events = [[10.0, 11.0, "fire"], [30.0, 40.0, "violence"], [50.0, 58.0, "fall"]]
    config = script_config(tmp_path, events)
    log = tmp_path / "a.jsonl"
    args = ("--config", str(config), "--out", str(tmp_path / "o"), "--no-stdout", "--log", str(log))
    code = listen(monkeypatch, pcm([(70, 0.01)]), *args, "--confirm", "3", "--cooldown", "25")
    assert code == 0
    # a 10 s window hears the fire from hop 12 on: the third hop in a row (16) alerts; the
    # violence, confirmed at 36, is held back until 25 s after that alert (41) and alerts at 42 as
    # it still holds; the fall, confirmed at 56, is held back until 67 and is over by then
    assert [(a["class"], a["stream_s"]) for a in alerts(log.read_text())] == [
        ("fire", 16.0),
        ("violence", 42.0),
    ]
    held = [r.getMessage() for r in caplog.records if "held back" in r.getMessage()]
    assert len(held) == 2 and held[0].startswith("36.0 s") and held[1].startswith("56.0 s")


def test_clips_older_than_keep_days_are_removed(tmp_path, monkeypatch):
    old = tmp_path / "o" / "clips" / "old.wav"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"RIFF")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    recent = old.with_name("recent.wav")
    recent.write_bytes(b"RIFF")
    config = script_config(tmp_path, [[1.0, 3.0, "fire"]])
    args = ("--config", str(config), "--out", str(tmp_path / "o"), "--keep-days", "2")
    assert listen(monkeypatch, pcm([(6, 0.01)]), *args) == 0
    clips = sorted(p.name for p in old.parent.iterdir())
    assert "old.wav" not in clips and "recent.wav" in clips and len(clips) == 2
    assert stat.S_IMODE(old.parent.stat().st_mode) == 0o700


def test_stdin_at_48k_stereo_is_resampled_to_16k_mono():
    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype("<i2")
    stereo = np.stack([tone, tone], axis=1).tobytes()
    x = np.concatenate(list(pcm_blocks(io.BytesIO(stereo + b"\x01"), 48000, 2)))
    assert abs(len(x) - 2 * SR) <= 16
    spectrum = np.abs(np.fft.rfft(x[SR // 2 : SR // 2 + SR]))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1  # 1 Hz bins: the tone is still 1 kHz
    assert 0.45 < np.abs(x[1000:-1000]).max() < 0.55


def test_a_stalled_stdin_is_reported_and_listening_goes_on(tmp_path, caplog):
    read, write = os.pipe()

    def feed():
        with os.fdopen(write, "wb") as f:
            f.write(pcm([(3, 0.01)]))
            f.flush()
            time.sleep(1.2)  # the stream stalls
            f.write(pcm([(3, 0.01)]))

    threading.Thread(target=feed, daemon=True).start()
    config = script_config(tmp_path, [])
    with os.fdopen(read, "rb") as stream:
        listener = Listener(
            StdinSource(stream=stream),
            Scorer(_load(config)),
            [],
            ListenOptions(out=tmp_path / "o", stall_s=0.4),
        )
        summary = listener.run()
    assert summary.stream_s == pytest.approx(6.0)
    assert summary.hops == 3
    assert "no audio for 0.4 s" in caplog.text


def test_a_wav_file_on_stdin_is_a_clear_error_not_noise(tmp_path, monkeypatch, caplog):
    from helpers import noise_wav

    config = script_config(tmp_path, [])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(noise_wav(2.0))))
    assert main(["listen", "-", "--config", str(config), "--out", str(tmp_path / "o")]) == 1
    assert "stdin: a wav file, not raw PCM" in caplog.text


def test_garbage_from_ffmpeg_is_a_clear_error_naming_the_source(tmp_path, caplog):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(20000))
    config = script_config(tmp_path, [])
    code = main(["listen", str(bad), "--config", str(config), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "ffmpeg cannot read" in caplog.text and "garbage.wav" in caplog.text


def test_a_url_that_ends_is_reconnected_with_backoff(tmp_path, caplog):
    clip = write_noise(tmp_path / "www" / "clip.wav", seconds=3)

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(clip.parent), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = open_source(f"http://127.0.0.1:{server.server_address[1]}/clip.wav")
        assert isinstance(source, FfmpegSource) and source.reconnect
        options = ListenOptions(out=tmp_path / "o", backoff_s=0.05, max_reconnects=2)
        listener = Listener(source, Scorer(_load(script_config(tmp_path, []))), [], options)
        with pytest.raises(RuntimeError, match="gave up after 2 reconnects"):
            listener.run()
    finally:
        server.shutdown()
    assert listener.summary.reconnects == 2
    assert listener.summary.stream_s == pytest.approx(9.0, abs=0.1)  # the clip, three times
    assert caplog.text.count("the stream ended; reconnecting") == 3


def test_mic_without_portaudio_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # an ImportError on import
    with pytest.raises(RuntimeError, match=r"pip install 'emergency-ensemble\[mic\]'"):
        open_source("mic")


def test_a_url_password_is_hidden_in_the_source_name_that_logs_and_alerts_carry():
    source = FfmpegSource("rtsp://admin:hunter2@cam.local:554/live")
    assert "hunter2" not in source.name and "admin:***@cam.local" in source.name


def test_listen_with_tiny_real_members_reads_a_file_through_ffmpeg(
    ensemble_config, tmp_path, capsys
):
    clip = write_noise(tmp_path / "clip.wav", seconds=7, level=0.02)
    hops = tmp_path / "hops.jsonl"
    args = ["listen", str(clip), "--config", str(ensemble_config), "--out", str(tmp_path / "o")]
    assert main([*args, "--record-hops", str(hops), "--hop", "3"]) == 0
    rows = [json.loads(line) for line in hops.read_text().splitlines()]
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(0.0, 3.0), (0.0, 6.0)]
    assert {"p_whisper_head", "vote_cnn", "p_anomaly", "transcript"} <= set(rows[0])
    assert stat.S_IMODE(hops.stat().st_mode) == 0o600
    assert "2 hops" in capsys.readouterr().err


def _load(config: Path):
    from ensemble.config import load_config

    return load_config(config)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_systemd_stop_ends_cleanly_and_keeps_the_alerts(tmp_path, sig):
    """The real command on a pipe that stays open: after an alert, Ctrl-C (or systemd's SIGTERM)
    stops it with status 0, its summary, and the alert in the log."""
    import signal
    import subprocess

    config = script_config(tmp_path, [[4.0, 8.0, "fall"]])
    log = tmp_path / "o" / "alerts.jsonl"
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    command = [sys.executable, "-m", "ensemble.cli", "listen", "-", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--out", str(tmp_path / "o")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        proc.stdin.write(pcm([(12, 0.01)]))
        proc.stdin.flush()  # the pipe stays open: a live stream
        deadline = time.monotonic() + 90
        while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert [a["class"] for a in alerts(out.decode())] == ["fall"]
    assert alerts(log.read_text()) == alerts(out.decode())
    assert "listened to 12.0 s of audio" in err.decode()
