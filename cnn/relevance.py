"""Relevance maps: which time-frequency regions of the log-mel drove the CNN's decision.

Integrated gradients (default) or layer-wise relevance propagation (LRP, as in the slides), both
from captum, computed on the log-mel input of the classifier. The baseline of integrated gradients
is silence (every mel bin at the log floor), so relevance says what the sound added.

    python -m cnn.relevance CKPT FILE [FILE ...] --out DIR [--method ig|lrp] [--start 0]

writes one `<file stem>.relevance.png` per file: the log-mel of the 30 s window and the relevance
of the predicted class over it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from captum.attr import LRP, IntegratedGradients

from cnn.model import MelClassifier, MelCNN
from cnn.module import CNNModule
from ensemble.core.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    AudioError,
    load_audio,
    seconds_to_samples,
)
from ensemble.core.plots import plot_relevance

log = logging.getLogger(__name__)


@dataclass
class Relevance:
    mel: np.ndarray  # (F, T) log-mel of the valid part of the window
    relevance: np.ndarray  # (F, T) signed relevance for `target`
    target: int  # taxonomy id explained
    probs: np.ndarray  # (K,) class probabilities of the window


def relevance_map(
    model: MelCNN,
    wave: torch.Tensor,
    target: int | None = None,
    method: Literal["ig", "lrp"] = "ig",
    steps: int = 32,
) -> Relevance:
    """Relevance of one window `wave (N,)` (padded to 30 s) for taxonomy id `target`.

    `target=None` explains the predicted class. The model is put in eval mode.
    """
    if wave.ndim != 1:
        raise ValueError(f"wave must be (N,), got {tuple(wave.shape)}")
    model.eval()
    n_valid = min(len(wave), N_SAMPLES)
    x = torch.zeros(1, N_SAMPLES, device=wave.device)
    x[0, :n_valid] = wave[:n_valid]
    with torch.no_grad():
        mel = model.mel(x)  # (1, F, T)
        probs = model.forward_mel(mel).logits.softmax(dim=1)[0]  # (K,)
    column = int(probs.argmax()) if target is None else target - 1
    if method == "ig":
        baseline = torch.full_like(mel, math.log(model.config.log_floor))
        attr = IntegratedGradients(model.classifier).attribute(
            mel, baseline, target=column, n_steps=steps, internal_batch_size=8
        )
    elif method == "lrp":
        if not isinstance(model.classifier, MelClassifier):
            raise ValueError(
                f"method='lrp' has rules for MelCNN's layers only, not {type(model).__name__}'s "
                "(EfficientNet's padded and depthwise convolutions): use method='ig'"
            )
        attr = LRP(model.classifier).attribute(mel.clone().requires_grad_(), target=column)
    else:
        raise ValueError(f"method must be 'ig' or 'lrp', got {method!r}")
    n_frames = min(mel.shape[-1], n_valid // HOP_LENGTH + 1)  # frames centred inside the audio
    return Relevance(
        mel=mel[0, :, :n_frames].cpu().numpy(),
        relevance=attr[0, :, :n_frames].detach().cpu().numpy(),
        target=column + 1,
        probs=probs.cpu().numpy(),
    )


def explain_files(
    module: CNNModule,
    files: list[Path],
    out: Path,
    method: Literal["ig", "lrp"] = "ig",
    start_s: float = 0.0,
    steps: int = 32,
) -> list[Path]:
    """One relevance PNG per file (the 30 s window from `start_s`); unreadable files are logged."""
    written = []
    for f in files:
        try:
            wave = load_audio(f)
        except AudioError as e:
            log.error("%s", e)
            continue
        start = seconds_to_samples(start_s)
        piece = torch.from_numpy(wave[start : start + N_SAMPLES]).to(module.device)
        if not len(piece):
            log.error("%s: shorter than --start %.1f s", f, start_s)
            continue
        rel = relevance_map(module.model, piece, method=method, steps=steps)
        c = module.taxonomy[rel.target]
        title = f"{Path(f).name} [{start_s:.0f} s +30 s]: predicted {c.en}"
        written.append(
            plot_relevance(rel, module.taxonomy, out / f"{Path(f).stem}.relevance.png", title)
        )
        log.info("%s -> %s (%s)", f, written[-1], c.key)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnn.relevance", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--method", choices=("ig", "lrp"), default="ig")
    p.add_argument("--start", type=float, default=0.0, help="start of the window, seconds")
    p.add_argument("--steps", type=int, default=32, help="integration steps (ig)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = CNNModule.from_checkpoint(args.checkpoint)
    written = explain_files(module, args.files, args.out, args.method, args.start, args.steps)
    return 0 if len(written) == len(args.files) else 1


if __name__ == "__main__":
    sys.exit(main())
