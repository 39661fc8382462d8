"""Leak-free, balanced splits: no speaker and no transcript in two splits, and splits alike.

Rows are joined into groups when they share a clip, a speaker or a normalised transcript (the
links `group_by` names; empty values join nothing). Whole groups are dealt to train/val/test,
largest first, each to the split where it brings the splits closest to their targets, then single
groups move while that helps. The targets are the fractions of every class, and within each class
of clips with and without speech, of each language and of each duration bin, so that every split
looks like the others; the share of clips with speech among emergencies and among normal clips
counts most.

Where leak-freedom and balance conflict (one phrase shouted in thousands of clips joins them into
one huge group), no group may make up more than `max_group_share` of a split: a group is only
dealt where it fits, and one too large for any split is broken at its most common link (that
transcript or speaker stops joining rows); the result names every link so broken: those are known
leaks. Rows made of a held-out source
(`holdout_sources`, matched against the manifest's `origin`) go to the `holdout` split and are
never dealt: a measure of what carries over to other voices and recordings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ensemble.core.audio import AudioError, audio_duration
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import HOLDOUT, SPLITS
from ensemble.core.text import normalize_text, script_language

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
GROUP_KEYS = ("speaker", "transcript")
DEFAULT_MAX_GROUP_SHARE = 0.5  # of the split a group is dealt to
N_DURATION_BINS = 3
N_RESTARTS = 8
SIZE_WEIGHT = 1.0  # the split sizes weigh as much as this many times all classes together
MAX_SWAP_GROUPS = 300  # the largest groups try pairwise swaps (quadratic in this)
# weight of each balance facet: (columns, the parent whose size scales an error, weight)
FACETS = (
    (("label",), "label", 1.0),
    (("kind", "speech"), "kind", 50.0),
    (("kind", "language"), "kind", 4.0),
    (("label", "speech"), "label", 0.5),
    (("label", "language"), "label", 0.5),
    (("label", "duration"), "label", 0.25),
)


@dataclass(frozen=True)
class BrokenLink:
    """A speaker or transcript that stopped joining rows because its group outgrew the cap."""

    key: str  # "speaker" or "transcript"
    value: str
    rows: int
    share: float  # of all rows dealt


@dataclass
class SplitResult:
    df: pd.DataFrame  # the manifest with `split` set
    group: np.ndarray  # (R,) group id per row after breaking; -1 for held-out rows
    broken: list[BrokenLink] = field(default_factory=list)
    limit: np.ndarray = field(
        default_factory=lambda: np.zeros(len(SPLITS))
    )  # (S,) rows a group may hold
    group_by: tuple[str, ...] = GROUP_KEYS
    holdout_sources: tuple[str, ...] = ()
    durations: np.ndarray | None = None  # (R,) seconds, NaN unknown


def assign_splits(
    df: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    **options,
) -> pd.DataFrame:
    """A copy of the manifest with `split` set; see `split_manifest` for the options."""
    return split_manifest(df, fractions, seed, **options).df


def split_manifest(
    df: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    group_by: Sequence[str] = GROUP_KEYS,
    max_group_share: float = DEFAULT_MAX_GROUP_SHARE,
    holdout_sources: Sequence[str] = (),
    durations: Sequence[float] | None = None,
    taxonomy: Taxonomy | None = None,
) -> SplitResult:
    """Split a manifest; fractions are of rows, per class. `durations (R,)` in seconds, one per
    row (NaN unknown), are read from the audio headers when not given."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}"
        )
    bad = [k for k in group_by if k not in GROUP_KEYS]
    if bad:
        raise ValueError(f"group_by takes {GROUP_KEYS} (or nothing), got {bad}")
    if not max_group_share > 0:
        raise ValueError(f"max_group_share must be positive, got {max_group_share}")
    taxonomy = taxonomy or load_taxonomy()
    df = df.reset_index(drop=True).copy()
    durations = row_durations(df["path"]) if durations is None else np.asarray(durations, float)
    strata = row_strata(df, taxonomy, durations)
    held = _held_out(df, holdout_sources)
    dealt = np.flatnonzero(~held)
    if len(dealt) == 0:
        raise ValueError(f"every clip is made of a held-out source {list(holdout_sources)}")
    limit = max_group_share * np.asarray(fractions) * len(dealt)  # (S,) rows a group may hold
    group = np.full(len(df), -1)
    group[dealt], broken = _capped_groups(df.iloc[dealt], tuple(group_by), limit.max())
    chosen = _deal(group[dealt], strata.iloc[dealt], fractions, seed, limit)
    split = np.full(len(df), HOLDOUT, dtype=object)
    split[dealt] = [SPLITS[s] for s in chosen]
    df["split"] = split
    for b in broken:
        log.warning(
            "%s %r is in %d rows (%.0f%% of them): too many for one split; it no longer keeps "
            "its rows together, so it is a known leak",
            b.key, b.value, b.rows, 100 * b.share,
        )  # fmt: skip
    return SplitResult(df, group, broken, limit, tuple(group_by), tuple(holdout_sources), durations)


