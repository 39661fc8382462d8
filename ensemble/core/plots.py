"""The project's figures, one module for all: ROC curves, confusion matrices, timelines of truth
against prediction, and relevance maps over a log-mel. PNG files via matplotlib's file-only Agg
backend; class names in English (matplotlib's default font has no Hangul).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ensemble.core.audio import FRAMES_PER_SECOND
from ensemble.core.labels import Taxonomy


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG (creating its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_confusion(cm: np.ndarray, taxonomy: Taxonomy, path: str | Path, title: str = "") -> Path:
    """A row-normalised confusion matrix `(K, K)` as a PNG, counts written in the cells."""
    plt = pyplot()
    names = [c.en for c in taxonomy.classes[1:]]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(11, 9.5))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i, j in zip(*np.nonzero(cm), strict=True):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    n_emergency = len(taxonomy.emergency_ids)
    if taxonomy.emergency_ids == tuple(range(1, n_emergency + 1)):  # emergencies first: a border
        ax.axhline(n_emergency - 0.5, color="red", lw=0.8)
        ax.axvline(n_emergency - 0.5, color="red", lw=0.8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion ({int(cm.sum())} clips, rows normalised)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves, one per name -> (is_emergency, score), as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


class Timeline(NamedTuple):
    """One file of `plot_timelines`: its strips' labels, length and segments (start, end, class)."""

    true_label: str
    duration_s: float
    true_segments: list[tuple]
    pred_label: str
    pred_segments: list[tuple]


def _color(label, taxonomy: Taxonomy) -> str:
    if label is None:
        return "black"
    try:
        i = taxonomy.id(label)
    except KeyError:
        return "grey"
    return "black" if i == 0 else "red" if taxonomy.classes[i].emergency else "blue"


def plot_timelines(rows: list[Timeline], taxonomy: Taxonomy, path: str | Path) -> Path:
    """Truth strip above prediction strip per file; red emergency, blue normal, black none. A
    segment with NaN bounds covers its whole file."""
    plt = pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(10, 0.9 * len(rows) + 1.2))
    ticks, names, x_max = [], [], 0.0
    for row_i, row in enumerate(rows):
        d = row.duration_s
        x_max = max(x_max, d)
        base = 3 * (len(rows) - 1 - row_i)
        strips = (
            (base + 1.5, row.true_segments, row.true_label),
            (base + 0.5, row.pred_segments, row.pred_label),
        )
        for y0, segments, label in strips:
            ax.broken_barh([(0, d)], (y0, 0.9), color="black")
            for start, end, lab in segments:
                whole = start is None or end is None or math.isnan(start) or math.isnan(end)
                a, b = (0.0, d) if whole else (max(start, 0.0), min(end, d))
                ax.broken_barh([(a, b - a)], (y0, 0.9), color=_color(lab, taxonomy))
            ticks.append(y0 + 0.45)
            names.append(label)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlim(0, x_max or 1.0)
    ax.set_xlabel("time (s)")
    ax.set_title("truth (upper strip) vs prediction (lower strip)")
    handles = [Patch(color=c, label=t) for c, t in (("red", "emergency"), ("blue", "normal"))]
    ax.legend(
        handles=[*handles, Patch(color="black", label="none")],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def plot_relevance(rel: Any, taxonomy: Taxonomy, path: str | Path, title: str = "") -> Path:
    """Two panels over time: a relevance map's log-mel `rel.mel (F, T)`, and `rel.relevance (F, T)`
    (red for, blue against the class `rel.target`, whose probability is `rel.probs`)."""
    plt = pyplot()
    F, T = rel.mel.shape
    extent = (0, T / FRAMES_PER_SECOND, 0, F)
    limit = float(np.quantile(np.abs(rel.relevance), 0.995)) or 1.0
    fig, axes = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True)
    axes[0].imshow(rel.mel, origin="lower", aspect="auto", extent=extent, cmap="magma")
    axes[0].set_ylabel("mel bin")
    axes[0].set_title(title or "log-mel")
    im = axes[1].imshow(
        rel.relevance, origin="lower", aspect="auto", extent=extent, cmap="bwr",
        vmin=-limit, vmax=limit,
    )  # fmt: skip
    c = taxonomy[rel.target]
    axes[1].set_title(f"relevance for '{c.en}' (p = {rel.probs[rel.target - 1]:.2f})")
    axes[1].set_ylabel("mel bin")
    axes[1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
    return save_figure(fig, path, dpi=100)
