"""Validation and test of `WhisperHeadModule`: timestep, event, clip and emergency accuracies, CER
of the transcripts, and the test split's report."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from ensemble.core.member import emergency_targets
from ensemble.core.metrics import cer_metrics, write_test_report
from whisper_head.model import IGNORE


class EvaluationSteps:
    """The validation and test steps of `WhisperHeadModule`, which holds the metrics (`timestep_acc`,
    `event_acc`, `clip_acc`, `binary`), the collected `_texts` and `_test` rows, and `_step`,
    `_readout` and `_transcribe`.

    Validation and test log `stage/loss`, `stage/timestep_acc` (valid timesteps, 20 columns),
    `stage/acc` (clip class), `stage/binary_acc` (vote against emergency ids) and, at epoch end,
    `stage/cer` and `stage/cer_nospace` (NFC, jiwer) from greedy transcripts of the first
    `cer_batches` validation batches or of every test batch; the test stage also writes
    `test_metrics.json` and `test_confusion.png`."""

    def _init_metrics(self, K: int) -> None:
        """The val and test metrics for `K` classes, and empty collections."""
        stages = ("val", "test")
        self.timestep_acc = torch.nn.ModuleDict(
            {s: MulticlassAccuracy(K + 1, average="micro", ignore_index=IGNORE) for s in stages}
        )
        self.event_acc = torch.nn.ModuleDict(  # timesteps inside an emergency event
            {s: MulticlassAccuracy(K + 1, average="micro", ignore_index=IGNORE) for s in stages}
        )
        self.clip_acc = torch.nn.ModuleDict(
            {s: MulticlassAccuracy(K, average="micro") for s in stages}
        )
        self.binary = torch.nn.ModuleDict({s: BinaryAccuracy() for s in stages})
        self._texts: list[tuple[str, str]] = []  # (reference, hypothesis)
        self._test: list[tuple[Tensor, Tensor, Tensor]] = []  # (label, predicted id, p_emergency)

    def _eval_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        _, encoded, frame_probs = self._step(batch, stage)
        mask, B = batch["mask"], len(batch["label"])
        targets = batch["frame_labels"].masked_fill(~mask, IGNORE)
        self.timestep_acc[stage].update(frame_probs.argmax(-1), targets)
        in_event = self._emergency.to(targets.device)[targets.clamp(min=0)] & (targets != IGNORE)
        self.event_acc[stage].update(frame_probs.argmax(-1), targets.masked_fill(~in_event, IGNORE))
        p, vote, class_probs = self._readout(encoded, frame_probs, mask)
        self.clip_acc[stage].update(class_probs.argmax(1), batch["label"] - 1)
        self.binary[stage].update(vote, emergency_targets(batch["label"], self.taxonomy))
        self.log(f"{stage}/timestep_acc", self.timestep_acc[stage], batch_size=B)
        self.log(f"{stage}/event_timestep_acc", self.event_acc[stage], batch_size=B)
        self.log(f"{stage}/acc", self.clip_acc[stage], batch_size=B)
        self.log(f"{stage}/binary_acc", self.binary[stage], batch_size=B)
        if stage == "test":
            self._test.append((batch["label"].cpu(), class_probs.argmax(1).cpu() + 1, p.cpu()))
        if stage == "test" or batch_idx < self.hparams.cer_batches:
            hyps = self._transcribe(encoded)
            self._texts += [(r, h.text) for r, h in zip(batch["transcript"], hyps, strict=True)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _log_cer(self, stage: str) -> dict[str, float]:
        """CER of the collected transcripts (`cer_metrics`: NFC, with and without spaces)."""
        refs, hyps = zip(*self._texts, strict=True) if self._texts else ((), ())
        self._texts.clear()
        cer = cer_metrics(refs, hyps)
        if not cer["n_cer"]:  # no reference with text
            return {}
        for name in ("cer", "cer_nospace"):
            self.log(f"{stage}/{name}", cer[name])
        return cer

    def on_validation_epoch_end(self) -> None:
        self._log_cer("val")

    def on_test_epoch_end(self) -> None:
        """Logs CER; writes `test_metrics.json` and `test_confusion.png` next to the logs."""
        cer = self._log_cer("test")
        extra = {
            "timestep_acc": float(self.timestep_acc["test"].compute()),
            "event_timestep_acc": float(self.event_acc["test"].compute()),
            **cer,
        }
        write_test_report(
            self.trainer,
            self._test,
            self.hparams.threshold,
            self.taxonomy,
            "Whisper head, test split",
            extra,
        )
