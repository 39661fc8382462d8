"""Ensemble voting: turn the members' per-window votes and probabilities into one decision.

Rules: strict majority, at least k of M, the soft (weighted) mean probability against tau, and
the weighted fraction of True votes against a threshold. A tie (exactly half under "majority", a
weighted fraction equal to the threshold under "weighted") is settled by a named tie rule. A file
is an emergency when any of its windows is (`rollup`); `merge_segments` joins adjacent events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

Rule = Literal["majority", "at_least", "soft", "weighted"]
TieBreak = Literal["soft", "emergency", "normal"]
RULES: tuple[str, ...] = get_args(Rule)
TIE_BREAKS: tuple[str, ...] = get_args(TieBreak)


def _as_array(x: Any) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_open_unit(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def _bool_like(name: str, x: np.ndarray) -> np.ndarray:
    """x as bool; accepts bool or numbers that are all 0 or 1."""
    if x.dtype == np.bool_:
        return x
    if not (np.issubdtype(x.dtype, np.number) and np.isin(x, (0, 1)).all()):
        raise ValueError(f"{name} must be bool or 0/1, got dtype {x.dtype}")
    return x.astype(bool)


def _matrix(name: str, x: Any) -> np.ndarray:
    """`x` as an `(M, B)` array with M >= 1, or ValueError naming `name`."""
    a = _as_array(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, B), got shape {a.shape}")
    if a.shape[0] < 1:
        raise ValueError(f"{name} need at least one member (M >= 1), got shape {a.shape}")
    return a


def _votes(votes: Any) -> np.ndarray:
    """Votes `(M, B)` as bool."""
    return _bool_like("votes", _matrix("votes", votes))


def _probs(probs: Any) -> np.ndarray:
    """Probabilities `(M, B)` as float64, finite and within [0, 1]."""
    p = _matrix("probs", probs)
    if not (np.issubdtype(p.dtype, np.number) or p.dtype == np.bool_):
        raise ValueError(f"probs must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite (found NaN or inf)")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"probs must be within [0, 1], got range [{p.min()}, {p.max()}]")
    return p


def _weights(weights: Any, m: int) -> np.ndarray:
    """Member weights `(M,)`, non-negative with a positive sum; all ones when None."""
    if weights is None:
        return np.ones(m)
    w = _as_array(weights).astype(np.float64)
    if w.shape != (m,):
        raise ValueError(f"weights must have shape ({m},) (one per member), got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"weights must have a positive sum, got {w.tolist()}")
    return w


def majority(votes: Any) -> np.ndarray:
    """`(B,)` bool: strictly more than half of the M members vote True."""
    v = _votes(votes)
    return 2 * v.sum(0) > v.shape[0]


def at_least(votes: Any, k: int) -> np.ndarray:
    """`(B,)` bool: at least k of the M members vote True (1 <= k <= M)."""
    v = _votes(votes)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= v.shape[0]:
        raise ValueError(f"k must be an int in [1, {v.shape[0]}] (M), got {k!r}")
    return v.sum(0) >= k


def soft_score(probs: Any, weights: Any = None) -> np.ndarray:
    """`(B,)` float: the (weighted) mean of the members' probabilities `(M, B)`."""
    p = _probs(probs)
    w = _weights(weights, p.shape[0])
    return w @ p / w.sum()


def soft(probs: Any, tau: float = 0.5, weights: Any = None) -> np.ndarray:
    """`(B,)` bool: soft_score >= tau."""
    _check_open_unit("tau", tau)
    return soft_score(probs, weights) >= tau


def weighted(votes: Any, weights: Any, threshold: float = 0.5) -> np.ndarray:
    """`(B,)` float: the weighted fraction of True votes, sum(w * v) / sum(w).

    `threshold` is only validated here; `decide` compares the fraction with it.
    """
    _check_open_unit("threshold", threshold)
    v = _votes(votes)
    w = _weights(weights, v.shape[0])
    return w @ v / w.sum()


@dataclass(frozen=True)
class VoteRule:
    """How `decide` combines the members: the rule, its parameters and the tie rule."""

    rule: Rule = "majority"
    k: int | None = None  # at_least only
    tau: float = 0.5  # soft rule, and ties settled by "soft"
    tie_break: TieBreak = "soft"
    threshold: float = 0.5  # weighted only

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")
        _check_open_unit("tau", self.tau)
        _check_open_unit("threshold", self.threshold)
        if self.rule == "at_least" and self.k is None:
            raise ValueError("k is required for rule 'at_least', got k=None")
        if self.k is not None and (
            isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1
        ):
            raise ValueError(f"k must be a positive int, got {self.k!r}")


