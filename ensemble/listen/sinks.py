"""Where the alerts of `emergency-ensemble listen` go: stdout, a private JSONL log, a webhook, a
command.

An alert is a plain JSON-serialisable dict. Every sink has `send(alert)`, which returns quickly and
never raises when delivery fails (it logs a warning), and `close(timeout_s)`, which waits for the
deliveries still pending and logs how many were not made in time.

- `StdoutSink`: one JSON line per alert.
- `LogSink`: the append-only JSONL record (mode 0600, each alert fsync-ed before `send` returns):
  the one sink that never loses an alert; the others may fail and say so.
- `WebhookSink`: a JSON POST per alert from a background thread, retried with backoff. When the
  environment variable `EMERGENCY_WEBHOOK_SECRET` is set, each request is signed:
  `X-Emergency-Signature: sha256=<HMAC-SHA256 of the body>`. A receiver checks it with `verify`:

      body = request.body  # the raw bytes as received, before the JSON is parsed
      signature = request.headers.get("X-Emergency-Signature", "")
      if not verify(body, os.environ["EMERGENCY_WEBHOOK_SECRET"], signature): reject with 401

- `CommandSink` (`--on-alert "CMD"`): runs the command once per alert, without a shell, the alert's
  JSON line on its stdin (the alert's fields never reach a shell or the command line).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import queue
import shlex
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol, TextIO

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Emergency-Signature"
ALERT_ID_HEADER = "X-Emergency-Alert-Id"


class Sink(Protocol):
    """What the listener needs of a sink."""

    def send(self, alert: dict) -> None: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


def json_line(alert: dict) -> str:
    """The alert as one line of JSON, newline included (non-ASCII text kept as it is)."""
    return json.dumps(alert, ensure_ascii=False, sort_keys=False) + "\n"


def _alert_id(alert: dict) -> str:
    return str(alert.get("id", "")) if isinstance(alert, dict) else ""


def _encode(alert: dict, sink: str) -> str | None:
    """`json_line(alert)`, or None with a warning when the alert is not JSON-serialisable."""
    try:
        return json_line(alert)
    except (TypeError, ValueError) as e:
        log.warning(
            "%s: alert %r is not JSON-serialisable, not sent: %s", sink, _alert_id(alert), e
        )
        return None


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: "sha256=" + hex HMAC-SHA256 of `body` keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """Whether `header` is the signature of `body` with `secret` (constant-time comparison)."""
    if not secret or not header:
        return False
    return hmac.compare_digest(sign(body, secret).encode(), header.encode("utf-8", "replace"))


class StdoutSink:
    """One JSON line per alert on `stream` (`sys.stdout` at the time of sending by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, alert: dict) -> None:
        line = _encode(alert, "stdout")
        if line is None:
            return
        stream = self.stream if self.stream is not None else sys.stdout
        try:
            with self._lock:
                stream.write(line)
                stream.flush()
        except (OSError, ValueError) as e:  # a closed pipe or a closed file
            log.warning("stdout: alert %r not written: %s", _alert_id(alert), e)

    def close(self, timeout_s: float = 10.0) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class LogSink:
    """The append-only JSONL record of every alert: mode 0600, each line fsync-ed as it is written.

    The parent folder is created with mode 0700 when missing; an existing file readable by others
    is made 0600 (with a warning).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        mode = os.fstat(self._fd).st_mode & 0o777
        if mode & ~0o600:
            log.warning("alert log %s had mode %o: set to 600", self.path, mode)
            os.fchmod(self._fd, 0o600)
        self._lock = threading.Lock()

    def send(self, alert: dict) -> None:
        line = _encode(alert, "alert log")
        if line is None:
            return
        data = line.encode("utf-8")
        try:
            with self._lock:
                if self._fd is None:
                    raise OSError("the log is closed")
                while data:  # os.write may write only part of it
                    data = data[os.write(self._fd, data) :]
                os.fsync(self._fd)
        except OSError as e:
            log.warning("alert log %s: alert %r not written: %s", self.path, _alert_id(alert), e)

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class _Worker:
    """Delivers alerts in order from one daemon thread fed by a queue: `send` only enqueues.

    Subclasses give `_body` (the bytes an alert is delivered as, made when it is sent, so later
    changes to the dict do not matter) and `_deliver` (True when delivered; it logs its failures).
    """

    kind = "sink"  # names the sink in warnings

    def __init__(self) -> None:
        self.delivered = self.failed = 0
        self._pending = 0  # queued or being delivered
        self._closed = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-sink", daemon=True)
        self._thread.start()

    def _body(self, alert: dict) -> bytes:
        return json_line(alert).encode("utf-8")

    def _deliver(self, alert_id: str, body: bytes) -> bool:
        raise NotImplementedError

    def _count(self, ok: bool, queued: bool = False) -> None:
        with self._lock:
            self._pending -= int(queued)
            if ok:
                self.delivered += 1
            else:
                self.failed += 1

    def send(self, alert: dict) -> None:
        alert_id = _alert_id(alert)
        try:
            body = self._body(alert)
        except (TypeError, ValueError) as e:
            log.warning(
                "%s: alert %r is not JSON-serialisable, not sent: %s", self.kind, alert_id, e
            )
            self._count(False)
            return
        with self._lock:
            if self._closed:
                log.warning("%s: closed, alert %r not sent", self.kind, alert_id)
                self.failed += 1
                return
            self._pending += 1
            self._queue.put((alert_id, body))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            alert_id, body = item
            try:
                ok = self._deliver(alert_id, body)
            except Exception as e:  # the worker must outlive any one alert
                log.warning("%s: alert %r not delivered: %r", self.kind, alert_id, e)
                ok = False
            self._count(ok, queued=True)

    def close(self, timeout_s: float = 10.0) -> None:
        """Waits up to `timeout_s` for the alerts still queued; the worker stops after them."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(max(timeout_s, 0.0))
        with self._lock:
            pending = self._pending
        if pending:
            log.warning(
                "%s: %d alert(s) not delivered within %.1f s of closing",
                self.kind,
                pending,
                timeout_s,
            )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery (status >= 300), not a signed POST replayed elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class WebhookSink(_Worker):
    """POSTs each alert as JSON from a background thread, `1 + retries` tries with backoff.

    A try fails on an HTTP status >= 300 (redirects are not followed), a connection error or
    `timeout_s` without an answer; the next waits `backoff_s * 2**i`. HTTPS certificates are
    verified, against `cafile` instead of the system's CAs when it is given. With the environment
    variable `secret_env` set (read here, once), requests are signed (`sign`).
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        secret_env: str = "EMERGENCY_WEBHOOK_SECRET",
        cafile: str | Path | None = None,
    ):
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:  # a malformed IPv6 address
            parts = urllib.parse.SplitResult("", "", "", "", "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http:// or https:// with a host: {url!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            log.warning(
                "webhook to %s is plain http: alerts and their clip paths travel unencrypted",
                parts.hostname,  # not the URL: its path or query may hold a token
            )
        self.url, self.host = url, parts.hostname
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(int(retries), 0), backoff_s
        self._secret = os.environ.get(secret_env) or None
        context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
        self._opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPSHandler(context=context)
        )
        super().__init__()

    def _body(self, alert: dict) -> bytes:
        return json.dumps(alert, ensure_ascii=False).encode("utf-8")

    def _request(self, alert_id: str, body: bytes) -> urllib.request.Request:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            ALERT_ID_HEADER: alert_id,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def _deliver(self, alert_id: str, body: bytes) -> bool:
        request = self._request(alert_id, body)
        error = ""
        for i in range(1 + self.retries):
            if i:
                time.sleep(self.backoff_s * 2 ** (i - 1))
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    response.read(1 << 16)  # the answer is not used; read a bounded part
                    if response.status < 300:
                        return True
                    error = f"HTTP {response.status}"
            except urllib.error.HTTPError as e:  # before URLError, its base class
                error = f"HTTP {e.code}"
                e.close()
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, timeouts, resets, a malformed answer or header
                error = getattr(e, "reason", None) or e
            log.info("webhook: try %d for alert %r failed: %s", i + 1, alert_id, error)
        log.warning(
            "webhook to %s: alert %r not delivered after %d tries: %s",
            self.host,
            alert_id,
            1 + self.retries,
            error,
        )
        return False


class CommandSink(_Worker):
    """`--on-alert "CMD"`: runs the command for each alert from a background thread.

    The command is split once, here, with `shlex.split` and run without a shell; the alert's JSON
    line is its stdin, so nothing of the alert reaches a shell or the command's arguments.
    """

    kind = "on-alert"

    def __init__(self, command: str, timeout_s: float = 30.0):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise ValueError(f"--on-alert command cannot be split: {command!r}: {e}") from None
        if not argv:
            raise ValueError(f"--on-alert command is empty: {command!r}")
        self.command, self.argv, self.timeout_s = command, argv, timeout_s
        super().__init__()

    def _deliver(self, alert_id: str, body: bytes) -> bool:
        try:
            done = subprocess.run(
                self.argv,
                input=body,
                timeout=self.timeout_s,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                shell=False,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            why, stderr = f"timed out after {self.timeout_s:g} s", e.stderr
        except OSError as e:  # not found, not executable
            why, stderr = f"could not start: {e}", b""
        else:
            if done.returncode == 0:
                return True
            why, stderr = f"exit code {done.returncode}", done.stderr
        lines = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
        last = lines[-1][:300] if lines else ""
        log.warning(
            "on-alert %r for alert %r failed (%s): %s", self.argv[0], alert_id, why, last or "-"
        )
        return False
