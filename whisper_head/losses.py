"""The timestep head's training losses: class-balanced frame weights, the timesteps a training
step scores, the clip-level loss on pooled timesteps and the windows the text loss keeps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from whisper_head.model import IGNORE, Encoded


def frame_weights(counts: Tensor, power: float) -> Tensor:
    """Class-balanced weights `(K + 1,)` from frame counts per column: `(n / n_c) ** power`,
    normalised to mean 1 over the columns that occur; columns that never occur weigh 0."""
    counts = counts.double()
    seen = counts > 0
    w = torch.zeros_like(counts)
    w[seen] = (counts[seen].sum() / counts[seen]) ** power
    return (w / w[seen].mean()).float() if seen.any() else w.float()


def sample_frames(targets: Tensor, mask: Tensor, emergency: Tensor, k: int) -> Tensor:
    """`k` timesteps per window `(B, k)` for the training loss: every emergency timestep first
    (at random when there are more than `k`), then other valid ones at random, padding last."""
    k = min(k, targets.shape[1])
    em = emergency.to(targets.device)[targets.clamp(min=0)] & (targets != IGNORE) & mask
    priority = torch.rand(targets.shape, device=targets.device) + em + mask.float()
    return priority.topk(k, dim=1).indices


def block_columns(window_emergency: Tensor, emergency: Tensor) -> Tensor:
    """The columns `(B, K + 1)` a window's class is read among: the emergency ones where
    `window_emergency (B,)` is true, the normal ones elsewhere; never `none` (column 0)."""
    em = emergency.to(window_emergency.device)
    cols = torch.where(window_emergency[:, None], em[None], ~em[None])
    cols[:, 0] = False
    return cols


def event_pick(targets: Tensor, labels: Tensor, emergency: Tensor) -> Tensor:
    """The timesteps `(B, k)` a window's class is read from in training: an emergency window's
    emergency timesteps, a normal window's known ones."""
    em = emergency.to(targets.device)
    known = targets != IGNORE
    frame_em = em[targets.clamp(min=0)] & known
    return torch.where(em[labels][:, None], frame_em, known)


def mask_runs(mask: Tensor, keep: Tensor, share: float, run: int) -> Tensor:
    """Valid timesteps `(B, T)` with about `share` of each row's valid ones masked out, in runs of
    `run` timesteps starting at valid ones drawn at random: the attention clip head's time masking
    in training (it must name the class from what is left). A row whose `keep (B, T)` timesteps
    (its event) would all go stays whole."""
    if not 0 <= share < 1 or run < 1:
        raise ValueError(f"time masking needs 0 <= share < 1 and run >= 1, got {share}, {run}")
    out = mask.clone()
    T = mask.shape[1]
    steps = torch.arange(run, device=mask.device)
    for i in range(len(mask)):
        valid = mask[i].nonzero()[:, 0]
        n = round(share * len(valid) / run)
        if n == 0:
            continue
        starts = valid[torch.randint(len(valid), (n,), device=mask.device)]
        row = mask[i].clone()
        row[(starts[:, None] + steps).flatten().clamp_max(T - 1)] = False
        if keep[i].any() and not (row & keep[i]).any():
            continue
        out[i] = row
    return out


def paste_events(
    states: tuple[Tensor, ...],
    mask: Tensor,
    pick: Tensor,
    labels: Tensor,
    emergency: Tensor,
    share: float,
    stride: int = 1,
) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    """Event pasting, the attention clip head's augmentation in training: each emergency window
    of the batch, with chance `share`, becomes its event (its `pick` timesteps, first to last)
    written over a normal window of the same batch at a random place inside that window's valid
    prefix, keeping its phase modulo `stride`: the same label and event in another scene.

    `states` `(B, T, D)` each, valid timesteps `mask (B, T)`, event timesteps `pick (B, T)`, window
    labels `(B,)`; returns new states, mask and pick (rows not pasted as they were). A batch with
    no normal window is returned unchanged; so is a row whose drawn background's valid prefix is
    shorter than its event."""
    if not 0 <= share <= 1 or stride < 1:
        raise ValueError(
            f"event pasting needs 0 <= share <= 1 and stride >= 1, got {share}, {stride}"
        )
    is_em = emergency.to(labels.device)[labels]
    normal = (~is_em).nonzero()[:, 0]
    if share == 0 or len(normal) == 0:
        return states, mask, pick
    out, mask_out, pick_out = [s.clone() for s in states], mask.clone(), pick.clone()
    for i in is_em.nonzero()[:, 0].tolist():
        steps = pick[i].nonzero()[:, 0]
        if len(steps) == 0 or float(torch.rand(())) >= share:
            continue
        a, b = int(steps[0]), int(steps[-1]) + 1
        j = int(normal[torch.randint(len(normal), ())])
        slots = (int(mask[j].sum()) - (b - a) - a % stride) // stride + 1
        if slots < 1:
            continue
        t = a % stride + stride * int(torch.randint(slots, ()))
        for o, s in zip(out, states, strict=True):
            o[i] = s[j]
            o[i, t : t + b - a] = s[i, a:b]
        mask_out[i] = mask[j]
        pick_out[i] = False
        pick_out[i, t : t + b - a] = pick[i, a:b]
    return tuple(out), mask_out, pick_out


