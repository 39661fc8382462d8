"""The manifest: one row per annotated segment of a clip, as CSV or JSONL, validated with pandas.

Columns: path, label, transcript, event_start, event_end, speaker, split, source, and three that
only some datasets can fill (empty = unknown):

- `background`: the normal class of what is heard outside the annotated segments (`indoor`,
  `washer_dryer`, ...). Timestep labels give it to those frames; unknown, they are ignored by the
  frame loss (see `ensemble.core.data.timestep_labels`).
- `identifiable`: `true` when the clip carries evidence of its class alone (a line of that class,
  or an event sound no other class uses), `false` when it does not; the demo generator knows.
- `origin`: what the clip was made from, `;`-separated (a voice engine, sound packages), so whole
  sources can be kept out of training (`split --holdout-source`).

`label` may be a class key, an id or a Korean name and is normalised to the key on load;
`event_start`/`event_end` are seconds (empty = the whole clip). A clip with several annotations has
several rows with the same path. Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd

from ensemble.core.audio import audio_duration
from ensemble.core.labels import IGNORE_ID, Taxonomy, load_taxonomy

COLUMNS = (
    "path",
    "label",
    "transcript",
    "event_start",
    "event_end",
    "speaker",
    "split",
    "source",
    "background",
    "identifiable",
    "origin",
)
REQUIRED = ("path", "label")
SPLITS = ("train", "val", "test")
HOLDOUT = "holdout"  # clips of held-out sources: never trained or tuned on, scored beside test
_TEXT = ("path", "label", "transcript", "speaker", "split", "source", "origin")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the row and the fault."""


def _fmt(where: str, rows: pd.Index, fault: str) -> str:
    shown = ", ".join(str(r) for r in rows[:5])  # `validate` indexes rows by file line
    more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
    return f"{where}: line(s) {shown}{more}: {fault}"


