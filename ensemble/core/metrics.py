"""Evaluation metrics (scikit-learn, jiwer), shared by every member and the ensemble; their plots
are in `ensemble.core.plots`.

Class labels are taxonomy ids 1..K; emergency/normal follows the taxonomy's flags.
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import jiwer
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from ensemble.core.labels import Taxonomy
from ensemble.core.plots import plot_confusion

log = logging.getLogger(__name__)


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, taxonomy: Taxonomy) -> dict[str, float]:
    """19-class and emergency/normal accuracy and F1 of predicted taxonomy ids `(N,)`."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"need equal, non-empty label arrays, got {len(y_true)} and {len(y_pred)}")
    classes = np.arange(1, taxonomy.n_outputs)
    emergency = np.asarray(taxonomy.emergency_ids)
    b_true, b_pred = np.isin(y_true, emergency), np.isin(y_pred, emergency)
    present = np.union1d(y_true, y_pred)
    return {
        "n": len(y_true),
        "acc": float(accuracy_score(y_true, y_pred)),
        # macro over the classes present in truth or prediction (absent ones would count as 0)
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes[np.isin(classes, present)], average="macro")
        ),
        "binary_acc": float(accuracy_score(b_true, b_pred)),
        "binary_f1": float(f1_score(b_true, b_pred, zero_division=0.0)),
    }


def binary_metrics(
    is_emergency: np.ndarray, score: np.ndarray, max_fpr: float = 0.1
) -> dict[str, float]:
    """ROC AUC and partial AUC (FPR <= max_fpr, McClish-standardised as scikit-learn gives it).

    NaN when the labels hold only one kind (the AUC is undefined then).
    """
    y, s = np.asarray(is_emergency, dtype=bool), np.asarray(score, dtype=np.float64)
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if y.all() or not y.any():
        log.warning("AUC undefined: all %d labels are %s", len(y), bool(y[0]) if len(y) else "-")
        return {"auc": math.nan, "pauc": math.nan}
    return {
        "auc": float(roc_auc_score(y, s)),
        "pauc": float(roc_auc_score(y, s, max_fpr=max_fpr)),
    }


def bootstrap_ci(
    metric,
    *arrays: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`metric(*arrays)` and its percentile bootstrap interval: (value, low, high).

    Rows `(N, ...)` of all arrays are resampled together with replacement; resamples where the
    metric is undefined (NaN, or an error such as one class only for an AUC) are skipped. Test sets
    here are small: an interval says how far a figure can be trusted.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"need equal, non-empty arrays, got lengths {[len(a) for a in arrays]}")
    value = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    draws = []
    with warnings.catch_warnings():  # a resample with one class only: scikit-learn warns, NaN
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            try:
                v = float(metric(*(a[idx] for a in arrays)))
            except ValueError:
                continue
            if math.isfinite(v):
                draws.append(v)
    if not draws:
        return value, math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return value, float(low), float(high)


def cer_metrics(references: Sequence[str | None], hypotheses: Sequence[str | None]) -> dict:
    """Corpus character error rate (jiwer: edits / reference characters) of NFC, stripped texts,
    with spaces (`cer`) and without any whitespace (`cer_nospace`: Korean spacing in ASR output is
    unreliable); `n_cer` pairs. Pairs with an empty reference are left out; None counts as ""."""

    def text(x: str | None) -> str:
        return unicodedata.normalize("NFC", str(x or "")).strip()

    pairs = [(text(r), text(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"cer": math.nan, "cer_nospace": math.nan, "n_cer": 0}
    refs, hyps = ([x[i] for x in pairs] for i in (0, 1))
    squeeze = [[re.sub(r"\s+", "", x) for x in xs] for xs in (refs, hyps)]
    return {
        "cer": float(jiwer.cer(refs, hyps)),
        "cer_nospace": float(jiwer.cer(*squeeze)),
        "n_cer": len(pairs),
    }


def write_test_report(
    trainer,
    batches: list[tuple],
    threshold: float,
    taxonomy: Taxonomy,
    title: str,
    extra: dict | None = None,
) -> dict:
    """A member's test-stage files next to its logs: `test_metrics.json`, `test_confusion.png`.

    `batches`: per test batch, true and predicted taxonomy ids `(B,)` and `p_emergency (B,)`
    (tensors or arrays); the list is emptied. `binary_acc` of the predicted class, `vote_acc` of
    `p_emergency > threshold`, AUC and pAUC of `p_emergency`; `extra` metrics are added.
    """
    y_true, y_pred, p_emergency = (
        np.concatenate([np.asarray(x) for x in xs]) for xs in zip(*batches, strict=True)
    )
    batches.clear()
    if trainer.world_size > 1:
        log.warning("test metrics files cover rank %d only", trainer.global_rank)
    out = Path(trainer.log_dir or trainer.default_root_dir)
    is_emergency = np.isin(y_true, taxonomy.emergency_ids)
    metrics = {
        **class_metrics(y_true, y_pred, taxonomy),
        "vote_acc": float(np.mean((p_emergency > threshold) == is_emergency)),
        **binary_metrics(is_emergency, p_emergency),
        **(extra or {}),
    }
    cm = class_confusion(y_true, y_pred, taxonomy)
    write_json({**metrics, "confusion": cm}, out / "test_metrics.json")
    plot_confusion(cm, taxonomy, out / "test_confusion.png", title)
    log.info("test: %s; written to %s", metrics, out)
    return metrics


def threshold_at_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The score above which a fraction `fpr` of normal scores lies (higher score = anomalous)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    return float(np.quantile(scores, 1.0 - fpr))


def class_confusion(y_true: np.ndarray, y_pred: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """Counts `(K, K)`: row = true class id - 1, column = predicted class id - 1."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(1, taxonomy.n_outputs))


def write_json(metrics: dict, path: str | Path) -> Path:
    """Metrics as indented JSON (NaN written as null)."""

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.ndarray):
            return clean(x.tolist())
        if isinstance(x, (float, np.floating)):
            return None if math.isnan(x) else float(x)
        return x.item() if isinstance(x, np.generic) else x

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(clean(metrics), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path
