"""The rows of `infer`: each window's member outputs and vote, each file's rollup of its windows.

A window row holds everything the vote reads: each member's probability, its own vote, whether it
had an opinion and its class probabilities, rounded to 6 decimals before anything reads them. So
`revote` gives another ensemble config's decisions from a finished run without running a model,
exactly as `infer` with that config would (`emergency-ensemble calibrate` relies on it).

Window row: path, window, start_s, end_s, the ensemble's emergency, decided, score, n_votes,
n_opinions, tie, class and probs (its class probabilities), then per member p_, vote_ and opinion_
(as counted: after the config's threshold and abstention rules), own_vote_ and own_opinion_ (as the
member gave them), class_ and probs_, then transcript, no_speech_prob and events. File row: see
`RowMaker.file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.core.labels import Taxonomy
from ensemble.vote import Decision, decide, merge_segments, rollup

if TYPE_CHECKING:
    from ensemble.config import EnsembleConfig
    from ensemble.core.member import MemberOutput

DECIMALS = 6


def rounded(x: Any) -> Any:
    """`x` (a number or an array) rounded to the rows' 6 decimals; None and NaN pass through."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return np.round(x.astype(np.float64), DECIMALS)
    return round(float(x), DECIMALS)


def _number(x: Any) -> float | None:
    """A JSON-safe number: NaN becomes None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _probs_list(p: np.ndarray | None) -> list[float] | None:
    return None if p is None or not np.isfinite(p).all() else [float(v) for v in p]


@dataclass
class MemberTable:
    """M members' outputs for B windows, as the vote reads them (already rounded)."""

    names: tuple[str, ...]
    p: np.ndarray  # (M, B) float64 in [0, 1]
    own_vote: np.ndarray  # (M, B) bool: each member's vote at its own threshold
    opinion: np.ndarray  # (M, B) bool: False where the member abstained
    class_probs: list[np.ndarray | None]  # per member (B, K); a NaN row: no class for the window
    no_speech: np.ndarray  # (B,) Whisper's no-speech probability, NaN where no member gives it

    @classmethod
    def from_outputs(cls, outputs: dict[str, MemberOutput], names: list[str]) -> MemberTable:
        """The members' outputs of one batch (`EnsembleModule.forward`)."""
        first = outputs[names[0]].p_emergency
        B = first.shape[0]
        class_probs = []
        no_speech = np.full(B, np.nan)
        for name in names:
            out = outputs[name]
            cp = out.class_probs
            class_probs.append(None if cp is None else rounded(cp.detach().double().numpy()))
            if np.isnan(no_speech).all() and out.no_speech_prob is not None:
                no_speech = rounded(out.no_speech_prob.detach().double().numpy())
        return cls(
            names=tuple(names),
            p=rounded(np.stack([outputs[n].p_emergency.double().numpy() for n in names])).clip(
                0, 1
            ),
            own_vote=np.stack([outputs[n].vote.numpy() for n in names]).astype(bool),
            opinion=np.stack(
                [
                    np.ones(B, bool) if outputs[n].opinion is None else outputs[n].opinion.numpy()
                    for n in names
                ]
            ).astype(bool),
            class_probs=class_probs,
            no_speech=no_speech,
        )

    @classmethod
    def from_rows(cls, windows: list[dict], names: list[str], n_classes: int) -> MemberTable:
        """Window rows written by `infer` (any config with these members)."""
        missing = [f"own_vote_{n}" for n in names if f"own_vote_{n}" not in windows[0]]
        if missing:
            raise ValueError(
                f"window rows lack {missing}: written by an older version or other members; "
                "run `emergency-ensemble infer` again"
            )
        class_probs = []
        for (
            n
        ) in names:  # a member gives classes when its rows carry probs_ (None: not for this window)
            if not any(f"probs_{n}" in w for w in windows):
                class_probs.append(None)
                continue
            nan_row = [np.nan] * n_classes
            rows = [w.get(f"probs_{n}") or nan_row for w in windows]
            class_probs.append(np.array(rows, dtype=np.float64))
        return cls(
            names=tuple(names),
            p=np.array([[w[f"p_{n}"] for w in windows] for n in names], dtype=np.float64),
            own_vote=np.array([[w[f"own_vote_{n}"] for w in windows] for n in names], dtype=bool),
            opinion=np.array([[w[f"own_opinion_{n}"] for w in windows] for n in names], dtype=bool),
            class_probs=class_probs,
            no_speech=np.array(
                [
                    np.nan if w.get("no_speech_prob") is None else w["no_speech_prob"]
                    for w in windows
                ]
            ),
        )