def validate(
    df: pd.DataFrame, taxonomy: Taxonomy | None = None, where: str = "manifest", first_line: int = 2
) -> pd.DataFrame:
    """A checked copy: all columns present, labels as keys, segments numeric and ordered.

    `first_line` is the file line of the first row in error messages: 2 for CSV (after the
    header), 1 for JSONL.
    """
    taxonomy = taxonomy or load_taxonomy()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}; columns are {list(COLUMNS)}")
    df = df.copy()
    df.index = pd.RangeIndex(first_line, first_line + len(df))  # rows named by file line
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in _TEXT:
        df[c] = df[c].map(lambda v: "" if _missing(v) else str(v))
    empty = df.index[df["path"].str.strip() == ""]
    if len(empty):
        raise ManifestError(_fmt(where, empty, "empty path"))

    keys = []
    for i, label in zip(df.index, df["label"], strict=True):
        try:
            keys.append(taxonomy.key(label.strip()))
        except KeyError as e:
            raise ManifestError(_fmt(where, pd.Index([i]), str(e.args[0]))) from None
    df["label"] = keys
    if (df["label"] == taxonomy.classes[0].key).any():
        bad = df.index[df["label"] == taxonomy.classes[0].key]
        raise ManifestError(_fmt(where, bad, f"'{taxonomy.classes[0].key}' is not a clip label"))

    for c in ("event_start", "event_end"):
        num = pd.to_numeric(df[c].replace("", None), errors="coerce")
        bad = df.index[num.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")]
        if len(bad):
            raise ManifestError(_fmt(where, bad, f"{c} is not a number"))
        df[c] = num.astype(float)
    one_sided = df.index[df["event_start"].isna() != df["event_end"].isna()]
    if len(one_sided):
        raise ManifestError(
            _fmt(where, one_sided, "event_start and event_end must both be set or both empty")
        )
    bad = df.index[(df["event_start"] < 0) | (df["event_end"] <= df["event_start"])]
    if len(bad):
        raise ManifestError(_fmt(where, bad, "segment must satisfy 0 <= event_start < event_end"))
    bad = df.index[~df["split"].isin(("", *SPLITS, HOLDOUT))]
    if len(bad):
        raise ManifestError(_fmt(where, bad, f"split must be one of {(*SPLITS, HOLDOUT)} or empty"))
    df["background"] = _backgrounds(df, taxonomy, where)
    df["identifiable"] = _flags(df["identifiable"], where)
    return df[list(COLUMNS)].reset_index(drop=True)


def _backgrounds(df: pd.DataFrame, taxonomy: Taxonomy, where: str) -> list[str]:
    """`background` as normal class keys ("" = unknown); any other value names its line."""
    out = []
    for i, value in zip(df.index, df["background"], strict=True):
        text = "" if _missing(value) else str(value).strip()
        if not text:
            out.append("")
            continue
        try:
            key = taxonomy.key(text)
        except KeyError as e:
            raise ManifestError(_fmt(where, pd.Index([i]), f"background: {e.args[0]}")) from None
        if taxonomy.is_emergency(key) or key == taxonomy.classes[0].key:
            raise ManifestError(
                _fmt(where, pd.Index([i]), f"background {text!r} is not a normal class")
            )
        out.append(key)
    return out


def _flags(values: pd.Series, where: str) -> list[str]:
    """`identifiable` as "true", "false" or "" (unknown)."""
    out = []
    for i, value in zip(values.index, values, strict=True):
        text = "" if _missing(value) else str(value).strip().lower()
        if text in _TRUE:
            out.append("true")
        elif text in _FALSE:
            out.append("false")
        elif text == "":
            out.append("")
        else:
            raise ManifestError(
                _fmt(where, pd.Index([i]), f"identifiable must be true, false or empty: {value!r}")
            )
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_manifest(path: str | Path, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Read and validate a CSV or JSONL manifest; `path` column made absolute."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    if path.suffix == ".jsonl":
        df = pd.read_json(path, lines=True, dtype=False)
    elif path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    else:
        raise ManifestError(f"{path}: a manifest is .csv or .jsonl")
    df = validate(df, taxonomy, where=str(path), first_line=1 if path.suffix == ".jsonl" else 2)
    root = path.resolve().parent
    df["path"] = [str(p if os.path.isabs(p) else (root / p)) for p in df["path"]]
    return df


def write_manifest(df: pd.DataFrame, path: str | Path, taxonomy: Taxonomy | None = None) -> Path:
    """Validate and write a manifest (CSV or JSONL by suffix); paths below its folder are relative."""
    path = Path(path)
    df = validate(df, taxonomy, where=str(path))
    root = path.resolve().parent
    df["path"] = [_relative(p, root) for p in df["path"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False, encoding="utf-8")
    else:
        raise ManifestError(f"{path}: a manifest is .csv or .jsonl")
    return path


def _relative(p: str, root: Path) -> str:
    q = Path(p).resolve()
    return str(q.relative_to(root)) if q.is_relative_to(root) else str(q)


def clips(df: pd.DataFrame) -> pd.DataFrame:
    """One row per audio file: the first annotation's fields, every segment as a list, and the
    transcripts of all its annotations joined in order (each annotation's `note` is what was said
    in its segment)."""
    grouped = df.groupby("path", sort=False)
    out = df.drop_duplicates("path", keep="first").set_index("path")  # not .first(): skips NaN
    out["transcript"] = grouped["transcript"].agg(
        lambda t: " ".join(x.strip() for x in t if x.strip())
    )
    out["segments"] = grouped.apply(
        lambda g: [
            (s, e, lab) for s, e, lab in zip(g.event_start, g.event_end, g.label, strict=True)
        ],
        include_groups=False,
    )
    return out.reset_index()


def background_id(clip: pd.Series, taxonomy: Taxonomy) -> int:
    """The class id of what surrounds a clip's segments, or `IGNORE_ID` when nothing says.

    The manifest's `background` when set; else a normal clip's own class (its scene is its class);
    else (an emergency clip of unknown surroundings) `IGNORE_ID`.
    """
    if clip.get("background", ""):
        return taxonomy.id(clip["background"])
    if not any(taxonomy.is_emergency(label) for _, _, label in clip["segments"]):
        return taxonomy.id(clip["label"])
    return IGNORE_ID


def summarize(df: pd.DataFrame, taxonomy: Taxonomy | None = None) -> str:
    """Clips per class and split, hours of audio and speakers, as a plain-text table."""
    taxonomy = taxonomy or load_taxonomy()
    per_clip = clips(df)
    per_clip["hours"] = [audio_duration(p) / 3600 for p in per_clip["path"]]
    per_clip["split"] = per_clip["split"].replace("", "(none)")
    table = per_clip.pivot_table(
        index="label", columns="split", values="path", aggfunc="count", fill_value=0
    )
    table = table.reindex([c.key for c in taxonomy.classes[1:] if c.key in table.index])
    table.insert(0, "ko", [taxonomy[k].ko for k in table.index])
    table["total"] = table.drop(columns="ko").sum(axis=1)
    hours = per_clip.groupby("split")["hours"].sum()
    speakers = per_clip.groupby("split")["speaker"].agg(lambda s: s[s != ""].nunique())
    lines = [
        f"{len(df)} rows, {len(per_clip)} clips, {per_clip['hours'].sum():.2f} h of audio, "
        f"{per_clip.loc[per_clip['speaker'] != '', 'speaker'].nunique()} speakers",
        "",
        table.to_string(),
        "",
        "per split: "
        + ", ".join(f"{s} {hours[s]:.2f} h / {speakers[s]} speakers" for s in hours.index),
    ]
    return "\n".join(lines)


def link_split(manifest: Path, split: str, folder: Path) -> Path:
    """Links to one split's audio under `folder`, at their paths from the manifest's folder (or
    from the folder that all of them share, when they lie elsewhere)."""
    df = read_manifest(manifest)
    paths = sorted(set(df.loc[df["split"] == split, "path"]))
    root = Path(manifest).resolve().parent
    if not all(Path(p).is_relative_to(root) for p in paths):
        root = Path(os.path.commonpath([Path(p).parent for p in paths])) if paths else root
    if folder.exists():
        shutil.rmtree(folder)
    for path in paths:
        link = folder / Path(path).relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(path, link)
        except OSError:
            shutil.copyfile(path, link)
    return folder
