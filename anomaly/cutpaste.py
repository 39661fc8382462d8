"""CutPaste augmentations: small callables that turn normal images into pseudo-anomalies.

Each takes images `(B, C, H, W)` with values in [0, 1] and a `torch.Generator`, and draws every
random number from that generator (on the CPU, whatever the images' device), so one seed gives one
batch. Patch sizes are named after tensor dims: `h` rows, `w` columns, aspect = h / w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

VARIANTS = ("cutpaste", "scar", "3way")


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _randint(n: int, generator: torch.Generator) -> int:
    """An integer in [0, n)."""
    return int(torch.randint(n, (), generator=generator))


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")


def _check_range(name: str, lo: float, hi: float, low_bound: float, high_bound: float) -> None:
    if not low_bound < lo <= hi <= high_bound:
        raise ValueError(
            f"{name} must satisfy {low_bound} < lo <= hi <= {high_bound}, got {lo, hi}"
        )


@dataclass(frozen=True)
class Box:
    """A patch of h x w px cut at (src_y, src_x) and pasted at (dst_y, dst_x) (top-left corners)."""

    h: int
    w: int
    src_y: int
    src_x: int
    dst_y: int
    dst_x: int


@dataclass(frozen=True)
class CutPaste:
    """Cut a rectangle from each image and paste it at another place in the same image."""

    area: tuple[float, float] = (0.02, 0.15)  # patch area as a fraction of H * W
    aspect: tuple[float, float] = (0.3, 3.3)  # patch h / w, drawn log-uniformly
    jitter: float = 0.1  # pasted patch brightness scaled by 1 + U(-jitter, jitter)

    def __post_init__(self) -> None:
        _check_range("area", *self.area, 0.0, 1.0)
        _check_range("aspect", *self.aspect, 0.0, math.inf)
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must lie in [0, 1), got {self.jitter}")

    def sample(self, height: int, width: int, generator: torch.Generator) -> Box:
        """A patch whose area fraction and aspect (after rounding to whole px) lie in range."""
        n = height * width
        for _ in range(1000):  # rejection keeps the rounded patch inside both ranges
            area = _uniform(*self.area, generator) * n
            aspect = math.exp(_uniform(*map(math.log, self.aspect), generator))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if (
                1 <= h <= height
                and 1 <= w <= width
                and self.area[0] <= h * w / n <= self.area[1]
                and self.aspect[0] <= h / w <= self.aspect[1]
                and (h, w) != (height, width)
            ):
                return _place(h, w, height, width, generator)
        raise ValueError(
            f"no patch with area {self.area} and aspect {self.aspect} fits {height}x{width}"
        )

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Images `(B, C, H, W)` -> the same images, each with one pasted patch."""
        _check_images(x)
        out = x.clone()
        for b in range(x.shape[0]):
            box = self.sample(x.shape[2], x.shape[3], generator)
            patch = x[b, :, box.src_y : box.src_y + box.h, box.src_x : box.src_x + box.w]
            patch = _jitter(patch, self.jitter, generator)
            out[b, :, box.dst_y : box.dst_y + box.h, box.dst_x : box.dst_x + box.w] = patch
        return out


def _place(h: int, w: int, height: int, width: int, generator: torch.Generator) -> Box:
    """Source and destination corners, drawn until they differ (pasting in place changes nothing)."""
    src_y, src_x = _randint(height - h + 1, generator), _randint(width - w + 1, generator)
    while True:
        dst_y, dst_x = _randint(height - h + 1, generator), _randint(width - w + 1, generator)
        if (dst_y, dst_x) != (src_y, src_x):
            return Box(h, w, src_y, src_x, dst_y, dst_x)


def _jitter(patch: Tensor, jitter: float, generator: torch.Generator) -> Tensor:
    if jitter == 0.0:
        return patch
    return (patch * (1.0 + _uniform(-jitter, jitter, generator))).clamp(0.0, 1.0)


