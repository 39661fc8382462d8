"""What a split looks like and what it leaks: per split clips, classes, speech, languages, hours,
speakers and the largest group; speakers and transcripts in two splits; the links broken to keep
groups under the cap; what the held-out split shares with train; and, side by side, what each
`group_by` choice would leak."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.manifest import HOLDOUT, SPLITS, write_manifest
from ensemble.core.splits import GROUP_KEYS, SplitResult, leaks, split_manifest
from ensemble.core.text import normalize_text, script_language

GROUP_BY_CHOICES = (GROUP_KEYS, ("speaker",), ("transcript",), ())


def split_table(result: SplitResult, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """One row per split (train, val, test, holdout if any): what is in it."""
    taxonomy = taxonomy or load_taxonomy()
    df = result.df.assign(
        _group=result.group,
        _seconds=result.durations if result.durations is not None else np.nan,
    )
    clips = df.drop_duplicates("path")
    emergency = clips["label"].map(taxonomy.is_emergency)
    speech = clips["transcript"].str.strip().ne("")
    language = clips["transcript"].map(script_language)
    rows = {}
    for split in [*SPLITS, HOLDOUT]:
        here = (clips["split"] == split).to_numpy()
        if not here.any():
            continue
        em, sp = emergency[here], speech[here]
        talk = language[here & speech.to_numpy()]
        groups = df.loc[df["split"] == split, "_group"]
        largest = groups.value_counts().iloc[0] if split != HOLDOUT else np.nan
        rows[split] = {
            "clips": str(int(here.sum())),
            "classes": str(clips.loc[here, "label"].nunique()),
            "emergency": str(int(em.sum())),
            "speech_emergency": float(sp[em].mean()) if em.any() else np.nan,
            "speech_normal": float(sp[~em].mean()) if (~em).any() else np.nan,
            "korean": float((talk == "ko").mean()) if len(talk) else np.nan,
            "english": float((talk == "en").mean()) if len(talk) else np.nan,
            "hours": float(clips.loc[here, "_seconds"].sum(min_count=1) / 3600),
            "speakers": str(
                clips.loc[here & clips["speaker"].ne("").to_numpy(), "speaker"].nunique()
            ),
            "largest_group": float(largest / (df["split"] == split).sum()),
        }
    return pd.DataFrame(rows).T


def largest_groups(result: SplitResult, k: int = 3) -> list[dict]:
    """The `k` largest groups dealt: rows, share of all rows dealt, split, and what joins them
    (the commonest transcript and speaker among their rows)."""
    df = result.df
    dealt = result.group >= 0
    sizes = pd.Series(result.group[dealt]).value_counts()
    out = []
    for g, n in sizes.iloc[:k].items():
        rows = df[result.group == g]
        joins = []
        for key in ("transcript", "speaker"):
            values = rows[key].str.strip()
            values = values[values != ""]
            if len(values):
                top, count = values.value_counts().index[0], int(values.value_counts().iloc[0])
                joins.append(f"{key} {top!r} in {count} rows")
        out.append(
            {
                "rows": int(n),
                "share": float(n / dealt.sum()),
                "split": str(rows["split"].iloc[0]),
                "joined_by": "; ".join(joins) or "one clip's rows",
            }
        )
    return out


def leak_summary(result: SplitResult) -> dict:
    """Speakers and transcripts in two of train/val/test, and held-out clips sharing either with
    train, with the share of clips they touch."""
    df = result.df
    found = leaks(df)
    text = df["transcript"].map(normalize_text)
    inside = df["split"].isin(SPLITS)
    out = {
        "speakers": found["speaker"],
        "transcripts": found["transcript"],
        "clips_touched": float(
            (inside & (df["speaker"].isin(found["speaker"]) | text.isin(found["transcript"])))
            .groupby(df["path"])
            .any()
            .mean()
        ),
        "broken": [(b.key, b.value, b.rows, b.share) for b in result.broken],
    }
    held = df["split"] == HOLDOUT
    if held.any():
        train = df["split"] == "train"
        spk = set(df.loc[train, "speaker"]) - {""}
        txt = set(text[train]) - {""}
        shared = held & (df["speaker"].isin(spk) | text.isin(txt))
        out["holdout_clips_sharing_with_train"] = int(df.loc[shared, "path"].nunique())
        out["holdout_clips"] = int(df.loc[held, "path"].nunique())
    return out


def compare_group_by(
    df: pd.DataFrame,
    choices: Sequence[tuple[str, ...]] = GROUP_BY_CHOICES,
    done: SplitResult | None = None,
    **options,
) -> pd.DataFrame:
    """What each `group_by` choice leaks and how alike its splits come out (same options); `done`
    is a result already split with one of the choices, not split again."""
    rows = {}
    for group_by in choices:
        if done is not None and tuple(done.group_by) == tuple(group_by):
            result = done
        else:
            result = split_manifest(df, group_by=group_by, **options)
        table = split_table(result)
        inner = table.loc[[s for s in SPLITS if s in table.index]]
        found = leak_summary(result)
        rows["+".join(group_by) or "none"] = {
            "speakers_in_two_splits": len(found["speakers"]),
            "transcripts_in_two_splits": len(found["transcripts"]),
            "clips_touched": found["clips_touched"],
            "speech_gap_emergency": float(np.ptp(inner["speech_emergency"].astype(float))),
            "speech_gap_normal": float(np.ptp(inner["speech_normal"].astype(float))),
            "largest_group": float(inner["largest_group"].max()),
        }
    return pd.DataFrame(rows).T


def format_report(
    result: SplitResult, taxonomy: Taxonomy | None = None, compare: pd.DataFrame | None = None
) -> str:
    """The plain-text split report `split` prints."""
    table = split_table(result, taxonomy)
    shown = table.copy()
    for c in ("speech_emergency", "speech_normal", "korean", "english", "largest_group"):
        shown[c] = shown[c].map(lambda v: "–" if pd.isna(v) else f"{v:.0%}")
    shown["hours"] = table["hours"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    inner = table.loc[[s for s in SPLITS if s in table.index]]
    found = leak_summary(result)
    lines = [
        f"splits grouped by {' and '.join(result.group_by) or 'clip only'}"
        + (f"; held out: {', '.join(result.holdout_sources)}" if result.holdout_sources else ""),
        "",
        shown.to_string(),
        "",
        "speech share spread across train/val/test: "
        f"emergency {np.ptp(inner['speech_emergency'].astype(float)):.1%}, "
        f"normal {np.ptp(inner['speech_normal'].astype(float)):.1%}",
        f"speakers in two splits: {len(found['speakers'])}; transcripts in two splits: "
        f"{len(found['transcripts'])} ({found['clips_touched']:.1%} of clips touched)",
    ]
    limit = ", ".join(f"{s} {n:.0f}" for s, n in zip(SPLITS, result.limit, strict=True))
    lines.append(f"a group may hold at most these many rows per split: {limit}")
    lines.append("largest groups:")
    for g in largest_groups(result):
        lines.append(
            f"  {g['rows']} rows ({g['share']:.0%} of those dealt) in {g['split']}: {g['joined_by']}"
        )
    for key, value, rows, share in found["broken"]:
        lines.append(
            f"  leaked on purpose: {key} {value!r} joins {rows} rows ({share:.0%}), too many for "
            "any split; it is in several"
        )
    if "holdout_clips" in found:
        lines.append(
            f"held-out clips sharing a speaker or transcript with train: "
            f"{found['holdout_clips_sharing_with_train']} of {found['holdout_clips']}"
        )
    if compare is not None:
        shown = compare.copy()
        for c in ("speakers_in_two_splits", "transcripts_in_two_splits"):
            shown[c] = shown[c].astype(int)
        for c in ("clips_touched", "speech_gap_emergency", "speech_gap_normal", "largest_group"):
            shown[c] = shown[c].map(lambda v: f"{v:.1%}")
        lines += ["", "what each --group-by choice would give:", shown.to_string()]
    return "\n".join(lines)


def split_with_report(
    df: pd.DataFrame, compare: bool = True, taxonomy: Taxonomy | None = None, **options
) -> tuple[SplitResult, str]:
    """`split_manifest(df, **options)` and its report (with the `group_by` comparison when
    `compare`); the audio headers are read once for both."""
    result = split_manifest(df, taxonomy=taxonomy, **options)
    table = None
    if compare:
        options = {k: v for k, v in options.items() if k not in ("group_by", "durations")}
        table = compare_group_by(
            df, done=result, durations=result.durations, taxonomy=taxonomy, **options
        )
    return result, format_report(result, taxonomy, table)


def write_split(
    df: pd.DataFrame,
    out: str | Path,
    compare: bool = True,
    taxonomy: Taxonomy | None = None,
    **options,
) -> tuple[SplitResult, Path, str]:
    """Split `df` (`split_manifest` options), write the manifest to `out` and the report beside it
    as `<stem>.split.txt`; returns the result, the manifest's path and the report."""
    result, report = split_with_report(df, compare, taxonomy, **options)
    path = write_manifest(result.df, out, taxonomy)
    path.with_name(path.stem + ".split.txt").write_text(report + "\n", encoding="utf-8")
    return result, path, report
