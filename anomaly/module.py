"""The anomaly member as a LightningModule: CutPaste training, Gaussian density and threshold.

Training sees normal windows only (the DataModule's `train_classes: normal`). Each batch becomes
spectrogram images; CutPaste turns a copy of them into pseudo-anomalies and the network learns to
tell the two apart (cross-entropy).

Calibration is kept apart from training: the density and the threshold are fitted on
un-augmented images in eval mode, never on embeddings from training steps (whose BatchNorm uses
batch statistics and whose weights move during the epoch).
- Whenever validation runs during fit, `on_validation_epoch_start` embeds the normal windows of a
  fresh train loader and fits the density on them; validation steps score every val window with
  it; `on_validation_epoch_end` sets the threshold from the normal val scores and logs `val/auc`
  and `val/pauc` over val windows of both kinds.
- If training steps ran after the last validation (a `max_steps` stop mid-epoch,
  `check_val_every_n_epoch > 1`, `limit_val_batches=0`), `on_train_end` calibrates once more, so
  the module `fit` returns always matches its final weights. Checkpoints written by Lightning's
  ModelCheckpoint right after a validation hold a consistent state.
The mean, precision, threshold and scale are buffers: checkpoints rebuild with `weights_only=True`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor

from anomaly.cutpaste import augment, make_augmentation, n_classes
from anomaly.density import GaussianDensity
from anomaly.model import AnomalyNet, load_backbone
from anomaly.scored import ScoredAnomalyMember
from ensemble.core.data import valid_samples
from ensemble.core.member import MemberOutput
from ensemble.core.metrics import binary_metrics

log = logging.getLogger(__name__)


class AnomalyModule(ScoredAnomalyMember):
    """CutPaste self-supervision on normal audio; anomaly score = Mahalanobis distance.

    `p_emergency = sigmoid((score - threshold) / scale)` with `scale` the standard deviation of the
    normal val scores, so p = 0.5 exactly at the threshold and `vote = score > threshold`.
    `init_checkpoint` (a local ResNet-18 state dict, see `model.load_backbone`) is loaded when fit
    starts on an uncalibrated module, not in `__init__`, so rebuilding from a checkpoint reads no
    other file.
    """

    model_class = AnomalyNet

    def __init__(
        self,
        model: AnomalyNet,
        optimizer: OptimizerCallable | None = None,
        variant: Literal["cutpaste", "scar", "3way"] = "cutpaste",
        jitter: float = 0.1,
        threshold_fpr: float = 0.05,
        max_fpr: float = 0.1,
        seed: int = 0,
        init_checkpoint: str | None = None,
    ):
        super().__init__(model)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        if n_classes(variant) != model.config.n_classes:
            raise ValueError(
                f"variant {variant!r} needs n_classes={n_classes(variant)} in the model config, "
                f"got {model.config.n_classes}"
            )
        for name, value in (("threshold_fpr", threshold_fpr), ("max_fpr", max_fpr)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        self.optimizer = optimizer
        self.augmentation = make_augmentation(variant, jitter)
        self.density = GaussianDensity(model.config.embed_dim)
        self.calibration: dict[str, float] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._scores: list[tuple[Tensor, Tensor]] = []
        self._calibrated_at: int | None = None  # global_step of the last calibration

    # --- setup and optimiser -------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.init_checkpoint and not self.density.fitted:
            load_backbone(self.model.backbone, self.hparams.init_checkpoint)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-4)
        return self.optimizer(self.parameters())

    # --- training ------------------------------------------------------------------------

    def _step(self, batch: dict, stage: str) -> tuple[Tensor, Tensor]:
        """CutPaste loss of a batch and the embeddings `(B, D)` of its un-augmented images."""
        x = self.model.image(batch["wave"], self._n_valid(batch))  # (B, 3, S, S)
        B = x.shape[0]
        fake, fake_labels = augment(self.augmentation, x, self._generator(stage))  # (B', 3, S, S)
        out = self.model.forward_image(torch.cat([x, fake]))  # logits (B + B', K)
        targets = torch.cat([torch.zeros(B, dtype=torch.long, device=x.device), fake_labels])
        loss = F.cross_entropy(out.logits, targets)
        acc = (out.logits.argmax(dim=1) == targets).float().mean()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/acc": acc},
            batch_size=B,
            prog_bar=stage == "train",
            on_step=stage == "train",
            on_epoch=True,
        )
        return loss, out.embedding[:B]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def on_train_start(self) -> None:
        # one stream per rank, so ranks paste different patches
        self._generators["train"] = torch.Generator().manual_seed(
            self.hparams.seed + self.global_rank
        )

    def on_train_end(self) -> None:
        if self._calibrated_at != self.global_step:
            log.info("calibrating to the final weights (no validation after the last step)")
            self.calibrate()

    # --- validation and test -------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._start_eval()
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.fit_density(self._loader("train"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def _start_eval(self) -> None:
        self._scores = []
        # the same pasted patches every epoch, so val/loss is comparable across epochs
        self._generators["eval"] = torch.Generator().manual_seed(self.hparams.seed + 10_000)

    def _eval_step(self, batch: dict, stage: str) -> None:
        _, emb = self._step(batch, stage)
        if self.density.fitted:
            self._scores.append((self.density.score(emb), self._is_emergency(batch["label"])))

    def _eval_end(self, stage: str) -> None:
        if not self._scores or self.trainer.sanity_checking:
            return
        scores = torch.cat([s for s, _ in self._scores])
        targets = torch.cat([t for _, t in self._scores])
        if self.trainer.world_size > 1:  # every rank computes the metrics on all windows
            scores = self.all_gather(scores).flatten()
            targets = self.all_gather(targets.to(torch.uint8)).flatten().bool()
        if stage == "val" and self.trainer.state.fn == "fit":
            self._set_threshold(scores[~targets])
            self._calibrated_at = self.global_step
        m = binary_metrics(targets.cpu().numpy(), scores.cpu().numpy(), self.hparams.max_fpr)
        self.log_dict({f"{stage}/auc": m["auc"], f"{stage}/pauc": m["pauc"]})
        self._scores = []

    # --- calibration ---------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, loader: Any, normal_only: bool = False) -> Tensor:
        """Embeddings `(N, D)` of a loader's windows (only the normal ones if asked), eval mode."""
        embs = []
        with _eval_mode(self.model):
            for batch in loader:
                keep = torch.ones(len(batch["label"]), dtype=torch.bool)
                if normal_only:
                    keep = ~self._is_emergency(batch["label"]).cpu()
                if keep.any():
                    wave, mask = batch["wave"][keep].to(self.device), batch["mask"][keep]
                    n_valid = valid_samples(mask.to(self.device), wave.shape[1])
                    embs.append(self.model(wave, n_valid).embedding)
        if not embs:
            raise ValueError("the loader holds no windows to embed")
        return torch.cat(embs)

    def fit_density(self, loader: Any) -> None:
        """Fit the density on the normal windows of `loader` (un-augmented, eval mode)."""
        emb = self.embed(loader, normal_only=True)
        self.density.fit(emb)
        log.info("density fitted on %d normal windows", len(emb))

    def calibrate(self) -> dict[str, float]:
        """Density from the train loader's normal windows, threshold from the val loader's.

        Returns (and keeps in `self.calibration`) the val AUC and pAUC and the threshold.
        """
        self.fit_density(self._loader("train"))
        try:
            val = self._loader("val")
        except ValueError as e:  # the datamodule has no val split
            log.warning("%s: the threshold stays unset", e)
            return {}
        scores, targets = self.score_loader(val)
        self._set_threshold(scores[~targets])
        self._calibrated_at = self.global_step
        m = binary_metrics(targets.numpy(), scores.numpy(), self.hparams.max_fpr)
        self.calibration = {**m, "threshold": float(self.threshold)}
        log.info("calibrated: %s", self.calibration)
        return self.calibration

    def score_loader(self, loader: Any) -> tuple[Tensor, Tensor]:
        """Anomaly scores `(N,)` and is-emergency flags `(N,)` of every window of a loader."""
        scores, flags = [], []
        for batch in loader:
            on_device = {k: batch[k].to(self.device) for k in ("wave", "mask")}
            scores.append(self.score(on_device).cpu())
            flags.append(self._is_emergency(batch["label"]).cpu())
        return torch.cat(scores), torch.cat(flags)

    # --- prediction ----------------------------------------------------------------------

    def score(self, batch: dict) -> Tensor:
        """Anomaly score `(B,)` (Mahalanobis distance) of `wave (B, N)` with optional `mask`."""
        with torch.no_grad(), _eval_mode(self.model):
            return self.density.score(self.model(batch["wave"], self._n_valid(batch)).embedding)

    def predict_step(
        self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0
    ) -> MemberOutput:
        n_valid = self._n_valid(batch)
        if torch.isnan(self.threshold) or not self.density.fitted:
            raise RuntimeError("the anomaly member is not calibrated: fit it or load a checkpoint")
        with torch.no_grad(), _eval_mode(self.model):  # whatever mode the caller left it in
            emb = self.model(batch["wave"], n_valid).embedding  # (B, D)
            score = self.density.score(emb)  # (B,)
        return self._output(score, emb)

    # --- helpers -------------------------------------------------------------------------

    def _generator(self, stage: str) -> torch.Generator:
        key = "train" if stage == "train" else "eval"
        if key not in self._generators:
            self._generators[key] = torch.Generator().manual_seed(self.hparams.seed)
        return self._generators[key]


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on running statistics) inside, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
