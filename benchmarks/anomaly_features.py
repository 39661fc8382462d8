"""Pretrained EfficientNet-Lite0 features of spectrogram windows, for anomaly_pretrained.py.

A window becomes a fixed time-scale image (`fixed_scale_image`: 201 bins by one column per 40 ms,
absolute or per-image dB) cut to its valid columns, a 3-channel image (`pool_image`), and one
forward pass gives the feature maps of the wanted stages (`feature_maps`). `extract` keeps per
window the map's global average (pooled) and its frequency average per time column (moments).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly.efficientnet import (
    N_FEATURES,
    STAGE_CHANNELS,
    STAGE_REDUCTIONS,
    EfficientNetLite0,
    normalize,
)
from anomaly.features import POOL_KERNELS, POOL_STRIDE, fixed_scale_image, multiscale_pool

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
STRIDES = (POOL_STRIDE, 1)  # px: `multiscale_pool` as it is, or its kernels at full resolution


def pool_image(img: Tensor, pooling: str, stride: int) -> Tensor:
    """`(1, 1, H, W)` -> the 3-channel image. Stride 3 is `multiscale_pool`, `(1, 3, H / 3, W / 3)`;
    stride 1 keeps `(H, W)`: the same kernels 7 / 21 / 63 with padding k // 2 (padded cells not
    counted), and for "resize" the image itself in 3 channels."""
    if stride == POOL_STRIDE:
        return multiscale_pool(img, pooling)
    if stride != 1:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
    if pooling == "resize":
        return img.expand(-1, 3, -1, -1)
    chans = []
    for k in POOL_KERNELS:
        p = k // 2
        if pooling == "avg":
            x = F.avg_pool2d(img, (k, 1), 1, (p, 0), count_include_pad=False)
            chans.append(F.avg_pool2d(x, (1, k), 1, (0, p), count_include_pad=False))
        else:
            chans.append(F.max_pool2d(F.max_pool2d(img, (k, 1), 1, (p, 0)), (1, k), 1, (0, p)))
    return torch.cat(chans, dim=1)


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
            width = min(img.shape[-1], max(math.ceil(int(n_cols[0]) / stride), 1) * stride)
            x = normalize(pool_image(img[:, None, :, :width], pooling, stride))
            for stage, fmap in feature_maps(model, x, stages).items():
                m = fmap[0].mean(dim=1).T  # (t, C): frequency averaged, one row per column
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
