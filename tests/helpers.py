"""What several test files need: a quiet CPU trainer, noise WAVs and a tiny Whisper member's
config (tests/ is on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import soundfile as sf

SR = 16000


def quiet_trainer(root: Path | None = None, **kwargs) -> pl.Trainer:
    """A one-process CPU trainer that prints nothing: CSV logs under `root` (no logger without
    one), no progress bar, no model summary; `kwargs` override any of it."""
    args = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=pl.loggers.CSVLogger(root, name="log") if root is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**args, **kwargs})


def noise_wav(seconds: float = 0.5, seed: int = 0, sr: int = SR, level: float = 0.05) -> bytes:
    """Gaussian noise as 16-bit PCM WAV bytes."""
    noise = np.random.default_rng(seed).normal(0, level, int(seconds * sr)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, noise, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_noise(path: Path, seconds: float = 0.5, seed: int = 0, level: float = 0.05) -> Path:
    """`noise_wav` written to `path` (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(noise_wav(seconds, seed, level=level))
    return path


def tiny_whisper(**kwargs):
    """The config of a Whisper member on random tiny weights (nothing downloaded), a head of width
    8, no dropout; `kwargs` set its other fields."""
    from whisper_head.model import WhisperHeadConfig

    return WhisperHeadConfig(**{"source": "random:tiny", "hidden_dim": 8, "dropout": 0.0, **kwargs})
