"""Keyword judge: an emergency vote from what a Whisper transcript says.

The transcript is normalised (NFC, lower case, no punctuation) and scored against the lexicon of
configs/keywords.yaml with fuzzy matching, so a near-miss transcription still counts. Guards keep
Whisper's inventions over silence and noise from voting: nothing spoken, a no-speech decoding,
repetitive text and known silence phrases never vote emergency.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

from ensemble.core.labels import DEFAULT_KEYWORDS, Taxonomy, load_taxonomy
from ensemble.core.text import HANGUL, LATIN

GENERIC = "generic"  # key of the calls for help that name no class
_APOSTROPHES = "'’ʼ`"


def normalize_text(text: str, spaces: bool = True) -> str:
    """NFC, lower case, punctuation and symbols as spaces (apostrophes dropped), spaces collapsed.

    Letters, marks and digits of any script are kept. With `spaces=False` all spaces go too: Korean
    spacing in ASR output is unreliable, so Korean phrases are matched on that form.
    """
    text = unicodedata.normalize("NFC", str(text)).lower()
    chars = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        chars.append(ch if unicodedata.category(ch)[0] in "LMN" else " ")
    text = " ".join("".join(chars).split())
    return text if spaces else text.replace(" ", "")


def _jamo(text: str) -> str:
    """Hangul syllables split into their letters (NFD), so one wrong vowel is a small edit."""
    return unicodedata.normalize("NFD", text)


@dataclass(frozen=True)
class Phrase:
    key: str  # taxonomy key, or GENERIC
    text: str  # as written in the lexicon
    weight: float
    norm: str  # normalize_text(text)

    @property
    def compact(self) -> str:
        return self.norm.replace(" ", "")

    @property
    def by_words(self) -> bool:
        """English-like phrases are matched word by word; Korean and digits without spaces."""
        return bool(LATIN.search(self.norm)) and not HANGUL.search(self.norm)


@dataclass(frozen=True)
class Lexicon:
    """Phrases in file order (the order breaks ties between classes) and silence phrases."""

    phrases: tuple[Phrase, ...]
    hallucinations: tuple[str, ...] = ()  # normalised, without spaces
    source: str = field(default="", compare=False)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.key for p in self.phrases))


def _phrase(key: str, entry: object, source: str) -> Phrase:
    text, weight = (entry, 1.0) if not isinstance(entry, list) else [*entry, None][:2]
    if weight is None or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
        raise ValueError(f"{source}: {key}: weight of {entry!r} must be in (0, 1]")
    norm = normalize_text(str(text))
    if not norm:
        raise ValueError(f"{source}: {key}: empty phrase {entry!r}")
    return Phrase(key=key, text=str(text), weight=float(weight), norm=norm)


def _read(path: str | Path | None) -> tuple[Path, dict]:
    path = Path(path or DEFAULT_KEYWORDS)
    return path, yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def load_keywords(
    path: str | Path | None = None, taxonomy: Taxonomy | None = None, raw: dict | None = None
) -> Lexicon:
    """The lexicon in `path` (default configs/keywords.yaml; `raw`: its contents, already read);
    class keys checked against `taxonomy` (default configs/labels.yaml): each must exist and be an
    emergency class."""
    path, raw = _read(path) if raw is None else (Path(path or DEFAULT_KEYWORDS), raw)
    taxonomy = taxonomy or load_taxonomy()
    phrases = []
    for key, entries in (raw.get("classes") or {}).items():
        if key not in taxonomy.keys:
            raise ValueError(f"{path}: unknown class key {key!r}; valid: {taxonomy.keys[1:]}")
        if not taxonomy.is_emergency(key):
            raise ValueError(f"{path}: class {key!r} is not an emergency class")
        phrases += [_phrase(key, e, str(path)) for e in entries or ()]
    phrases += [_phrase(GENERIC, e, str(path)) for e in raw.get("generic") or ()]
    if not phrases:
        raise ValueError(f"{path}: no phrases")
    silence = tuple(normalize_text(h, spaces=False) for h in raw.get("hallucinations") or ())
    return Lexicon(phrases=tuple(phrases), hallucinations=silence, source=str(path))


@dataclass(frozen=True)
class JudgeOptions:
    threshold: float = 0.5  # vote when p_emergency >= threshold
    min_similarity: float = 0.85  # a phrase matches at this similarity or above
    min_fuzzy_len: int = 5  # shorter phrases (characters, no spaces) must match exactly
    no_speech_threshold: float = 0.6  # openai-whisper's rule: silent when no_speech_prob is
    logprob_threshold: float = -1.0  # above this and avg_logprob below that
    compression_ratio_threshold: float = 2.4  # zlib ratio above this: a repetition loop
    max_repeats: int = 8  # the same word this many times in a row: a repetition loop
    confidence: bool = False  # p * exp(avg_logprob): an unsure transcript's match counts less

    def __post_init__(self) -> None:
        for name in ("threshold", "min_similarity", "no_speech_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_fuzzy_len < 1 or self.max_repeats < 2:
            raise ValueError(f"min_fuzzy_len >= 1 and max_repeats >= 2, got {self}")


class Match(NamedTuple):
    class_key: str
    phrase: str
    similarity: float


@dataclass(frozen=True)
class Judgement:
    p_emergency: float  # in [0, 1]
    vote: bool
    class_key: str | None  # best scored class; None when nothing or only a generic call matched
    matches: tuple[Match, ...]
    reason: str
    opinion: bool = True  # False: nothing was said (silence, a loop, only silence phrases)


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes, as openai-whisper measures repetition."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _longest_run(words: Sequence[str]) -> int:
    best = run = 0
    for i, w in enumerate(words):
        run = run + 1 if i and w == words[i - 1] else 1
        best = max(best, run)
    return best


def _strip_phrase(text: str, compact_phrase: str) -> str:
    """`text` (normalised, spaced) without `compact_phrase`, wherever its spaces fall."""
    pattern = r"\s*".join(map(re.escape, compact_phrase))
    return " ".join(re.sub(pattern, " ", text).split())


@dataclass(frozen=True)
class KeywordJudge:
    lexicon: Lexicon
    options: JudgeOptions = JudgeOptions()

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **options: float) -> KeywordJudge:
        """The lexicon in `path` with its `judge:` block of JudgeOptions; `options` override it."""
        path, raw = _read(path)
        block = raw.get("judge") or {}
        known = {f.name for f in fields(JudgeOptions)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"{path}: judge: unknown option(s) {unknown}; valid: {sorted(known)}")
        lexicon = load_keywords(path, raw=raw)
        return cls(lexicon=lexicon, options=JudgeOptions(**{**block, **options}))

    def _similarity(self, phrase: Phrase, words: list[str], jamo: str) -> float:
        """Best similarity of `phrase` to a stretch of the transcript, in [0, 1]."""
        fuzzy = len(phrase.compact) >= self.options.min_fuzzy_len
        if phrase.by_words:  # word windows, one typo tolerated in longer phrases
            parts = phrase.norm.split()
            n, best = len(parts), 0.0
            for i in range(len(words) - n + 1):
                window = " ".join(words[i : i + n])
                if window == phrase.norm:
                    return 1.0
                # a near miss keeps each word's first letter: 'parking' is not 'sparking'
                onsets = all(w[0] == q[0] for w, q in zip(words[i : i + n], parts, strict=True))
                if fuzzy and onsets:
                    best = max(best, OSA.normalized_similarity(window, phrase.norm))
            return best
        target = _jamo(phrase.compact)
        if target in jamo:
            return 1.0
        if not fuzzy:
            return 0.0
        if len(jamo) < len(target):  # partial_ratio would align the phrase inside the text
            return fuzz.ratio(target, jamo) / 100
        return fuzz.partial_ratio(target, jamo) / 100

    def _guard(self, text: str, no_speech_prob: float | None, avg_logprob: float | None) -> str:
        """Why this transcript must not vote, or '' when it may."""
        o = self.options
        silent = no_speech_prob is not None and no_speech_prob > o.no_speech_threshold
        if silent and avg_logprob is not None and avg_logprob < o.logprob_threshold:
            return f"no speech (no_speech_prob {no_speech_prob:.2f}, logprob {avg_logprob:.2f})"
        norm = normalize_text(text)
        if not norm:
            return "nothing spoken"
        ratio = compression_ratio(text.strip())
        if ratio > o.compression_ratio_threshold:
            return f"repetitive (compression ratio {ratio:.1f})"
        if _longest_run(norm.split()) >= o.max_repeats:
            return f"repetitive (a word {o.max_repeats}+ times in a row)"
        return ""

    def _scores(self, norm: str) -> tuple[dict[str, float], list[Match]]:
        """Per key 1 - prod(1 - similarity * weight) over its matched phrases."""
        words, jamo = norm.split(), _jamo(norm.replace(" ", ""))
        miss: dict[str, float] = {}
        matches = []
        for phrase in self.lexicon.phrases:
            sim = self._similarity(phrase, words, jamo)
            if sim >= self.options.min_similarity:
                matches.append(Match(phrase.key, phrase.text, round(sim, 3)))
                miss[phrase.key] = miss.get(phrase.key, 1.0) * (1 - sim * phrase.weight)
        return {k: 1 - m for k, m in miss.items()}, matches

    def judge(
        self, transcript: str, no_speech_prob: float | None = None, avg_logprob: float | None = None
    ) -> Judgement:
        """One window's transcript, with the decoder's no-speech probability and mean log-prob."""
        reason = self._guard(transcript, no_speech_prob, avg_logprob)
        if reason:
            return Judgement(0.0, False, None, (), reason, opinion=False)
        norm = normalize_text(transcript)
        for silence in self.lexicon.hallucinations:
            norm = _strip_phrase(norm, silence)
        if not norm:
            return Judgement(
                0.0, False, None, (), "only phrases Whisper writes over silence", opinion=False
            )
        scores, matches = self._scores(norm)
        if not scores:
            return Judgement(0.0, False, None, (), "no keyword")
        miss = 1.0
        for s in scores.values():
            miss *= 1 - s
        p = min(max(1 - miss, 0.0), 1.0)
        if self.options.confidence and avg_logprob is not None:
            p *= math.exp(min(avg_logprob, 0.0))
        classes = {k: s for k, s in scores.items() if k != GENERIC}
        # max() keeps the first of equal scores: lexicon order breaks ties
        key = max(classes, key=classes.__getitem__) if classes else None
        vote = p >= self.options.threshold
        found = ", ".join(f"{m.class_key}:{m.phrase} ({m.similarity:.2f})" for m in matches)
        return Judgement(p, vote, key, tuple(matches), f"p {p:.2f} from {found}")

    def judge_batch(
        self,
        transcripts: Sequence[str],
        no_speech_probs: Sequence[float] | None = None,
        avg_logprobs: Sequence[float] | None = None,
    ) -> list[Judgement]:
        """B transcripts with optional B no-speech probabilities and B mean log-probs."""
        B = len(transcripts)
        for name, values in (("no_speech_probs", no_speech_probs), ("avg_logprobs", avg_logprobs)):
            if values is not None and len(values) != B:
                raise ValueError(f"{name} must have B={B} values, got {len(values)}")
        nsp = [None] * B if no_speech_probs is None else [float(v) for v in no_speech_probs]
        alp = [None] * B if avg_logprobs is None else [float(v) for v in avg_logprobs]
        return [self.judge(t, n, a) for t, n, a in zip(transcripts, nsp, alp, strict=True)]


def judgement_tensors(
    judgements: Sequence[Judgement], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """p_emergency `(B,)` float32 and vote `(B,)` bool, as a MemberOutput takes them."""
    p = torch.tensor([j.p_emergency for j in judgements], dtype=torch.float32, device=device)
    vote = torch.tensor([j.vote for j in judgements], dtype=torch.bool, device=device)
    return p, vote


def judgement_classes(
    judgements: Sequence[Judgement], taxonomy: Taxonomy, device: torch.device | str | None = None
) -> torch.Tensor:
    """`(B, K)`: one-hot on the class whose phrases matched where the judge votes and names a
    class; NaN rows (no class) elsewhere."""
    out = torch.full((len(judgements), taxonomy.n_classes), float("nan"), device=device)
    for b, j in enumerate(judgements):
        if j.vote and j.class_key is not None:
            out[b] = 0.0
            out[b, taxonomy.id(j.class_key) - 1] = 1.0
    return out
