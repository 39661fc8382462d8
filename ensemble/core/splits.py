"""Leak-free splits: no speaker and no transcript text in two splits.

The AI Hub data repeats scripted phrases across clips and speakers. Rows are joined into groups
when they share a clip, a speaker or a normalised transcript (empty ones join nothing); whole
groups are then dealt to train/val/test, largest first, each to the split where it brings the
class counts and the split sizes closest to their targets.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from ensemble.core.manifest import SPLITS

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def normalize_text(text: str) -> str:
    """Transcript key for grouping: NFC, lower case, letters and digits only."""
    text = unicodedata.normalize("NFC", str(text)).lower()
    return re.sub(r"[\W_]+", "", text)


def _groups(df: pd.DataFrame) -> np.ndarray:
    """Group id per row: connected components over shared path, speaker or transcript."""
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keys = {
        "path": df["path"].tolist(),
        "speaker": df["speaker"].str.strip().tolist(),
        "text": [normalize_text(t) for t in df["transcript"]],
    }
    for values in keys.values():
        first: dict[str, int] = {}
        for i, v in enumerate(values):
            if not v:
                continue
            j = first.setdefault(v, i)
            parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(df))])


def assign_splits(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """A copy of the manifest with `split` set leak-free; fractions are of rows, per class."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}"
        )
    df = df.reset_index(drop=True).copy()
    group = _groups(df)
    labels = sorted(df["label"].unique())
    onehot = pd.get_dummies(df["label"]).reindex(columns=labels, fill_value=0).to_numpy(float)
    ids, inverse = np.unique(group, return_inverse=True)
    counts = np.zeros((len(ids), len(labels)))
    np.add.at(counts, inverse, onehot)
    total = counts.sum(0)  # (K,) rows per class
    target = np.outer(fractions, total)  # (S, K) rows wanted per split and class
    have = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ids)), -counts.sum(1)))  # largest groups first
    chosen = np.empty(len(ids), dtype=int)
    for g in order:
        s = int(np.argmin(_mismatch_increase(have, target, counts[g], total)))
        chosen[g] = s
        have[s] += counts[g]
    _refine(chosen, have, target, counts, total)
    df["split"] = [SPLITS[chosen[i]] for i in inverse]
    return df


def _mismatch_increase(
    have: np.ndarray, target: np.ndarray, add: np.ndarray, total: np.ndarray
) -> np.ndarray:
    """(S,) growth of the squared distance to the targets if `add` (K,) rows went to each split.

    Per class, errors are relative to the class size; the overall size of each split weighs as much
    as all classes together, so split sizes hold even where classes are too small to balance.
    """
    per_class = ((have + add - target) ** 2 - (have - target) ** 2) / total**2
    n, k = total.sum(), len(total)
    size, want = have.sum(1), target.sum(1)
    overall = ((size + add.sum() - want) ** 2 - (size - want) ** 2) / n**2
    return per_class.sum(1) + k * overall


def _refine(
    chosen: np.ndarray,
    have: np.ndarray,
    target: np.ndarray,
    counts: np.ndarray,
    total: np.ndarray,
    max_passes: int = 5,
) -> None:
    """Move single groups to another split while that lowers the mismatch (in place)."""
    for _ in range(max_passes):
        moved = False
        for g in np.argsort(counts.sum(1), kind="stable"):  # small groups first
            s = chosen[g]
            have[s] -= counts[g]
            gain = _mismatch_increase(have, target, counts[g], total)
            best = int(np.argmin(gain))
            if gain[best] < gain[s] - 1e-12:
                s, moved = best, True
            chosen[g] = s
            have[s] += counts[g]
        if not moved:
            return


def leaks(df: pd.DataFrame) -> dict[str, list[str]]:
    """Speakers and transcripts found in more than one split (empty when the split is leak-free)."""
    out = {}
    for name, values in (
        ("speaker", df["speaker"]),
        ("transcript", df["transcript"].map(normalize_text)),
    ):
        frame = pd.DataFrame({"v": values, "split": df["split"]})
        frame = frame[frame["v"] != ""]
        n = frame.groupby("v")["split"].nunique()
        out[name] = sorted(n[n > 1].index)
    return out
