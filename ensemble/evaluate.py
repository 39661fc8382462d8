"""Score `emergency-ensemble infer` predictions against a manifest: per member and the ensemble.

Reads `DIR/predictions.jsonl` (one object per audio file) and `DIR/run.json` (the inferred folder),
matches each prediction to a manifest clip, and writes to `out/`:

    metrics.json        per member and the ensemble (NaN written as null)
    report.md           one table: rows = members then the ensemble
    roc.png             emergency-score ROC curves of all of them
    confusion_<m>.png   19-class confusion of the ensemble and of each member with a class output
    timelines.png       true segments above predicted events, for a few files

    emergency-ensemble evaluate PREDICTIONS MANIFEST --out DIR [--labels YAML] [--timelines 8]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from ensemble.core.audio import seconds_to_timesteps
from ensemble.core.labels import IGNORE_ID, Taxonomy, load_taxonomy
from ensemble.core.manifest import background_id, clips, read_manifest
from ensemble.core.metrics import (
    binary_metrics,
    bootstrap_ci,
    cer_metrics,
    class_confusion,
    class_metrics,
    write_json,
)
from ensemble.core.plots import Timeline, plot_confusion, plot_roc, plot_timelines
from ensemble.matching import Matched, match, member_names, read_predictions, sources
from ensemble.report import ENSEMBLE, N_LISTED, report_text

log = logging.getLogger(__name__)

NAN = math.nan


def _class_id(name, taxonomy: Taxonomy, sentinel: int) -> int:
    """Taxonomy id of a predicted class; `sentinel` (never a true label) for null or unknown."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return sentinel
    try:
        return taxonomy.id(name)
    except KeyError:
        log.warning("unknown predicted class %r counted as wrong", name)
        return sentinel


def rasterize(
    segments: list[tuple[float, float, str]],
    duration_s: float,
    taxonomy: Taxonomy,
    fill: int = 0,
) -> np.ndarray:
    """Class ids `(T,)` at 0.02 s over [0, duration_s): a segment's id over [start, end), `fill`
    elsewhere (0 = none; a truth's background class, or `IGNORE_ID` where it is unknown).

    NaN bounds mean the whole clip; later segments overwrite earlier ones where they overlap.
    """
    T = seconds_to_timesteps(duration_s)
    out = np.full(T, fill, dtype=np.int64)
    for start, end, label in segments:
        i = _class_id(label, taxonomy, -1)  # an unknown class is never right
        if start is None or end is None or math.isnan(start) or math.isnan(end):
            a, b = 0, T
        else:
            a, b = max(seconds_to_timesteps(start), 0), min(seconds_to_timesteps(end), T)
        out[a:b] = i
    return out


def _is_emergency(clip: pd.Series, taxonomy: Taxonomy) -> bool:
    """A clip is an emergency if any of its segments is labelled with an emergency class."""
    return any(taxonomy.is_emergency(label) for _, _, label in clip["segments"])


