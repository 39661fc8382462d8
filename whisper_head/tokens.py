"""Whisper's tokens and vocabularies: openai-whisper's tokenizer (shipped assets: offline), the
special and language token ids, the prompt, the suppressed tokens and the vocabulary as strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import whisper.tokenizer
from transformers import WhisperConfig

from ensemble.core.text import script_language

MULTILINGUAL_VOCAB = 51865  # openai-whisper: a vocabulary this large or larger is multilingual
ENGLISH_ONLY_LANGUAGES = 51765  # vocab - this - int(multilingual) = number of language tokens


def vocab_size(model_or_config) -> int:
    """The vocabulary size of a Whisper model or `WhisperConfig`."""
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, WhisperConfig):
        raise TypeError(f"expected a Whisper model or WhisperConfig, got {type(config).__name__}")
    return config.vocab_size


def tokenizer_for(model_or_config, language: str | None = None) -> whisper.tokenizer.Tokenizer:
    """openai-whisper's tokenizer for the vocabulary of a model or `WhisperConfig` (task transcribe).

    English-only vocabularies (< 51865) get the GPT-2 encoding and no language.
    """
    n_vocab = vocab_size(model_or_config)
    multilingual = n_vocab >= MULTILINGUAL_VOCAB
    return whisper.tokenizer.get_tokenizer(
        multilingual=multilingual,
        num_languages=n_vocab - ENGLISH_ONLY_LANGUAGES - int(multilingual),
        language=language if multilingual else None,
        task="transcribe" if multilingual else None,
    )


def language_ids(tokenizer: whisper.tokenizer.Tokenizer, languages: Iterable[str]) -> list[int]:
    """Token ids of language codes, raising ValueError on a code the vocabulary lacks."""
    known = dict(zip(tokenizer.all_language_codes, tokenizer.all_language_tokens, strict=True))
    missing = [code for code in languages if code not in known]
    if missing:
        raise ValueError(f"languages {missing} are not in this vocabulary; known: {sorted(known)}")
    return [known[code] for code in languages]


def task_tokens(tokenizer: whisper.tokenizer.Tokenizer) -> set[int]:
    """The task and start tokens: transcribe, translate, the three start tokens and no-speech."""
    t = tokenizer
    return {t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech}


def default_suppress_ids(tokenizer: whisper.tokenizer.Tokenizer) -> list[int]:
    """Tokens never generated: openai-whisper's non-speech symbols and the task/start tokens
    (the `suppress_ids` of CTranslate2's Whisper configs)."""
    return sorted(set(tokenizer.non_speech_tokens) | task_tokens(tokenizer))


def text_language(text: str, languages: tuple[str, ...]) -> str:
    """The language of a reference transcript among `languages`: Korean if it has Hangul, English
    if it has Latin letters, else the first candidate."""
    language = script_language(text)
    return language if language in languages else languages[0]


def prompt_tokens(tokenizer, language: str, multilingual: bool) -> list[int]:
    """`<|startoftranscript|><|lang|><|transcribe|><|notimestamps|>` (English-only: no language)."""
    if not multilingual:
        return [tokenizer.sot, tokenizer.no_timestamps]
    lang = language_ids(tokenizer, [language])[0]
    return [tokenizer.sot, lang, tokenizer.transcribe, tokenizer.no_timestamps]


def special_token_ids(n_vocab: int) -> dict[str, int]:
    """openai-whisper's rule: a vocabulary of 51865 or more is multilingual, its eos one higher.

    A toy vocabulary (tests) too small for the real ids puts eos and start at its last two ids.
    """
    eos = 50256 + int(n_vocab >= MULTILINGUAL_VOCAB)
    if eos + 1 >= n_vocab:
        eos = n_vocab - 2
    return {
        "eos_token_id": eos,
        "bos_token_id": eos,
        "pad_token_id": eos,
        "decoder_start_token_id": eos + 1,
    }


@cache
def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in which byte-level BPE vocabularies are written."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def whisper_vocabulary(n_vocab: int) -> list[str]:
    """The token strings of openai-whisper's tokenizer for a vocabulary size, in id order.

    Ordinary tokens in byte-level BPE characters, then the special tokens (`<|endoftext|>`, ...,
    `<|notimestamps|>`, timestamps), as in CTranslate2's and transformers' Whisper vocabularies.
    """
    encoding = tokenizer_for(WhisperConfig(vocab_size=n_vocab)).encoding
    table = _byte_chars()
    tokens: list[str | None] = [None] * encoding.n_vocab
    for token, rank in encoding._mergeable_ranks.items():
        tokens[rank] = "".join(table[b] for b in token)
    for token, rank in encoding._special_tokens.items():
        tokens[rank] = token
    if encoding.n_vocab != n_vocab or None in tokens:  # (multilingual id 50256 is "")
        raise ValueError(f"openai-whisper's tokenizer has no vocabulary of {n_vocab} tokens")
    return tokens


class VocabularyTokens:
    """A vocabulary as ctranslate2's Whisper loader asks of a tokenizer: the token strings, no
    special list."""

    additional_special_tokens: tuple = ()

    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}
