"""A finished `infer` run read back with its labels, and revoted under another config.

`read_run` pairs a run's window rows with the manifest clips of one split (no other split's label is
read); `revote` gives the window and file rows another ensemble config would give, from the member
outputs the rows hold (`ensemble.rows`), exactly as `infer` with that config writes them;
`figures` scores file rows against the labels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ensemble.config import EnsembleConfig
from ensemble.core.labels import Taxonomy
from ensemble.core.manifest import clips, read_manifest
from ensemble.core.metrics import bootstrap_ci
from ensemble.matching import match
from ensemble.rows import MemberTable, RowMaker, error_row
from ensemble.writer import read_rows

# --- a finished run and its labels ------------------------------------------------------------


@dataclass
class Run:
    """The window rows of a finished `infer` run, grouped by file, with each file's labels."""

    names: list[str]
    windows: list[dict]  # every window row, files in order
    files: list[str]  # file keys, in order
    group: np.ndarray  # (B,) the file index of each window
    duration: list[float]
    errors: list[dict]  # the run's error rows, kept as they are
    y_window: np.ndarray  # (B,) bool: an emergency event overlaps the window
    y_file: np.ndarray  # (F,) bool
    y_key: np.ndarray  # (F,) class key of the file's first segment
    speech: np.ndarray  # (B,) bool: the file's transcript is not empty
    run_json: dict


def read_run(folder: Path, manifest: str | Path, split: str | None, taxonomy: Taxonomy) -> Run:
    """The run in `folder` (`infer` output) matched to the manifest's clips of `split` only."""
    run_json = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    names = list(run_json["members"])
    df = read_manifest(manifest, taxonomy)
    if split is not None:
        df = df[df["split"] == split]  # no other split's label is read beyond this line
        if df.empty:
            raise ValueError(f"{manifest}: no clip of split {split!r}")
    table = clips(df)
    file_rows = read_rows(folder / "predictions.jsonl")
    ok = [r for r in file_rows if r.get("status") == "ok"]
    pairs, unmatched, _ = match(ok, table, Path(run_json["folder"]))
    if unmatched:
        raise ValueError(
            f"{folder}: {len(unmatched)} files are not {split} clips of {manifest}, e.g. "
            f"{unmatched[:3]}: calibrate on the {split} split's audio only"
        )
    clip_of = {row["path"]: table.iloc[i] for row, i in pairs}
    by_file: dict[str, list[dict]] = {}
    for w in read_rows(folder / "windows.jsonl"):
        by_file.setdefault(w["path"], []).append(w)
    windows, group, files, duration = [], [], [], []
    y_window, y_file, y_key, speech = [], [], [], []
    for row in ok:
        clip = clip_of[row["path"]]
        events = [(s, e) for s, e, lab in clip["segments"] if taxonomy.is_emergency(lab)]
        said = bool(str(clip.get("transcript") or "").strip())
        for w in by_file[row["path"]]:
            windows.append(w)
            group.append(len(files))
            y_window.append(any(_overlaps(s, e, w["start_s"], w["end_s"]) for s, e in events))
            speech.append(said)
        files.append(row["path"])
        duration.append(row["duration_s"])
        y_file.append(bool(events))
        y_key.append(str(clip["segments"][0][2]))
    return Run(
        names=names,
        windows=windows,
        files=files,
        group=np.array(group, dtype=np.int64),
        duration=duration,
        errors=[r for r in file_rows if r.get("status") != "ok"],
        y_window=np.array(y_window, dtype=bool),
        y_file=np.array(y_file, dtype=bool),
        y_key=np.array(y_key),
        speech=np.array(speech, dtype=bool),
        run_json=run_json,
    )


def _overlaps(start, end, a: float, b: float) -> bool:
    if start is None or end is None or math.isnan(start) or math.isnan(end):
        return True
    return start < b and end > a


# --- revoting ---------------------------------------------------------------------------------

META_KEYS = ("path", "window", "start_s", "end_s")
EXTRA_KEYS = ("transcript", "no_speech_prob", "events")


def revote_windows(windows: list[dict], config: EnsembleConfig, taxonomy: Taxonomy) -> list[dict]:
    """Window rows (of `infer`, or the hops `listen --record-hops` writes) as `config` votes
    them: its members, the rows' members or fewer, from their recorded outputs."""
    table = MemberTable.from_rows(windows, list(config.names), taxonomy.n_classes)
    return RowMaker(config, taxonomy).windows(
        [{k: w[k] for k in META_KEYS} for w in windows],
        table,
        [{k: w.get(k) for k in EXTRA_KEYS} | {"events": w.get("events") or []} for w in windows],
    )


def revote(run: Run, config: EnsembleConfig, taxonomy: Taxonomy) -> tuple[list[dict], list[dict]]:
    """(window rows, file rows) of `config` over the run's member outputs: what `infer` with
    `config` writes for those files, without running a model."""
    if list(config.names) != run.names:
        raise ValueError(f"the config's members {config.names} are not the run's {run.names}")
    maker = RowMaker(config, taxonomy)
    windows = revote_windows(run.windows, config, taxonomy)
    by_file: list[list[dict]] = [[] for _ in run.files]
    for w, g in zip(windows, run.group, strict=True):
        by_file[g].append(w)
    files = [maker.file(ws, d) for ws, d in zip(by_file, run.duration, strict=True)]
    return windows, files


def write_revote(run: Run, config: EnsembleConfig, taxonomy: Taxonomy, out: Path) -> Path:
    """`revote` written as an `infer` output folder (the run's error rows kept)."""
    windows, files = revote(run, config, taxonomy)
    out.mkdir(parents=True, exist_ok=True)
    errors = [error_row(r["path"], r["error"], run.names) for r in run.errors]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*files, *errors])
    (out / "predictions.jsonl").write_text(lines, encoding="utf-8")
    (out / "windows.jsonl").write_text(
        "".join(json.dumps(w, ensure_ascii=False) + "\n" for w in windows), encoding="utf-8"
    )
    run_json = {**run.run_json, "config": dataclasses.asdict(config), "revoted": True}
    (out / "run.json").write_text(json.dumps(run_json, indent=2, ensure_ascii=False) + "\n")
    return out


def figures(run: Run, files: list[dict], interval: bool = True) -> dict:
    """File-level figures of file rows against the run's labels (in the order of `run.files`);
    with `interval`, the binary accuracy's bootstrap 95 % interval too (1,000 resamples)."""
    y = run.y_file
    e = np.array([bool(r["emergency"]) for r in files])
    s = np.array([-1.0 if r["score"] is None else r["score"] for r in files])
    cls = np.array([r["class"] or "" for r in files])
    out = {
        "n_files": len(files),
        "n_emergency": int(y.sum()),
        "binary_acc": float((e == y).mean()),
        "balanced_acc": balanced(y, e),
        "fpr": float(e[~y].mean()) if (~y).any() else math.nan,
        "acc19": float((cls == run.y_key).mean()),
        "auc": float(roc_auc_score(y, s)) if y.any() and not y.all() else math.nan,
        "n_undecided": int(sum(not r["decided"] for r in files)),
    }
    if interval:
        _, lo, hi = bootstrap_ci(lambda a, b: float((a == b).mean()), y, e)
        out["binary_acc_ci"] = [round(lo, 6), round(hi, 6)]
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def balanced(y: np.ndarray, e: np.ndarray) -> float:
    if y.all() or not y.any():
        return float((e == y).mean())
    return float((e[y].mean() + (~e[~y]).mean()) / 2)
