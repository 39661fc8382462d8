"""The anomaly member's network: waveform -> spectrogram image -> ResNet-18 -> embedding, logits.

The spectrogram front end (features.py) runs inside the model, so one waveform loader feeds every
member. The ResNet-18 names its layers like torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ...),
so a local torchvision-format ResNet-18 state dict loads into the backbone with `load_backbone`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from anomaly.features import IMAGE_SIZE, POOL_STRIDE, POOLINGS, multiscale_pool, spectrogram_images
from ensemble.core.member import check_state_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalyNetConfig:
    pooling: Literal["avg", "max", "resize"] = "avg"  # multi-scale avg / max pooling, or resize
    image_size: int = IMAGE_SIZE  # px, spectrogram image side; the ResNet sees image_size / 3
    top_db: float = 80.0  # dB range of the normalised spectrogram image
    width: int = 64  # channels of ResNet-18's first stage; later stages have 2x, 4x, 8x
    head_dim: int = 512  # hidden width of the projection head
    embed_dim: int = 128  # embedding the density is fitted on
    n_classes: int = 2  # normal + pasted (3 for the 3-way CutPaste variant)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.image_size < 3 * POOL_STRIDE or self.image_size % POOL_STRIDE:
            raise ValueError(f"image_size must be a multiple of 3 and >= 9, got {self.image_size}")
        for name in ("width", "head_dim", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_classes not in (2, 3):
            raise ValueError(f"n_classes must be 2 or 3, got {self.n_classes}")
        if self.top_db <= 0:
            raise ValueError(f"top_db must be positive, got {self.top_db}")


@dataclass
class AnomalyNetOutput:
    """logits `(B, K)` over normal / pasted (/ scar); embedding `(B, D)`."""

    logits: Tensor
    embedding: Tensor


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: `(B, C_in, H, W)` -> `(B, C_out, H / s, W / s)`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        reshape = stride != 1 or c_in != c_out  # the shortcut needs a 1x1 projection
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if reshape
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(x + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier: images `(B, 3, H, W)` -> features `(B, 8 * width)`."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.out_dim = 8 * width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        c_in = width
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out))
            self.add_module(f"layer{i + 1}", layer)
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H / 4, W / 4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 8w, H / 32, W / 32)
        return self.avgpool(x).flatten(1)  # (B, 8w)


class AnomalyNet(nn.Module):
    """Spectrogram image front end, ResNet-18, projection head and classifier."""

    config_class: ClassVar[type[AnomalyNetConfig]] = AnomalyNetConfig

    def __init__(self, config: AnomalyNetConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNet18(config.width)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_dim, config.head_dim),
            nn.BatchNorm1d(config.head_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.head_dim, config.embed_dim),
        )
        self.classifier = nn.Linear(config.embed_dim, config.n_classes)

    def image(self, wave: Tensor, n_valid: Tensor | None = None) -> Tensor:
        """Windows `(B, N)` (first `n_valid (B,)` samples real) -> network input `(B, 3, S, S)`.

        S = image_size / 3 (256 by default).
        """
        c = self.config
        img = spectrogram_images(wave, n_valid, c.image_size, c.top_db)  # (B, 1, 3S, 3S)
        return multiscale_pool(img, c.pooling)  # (B, 3, S, S)

    def forward_image(self, x: Tensor) -> AnomalyNetOutput:
        """Network input `(B, 3, S, S)` -> logits `(B, K)` and embedding `(B, D)`."""
        emb = self.head(self.backbone(x))  # (B, D)
        return AnomalyNetOutput(logits=self.classifier(emb), embedding=emb)

    def forward(self, wave: Tensor, n_valid: Tensor | None = None) -> AnomalyNetOutput:
        """Windows `(B, N)` -> logits `(B, K)` and embedding `(B, D)`."""
        return self.forward_image(self.image(wave, n_valid))


_PREFIXES = ("", "backbone.", "model.backbone.")  # plain, AnomalyNet, AnomalyModule state dicts


def load_backbone(backbone: ResNet18, path: str | Path) -> None:
    """Load a local ResNet-18 checkpoint into `backbone`, checking every key and shape.

    Accepts a state dict (or `{"state_dict": ...}`) of a `ResNet18`, an `AnomalyNet`, an
    `AnomalyModule`, or torchvision's `resnet18` (its ImageNet classifier `fc.*` is not part of the
    backbone and is left out). Raises ValueError naming missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict ({type(state).__name__})")
    expected = backbone.state_dict()
    for prefix in _PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if prefix == "" and {"fc.weight", "fc.bias"} <= set(sub):
            log.info("%s: leaving out the ImageNet classifier fc.*", path)
            sub = {k: v for k, v in sub.items() if not k.startswith("fc.")}
        # checkpoints older than BatchNorm's step counter lack it; it does not affect outputs
        sub = {k: torch.tensor(0) for k in expected if k.endswith("num_batches_tracked")} | sub
        if set(sub) == set(expected):
            break
    else:  # no prefix fits: name what differs from the plain layout
        sub = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_state_dict(expected, sub, path, "a ResNet-18 backbone (width?)")
    backbone.load_state_dict(sub, strict=True)
    log.info("loaded %d backbone tensors from %s", len(sub), path)