def row_durations(paths: pd.Series) -> np.ndarray:
    """Seconds per row from the audio headers, NaN where a file cannot be read."""
    seen: dict[str, float] = {}
    for p in dict.fromkeys(paths):
        try:
            seen[p] = audio_duration(p)
        except AudioError:
            seen[p] = np.nan
    return np.array([seen[p] for p in paths], dtype=float)


def row_strata(df: pd.DataFrame, taxonomy: Taxonomy, durations: np.ndarray) -> pd.DataFrame:
    """What splits are balanced on, per row: label, kind, speech, language, duration bin."""
    known = durations[np.isfinite(durations)]
    edges = np.quantile(known, np.linspace(0, 1, N_DURATION_BINS + 1)[1:-1]) if len(known) else []
    bins = np.where(np.isfinite(durations), np.searchsorted(edges, durations).astype(str), "?")
    emergency = df["label"].map(taxonomy.is_emergency)
    return pd.DataFrame(
        {
            "label": df["label"].to_numpy(),
            "kind": np.where(emergency, "emergency", "normal"),
            "speech": df["transcript"].str.strip().ne("").to_numpy(),
            "language": df["transcript"].map(script_language).to_numpy(),
            "duration": bins,
        }
    )


def _held_out(df: pd.DataFrame, sources: Sequence[str]) -> np.ndarray:
    """(R,) rows whose `origin` names one of `sources`."""
    if not sources:
        return np.zeros(len(df), dtype=bool)
    if "origin" not in df or not df["origin"].str.strip().any():
        raise ValueError(
            "holdout sources need the manifest's `origin` column (what each clip is made of); "
            "this manifest has none"
        )
    wanted = set(sources)
    found = df["origin"].map(lambda o: bool(wanted & set(str(o).split(";"))))
    seen = {t for o in df["origin"] for t in str(o).split(";")} - {""}
    if wanted - seen:
        log.warning(
            "no clip is made of %s (the manifest's sources: %s)",
            sorted(wanted - seen), ", ".join(sorted(seen)),
        )  # fmt: skip
    return found.to_numpy()


