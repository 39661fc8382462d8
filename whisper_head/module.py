"""Training and prediction of the Whisper member: timestep head + decoder, one encoder pass.

Loss: `lam * CE(frames) + (1 - lam) * CE(text)`; frame targets are taxonomy ids 0..K (0 = none),
padding timesteps (mask False) skipped; text targets are the tokenised transcripts after the prompt
`<|startoftranscript|><|lang|><|transcribe|><|notimestamps|>`.

Clip class: the class with the largest summed probability over the window's event frames (valid
timesteps whose most probable column is not none), or over all valid timesteps when there is none.
`p_emergency`: the summed emergency probability of each timestep, smoothed by a moving average of
`smooth_steps` timesteps, maximum over valid timesteps.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Literal

import jiwer
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput, emergency_targets
from whisper_head.decode import (
    MULTILINGUAL_VOCAB,
    DecodingOptions,
    generation_config,
    log_mel,
    tokenizer_for,
    transcribe_encoded,
)
from whisper_head.judge import KeywordJudge, judgement_tensors
from whisper_head.model import IGNORE, Encoded, WhisperHeadModel, text_targets

log = logging.getLogger(__name__)

Freeze = Literal["encoder", "none", "all_but_head"]


def clip_class_probs(frame_probs: Tensor, mask: Tensor) -> Tensor:
    """Frame probabilities `(B, T, K + 1)` and valid timesteps `(B, T)` -> class probs `(B, K)`.

    The mean of the K class columns over event frames (or all valid frames when none), renormalised.
    """
    event = (frame_probs.argmax(-1) > 0) & mask  # (B, T)
    pick = torch.where(event.any(1, keepdim=True), event, mask).to(frame_probs.dtype)
    summed = (frame_probs[..., 1:] * pick[..., None]).sum(1)  # (B, K)
    return summed / summed.sum(1, keepdim=True).clamp_min(1e-12)


def smoothed_max(p: Tensor, mask: Tensor, width: int) -> Tensor:
    """Moving average of `width` timesteps of `p (B, T)`, then the maximum over valid ones `(B,)`.

    Padding timesteps count as 0; the window shrinks at both ends of the array.
    """
    p = p.masked_fill(~mask, 0.0)  # padding never raises a neighbour
    if width > 1:
        p = F.avg_pool1d(
            p[:, None], width, 1, padding=width // 2, count_include_pad=False, ceil_mode=False
        )[:, 0, : mask.shape[1]]
    return p.masked_fill(~mask, 0.0).amax(1)


class WhisperHeadModule(MemberModule):
    """The Whisper timestep head and keyword judge as ensemble members.

    `freeze`: "encoder" trains the head and the decoder; "all_but_head" only the head (and the layer
    weights); "none" everything (the sinusoidal positions stay fixed). Validation and test log
    `stage/loss`, `stage/timestep_acc` (valid timesteps, 20 columns), `stage/acc` (clip class),
    `stage/binary_acc` (vote against emergency ids) and, at epoch end, `stage/cer` and
    `stage/cer_nospace` from greedy transcripts of the first `cer_batches` batches (NFC, jiwer).
    """

    model_class = WhisperHeadModel

    def __init__(
        self,
        model: WhisperHeadModel,
        labels: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lam: float = 0.5,
        freeze: Freeze = "encoder",
        language: str = "ko",
        threshold: float = 0.5,
        smooth_steps: int = 25,
        cer_batches: int = 4,
        max_new_tokens: int = 96,
        keywords: str | None = None,
    ):
        super().__init__(model)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.taxonomy = load_taxonomy(labels)
        K = self.taxonomy.n_classes
        if model.config.n_outputs != K + 1:
            raise ValueError(f"the model has {model.config.n_outputs} outputs, need {K + 1}")
        if not 0 <= lam <= 1 or not 0 < threshold < 1 or smooth_steps < 1 or cer_batches < 0:
            raise ValueError(f"bad lam {lam}, threshold {threshold}, smooth_steps {smooth_steps}")
        if freeze not in ("encoder", "none", "all_but_head"):
            raise ValueError(f"freeze must be encoder, none or all_but_head, got {freeze!r}")
        self.optimizer = optimizer
        self._freeze(freeze)
        backbone = model.backbone
        self.tokenizer = tokenizer_for(backbone, language)
        self.multilingual = backbone.config.vocab_size >= MULTILINGUAL_VOCAB
        generation_config(backbone, self.tokenizer, [language] if self.multilingual else None)
        self.decoding = DecodingOptions(language=language, max_new_tokens=max_new_tokens)
        self.judge = KeywordJudge.from_yaml(keywords)
        stages = ("val", "test")
        self.timestep_acc = torch.nn.ModuleDict(
            {s: MulticlassAccuracy(K + 1, average="micro", ignore_index=IGNORE) for s in stages}
        )
        self.clip_acc = torch.nn.ModuleDict(
            {s: MulticlassAccuracy(K, average="micro") for s in stages}
        )
        self.binary = torch.nn.ModuleDict({s: BinaryAccuracy() for s in stages})
        self._texts: list[tuple[str, str]] = []  # (reference, hypothesis)

    def _freeze(self, freeze: Freeze) -> None:
        backbone = self.model.backbone
        if freeze == "encoder":
            self.model.encoder.requires_grad_(False)
        elif freeze == "all_but_head":
            backbone.requires_grad_(False)
        backbone.model.encoder.embed_positions.requires_grad_(False)

    @property
    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.encoder.parameters())

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer is not None:
            return self.optimizer(params)
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)

    def _autocast(self):
        on_gpu = self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on_gpu)

    def _encode(self, wave: Tensor) -> Encoded:
        """Waveform `(B, N)` -> `Encoded`; the one encoder forward of a batch."""
        mel = log_mel(wave)  # (B, 80, 3000)
        grad = torch.is_grad_enabled() and self.encoder_trainable
        with torch.set_grad_enabled(grad), self._autocast():
            return self.model.encode(mel)

    def _text_loss(self, hidden: Tensor, transcripts: list[str]) -> Tensor:
        tok = self.tokenizer
        prompt = list(tok.sot_sequence_including_notimestamps)
        texts = [tok.encode(" " + unicodedata.normalize("NFC", t).strip()) for t in transcripts]
        texts = [t if s.strip() else [] for t, s in zip(texts, transcripts, strict=True)]
        input_ids, labels = text_targets(prompt, texts, tok.eot)
        with self._autocast():
            return self.model.text_loss(hidden, input_ids.to(self.device), labels.to(self.device))

    def _step(self, batch: dict, stage: str) -> tuple[Tensor, Encoded, Tensor]:
        """Loss, encoder outputs and frame probabilities `(B, 1500, K + 1)`; logs losses."""
        encoded = self._encode(batch["wave"])
        with self._autocast():
            logits = self.model.frame_logits(encoded).float()  # (B, T, K + 1)
        targets = batch["frame_labels"].masked_fill(~batch["mask"], IGNORE)  # (B, T)
        frame_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        lam = self.hparams.lam
        text_loss = self._text_loss(encoded.hidden, batch["transcript"]) if lam < 1 else 0.0
        loss = lam * frame_loss + (1 - lam) * text_loss
        B = len(targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=B, sync_dist=True)
        self.log(f"{stage}/frame_loss", frame_loss, batch_size=B, sync_dist=True)
        if lam < 1:
            self.log(f"{stage}/text_loss", text_loss, batch_size=B, sync_dist=True)
        return loss, encoded, logits.softmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def _eval_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        _, encoded, frame_probs = self._step(batch, stage)
        mask, B = batch["mask"], len(batch["label"])
        targets = batch["frame_labels"].masked_fill(~mask, IGNORE)
        self.timestep_acc[stage].update(frame_probs.argmax(-1), targets)
        class_probs = clip_class_probs(frame_probs, mask)
        self.clip_acc[stage].update(class_probs.argmax(1), batch["label"] - 1)
        vote = self._p_emergency(frame_probs, mask) > self.hparams.threshold
        self.binary[stage].update(vote, emergency_targets(batch["label"], self.taxonomy))
        self.log(f"{stage}/timestep_acc", self.timestep_acc[stage], batch_size=B)
        self.log(f"{stage}/acc", self.clip_acc[stage], batch_size=B)
        self.log(f"{stage}/binary_acc", self.binary[stage], batch_size=B)
        if batch_idx < self.hparams.cer_batches:
            hyps = self._transcribe(encoded)
            self._texts += [(r, h.text) for r, h in zip(batch["transcript"], hyps, strict=True)]

    def _transcribe(self, encoded: Encoded):
        with self._autocast():
            return transcribe_encoded(
                self.model.backbone, encoded.hidden, self.tokenizer, self.decoding
            )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _log_cer(self, stage: str) -> None:
        """CER of the collected transcripts, NFC, with and without spaces; empty references skipped."""
        pairs = [(r, h) for r, h in self._texts if r.strip()]
        self._texts.clear()
        if not pairs:
            return
        refs, hyps = (
            [unicodedata.normalize("NFC", x).strip() for x in xs] for xs in zip(*pairs, strict=True)
        )
        self.log(f"{stage}/cer", float(jiwer.cer(refs, hyps)))
        squeeze = [[x.replace(" ", "") for x in xs] for xs in (refs, hyps)]
        self.log(f"{stage}/cer_nospace", float(jiwer.cer(*squeeze)))

    def on_validation_epoch_end(self) -> None:
        self._log_cer("val")

    def on_test_epoch_end(self) -> None:
        self._log_cer("test")

    def _p_emergency(self, frame_probs: Tensor, mask: Tensor) -> Tensor:
        """Frame probabilities `(B, T, K + 1)` -> `(B,)` smoothed peak emergency probability."""
        p = frame_probs[..., list(self.taxonomy.emergency_ids)].sum(-1)  # (B, T)
        return smoothed_max(p, mask, self.hparams.smooth_steps)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, MemberOutput]:
        """`whisper_head` and `keyword_judge` outputs of the same encoder pass."""
        mask = batch["mask"]
        encoded = self._encode(batch["wave"])
        with self._autocast():
            frame_probs = self.model.frame_logits(encoded).float().softmax(-1)  # (B, T, K + 1)
        p = self._p_emergency(frame_probs, mask)
        valid = mask[..., None].to(encoded.hidden.dtype)  # (B, T, 1)
        embedding = (encoded.hidden * valid).sum(1) / valid.sum(1).clamp_min(1)  # (B, D)
        head = MemberOutput(
            p_emergency=p,
            vote=p > self.hparams.threshold,
            class_probs=clip_class_probs(frame_probs, mask),
            frame_probs=frame_probs,
            embedding=embedding.float(),
        )
        hyps = self._transcribe(encoded)
        judgements = self.judge.judge_batch(
            [h.text for h in hyps], [h.no_speech_prob for h in hyps], [h.avg_logprob for h in hyps]
        )
        p_text, vote_text = judgement_tensors(judgements, device=p.device)
        judge = MemberOutput(p_text, vote_text, transcript=[h.text for h in hyps])
        return {"whisper_head": head, "keyword_judge": judge}
