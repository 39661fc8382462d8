"""Training and prediction of the mel CNN: cross-entropy with SpecAugment, mixup, class weights."""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
)

from cnn.augment import mixup, spec_augment
from cnn.model import MelCNN
from cnn.pretrained import PretrainedMelCNN
from ensemble.core.audio import SAMPLES_PER_TIMESTEP, seconds_to_samples
from ensemble.core.data import valid_samples
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.member import (
    MemberModule,
    MemberOutput,
    cosine_with_warmup,
    emergency_probability,
    emergency_targets,
)
from ensemble.core.metrics import write_test_report

log = logging.getLogger(__name__)


def event_crops(
    wave: Tensor, frame_labels: Tensor, label: Tensor, mask: Tensor, crop_s: float
) -> Tensor:
    """A `crop_s` piece of each window around a random timestep of its event: `(B, N)` -> `(B, n)`.

    The piece holds a timestep drawn from those labelled with the window's class `label (B,)` (any
    valid one if none is: timesteps around an event carry the background's class), at a random
    place in the piece, and stays inside the audio where the audio is long enough. Draws from
    torch's global generator.
    """
    B, N = wave.shape
    n = min(seconds_to_samples(crop_s), N)
    event = (frame_labels == label[:, None]) & mask
    pick = torch.where(event.any(dim=1, keepdim=True), event, mask).float() + 1e-9  # (B, T)
    t = torch.multinomial(pick, 1)[:, 0]  # (B,) timestep inside the event
    start = t * SAMPLES_PER_TIMESTEP - torch.randint(0, n, (B,), device=wave.device)
    end = valid_samples(mask).clamp(min=n)
    start = start.clamp(min=0).minimum(end - n)  # (B,)
    index = start[:, None] + torch.arange(n, device=wave.device)  # (B, n)
    return wave.gather(1, index)


def crop_starts(n_valid: Tensor, crop: int, hop: int) -> tuple[Tensor, Tensor]:
    """Start samples `(B, M)` of the crops that cover each window's audio, and which are real `(B, M)`.

    `n_valid (B,)` samples of audio per window. Crops of `crop` samples start every `hop` samples;
    the last one ends where the audio ends, so no crop reaches past it; a window no longer than a
    crop is one crop from its start. Rows with fewer crops than M are padded with start 0, not real.
    """
    if crop < 1 or hop < 1:
        raise ValueError(f"need crop, hop >= 1 samples, got {crop}, {hop}")
    last = (n_valid.long() - crop).clamp(min=0)  # (B,) start of the crop that ends the audio
    n = (last + hop - 1) // hop + 1  # (B,) crops per window
    k = torch.arange(int(n.max()), device=n_valid.device)  # (M,)
    real = k < n[:, None]
    starts = (k * hop).minimum(last[:, None]).masked_fill(~real, 0)
    return starts, real


def pool_crops(probs: Tensor, real: Tensor, taxonomy: Taxonomy) -> tuple[Tensor, Tensor, Tensor]:
    """Window class probabilities from its crops': `(B, M, K)`, `(B, M)` -> `(B, K)`, `(B,)`, `(B,)`.

    `p_emergency` is the highest emergency probability of a crop (a short event decides its
    window). The emergency columns are those of that crop, the normal ones the mean over the crops
    of their normal distribution, scaled to `1 - p_emergency`: the rows sum to one and their
    emergency columns to `p_emergency`. Also returns the deciding crop's index `(B,)`.
    """
    em = torch.zeros(probs.shape[-1], dtype=torch.bool, device=probs.device)
    em[[i - 1 for i in taxonomy.emergency_ids]] = True
    p_crop = probs[..., em].sum(dim=-1).masked_fill(~real, -1.0)  # (B, M)
    p, best = p_crop.max(dim=1)  # (B,)
    top = probs[torch.arange(len(best), device=probs.device), best]  # (B, K)
    normal = probs * ~em
    normal = normal / normal.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # (B, M, K)
    normal = (normal * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True)  # (B, K)
    class_probs = torch.where(em, top, (1 - p)[:, None] * normal)
    return class_probs, p, best


