"""`emergency-ensemble calibrate`: every setting of the ensemble chosen on the validation split.

    emergency-ensemble calibrate --config configs/ensemble.yaml --manifest runs/demo/manifest.csv \
        --work runs/demo/predictions_val --out runs/demo/ensemble.calibrated.yaml

1. The members run once over the validation split's audio (`infer` into `--work`; a finished run
   there is reused): their window rows hold every output the vote reads (`ensemble.rows`).
2. Only the manifest's rows of that split are read. A window is an emergency when an emergency
   event of its file overlaps it (the whole file when the event has no bounds).
3. Chosen in this order:
   - abstention: members that give Whisper's transcript also abstain where its no-speech
     probability is above a threshold, when that detects the clips without speech better
     (balanced accuracy) than the member's own rule alone;
   - each member's threshold, on the windows where it has an opinion: best balanced accuracy, or
     the lowest threshold whose false-positive rate stays at or under `target_fpr` (`criterion`);
   - every vote rule with its parameter: majority (and its tie rule), at least k, soft tau,
     weighted (weights 2 AUC - 1 of each member on val), and `stack`, a logistic regression over
     the members' probabilities and abstentions (C by 5-fold cross-validation);
   - the rule: the best 5-fold cross-validated file-level figure on val (each fold's parameter
     chosen on the other folds; the member thresholds are shared), ties to the simpler rule;
   - the members' class weights: a small grid, the best 19-class accuracy on val.
4. The config is written with a `calibration:` block: the choices, every rule with its parameters
   and the validation figures. Revoting the validation run with it gives the same figures
   (`revote`), as `infer` with it does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import clips, link_split, read_manifest
from ensemble.core.metrics import bootstrap_ci
from ensemble.pipeline import EnsembleConfig, infer, load_config, read_rows
from ensemble.rows import MemberTable, RowMaker, error_row, vote
from ensemble.vote import Stack, VoteRule

log = logging.getLogger(__name__)

Criterion = Literal["balanced", "fpr"]
RULE_ORDER = ("majority", "at_least", "soft", "weighted", "stack")  # simpler first
CLASS_GRID = (0.0, 0.5, 1.0, 2.0)
N_FOLDS = 5
EPS = 1e-6  # thresholds stay inside (0, 1)


# --- a finished run and its labels ------------------------------------------------------------


@dataclass
class Run:
    """The window rows of a finished `infer` run, grouped by file, with each file's labels."""

    names: list[str]
    windows: list[dict]  # every window row, files in order
    files: list[str]  # file keys, in order
    group: np.ndarray  # (B,) the file index of each window
    duration: list[float]
    errors: list[dict]  # the run's error rows, kept as they are
    y_window: np.ndarray  # (B,) bool: an emergency event overlaps the window
    y_file: np.ndarray  # (F,) bool
    y_key: np.ndarray  # (F,) class key of the file's first segment
    speech: np.ndarray  # (B,) bool: the file's transcript is not empty
    run_json: dict


def read_run(folder: Path, manifest: str | Path, split: str | None, taxonomy: Taxonomy) -> Run:
    """The run in `folder` (`infer` output) matched to the manifest's clips of `split` only."""
    from ensemble.evaluate import match  # evaluate imports the plots; only this needs them

    run_json = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    names = list(run_json["members"])
    df = read_manifest(manifest, taxonomy)
    if split is not None:
        df = df[df["split"] == split]  # no other split's label is read beyond this line
        if df.empty:
            raise ValueError(f"{manifest}: no clip of split {split!r}")
    table = clips(df)
    file_rows = read_rows(folder / "predictions.jsonl")
    ok = [r for r in file_rows if r.get("status") == "ok"]
    pairs, unmatched, _ = match(ok, table, Path(run_json["folder"]))
    if unmatched:
        raise ValueError(
            f"{folder}: {len(unmatched)} files are not {split} clips of {manifest}, e.g. "
            f"{unmatched[:3]}: calibrate on the {split} split's audio only"
        )
    clip_of = {row["path"]: table.iloc[i] for row, i in pairs}
    by_file: dict[str, list[dict]] = {}
    for w in read_rows(folder / "windows.jsonl"):
        by_file.setdefault(w["path"], []).append(w)
    windows, group, files, duration = [], [], [], []
    y_window, y_file, y_key, speech = [], [], [], []
    for row in ok:
        clip = clip_of[row["path"]]
        events = [(s, e) for s, e, lab in clip["segments"] if taxonomy.is_emergency(lab)]
        said = bool(str(clip.get("transcript") or "").strip())
        for w in by_file[row["path"]]:
            windows.append(w)
            group.append(len(files))
            y_window.append(any(_overlaps(s, e, w["start_s"], w["end_s"]) for s, e in events))
            speech.append(said)
        files.append(row["path"])
        duration.append(row["duration_s"])
        y_file.append(bool(events))
        y_key.append(str(clip["segments"][0][2]))
    return Run(
        names=names,
        windows=windows,
        files=files,
        group=np.array(group, dtype=np.int64),
        duration=duration,
        errors=[r for r in file_rows if r.get("status") != "ok"],
        y_window=np.array(y_window, dtype=bool),
        y_file=np.array(y_file, dtype=bool),
        y_key=np.array(y_key),
        speech=np.array(speech, dtype=bool),
        run_json=run_json,
    )


