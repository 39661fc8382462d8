"""Transcription from precomputed Whisper encoder outputs: batched, greedy or beam, no timestamps.

The encoder runs once per window outside this module's `transcribe_encoded`, so a timestep head and
the decoder can share one encoder pass. Log-mel comes from openai-whisper (the tokenizer from
`tokens.tokenizer_for`); the generation config is filled from the tokenizer so that transformers'
`generate` works offline with a forced language. Language detection and the no-speech probability
follow openai-whisper: one decoder step on the start-of-transcript token. Decoding runs in
transformers' `generate` or in a `Generator` such as `ct2.CT2Generator`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import transformers
import whisper.audio
import whisper.tokenizer
from transformers import GenerationConfig, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from ensemble.core.audio import N_MELS, N_SAMPLES
from whisper_head.tokens import (
    MULTILINGUAL_VOCAB,
    default_suppress_ids,
    language_ids,
    prompt_tokens,
    task_tokens,
    vocab_size,
)

log = logging.getLogger(__name__)


def log_mel(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Whisper's log-mel of 16 kHz audio `(B, N)` or `(N,)`, padded or trimmed to one window.

    Returns `(B, 80, 3000)`. Each row is normalised on its own (openai-whisper clamps at its
    maximum minus 8), so rows are computed one by one; the device follows the input.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise ValueError(f"wave must be (B, N) or (N,), got {tuple(wave.shape)}")
    wave = whisper.audio.pad_or_trim(wave, N_SAMPLES)  # (B, 480000)
    return torch.stack([whisper.audio.log_mel_spectrogram(row, N_MELS) for row in wave])


def generation_config(
    model: WhisperForConditionalGeneration,
    tokenizer: whisper.tokenizer.Tokenizer,
    languages: Iterable[str] | None = None,
    suppress_ids: Iterable[int] | None = None,
) -> GenerationConfig:
    """Fill and set `model.generation_config` so that `generate(language=..., task=...)` works.

    `languages`: codes offered in `lang_to_id` (default every one the vocabulary holds; others are
    skipped with a warning). English-only models get no `lang_to_id`, or transformers would run its
    own language detection. `suppress_ids` (e.g. CTranslate2's `suppress_ids`) default to
    openai-whisper's non-speech tokens and task/start tokens.
    """
    multilingual = vocab_size(model) >= MULTILINGUAL_VOCAB
    suppress = default_suppress_ids(tokenizer) if suppress_ids is None else suppress_ids
    config = GenerationConfig(
        decoder_start_token_id=tokenizer.sot,
        eos_token_id=tokenizer.eot,
        pad_token_id=tokenizer.eot,
        bos_token_id=tokenizer.eot,
        no_timestamps_token_id=tokenizer.no_timestamps,
        is_multilingual=multilingual,
        suppress_tokens=sorted(set(suppress) | task_tokens(tokenizer)),
        begin_suppress_tokens=[tokenizer.encode(" ")[0], tokenizer.eot],
        return_timestamps=False,
    )
    if multilingual:
        codes = list(tokenizer.all_language_codes if languages is None else languages)
        known = dict(zip(tokenizer.all_language_codes, tokenizer.all_language_tokens, strict=True))
        skipped = [code for code in codes if code not in known]
        if skipped:
            log.warning("language codes not in this vocabulary, skipped: %s", skipped)
        config.lang_to_id = {f"<|{c}|>": known[c] for c in codes if c in known}
        config.task_to_id = {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate}
    model.generation_config = config
    return config


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one batch of windows.

    `language=None` detects it per window among `languages`; English-only models ignore both.
    """

    language: str | None = "ko"
    languages: tuple[str, ...] = ("ko", "en")  # candidates when `language` is None
    beam_size: int = 1
    max_new_tokens: int = 128
    without_timestamps: bool = True
    condition_on_prev: bool = False
    speech_gate: float | None = None  # windows with no_speech_prob above are not decoded
    collapse_loops: bool = True  # a span repeated 3+ times in a row is kept once

    def __post_init__(self):
        if self.language is not None and self.language not in whisper.tokenizer.LANGUAGES:
            raise ValueError(f"unknown language {self.language!r}")
        bad = [c for c in self.languages if c not in whisper.tokenizer.LANGUAGES]
        if bad or not self.languages:
            raise ValueError(f"languages must be known language codes, got {self.languages!r}")
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an int >= 1, got {self.beam_size!r}")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 440:
            raise ValueError(
                f"max_new_tokens must be an int in [1, 440], got {self.max_new_tokens!r}"
            )
        if self.without_timestamps is not True:
            raise ValueError(
                f"only without_timestamps=True is supported, got {self.without_timestamps!r}"
            )
        if self.condition_on_prev is not False:
            raise ValueError(f"condition_on_prev is not supported, got {self.condition_on_prev!r}")
        if self.speech_gate is not None and not 0 < self.speech_gate <= 1:
            raise ValueError(f"speech_gate must be in (0, 1] or None, got {self.speech_gate!r}")


@dataclass
class Transcript:
    """One window's transcript; `avg_logprob` as openai-whisper (text tokens and end token)."""

    text: str
    tokens: list[int]  # text tokens only, no special tokens
    avg_logprob: float  # NaN when the window was not decoded (its no_speech_prob passed the gate)
    no_speech_prob: float  # P(<|nospeech|>) at the step after the start-of-transcript token
    language: str

    @property
    def decoded(self) -> bool:
        return not math.isnan(self.avg_logprob)


class Generator(Protocol):
    """A decoder other than transformers' `generate` (`ct2.CT2Generator`): text tokens and
    avg_logprob per row of encoder outputs `(B, T, D)` and prompts."""

    def generate(
        self,
        hidden: torch.Tensor,
        prompts: list[list[int]],
        options: DecodingOptions,
        eot: int,
    ) -> list[tuple[list[int], float]]: ...


@torch.no_grad()
def _first_step(
    model: WhisperForConditionalGeneration, hidden: torch.Tensor, tokenizer
) -> torch.Tensor:
    """Decoder logits `(B, V)` after the start-of-transcript token, for encoder outputs `(B, T, D)`."""
    sot = torch.full((hidden.shape[0], 1), tokenizer.sot, device=hidden.device)
    out = model(encoder_outputs=(hidden,), decoder_input_ids=sot)
    return out.logits[:, 0].float()


def detect_language(
    logits: torch.Tensor, tokenizer: whisper.tokenizer.Tokenizer, languages: Iterable[str]
) -> list[str]:
    """The most likely of `languages` per row of first-step logits `(B, V)` (openai-whisper's way)."""
    languages = list(languages)
    ids = torch.tensor(language_ids(tokenizer, languages), device=logits.device)
    best = logits[:, ids].argmax(dim=-1)  # (B,)
    return [languages[i] for i in best.tolist()]


def _text_tokens(row: list[int], prompt_len: int, sot: int, eot: int) -> list[int]:
    """Tokens after the prompt, up to the first end token, special tokens dropped."""
    if row[:1] == [sot]:  # transformers returns the prompt in front of the text
        row = row[prompt_len:]
    out = []
    for token in row:
        if token == eot:
            break
        if token < eot:
            out.append(token)
    return out


@torch.no_grad()
def _avg_logprobs(model, hidden, prompts, texts, eot) -> list[float]:
    """Mean log-prob of text tokens and the end token under teacher forcing, per row."""
    seqs = [p + t + [eot] for p, t in zip(prompts, texts, strict=True)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [eot] * (width - len(s)) for s in seqs], device=hidden.device)
    logp = model(encoder_outputs=(hidden,), decoder_input_ids=ids[:, :-1]).logits.float()
    logp = logp.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, width - 1)
    return [
        logp[i, len(p) - 1 : len(s) - 1].mean().item()
        for i, (p, s) in enumerate(zip(prompts, seqs, strict=True))
    ]


