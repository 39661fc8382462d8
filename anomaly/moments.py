"""Moments of a window: pretrained EfficientNet-Lite0 feature columns of its spectrogram image.

A window becomes a fixed time-scale image (`fixed_scale_image`: 201 bins by one column per 40 ms)
cut to its valid columns, a 3-channel image (`pool_image`), ImageNet-normalised
(`network_input`), and the feature map of one EfficientNet-Lite0 stage; averaged over frequency it
gives one vector per time column of the map, a "moment" (`frequency_moments`).

`MomentNet` holds the backbone and a memory bank of L2-normalised normal moments (a greedy
k-center coreset, `density.coreset`); a moment's score is its mean distance to the `k` nearest bank
rows, a window's score its most unusual moment. The backbone is never trained: it stays in eval mode
whatever mode the module is put in, so its BatchNorm statistics never move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly.density import coreset, knn_distance, l2_normalise
from anomaly.features import (
    FRAMES_PER_COLUMN,
    POOL_KERNELS,
    POOL_STRIDE,
    POOLINGS,
    fixed_scale_image,
    multiscale_pool,
)
from ensemble.core.efficientnet import STAGE_CHANNELS, EfficientNetLite0, normalize

STRIDES = (POOL_STRIDE, 1)  # px: `multiscale_pool` as it is, or its kernels at full resolution


def pool_image(img: Tensor, pooling: str, stride: int) -> Tensor:
    """`(B, 1, H, W)` -> the 3-channel image. Stride 3 is `multiscale_pool`, `(B, 3, H / 3, W / 3)`;
    stride 1 keeps `(H, W)`: the same kernels 7 / 21 / 63 with padding k // 2 (padded cells not
    counted), and for "resize" the image itself in 3 channels."""
    if stride == POOL_STRIDE:
        return multiscale_pool(img, pooling)
    if stride != 1:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
    if pooling == "resize":
        return img.expand(-1, 3, -1, -1)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    chans = []
    for k in POOL_KERNELS:
        p = k // 2
        if pooling == "avg":
            x = F.avg_pool2d(img, (k, 1), 1, (p, 0), count_include_pad=False)
            chans.append(F.avg_pool2d(x, (1, k), 1, (0, p), count_include_pad=False))
        else:
            chans.append(F.max_pool2d(F.max_pool2d(img, (k, 1), 1, (p, 0)), (1, k), 1, (0, p)))
    return torch.cat(chans, dim=1)


def valid_image(img: Tensor, n_cols: int, pooling: str, stride: int) -> Tensor:
    """One fixed-scale image `(1, H, W)` with `n_cols` valid columns -> its 3-channel image
    `(1, 3, H', W')` in [0, 1]: cut to the valid columns (rounded up to the pooling stride, at
    least one stride) so padding never reaches the network, then pooled."""
    width = min(img.shape[-1], max(math.ceil(n_cols / stride), 1) * stride)
    return pool_image(img[:, None, :, :width], pooling, stride)


def network_input(img: Tensor, n_cols: int, pooling: str, stride: int) -> Tensor:
    """`valid_image`, ImageNet-normalised: the network's input `(1, 3, H', W')`."""
    return normalize(valid_image(img, n_cols, pooling, stride))


def frequency_moments(fmap: Tensor) -> Tensor:
    """Feature maps `(B, C, h, t)` -> moments `(B, t, C)`: the frequency average per column."""
    return fmap.mean(dim=2).transpose(1, 2)


@dataclass(frozen=True)
class MomentNetConfig:
    absolute: bool = False  # absolute dB scale (True) or per-image dB (False)
    pooling: str = "resize"  # avg | max | resize (see `pool_image`)
    stride: int = 1  # px: 1 (full resolution) or 3 (`multiscale_pool`)
    stage: int = 4  # EfficientNet-Lite0 stage whose map gives the moments (0-6)
    frames_per_column: int = FRAMES_PER_COLUMN  # STFT frames (10 ms) per image column
    bank_size: int = 2000  # memory bank rows at most (coreset)
    k: int = 3  # nearest bank rows a moment's score averages

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {self.stride}")
        if not 0 <= self.stage < len(STAGE_CHANNELS):
            raise ValueError(f"stage must be in [0, {len(STAGE_CHANNELS) - 1}], got {self.stage}")
        for name in ("frames_per_column", "bank_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class MomentNet(nn.Module):
    """Frozen EfficientNet-Lite0 (random until pretrained weights are loaded into `backbone`) and
    a memory bank of normal moments.

    Buffers: `bank (bank_size, C)` of L2-normalised moments, of which the first `n_bank` are
    filled (`n_bank` 0: empty).
    """

    config_class: ClassVar[type[MomentNetConfig]] = MomentNetConfig

    def __init__(self, config: MomentNetConfig):
        super().__init__()
        self.config = config
        self.backbone = EfficientNetLite0()
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.dim = STAGE_CHANNELS[config.stage]
        self.register_buffer("bank", torch.zeros(config.bank_size, self.dim))
        self.register_buffer("n_bank", torch.tensor(0, dtype=torch.long))

    def train(self, mode: bool = True) -> MomentNet:
        """The module's mode; the backbone stays in eval mode (it is never trained)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def bank_filled(self) -> bool:
        return int(self.n_bank) > 0

    @torch.no_grad()
    def moments(self, wave: Tensor, n_valid: Tensor | None = None) -> list[Tensor]:
        """Windows `(B, N)` (first `n_valid (B,)` samples real) -> B moments `(T_i, C)`, one row
        per feature-map column of the window's real audio."""
        if wave.ndim != 2:
            raise ValueError(f"wave must be (B, N), got {tuple(wave.shape)}")
        c = self.config
        img, n_cols = fixed_scale_image(
            wave, n_valid, frames_per_column=c.frames_per_column, absolute=c.absolute
        )  # (B, 201, W), (B,)
        out = []
        for b, cols in enumerate(n_cols.tolist()):
            x = network_input(img[b : b + 1], cols, c.pooling, c.stride)
            fmap = self.backbone.forward_stages(x, c.stage)[c.stage]  # (1, C, h, t)
            out.append(frequency_moments(fmap)[0])
        return out

    def fill_bank(self, moments: Tensor, seed: int = 0) -> None:
        """Fill the bank from normal moments `(M, C)`: L2-normalised, reduced to at most
        `bank_size` rows by greedy k-center selection."""
        if moments.ndim != 2 or moments.shape[1] != self.dim or len(moments) == 0:
            raise ValueError(f"moments must be (M, {self.dim}) with M > 0, got {moments.shape}")
        x = l2_normalise(moments.detach().float().cpu())
        picked = torch.from_numpy(coreset(x.numpy(), self.config.bank_size, seed).astype(np.int64))
        self.bank.zero_()
        self.bank[: len(picked)] = x[picked].to(self.bank)
        self.n_bank.fill_(len(picked))

    def score_moments(self, moments: list[Tensor]) -> Tensor:
        """B windows' moments -> scores `(B,)`: each window's largest moment score (the mean
        distance of an L2-normalised moment to its `k` nearest bank rows)."""
        if not self.bank_filled:
            raise RuntimeError("the memory bank is empty: fit the member or load a checkpoint")
        memory = self.bank[: int(self.n_bank)]
        return torch.stack(
            [knn_distance(l2_normalise(m.float()), memory, self.config.k).max() for m in moments]
        )

    def score(self, wave: Tensor, n_valid: Tensor | None = None) -> Tensor:
        """Anomaly scores `(B,)` of windows `(B, N)`; higher = less normal."""
        return self.score_moments(self.moments(wave, n_valid))
