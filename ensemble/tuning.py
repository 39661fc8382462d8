"""The choices behind `emergency-ensemble calibrate`: thresholds, vote rules and their
parameters, class weights, each scored on one run's windows with array arithmetic (no rows).

A `Goal` says what is best (balanced accuracy, or the true-positive rate within a false-positive
rate); `Search.fit` chooses one rule family's parameter on some files and `cross_validated` scores
that choice on files it did not see.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from ensemble.config import EnsembleConfig
from ensemble.core.labels import Taxonomy
from ensemble.revote import Run, balanced, figures, revote
from ensemble.rows import MemberTable, vote
from ensemble.vote import Stack, VoteRule, stack_inputs

Criterion = Literal["balanced", "fpr"]
RULE_ORDER = ("majority", "at_least", "soft", "weighted", "stack")  # simpler first
CLASS_GRID = (0.0, 0.5, 1.0, 2.0)
N_FOLDS = 5
N_REPEATS = 1  # cross-validation repeats, each with its own split of the files into folds
EPS = 1e-6  # thresholds stay inside (0, 1)


# --- choosing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """What a threshold or a rule is chosen for."""

    criterion: Criterion = "balanced"
    target_fpr: float = 0.05

    def score(self, y: np.ndarray, e: np.ndarray) -> float:
        """Higher is better: balanced accuracy, or the true-positive rate at a false-positive rate
        of at most `target_fpr` (each point over it costs 10 points)."""
        if self.criterion == "balanced":
            return balanced(y, e)
        tpr = float(e[y].mean()) if y.any() else 1.0
        fpr = float(e[~y].mean()) if (~y).any() else 0.0
        return tpr - 10 * max(0.0, fpr - self.target_fpr)


def _cuts(values: np.ndarray) -> np.ndarray:
    """Thresholds between the distinct values, and one under and over them, inside (0, 1)."""
    u = np.unique(values[np.isfinite(values)])
    if len(u) == 0:
        return np.array([0.5])
    mids = (u[:-1] + u[1:]) / 2
    return np.clip(np.concatenate([[u[0] - EPS], mids, [u[-1] + EPS]]), EPS, 1 - EPS)


def best_cut(values: np.ndarray, y: np.ndarray, goal: Goal, inclusive: bool = False) -> float:
    """The cut `values > t` (or `>= t`) that `goal` scores highest; the lowest of equal ones."""
    best, best_t = -math.inf, 0.5
    for t in _cuts(values):
        e = values >= t if inclusive else values > t
        score = goal.score(y, e)
        if score > best + 1e-12:
            best, best_t = score, float(t)
    return round(best_t, 9)


def _file_any(x: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    np.logical_or.at(out, group, x)
    return out


def _file_max(x: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, group, np.nan_to_num(x, nan=-np.inf))
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if y.any() and not y.all() else math.nan


@dataclass
class Candidate:
    """One vote rule with its parameters and member weights."""

    name: str
    rule: VoteRule
    weights: tuple[float, ...]


class Search:
    """The choices of `calibrate` over one run's windows (array arithmetic, no rows)."""

    def __init__(self, run: Run, taxonomy: Taxonomy, goal: Goal, repeats: int = N_REPEATS):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.run, self.taxonomy, self.goal, self.repeats = run, taxonomy, goal, repeats
        self.table = MemberTable.from_rows(run.windows, run.names, taxonomy.n_classes)
        self.n_files = len(run.files)

    # members
    def abstention(self, speech_members: list[str]) -> dict[str, float | None]:
        """Per member that reads speech: the no-speech threshold (None: its own rule only)."""
        chosen = {}
        for name in speech_members:
            m = self.run.names.index(name)
            own = self.table.opinion[m]
            best, best_t = balanced(self.run.speech, own), None
            for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
                opinion = own & ~(np.nan_to_num(self.table.no_speech, nan=0.0) > t)
                score = balanced(self.run.speech, opinion)
                if score > best + 1e-12:
                    best, best_t = score, float(t)
            chosen[name] = best_t
        return chosen

    def thresholds(self, config: EnsembleConfig, keep: np.ndarray | None = None) -> dict:
        """Per member: the threshold on p over the windows where it has an opinion (of those in
        `keep`, a window mask; default all)."""
        opinion = vote(self.table, config).opinion
        out = {}
        for m, name in enumerate(self.run.names):
            sel = opinion[m] if keep is None else opinion[m] & keep
            y, p = self.run.y_window[sel], self.table.p[m, sel]
            out[name] = None if y.all() or not y.any() else best_cut(p, y, self.goal)
        return out

    # rules
    def fit(self, family: str, config: EnsembleConfig, files: np.ndarray) -> Candidate:
        """`family`'s parameter chosen on the windows of `files` (indices into run.files)."""
        M = len(self.run.names)
        ones = (1.0,) * M
        y_f = self.run.y_file[files]
        if family in ("majority", "at_least"):
            options = (
                [VoteRule("majority", tie_break=t) for t in ("soft", "emergency", "normal")]
                if family == "majority"
                else [VoteRule("at_least", k=k) for k in range(1, M + 1)]
            )
            options = [_scored(r, config) for r in options]
            scored = [(self.goal.score(y_f, self._decide(c, config, files)), -i, c) for i, c in
                      enumerate(Candidate(family, r, ones) for r in options)]  # fmt: skip
            return max(scored, key=lambda x: x[:2])[2]
        keep = np.isin(self.run.group, files)
        weights = ones
        if family == "weighted":
            weights = self._auc_weights(config, keep)
        if family == "stack":
            stack = self.stack(config, keep)
            window_score = stack.score(self.table.p, vote(self.table, config).opinion)
        else:
            probe = with_rule(config, VoteRule("soft" if family == "soft" else "weighted"), weights)
            v = vote(self.table, probe)
            if family == "soft":
                window_score = v.decision.score
            else:
                w = np.asarray(weights)[:, None] * v.opinion
                with np.errstate(invalid="ignore", divide="ignore"):
                    window_score = (w * v.votes).sum(0) / w.sum(0)
        file_score = _file_max(window_score, self.run.group, self.n_files)[files]
        cut = best_cut(file_score, y_f, self.goal, inclusive=family != "weighted")
        if family == "soft":
            return Candidate(family, _scored(VoteRule("soft", tau=cut), config), weights)
        if family == "weighted":
            return Candidate(family, _scored(VoteRule("weighted", threshold=cut), config), weights)
        return Candidate(family, VoteRule("stack", tau=cut, stack=stack), weights)

    def score_source(self, config: EnsembleConfig) -> dict:
        """What ranks files best on val: the members' mean probability (`config`'s weights), or a
        stack's probability, each file scored by a stack fitted on the other folds' files."""
        y, group, n = self.run.y_file, self.run.group, self.n_files
        v = vote(self.table, with_rule(config, VoteRule(), [s.weight for s in config.members]))
        auc_mean = auc(y, np.maximum(_file_max(v.decision.score, group, n), -1.0))
        splits = self._splits(y)
        if not splits:
            return {"score": "mean", "auc_mean": round(auc_mean, 6), "auc_stack_cv": math.nan}
        aucs = []
        for repeat in splits:
            oof = np.full(len(group), np.nan)
            for train, test in repeat:
                stack = self.stack(config, np.isin(group, train))
                held = np.isin(group, test)
                oof[held] = stack.score(self.table.p, v.opinion)[held]
            aucs.append(auc(y, np.maximum(_file_max(oof, group, n), -1.0)))
        auc_mean = round(auc_mean, 6)
        auc_stack = round(float(np.mean(aucs)), 6)
        better = _finite_auc(auc_stack) > _finite_auc(auc_mean)  # what the block says, exactly
        return {
            "score": "stack" if better else "mean",
            "auc_mean": auc_mean,
            "auc_stack_cv": auc_stack,
        }

    def _auc_weights(self, config: EnsembleConfig, keep: np.ndarray) -> tuple[float, ...]:
        """2 AUC - 1 of each member on its opinion windows (0 at chance or worse)."""
        opinion = vote(self.table, config).opinion
        w = []
        for m in range(len(self.run.names)):
            sel = keep & opinion[m]
            a = auc(self.run.y_window[sel], self.table.p[m, sel])
            w.append(round(max(0.0, 2 * a - 1), 6) if math.isfinite(a) else 0.0)
        return tuple(w) if sum(w) > 0 else (1.0,) * len(w)

    def stack(self, config: EnsembleConfig, keep: np.ndarray) -> Stack:
        """A logistic regression over [logit p (0 when abstaining), abstained] of every member."""
        x = stack_inputs(self.table.p, vote(self.table, config).opinion).T
        x, y = x[keep], self.run.y_window[keep]
        folds = min(N_FOLDS, int(y.sum()), int((~y).sum()))
        best_c = 1.0
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=0)
            scores = {
                c: cross_val_score(
                    LogisticRegression(C=c, max_iter=2000), x, y, cv=cv, scoring="neg_log_loss"
                ).mean()
                for c in (0.01, 0.1, 1.0, 10.0, 100.0)
            }
            best_c = max(scores, key=scores.__getitem__)
        lr = LogisticRegression(C=best_c, max_iter=2000).fit(x, y)
        M = len(self.run.names)
        coef = [round(float(c), 6) for c in lr.coef_[0]]
        return Stack(round(float(lr.intercept_[0]), 6), tuple(coef[:M]), tuple(coef[M:]))

    def _decide(self, c: Candidate, config: EnsembleConfig, files: np.ndarray) -> np.ndarray:
        """File-level decisions of candidate `c` (over `config`'s members) on `files`."""
        d = vote(self.table, with_rule(config, c.rule, c.weights)).decision
        return _file_any(d.emergency, self.run.group, self.n_files)[files]

    def cross_validated(self, family: str, config: EnsembleConfig) -> dict:
        """Out-of-fold file decisions of `family` (parameters chosen on the other folds)."""
        y = self.run.y_file
        splits = self._splits(y)
        if not splits:
            return {"cv_score": math.nan, "cv_binary_acc": math.nan}
        scores, accs = [], []
        for repeat in splits:
            e = np.zeros(len(y), dtype=bool)
            for train, test in repeat:
                fold = self.fold_config(config, train)
                c = self.fit(family, fold, train)
                e[test] = self._decide(c, fold, test)
            scores.append(self.goal.score(y, e))
            accs.append(float((e == y).mean()))
        return {
            "cv_score": round(float(np.mean(scores)), 6),
            "cv_binary_acc": round(float(np.mean(accs)), 6),
        }

    def fold_config(self, config: EnsembleConfig, files: np.ndarray) -> EnsembleConfig:
        """`config` with what was chosen on all files chosen again on `files` alone: the member
        thresholds and, when it scores windows, the stack. Without it a held-out fold would
        have chosen the thresholds that the rules voting on them are judged with."""
        keep = np.isin(self.run.group, files)
        weights = [s.weight for s in config.members]
        fold = with_rule(config, config.vote, weights, threshold=self.thresholds(config, keep))
        if config.vote.score == "stack":
            rule = dataclasses.replace(config.vote, stack=self.stack(fold, keep))
            fold = with_rule(fold, rule, weights)
        return fold

    def _splits(self, y: np.ndarray) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per repeat, stratified folds of the files (`random_state` = the repeat); [] when a
        class has fewer than 2 files."""
        folds = min(N_FOLDS, int(y.sum()), int((~y).sum()))
        if folds < 2:
            return []
        return [
            list(StratifiedKFold(folds, shuffle=True, random_state=r).split(y, y))
            for r in range(self.repeats)
        ]


def _finite_auc(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _scored(rule: VoteRule, config: EnsembleConfig) -> VoteRule:
    """`rule` scored as `config`'s vote scores (its stack's probability when `score: stack`)."""
    if config.vote.score != "stack" or rule.rule == "stack":
        return rule
    return dataclasses.replace(rule, score="stack", stack=config.vote.stack)


def with_rule(config: EnsembleConfig, rule: VoteRule, weights, **member_fields) -> EnsembleConfig:
    """`config` with another vote rule and member weights (and per-member field dicts)."""
    members = []
    for i, spec in enumerate(config.members):
        extra = {k: v[spec.name] for k, v in member_fields.items() if spec.name in v}
        members.append(dataclasses.replace(spec, weight=float(weights[i]), **extra))
    return dataclasses.replace(config, members=tuple(members), vote=rule)


def class_weights(
    run: Run, config: EnsembleConfig, taxonomy: Taxonomy, table: MemberTable
) -> dict[str, float]:
    """The grid's class weights (members with class probabilities) with the best val acc19;
    the first best in grid order, which starts from equal weights."""
    names = [n for n, cp in zip(run.names, table.class_probs, strict=True) if cp is not None]
    grid = [(1.0,) * len(names), *itertools.product(CLASS_GRID, repeat=len(names))]
    best, best_w = -1.0, grid[0]
    for w in grid:
        if sum(w) == 0:
            continue
        cfg = with_rule(config, config.vote, [s.weight for s in config.members],
                    class_weight=dict(zip(names, w, strict=True)))  # fmt: skip
        acc = figures(run, revote(run, cfg, taxonomy)[1], interval=False)["acc19"]
        if acc > best + 1e-12:
            best, best_w = acc, w
    return dict(zip(names, best_w, strict=True))
