"""The training-free anomaly member: pretrained EfficientNet-Lite0 moments and a kNN memory bank.

Fit runs one epoch and trains nothing (no optimizer: Lightning's automatic optimization steps a
stand-in and counts `global_step`, which keeps ModelCheckpoint working; the backbone stays in eval
mode, so its BatchNorm statistics never move):
- `on_train_start` loads the ImageNet weights (`efficientnet.load_pretrained`) into the backbone
  when the bank is empty, not in `__init__`, so rebuilding from a checkpoint reads no other file;
- training steps only collect the moments of the normal train windows (`moments.MomentNet`);
- the bank is filled with their coreset before validation (`on_validation_epoch_start`), or at the
  end of the training epoch when no validation runs;
- validation scores every val window, sets the threshold at `threshold_fpr` on the normal val
  windows' scores and `scale` to their standard deviation, and logs `val/auc` and `val/pauc`.
  Without validation during fit, the end of the training epoch sets the threshold from the val
  loader.
`p_emergency = sigmoid((score - threshold) / scale)`, `vote = score > threshold`, as in
`AnomalyModule`. The bank, threshold and scale are buffers: checkpoints rebuild with
`weights_only=True`. One device: the moments are not gathered across processes.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from anomaly.moments import MomentNet
from anomaly.scored import ScoredAnomalyMember
from ensemble.core.efficientnet import load_pretrained
from ensemble.core.member import MemberOutput
from ensemble.core.metrics import binary_metrics

log = logging.getLogger(__name__)


class MomentAnomalyModule(ScoredAnomalyMember):
    """kNN distance of pretrained feature columns to those of normal train audio; no training.

    `load_weights`: load the ImageNet weights when fit starts on an empty bank (False keeps the
    backbone's current weights, e.g. random ones in a quick test).
    """

    model_class = MomentNet

    def __init__(
        self,
        model: MomentNet,
        threshold_fpr: float = 0.05,
        max_fpr: float = 0.1,
        seed: int = 0,
        load_weights: bool = True,
    ):
        super().__init__(model)
        self.save_hyperparameters(ignore=["model"])
        for name, value in (("threshold_fpr", threshold_fpr), ("max_fpr", max_fpr)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        self.calibration: dict[str, float] = {}
        self._pending: list[Tensor] = []  # moments of the normal train windows seen this epoch
        self._scores: list[tuple[Tensor, Tensor]] = []

    # --- setup and optimiser -------------------------------------------------------------

    def configure_optimizers(self) -> None:
        return None  # nothing is trained

    # --- fit: collect moments, fill the bank ---------------------------------------------

    def on_train_start(self) -> None:
        if self.hparams.load_weights and not self.model.bank_filled:
            self.model.backbone.load_state_dict(load_pretrained().state_dict())
            log.info("loaded the ImageNet EfficientNet-Lite0 weights into the backbone")

    def on_train_epoch_start(self) -> None:
        self._pending = []

    def training_step(self, batch: dict, batch_idx: int) -> None:
        keep = ~self._is_emergency(batch["label"])
        if keep.any():
            wave, n_valid = batch["wave"][keep], self._n_valid(batch)
            n_valid = None if n_valid is None else n_valid[keep]
            self._pending.extend(m.cpu() for m in self.model.moments(wave, n_valid))
        return None

    def on_train_epoch_end(self) -> None:
        # runs after this epoch's validation and before ModelCheckpoint saves at the epoch's end
        self._finish_fit()

    def on_train_end(self) -> None:
        self._finish_fit()

    def _finish_fit(self) -> None:
        self._fill_bank()
        if self.model.bank_filled and torch.isnan(self.threshold):
            log.info("no validation during fit: setting the threshold from the val loader")
            self.calibrate()

    def _fill_bank(self) -> None:
        if not self._pending:
            return
        moments = torch.cat(self._pending)
        self.model.fill_bank(moments, self.hparams.seed)
        log.info("bank: %d of %d moments", int(self.model.n_bank), len(moments))
        self._pending = []

    # --- validation and test -------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._scores = []
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._fill_bank()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._scores = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def _eval_step(self, batch: dict) -> None:
        if self.model.bank_filled:
            score = self.model.score(batch["wave"], self._n_valid(batch))
            self._scores.append((score.cpu(), self._is_emergency(batch["label"]).cpu()))

    def _eval_end(self, stage: str) -> None:
        if not self._scores or self.trainer.sanity_checking:
            return
        scores = torch.cat([s for s, _ in self._scores])
        targets = torch.cat([t for _, t in self._scores])
        if stage == "val" and self.trainer.state.fn == "fit":
            self._set_threshold(scores[~targets])
        m = binary_metrics(targets.numpy(), scores.numpy(), self.hparams.max_fpr)
        self.log_dict({f"{stage}/auc": m["auc"], f"{stage}/pauc": m["pauc"]})
        self._scores = []

    # --- calibration ---------------------------------------------------------------------

    def calibrate(self) -> dict[str, float]:
        """Threshold and scale from the val loader's normal windows (the bank must be filled).

        Returns (and keeps in `self.calibration`) the val AUC and pAUC and the threshold.
        """
        try:
            val = self._loader("val")
        except ValueError as e:  # the datamodule has no val split
            log.warning("%s: the threshold stays unset", e)
            return {}
        scores, flags = [], []
        for batch in val:
            on_device = {k: batch[k].to(self.device) for k in ("wave", "mask") if k in batch}
            scores.append(self.model.score(on_device["wave"], self._n_valid(on_device)).cpu())
            flags.append(self._is_emergency(batch["label"]).cpu())
        score, targets = torch.cat(scores), torch.cat(flags)
        self._set_threshold(score[~targets])
        m = binary_metrics(targets.numpy(), score.numpy(), self.hparams.max_fpr)
        self.calibration = {**m, "threshold": float(self.threshold)}
        log.info("calibrated: %s", self.calibration)
        return self.calibration

    # --- prediction ----------------------------------------------------------------------

    def score(self, batch: dict) -> Tensor:
        """Anomaly score `(B,)` of `wave (B, N)` with optional `mask (B, T)`."""
        return self.model.score(batch["wave"], self._n_valid(batch))

    def predict_step(
        self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0
    ) -> MemberOutput:
        if torch.isnan(self.threshold) or not self.model.bank_filled:
            raise RuntimeError("the moment member is not calibrated: fit it or load a checkpoint")
        moments = self.model.moments(batch["wave"], self._n_valid(batch))
        score = self.model.score_moments(moments)  # (B,)
        return self._output(score, torch.stack([m.mean(dim=0) for m in moments]))  # (B, C)