def _links(df: pd.DataFrame, group_by: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(key, value per row) of every link that joins rows: the clip always, then `group_by`."""
    out = [("path", df["path"].tolist())]
    if "speaker" in group_by:
        out.append(("speaker", df["speaker"].str.strip().tolist()))
    if "transcript" in group_by:
        out.append(("transcript", [normalize_text(t) for t in df["transcript"]]))
    return out


def _components(links: list[tuple[str, list[str]]], rows: np.ndarray, cut: set) -> np.ndarray:
    """Component id (a row index) of each of `rows`, joined by equal link values not in `cut`."""
    parent = {int(r): int(r) for r in rows}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key, values in links:
        first: dict[str, int] = {}
        for r in rows:
            v = values[r]
            if not v or (key, v) in cut:
                continue
            j = first.setdefault(v, int(r))
            parent[find(int(r))] = find(j)
    return np.array([find(int(r)) for r in rows])


def _capped_groups(
    df: pd.DataFrame, group_by: tuple[str, ...], cap: float
) -> tuple[np.ndarray, list[BrokenLink]]:
    """Group id per row, no group above `cap` rows unless one clip alone is; the links cut."""
    links = _links(df, group_by)
    rows = np.arange(len(df))
    cut: set[tuple[str, str]] = set()
    broken = []
    group = _components(links, rows, cut)
    while True:
        ids, sizes = np.unique(group, return_counts=True)
        link, members = None, rows[:0]
        for g in ids[sizes > cap]:
            members = rows[group == g]
            link = _commonest_link(links, members, cut)
            if link is not None:
                break
        if link is None:
            return group, broken
        cut.add(link[:2])
        broken.append(BrokenLink(link[0], link[1], link[2], link[2] / max(len(df), 1)))
        group[members] = _components(links, members, cut)


def _commonest_link(
    links: list[tuple[str, list[str]]], rows: np.ndarray, cut: set
) -> tuple[str, str, int] | None:
    """The speaker or transcript shared by most of `rows` (and not cut yet); None if none is."""
    best = None
    for key, values in links[1:]:  # a clip's own rows always stay together
        counts = pd.Series([values[r] for r in rows]).value_counts()
        for v, n in counts.items():
            if v and (key, v) not in cut and n > 1 and (best is None or n > best[2]):
                best = (key, str(v), int(n))
                break
    return best


def _deal(
    group: np.ndarray,
    strata: pd.DataFrame,
    fractions: tuple[float, ...],
    seed: int,
    limit: np.ndarray,
) -> np.ndarray:
    """Split index (R,) per row: whole groups dealt, then improved one move at a time; a group
    goes only to splits where it holds at most `limit (S,)` rows (the largest split if none)."""
    onehot, scale = _balance_columns(strata)
    ids, inverse = np.unique(group, return_inverse=True)
    sizes = np.bincount(inverse).astype(float)  # rows per group
    counts = np.zeros((len(ids), onehot.shape[1]))
    np.add.at(counts, inverse, onehot)
    counts = np.column_stack([counts, sizes])  # (G, V + 1): the last column is the size
    target = np.outer(fractions, counts.sum(0))  # (S, V + 1)
    n_classes = strata["label"].nunique()
    weight = np.concatenate([scale, [SIZE_WEIGHT * n_classes / len(strata) ** 2]])
    barred = sizes[:, None] > limit[None, :]  # (G, S)
    barred[barred.all(1)] = np.arange(len(limit)) != int(np.argmax(limit))
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(N_RESTARTS):  # greedy dealing is order-sensitive: keep the best of a few
        order = np.lexsort((rng.random(len(ids)), -sizes))  # largest groups first
        chosen = np.empty(len(ids), dtype=int)
        have = np.zeros_like(target)
        for g in order:
            cost = np.where(barred[g], np.inf, _increase(have, target, counts[g], weight))
            s = int(np.argmin(cost))
            chosen[g] = s
            have[s] += counts[g]
        _refine(chosen, have, target, counts, weight, sizes, barred)
        cost = float((((have - target) ** 2) * weight).sum())
        if cost < best_cost - 1e-12:
            best, best_cost = chosen.copy(), cost
    return best[inverse]


def _balance_columns(strata: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One-hot columns `(R, V)` of every facet value, and each column's weight `(V,)`: the facet's
    weight over the squared size of its parent (class or kind), so errors are relative to it."""
    blocks, scales = [], []
    for cols, parent, w in FACETS:
        key = strata[list(cols)].astype(str).agg("|".join, axis=1)
        dummies = pd.get_dummies(key).sort_index(axis=1)
        parent_size = strata[parent].map(strata[parent].value_counts())
        size = (dummies.to_numpy(float) * parent_size.to_numpy()[:, None]).max(0)
        blocks.append(dummies.to_numpy(float))
        scales.append(w / np.maximum(size, 1) ** 2)
    return np.hstack(blocks), np.concatenate(scales)


def _increase(
    have: np.ndarray, target: np.ndarray, add: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """(S,) growth of the weighted squared distance to the targets if `add` went to each split."""
    return (((have + add - target) ** 2 - (have - target) ** 2) * weight).sum(1)


def _refine(
    chosen: np.ndarray,
    have: np.ndarray,
    target: np.ndarray,
    counts: np.ndarray,
    weight: np.ndarray,
    sizes: np.ndarray,
    barred: np.ndarray,
    max_passes: int = 8,
) -> None:
    """Move single groups, or swap two groups of two splits, while that lowers the distance (in
    place). Swaps let the few large groups (scripted sessions) trade places, which no single move
    can do without overfilling a split."""
    multi = np.argsort(-sizes, kind="stable")[:MAX_SWAP_GROUPS]
    multi = multi[sizes[multi] > 1]
    for _ in range(max_passes):
        moved = False
        for g in np.argsort(sizes, kind="stable"):  # small groups first
            s = chosen[g]
            have[s] -= counts[g]
            gain = np.where(barred[g], np.inf, _increase(have, target, counts[g], weight))
            best = int(np.argmin(gain))
            if gain[best] < gain[s] - 1e-12:
                s, moved = best, True
            chosen[g] = s
            have[s] += counts[g]
        for i, g in enumerate(multi):
            for h in multi[i + 1 :]:
                moved |= _swap(g, h, chosen, have, target, counts, weight, barred)
        if not moved:
            return


def _swap(
    g: int,
    h: int,
    chosen: np.ndarray,
    have: np.ndarray,
    target: np.ndarray,
    counts: np.ndarray,
    weight: np.ndarray,
    barred: np.ndarray,
) -> bool:
    """Swap the splits of groups g and h if that lowers the distance; whether it did."""
    a, b = chosen[g], chosen[h]
    if a == b or barred[g, b] or barred[h, a]:
        return False
    delta = counts[h] - counts[g]
    rows = have[[a, b]]
    new = rows + np.stack([delta, -delta])
    change = (((new - target[[a, b]]) ** 2 - (rows - target[[a, b]]) ** 2) * weight).sum()
    if change >= -1e-12:
        return False
    have[[a, b]] = new
    chosen[g], chosen[h] = b, a
    return True


def leaks(df: pd.DataFrame) -> dict[str, list[str]]:
    """Speakers and transcripts in more than one of train/val/test (empty when leak-free)."""
    out = {}
    inside = df[df["split"].isin(SPLITS)]
    for name, values in (
        ("speaker", inside["speaker"].str.strip()),
        ("transcript", inside["transcript"].map(normalize_text)),
    ):
        frame = pd.DataFrame({"v": values, "split": inside["split"]})
        frame = frame[frame["v"] != ""]
        n = frame.groupby("v")["split"].nunique()
        out[name] = sorted(n[n > 1].index)
    return out