def vote_class(class_probs: Tensor, vote: Tensor, taxonomy: Taxonomy) -> Tensor:
    """Column of the most probable emergency class where `vote`, else of the normal one: `(B,)`."""
    em = torch.zeros(class_probs.shape[-1], dtype=torch.bool, device=class_probs.device)
    em[[i - 1 for i in taxonomy.emergency_ids]] = True
    side = em[None, :] == vote[:, None]  # (B, K) the columns on the vote's side
    return class_probs.masked_fill(~side, -1.0).argmax(dim=1)


class CNNModule(MemberModule):
    """The mel CNN as an ensemble member.

    Targets are taxonomy ids 1..K (column k of the logits is id k + 1). `class_weights="balanced"`
    weighs the loss by N / (K * count) from the train split's window labels. Validation and test log
    `stage/acc`, `stage/binary_acc` (of the emergency vote, `p_emergency > threshold`), `stage/auc` (of
    `p_emergency`) and `stage/macro_f1`; the test also writes
    `test_metrics.json` and `test_confusion.png` (scikit-learn) next to the logs.

    `scoring` is how validation, test and prediction score a window: "windows" runs the model once
    over the whole window (max + mean over its time steps); "crops" runs it on `crop_s` pieces every
    `crop_hop_s` (default `crop_s / 2`) seconds, the pieces it trains on, and pools them with
    `pool_crops`; the predicted class then lies on the side of the vote (`vote_class`).
    """

    model_class = MelCNN
    model_classes = (MelCNN, PretrainedMelCNN)

    def __init__(
        self,
        model: MelCNN,  # or a subclass: PretrainedMelCNN
        labels: str | None = None,
        optimizer: OptimizerCallable | None = None,
        spec_augment: bool = True,
        mixup_alpha: float = 0.0,
        class_weights: Literal["none", "balanced"] = "balanced",
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        crop_s: float | None = 10.0,
        threshold: float = 0.5,
        scoring: Literal["windows", "crops"] = "windows",
        crop_hop_s: float | None = None,
    ):
        super().__init__(model)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.taxonomy = load_taxonomy(labels)
        K = self.taxonomy.n_classes
        if model.config.n_classes != K:
            raise ValueError(f"the model has {model.config.n_classes} classes, the labels {K}")
        if mixup_alpha < 0 or not 0 < threshold < 1:
            raise ValueError(
                f"need mixup_alpha >= 0 and 0 < threshold < 1, got {mixup_alpha}, {threshold}"
            )
        if scoring not in ("windows", "crops"):
            raise ValueError(f"scoring must be 'windows' or 'crops', got {scoring!r}")
        if scoring == "crops" and not (crop_s and crop_s > 0):
            raise ValueError(f"scoring='crops' needs crop_s > 0, got {crop_s}")
        if crop_hop_s is not None and crop_hop_s <= 0:
            raise ValueError(f"crop_hop_s must be positive, got {crop_hop_s}")
        self.optimizer = optimizer
        self.register_buffer("class_weight", torch.ones(K))
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(K, average="micro"),
                "macro_f1": MulticlassF1Score(K, average="macro"),
            }
        )
        self.metrics = torch.nn.ModuleDict(
            {s: metrics.clone(prefix=f"{s}/") for s in ("val", "test")}
        )
        self.binary = torch.nn.ModuleDict({s: BinaryAccuracy() for s in ("val", "test")})
        self.auc = torch.nn.ModuleDict({s: BinaryAUROC() for s in ("val", "test")})
        self._test: list[tuple[Tensor, Tensor, Tensor]] = []

    def configure_optimizers(self):
        if self.optimizer is not None:
            opt = self.optimizer(self.parameters())
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)
        if self.hparams.lr_schedule == "constant":
            return opt
        sched = cosine_with_warmup(opt, self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self.hparams.class_weights == "balanced":
            dataset = self.trainer.datamodule.datasets["train"]
            counts = torch.bincount(
                torch.as_tensor(dataset.window_labels()) - 1, minlength=len(self.class_weight)
            )
            weight = counts.sum() / (len(counts) * counts.clamp(min=1))
            self.class_weight.copy_(torch.where(counts > 0, weight, torch.ones_like(weight)))
            log.info(
                "class weights from %d train windows: %s",
                int(counts.sum()),
                self.class_weight.tolist(),
            )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        y = batch["label"] - 1  # (B,)
        wave = batch["wave"]
        if self.hparams.crop_s:
            wave = event_crops(
                wave, batch["frame_labels"], batch["label"], batch["mask"], self.hparams.crop_s
            )
        mel = self.model.mel(wave)  # (B, F, T)
        if self.hparams.spec_augment:
            mel = spec_augment(mel)
        if self.hparams.mixup_alpha > 0:
            mel, y_b, lam = mixup(mel, y, self.hparams.mixup_alpha)
            logits = self.model.forward_mel(mel).logits
            loss = lam * self._ce(logits, y) + (1 - lam) * self._ce(logits, y_b)
        else:
            loss = self._ce(self.model.forward_mel(mel).logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def _ce(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, weight=self.class_weight)

    def score(self, wave: Tensor, n_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Class probabilities `(B, K)`, `p_emergency (B,)`, predicted column `(B,)`, embedding `(B, D)`.

        `wave (B, N)` with `n_valid (B,)` samples of audio per row, scored as `scoring` says.
        """
        if self.hparams.scoring == "windows":
            out = self.model(wave, n_valid)
            probs = out.logits.softmax(dim=1)
            return (
                probs,
                emergency_probability(probs, self.taxonomy),
                probs.argmax(1),
                out.embedding,
            )
        crop = min(seconds_to_samples(self.hparams.crop_s), wave.shape[1])
        hop_s = self.hparams.crop_hop_s or self.hparams.crop_s / 2
        starts, real = crop_starts(n_valid, crop, max(seconds_to_samples(hop_s), 1))  # (B, M)
        rows = torch.arange(len(wave), device=wave.device)[:, None].expand_as(starts)[real]
        index = starts[real][:, None] + torch.arange(crop, device=wave.device)  # (C, crop)
        n_crop = (n_valid[rows] - starts[real]).clamp(1, crop)  # (C,) audio in each crop
        out = self.model(wave[rows[:, None], index], n_crop)
        probs = wave.new_zeros(*real.shape, out.logits.shape[1])  # (B, M, K)
        probs[real] = out.logits.softmax(dim=1).to(probs.dtype)
        class_probs, p, best = pool_crops(probs, real, self.taxonomy)
        emb = out.embedding.new_zeros(*real.shape, out.embedding.shape[1])
        emb[real] = out.embedding
        embedding = emb[torch.arange(len(best), device=best.device), best]  # the deciding crop's
        pred = vote_class(class_probs, p > self.hparams.threshold, self.taxonomy)
        return class_probs, p, pred, embedding

    def _eval_step(self, batch: dict, stage: str) -> tuple[Tensor, Tensor]:
        """Logs loss, 19-class metrics and the accuracy of the emergency vote; (pred, p) `(B,)`."""
        y = batch["label"] - 1
        probs, p, pred, _ = self.score(batch["wave"], valid_samples(batch["mask"]))
        loss = F.nll_loss(probs.clamp(min=1e-12).log(), y, weight=self.class_weight)
        self.metrics[stage].update(pred, y)
        vote = p > self.hparams.threshold
        is_emergency = emergency_targets(batch["label"], self.taxonomy)
        self.binary[stage].update(vote, is_emergency)
        self.auc[stage].update(p, is_emergency.long())
        self.log(f"{stage}/loss", loss, batch_size=len(y), sync_dist=True)
        self.log_dict(self.metrics[stage], batch_size=len(y))
        self.log(f"{stage}/binary_acc", self.binary[stage], batch_size=len(y))
        self.log(f"{stage}/auc", self.auc[stage], batch_size=len(y))
        return pred + 1, p

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pred, p = self._eval_step(batch, "test")
        self._test.append((batch["label"].cpu(), pred.cpu(), p.cpu()))

    def on_test_epoch_end(self) -> None:
        """scikit-learn metrics and the confusion matrix of this process's test windows.

        `binary_acc`: emergency/normal of the predicted class; `vote_acc`: of the member's vote
        (`p_emergency > threshold`); `auc`, `pauc`: of `p_emergency`.
        """
        write_test_report(
            self.trainer,
            self._test,
            self.hparams.threshold,
            self.taxonomy,
            "mel CNN, test split",
        )

    def predict_step(self, batch: dict, batch_idx: int = 0) -> MemberOutput:
        probs, p, _, embedding = self.score(batch["wave"], valid_samples(batch["mask"]))
        return MemberOutput(
            p_emergency=p,
            vote=p > self.hparams.threshold,
            class_probs=probs,
            embedding=embedding,
        )