def _overlaps(start, end, a: float, b: float) -> bool:
    if start is None or end is None or math.isnan(start) or math.isnan(end):
        return True
    return start < b and end > a


# --- revoting ---------------------------------------------------------------------------------

META_KEYS = ("path", "window", "start_s", "end_s")
EXTRA_KEYS = ("transcript", "no_speech_prob", "events")


def revote(run: Run, config: EnsembleConfig, taxonomy: Taxonomy) -> tuple[list[dict], list[dict]]:
    """(window rows, file rows) of `config` over the run's member outputs: what `infer` with
    `config` writes for those files, without running a model."""
    if list(config.names) != run.names:
        raise ValueError(f"the config's members {config.names} are not the run's {run.names}")
    maker = RowMaker(config, taxonomy)
    table = MemberTable.from_rows(run.windows, run.names, taxonomy.n_classes)
    windows = maker.windows(
        [{k: w[k] for k in META_KEYS} for w in run.windows],
        table,
        [
            {k: w.get(k) for k in EXTRA_KEYS} | {"events": w.get("events") or []}
            for w in run.windows
        ],
    )
    by_file: list[list[dict]] = [[] for _ in run.files]
    for w, g in zip(windows, run.group, strict=True):
        by_file[g].append(w)
    files = [maker.file(ws, d) for ws, d in zip(by_file, run.duration, strict=True)]
    return windows, files


def write_revote(run: Run, config: EnsembleConfig, taxonomy: Taxonomy, out: Path) -> Path:
    """`revote` written as an `infer` output folder (the run's error rows kept)."""
    windows, files = revote(run, config, taxonomy)
    out.mkdir(parents=True, exist_ok=True)
    errors = [error_row(r["path"], r["error"], run.names) for r in run.errors]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*files, *errors])
    (out / "predictions.jsonl").write_text(lines, encoding="utf-8")
    (out / "windows.jsonl").write_text(
        "".join(json.dumps(w, ensure_ascii=False) + "\n" for w in windows), encoding="utf-8"
    )
    run_json = {**run.run_json, "config": dataclasses.asdict(config), "revoted": True}
    (out / "run.json").write_text(json.dumps(run_json, indent=2, ensure_ascii=False) + "\n")
    return out


def figures(run: Run, files: list[dict]) -> dict:
    """File-level figures of file rows against the run's labels (in the order of `run.files`)."""
    y = run.y_file
    e = np.array([bool(r["emergency"]) for r in files])
    s = np.array([-1.0 if r["score"] is None else r["score"] for r in files])
    cls = np.array([r["class"] or "" for r in files])
    out = {
        "n_files": len(files),
        "n_emergency": int(y.sum()),
        "binary_acc": float((e == y).mean()),
        "balanced_acc": _balanced(y, e),
        "fpr": float(e[~y].mean()) if (~y).any() else math.nan,
        "acc19": float((cls == run.y_key).mean()),
        "auc": float(roc_auc_score(y, s)) if y.any() and not y.all() else math.nan,
        "n_undecided": int(sum(not r["decided"] for r in files)),
    }
    _, lo, hi = bootstrap_ci(lambda a, b: float((a == b).mean()), y, e)
    out["binary_acc_ci"] = [round(lo, 6), round(hi, 6)]
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def _balanced(y: np.ndarray, e: np.ndarray) -> float:
    if y.all() or not y.any():
        return float((e == y).mean())
    return float((e[y].mean() + (~e[~y]).mean()) / 2)


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
            return _balanced(y, e)
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


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if y.any() and not y.all() else math.nan


