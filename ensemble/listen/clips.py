"""The audio of an alert, kept privately: 16-bit mono WAV clips in a folder only the user can read.

A clip is mode 0600 from its first byte (created so, never chmod-ed later) in a 0700 folder, and
`prune_clips` deletes the ones older than the retention the user chose.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import wave
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DAY_S = 86400.0
_NOT_IN_NAMES = {"/", "\\", os.sep, os.altsep or "/", "\0"}  # path separators, NUL


def private_dir(path: str | Path) -> Path:
    """`path` as a folder only its owner can enter: made 0700, or set so when others could."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("clip folder %s had mode %o: set to 700", path, mode)
        path.chmod(0o700)
    return path


def _pcm16(samples: np.ndarray) -> bytes:
    """Little-endian int16 bytes: floats in [-1, 1] clipped and scaled by 32767, int16 as it is."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"a clip is mono: 1-D samples expected, got shape {samples.shape}")
    if samples.dtype == np.int16:
        pcm = samples
    elif np.issubdtype(samples.dtype, np.floating):
        x = np.clip(np.nan_to_num(samples.astype(np.float64)), -1.0, 1.0)
        pcm = np.round(x * 32767.0).astype(np.int16)
    else:
        raise ValueError(f"samples must be float or int16, not {samples.dtype}")
    return pcm.astype("<i2").tobytes()


def save_clip(folder: str | Path, name: str, samples: np.ndarray, rate: int = 16000) -> Path:
    """Writes `folder/name.wav` (16-bit mono PCM, mode 0600) and returns its path.

    `folder` is made private (`private_dir`); an existing clip of that name is a FileExistsError,
    a name with a path separator or a leading "." a ValueError.
    """
    if not name or name.startswith(".") or any(c in name for c in _NOT_IN_NAMES):
        raise ValueError(f"bad clip name {name!r}: no path separators, no leading '.'")
    data = _pcm16(samples)  # before the file exists: bad samples leave nothing behind
    path = private_dir(folder) / f"{name}.wav"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            with wave.open(f, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(int(rate))
                w.writeframes(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written clip
        raise
    return path


def prune_clips(folder: str | Path, keep_days: float, now: float | None = None) -> int:
    """Deletes the `*.wav` files directly in `folder` last modified more than `keep_days` days
    before `now`; returns how many. `keep_days <= 0` keeps every clip; a missing folder is 0."""
    if keep_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - keep_days * DAY_S
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        try:
            if (
                entry.name.endswith(".wav")
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # deleted meanwhile
            continue
    return removed