@dataclass(frozen=True)
class CutPasteScar:
    """Move a thin rotated strip (a "scar") to another place in the same image.

    Sizes are fractions of the image side (the reference values, 10-25 by 2-16 px at 256 px); the
    strip is rotated by an angle in degrees and its pixels are translated, so the pasted region is a
    rotated thin rectangle.
    """

    length: tuple[float, float] = (10 / 256, 25 / 256)  # strip length / image side
    thickness: tuple[float, float] = (2 / 256, 16 / 256)  # strip thickness / image side
    angle: tuple[float, float] = (-45.0, 45.0)  # degrees from vertical
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _check_range("length", *self.length, 0.0, 1.0)
        _check_range("thickness", *self.thickness, 0.0, 1.0)
        if not -90.0 <= self.angle[0] <= self.angle[1] <= 90.0:
            raise ValueError(f"angle must lie in [-90, 90] degrees, got {self.angle}")

    def mask(self, height: int, width: int, generator: torch.Generator) -> tuple[Box, Tensor]:
        """The bounding box of one scar and its mask `(box.h, box.w)` bool."""
        side = min(height, width)
        long = max(1.0, _uniform(*self.length, generator) * side)
        thick = max(1.0, _uniform(*self.thickness, generator) * side)
        theta = math.radians(_uniform(*self.angle, generator))
        c, s = abs(math.cos(theta)), abs(math.sin(theta))
        h = min(height - 1, math.ceil(long * c + thick * s))  # rotated strip's bounding box
        w = min(width - 1, math.ceil(long * s + thick * c))
        h, w = max(h, 1), max(w, 1)
        y = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
        x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
        yy, xx = torch.meshgrid(y, x, indexing="ij")  # (h, w) offsets from the box centre
        along = yy * math.cos(theta) + xx * math.sin(theta)
        across = -yy * math.sin(theta) + xx * math.cos(theta)
        inside = (along.abs() <= long / 2) & (across.abs() <= thick / 2)
        inside[h // 2, w // 2] = True  # at least the centre pixel
        return _place(h, w, height, width, generator), inside

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Images `(B, C, H, W)` -> the same images, each with one pasted scar."""
        _check_images(x)
        out = x.clone()
        for b in range(x.shape[0]):
            box, inside = self.mask(x.shape[2], x.shape[3], generator)
            inside = inside.to(x.device)
            src = x[b, :, box.src_y : box.src_y + box.h, box.src_x : box.src_x + box.w]
            src = _jitter(src, self.jitter, generator)
            dst = out[b, :, box.dst_y : box.dst_y + box.h, box.dst_x : box.dst_x + box.w]
            dst[:, inside] = src[:, inside]  # dst is a view: writes into out
        return out


@dataclass(frozen=True)
class CutPaste3Way:
    """Both kinds at once: every image once with a patch (label 1) and once with a scar (label 2)."""

    cutpaste: CutPaste = field(default_factory=CutPaste)
    scar: CutPasteScar = field(default_factory=CutPasteScar)

    def __call__(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Images `(B, C, H, W)` -> images `(2B, C, H, W)` and labels `(2B,)` in {1, 2}."""
        _check_images(x)
        B = x.shape[0]
        labels = torch.cat([torch.ones(B), torch.full((B,), 2.0)]).long().to(x.device)
        return torch.cat([self.cutpaste(x, generator), self.scar(x, generator)]), labels


Augmentation = CutPaste | CutPasteScar | CutPaste3Way


def make_augmentation(variant: str, jitter: float = 0.1) -> Augmentation:
    """The augmentation of a variant: "cutpaste" and "scar" (2 classes) or "3way" (3 classes)."""
    if variant == "cutpaste":
        return CutPaste(jitter=jitter)
    if variant == "scar":
        return CutPasteScar(jitter=jitter)
    if variant == "3way":
        return CutPaste3Way(CutPaste(jitter=jitter), CutPasteScar(jitter=jitter))
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def n_classes(variant: str) -> int:
    """Classes the network must tell apart for a variant: normal plus one per augmentation."""
    return 3 if variant == "3way" else 2


def augment(aug: Augmentation, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pseudo-anomalies and their labels for any augmentation: `(B', C, H, W)`, `(B',)` >= 1."""
    if isinstance(aug, CutPaste3Way):
        return aug(x, generator)
    return aug(x, generator), torch.ones(x.shape[0], dtype=torch.long, device=x.device)
