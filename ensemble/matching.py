"""Predictions read back and matched to manifest clips: `read_predictions` (an infer output folder
or its predictions.jsonl), `match` (each prediction to the one clip it names), `member_names` and
`sources` (which members gave transcripts and events, from the run's run.json).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# the members whose timesteps give a file's `events` and whose decoding gives its `transcript`,
# for runs whose run.json does not name them
TIMESTEP_MEMBER = "whisper_head"
TRANSCRIPT_MEMBER = "keyword_judge"


@dataclass
class Matched:
    """One ok prediction row and the manifest clip it belongs to."""

    row: dict
    clip: pd.Series


# ---------------------------------------------------------------------------------------------
# reading and matching


def read_predictions(predictions: str | Path) -> tuple[list[dict], Path, Path]:
    """(rows, inferred folder, predictions.jsonl) from an infer output dir or its jsonl file."""
    path = Path(predictions)
    if path.is_dir():
        path = path / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file")
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    run = path.parent / "run.json"
    if run.is_file():
        folder = Path(json.loads(run.read_text(encoding="utf-8"))["folder"])
    else:
        folder = path.parent
        log.warning("%s: no run.json; prediction paths taken relative to %s", path, folder)
    return rows, folder, path


def sources(run_json: Path) -> dict[str, list[str]]:
    """Which members gave transcripts and events, from an infer run's run.json."""
    run = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
    if "sources" in run:
        return run["sources"]
    return {"transcript": [TRANSCRIPT_MEMBER], "events": [TIMESTEP_MEMBER]}


def member_names(rows: list[dict]) -> list[str]:
    """Every `p_<name>` key in the rows, in order of first appearance."""
    names: dict[str, None] = {}
    for row in rows:
        for k in row:
            if k.startswith("p_"):
                names.setdefault(k[2:], None)
    return list(names)


def match(
    rows: list[dict], table: pd.DataFrame, folder: Path
) -> tuple[list[tuple[dict, int]], list[str], list[str]]:
    """Pair prediction rows with clips (rows of `clips(manifest)`).

    A prediction's `Path(folder, path).resolve()` is looked up among the resolved clip paths;
    failing that, the one clip whose path ends with "/" + the prediction's path; failing that, the
    one clip with the same file name. Returns ([(row, clip index)], unmatched prediction paths,
    clip paths with no prediction).
    """
    resolved = {str(Path(p).resolve()): i for i, p in enumerate(table["path"])}
    posix = [(Path(p).as_posix(), Path(p).resolve().as_posix()) for p in table["path"]]
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(table["path"]):
        by_name.setdefault(Path(p).name, []).append(i)

    pairs, unmatched, used = [], [], set()
    for row in rows:
        rel = str(row.get("path") or "")
        i = resolved.get(str(Path(folder, rel).resolve())) if rel else None
        if i is None and rel:
            tail = "/" + Path(rel).as_posix().removeprefix("./")
            hits = [j for j, ps in enumerate(posix) if any(p.endswith(tail) for p in ps)]
            i = hits[0] if len(hits) == 1 else None
        if i is None and rel:
            hits = by_name.get(Path(rel).name, [])
            i = hits[0] if len(hits) == 1 else None
        if i is None or i in used:
            if i in used:
                log.warning("%s: a second prediction for %s; ignored", rel, table["path"][i])
            unmatched.append(rel)
            continue
        used.add(i)
        pairs.append((row, i))
    missing = [p for i, p in enumerate(table["path"]) if i not in used]
    return pairs, unmatched, missing


# ---------------------------------------------------------------------------------------------
# metrics