@contextmanager
def _quiet_transformers():
    """transformers' warnings off: decoding from encoder outputs trips three false alarms (no
    attention mask, max_length beside max_new_tokens, suppress tokens beside a config)."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def _generate_transformers(
    model: WhisperForConditionalGeneration,
    hidden: torch.Tensor,
    tokenizer: whisper.tokenizer.Tokenizer,
    langs: list[str],
    options: DecodingOptions,
) -> list[tuple[list[int], float]]:
    """Text tokens and avg_logprob per row by transformers' `generate`: one batched call per
    language (window by window for beam search), then one teacher-forced pass for the log-probs."""
    multilingual = vocab_size(model) >= MULTILINGUAL_VOCAB
    texts: list[list[int]] = [[] for _ in langs]
    groups = [[i for i, x in enumerate(langs) if x == lang] for lang in sorted(set(langs))]
    if options.beam_size > 1:  # transformers' batched beam path drops rows it thinks finished
        groups = [[i] for group in groups for i in group]
    for rows in groups:
        lang = langs[rows[0]]
        kwargs = {"language": lang, "task": "transcribe"} if multilingual else {}
        with _quiet_transformers():
            seqs = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[rows]),
                num_beams=options.beam_size,
                do_sample=False,
                max_new_tokens=options.max_new_tokens,
                return_timestamps=False,
                **kwargs,
            )
        seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
        prompt_len = len(prompt_tokens(tokenizer, lang, multilingual))
        for i, row in zip(rows, seqs.tolist(), strict=True):
            texts[i] = _text_tokens(row, prompt_len, tokenizer.sot, tokenizer.eot)
    prompts = [prompt_tokens(tokenizer, lang, multilingual) for lang in langs]
    logprobs = _avg_logprobs(model, hidden, prompts, texts, tokenizer.eot)
    return list(zip(texts, logprobs, strict=True))


def collapse_repeats(tokens: list[int], min_repeats: int = 3, max_span: int = 16) -> list[int]:
    """`tokens` with every span (1 to `max_span` tokens) repeated `min_repeats` or more times in a
    row kept once, and a loop's unfinished last repetition dropped.

    A decoder that cannot read the audio often loops ("이 형과는 이 형과는 …" up to the token
    limit); the loop carries no more evidence than its first pass, and its length alone would
    make the error rate of a 10-character phrase 10 or more.
    """
    out: list[int] = []
    i, n = 0, len(tokens)
    while i < n:
        loop = _loop_at(tokens, i, min_repeats, max_span)
        if loop is None:
            out.append(tokens[i])
            i += 1
            continue
        k, reps = loop
        span = tokens[i : i + k]
        out += span
        i += reps * k
        rest = tokens[i:]
        if len(rest) < k and rest == span[: len(rest)]:
            break  # the loop ran into the token limit mid-span
    return out


def _loop_at(tokens: list[int], i: int, min_repeats: int, max_span: int) -> tuple[int, int] | None:
    """(span length, repetitions) of the shortest span repeated `min_repeats`+ times from `i`."""
    for k in range(1, min(max_span, (len(tokens) - i) // min_repeats) + 1):
        span = tokens[i : i + k]
        reps = 1
        while tokens[i + reps * k : i + (reps + 1) * k] == span:
            reps += 1
        if reps >= min_repeats:
            return k, reps
    return None


@torch.no_grad()
def transcribe_encoded(
    model: WhisperForConditionalGeneration,
    encoder_hidden_states: torch.Tensor,
    tokenizer: whisper.tokenizer.Tokenizer,
    options: DecodingOptions | None = None,
    generator: Generator | None = None,
) -> list[Transcript]:
    """Transcribe windows from encoder outputs `(B, 1500, D)` without running the encoder again.

    One decoder step on the start token gives the language (among `options.languages`) and the
    no-speech probability; windows above `options.speech_gate` stop there. The rest are decoded
    by `generator` (CTranslate2) or else by transformers' `generate` (set the generation config
    first, `generation_config`).
    """
    options = options or DecodingOptions()
    multilingual = vocab_size(model) >= MULTILINGUAL_VOCAB
    hidden = encoder_hidden_states
    first = _first_step(model, hidden, tokenizer)  # (B, V)
    no_speech = first.softmax(-1)[:, tokenizer.no_speech].tolist()
    if not multilingual:
        langs = ["en"] * hidden.shape[0]
    elif options.language is None:
        langs = detect_language(first, tokenizer, options.languages)
    else:
        langs = [options.language] * hidden.shape[0]
    gate = options.speech_gate
    rows = [i for i, p in enumerate(no_speech) if gate is None or p <= gate]
    decoded: dict[int, tuple[list[int], float]] = {}
    if rows:
        sub, chosen = hidden[rows], [langs[i] for i in rows]
        if generator is not None:
            prompts = [prompt_tokens(tokenizer, lang, multilingual) for lang in chosen]
            out = generator.generate(sub, prompts, options, tokenizer.eot)
        else:
            out = _generate_transformers(model, sub, tokenizer, chosen, options)
        decoded = dict(zip(rows, out, strict=True))
    transcripts = []
    for i, (ns, lang) in enumerate(zip(no_speech, langs, strict=True)):
        tokens, logprob = decoded.get(i, ([], math.nan))
        tokens = collapse_repeats(tokens) if options.collapse_loops else tokens
        transcripts.append(Transcript(tokenizer.decode(tokens).strip(), tokens, logprob, ns, lang))
    return transcripts


@torch.no_grad()
def transcribe(
    model: WhisperForConditionalGeneration,
    wave: torch.Tensor | np.ndarray,
    tokenizer: whisper.tokenizer.Tokenizer,
    options: DecodingOptions | None = None,
) -> list[Transcript]:
    """Transcribe 16 kHz windows `(B, N)` or `(N,)`: log-mel, one encoder pass, then decoding."""
    device = next(model.parameters()).device
    mel = log_mel(wave).to(device)  # (B, 80, 3000)
    hidden = model.model.encoder(mel).last_hidden_state  # (B, 1500, D)
    return transcribe_encoded(model, hidden, tokenizer, options)