@dataclass
class Candidate:
    """One vote rule with its parameters and member weights."""

    name: str
    rule: VoteRule
    weights: tuple[float, ...]


class Search:
    """The choices of `calibrate` over one run's windows (array arithmetic, no rows)."""

    def __init__(self, run: Run, taxonomy: Taxonomy, goal: Goal):
        self.run, self.taxonomy, self.goal = run, taxonomy, goal
        self.table = MemberTable.from_rows(run.windows, run.names, taxonomy.n_classes)
        self.n_files = len(run.files)

    # members
    def abstention(self, speech_members: list[str]) -> dict[str, float | None]:
        """Per member that reads speech: the no-speech threshold (None: its own rule only)."""
        chosen = {}
        for name in speech_members:
            m = self.run.names.index(name)
            own = self.table.opinion[m]
            best, best_t = _balanced(self.run.speech, own), None
            for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
                opinion = own & ~(np.nan_to_num(self.table.no_speech, nan=0.0) > t)
                score = _balanced(self.run.speech, opinion)
                if score > best + 1e-12:
                    best, best_t = score, float(t)
            chosen[name] = best_t
        return chosen

    def thresholds(self, config: EnsembleConfig, files: np.ndarray | None = None) -> dict:
        """Per member: the threshold on p over its opinion windows (of `files`, default all)."""
        opinion = vote(self.table, config).opinion
        keep = (
            np.ones(len(self.run.windows), bool)
            if files is None
            else np.isin(self.run.group, files)
        )
        out = {}
        for m, name in enumerate(self.run.names):
            sel = keep & opinion[m]
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
            scored = [(self.goal.score(y_f, self._decide(c, config, files)), -i, c) for i, c in
                      enumerate(Candidate(family, r, ones) for r in options)]  # fmt: skip
            return max(scored, key=lambda x: x[:2])[2]
        keep = np.isin(self.run.group, files)
        weights = ones
        if family == "weighted":
            weights = self._auc_weights(config, keep)
        if family == "stack":
            stack = self._stack(config, keep)
            window_score = stack.score(self.table.p, vote(self.table, config).opinion)
        else:
            probe = _with(config, VoteRule("soft" if family == "soft" else "weighted"), weights)
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
            return Candidate(family, VoteRule("soft", tau=cut), weights)
        if family == "weighted":
            return Candidate(family, VoteRule("weighted", threshold=cut), weights)
        return Candidate(family, VoteRule("stack", tau=cut, stack=stack), weights)

    def _auc_weights(self, config: EnsembleConfig, keep: np.ndarray) -> tuple[float, ...]:
        """2 AUC - 1 of each member on its opinion windows (0 at chance or worse)."""
        opinion = vote(self.table, config).opinion
        w = []
        for m in range(len(self.run.names)):
            sel = keep & opinion[m]
            auc = _auc(self.run.y_window[sel], self.table.p[m, sel])
            w.append(round(max(0.0, 2 * auc - 1), 6) if math.isfinite(auc) else 0.0)
        return tuple(w) if sum(w) > 0 else (1.0,) * len(w)

    def _stack(self, config: EnsembleConfig, keep: np.ndarray) -> Stack:
        """A logistic regression over [p (0 when abstaining), abstained] of every member."""
        opinion = vote(self.table, config).opinion
        x = np.concatenate([np.where(opinion, self.table.p, 0.0), (~opinion).astype(float)]).T
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
        d = vote(self.table, _with(config, c.rule, c.weights)).decision
        return _file_any(d.emergency, self.run.group, self.n_files)[files]

    def cross_validated(self, family: str, config: EnsembleConfig) -> dict:
        """Out-of-fold file decisions of `family` (parameters chosen on the other folds)."""
        y = self.run.y_file
        folds = min(N_FOLDS, int(y.sum()), int((~y).sum()))
        if folds < 2:
            return {"cv_score": math.nan, "cv_binary_acc": math.nan}
        e = np.zeros(len(y), dtype=bool)
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(y, y):
            c = self.fit(family, config, train)
            e[test] = self._decide(c, config, test)
        return {
            "cv_score": round(self.goal.score(y, e), 6),
            "cv_binary_acc": round(float((e == y).mean()), 6),
        }


