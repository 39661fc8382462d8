"""Windows of a manifest for the anomaly benchmarks: normal train windows, val, and the test
split's anomaly sets (emergency windows, and normal windows with an emergency event spliced in, as
the paper built its anomalies), and their spectrogram images as the moment member sees them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from anomaly.features import POOL_STRIDE, fixed_scale_image
from anomaly.moments import valid_image
from ensemble.core.data import AudioDataModule, WindowDataset

log = logging.getLogger("anomaly_comparison")
GROUPS = ("train", "val", "normal", "emergency", "inserted")  # window groups scored


def _n_valid(item: dict) -> int:
    """Samples of real audio in a dataset item."""
    n = int(item["mask"].sum()) * (len(item["wave"]) // len(item["mask"]))
    return min(n, len(item["wave"]))


def dataset_windows(ds: WindowDataset, indices: list[int]) -> Iterator[dict]:
    """Items of a dataset as {"wave" (N,), "n_valid", "label"} windows."""
    for i in indices:
        item = ds[i]
        yield {"wave": item["wave"], "n_valid": _n_valid(item), "label": int(item["label"])}


def eval_sets(dm: AudioDataModule, insertions: int, seed: int) -> dict[str, list[dict]]:
    """Test windows as {"wave" (N,), "n_valid"} dicts: normal, inserted and emergency."""
    out: dict[str, list[dict]] = {"normal": [], "emergency": [], "inserted": []}
    segments = []
    for item in dm.datasets["test"]:
        window = {"wave": item["wave"], "n_valid": _n_valid(item)}
        if dm.taxonomy.is_emergency(int(item["label"])):
            out["emergency"].append(window)
            segments.append(_event(item, window["n_valid"]))
        else:
            out["normal"].append(window)
    rng = np.random.default_rng(seed)
    for normal in out["normal"]:
        for _ in range(insertions):
            segment = segments[rng.integers(len(segments))]
            out["inserted"].append(_insert(normal, segment, rng))
    log.info("test windows: %s", {k: len(v) for k, v in out.items()})
    return out


def _event(item: dict, n_valid: int) -> torch.Tensor:
    """The annotated event of an emergency window `(n,)`, or its whole valid audio."""
    steps = torch.nonzero(item["frame_labels"] == item["label"]).flatten()
    hop = len(item["wave"]) // len(item["frame_labels"])  # samples per timestep
    if len(steps) == 0:
        return item["wave"][:n_valid]
    return item["wave"][int(steps[0]) * hop : min((int(steps[-1]) + 1) * hop, n_valid)]


def _insert(normal: dict, segment: torch.Tensor, rng: np.random.Generator) -> dict:
    """`segment` spliced into the normal window at a random offset, scaled to its peak level."""
    n = normal["n_valid"]
    segment = segment[:n]
    peak = normal["wave"][:n].abs().max() / segment.abs().max().clamp(min=1e-8)
    offset = int(rng.integers(n - len(segment) + 1))
    wave = normal["wave"].clone()
    wave[offset : offset + len(segment)] = segment * peak
    return {"wave": wave, "n_valid": n}


def train_indices(n: int, max_train: int, seed: int) -> list[int]:
    """Indices of the train windows to use: all of them, or `max_train` drawn without replacement."""
    if n <= max_train:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, max_train, replace=False).tolist())


def load_windows(dm: AudioDataModule, args: argparse.Namespace) -> dict[str, list[dict]]:
    """The window groups: normal train windows (at most `max_train`), val, and the test sets."""
    train = dm.datasets["train"]
    idx = train_indices(len(train), args.max_train, args.seed)
    val = dm.datasets["val"]
    out = {
        "train": list(dataset_windows(train, idx)),
        "val": list(dataset_windows(val, list(range(len(val))))),
        **eval_sets(dm, args.insertions, args.seed),
    }
    emergency = [dm.taxonomy.is_emergency(w["label"]) for w in out["val"]]
    for w, flag in zip(out["val"], emergency, strict=True):
        w["emergency"] = flag
    log.info("windows: %s", {k: len(v) for k, v in out.items()})
    return out


def images(windows: list[dict], pooling: str, stride: int = POOL_STRIDE) -> list[Tensor]:
    """Each window's 3-channel image `(3, H, w)` in [0, 1], cut to its valid columns as the
    moment member cuts them (`moments.valid_image`)."""
    out = []
    for w in windows:
        img, n_cols = fixed_scale_image(
            w["wave"][None], torch.tensor([w["n_valid"]]), absolute=False
        )
        out.append(valid_image(img, int(n_cols[0]), pooling, stride)[0])
    return out
