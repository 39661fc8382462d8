"""Read-outs of the timestep head: the smoothed emergency curve, the timesteps a clip head reads
and the clip's class probabilities on the side of the vote."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ensemble.core.member import moving_average
from whisper_head.losses import block_columns


def clip_class_probs(
    frame_probs: Tensor, mask: Tensor, emergency_ids: Sequence[int], vote: Tensor
) -> Tensor:
    """Frame probabilities `(B, T, K + 1)`, valid timesteps `(B, T)`, the window's vote `(B,)`
    -> class probabilities `(B, K)` from the same evidence as the vote.

    Outside its events a timestep carries its background's normal class, so a plain mean over the
    window would name the room, not the emergency. A window voted emergency: the mean of the
    emergency columns over timesteps whose best class is an emergency (all valid ones when none
    is), renormalised over the emergency classes. Otherwise: the mean of the normal columns over
    valid timesteps, renormalised over the normal classes. The other block is zero.
    """
    K1 = frame_probs.shape[-1]
    em = torch.zeros(K1, dtype=torch.bool, device=frame_probs.device)
    em[list(emergency_ids)] = True
    em_steps = em[frame_probs.argmax(-1)] & mask  # (B, T)
    em_pick = torch.where(em_steps.any(1, keepdim=True), em_steps, mask)
    pick = torch.where(vote[:, None], em_pick, mask).to(frame_probs.dtype)  # (B, T)
    cols = block_columns(vote, em)  # (B, K + 1); none is never a clip's class
    summed = (frame_probs * pick[..., None]).sum(1) * cols  # (B, K + 1)
    return (summed / summed.sum(1, keepdim=True).clamp_min(1e-12))[:, 1:]


def peak_pick(p: Tensor, mask: Tensor, vote: Tensor, share: float = 0.5) -> Tensor:
    """Timesteps `(B, T)` a clip head reads: where the window is voted emergency, the valid
    timesteps whose smoothed emergency probability `p (B, T)` reaches `share` of its peak (the
    event the vote saw); elsewhere every valid timestep."""
    p = p.masked_fill(~mask, 0.0)
    peak = p.amax(1, keepdim=True)
    return torch.where(vote[:, None], mask & (p >= share * peak), mask)


def block_probs(logits: Tensor, vote: Tensor, emergency: Tensor) -> Tensor:
    """Class probabilities `(B, K)` from clip logits `(B, K + 1)`: softmax over the emergency
    columns where the vote says emergency, over the normal ones elsewhere; zero outside."""
    cols = block_columns(vote, emergency)
    return logits.float().masked_fill(~cols, float("-inf")).softmax(-1)[:, 1:]


def smoothed(p: Tensor, mask: Tensor, width: int) -> Tensor:
    """Moving average of `width` timesteps of `p (B, T)`, 0 at padding `(B, T)`.

    Padding timesteps count as 0; the window shrinks at both ends of the array.
    """
    p = moving_average(p.masked_fill(~mask, 0.0)[:, None], width)[:, 0]  # padding raises nothing
    return p.masked_fill(~mask, 0.0)


def smoothed_max(p: Tensor, mask: Tensor, width: int) -> Tensor:
    """`smoothed`, then the maximum over valid timesteps `(B,)`."""
    return smoothed(p, mask, width).amax(1)
