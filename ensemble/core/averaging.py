"""An exponential moving average of a member's head, for validation, checkpoints and prediction.

A small head trained at a constant rate on a few hundred windows swings by several points of val
accuracy from one epoch to the next, and a small change of its inputs or of its seed moves where
it ends by as much (whisper_head/README.md). The average of its recent weights (Polyak averaging, as
`torch.optim.swa_utils` keeps it) is steadier. `HeadAverage` keeps that average of the trainable
parameters outside the frozen or slow backbone, scores validation with it, writes it into every
checkpoint in place of the raw weights and leaves it in the module when training ends.

Lightning's `WeightAveraging` callback averages the whole module (here the Whisper backbone too)
and is not called for weights-only checkpoints; this mixin is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class HeadAverage:
    """Mixin for a LightningModule. The subclass sets `average_decay` (the average's decay per
    optimizer step; None or 0: off) and `average_skip` (parameter-name prefixes left out, e.g. the
    backbone) in its `__init__`."""

    average_decay: float | None = None
    average_skip: tuple[str, ...] = ()

    def _averaged(self) -> dict[str, torch.nn.Parameter]:
        return {
            name: p
            for name, p in self.named_parameters()
            if p.requires_grad and not name.startswith(self.average_skip)
        }

    def on_train_start(self) -> None:
        super().on_train_start()
        self._average: dict[str, Tensor] | None = None
        self._average_steps, self._swapped = 0, False
        if self.average_decay:
            self._params = self._averaged()  # once: the trainable set is fixed while fitting
            self._average = {n: p.detach().clone() for n, p in self._params.items()}

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if getattr(self, "_average", None) is None:
            return
        self._average_steps += 1
        t = self._average_steps  # early steps weigh more, as in the usual warm-up of the decay
        decay = min(self.average_decay, (1 + t) / (10 + t))
        for name, p in self._params.items():
            self._average[name].lerp_(p.detach(), 1 - decay)

    def _swap(self) -> None:
        """Exchanges the parameters and the average (only while fitting: the average exists)."""
        if getattr(self, "_average", None) is None:
            return
        for name, p in self._params.items():
            raw = p.detach().clone()
            p.data.copy_(self._average[name])
            self._average[name] = raw
        self._swapped = not self._swapped

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._swap()  # validation scores the average

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._swap()  # training goes on from its own weights

    def on_train_end(self) -> None:
        super().on_train_end()
        if getattr(self, "_average", None) is not None:
            self._swap()  # the module keeps the average, as its checkpoints do
            self._average = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        average = getattr(self, "_average", None)
        if average is not None and not self._swapped:  # swapped: the parameters are the average
            state = checkpoint["state_dict"]
            for name in average:
                state[name] = average[name].detach().clone()
        super().on_save_checkpoint(checkpoint)
