"""Windows of many files for `infer`: the audio files of a folder, streamed 30 s window by window
(DDP ranks and DataLoader workers each take their share of the files), batched by `collate_windows`.

A file that cannot be used, a FIFO or a device named like audio, or one that stalls while being
read, gives one error item instead of windows.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ensemble.core.audio import (
    AUDIO_EXTENSIONS,
    CHUNK_LENGTH,
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    stream_windows,
)


def list_audio(folder: str | Path) -> list[Path]:
    """Audio files under `folder` by extension (recursive, sorted), or `[folder]` for one file.

    Directories and dangling links with an audio extension are listed too: they become error rows.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = [p for p in folder.rglob("*") if p.name.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class WindowStream(IterableDataset):
    """Windows of the files `paths[rank::world]` (ranks of torch.distributed, then of DataLoader
    workers), read block by block.

    Yields one dict per window: `wave (N,)` float32, `n_valid`, `path` (the key), `index`,
    `start_s`, `last` (the file's last window, which also carries `duration_s`), or one dict with
    `error` for a file that cannot be used (windows already yielded for it are then discarded).
    """

    def __init__(
        self,
        paths: list[tuple[str, Path]],
        hop_s: float | None = None,
        min_duration_s: float = 0.1,
        read_timeout_s: float = 60.0,
    ):
        self.paths = paths
        self.hop_s = hop_s
        self.min_duration_s = min_duration_s
        self.read_timeout_s = read_timeout_s

    def __iter__(self) -> Iterator[dict]:
        paths = self.paths
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            paths = paths[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        info = get_worker_info()
        paths = paths if info is None else paths[info.id :: info.num_workers]
        for key, path in paths:
            yield from self._file(key, path)

    def _file(self, key: str, path: Path) -> Iterator[dict]:
        previous = None
        try:
            for w in _timed(
                stream_windows(path, CHUNK_LENGTH, self.hop_s), path, self.read_timeout_s
            ):
                if previous is not None:
                    yield previous
                previous = {"path": key, "index": w.index, "start_s": w.start_s, "last": False}
                previous.update(wave=w.wave, n_valid=w.n_valid)
            if previous is None:
                raise AudioError(path, "zero length: the file holds no samples")
            duration = previous["start_s"] + previous["n_valid"] / SAMPLE_RATE
            if duration < self.min_duration_s:
                raise AudioError(
                    path, f"too short: {duration:.3f} s (the minimum is {self.min_duration_s} s)"
                )
        except (AudioError, OSError, RuntimeError) as e:
            fault = e.fault if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
            yield {"path": key, "error": fault}
            return
        yield {**previous, "last": True, "duration_s": duration}


def _timed(windows: Iterator, path: Path, timeout_s: float) -> Iterator:
    """`windows`, read in a helper thread: an AudioError when the next one takes longer than
    `timeout_s` (a stalled network file). The stalled thread is left behind; the run goes on."""
    box: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def pump() -> None:
        try:
            for w in windows:
                box.put(w)
            box.put(done)
        except BaseException as e:  # handed to the reader
            box.put(e)

    threading.Thread(target=pump, daemon=True, name=f"read {path.name}").start()
    while True:
        try:
            item = box.get(timeout=timeout_s)
        except queue.Empty:
            raise AudioError(
                path, f"stalled: no audio for {timeout_s:g} s (read timeout)"
            ) from None
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def collate_windows(items: list[dict]) -> dict:
    """Window dicts -> `wave (B, N)`, `n_valid (B,)`, `meta` (the rest), `errors`."""
    windows = [x for x in items if "error" not in x]
    return {
        "wave": torch.from_numpy(np.stack([x["wave"] for x in windows])) if windows else None,
        "n_valid": torch.tensor([x["n_valid"] for x in windows], dtype=torch.long),
        "meta": [{k: v for k, v in x.items() if k != "wave"} for x in windows],
        "errors": [x for x in items if "error" in x],
    }


def total_duration(paths: list[Path], timeout_s: float) -> float:
    """Seconds of audio in `paths` from their headers (for the progress bar), read in a helper
    thread: a header that stalls for `timeout_s` ends the count there."""
    box: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [box.put(_duration(p)) for p in paths], daemon=True, name="durations"
    ).start()
    total = 0.0
    for _ in paths:
        try:
            total += box.get(timeout=timeout_s)
        except queue.Empty:
            break
    return total


def _duration(path: Path) -> float:
    try:
        d = audio_duration(path)
        return d if math.isfinite(d) else 0.0
    except (AudioError, OSError):
        return 0.0
