"""Every audio fact of the project, and the one place that reads audio files.

Constants follow Whisper: 16 kHz mono, n_fft 400, hop 160, 30 s windows. Derived values are
computed with `exact_div`, never retyped. Functions other than the loaders are pure.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, f"{x} is not divisible by {y}"
    return x // y


SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # samples, 25 ms
HOP_LENGTH = 160  # samples, 10 ms
N_MELS = 80  # mel bins (128 for Whisper large-v3)
CHUNK_LENGTH = 30  # seconds in one Whisper window
ENCODER_STRIDE = 2  # mel frames per encoder timestep (Whisper's second conv has stride 2)
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a window
N_FRAMES = exact_div(N_SAMPLES, HOP_LENGTH)  # 3000 mel frames in a window
N_TIMESTEPS = exact_div(N_FRAMES, ENCODER_STRIDE)  # 1500 encoder timesteps in a window
FRAMES_PER_SECOND = exact_div(SAMPLE_RATE, HOP_LENGTH)  # 100 mel frames per second (10 ms)
TIMESTEPS_PER_SECOND = exact_div(FRAMES_PER_SECOND, ENCODER_STRIDE)  # 50 timesteps per second
TIMESTEP_SECONDS = 1 / TIMESTEPS_PER_SECOND  # 0.02 s per encoder timestep
SAMPLES_PER_TIMESTEP = HOP_LENGTH * ENCODER_STRIDE  # 320 samples per encoder timestep

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")


def seconds_to_samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def seconds_to_frames(seconds: float) -> int:
    return round(seconds * FRAMES_PER_SECOND)


def seconds_to_timesteps(seconds: float) -> int:
    """Index of the encoder timestep boundary nearest to `seconds` (10.0 s -> 500)."""
    return round(seconds * TIMESTEPS_PER_SECOND)


def timesteps_to_seconds(n: int) -> float:
    return n / TIMESTEPS_PER_SECOND


def samples_to_timesteps(n_samples: int) -> int:
    """Encoder timesteps that hold real audio for `n_samples` samples (partial steps count)."""
    return math.ceil(n_samples / (HOP_LENGTH * ENCODER_STRIDE))


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the fault."""

    def __init__(self, path: str | Path, fault: str):
        self.path = str(path)
        self.fault = fault
        super().__init__(f"{path}: {fault}")


_MAGIC = (
    (b"RIFF", "wav"),
    (b"RF64", "wav"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"ID3", "mp3"),
    (b"FORM", "aiff"),
)


def sniff(head: bytes) -> str | None:
    """The container named by a file's first bytes, or None when they name no audio format."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"  # MPEG audio frame sync
    return None


def special_file(path: Path) -> str | None:
    """What `path` (links followed) is when it is not a regular file or a directory: a FIFO, a
    device or a socket, which could block a reader forever; None otherwise (or when missing)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, what in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return None


def _check_file(path: Path) -> str:
    """Refuse what cannot be audio before any decoder sees it; returns the container kind."""
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    special = special_file(path)
    if special:
        raise AudioError(path, f"{special}, not a regular file: only regular files are read")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise AudioError(path, f"cannot be read: {e.strerror or e}") from e
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    kind = sniff(head)
    if kind is None:
        looks_text = all(b in b"\t\n\r" or 32 <= b < 127 or b >= 0x80 for b in head)
        what = "text" if looks_text else "unknown binary data"
        raise AudioError(path, f"not an audio file: content looks like {what} ({head[:16]!r})")
    if kind == "wav":
        _check_wav_header(path, head, size)
    return kind


def _check_wav_header(path: Path, head: bytes, size: int) -> None:
    if len(head) < 44 or head[8:12] != b"WAVE":
        raise AudioError(path, f"truncated or corrupt WAV header ({size} bytes)")
    if head.startswith(b"RIFF"):
        declared = int.from_bytes(head[4:8], "little") + 8
        # 0 and 0xFFFFFFFF mark streams written without a final size; they cannot be checked
        if declared not in (8, 0xFFFFFFFF + 8) and declared > size:
            raise AudioError(path, f"truncated: header declares {declared} bytes, file has {size}")


def _decode(path: Path, kind: str) -> tuple[np.ndarray, int]:
    """(samples (N, C) float32, rate) with soundfile, or librosa's audioread fallback for mp3."""
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return wave, sr
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        if kind != "mp3":
            raise AudioError(path, f"corrupt or unsupported {kind} data ({e})") from e
        sf_error = e
    try:
        import librosa

        wave, sr = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except Exception as e:
        raise AudioError(path, f"corrupt or unsupported mp3 data ({sf_error}; {e})") from e
    return np.atleast_2d(wave).T, int(sr)


