"""Pretrained EfficientNet-Lite0 features of spectrogram windows, for anomaly_pretrained.py.

A window becomes a fixed time-scale image (`fixed_scale_image`: 201 bins by one column per 40 ms,
absolute or per-image dB) cut to its valid columns, a 3-channel image (`moments.pool_image`), and
one forward pass gives the feature maps of the wanted stages (`feature_maps`). `extract` keeps per
window the map's global average (pooled) and its frequency average per time column (moments).
The image and moment functions are the moment member's own (anomaly/moments.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from anomaly.features import fixed_scale_image
from anomaly.moments import STRIDES as STRIDES  # the strides anomaly_pretrained.py offers
from anomaly.moments import frequency_moments, network_input
from ensemble.core.efficientnet import (
    N_FEATURES,
    STAGE_CHANNELS,
    STAGE_REDUCTIONS,
    EfficientNetLite0,
)

log = logging.getLogger("anomaly_pretrained")
# image variant: (absolute dB, pooling); "abs" keeps the recording level, "rel" is per image
IMAGES = {
    "abs-avg": (True, "avg"),
    "abs-max": (True, "max"),
    "abs-resize": (True, "resize"),
    "rel-avg": (False, "avg"),
    "rel-max": (False, "max"),
    "rel-resize": (False, "resize"),
}
STAGES = {"head": None, "stage4": 4, "stage5": 5}  # None: the 1280-channel map after the head
STAGE_INFO = {  # channels, input px per map column
    s: (N_FEATURES, STAGE_REDUCTIONS[-1]) if i is None else (STAGE_CHANNELS[i], STAGE_REDUCTIONS[i])
    for s, i in STAGES.items()
}


def feature_maps(model: EfficientNetLite0, x: Tensor, stages: list[str]) -> dict[str, Tensor]:
    """The wanted stage outputs `(1, C, h, t)` of one forward pass."""
    upto = 6 if "head" in stages else max(STAGES[s] for s in stages)
    outs = model.forward_stages(x, upto)
    maps = {s: outs[STAGES[s]] for s in stages if s != "head"}
    if "head" in stages:  # what forward_features returns, without a second pass
        maps["head"] = model.act(model._bn1(model._conv_head(outs[-1])))
    return maps


@torch.inference_mode()
def extract(
    model: EfficientNetLite0,
    windows: Iterable[dict],
    total: int,
    images: list[tuple[str, int]],
    stages: list[str],
    name: str,
) -> dict[tuple[str, int, str], dict[str, np.ndarray]]:
    """Per (image, stride, stage): pooled `(N, C)` and moment `(M, C)` features, moment offsets
    `(N + 1,)` and window labels `(N,)` (-1 where a window has none). Each image is cut to the
    window's valid columns (rounded up to the pooling stride) before pooling, so padding never
    reaches the network."""
    acc = {(i, st, s): ([], [], []) for i, st in images for s in stages}
    t0 = time.perf_counter()
    for n, w in enumerate(windows, 1):
        wave, n_valid = w["wave"][None], torch.tensor([w["n_valid"]])
        base = {}
        for absolute in sorted({IMAGES[i][0] for i, _ in images}):
            base[absolute] = fixed_scale_image(wave, n_valid, absolute=absolute)  # (1, 201, 750)
        for image, stride in images:
            absolute, pooling = IMAGES[image]
            img, n_cols = base[absolute]
            x = network_input(img, int(n_cols[0]), pooling, stride)
            for stage, fmap in feature_maps(model, x, stages).items():
                m = frequency_moments(fmap)[0]  # (t, C): frequency averaged, one row per column
                pooled, moments, labels = acc[(image, stride, stage)]
                moments.append(m.numpy())
                pooled.append(m.mean(dim=0).numpy())
                labels.append(w.get("label", -1))
        if n % 50 == 0 or n == total:
            dt = time.perf_counter() - t0
            log.info("%s: %d/%d windows, %.2f s/window", name, n, total, dt / n)
    return {
        key: {
            "pooled": np.stack(pooled).astype(np.float32),
            "moments": np.concatenate(moments).astype(np.float32),
            "offsets": np.r_[0, np.cumsum([len(m) for m in moments])].astype(np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
        }
        for key, (pooled, moments, labels) in acc.items()
    }
