"""What both anomaly members share: a score per window turned into a vote by a threshold set on
normal val windows, and the batch plumbing around it.

`ScoredAnomalyMember` holds the `threshold` and `scale` buffers (checkpoints rebuild with
`weights_only=True`), sets them from normal val scores (`_set_threshold`: the threshold at
`hparams.threshold_fpr`, the scale their standard deviation), and turns scores into the member's
output: `p_emergency = sigmoid((score - threshold) / scale)`, `vote = score > threshold`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ensemble.core.data import valid_samples
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput, emergency_targets
from ensemble.core.metrics import threshold_at_fpr

log = logging.getLogger(__name__)


class ScoredAnomalyMember(MemberModule):
    """A member whose vote is an anomaly score above a threshold from normal val windows."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.register_buffer("threshold", torch.tensor(float("nan")))  # score units; NaN = unset
        self.register_buffer("scale", torch.tensor(1.0))  # score units per logit of p_emergency
        self.taxonomy: Taxonomy | None = None

    def setup(self, stage: str) -> None:
        self.taxonomy = getattr(self.trainer.datamodule, "taxonomy", None) or load_taxonomy()

    def _set_threshold(self, normal_scores: Tensor) -> None:
        if len(normal_scores) == 0:
            log.warning("no normal validation windows: the threshold stays unset")
            return
        s = normal_scores.detach().double().cpu().numpy()
        self.threshold.fill_(threshold_at_fpr(s, self.hparams.threshold_fpr))
        std = float(np.std(s))
        self.scale.fill_(std if std > 0 else 1.0)
        log.info(
            "threshold %.4g: false-positive rate %.2f on %d normal val windows",
            float(self.threshold), self.hparams.threshold_fpr, len(s),
        )  # fmt: skip

    def _output(self, score: Tensor, embedding: Tensor) -> MemberOutput:
        return MemberOutput(
            p_emergency=torch.sigmoid((score - self.threshold) / self.scale).float(),
            vote=score > self.threshold,
            embedding=embedding,
        )

    def _n_valid(self, batch: dict) -> Tensor | None:
        wave = batch["wave"]
        if not isinstance(wave, Tensor) or wave.ndim != 2:
            raise ValueError(
                f"batch['wave'] must be a (B, N) tensor, got {getattr(wave, 'shape', wave)}"
            )
        mask = batch.get("mask")
        if mask is None:
            return None
        if mask.ndim != 2 or mask.shape[0] != wave.shape[0]:
            raise ValueError(
                f"batch['mask'] must be (B, T) with B={wave.shape[0]}, got {tuple(mask.shape)}"
            )
        return valid_samples(mask, wave.shape[1])

    def _is_emergency(self, labels: Tensor) -> Tensor:
        if self.taxonomy is None:
            self.taxonomy = load_taxonomy()
        return emergency_targets(labels, self.taxonomy)

    def _loader(self, split: str) -> Any:
        """A fresh loader of a split from the datamodule (a new iterator never disturbs fit's)."""
        dm = self.trainer.datamodule
        if dm is not None:
            return getattr(dm, f"{split}_dataloader")()
        return self.trainer.train_dataloader if split == "train" else self.trainer.val_dataloaders