def augment_clip_inputs(
    encoded: Encoded,
    mask: Tensor,
    pick: Tensor,
    labels: Tensor,
    emergency: Tensor,
    paste: float,
    time_mask: float,
    stride: int,
) -> tuple[Encoded, Tensor, Tensor]:
    """What the attention clip head reads in a training step: the head's states (`encoded.states`,
    or `hidden` when the layers are not weighted) with events pasted (`paste_events`), then about
    `time_mask` of the timesteps masked out in runs of 6 strided steps (`mask_runs`). The encoded
    tuple returned is a copy; the decoder's `hidden` of `encoded` is never changed for it."""
    weighted = encoded.states is not None
    states = encoded.states if weighted else (encoded.hidden,)
    if paste > 0:
        states, mask, pick = paste_events(states, mask, pick, labels, emergency, paste, stride)
    if time_mask > 0:
        mask = mask_runs(mask, pick, time_mask, 6 * stride)
        pick = pick & mask
    clip = encoded._replace(states=states) if weighted else encoded._replace(hidden=states[0])
    return clip, mask, pick


def pooled_class_loss(logits: Tensor, targets: Tensor, labels: Tensor, emergency: Tensor) -> Tensor:
    """The clip-level loss on pooled timesteps, from the evidence the clip class is read from.

    Logits `(B, k, K + 1)`, timestep targets `(B, k)` (IGNORE skipped), window labels `(B,)`. An
    emergency window pools its emergency timesteps and is scored over the emergency columns; a
    normal window pools its known timesteps and is scored over the normal columns: the negative
    log of the window class's mean probability, renormalised over that block (`clip_class_probs`).
    """
    pick = event_pick(targets, labels, emergency)  # (B, k)
    cols = block_columns(emergency.to(labels.device)[labels], emergency)  # (B, K + 1)
    probs = logits.float().softmax(-1)
    summed = (probs * pick[..., None]).sum(1) * cols  # (B, K + 1)
    p = summed.gather(1, labels[:, None])[:, 0] / summed.sum(1).clamp_min(1e-12)
    ok = pick.any(1)
    if not ok.any():
        return logits.sum() * 0.0
    return -p[ok].clamp_min(1e-8).log().mean()


def block_cross_entropy(logits: Tensor, labels: Tensor, emergency: Tensor) -> Tensor:
    """Cross-entropy of clip logits `(B, K + 1)` over the block of the window's own kind: the
    emergency columns for an emergency window, the normal ones (never `none`) otherwise, as the
    clip class is read once the vote has chosen the block."""
    cols = block_columns(emergency.to(labels.device)[labels], emergency)
    return F.cross_entropy(logits.float().masked_fill(~cols, float("-inf")), labels)


def text_keep(
    transcripts: list[str],
    emergency: list[bool],
    speech: float,
    speechless: float,
    normal_speech: float | None = None,
) -> list[bool]:
    """Whether the text loss keeps each training window (on a CPU the decoder's step costs more
    than the head's), drawn (`torch.rand`, one draw per window)
    with chance `speech` where its transcript has words, `speechless` where it has none (they
    teach "say nothing"), and `normal_speech` (None: `speech`) where it has words and its class
    is not an emergency. The demo's training speech is 4 parts emergency lines to 1 part everyday
    lines; a decoder fine-tuned on that hears emergency lines in everyday talk."""
    shares = [
        speechless if not t.strip() else speech if e or normal_speech is None else normal_speech
        for t, e in zip(transcripts, emergency, strict=True)
    ]
    return [float(torch.rand(())) < s for s in shares]
