"""Where live audio comes from: a microphone, raw PCM on stdin, or anything ffmpeg can read.

`open_source(spec)` gives a `Source` whose `read(timeout_s)` returns the next block of float32
mono samples at 16 kHz, `None` when the stream has ended, or raises `StallError` (nothing arrived
within the timeout) or `StreamError` (the stream failed: the message says why). Each source reads
in its own thread into a bounded queue, so a stalled device never blocks the caller:

- `mic` or `mic:DEVICE`: PortAudio through `sounddevice` (the `mic` extra), at the device's rate,
  resampled to 16 kHz;
- `-`: raw signed 16-bit little-endian PCM on stdin at `--rate` with `--channels`;
- anything else: a URL (rtsp://, http://, ...) or a file, decoded by an ffmpeg subprocess.

Devices and URLs are `reconnect`-able: the listener reopens them with backoff after a failure.
"""

from __future__ import annotations

import collections
import logging
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from ensemble.core.audio import SAMPLE_RATE, sniff

log = logging.getLogger(__name__)

BLOCK_S = 0.1  # seconds per block read from a source
_END = object()


class StreamError(RuntimeError):
    """The stream failed (a device vanished, ffmpeg could not decode, ...)."""


class StallError(TimeoutError):
    """No audio arrived within the read timeout."""


class Source:
    """A stream of float32 mono 16 kHz blocks, pumped by a reader thread into a queue.

    Subclasses implement `_blocks()`, a generator of blocks (it may raise StreamError), and may
    override `_stop()` to interrupt a blocked read. `live`: audio arrives at wall-clock speed
    whether or not it is read (a device, a URL), so a listener that falls behind skips analyses
    instead of lagging; `reconnect`: worth reopening after a failure.
    """

    live = False
    reconnect = False

    def __init__(self, name: str, queue_s: float = 5.0):
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, round(queue_s / BLOCK_S)))
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def open(self) -> Source:
        """Start reading (again: a reopened source gets a fresh queue and reader thread)."""
        self._closed = threading.Event()  # this opening's: an old reader never feeds a new queue
        self._queue = queue.Queue(maxsize=self._queue.maxsize)
        self._thread = threading.Thread(
            target=self._pump, args=(self._queue, self._closed), daemon=True, name=self.name
        )
        self._thread.start()
        return self

    def _pump(self, box: queue.Queue, closed: threading.Event) -> None:
        def put(item: object) -> None:
            while not closed.is_set():
                try:
                    box.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        try:
            for block in self._blocks():
                if closed.is_set():
                    return
                put(block)
            put(_END)
        except BaseException as e:  # handed to the reader
            put(e if isinstance(e, StreamError) else StreamError(f"{self.name}: {e}"))

    def read(self, timeout_s: float) -> np.ndarray | None:
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise StallError(f"{self.name}: no audio for {timeout_s:g} s") from None
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def backlog_s(self) -> float:
        """Seconds of audio waiting to be read."""
        return self._queue.qsize() * BLOCK_S

    def close(self) -> None:
        self._closed.set()
        self._stop()

    def _blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _stop(self) -> None:
        pass


def pcm_blocks(
    stream: BinaryIO, rate: int, channels: int, head: bytes = b""
) -> Iterator[np.ndarray]:
    """Signed 16-bit little-endian PCM from `stream` (after `head`, bytes already read from it)
    -> float32 mono 16 kHz blocks.

    A byte that ends a block mid-sample waits for the next read; a sample rate other than 16 kHz
    is resampled as a stream (soxr), so block edges leave no clicks.
    """
    frame = 2 * channels
    size = frame * max(1, round(rate * BLOCK_S))
    resampler = (
        None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
    )
    rest, want = head, max(1, size - len(head))  # the first block, head included, is one block
    while True:
        data = stream.read(want)
        want = size
        if not data:
            break
        data = rest + data
        cut = len(data) - len(data) % frame
        rest = data[cut:]
        if not cut:
            continue
        block = np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / 32768.0
        if channels > 1:
            block = block.reshape(-1, channels).mean(axis=1)
        if resampler is not None:
            block = resampler.resample_chunk(block)
        if len(block):
            yield block
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if len(tail):
            yield tail


