"""Training and prediction of the Whisper member: timestep head + decoder, one encoder pass.

Loss: `lam * (CE(frames) + clip_loss * CE(clip)) + (1 - lam) * CE(text)`. Frame targets are
taxonomy ids 0..K (0 = none), padding and unknown timesteps (`IGNORE`) skipped, optionally
class-balanced; the clip term scores the window's class from its pooled timesteps as
`readout.clip_class_probs` reads it; text targets: `model.transcript_targets`. With a frozen
encoder, head and decoder share no parameter: `lam` only scales two separate gradients (README).

Clip class and `p_emergency`: with the attention clip head (`clip_pool: attention`), its summed
emergency probability and its class on the vote's side; else the summed emergency probability of
each timestep, smoothed over `smooth_steps` timesteps, maximum over valid timesteps, and the class
from the same evidence (`readout.clip_class_probs`, or the event-pooled clip head).

Encoder side (precision, feature cache): `encoding.EncoderFeatures`; evaluation: `evaluation`."""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor

from ensemble.core import member as core
from ensemble.core.audio import seconds_to_timesteps
from ensemble.core.averaging import HeadAverage
from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput, frame_events
from whisper_head.attention import attention_target_loss
from whisper_head.cache import FeatureCache
from whisper_head.ct2 import CT2Generator
from whisper_head.decode import DecodingOptions, generation_config, transcribe_encoded
from whisper_head.encoding import EncoderFeatures
from whisper_head.evaluation import EvaluationSteps
from whisper_head.judge import KeywordJudge, judgement_classes, judgement_tensors
from whisper_head.losses import (
    augment_clip_inputs,
    block_cross_entropy,
    event_pick,
    frame_weights,
    pooled_class_loss,
    sample_frames,
    text_keep,
)
from whisper_head.model import IGNORE, Encoded, WhisperHeadModel, transcript_targets
from whisper_head.readout import block_probs, clip_class_probs, peak_pick, smoothed
from whisper_head.tokens import MULTILINGUAL_VOCAB, tokenizer_for

log = logging.getLogger(__name__)

Freeze = Literal["encoder", "none", "all_but_head"]