def _binary(y: np.ndarray, vote: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of boolean votes `(N,)` against truth `(N,)`."""
    if len(y) == 0:
        return {k: NAN for k in ("binary_acc", "precision", "recall", "f1")}
    p, r, f, _ = precision_recall_fscore_support(
        y, vote, average="binary", pos_label=True, zero_division=0.0
    )
    return {
        "binary_acc": float(accuracy_score(y, vote)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
    }


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def _interval(metric, *arrays: np.ndarray) -> list[float]:
    """[low, high] of the bootstrap 95 % interval of `metric(*arrays)`."""
    return list(bootstrap_ci(metric, *arrays)[1:])


def _keys(name: str) -> tuple[str, str, str, str]:
    """(score, vote, class, opinion) field names of a member, or of the ensemble."""
    if name == ENSEMBLE:
        return "score", "emergency", "class", "decided"
    return f"p_{name}", f"vote_{name}", f"class_{name}", f"opinion_{name}"


def score_one(
    name: str, matched: list[Matched], taxonomy: Taxonomy, timesteps: bool, transcripts: bool
) -> tuple[dict[str, float], dict]:
    """Metrics of one member (or the ensemble) over matched ok rows, and the arrays for plots."""
    score_k, vote_k, class_k, opinion_k = _keys(name)
    segments = [m.clip["segments"] for m in matched]
    y = np.array([_is_emergency(m.clip, taxonomy) for m in matched], dtype=bool)
    out: dict[str, float] = {"n": len(matched)}

    # a file where the member abstained on every window is left out of its binary figures
    opinion = [m.row.get(opinion_k) is not False for m in matched]
    out["abstain"] = 1 - float(np.mean(opinion)) if matched else NAN
    voted = [i for i, m in enumerate(matched) if m.row.get(vote_k) is not None and opinion[i]]
    vote = np.array([bool(matched[i].row[vote_k]) for i in voted], dtype=bool)
    out |= _binary(y[voted], vote)
    scored = [i for i, m in enumerate(matched) if m.row.get(score_k) is not None and opinion[i]]
    s = np.array([float(matched[i].row[score_k]) for i in scored])
    out |= binary_metrics(y[scored], s) if scored else {"auc": NAN, "pauc": NAN}
    out["n_scored"] = len(scored)

    sentinel = taxonomy.n_outputs  # outside 1..K: a null class is a wrong answer, not a dropped row
    names = [m.row.get(class_k) for m in matched]
    y_cls = np.array([taxonomy.id(seg[0][2]) for seg in segments])
    p_cls = np.array([_class_id(c, taxonomy, sentinel) for c in names])
    has_classes = any(c is not None for c in names)
    out["n_no_class"] = int((p_cls == sentinel).sum())
    sure = np.array([m.clip.get("identifiable", "") == "true" for m in matched], dtype=bool)
    out["n_identifiable"] = int(sure.sum())
    out |= {"acc19": NAN, "macro_f1": NAN, "acc19_identifiable": NAN}
    if has_classes:
        cm = class_metrics(y_cls, p_cls, taxonomy)
        out |= {"acc19": cm["acc"], "macro_f1": cm["macro_f1"]}
        out["acc19_ci"] = _interval(_accuracy, y_cls, p_cls)
        if sure.any():
            out["acc19_identifiable"] = float(_accuracy(y_cls[sure], p_cls[sure]))
            out["acc19_identifiable_ci"] = _interval(_accuracy, y_cls[sure], p_cls[sure])
    if len(voted):
        out["binary_acc_ci"] = _interval(_accuracy, y[voted], vote)
    if scored and y[scored].any() and not y[scored].all():
        out["auc_ci"] = _interval(roc_auc_score, y[scored], s)

    out |= {"timestep_acc": NAN, "n_timesteps": 0, "event_timestep_acc": NAN}
    if timesteps:
        right = total = event_right = event_total = 0
        emergency = np.zeros(taxonomy.n_outputs + 1, dtype=bool)
        emergency[list(taxonomy.emergency_ids)] = True
        for m in matched:
            d = m.row.get("duration_s")
            if d is None:
                continue
            truth = rasterize(m.clip["segments"], d, taxonomy, background_id(m.clip, taxonomy))
            pred = rasterize([tuple(e) for e in m.row.get("events") or []], d, taxonomy)
            known = truth != IGNORE_ID  # an unknown background is not scored
            right += int((truth == pred)[known].sum())
            total += int(known.sum())
            event = known & emergency[np.where(known, truth, 0)]  # inside an emergency event
            event_right += int((truth == pred)[event].sum())
            event_total += int(event.sum())
        out |= {"timestep_acc": right / total if total else NAN, "n_timesteps": total}
        out["event_timestep_acc"] = event_right / event_total if event_total else NAN

    out |= {"cer": NAN, "cer_nospace": NAN, "n_cer": 0}
    if transcripts:
        out |= cer_metrics(
            [m.clip["transcript"] for m in matched], [m.row.get("transcript") for m in matched]
        )
        # a judge of words must stay silent where nothing is said
        silent = [  # an abstaining member's file vote is False: it counts as silent here
            i
            for i, m in enumerate(matched)
            if m.row.get(vote_k) is not None and not str(m.clip.get("transcript") or "").strip()
        ]
        out["n_speechless"] = len(silent)
        out["speechless_votes"] = int(sum(bool(matched[i].row[vote_k]) for i in silent))

    arrays = {"roc": (y[scored], s), "classes": (y_cls, p_cls) if has_classes else None}
    return out, arrays


# ---------------------------------------------------------------------------------------------
# report and plots


def sample_files(matched: list[Matched], y: np.ndarray, k: int, seed: int) -> list[int]:
    """Up to `k` indices, half emergencies and half normals where both exist (deterministic)."""
    rng = np.random.default_rng(seed)
    pos, neg = [rng.permutation(np.flatnonzero(y == v)).tolist() for v in (True, False)]
    n_pos = min(len(pos), max(k - len(neg), (k + 1) // 2))
    chosen = pos[:n_pos] + neg[: k - n_pos]
    return sorted(chosen, key=lambda i: (not y[i], Path(matched[i].row["path"]).name))


def draw_timelines(
    matched: list[Matched], y: np.ndarray, taxonomy: Taxonomy, path: Path, k: int, seed: int
) -> Path | None:
    """`plot_timelines` of up to `k` sampled files with a duration: truth above prediction."""
    matched_d = [m for m in matched if m.row.get("duration_s")]
    y = np.array([y[i] for i, m in enumerate(matched) if m.row.get("duration_s")], dtype=bool)
    chosen = sample_files(matched_d, y, k, seed)
    if not chosen:
        log.warning("no files with a duration to draw timelines of")
        return None
    rows = []
    for i in chosen:
        m = matched_d[i]
        pred = m.row.get("class")
        pred_label = taxonomy[pred].en if _class_id(pred, taxonomy, -1) > 0 else str(pred or "-")
        rows.append(
            Timeline(
                f"{Path(m.row['path']).name}  true: {taxonomy[m.clip['label']].en}",
                float(m.row["duration_s"]),
                list(m.clip["segments"]),
                f"pred: {pred_label}",
                [tuple(e) for e in m.row.get("events") or []],
            )
        )
    return plot_timelines(rows, taxonomy, path)


# ---------------------------------------------------------------------------------------------
# entry points


def evaluate(
    predictions: str | Path,
    manifest: str | Path,
    out: str | Path,
    labels: str | Path | Taxonomy | None = None,
    timelines: int = 8,
    seed: int = 0,
    split: str | None = None,
) -> dict:
    """Score an infer output dir (or its predictions.jsonl) against `manifest`; write to `out`.

    `split`: only the manifest's clips of that split are expected (e.g. "test"), so the others do
    not count as missing.

    Returns {"n_files", "n_errors", "n_unmatched", "n_missing", "unmatched", "missing",
    "members": {name: metrics}, "ensemble": metrics, "plots": [file names]}.
    """
    taxonomy = labels if isinstance(labels, Taxonomy) else load_taxonomy(labels)
    rows, folder, pred_path = read_predictions(predictions)
    df = read_manifest(manifest, taxonomy)
    if split is not None:
        if split not in set(df["split"]):
            raise ValueError(f"{manifest}: no clip of split {split!r}")
        df = df[df["split"] == split]
    table = clips(df)
    pairs, unmatched, missing = match(rows, table, folder)
    errors = [r for r in rows if r.get("status", "ok") != "ok"]
    matched = [Matched(r, table.iloc[i]) for r, i in pairs if r.get("status", "ok") == "ok"]
    if not matched:
        raise ValueError(
            f"no ok prediction in {pred_path} matches a clip of {manifest} "
            f"({len(rows)} predictions, {len(errors)} errors, {len(table)} clips)"
        )
    log.info(
        "%d files matched, %d errors, %d unmatched predictions, %d clips without a prediction",
        len(matched), len(errors), len(unmatched), len(missing),
    )  # fmt: skip

    members = member_names(rows)
    has_text = any(m.row.get("transcript") is not None for m in matched)
    given = sources(pred_path.parent / "run.json")
    text_owner = next((n for n in given.get("transcript", []) if n in members), ENSEMBLE)
    event_owner = next((n for n in given.get("events", []) if n in members), None)
    results, arrays = {}, {}
    for name in [*members, ENSEMBLE]:
        results[name], arrays[name] = score_one(
            name,
            matched,
            taxonomy,
            timesteps=name in (event_owner, ENSEMBLE),
            transcripts=has_text and name == text_owner,
        )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    curves = {}
    for name, a in arrays.items():
        y, s = a["roc"]
        if len(y) and y.any() and not y.all():
            curves[name] = (y, s)
    if curves:
        plots.append(plot_roc(curves, out / "roc.png", f"emergency ROC ({len(matched)} files)"))
    else:
        log.warning("no ROC plot: the truth holds only one kind (emergency or normal)")
    for name in [ENSEMBLE, *members]:
        if arrays[name]["classes"] is None:
            continue
        y_cls, p_cls = arrays[name]["classes"]
        n_null = results[name]["n_no_class"]
        title = f"{name}: {len(y_cls)} clips" + (f", {n_null} without a class" if n_null else "")
        cm = class_confusion(y_cls, p_cls, taxonomy)
        plots.append(plot_confusion(cm, taxonomy, out / f"confusion_{name}.png", title))
    if timelines > 0:
        y = np.array([_is_emergency(m.clip, taxonomy) for m in matched], dtype=bool)
        p = draw_timelines(matched, y, taxonomy, out / "timelines.png", timelines, seed)
        plots += [p] if p else []

    metrics = {
        "n_files": len(matched),
        "n_errors": len(errors),
        "n_unmatched": len(unmatched),
        "n_missing": len(missing),
        "unmatched": unmatched[:N_LISTED],
        "missing": missing[:N_LISTED],
        "members": {n: results[n] for n in members},
        ENSEMBLE: results[ENSEMBLE],
        "plots": [p.name for p in plots],
    }
    write_json(metrics, out / "metrics.json")
    (out / "report.md").write_text(report_text(metrics, pred_path, manifest), encoding="utf-8")
    return metrics