@dataclass
class Decision:
    """Per-window result of `decide`; every field is `(B,)`."""

    emergency: np.ndarray  # bool
    score: np.ndarray  # float: the weighted soft score
    n_votes: np.ndarray  # int: members voting True
    tie: np.ndarray  # bool: the tie rule decided this window


def decide(votes: Any, probs: Any, rule: VoteRule = VoteRule(), weights: Any = None) -> Decision:
    """Combine the members' votes `(M, B)` and probabilities `(M, B)` under `rule`.

    weights `(M,)` (default all ones) drive the "weighted" rule and the soft score of every rule.
    """
    v, p = _votes(votes), _probs(probs)
    if v.shape != p.shape:
        raise ValueError(f"probs must have the shape of votes {v.shape}, got {p.shape}")
    m = v.shape[0]
    w = _weights(weights, m)
    score = soft_score(p, w)
    n_votes = v.sum(0).astype(np.int64)
    tie = np.zeros(v.shape[1], dtype=bool)

    if rule.rule == "majority":
        emergency = 2 * n_votes > m
        tie = 2 * n_votes == m
    elif rule.rule == "at_least":
        assert rule.k is not None
        emergency = at_least(v, rule.k)
    elif rule.rule == "soft":
        emergency = score >= rule.tau
    else:  # weighted
        frac = weighted(v, w, rule.threshold)
        tie = np.isclose(frac, rule.threshold)
        emergency = frac > rule.threshold

    if rule.tie_break == "soft":
        settled = score >= rule.tau
    else:
        settled = np.full_like(tie, rule.tie_break == "emergency")
    emergency = np.where(tie, settled, emergency)
    return Decision(emergency=emergency, score=score, n_votes=n_votes, tie=tie)


def merge_segments(
    segments: list[tuple[float, float, str]], gap: float = 0.0
) -> list[tuple[float, float, str]]:
    """Sort `(start_s, end_s, class_key)` by start; merge same-class ones at most `gap` s apart.

    Overlapping or touching segments always merge; segments with end <= start are dropped.
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap!r}")
    by_class: dict[str, list[tuple[float, float]]] = {}
    for start, end, key in segments:
        if end > start:
            by_class.setdefault(key, []).append((float(start), float(end)))
    merged: list[tuple[float, float, str]] = []
    for key, spans in by_class.items():
        spans.sort()
        cur_start, cur_end = spans[0]
        for start, end in spans[1:]:
            if start - cur_end <= gap:
                cur_end = max(cur_end, end)
            else:
                merged.append((cur_start, cur_end, key))
                cur_start, cur_end = start, end
        merged.append((cur_start, cur_end, key))
    return sorted(merged, key=lambda s: (s[0], s[1], s[2]))


@dataclass
class FileVerdict:
    """One file's verdict over its windows."""

    emergency: bool
    score: float  # max window score
    first_emergency_s: float | None  # start of the earliest emergency window
    n_windows: int
    n_emergency_windows: int


def rollup(emergency: Any, score: Any, starts: Any) -> FileVerdict:
    """Roll one file's windows up: emergency `(W,)`, score `(W,)`, starts `(W,)` in seconds.

    An emergency in any window marks the file.
    """
    e, s, t = _as_array(emergency), _as_array(score), _as_array(starts)
    for name, x in (("emergency", e), ("score", s), ("starts", t)):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D (W,), got shape {x.shape}")
    if not len(e) == len(s) == len(t):
        raise ValueError(
            f"emergency, score and starts must have equal lengths, got {len(e)}, {len(s)}, {len(t)}"
        )
    if len(e) == 0:
        raise ValueError("rollup needs at least one window (W >= 1), got W=0")
    e, t = _bool_like("emergency", e), t.astype(np.float64)
    n_emergency = int(e.sum())
    return FileVerdict(
        emergency=n_emergency > 0,
        score=float(s.astype(np.float64).max()),
        first_emergency_s=float(t[e].min()) if n_emergency else None,
        n_windows=len(e),
        n_emergency_windows=n_emergency,
    )
