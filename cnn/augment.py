"""Training-time augmentations of log-mel batches `(B, F, T)`: SpecAugment and mixup."""

from __future__ import annotations

import torch
from torch import Tensor


def _bands(B: int, size: int, max_width: int, generator: torch.Generator | None, device) -> Tensor:
    """`(B, size)` bool: per row, one random band of width 0..max_width along an axis of `size`."""
    width = torch.randint(0, max_width + 1, (B,), generator=generator).to(device)
    start = (torch.rand(B, generator=generator).to(device) * (size - width + 1)).long()
    pos = torch.arange(size, device=device)
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def spec_augment(
    mel: Tensor,
    n_freq_masks: int = 2,
    max_freq: int = 10,
    n_time_masks: int = 2,
    max_time: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask random mel bands and time spans with each example's mean: `(B, F, T)` -> `(B, F, T)`.

    Defaults: 2 bands of up to 10 of 80 mel bins and 2 spans of up to 1 s (100 frames), as in
    SpecAugment's LibriSpeech policies. `generator=None` draws from torch's global generator.
    """
    B, F, T = mel.shape
    mask = torch.zeros(B, F, T, dtype=torch.bool, device=mel.device)
    for _ in range(n_freq_masks):
        mask |= _bands(B, F, min(max_freq, F), generator, mel.device)[:, :, None]
    for _ in range(n_time_masks):
        mask |= _bands(B, T, min(max_time, T), generator, mel.device)[:, None, :]
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    return torch.where(mask, fill, mel)


def mixup(x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor, float]:
    """Mix each example with another of the batch: x `(B, ...)`, y `(B,)` -> (mixed x, y_b, lam).

    The loss is `lam * CE(logits, y) + (1 - lam) * CE(logits, y_b)`, lam ~ Beta(alpha, alpha).
    Draws from torch's global generator (seeded by `seed_everything`).
    """
    if alpha <= 0:
        raise ValueError(f"mixup needs alpha > 0, got {alpha}")
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam
