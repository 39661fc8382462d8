"""Densities of normal feature vectors, window scores and a fast ROC AUC, for
benchmarks/anomaly_pretrained.py.

A density is fitted on the normal train vectors `(N, D)` and returns a scorer: vectors `(M, D)` ->
scores `(M,)`, higher = less normal.
- `gaussian`: one Gaussian, mean and Ledoit-Wolf covariance; the score is the Mahalanobis distance.
- `gaussian per class`: one such Gaussian per normal class; the smallest distance.
- `knn`: the mean Euclidean distance to the 3 nearest vectors of a memory bank, all vectors
  L2-normalised (so it ranks like cosine distance); a bank larger than `bank` vectors is reduced
  to `bank` by greedy k-center selection on a 128-dimensional random projection (PatchCore's
  coreset; `coreset` and `knn_distance` come from anomaly/density.py, which the moment member
  uses too).
`aggregate` turns a window's moment scores into its score, `threshold_check` applies a threshold
set at 5 % FPR on the normal val windows to the test sets.
`roc_auc` is scikit-learn's `roc_auc_score` (max_fpr too) without its input checks, fast enough for
bootstrap intervals over many variants; its first call for each (number of rows, max_fpr), the
point estimate of a bootstrap, is compared with scikit-learn's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from anomaly.density import K_NEIGHBOURS, coreset, knn_distance, l2_normalise

Scorer = Callable[[np.ndarray], np.ndarray]
DENSITIES = ("gaussian", "gaussian per class", "knn")
_CHECKED: set[tuple[int, float | None]] = set()


def gaussian(x: np.ndarray) -> Scorer:
    """Mahalanobis distance to the Ledoit-Wolf Gaussian of `x (N, D)`."""
    lw = LedoitWolf().fit(x.astype(np.float64))
    return lambda q: np.sqrt(np.maximum(lw.mahalanobis(q.astype(np.float64)), 0.0))


def gaussian_per_class(x: np.ndarray, labels: np.ndarray) -> Scorer:
    """The smallest Mahalanobis distance over one Gaussian per class (classes with >= 2 rows)."""
    scorers = [gaussian(x[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2]
    return lambda q: np.min([s(q) for s in scorers], axis=0)


def knn(x: np.ndarray, bank: int, seed: int = 0, k: int = K_NEIGHBOURS) -> Scorer:
    """Mean distance to the `k` nearest of a coreset of at most `bank` L2-normalised rows of x."""
    unit = l2_normalise(torch.from_numpy(x.astype(np.float32)))
    memory = unit[torch.from_numpy(coreset(unit.numpy(), bank, seed))]  # (B, D)

    def score(q: np.ndarray) -> np.ndarray:
        q_t = l2_normalise(torch.from_numpy(q.astype(np.float32)))
        return knn_distance(q_t, memory, k).numpy().astype(np.float64)

    return score


def fit_density(
    name: str, train: dict[str, np.ndarray], level: str, bank: int, seed: int
) -> Scorer:
    """Fit density `name` on a train set's `pooled (N, D)` or `moments (M, D)` vectors; moments
    take their window's label (`offsets (N + 1,)`)."""
    x = train[level]
    labels = train["labels"]
    if level == "moments":
        labels = np.repeat(labels, np.diff(train["offsets"]))
    if name == "gaussian":
        return gaussian(x)
    if name == "gaussian per class":
        return gaussian_per_class(x, labels)
    if name == "knn":
        return knn(x, bank, seed)
    raise ValueError(f"density must be one of {DENSITIES}, got {name!r}")


def roc_auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float:
    """scikit-learn's `roc_auc_score(y, s, max_fpr=max_fpr)` (McClish-standardised partial AUC
    for max_fpr < 1); ValueError when `y` holds one class only."""
    y, s = np.asarray(y, dtype=bool), np.asarray(s, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("only one class present in y")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last row of each distinct score
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    if max_fpr is None or max_fpr == 1:
        value = float(np.trapezoid(tpr, fpr))
    else:
        stop = int(np.searchsorted(fpr, max_fpr, "right"))
        x_interp, y_interp = [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]
        tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
        fpr = np.append(fpr[:stop], max_fpr)
        partial = float(np.trapezoid(tpr, fpr))
        min_area, max_area = 0.5 * max_fpr**2, max_fpr
        value = 0.5 * (1 + (partial - min_area) / (max_area - min_area))
    key = (len(y), max_fpr)
    if key not in _CHECKED:
        expected = roc_auc_score(y, s, max_fpr=max_fpr)
        if not np.isclose(value, expected, rtol=0, atol=1e-9):
            raise AssertionError(
                f"roc_auc {value} != scikit-learn's {expected} (max_fpr {max_fpr})"
            )
        _CHECKED.add(key)
    return value


def aggregate(s: np.ndarray, offsets: np.ndarray, how: str) -> np.ndarray:
    """Moment scores `(M,)` -> window scores `(N,)`: the highest, or the mean of the 3 highest."""
    if how == "max":
        return np.maximum.reduceat(s, offsets[:-1])
    return np.array([np.sort(s[a:b])[-3:].mean() for a, b in itertools.pairwise(offsets)])


def threshold_check(row: dict) -> dict:
    """The chosen variant's threshold at 5 % FPR on the normal val windows, applied to test."""
    normal_val = row["scores"]["val"][~row["val_y"]]
    threshold = float(np.quantile(normal_val, 0.95))
    s = row["scores"]
    return {
        "threshold": threshold,
        "n_val_normal": len(normal_val),
        "val_fpr": float((normal_val > threshold).mean()),
        "test_fpr": float((s["test_normal"] > threshold).mean()),
        "test_emergency_tpr": float((s["test_emergency"] > threshold).mean()),
        "inserted_tpr": float((s["inserted"] > threshold).mean()),
    }