def to_mono_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    """(N, C) or (N,) samples at `sr` -> (N',) float32 mono at SAMPLE_RATE."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if sr != SAMPLE_RATE:
        wave = soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Read a whole file as 16 kHz mono float32 `(N,)`; any rate, depth and channel count.

    Raises AudioError naming the file and the fault: missing, a directory, empty, not audio,
    truncated, corrupt, zero length, or NaN/inf samples.
    """
    path = Path(path)
    kind = _check_file(path)
    wave, sr = _decode(path, kind)
    if wave.shape[0] == 0:
        raise AudioError(path, "zero length: the file holds no samples")
    n_bad = int(np.count_nonzero(~np.isfinite(wave)))
    if n_bad:
        raise AudioError(path, f"{n_bad} NaN/inf samples")
    return to_mono_16k(wave, sr)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header alone (no decoding) where the format allows it."""
    path = Path(path)
    _check_file(path)
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"cannot read the header ({e})") from e


@dataclass(frozen=True)
class Window:
    """One window of a file: `wave (N_window,)` zero-padded at the end, `n_valid` real samples."""

    index: int
    start_s: float
    wave: np.ndarray
    n_valid: int


def window_starts(
    n_samples: int, window_s: float = CHUNK_LENGTH, hop_s: float | None = None
) -> list[int]:
    """First sample of every window over `n_samples` samples: every `hop_s` until one reaches the
    end. The last window of audio longer than one window ends at the end (it overlaps the one
    before it) instead of holding a short tail: every window but that of a short file is full."""
    win, hop = _window_hop(window_s, hop_s)
    starts = [0]
    while n_samples - starts[-1] > win:
        starts.append(starts[-1] + hop)
    if len(starts) > 1:
        starts[-1] = n_samples - win  # > starts[-2]: the loop went on past it
    return starts


def frame_windows(
    wave: np.ndarray, window_s: float = CHUNK_LENGTH, hop_s: float | None = None
) -> list[Window]:
    """Cut `(N,)` 16 kHz audio into windows of `window_s` every `hop_s` (default: no overlap).

    Every sample falls in at least one window; the last of a longer file ends at its end
    (`window_starts`). Audio shorter than a window gives one window padded with zeros.
    """
    win = seconds_to_samples(window_s)
    windows = []
    for i, s in enumerate(window_starts(len(wave), window_s, hop_s)):
        piece = wave[s : s + win]
        padded = np.zeros(win, dtype=np.float32)
        padded[: len(piece)] = piece
        windows.append(Window(i, s / SAMPLE_RATE, padded, len(piece)))
    return windows


def _window_hop(window_s: float, hop_s: float | None) -> tuple[int, int]:
    win = seconds_to_samples(window_s)
    hop = seconds_to_samples(hop_s if hop_s is not None else window_s)
    if not 0 < hop <= win:
        raise ValueError(f"hop must be in (0, window]; got hop={hop_s} s, window={window_s} s")
    return win, hop


def stream_windows(
    path: str | Path,
    window_s: float = CHUNK_LENGTH,
    hop_s: float | None = None,
    block_s: float = 60.0,
) -> Iterator[Window]:
    """`frame_windows` over a file read block by block: memory stays flat with the file's length.

    Yields the same windows as `frame_windows(load_audio(path))` (resampling is streamed, so
    samples match to resampler precision). Raises AudioError like `load_audio`.
    """
    path = Path(path)
    kind = _check_file(path)
    win, hop = _window_hop(window_s, hop_s)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        if kind == "mp3":  # audioread fallback reads the whole file
            yield from frame_windows(load_audio(path), window_s, hop_s)
            return
        raise AudioError(path, f"corrupt or unsupported {kind} data ({e})") from e
    with f:
        sr = f.samplerate
        resampler = soxr.ResampleStream(sr, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        buf = np.zeros(0, dtype=np.float32)
        recent = np.zeros(
            0, dtype=np.float32
        )  # the stream's last `win` samples, for the last window
        offset = index = n_read = 0  # offset: sample index of buf[0] in 16 kHz output
        blocksize = max(int(block_s * sr), 1)
        while True:
            block = f.read(blocksize, dtype="float32", always_2d=True)
            last = len(block) < blocksize
            n_read += len(block)
            if not np.isfinite(block).all():
                raise AudioError(path, "NaN/inf samples")
            mono = block.mean(axis=1) if len(block) else np.zeros(0, np.float32)
            out = mono if sr == SAMPLE_RATE else resampler.resample_chunk(mono, last=last)
            buf = np.concatenate([buf, out])
            recent = np.concatenate([recent, out])[-win:]
            while len(buf) >= win or (last and len(buf) > (win - hop if index else 0)):
                piece = buf[:win]
                if len(piece) < win and index:  # the last window ends at the end of the audio
                    end = offset + len(piece)
                    yield Window(index, (end - win) / SAMPLE_RATE, recent.copy(), win)
                    break
                padded = np.zeros(win, dtype=np.float32)
                padded[: len(piece)] = piece
                yield Window(index, offset / SAMPLE_RATE, padded, len(piece))
                index += 1
                buf, offset = buf[hop:], offset + hop
                if len(piece) < win:
                    break
            if last:
                break
        if n_read == 0:
            raise AudioError(path, "zero length: the file holds no samples")
