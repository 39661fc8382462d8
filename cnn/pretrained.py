"""The mel CNN on an ImageNet-pretrained backbone: EfficientNet-Lite0 fine-tuned on log-mel images.

Trained from scratch, the small `MelCNN` has 80 clips per class to learn what a flame, a hiss or a
shouted word looks like. Image networks pretrained on ImageNet transfer to spectrograms (PANNs,
AST): their early filters find edges, onsets and harmonic stacks wherever they are. This model
puts the `weights` extra's EfficientNet-Lite0 (`ensemble.core.efficientnet`) behind the same
front end and the same interface as `MelCNN`, so `CNNModule` and crop scoring work unchanged, and
so do integrated-gradient relevance maps (captum's LRP has no rules for EfficientNet's layers):

```
wave (B, N) ─ LogMel (128 bins, Whisper large-v3's filters; 10 ms frames) ─ (B, F, T)
  ─ image: per-clip dB, the peak at 1 and top_db below it at 0, low frequencies at the bottom,
    3 channels, ImageNet-normalised ─ EfficientNet-Lite0 to its 1280-channel map (B, 1280, F/32, T/32)
  ─ mean over frequency, max + mean over the valid time steps ─ (B, 1280)
  ─ dropout, Linear-ReLU ─ embedding (B, D) ─ dropout, Linear ─ logits (B, K)
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnn.model import MelCNN, max_plus_mean
from ensemble.core.efficientnet import (
    N_FEATURES,
    STAGES,
    EfficientNetLite0,
    load_pretrained,
    normalize,
)

DB_PER_NEPER = 10.0 / math.log(10.0)  # dB of power per unit of natural log


@dataclass(frozen=True)
class PretrainedMelCNNConfig:
    n_classes: int = 19
    n_mels: int = 128  # mel bins: the image's height (Whisper large-v3's 128 filters)
    emb_dim: int = 256
    dropout: float = 0.2
    top_db: float = 80.0  # dB below the clip's peak that map to black
    time_pool: int = 2  # mel frames (10 ms) averaged into one image column
    frozen_stages: int = 3  # the stem and this many first stages keep their ImageNet weights
    log_floor: float = 1e-6  # added to mel power before the log (silence)
    load_weights: bool = True  # ImageNet weights of the `weights` extra when the model is built

    def __post_init__(self) -> None:
        if self.n_classes < 2 or self.emb_dim < 1 or self.n_mels < 32:
            raise ValueError(f"bad sizes in {self} (n_mels must be at least 32)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.top_db <= 0 or self.time_pool < 1:
            raise ValueError(f"top_db and time_pool must be positive, got {self}")
        if not 0 <= self.frozen_stages <= len(STAGES):
            raise ValueError(
                f"frozen_stages must be in [0, {len(STAGES)}], got {self.frozen_stages}"
            )


def mel_image(
    mel: Tensor, top_db: float, n_frames: Tensor | None = None, time_pool: int = 1
) -> Tensor:
    """Log-mel `(B, F, T)` (natural log of power) -> ImageNet-normalised images
    `(B, 3, F, ceil(T / time_pool))`.

    Each clip's peak over its first `n_frames` frames (all when None) maps to 1 and `top_db` below
    it to 0, so loudness does not matter; `time_pool` frames are averaged (as power) into a column;
    row 0 is the highest band, as a picture of a spectrogram has it.
    """
    if time_pool > 1:
        power = F.avg_pool1d(mel.exp(), time_pool, time_pool, ceil_mode=True)
        mel = power.clamp(min=1e-10).log()
        n_frames = None if n_frames is None else (n_frames + time_pool - 1) // time_pool
    db = mel * DB_PER_NEPER
    if n_frames is not None:
        valid = torch.arange(mel.shape[-1], device=mel.device) < n_frames[:, None]  # (B, T)
        db_valid = db.masked_fill(~valid[:, None, :], float("-inf"))
    else:
        db_valid = db
    peak = db_valid.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    img = ((db - peak) / top_db + 1.0).clamp(0.0, 1.0).flip(1)  # (B, F, T)
    return normalize(img[:, None].expand(-1, 3, -1, -1))


class PretrainedMelClassifier(nn.Module):
    """Log-mel `(B, F, T)` -> logits `(B, K)`: the part relevance maps differentiate through."""

    def __init__(self, config: PretrainedMelCNNConfig):
        super().__init__()
        self.config = c = config
        self.backbone = load_pretrained() if c.load_weights else EfficientNetLite0()
        self.backbone._fc = nn.Identity()  # the ImageNet classifier is not used
        n_frozen = self.backbone.stage_ends[c.frozen_stages - 1] + 1 if c.frozen_stages else 0
        # a plain list, not a submodule: the state dict keeps one name per weight
        self.frozen: list[nn.Module] = [
            self.backbone._conv_stem,
            self.backbone._bn0,
            *self.backbone._blocks[:n_frozen],
        ]
        for module in self.frozen:
            module.requires_grad_(False)
        self.fc = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(N_FEATURES, c.emb_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.emb_dim, c.n_classes))
        self.train()  # `load_pretrained` gives an eval-mode network; Lightning keeps modes as found

    def train(self, mode: bool = True) -> PretrainedMelClassifier:
        """The module's mode; the frozen layers stay in eval mode (their BatchNorm statistics are
        ImageNet's)."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def embed(self, mel: Tensor, n_frames: Tensor | None = None) -> Tensor:
        """Log-mel `(B, F, T)` -> embedding `(B, D)`; `n_frames (B,)` frames of audio per row (time
        pooling and the image's peak ignore the padding after them), None: every frame counts."""
        c = self.config
        if n_frames is not None:  # padding that every row has is cut before the network sees it
            mel = mel[..., : max(int(n_frames.max()), 1)]
        x = self.backbone.forward_features(mel_image(mel, c.top_db, n_frames, c.time_pool))
        x = x.mean(dim=2)  # (B, 1280, T')
        n = None if n_frames is None else torch.ceil(n_frames * x.shape[-1] / mel.shape[-1])
        return self.fc(max_plus_mean(x, n))

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.embed(mel))


class PretrainedMelCNN(MelCNN):
    """Waveform `(B, N)` -> `CNNOutput(logits (B, K), embedding (B, D))`: `MelCNN`'s front end and
    interface on `PretrainedMelClassifier`."""

    config_class: ClassVar[type] = PretrainedMelCNNConfig
    classifier_class: ClassVar[type[nn.Module]] = PretrainedMelClassifier

    def __init__(self, config: PretrainedMelCNNConfig | None = None):  # the type jsonargparse reads
        super().__init__(config)