@dataclass
class Verdicts:
    """The ensemble's view of B windows under one config."""

    decision: Decision
    votes: np.ndarray  # (M, B) bool: the members' votes as counted (after the config's threshold)
    opinion: np.ndarray  # (M, B) bool: after the config's abstention rules
    class_probs: np.ndarray | None  # (B, K): the weighted mean over members with an opinion


def vote(table: MemberTable, config: EnsembleConfig) -> Verdicts:
    """The config's thresholds, abstentions, vote rule and class weights over `table`."""
    specs = {s.name: s for s in config.members}
    votes = table.own_vote.copy()
    opinion = table.opinion.copy()
    for m, name in enumerate(table.names):
        spec = specs[name]
        if spec.threshold is not None:
            votes[m] = table.p[m] > spec.threshold
        if spec.abstain_no_speech is not None:
            opinion[m] &= ~(np.nan_to_num(table.no_speech, nan=0.0) > spec.abstain_no_speech)
    weights = np.array([specs[n].weight for n in table.names], dtype=np.float64)
    decision = decide(votes, table.p, config.vote, weights, opinion)
    return Verdicts(decision, votes, opinion, _mean_class_probs(table, opinion, specs))


def _mean_class_probs(table: MemberTable, opinion: np.ndarray, specs: dict) -> np.ndarray | None:
    """Per window, the class-weighted mean of the class probabilities of the members that have an
    opinion and a class for it; NaN rows where none has. None when no member gives classes."""
    total = weight = None
    for m, name in enumerate(table.names):
        cp = table.class_probs[m]
        if cp is None:
            continue
        w = specs[name].class_weight
        w = specs[name].weight if w is None else w
        usable = opinion[m] & np.isfinite(cp).all(1) & (w > 0)  # (B,)
        part = np.where(usable[:, None], w * np.nan_to_num(cp), 0.0)
        total = part if total is None else total + part
        weight = w * usable if weight is None else weight + w * usable
    if total is None:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight[:, None] > 0, total / weight[:, None], np.nan)


