"""Rows out of `infer`: the members' outputs of each batch voted per window, rolled up per file and
appended as each file completes (`FileRollup`), one shard per DDP rank, merged at the end.

`predictions.jsonl`, `windows.jsonl` and `predictions.csv` are the outputs; `read_rows` reads them
back (a torn last line of a killed run is dropped); `done_paths` lists what a resumed run skips.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from ensemble.config import EnsembleConfig
from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.labels import Taxonomy
from ensemble.core.member import MemberOutput
from ensemble.core.progress import progress
from ensemble.rows import MemberTable, RowMaker, error_row, rounded

log = logging.getLogger(__name__)

OUTPUTS = ("predictions.jsonl", "windows.jsonl", "predictions.csv", "run.json")
SOURCES = ("transcript", "events", "no_speech_prob", "class_probs")  # listed in run.json


class FileRollup(BasePredictionWriter):
    """Votes each window, rolls windows up to files and appends rows as files complete.

    Rows go to this rank's shard (`predictions.jsonl` etc. with one process,
    `predictions.rank{r}.jsonl` with several); `merge_outputs` joins shards at the end.
    """

    def __init__(self, out: Path, config: EnsembleConfig, taxonomy: Taxonomy, total_s: float):
        super().__init__(write_interval="batch")
        self.out, self.config, self.taxonomy = out, config, taxonomy
        self.rows = RowMaker(config, taxonomy)
        self.total_s = total_s
        self.files: dict[str, list[dict]] = {}  # the window rows of files not finished yet
        # which members give transcripts, events, no-speech probabilities and class probabilities
        self.sources: dict[str, list[str]] = {k: [] for k in SOURCES}
        self.n_files = self.n_errors = 0
        self.audio_s = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        self.shard = {
            name: self.out / f"{name}{suffix}.jsonl" for name in ("predictions", "windows")
        }
        self.bar = progress(
            total=round(self.total_s / trainer.world_size, 1),  # rank 0's share, roughly
            unit="audio s",
            desc="infer",
            disable=trainer.global_rank != 0,
        )
        self.t0, self.done_s = time.perf_counter(), 0.0

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.bar.close()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch["meta"]:
            self._add_windows(prediction, batch)
        for item in batch["errors"]:  # after the windows: a file's error follows its windows
            self.files.pop(item["path"], None)
            self._write_file(error_row(item["path"], item["error"], self.config.names), [])
        if self.bar.disable:  # DDP ranks other than 0
            return
        elapsed = time.perf_counter() - self.t0
        self.bar.set_postfix(
            files=self.n_files,
            errors=self.n_errors,
            hours=f"{self.bar.n / 3600:.2f}/{self.bar.total / 3600:.2f}",
            speed=f"{self.bar.n / elapsed:.1f}x",
        )

    def _add_windows(self, prediction: dict, batch: dict) -> None:
        names = self.config.names
        for key, owners in self.sources.items():
            owners += [
                n for n in names if getattr(prediction[n], key) is not None and n not in owners
            ]
        table = MemberTable.from_outputs(prediction, names)
        metas, extras = [], []
        for b, meta in enumerate(batch["meta"]):
            start = meta["start_s"]
            metas.append(
                {
                    "path": meta["path"],
                    "window": meta["index"],
                    "start_s": rounded(start),
                    "end_s": rounded(start + meta["n_valid"] / SAMPLE_RATE),
                }
            )
            extras.append(member_extras(prediction, names, b, start))
        for meta, row in zip(batch["meta"], self.rows.windows(metas, table, extras), strict=True):
            windows = self.files.setdefault(meta["path"], [])
            windows.append(row)
            if meta["last"]:
                del self.files[meta["path"]]
                self._write_file(self.rows.file(windows, meta["duration_s"]), windows)
            self.done_s += meta["n_valid"] / SAMPLE_RATE
            self.bar.update(round(self.done_s, 1) - self.bar.n)  # no float drift in the display

    def _write_file(self, row: dict, windows: list[dict]) -> None:
        """Append one file's window rows, then its file row (the file counts as done then)."""
        with self.shard["windows"].open("a", encoding="utf-8") as f:
            f.writelines(_json_line(w) for w in windows)
        with self.shard["predictions"].open("a", encoding="utf-8") as f:
            f.write(_json_line(row))
        self.n_files += 1
        if row["status"] == "error":
            self.n_errors += 1
            log.warning("%s: %s", row["path"], row["error"])
        else:
            self.audio_s += row["duration_s"]


def member_extras(
    prediction: dict[str, MemberOutput], names: list[str], b: int, start: float
) -> dict:
    """Window `b`'s transcript, no-speech probability and events (in seconds from the file's
    start): from the first member that gives each."""
    transcript = no_speech = events = None
    for name in names:
        out = prediction[name]
        if transcript is None and out.transcript is not None:
            transcript = out.transcript[b]
        if no_speech is None and out.no_speech_prob is not None:
            no_speech = rounded(out.no_speech_prob[b])
        if events is None and out.events is not None:
            events = [[rounded(start + s), rounded(start + e), k] for s, e, k in out.events[b]]
    return {"transcript": transcript, "no_speech_prob": no_speech, "events": events or []}


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


# --- output files -----------------------------------------------------------------------------


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file; a torn last line (an interrupted write) is dropped, and with
    `repair` cut from the file. A torn line elsewhere is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a JSON row ({e})") from e
            log.warning("%s: dropping the torn last line of an interrupted run", path)
            if repair:
                path.write_text("".join(lines[:-1]), encoding="utf-8")
    return rows


def shards(out: Path, name: str) -> list[Path]:
    return [out / f"{name}.jsonl", *sorted(out.glob(f"{name}.rank*.jsonl"))]


def done_paths(out: Path) -> set[str]:
    """Files with a row in the outputs of earlier runs (merged file and shards)."""
    return {r["path"] for p in shards(out, "predictions") for r in read_rows(p)}


def merge_outputs(out: Path, order: list[str]) -> pd.DataFrame:
    """Join shards into `predictions.jsonl`, `windows.jsonl` and `predictions.csv`, rows in
    `order` (the sorted file list), window rows of files without a file row dropped."""
    rows = {r["path"]: r for p in shards(out, "predictions") for r in read_rows(p)}
    rank = {key: i for i, key in enumerate(order)}
    keys = sorted(rows, key=lambda k: (rank.get(k, len(rank)), k))
    windows = [w for p in shards(out, "windows") for w in read_rows(p) if w["path"] in rows]
    windows.sort(key=lambda w: (rank.get(w["path"], len(rank)), w["path"], w["window"]))
    seen, unique = set(), []
    for w in windows:  # a window written twice (a file rerun after a torn row) counts once
        if (w["path"], w["window"]) not in seen:
            seen.add((w["path"], w["window"]))
            unique.append(w)
    _replace(out / "predictions.jsonl", "".join(_json_line(rows[k]) for k in keys))
    _replace(out / "windows.jsonl", "".join(_json_line(w) for w in unique))
    for p in shards(out, "predictions")[1:] + shards(out, "windows")[1:]:
        p.unlink()
    table = pd.DataFrame([rows[k] for k in keys])
    if len(table):
        table["events"] = [json.dumps(e, ensure_ascii=False) for e in table["events"]]
    table.to_csv(out / "predictions.csv", index=False, encoding="utf-8")
    return table


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