class StdinSource(Source):
    """Raw PCM on stdin (`arecord -f S16_LE -r 16000 -c 1 - | ... listen -`)."""

    def __init__(self, rate: int = SAMPLE_RATE, channels: int = 1, stream: BinaryIO | None = None):
        super().__init__("stdin")
        if rate <= 0 or channels <= 0:
            raise ValueError(
                f"stdin: --rate and --channels must be positive, got {rate}, {channels}"
            )
        self.rate, self.channels = rate, channels
        self.stream = stream

    def _blocks(self) -> Iterator[np.ndarray]:
        stream = self.stream or sys.stdin.buffer
        head = stream.read(4)
        kind = sniff(head)
        if kind and not (kind == "mp3" and not head.startswith(b"ID3")):  # frame sync: maybe PCM
            raise StreamError(
                f"stdin: a {kind} file, not raw PCM: pass it as the source (`listen FILE`), or "
                "decode it first (`ffmpeg -i FILE -f s16le -ac 1 -ar 16000 - | ... listen -`)"
            )
        yield from pcm_blocks(stream, self.rate, self.channels, head)


class FfmpegSource(Source):
    """A URL or file decoded by `ffmpeg` to 16 kHz mono PCM on a pipe."""

    def __init__(self, url: str):
        super().__init__(redact(url))
        self.url = url
        self.reconnect = self.live = "://" in url and not url.startswith("file:")
        self._proc: subprocess.Popen | None = None

    def _blocks(self) -> Iterator[np.ndarray]:
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
        if self.url.startswith("rtsp"):
            command += ["-rtsp_transport", "tcp"]
        command += ["-i", self.url, "-vn", "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
        try:
            self._proc = proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise StreamError(
                "ffmpeg is not installed: `apt-get install ffmpeg` (or read PCM from stdin: `-`)"
            ) from None
        errors: collections.deque[str] = collections.deque(maxlen=5)
        threading.Thread(
            target=lambda: errors.extend(
                line.decode(errors="replace").strip() for line in proc.stderr
            ),
            daemon=True,
            name="ffmpeg stderr",
        ).start()
        yield from pcm_blocks(proc.stdout, SAMPLE_RATE, 1)
        code = proc.wait()
        if code != 0 and not self._closed.is_set():
            said = "; ".join(e for e in errors if e) or f"exit status {code}"
            raise StreamError(f"ffmpeg cannot read {self.name}: {redact(said)}")

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()


class MicSource(Source):
    """A microphone through PortAudio (`sounddevice`); `device` as sounddevice takes it."""

    live = reconnect = True

    def __init__(self, device: str | int | None = None):
        super().__init__(f"mic:{device}" if device is not None else "mic", queue_s=30.0)
        _sounddevice()  # missing: an error now, not a reconnect loop
        self.device = device
        self.overflows = 0

    def _blocks(self) -> Iterator[np.ndarray]:
        sd = _sounddevice()
        closed = self._closed  # this opening's
        blocks: queue.Queue = queue.Queue(maxsize=300)
        try:
            info = sd.query_devices(self.device, "input")
            rate = int(info["default_samplerate"])
            resampler = (
                None
                if rate == SAMPLE_RATE
                else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32")
            )

            def callback(indata, frames, time, status) -> None:  # PortAudio's thread
                if status.input_overflow:
                    self.overflows += 1
                try:
                    blocks.put_nowait(indata[:, 0].copy())
                except queue.Full:
                    self.overflows += 1

            with sd.InputStream(
                samplerate=rate,
                blocksize=round(rate * BLOCK_S),
                device=self.device,
                channels=1,
                dtype="float32",
                callback=callback,
            ):
                while not closed.is_set():
                    try:
                        block = blocks.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    yield block if resampler is None else resampler.resample_chunk(block)
        except sd.PortAudioError as e:
            raise StreamError(f"{self.name}: {e}") from e
        except ValueError as e:  # no such device
            raise StreamError(f"{self.name}: {e} (`python -m sounddevice` lists devices)") from e


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the PortAudio library is missing
        raise RuntimeError(
            "listening to a microphone needs PortAudio and the sounddevice package: "
            "`apt-get install libportaudio2` and `pip install 'emergency-ensemble[mic]'` "
            f"({e}); or pipe PCM in: `arecord -f S16_LE -r 16000 -c 1 - | emergency-ensemble "
            "listen -`"
        ) from e
    return sounddevice


def open_source(spec: str, rate: int = SAMPLE_RATE, channels: int = 1) -> Source:
    """`mic`, `mic:DEVICE`, `-` (stdin PCM at `rate`, `channels`), or a URL or file for ffmpeg."""
    if spec == "mic" or spec.startswith("mic:"):
        device = spec[4:] or None
        return MicSource(int(device) if device and device.isdigit() else device)
    if spec == "-":
        return StdinSource(rate, channels)
    if "://" not in spec and not Path(spec).exists():
        raise FileNotFoundError(f"{spec}: no such file (a source is `mic`, `-`, a URL or a file)")
    return FfmpegSource(spec)


def redact(text: str) -> str:
    """`text` with the password of any URL in it hidden (rtsp://user:secret@host -> user:***)."""
    return re.sub(r"(\w+://[^/:@\s]+):[^@/\s]+@", r"\1:***@", text)
