"""The attention clip head: the window's class from the encoder states it learns to look at.

The event-pooled clip head (`WhisperHeadModel.clip_logits`) reads the timesteps the timestep head
points at, so its class is only as good as that localisation. This head needs none: the encoder
layers are mixed, averaged over `stride` timesteps (80 ms at 4), passed through a small MLP and
pooled by gated attention (Ilse et al., 2018, "Attention-based deep multiple instance learning")
beside a max over time; one linear layer gives the logits. In training, a second loss pulls the
attention towards the labelled event (`attention_loss`), so it learns where to look from the
labels the data has, but at prediction it looks by itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEG = -1e4  # attention score of a padded step (finite: a row of padding stays a distribution)


def strided_mask(mask: Tensor, stride: int) -> Tensor:
    """Valid timesteps `(B, T)` -> valid steps `(B, ceil(T / stride))`: any valid timestep in it."""
    B, T = mask.shape
    pad = -T % stride
    m = F.pad(mask, (0, pad), value=False) if pad else mask
    return m.reshape(B, -1, stride).any(-1)


def strided_mean(x: Tensor, stride: int) -> Tensor:
    """`(B, T, D)` -> `(B, ceil(T / stride), D)`: the mean of each run of `stride` timesteps."""
    B, T, D = x.shape
    pad = -T % stride
    if pad:
        x = torch.cat([x, x[:, -1:].expand(B, pad, D)], 1)
    return x.reshape(B, -1, stride, D).mean(2)


def strided_mean_layers(x: Tensor, stride: int) -> Tensor:
    """`(B, L, T, D)` -> `(B, L, ceil(T / stride), D)`: `strided_mean` of every layer."""
    B, L, T, D = x.shape
    return strided_mean(x.reshape(B * L, T, D), stride).reshape(B, L, -1, D)


class AttentionClipHead(nn.Module):
    """Layer states `(B, T, D)` each, valid timesteps `(B, T)` -> clip logits `(B, K + 1)` and the
    attention's log-probabilities over the strided steps `(B, ceil(T / stride))`."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_outputs: int,
        hidden: int = 256,
        attention_dim: int = 128,
        stride: int = 4,
        dropout: float = 0.3,
    ):
        super().__init__()
        if stride < 1 or hidden < 1 or attention_dim < 1:
            raise ValueError(f"bad stride {stride}, hidden {hidden}, attention_dim {attention_dim}")
        self.stride = stride
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.frames = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.attn_v = nn.Linear(hidden, attention_dim)
        self.attn_u = nn.Linear(hidden, attention_dim)
        self.attn_w = nn.Linear(attention_dim, 1)
        self.out = nn.Linear(2 * hidden, n_outputs)

    def forward(self, states: tuple[Tensor, ...], mask: Tensor) -> tuple[Tensor, Tensor]:
        dtype = self.out.weight.dtype
        w = self.layer_logits.softmax(0).to(dtype)
        x = sum(
            wi * F.layer_norm(t.to(dtype), t.shape[-1:]) for wi, t in zip(w, states, strict=True)
        )
        return self._attend(strided_mean(x, self.stride), strided_mask(mask, self.stride))

    def pool(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """What `forward` does to states already layer-normalised and strided, layer by layer:
        `(B, L, S, D)` and valid steps `(B, S)` -> logits and the attention's log-probabilities
        (`benchmarks/clip_pool.py` trains the head so, on features held in memory)."""
        w = self.layer_logits.softmax(0).to(x.dtype)
        return self._attend(torch.einsum("l,blsd->bsd", w, x), m)

    def _attend(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed, strided states `(B, S, D)`, valid steps `(B, S)` -> logits, log attention."""
        m = torch.where(m.any(1, keepdim=True), m, torch.ones_like(m))  # all padding: read all
        h = self.frames(x)
        score = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))[..., 0]
        log_att = score.float().masked_fill(~m, NEG).log_softmax(1)
        pooled = (log_att.exp().to(h.dtype)[..., None] * h).sum(1)
        peak = h.masked_fill(~m[..., None], NEG).amax(1)
        return self.out(torch.cat([pooled, peak], -1)), log_att


def attention_target_loss(log_att: Tensor, pick: Tensor, stride: int) -> Tensor:
    """Cross-entropy of the attention `(B, S)` against the uniform distribution over the picked
    timesteps `pick (B, T)` (the event), divided by log S so that 1 is a uniform attention's
    loss on the whole window; rows that pick nothing are left out."""
    target = strided_mask(pick, stride).float()
    ok = target.sum(1) > 0
    if not ok.any():
        return log_att.sum() * 0.0
    target = target[ok] / target[ok].sum(1, keepdim=True)
    ce = -(target * log_att[ok].clamp_min(NEG)).sum(1)
    return ce.mean() / math.log(max(log_att.shape[1], 2))