def _with(config: EnsembleConfig, rule: VoteRule, weights, **member_fields) -> EnsembleConfig:
    """`config` with another vote rule and member weights (and per-member field dicts)."""
    members = []
    for i, spec in enumerate(config.members):
        extra = {k: v[spec.name] for k, v in member_fields.items() if spec.name in v}
        members.append(dataclasses.replace(spec, weight=float(weights[i]), **extra))
    return dataclasses.replace(config, members=tuple(members), vote=rule)


# --- the command ------------------------------------------------------------------------------


def calibrate(
    config: str | Path,
    manifest: str | Path,
    work: str | Path,
    out: str | Path,
    split: str = "val",
    folder: str | Path | None = None,
    criterion: Criterion = "balanced",
    target_fpr: float = 0.05,
    labels: str | Path | None = None,
) -> dict:
    """Choose the ensemble's settings on `split` (see the module's text); write the config to
    `out`; return its `calibration` block. The members run over `folder` (default: the split's
    audio, linked from the manifest) into `work`, unless `work` holds a finished run."""
    base_path = Path(config)
    base = load_config(base_path)
    taxonomy = load_taxonomy(labels or base.labels)
    work = Path(work)
    if _reusable(work, base):
        log.info("%s: reusing the finished %s run of these checkpoints", work, split)
    else:
        audio = Path(folder) if folder else link_split(Path(manifest), split, work / "audio")
        done = (work / "run.json").is_file()  # finished, but by other checkpoints or settings
        infer(audio, work, base, resume=not done, overwrite=done)
    run = read_run(work, manifest, split, taxonomy)
    goal = Goal(criterion, target_fpr)
    search = Search(run, taxonomy, goal)

    speech_members = [n for n in run.run_json.get("sources", {}).get("transcript", [])]
    abstain = search.abstention(speech_members)
    config1 = _with(base, base.vote, [s.weight for s in base.members], abstain_no_speech=abstain)
    thresholds = search.thresholds(config1)
    config2 = _with(config1, base.vote, [s.weight for s in base.members], threshold=thresholds)

    all_files = np.arange(len(run.files))
    rules, candidates = {}, {}
    for family in RULE_ORDER:
        candidates[family] = search.fit(family, config2, all_files)
        rules[family] = {
            "vote": _rule_dict(candidates[family].rule),
            "weights": list(candidates[family].weights),
            **search.cross_validated(family, config2),
        }
    chosen = max(RULE_ORDER, key=lambda f: (_finite(rules[f]["cv_score"]), -RULE_ORDER.index(f)))
    c = candidates[chosen]
    class_weights = _class_weights(run, _with(config2, c.rule, c.weights), taxonomy, search.table)
    final = _with(config2, c.rule, c.weights, class_weight=class_weights)
    for family, r in rules.items():  # every rule with the chosen class weights, for the table
        cfg = _with(final, candidates[family].rule, candidates[family].weights)
        r["val"] = figures(run, revote(run, cfg, taxonomy)[1])
    val = figures(run, revote(run, final, taxonomy)[1])
    block = {
        "split": split,
        "run": str(work),
        "criterion": criterion,
        "target_fpr": target_fpr if criterion == "fpr" else None,
        "chosen_rule": chosen,
        "members": _member_figures(run, search.table, final),
        "rules": rules,
        "val": val,
    }
    _write_config(base_path, final, block, Path(out))
    return block


def _reusable(work: Path, config: EnsembleConfig) -> bool:
    """A finished run in `work` of the same members, settings and checkpoint files (none newer)."""
    path = work / "run.json"
    if not path.is_file():
        return False
    run = json.loads(path.read_text(encoding="utf-8"))
    same = json.loads(json.dumps(dataclasses.asdict(config), default=str)) == run.get("config")
    newest = max(Path(m.checkpoint).stat().st_mtime for m in config.members)
    return same and path.stat().st_mtime > newest


