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
   - the score files are ranked by (ROC AUC) and soft ties settled by: the members' mean
     probability, or a stack's (fitted on every val window) when the stack, fitted on the other
     folds' files, ranks val files better (5-fold out-of-fold AUC);
   - every vote rule with its parameter: majority (and its tie rule), at least k, soft tau,
     weighted (weights 2 AUC - 1 of each member on val), and `stack`, a logistic regression over
     the members' probabilities and abstentions (C by 5-fold cross-validation);
   - the rule: the best 5-fold cross-validated file-level figure on val (each fold's parameter
     chosen on the other folds; the member thresholds are shared; averaged over `cv_repeats`
     splits into folds), ties to the simpler rule;
   - the members' class weights: a small grid, the best 19-class accuracy on val.
4. The config is written with a `calibration:` block: the choices, every rule with its parameters
   and the validation figures. Revoting the validation run with it gives the same figures
   (`revote`), as `infer` with it does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import yaml

from ensemble.config import EnsembleConfig, load_config, relative_to
from ensemble.core.labels import DEFAULT_KEYWORDS, load_taxonomy
from ensemble.core.manifest import link_split
from ensemble.pipeline import infer
from ensemble.revote import Run, figures, read_run, revote
from ensemble.rows import MemberTable, vote
from ensemble.tuning import (
    N_REPEATS,
    RULE_ORDER,
    Criterion,
    Goal,
    Search,
    auc,
    class_weights,
    with_rule,
)
from ensemble.vote import VoteRule

log = logging.getLogger(__name__)

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
    cv_repeats: int | None = None,
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
    search = Search(run, taxonomy, goal, repeats=cv_repeats or N_REPEATS)

    speech_members = [n for n in run.run_json.get("sources", {}).get("transcript", [])]
    abstain = search.abstention(speech_members)
    config1 = with_rule(
        base, base.vote, [s.weight for s in base.members], abstain_no_speech=abstain
    )
    thresholds = search.thresholds(config1)
    config2 = with_rule(config1, base.vote, [s.weight for s in base.members], threshold=thresholds)
    score = search.score_source(config2)
    if score["score"] == "stack":  # every rule's windows are then scored by one stack
        stack = search.stack(config2, np.ones(len(run.group), dtype=bool))
        rule = VoteRule(score="stack", stack=stack)
        config2 = with_rule(config2, rule, [s.weight for s in base.members])

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
    weights = class_weights(run, with_rule(config2, c.rule, c.weights), taxonomy, search.table)
    final = with_rule(config2, c.rule, c.weights, class_weight=weights)
    for family, r in rules.items():  # every rule with the chosen class weights, for the table
        cfg = with_rule(final, candidates[family].rule, candidates[family].weights)
        r["val"] = figures(run, revote(run, cfg, taxonomy)[1])
    val = figures(run, revote(run, final, taxonomy)[1])
    block = {
        "split": split,
        "run": str(work),
        "criterion": criterion,
        "cv_repeats": search.repeats,
        "target_fpr": target_fpr if criterion == "fpr" else None,
        "chosen_rule": chosen,
        "score": score,
        "members": _member_figures(run, search.table, final),
        "rules": rules,
        "val": val,
    }
    _write_config(base_path, final, block, Path(out))
    return block


# what the vote does with the members' outputs: a run made under other values is still reusable
VOTE_FIELDS = ("vote", "calibration")
MEMBER_VOTE_FIELDS = ("threshold", "weight", "abstain_no_speech", "class_weight")


def _outputs_settings(config: dict) -> dict:
    """A config (as JSON) without what only the vote reads; paths resolved."""

    def resolved(path):
        return None if path is None else str(Path(path).resolve())

    out = {k: v for k, v in config.items() if k not in VOTE_FIELDS}
    out["labels"] = resolved(out.get("labels"))
    out["members"] = [
        {k: resolved(v) if k == "checkpoint" else v for k, v in m.items()}
        for m in config.get("members", [])
    ]
    for m in out["members"]:
        for k in MEMBER_VOTE_FIELDS:
            m.pop(k, None)
    return out


def _reusable(work: Path, config: EnsembleConfig) -> bool:
    """A finished run in `work` of the same members, member settings, checkpoint files and
    lexicons (none newer); the vote and its per-member settings may differ (they are revoted)."""
    path = work / "run.json"
    if not path.is_file():
        return False
    run = json.loads(path.read_text(encoding="utf-8"))
    mine = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    same = _outputs_settings(mine) == _outputs_settings(run.get("config") or {})
    lexicons = [DEFAULT_KEYWORDS, *(m.overrides.get("keywords") for m in config.members)]
    files = [Path(m.checkpoint) for m in config.members] + [Path(p) for p in lexicons if p]
    newest = max(f.stat().st_mtime for f in files if f.is_file())
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
            "window_auc": round(auc(y, table.p[m, sel]), 6) if sel.any() else None,
        }
    return out


def _write_config(base: Path, config: EnsembleConfig, block: dict, out: Path) -> None:
    """The base YAML with the chosen member settings and vote, and the calibration block."""
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    specs = {s.name: s for s in config.members}
    for member in raw["members"]:
        spec = specs[member["name"]]
        member["checkpoint"] = relative_to(spec.checkpoint, out.parent)
        for key in ("threshold", "weight", "abstain_no_speech", "class_weight"):
            member[key] = getattr(spec, key)
    if config.labels:
        raw["labels"] = relative_to(config.labels, out.parent)
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


def rule_table(block: dict, test: dict[str, dict] | None = None, split: str = "test") -> str:
    """Markdown: every vote rule's parameters, its cross-validated val figures (what chose the
    rule), its val figures, and the figures of another split per rule (`test`) when given."""
    cols = ["binary_acc", "balanced_acc", "auc", "acc19"]
    goal = "balanced acc" if block["criterion"] == "balanced" else "TPR at the FPR"
    head = f"| rule | parameters | val CV {goal} | val CV acc | "
    head += " | ".join(f"val {c}" for c in cols)
    if test:
        head += " | " + " | ".join(f"{split} {c}" for c in cols)
    lines = [head + " |", "|---|---|" + "---:|" * (2 + len(cols) * (2 if test else 1))]
    for name, r in block["rules"].items():
        v = r["vote"]
        params = {
            "majority": f"tie: {v['tie_break']}",
            "at_least": f"k={v['k']}",
            "soft": f"tau={v['tau']:.3f}",
            "weighted": f"threshold={v['threshold']:.3f}, w=[{_list(r['weights'])}]",
            "stack": f"tau={v['tau']:.3f}, coef_p=[{_list(v['stack']['coef_p'])}]"
            if v.get("stack")
            else "",
        }[name]
        if v.get("score") == "stack" and name != "stack":
            params += ", score: stack"
        mark = " (chosen)" if name == block["chosen_rule"] else ""
        cells = [f"{name}{mark}", params, _fmt(r["cv_score"]), _fmt(r["cv_binary_acc"])]
        cells += [_fmt(r["val"][c]) for c in cols]
        if test:
            cells += [_fmt(test[name][c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _list(values) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


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
        rule = with_rule(cfg, VoteRule(**r["vote"]), r["weights"])
        out[name] = figures(run, revote(run, rule, taxonomy)[1])
    return out
