"""Training callbacks shared by the member configs."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class SamplesPerSecond(pl.Callback):
    """Logs `train/samples_per_s`: training windows per wall second of each epoch, all ranks, and
    `train/epoch_s`: the epoch's wall time. Both include the validation run at the epoch's end
    (Lightning calls `on_train_epoch_end` after it)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += len(batch["wave"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._start
        if self._n and elapsed > 0:
            rate = self._n * trainer.world_size / elapsed
            pl_module.log("train/samples_per_s", rate, rank_zero_only=True)
            pl_module.log("train/epoch_s", elapsed, rank_zero_only=True)