class WhisperHeadModule(HeadAverage, EncoderFeatures, EvaluationSteps, MemberModule):
    """The Whisper timestep head and keyword judge as ensemble members.

    `freeze`: "encoder" trains the head and the decoder; "all_but_head" only the head (and the layer
    weights); "none" everything (the sinusoidal positions stay fixed). `head_lr`: the head's
    learning rate when it should differ from the backbone's. `language`: forced, or None to detect
    it per window among `languages` (the text loss then takes each reference's language from its
    script). Validation and test: `evaluation.EvaluationSteps`. Prediction events are runs of one
    class of at least `min_event_s` over the smoothed timestep probabilities.

    Training from cached features: `feature_cache` (a folder; None: off) stores the frozen
    encoder's outputs once per window (`whisper_head.cache`; built for train and val at fit start,
    for test at test start, with a progress bar; resumable) and every epoch reads them back; a
    trainable encoder ("none") always runs on the audio. `train_frames`: timesteps per window the
    training loss scores (emergency ones first, `losses.sample_frames`), read alone from the
    cache; `class_balance`: the frame loss weighs column c by (n / n_c) ** class_balance (counts
    of the training split); `clip_loss`: weight of the clip loss on pooled timesteps
    (`losses.pooled_class_loss`; with `clip_head`, the clip head's loss over the event); `speech_text`
    and `speechless_text`: the shares of windows with and without speech the text loss keeps in
    training (drawn per window), and `normal_speech_text` for speech in a normal class (None: as
    `speech_text`; `losses.text_keep`). `pick_share`: the clip head reads an emergency-voted window
    where its smoothed emergency probability reaches this share of its peak (0: everywhere);
    `attention_loss`: weight of the attention clip head's pull towards the labelled event;
    `text_epochs`: the decoder trains in the first epochs only (None: all); `lead_token`: it also
    learns the language or `<|nospeech|>` after the start token (`model.transcript_targets`);
    `head_schedule` "cosine": the head's rate warms up over 30 % of the steps, then anneals;
    `head_average`: validation, checkpoints and the fit keep a moving average of the head's
    weights, this decay a step (`HeadAverage`; None: the raw weights). `clip_time_mask`: in
    training, the attention clip head sees each window with about this share of its timesteps
    masked out in runs of 6 of its steps (`losses.mask_runs`; never the whole event), and its
    attention loss scores the event's unmasked timesteps. `clip_event_paste`: in training, each
    emergency window's event is, with this chance, pasted over a normal window of its batch for
    the attention clip head (`losses.paste_events`: the same event in another scene).
    `top_blocks`: with `freeze` "encoder", the encoder's last blocks (and final norm) train too,
    on the cached state below them (`WhisperHeadModel.recompute_top`), at `top_lr` (None: the
    backbone's rate), in the first `top_epochs` epochs (None: all; then they stay as they are).

    Inference speed (no effect on training; an ensemble config may set them per run):
    `decoder` "ct2" decodes predictions with CTranslate2 (`ct2_compute_type`) on CPU (validation
    and test keep `generate`, whose weights follow training), "transformers" with `generate`;
    `speech_gate` skips decoding windows whose no-speech probability is above it;
    `cpu_bf16` runs the encoder and head in bfloat16 on CPU at prediction (on GPU they always
    do), and computes the cached features in bfloat16; "auto": when the CPU has native bfloat16.
    """

    model_class = WhisperHeadModel

    def __init__(
        self,
        model: WhisperHeadModel,
        labels: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lam: float = 0.5,
        freeze: Freeze = "encoder",
        language: str | None = "ko",
        languages: tuple[str, ...] = ("ko", "en"),
        threshold: float = 0.5,
        smooth_steps: int = 25,
        cer_batches: int = 4,
        max_new_tokens: int = 96,
        keywords: str | None = None,
        min_event_s: float = 0.2,
        head_lr: float | None = None,
        decoder: Literal["transformers", "ct2"] = "transformers",
        ct2_compute_type: str = "float32",
        speech_gate: float | None = None,
        cpu_bf16: bool | Literal["auto"] = False,
        feature_cache: str | None = None,
        train_frames: int | None = None,
        clip_loss: float = 0.0,
        class_balance: float = 0.0,
        speech_text: float = 1.0,
        speechless_text: float = 1.0,
        normal_speech_text: float | None = None,
        pick_share: float = 0.5,
        attention_loss: float = 1.0,
        text_epochs: int | None = None,
        lead_token: bool = False,
        head_schedule: Literal["constant", "cosine"] = "constant",
        head_average: float | None = None,
        clip_time_mask: float = 0.0,
        clip_event_paste: float = 0.0,
        top_blocks: int = 0,
        top_lr: float | None = None,
        top_epochs: int | None = None,
    ):
        super().__init__(model)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.taxonomy = load_taxonomy(labels)
        K = self.taxonomy.n_classes
        if model.config.n_outputs != K + 1:
            raise ValueError(f"the model has {model.config.n_outputs} outputs, need {K + 1}")
        if not 0 <= lam <= 1 or not 0 < threshold < 1 or smooth_steps < 1 or cer_batches < 0:
            raise ValueError(f"bad lam {lam}, threshold {threshold}, smooth_steps {smooth_steps}")
        if min_event_s < 0 or (train_frames is not None and train_frames < 1):
            raise ValueError(f"bad min_event_s {min_event_s} or train_frames {train_frames}")
        if not (0 <= clip_time_mask < 1 and 0 <= clip_event_paste <= 1):
            raise ValueError(f"clip_time_mask {clip_time_mask} must be in [0, 1) and "
                             f"clip_event_paste {clip_event_paste} in [0, 1]")  # fmt: skip
        if min(clip_loss, class_balance, attention_loss) < 0:
            raise ValueError(f"clip_loss {clip_loss}, class_balance {class_balance} and "
                             f"attention_loss {attention_loss} must be >= 0")  # fmt: skip
        if (text_epochs is not None and text_epochs < 0) or not 0 <= (head_average or 0) < 1:
            raise ValueError(f"bad text_epochs {text_epochs} or head_average {head_average}")
        self.average_decay, self.average_skip = head_average, ("model.backbone.",)
        shares = (pick_share, speech_text, speechless_text, normal_speech_text)
        if not all(0 <= s <= 1 for s in shares if s is not None):
            raise ValueError(f"bad shares (pick, speech, speechless, normal speech): {shares}")
        if cpu_bf16 not in (True, False, "auto"):
            raise ValueError(f"cpu_bf16 must be true, false or auto, got {cpu_bf16!r}")
        core.check_choices(
            freeze=(freeze, ("encoder", "none", "all_but_head")),
            decoder=(decoder, ("transformers", "ct2")),
            head_schedule=(head_schedule, ("constant", "cosine")),
        )
        self.optimizer = optimizer
        self._freeze(freeze)
        backbone = model.backbone
        self.languages = tuple(languages) if language is None else (language,)
        self.tokenizer = tokenizer_for(backbone, self.languages[0])
        self.multilingual = backbone.config.vocab_size >= MULTILINGUAL_VOCAB
        generation_config(backbone, self.tokenizer, self.languages if self.multilingual else None)
        self.decoding = DecodingOptions(
            language, self.languages, max_new_tokens=max_new_tokens, speech_gate=speech_gate
        )
        self._generator: CT2Generator | None = None
        self._cache: FeatureCache | None = None
        self.frame_weights: Tensor | None = None  # class-balanced frame loss, set at fit start
        self._emergency = torch.zeros(K + 1, dtype=torch.bool)
        self._emergency[list(self.taxonomy.emergency_ids)] = True
        self.judge = KeywordJudge.from_yaml(keywords)
        self._init_metrics(K)

    def configure_optimizers(self):
        """The optimizer over trainable parameters; the head (and layer weights) at `head_lr`
        and the encoder's top blocks at `top_lr` when given, the rest at the optimizer's rate."""
        trainable = {n: p for n, p in self.named_parameters() if p.requires_grad}
        h = self.hparams
        head = {n for n in trainable if not n.startswith("model.backbone.")}
        groups = [{"params": [trainable[n] for n in sorted(head)]}]
        if h.head_lr is not None:
            groups[0]["lr"] = h.head_lr
        top = self._top_parameters() if h.top_lr is not None else []
        if top:
            groups.append({"params": top, "lr": h.top_lr})
        rest = [p for n, p in trainable.items() if n not in head and all(p is not t for t in top)]
        if rest:
            groups.append({"params": rest})
        make = self.optimizer or partial(torch.optim.AdamW, lr=1e-4, weight_decay=1e-2)
        optimizer = make(groups)
        if self.hparams.head_schedule == "constant":
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        scheduler = core.cosine_with_warmup(optimizer, steps, warmup=0.3, groups=[0], floor=1e-3)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _ct2(self) -> CT2Generator | None:
        """The CTranslate2 decoder (exported on first use) when asked for and on CPU."""
        if self.hparams.decoder != "ct2" or self.device.type != "cpu":
            return None
        if self._generator is None:
            self._generator = CT2Generator(self.model.backbone, self.hparams.ct2_compute_type)
        return self._generator

    def on_fit_start(self) -> None:
        """Builds the train and val feature caches; sets the class-balanced frame weights."""
        self._build_caches(("train", "val"))
        datasets = getattr(getattr(self.trainer, "datamodule", None), "datasets", {})
        if self.hparams.class_balance > 0 and "train" in datasets:
            counts = torch.as_tensor(datasets["train"].frame_label_counts())
            counts[0] = 0  # none marks padding only
            self.frame_weights = frame_weights(counts, self.hparams.class_balance)
            log.info("frame weights: %s", [round(w, 2) for w in self.frame_weights.tolist()])

    def on_test_start(self) -> None:
        self._build_caches(("test",))

    def _text_loss(self, hidden: Tensor, batch: dict) -> Tensor:
        h, transcripts = self.hparams, batch["transcript"]
        shares = (h.speech_text, h.speechless_text, h.normal_speech_text)
        if self.training and (min(shares[:2]) < 1 or shares[2] is not None):
            keep = text_keep(transcripts, self._emergency[batch["label"].cpu()].tolist(), *shares)
            if not any(keep):
                return hidden.sum() * 0.0
            hidden = hidden[torch.tensor(keep, device=hidden.device)]
            transcripts = [t for t, k in zip(transcripts, keep, strict=True) if k]
        input_ids, labels = transcript_targets(
            self.tokenizer, transcripts, self.languages, self.multilingual, self.hparams.lead_token
        )
        with self._autocast():
            return self.model.text_loss(
                hidden.float(), input_ids.to(self.device), labels.to(self.device)
            )

    def _step(self, batch: dict, stage: str) -> tuple[Tensor, Encoded, Tensor | None]:
        """Loss, encoder outputs and frame probabilities `(B, 1500, K + 1)` (None in training
        when only `train_frames` timesteps per window are scored); logs losses."""
        targets = all_targets = batch["frame_labels"].masked_fill(~batch["mask"], IGNORE)
        index = None  # (B, T) targets; in training, perhaps only those at `index (B, k)`
        if stage == "train" and self.hparams.train_frames is not None:
            index = sample_frames(
                targets, batch["mask"], self._emergency, self.hparams.train_frames
            )
            targets = targets.gather(1, index)
        lam, text_epochs = self.hparams.lam, self.hparams.text_epochs
        text = lam < 1 and (
            stage != "train" or text_epochs is None or self.current_epoch < text_epochs
        )
        encoded = self._encode(batch, index, hidden=text)
        with self._autocast():
            logits = self.model.frame_logits(encoded, index).float()  # (B, T or k, K + 1)
        weight = None if self.frame_weights is None else self.frame_weights.to(self.device)
        frame_loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), weight=weight, ignore_index=IGNORE
        )
        head_loss = frame_loss
        B = len(targets)
        if self.hparams.clip_loss > 0 and self.model.attention_pool:
            # the whole window's class, and attention pulled towards the labelled event
            pick = event_pick(all_targets, batch["label"], self._emergency)
            clip_in, seen = encoded, batch["mask"]
            if stage == "train":  # event pasting and time masking, when set
                clip_in, seen, pick = augment_clip_inputs(
                    encoded, seen, pick, batch["label"], self._emergency,
                    self.hparams.clip_event_paste, self.hparams.clip_time_mask,
                    self.model.config.clip_stride)  # fmt: skip
            with self._autocast():
                clip_logits, log_att = self.model.attention_logits(clip_in, seen)
            clip_loss = F.cross_entropy(clip_logits.float()[:, 1:], batch["label"] - 1)
            att_loss = attention_target_loss(log_att, pick, self.model.config.clip_stride)
            head_loss = frame_loss + self.hparams.clip_loss * clip_loss
            head_loss = head_loss + self.hparams.attention_loss * att_loss
            self.log(f"{stage}/clip_loss", clip_loss, batch_size=B, sync_dist=True)
            self.log(f"{stage}/attention_loss", att_loss, batch_size=B, sync_dist=True)
        elif self.hparams.clip_loss > 0 and self.model.config.clip_head:
            # over the whole event, at the timesteps `encoded` holds
            pick = event_pick(
                targets if encoded.index is not None else all_targets,
                batch["label"],
                self._emergency,
            )
            with self._autocast():
                clip_logits = self.model.clip_logits(encoded, pick)
            clip_loss = block_cross_entropy(clip_logits, batch["label"], self._emergency)
            head_loss = frame_loss + self.hparams.clip_loss * clip_loss
            self.log(f"{stage}/clip_loss", clip_loss, batch_size=B, sync_dist=True)
        elif self.hparams.clip_loss > 0:
            clip_loss = pooled_class_loss(logits, targets, batch["label"], self._emergency)
            head_loss = frame_loss + self.hparams.clip_loss * clip_loss
            self.log(f"{stage}/clip_loss", clip_loss, batch_size=B, sync_dist=True)
        text_loss = self._text_loss(encoded.hidden, batch) if text else 0.0
        loss = lam * head_loss + (1 - lam) * text_loss
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=B, sync_dist=True)
        self.log(f"{stage}/frame_loss", frame_loss, batch_size=B, sync_dist=True)
        if text:
            self.log(f"{stage}/text_loss", text_loss, batch_size=B, sync_dist=True)
        return loss, encoded, None if index is not None else logits.softmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def _transcribe(self, encoded: Encoded, predict: bool = False):
        # CTranslate2 holds a copy of the weights taken at its export: prediction only, never
        # validation or test during training, where the weights move
        generator = self._ct2() if predict else None
        with self._autocast():
            hidden = encoded.hidden.to(self.dtype)  # the cache's float16 on a CPU without bf16
            return transcribe_encoded(
                self.model.backbone, hidden, self.tokenizer, self.decoding, generator
            )

    def _class_probs(
        self, encoded: Encoded, frame_probs: Tensor, mask: Tensor, vote: Tensor, curve: Tensor
    ) -> Tensor:
        """Clip class probabilities `(B, K)` on the vote's side: from the clip head over the
        event the vote saw (`peak_pick` on the smoothed emergency `curve (B, T)`) when the model
        has one, else `clip_class_probs`."""
        if not self.model.config.clip_head:
            return clip_class_probs(frame_probs, mask, self.taxonomy.emergency_ids, vote)
        with self._autocast():
            pick = peak_pick(curve, mask, vote, self.hparams.pick_share)
            logits = self.model.clip_logits(encoded, pick)
        return block_probs(logits, vote, self._emergency)

    def _readout(
        self, encoded: Encoded, frame_probs: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A window's `p_emergency (B,)`, vote `(B,)` and class probabilities `(B, K)`.

        With the attention clip head: p is its summed emergency probability and the class is read
        on the vote's side of its logits. Otherwise: p is the peak of the smoothed emergency
        curve of the timesteps, the class `_class_probs`'s."""
        if self.model.attention_pool:
            with self._autocast():
                logits = self.model.attention_logits(encoded, mask)[0].float()
            probs = logits[:, 1:].softmax(-1)
            p = probs[:, self._emergency[1:].to(probs.device)].sum(1)
            vote = p > self.hparams.threshold
            return p, vote, block_probs(logits, vote, self._emergency)
        p_frames = frame_probs[..., list(self.taxonomy.emergency_ids)].sum(-1)  # (B, T)
        curve = smoothed(p_frames, mask, self.hparams.smooth_steps)  # its peak: p_emergency
        p = curve.amax(1)
        vote = p > self.hparams.threshold
        return p, vote, self._class_probs(encoded, frame_probs, mask, vote, curve)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, MemberOutput]:
        """`whisper_head` and `keyword_judge` outputs of the same encoder pass."""
        mask = batch["mask"]
        encoded = self._encode_wave(batch["wave"])
        with self._autocast():
            frame_probs = self.model.frame_logits(encoded).float().softmax(-1)  # (B, T, K + 1)
        p, vote, class_probs = self._readout(encoded, frame_probs, mask)
        valid = mask[..., None].to(encoded.hidden.dtype)  # (B, T, 1)
        embedding = (encoded.hidden * valid).sum(1) / valid.sum(1).clamp_min(1)  # (B, D)
        min_steps = max(1, seconds_to_timesteps(self.hparams.min_event_s))
        head = MemberOutput(
            p_emergency=p,
            vote=vote,
            class_probs=class_probs,
            frame_probs=frame_probs,
            embedding=embedding.float(),
            events=frame_events(
                frame_probs, mask, self.taxonomy, self.hparams.smooth_steps, min_steps
            ),
        )
        if self.wanted_outputs is not None and "keyword_judge" not in self.wanted_outputs:
            return {"whisper_head": head}  # no decoding when no member reads the transcripts
        hyps = self._transcribe(encoded, predict=True)
        judgements = self.judge.judge_batch(
            [h.text for h in hyps], [h.no_speech_prob for h in hyps], [h.avg_logprob for h in hyps]
        )
        p_text, vote_text = judgement_tensors(judgements, device=p.device)
        judge = MemberOutput(
            p_text,
            vote_text,
            class_probs=judgement_classes(judgements, self.taxonomy, device=p.device),
            transcript=[h.text for h in hyps],
            no_speech_prob=torch.tensor([h.no_speech_prob for h in hyps], device=p.device),
            opinion=torch.tensor([j.opinion for j in judgements], device=p.device),
        )
        return {"whisper_head": head, "keyword_judge": judge}
