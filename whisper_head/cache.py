"""Disk caches of the Whisper member: `default_cache`, the folder of converted and exported
weights; `FeatureCache`, the frozen encoder's outputs, one fp16 `.npy` per window, read memory-mapped.

When the encoder is frozen its output for a window never changes, so it is computed once and every
epoch (and every later fit on the same weights) reads it back. An entry is named by a hash of

- the audio file's bytes (a changed file is a new entry, whatever its name or date),
- the window: first sample and length,
- the encoder's weights, the stored layers and the precision they were computed in (`tag`),
  (with trained top blocks, `top_blocks`, the weights below them: the layers above are computed
  again from the cached state under them, never read),

so a stale entry is never read: it is simply not asked for any more. An entry is written to a
temporary name and renamed into place, so a killed build leaves only whole entries and the next
build carries on from them.

Each entry holds the encoder's hidden states `(S, T, D)` float16 for the layers in `layers` (the
head's layers and the last layer, which the decoder attends to), T = 1500 for a 30 s window.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ensemble.core.audio import SAMPLE_RATE

VERSION = 1  # bump when the layout of an entry changes


def default_cache() -> Path:
    """`$EMERGENCY_ENSEMBLE_CACHE/whisper`, else `~/.cache/emergency-ensemble/whisper`."""
    root = (
        os.environ.get("EMERGENCY_ENSEMBLE_CACHE") or Path.home() / ".cache" / "emergency-ensemble"
    )
    return Path(root) / "whisper"


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-1, this process


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def weights_digest(module: nn.Module, skip: Sequence[str] = ()) -> str:
    """SHA-1 of a module's parameters and buffers (names, shapes, dtypes and bytes), but those
    whose names start with one of `skip`."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        if name.startswith(tuple(skip)):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """Encoder outputs on disk under `root`, for one encoder (`weights`), layer set and precision.

    `key(path, start, n_samples)` names a window; `get` returns the entry memory-mapped or None;
    `put` stores one. Entries of other weights, layers or precisions live beside, under other names.
    """

    def __init__(self, root: str | Path, weights: str, layers: Sequence[int], precision: str):
        self.root = Path(root).expanduser()
        self.layers = tuple(int(i) for i in layers)
        self.tag = hashlib.sha1(
            f"v{VERSION}|{weights}|{self.layers}|{precision}".encode()
        ).hexdigest()

    def key(self, path: str | Path, start: int, n_samples: int) -> str:
        """The entry name of the window `[start, start + n_samples)` (samples) of an audio file."""
        text = f"{file_digest(path)}|{int(start)}|{int(n_samples)}|{self.tag}"
        return hashlib.sha1(text.encode()).hexdigest()

    def keys(self, paths: Iterable[str], starts_s: Iterable[float], n_samples: int) -> list[str]:
        """Keys of a batch: its `path` and `start_s` lists and its window length in samples."""
        return [
            self.key(p, round(s * SAMPLE_RATE), n_samples)
            for p, s in zip(paths, starts_s, strict=True)
        ]

    def file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.file(key).exists()

    def get(self, key: str) -> np.ndarray | None:
        """The entry `(S, T, D)` float16, memory-mapped, or None when there is none."""
        f = self.file(key)
        if not f.exists():
            return None
        return np.load(f, mmap_mode="r")

    def put(self, key: str, states: torch.Tensor | np.ndarray) -> None:
        """Store one window's states `(S, T, D)` as float16 (atomically: temporary file, rename)."""
        array = states.detach().float().cpu().numpy() if torch.is_tensor(states) else states
        array = np.asarray(array, dtype=np.float16)
        if array.ndim != 3 or array.shape[0] != len(self.layers):
            raise ValueError(f"expected ({len(self.layers)}, T, D) states, got {array.shape}")
        f = self.file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, f)

    def load(
        self, keys: Sequence[str], index: torch.Tensor | None = None, layers: slice = slice(None)
    ) -> torch.Tensor:
        """The entries of a batch stacked `(B, S, T, D)` float16; every key must be present.

        `index (B, k)`: only those timesteps of each window, `(B, S, k, D)`, read from the
        memory map without reading the rest; `layers`: only those stored layers.
        """
        arrays = [self.get(k) for k in keys]
        missing = [k for k, a in zip(keys, arrays, strict=True) if a is None]
        if missing:
            raise KeyError(f"{len(missing)} window(s) not in the feature cache {self.root}")
        if index is None:
            return torch.from_numpy(np.stack([a[layers] for a in arrays]))
        rows = index.cpu().numpy()
        return torch.from_numpy(
            np.stack([a[layers][:, r] for a, r in zip(arrays, rows, strict=True)])
        )

    def size_bytes(self) -> int:
        """Bytes of every entry under `root` (all weights and layer sets)."""
        return sum(f.stat().st_size for f in self.root.glob("*/*.npy"))