class RowMaker:
    """Window rows and file rows for one config and taxonomy."""

    def __init__(self, config: EnsembleConfig, taxonomy: Taxonomy):
        self.config, self.taxonomy = config, taxonomy
        self.names = config.names
        self.emergency_columns = np.array(taxonomy.emergency_ids) - 1
        self.normal_columns = np.setdiff1d(np.arange(taxonomy.n_classes), self.emergency_columns)

    def class_key(self, probs: np.ndarray | None, columns: np.ndarray | None = None) -> str | None:
        """The class of the highest probability among `columns` (all by default)."""
        if probs is None or not np.isfinite(probs).all():
            return None
        columns = np.arange(len(probs)) if columns is None else columns
        return self.taxonomy.key(int(columns[np.argmax(probs[columns])]) + 1)

    def windows(self, metas: list[dict], table: MemberTable, extras: list[dict]) -> list[dict]:
        """Window rows: `metas` (path, window, start_s, end_s), the vote of `table` under the
        config, and `extras` (transcript, no_speech_prob, events) copied as they are."""
        v = vote(table, self.config)
        d = v.decision
        rows = []
        for b, meta in enumerate(metas):
            emergency = bool(d.emergency[b])
            probs = None if v.class_probs is None else v.class_probs[b]
            columns = self.emergency_columns if emergency else self.normal_columns
            row = {
                **meta,
                "emergency": emergency,
                "decided": bool(d.decided[b]),
                "score": _number(rounded(d.score[b])),
                "n_votes": int(d.n_votes[b]),
                "n_opinions": int(d.n_opinions[b]),
                "tie": bool(d.tie[b]),
                "class": self.class_key(probs, columns),
                "probs": _probs_list(None if probs is None else rounded(probs)),
            }
            for m, name in enumerate(self.names):
                cp = table.class_probs[m]
                member_probs = None if cp is None else cp[b]
                row[f"p_{name}"] = float(table.p[m, b])
                row[f"vote_{name}"] = bool(v.votes[m, b])
                row[f"own_vote_{name}"] = bool(table.own_vote[m, b])
                row[f"opinion_{name}"] = bool(v.opinion[m, b])
                row[f"own_opinion_{name}"] = bool(table.opinion[m, b])
                row[f"class_{name}"] = self.class_key(member_probs)
                if cp is not None:
                    row[f"probs_{name}"] = _probs_list(member_probs)
            rows.append(row | extras[b])
        return rows

    def file(self, windows: list[dict], duration_s: float) -> dict:
        """One file's row from its window rows: an emergency if any window is; its class the
        highest summed class probability over its emergency windows (emergency columns), or over
        all its windows (normal columns); per member the highest p, any vote, any opinion."""
        verdict = rollup(
            [w["emergency"] for w in windows],
            [np.nan if w["score"] is None else w["score"] for w in windows],
            [w["start_s"] for w in windows],
        )
        decided = any(w["decided"] for w in windows)
        chosen = [w for w in windows if w["emergency"]] if verdict.emergency else windows
        columns = self.emergency_columns if verdict.emergency else self.normal_columns
        cls = self.class_key(_sum_probs(w.get("probs") for w in chosen), columns)
        score = _number(verdict.score)
        texts = [w["transcript"] for w in windows if w.get("transcript")]
        events = merge_segments([tuple(e) for w in windows for e in w["events"]], gap=0.02)
        row = {
            "path": windows[0]["path"],
            "duration_s": rounded(duration_s),
            "status": "ok",
            "error": "",
            "emergency": verdict.emergency,
            "decided": decided,
            "class": cls,
            "class_ko": None if cls is None else self.taxonomy[cls].ko,
            "confidence": None
            if score is None
            else rounded(score if verdict.emergency else 1 - score),
            "score": score,
        }
        for name in self.names:
            row[f"p_{name}"] = max(w[f"p_{name}"] for w in windows)
            row[f"vote_{name}"] = any(w[f"vote_{name}"] and w[f"opinion_{name}"] for w in windows)
            row[f"opinion_{name}"] = any(w[f"opinion_{name}"] for w in windows)
            row[f"class_{name}"] = self.class_key(
                _sum_probs(w.get(f"probs_{name}") for w in windows)
            )
        row["transcript"] = " ".join(t.strip() for t in texts) if texts else None
        row["events"] = [[s, e, k] for s, e, k in events]
        row["n_windows"] = len(windows)
        return row


def _sum_probs(rows) -> np.ndarray | None:
    """The sum of the class probability lists that are there; None when none is."""
    arrays = [np.asarray(r, dtype=np.float64) for r in rows if r is not None]
    return sum(arrays) if arrays else None


def error_row(path: str, error: str, names: list[str]) -> dict:
    """The row of a file that could not be used."""
    row = {"path": path, "duration_s": None, "status": "error", "error": error}
    row |= dict.fromkeys(("emergency", "decided", "class", "class_ko", "confidence", "score"))
    for name in names:
        row |= dict.fromkeys((f"p_{name}", f"vote_{name}", f"opinion_{name}", f"class_{name}"))
    return row | {"transcript": None, "events": [], "n_windows": 0}
