"""Ensemble voting: turn the members' per-window votes and probabilities into one decision.

Rules: strict majority, at least k of M, the soft (weighted) mean probability against tau, the
weighted fraction of True votes against a threshold, and `stack`: a logistic regression over the
members' probabilities and abstentions (fitted by `emergency-ensemble calibrate`, kept as plain
numbers). A tie (exactly half under "majority", a weighted fraction equal to the threshold under
"weighted") is settled by a named tie rule.

Every rule also gives each window a score, what files are ranked by (ROC AUC) and soft ties are
settled by: the members' weighted mean probability (`score: mean`), or a stack's probability
(`score: stack`, any rule; `calibrate` chooses it when it ranks the validation files better).

A member may abstain on a window (`opinion` False: the keyword judge when nothing was said). Votes,
soft scores and ties count only the members with an opinion; a window where every member abstains
has no decision (`Decision.decided` False, not an emergency, score NaN). A file is an emergency
when any of its windows is (`rollup`); `merge_segments` joins adjacent events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

Rule = Literal["majority", "at_least", "soft", "weighted", "stack"]
TieBreak = Literal["soft", "emergency", "normal"]
Score = Literal["mean", "stack"]
RULES: tuple[str, ...] = get_args(Rule)
LOGIT_EPS = 1e-4  # the stack's inputs are logits of probabilities clipped this far from 0 and 1
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
class Stack:
    """A logistic regression over M members: for each window,
    `score = sigmoid(intercept + sum_m coef_p[m] * logit(p[m]) * opinion[m]
                     + coef_abstain[m] * (1 - opinion[m]))`,
    with p clipped to [1e-4, 1 - 1e-4] before the logit (members saturate near 0 and 1, where the
    logit keeps their ranking). An abstaining member adds its abstention weight instead."""

    intercept: float
    coef_p: tuple[float, ...]
    coef_abstain: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "intercept", float(self.intercept))
        for name in ("coef_p", "coef_abstain"):
            value = tuple(float(c) for c in getattr(self, name))
            if not value or not np.isfinite(value).all():
                raise ValueError(f"stack {name} must be finite numbers, one per member: {value}")
            object.__setattr__(self, name, value)
        if len(self.coef_p) != len(self.coef_abstain) or not np.isfinite(self.intercept):
            raise ValueError(
                f"stack: coef_p and coef_abstain need one number per member and a finite "
                f"intercept, got {len(self.coef_p)}, {len(self.coef_abstain)}, {self.intercept}"
            )

    def score(self, probs: Any, opinion: Any = None) -> np.ndarray:
        """`(B,)` in (0, 1) from probabilities `(M, B)` and opinions `(M, B)` (default all)."""
        p = _probs(probs)
        o = np.ones(p.shape, bool) if opinion is None else _bool_like("opinion", _as_array(opinion))
        if p.shape[0] != len(self.coef_p) or o.shape != p.shape:
            raise ValueError(
                f"stack has {len(self.coef_p)} members; got probs {p.shape}, opinion {o.shape}"
            )
        z = self.intercept + np.asarray(self.coef_p + self.coef_abstain) @ stack_inputs(p, o)
        return 1.0 / (1.0 + np.exp(-z))


def stack_inputs(p: np.ndarray, opinion: np.ndarray) -> np.ndarray:
    """`(2M, B)` from probabilities and opinions `(M, B)`: each member's logit p (0 where it
    abstains), then its abstention (1.0 where it abstains): what a `Stack` weighs."""
    return np.concatenate([np.where(opinion, logit(p), 0.0), (~opinion).astype(np.float64)])


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-4, 1 - 1e-4]: within about ±9.2."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class VoteRule:
    """How `decide` combines the members: the rule, its parameters and the tie rule."""

    rule: Rule = "majority"
    k: int | None = None  # at_least only
    tau: float = 0.5  # soft and stack rules, and ties settled by "soft"
    tie_break: TieBreak = "soft"
    threshold: float = 0.5  # weighted only
    stack: Stack | None = None  # the stack rule's, or score "stack"'s (a dict becomes a Stack)
    score: Score = "mean"  # the window score: members' weighted mean, or the stack's probability

    def __post_init__(self) -> None:
        if isinstance(self.stack, dict):
            object.__setattr__(self, "stack", Stack(**self.stack))
        if (self.rule == "stack" or self.score == "stack") and self.stack is None:
            raise ValueError("rule or score 'stack' needs its coefficients (vote.stack), got none")
        if self.score not in ("mean", "stack"):
            raise ValueError(f"score must be 'mean' or 'stack', got {self.score!r}")
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

    emergency: np.ndarray  # bool (False where there is no decision)
    score: np.ndarray  # float: the weighted soft score of the members with an opinion, or the
    # stack's probability under rule or score "stack"; NaN where there is no decision
    n_votes: np.ndarray  # int: members with an opinion voting True
    tie: np.ndarray  # bool: the tie rule decided this window
    n_opinions: np.ndarray  # int: members that did not abstain
    decided: np.ndarray  # bool: at least one member had an opinion


def decide(
    votes: Any, probs: Any, rule: VoteRule = VoteRule(), weights: Any = None, opinion: Any = None
) -> Decision:
    """Combine the members' votes `(M, B)` and probabilities `(M, B)` under `rule`.

    weights `(M,)` (default all ones) drive the "weighted" rule and the soft score of every rule.
    opinion `(M, B)` bool (default all True): False where a member abstains; only members with an
    opinion count. "at_least" k asks for k votes, or for all of them when fewer than k members
    have an opinion. "stack" reads every member (an abstention is one of its inputs).
    """
    v, p = _votes(votes), _probs(probs)
    if v.shape != p.shape:
        raise ValueError(f"probs must have the shape of votes {v.shape}, got {p.shape}")
    o = np.ones(v.shape, bool) if opinion is None else _bool_like("opinion", _as_array(opinion))
    if o.shape != v.shape:
        raise ValueError(f"opinion must have the shape of votes {v.shape}, got {o.shape}")
    m = v.shape[0]
    w = _weights(weights, m)
    if rule.k is not None and rule.rule == "at_least" and not rule.k <= m:
        raise ValueError(f"k must be an int in [1, {m}] (M), got {rule.k!r}")
    v = v & o
    n_opinions = o.sum(0).astype(np.int64)
    decided = n_opinions > 0
    n_votes = v.sum(0).astype(np.int64)
    w_open = w[:, None] * o  # (M, B): the weights of the members with an opinion
    total = w_open.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(total > 0, (w_open * p).sum(0) / total, np.nan)
        frac = np.where(total > 0, (w_open * v).sum(0) / total, np.nan)
    tie = np.zeros(v.shape[1], dtype=bool)

    if rule.rule == "majority":
        emergency = 2 * n_votes > n_opinions
        tie = decided & (2 * n_votes == n_opinions)
    elif rule.rule == "at_least":
        assert rule.k is not None
        emergency = n_votes >= np.minimum(rule.k, n_opinions)
    elif rule.rule == "soft":
        emergency = np.nan_to_num(score, nan=-1.0) >= rule.tau
    elif rule.rule == "stack":
        assert rule.stack is not None
        score = np.where(decided, rule.stack.score(p, o), np.nan)
        emergency = np.nan_to_num(score, nan=-1.0) >= rule.tau
    else:  # weighted
        tie = decided & np.isclose(np.nan_to_num(frac, nan=-1.0), rule.threshold)
        emergency = np.nan_to_num(frac, nan=-1.0) > rule.threshold

    if rule.score == "stack" and rule.rule != "stack":
        assert rule.stack is not None
        score = np.where(decided, rule.stack.score(p, o), np.nan)
    if rule.tie_break == "soft":
        settled = np.nan_to_num(score, nan=-1.0) >= rule.tau
    else:
        settled = np.full_like(tie, rule.tie_break == "emergency")
    emergency = np.where(tie, settled, emergency) & decided
    return Decision(
        emergency=emergency,
        score=score,
        n_votes=n_votes,
        tie=tie,
        n_opinions=n_opinions,
        decided=decided,
    )


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
    score: float  # max window score (NaN windows, those without a decision, left out)
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
    e, s, t = _bool_like("emergency", e), s.astype(np.float64), t.astype(np.float64)
    n_emergency = int(e.sum())
    return FileVerdict(
        emergency=n_emergency > 0,
        score=float(np.nanmax(s)) if np.isfinite(s).any() else math.nan,
        first_emergency_s=float(t[e].min()) if n_emergency else None,
        n_windows=len(e),
        n_emergency_windows=n_emergency,
    )