def _finite(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _rule_dict(rule: VoteRule) -> dict:
    d = dataclasses.asdict(rule)
    if rule.stack is None:
        d.pop("stack")
    else:
        d["stack"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["stack"].items()}
    return d


def _class_weights(
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
        cfg = _with(config, config.vote, [s.weight for s in config.members],
                    class_weight=dict(zip(names, w, strict=True)))  # fmt: skip
        acc = figures(run, revote(run, cfg, taxonomy)[1])["acc19"]
        if acc > best + 1e-12:
            best, best_w = acc, w
    return dict(zip(names, best_w, strict=True))


def _member_figures(run: Run, table: MemberTable, config: EnsembleConfig) -> dict:
    """Each member under the final config: its threshold, abstention rate and window figures on
    the windows where it has an opinion."""
    v = vote(table, config)
    out = {}
    for m, spec in enumerate(config.members):
        sel = v.opinion[m]
        y = run.y_window[sel]
        out[spec.name] = {
            "threshold": spec.threshold,
            "abstain_no_speech": spec.abstain_no_speech,
            "abstain_rate": round(float(1 - sel.mean()), 6),
            "window_binary_acc": round(float((v.votes[m, sel] == y).mean()), 6)
            if sel.any()
            else None,
            "window_auc": round(_auc(y, table.p[m, sel]), 6) if sel.any() else None,
        }
    return out


def _write_config(base: Path, config: EnsembleConfig, block: dict, out: Path) -> None:
    """The base YAML with the chosen member settings and vote, and the calibration block."""
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    specs = {s.name: s for s in config.members}
    for member in raw["members"]:
        spec = specs[member["name"]]
        for key in ("threshold", "weight", "abstain_no_speech", "class_weight"):
            member[key] = getattr(spec, key)
    raw["vote"] = _rule_dict(config.vote)
    raw["calibration"] = json.loads(json.dumps(block, default=float).replace("NaN", "null"))
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {base.name} calibrated on the {block['split']} split by `emergency-ensemble calibrate`"
        f" ({block['criterion']}); the choices and their validation figures are under"
        " `calibration`.\n"
    )
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    log.info("wrote %s", out)


def rule_table(block: dict, test: dict[str, dict] | None = None) -> str:
    """Markdown: every vote rule's parameters and val figures (and `test` figures per rule)."""
    cols = ["binary_acc", "balanced_acc", "auc", "acc19"]
    head = "| rule | parameters | val CV acc | " + " | ".join(f"val {c}" for c in cols)
    if test:
        head += " | " + " | ".join(f"test {c}" for c in cols)
    lines = [head + " |", "|---|---|" + "---:|" * (1 + len(cols) * (2 if test else 1))]
    for name, r in block["rules"].items():
        v = r["vote"]
        params = {
            "majority": f"tie: {v['tie_break']}",
            "at_least": f"k={v['k']}",
            "soft": f"tau={v['tau']:.3f}",
            "weighted": f"threshold={v['threshold']:.3f}, w={r['weights']}",
            "stack": f"tau={v['tau']:.3f}",
        }[name]
        mark = " (chosen)" if name == block["chosen_rule"] else ""
        cells = [f"{name}{mark}", params, _fmt(r["cv_binary_acc"])]
        cells += [_fmt(r["val"][c]) for c in cols]
        if test:
            cells += [_fmt(test[name][c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def score_rules(
    config: str | Path, run_dir: Path, manifest: str | Path, split: str, labels=None
) -> dict[str, dict]:
    """Every rule of a calibrated config's `calibration` block revoted over a finished run of
    another split (e.g. test, to report once after everything was chosen)."""
    cfg = load_config(config)
    if not cfg.calibration:
        raise ValueError(f"{config}: no calibration block (write it with `calibrate`)")
    taxonomy = load_taxonomy(labels or cfg.labels)
    run = read_run(Path(run_dir), manifest, split, taxonomy)
    out = {}
    for name, r in cfg.calibration["rules"].items():
        rule = _with(cfg, VoteRule(**r["vote"]), r["weights"])
        out[name] = figures(run, revote(run, rule, taxonomy)[1])
    return out
