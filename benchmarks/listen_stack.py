"""Fit the vote's stack on listening hops instead of files, and write it into a listen config.

The calibrated config's `stack` is a logistic regression over the members' logits fitted on
val *files*: whole clips of 10-30 s. Listening scores 10 s windows every 2 s, where a window may
hold only the background of an emergency clip, a join of two clips or a part of an event. This
script fits the same model (`ensemble.vote.Stack`: the logit of each member's p, 0 where it
abstains, and its abstention) on the recorded hops of `benchmarks/listen_latency.py` runs: a hop
is an emergency when its window holds at least `--min-overlap` seconds of an event, and normal
when it holds none of one (hops that hold less are left out). The regularisation is chosen by
cross-validation with folds of whole stretches of stream (neighbouring hops share most of their
audio). The config written beside `--config` votes with the hop stack, so that
`benchmarks/listen_choose.py --config` can replay other runs under it and `listen --config` uses it.

Fit on runs of audio that no choice is made on (a fresh draw, `benchmarks/fresh_draw.py`), and
choose `--confirm` and `--min-score` on others:

    python benchmarks/listen_stack.py --events-run runs/fresh2_listen/events-fresh-w10-c1 \\
        --normal-run runs/fresh2_listen/hour-normal-fresh-w10-c1 \\
        --config runs/demo/ensemble.calibrated.yaml --write-config runs/demo/ensemble.hops.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from listen_choose import load

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
STRETCH_S = 60.0  # cross-validation folds hold whole minutes of stream


def hop_labels(parts: list[dict], hops: list[dict], window_s: float, min_overlap: float):
    """Per hop: 1 when its window holds at least `min_overlap` s of an event, 0 when it holds
    none, -1 (left out) between."""
    events = [(p["onset"], p["end"]) for p in parts if p.get("emergency")]
    out = []
    for h in hops:
        lo, hi = h["end_s"] - window_s, h["end_s"]
        overlap = max((min(hi, b) - max(lo, a) for a, b in events), default=0.0)
        out.append(1 if overlap >= min_overlap else 0 if overlap <= 0 else -1)
    return np.array(out)


def features(hops: list[dict], names: list[str]) -> np.ndarray:
    """`(B, 2M)`: each member's logit p (0 where it has no opinion), then its abstention, as
    `ensemble.vote.Stack.score` reads them."""
    from ensemble.vote import stack_inputs

    p = np.array([[h[f"p_{n}"] or 0.0 for h in hops] for n in names], dtype=np.float64)
    o = np.array([[bool(h.get(f"opinion_{n}", True)) for h in hops] for n in names])
    return stack_inputs(p, o).T


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[LogisticRegression, dict]:
    folds = GroupKFold(n_splits=min(5, len(np.unique(groups))))
    scores = {
        c: cross_val_score(
            LogisticRegression(C=c, max_iter=2000),
            x,
            y,
            groups=groups,
            cv=folds,
            scoring="neg_log_loss",
        ).mean()
        for c in C_GRID
    }
    best = max(scores, key=scores.__getitem__)
    return LogisticRegression(C=best, max_iter=2000).fit(x, y), scores


def write_config(base: Path, lr: LogisticRegression, names: list[str], path: Path, note: str):
    """`base` voting with the hop stack (rule `stack` at tau 0.5), written beside it."""
    if path.resolve().parent != base.resolve().parent:
        raise ValueError(f"{path}: write the config beside {base} (relative paths)")
    raw = yaml.safe_load(base.read_text(encoding="utf-8"))
    coef = [round(float(c), 6) for c in lr.coef_[0]]
    m = len(names)
    raw["vote"] |= {
        "rule": "stack",
        "tau": 0.5,
        "stack": {
            "intercept": round(float(lr.intercept_[0]), 6),
            "coef_p": coef[:m],
            "coef_abstain": coef[m:],
        },
    }
    header = f"# {base.name} with its stack fitted on listening hops ({note})\n"
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def main() -> None:
    from ensemble.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events-run", type=Path, nargs="+", required=True)
    parser.add_argument("--normal-run", type=Path, nargs="*", default=[])
    parser.add_argument("--config", type=Path, required=True, help="the members, and the base")
    parser.add_argument("--write-config", type=Path, required=True)
    parser.add_argument("--min-overlap", type=float, default=1.0, help="s of event in a window")
    args = parser.parse_args()
    names = list(load_config(args.config).names)
    xs, ys, groups, file_scores = [], [], [], []
    for i, run in enumerate([*args.events_run, *args.normal_run]):
        result, parts, hops = load(run)
        y = hop_labels(parts, hops, float(result["options"]["window"]), args.min_overlap)
        keep = y >= 0
        xs.append(features(hops, names)[keep])
        ys.append(y[keep])
        groups.append(i * 10_000 + np.array([h["end_s"] // STRETCH_S for h in hops])[keep])
        file_scores.append(np.array([h["score"] or 0.0 for h in hops])[keep])
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    lr, scores = fit(x, y, g)
    hop_auc = roc_auc_score(y, lr.predict_proba(x)[:, 1])
    file_auc = roc_auc_score(y, np.concatenate(file_scores))
    note = f"{int(y.sum())} event hops, {int((1 - y).sum())} normal hops, C={lr.C}"
    write_config(args.config, lr, names, args.write_config, note)
    print(f"hops: {note}; cross-validated log loss by C: " + ", ".join(
        f"{c}: {-s:.4f}" for c, s in scores.items()))  # fmt: skip
    coef = dict(zip(names, lr.coef_[0][: len(names)].round(3), strict=True))
    print(f"coefficients on the logits: {coef}, intercept {lr.intercept_[0]:.3f}")
    print(f"AUC on these hops (in sample): hop stack {hop_auc:.4f}, the config's {file_auc:.4f}")
    print(f"written: {args.write_config}")


if __name__ == "__main__":
    main()
