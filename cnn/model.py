"""The mel-spectrogram CNN: waveform in, 19 situation logits and an embedding out.

In the spirit of PANNs' CNN6/CNN10: the log-mel front end sits inside the model (so one waveform
loader feeds every member), then blocks of (conv3x3-BN-ReLU) x n and 2x2 average pooling, a mean
over frequency, max + mean over time, a fully connected embedding and the classifier.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import librosa
import torch
from torch import Tensor, nn

from ensemble.core.audio import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE


@dataclass(frozen=True)
class MelCNNConfig:
    n_classes: int = 19
    n_mels: int = N_MELS
    widths: tuple[int, ...] = (64, 128, 256, 512)  # channels of each block; PANNs CNN10
    convs_per_block: int = 2  # 2 = CNN10-like, 1 = lighter
    emb_dim: int = 512
    dropout: float = 0.2
    log_floor: float = 1e-6  # added to mel power before the log: silence maps to log(1e-6)
    # "flatten": keep the F' remaining frequency rows as features (spectral shape survives a
    # narrow network); "mean": average them away, as PANNs' wide networks do
    freq_pool: Literal["mean", "flatten"] = "flatten"

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if self.convs_per_block < 1 or self.n_classes < 2 or self.emb_dim < 1:
            raise ValueError(f"bad sizes in {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class CNNOutput(NamedTuple):
    logits: Tensor  # (B, K)
    embedding: Tensor  # (B, D)


class LogMel(nn.Module):
    """Waveform `(B, N)` at 16 kHz -> log-mel `(B, F, T)`, T = N / 160 + 1 (Whisper's STFT)."""

    def __init__(self, n_mels: int = N_MELS, floor: float = 1e-6):
        super().__init__()
        self.floor = floor
        filters = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)  # (F, N_FFT/2+1)
        self.register_buffer("filters", torch.from_numpy(filters), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = stft.abs() ** 2  # (B, N_FFT/2+1, T)
        return torch.log(self.filters @ power + self.floor)  # (B, F, T)


def max_plus_mean(x: Tensor, n_steps: Tensor | None = None) -> Tensor:
    """Features `(B, C, T)` -> `(B, C)`: max + mean over time, over the first `n_steps (B,)` steps
    of each row (clamped to [1, T]; None: all of them)."""
    if n_steps is None:
        return x.amax(dim=2) + x.mean(dim=2)
    T = x.shape[-1]
    n = n_steps.long().clamp(1, T)
    valid = (torch.arange(T, device=x.device) < n[:, None])[:, None, :]  # (B, 1, T)
    peak = x.masked_fill(~valid, float("-inf")).amax(dim=2)
    return peak + (x * valid).sum(dim=2) / n[:, None]


class ConvBlock(nn.Module):
    """(conv3x3-BN-ReLU) x n, then 2x2 average pooling: `(B, C, F, T)` -> `(B, D, F/2, T/2)`."""

    def __init__(self, c_in: int, c_out: int, n_convs: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        layers.append(nn.AvgPool2d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MelClassifier(nn.Module):
    """Log-mel `(B, F, T)` -> logits `(B, K)`: the part relevance maps differentiate through."""

    def __init__(self, config: MelCNNConfig):
        super().__init__()
        self.config = c = config
        # per-mel-bin normalisation, as in PANNs; 2d (over (B, F, T, 1)) so that LRP has a rule for it
        self.bn0 = nn.BatchNorm2d(c.n_mels)
        channels = (1, *c.widths)
        self.blocks = nn.Sequential(
            *(ConvBlock(a, b, c.convs_per_block) for a, b in itertools.pairwise(channels))
        )
        n_freq = c.n_mels // 2 ** len(c.widths) if c.freq_pool == "flatten" else 1
        if n_freq < 1:
            raise ValueError(f"{len(c.widths)} blocks halve {c.n_mels} mel bins to nothing")
        self.fc = nn.Sequential(
            nn.Dropout(c.dropout), nn.Linear(c.widths[-1] * n_freq, c.emb_dim), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.emb_dim, c.n_classes))

    def embed(self, mel: Tensor, n_frames: Tensor | None = None) -> Tensor:
        """Log-mel `(B, F, T)` -> embedding `(B, D)`.

        `n_frames (B,)`: frames of audio in each row; time pooling then ignores the padding after
        them, so a clip scores the same alone or padded to 30 s. None: every frame counts.
        """
        x = self.bn0(mel.unsqueeze(-1)).squeeze(-1).unsqueeze(1)  # (B, F, T, 1) -> (B, 1, F, T)
        x = self.blocks(x)  # (B, C, F', T')
        # (B, C, T') or (B, C * F', T')
        x = x.mean(dim=2) if self.config.freq_pool == "mean" else x.flatten(1, 2)
        n = None if n_frames is None else n_frames // (mel.shape[-1] // x.shape[-1])
        return self.fc(max_plus_mean(x, n))  # (B, D)

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.embed(mel))


class MelCNN(nn.Module):
    """Waveform `(B, N)` -> `CNNOutput(logits (B, K), embedding (B, D))`.

    The log-mel front end, then `classifier_class` (a module with `embed(mel, n_frames)` and
    `head`) built from the config; subclasses swap both classes.
    """

    config_class: ClassVar[type] = MelCNNConfig
    classifier_class: ClassVar[type[nn.Module]] = MelClassifier

    def __init__(self, config: MelCNNConfig | None = None):
        super().__init__()
        self.config = config or self.config_class()
        self.mel = LogMel(self.config.n_mels, self.config.log_floor)
        self.classifier = self.classifier_class(self.config)

    def forward_mel(self, mel: Tensor, n_frames: Tensor | None = None) -> CNNOutput:
        emb = self.classifier.embed(mel, n_frames)
        return CNNOutput(self.classifier.head(emb), emb)

    def forward(self, wave: Tensor, n_valid: Tensor | None = None) -> CNNOutput:
        """`wave (B, N)`; `n_valid (B,)` samples of audio per row (the rest padding) or None."""
        n_frames = None if n_valid is None else n_valid // HOP_LENGTH + 1
        return self.forward_mel(self.mel(wave), n_frames)
