"""Folder inference: every member on every 30 s window, a vote per window, one row per file.

`configs/ensemble.yaml` names the members (class path, checkpoint, threshold, weight), the vote
rule, the windowing and the batch size; members are reached only through it. `infer(folder, out)`
walks the folder (recursive, sorted; audio by extension, each file checked by content), streams
windows of many files per batch through the members (`EnsembleModule.predict_step`, run by a
Lightning `Trainer`, so DDP shards files across processes), votes per window and rolls windows
up to files (`FileRollup`). Rows are appended file by file to `predictions.jsonl`,
`windows.jsonl` and `predictions.csv`; `resume=True` skips the files already there. A file that
cannot be read is one row with `status=error`; the run goes on.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from ensemble.core.audio import (
    AUDIO_EXTENSIONS,
    CHUNK_LENGTH,
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    samples_to_timesteps,
    seconds_to_samples,
    stream_windows,
)
from ensemble.core.labels import Taxonomy, load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput
from ensemble.rows import MemberTable, RowMaker, error_row, rounded
from ensemble.vote import VoteRule

log = logging.getLogger(__name__)

N_TIMESTEPS = samples_to_timesteps(seconds_to_samples(CHUNK_LENGTH))  # 1500 per 30 s window
OUTPUTS = ("predictions.jsonl", "windows.jsonl", "predictions.csv", "run.json")
SOURCES = ("transcript", "events", "no_speech_prob", "class_probs")  # listed in run.json


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSpec:
    """One voting member. `output` picks one of several outputs of a module (the Whisper module
    gives `whisper_head` and `keyword_judge` from one encoder pass; both entries share it)."""

    name: str
    class_path: str
    checkpoint: str
    output: str | None = None
    threshold: float | None = None  # None: the member's own vote; else p > threshold
    weight: float = 1.0  # in the soft score and the "weighted" rule
    overrides: dict = field(default_factory=dict)  # hparams replaced at load (inference settings)
    abstain_no_speech: float | None = None  # abstain where Whisper's no_speech_prob is above it
    class_weight: float | None = None  # in the ensemble's class probabilities; None: `weight`

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"member name must be an identifier, got {self.name!r}")
        for key in ("threshold", "abstain_no_speech"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{self.name}: {key} must be in (0, 1), got {value}")
        for key in ("weight", "class_weight"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ValueError(f"{self.name}: {key} must be >= 0, got {value}")


@dataclass(frozen=True)
class EnsembleConfig:
    members: tuple[MemberSpec, ...]
    vote: VoteRule = field(default_factory=VoteRule)
    window_s: float = CHUNK_LENGTH
    hop_s: float | None = None  # None: windows do not overlap
    batch_size: int | None = None  # None: 1 on CPU (measured faster there), 8 on GPU
    num_workers: int = 1  # audio decoding processes beside the model
    device: str = "auto"  # auto | cpu | gpu
    min_duration_s: float = 0.1  # shorter files are an error: too little to judge
    read_timeout_s: float = 60.0  # a file that gives no window for this long is an error row
    labels: str | None = None  # taxonomy YAML; None = configs/labels.yaml
    calibration: dict | None = None  # what `calibrate` chose and measured (not read by `infer`)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("the ensemble needs at least one member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if self.window_s != CHUNK_LENGTH:
            raise ValueError(
                f"window_s must be {CHUNK_LENGTH} (Whisper's window), got {self.window_s}"
            )
        bad_batch = self.batch_size is not None and self.batch_size < 1
        if bad_batch or self.num_workers < 0 or self.min_duration_s < 0:
            raise ValueError(f"bad batch_size, num_workers or min_duration_s in {self}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


def load_config(path: str | Path, **overrides: Any) -> EnsembleConfig:
    """`configs/ensemble.yaml` -> EnsembleConfig; unknown keys are errors naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the ensemble config ({e})") from e
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        members = tuple(MemberSpec(**m) for m in raw.pop("members", []))
        vote = VoteRule(**raw.pop("vote", {}))
        return EnsembleConfig(members=members, vote=vote, **raw)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from e


# --- the members as one LightningModule ------------------------------------------------------


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import member class {class_path!r} ({e})") from e


class EnsembleModule(pl.LightningModule):
    """Every member of a config; `predict_step` gives their outputs and the vote per window.

    A checkpoint named by several members (with the same overrides) is loaded once and run once
    per batch; a module computes only the outputs that members route (`wanted_outputs`).
    """

    def __init__(self, config: EnsembleConfig, map_location: str = "cpu"):
        super().__init__()
        self.config = config
        self.taxonomy = load_taxonomy(config.labels)
        missing = [
            f"{m.name}: {m.checkpoint}" for m in config.members if not Path(m.checkpoint).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                "member checkpoints not found (train them, e.g. `emergency-ensemble demo`, or "
                "point the ensemble config at yours): " + "; ".join(missing)
            )
        loaded: dict[tuple[str, str], str] = {}
        modules = {}
        self.routes: list[tuple[MemberSpec, str]] = []
        for spec in config.members:
            key = (
                spec.class_path,
                str(spec.checkpoint),
                json.dumps(spec.overrides, sort_keys=True),
            )
            if key not in loaded:
                cls = _import(spec.class_path)
                if not (isinstance(cls, type) and issubclass(cls, MemberModule)):
                    raise ValueError(f"{spec.name}: {spec.class_path} is not a MemberModule")
                loaded[key] = f"m{len(loaded)}"
                try:
                    modules[loaded[key]] = cls.from_checkpoint(
                        spec.checkpoint, map_location, **spec.overrides
                    )
                except TypeError as e:  # an override the member does not take
                    raise ValueError(f"{spec.name}: bad overrides {spec.overrides}: {e}") from e
            self.routes.append((spec, loaded[key]))
        for key, module in modules.items():
            module.wanted_outputs = frozenset(
                spec.output or spec.name for spec, k in self.routes if k == key
            )
        self.members = nn.ModuleDict(modules)
        self.eval()

    def forward(self, wave: Tensor, n_valid: Tensor) -> dict[str, MemberOutput]:
        """Windows `(B, N)` with `n_valid (B,)` real samples -> each member's output (CPU)."""
        T = N_TIMESTEPS * wave.shape[1] // seconds_to_samples(CHUNK_LENGTH)
        steps = torch.tensor([samples_to_timesteps(int(n)) for n in n_valid], device=wave.device)
        batch = {
            "wave": wave,
            "mask": torch.arange(T, device=wave.device)[None] < steps[:, None],  # (B, T)
            "n_valid": n_valid,
        }
        raw = {key: module.predict_step(batch, 0) for key, module in self.members.items()}
        out = {}
        for spec, key in self.routes:
            result = raw[key]
            if isinstance(result, dict):
                if (spec.output or spec.name) not in result:
                    raise ValueError(
                        f"{spec.name}: {spec.class_path} gives {sorted(result)}, not {spec.output!r}"
                    )
                result = result[spec.output or spec.name]
            out[spec.name] = result.cpu()  # thresholds and abstentions: `rows.vote`
        return out

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, MemberOutput]:
        if batch["wave"] is None:  # only unreadable files in this batch
            return {}
        return self(batch["wave"], batch["n_valid"])


# --- windows of many files --------------------------------------------------------------------


def list_audio(folder: str | Path) -> list[Path]:
    """Audio files under `folder` by extension (recursive, sorted), or `[folder]` for one file.

    Directories and dangling links with an audio extension are listed too: they become error rows.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = [p for p in folder.rglob("*") if p.name.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class WindowStream(IterableDataset):
    """Windows of the files `paths[rank::world]` (ranks of torch.distributed, then of DataLoader
    workers), read block by block.

    Yields one dict per window: `wave (N,)` float32, `n_valid`, `path` (the key), `index`,
    `start_s`, `last` (the file's last window, which also carries `duration_s`), or one dict with
    `error` for a file that cannot be used (windows already yielded for it are then discarded).
    """

    def __init__(
        self,
        paths: list[tuple[str, Path]],
        hop_s: float | None = None,
        min_duration_s: float = 0.1,
        read_timeout_s: float = 60.0,
    ):
        self.paths = paths
        self.hop_s = hop_s
        self.min_duration_s = min_duration_s
        self.read_timeout_s = read_timeout_s

    def __iter__(self) -> Iterator[dict]:
        paths = self.paths
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            paths = paths[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        info = get_worker_info()
        paths = paths if info is None else paths[info.id :: info.num_workers]
        for key, path in paths:
            yield from self._file(key, path)

    def _file(self, key: str, path: Path) -> Iterator[dict]:
        previous = None
        try:
            for w in _timed(
                stream_windows(path, CHUNK_LENGTH, self.hop_s), path, self.read_timeout_s
            ):
                if previous is not None:
                    yield previous
                previous = {"path": key, "index": w.index, "start_s": w.start_s, "last": False}
                previous.update(wave=w.wave, n_valid=w.n_valid)
            if previous is None:
                raise AudioError(path, "zero length: the file holds no samples")
            duration = previous["start_s"] + previous["n_valid"] / SAMPLE_RATE
            if duration < self.min_duration_s:
                raise AudioError(
                    path, f"too short: {duration:.3f} s (the minimum is {self.min_duration_s} s)"
                )
        except (AudioError, OSError, RuntimeError) as e:
            fault = e.fault if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
            yield {"path": key, "error": fault}
            return
        yield {**previous, "last": True, "duration_s": duration}


def _timed(windows: Iterator, path: Path, timeout_s: float) -> Iterator:
    """`windows`, read in a helper thread: an AudioError when the next one takes longer than
    `timeout_s` (a stalled network file). The stalled thread is left behind; the run goes on."""
    box: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def pump() -> None:
        try:
            for w in windows:
                box.put(w)
            box.put(done)
        except BaseException as e:  # handed to the reader
            box.put(e)

    threading.Thread(target=pump, daemon=True, name=f"read {path.name}").start()
    while True:
        try:
            item = box.get(timeout=timeout_s)
        except queue.Empty:
            raise AudioError(
                path, f"stalled: no audio for {timeout_s:g} s (read timeout)"
            ) from None
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def collate_windows(items: list[dict]) -> dict:
    """Window dicts -> `wave (B, N)`, `n_valid (B,)`, `meta` (the rest), `errors`."""
    windows = [x for x in items if "error" not in x]
    return {
        "wave": torch.from_numpy(np.stack([x["wave"] for x in windows])) if windows else None,
        "n_valid": torch.tensor([x["n_valid"] for x in windows], dtype=torch.long),
        "meta": [{k: v for k, v in x.items() if k != "wave"} for x in windows],
        "errors": [x for x in items if "error" in x],
    }


# --- windows -> rows --------------------------------------------------------------------------


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
        self.bar = tqdm(
            total=round(self.total_s / trainer.world_size, 1),  # rank 0's share, roughly
            unit="audio s",
            desc="infer",
            disable=trainer.global_rank != 0,
            dynamic_ncols=True,
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
            extras.append(_extras(prediction, names, b, start))
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


def _extras(prediction: dict[str, MemberOutput], names: list[str], b: int, start: float) -> dict:
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


def _shards(out: Path, name: str) -> list[Path]:
    return [out / f"{name}.jsonl", *sorted(out.glob(f"{name}.rank*.jsonl"))]


def done_paths(out: Path) -> set[str]:
    """Files with a row in the outputs of earlier runs (merged file and shards)."""
    return {r["path"] for p in _shards(out, "predictions") for r in read_rows(p)}


def merge_outputs(out: Path, order: list[str]) -> pd.DataFrame:
    """Join shards into `predictions.jsonl`, `windows.jsonl` and `predictions.csv`, rows in
    `order` (the sorted file list), window rows of files without a file row dropped."""
    rows = {r["path"]: r for p in _shards(out, "predictions") for r in read_rows(p)}
    rank = {key: i for i, key in enumerate(order)}
    keys = sorted(rows, key=lambda k: (rank.get(k, len(rank)), k))
    windows = [w for p in _shards(out, "windows") for w in read_rows(p) if w["path"] in rows]
    windows.sort(key=lambda w: (rank.get(w["path"], len(rank)), w["path"], w["window"]))
    seen, unique = set(), []
    for w in windows:  # a window written twice (a file rerun after a torn row) counts once
        if (w["path"], w["window"]) not in seen:
            seen.add((w["path"], w["window"]))
            unique.append(w)
    _replace(out / "predictions.jsonl", "".join(_json_line(rows[k]) for k in keys))
    _replace(out / "windows.jsonl", "".join(_json_line(w) for w in unique))
    for p in _shards(out, "predictions")[1:] + _shards(out, "windows")[1:]:
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


# --- the run ----------------------------------------------------------------------------------


@dataclass
class InferResult:
    out: Path
    n_files: int  # rows written by this run
    n_errors: int
    n_skipped: int  # done by an earlier run (resume)
    audio_s: float
    wall_s: float
    table: pd.DataFrame  # the merged table; empty on DDP ranks other than 0
    rank: int = 0


def infer(
    folder: str | Path,
    out: str | Path,
    config: EnsembleConfig | str | Path = "configs/ensemble.yaml",
    resume: bool = False,
    overwrite: bool = False,
    devices: int = 1,
    strategy: str = "auto",
    limit_files: int | None = None,
) -> InferResult:
    """Run the ensemble over every audio file under `folder`; rows go to `out`.

    `resume` skips files with a row already; `overwrite` deletes earlier outputs; with neither, a
    folder that holds outputs is refused. `devices` > 1 shards files across processes (DDP).
    """
    t0 = time.perf_counter()
    folder, out = Path(folder), Path(out)
    if not isinstance(config, EnsembleConfig):
        config = load_config(config)
    files = list_audio(folder)
    root = folder if folder.is_dir() else folder.parent
    keyed = [(p.relative_to(root).as_posix(), p) for p in files]
    if limit_files is not None:
        keyed = keyed[:limit_files]
    out.mkdir(parents=True, exist_ok=True)
    if _launching_process():  # DDP children re-run this function: the files are theirs by now
        existing = [p for n in ("predictions", "windows") for p in _shards(out, n) if p.exists()]
        if existing and overwrite:
            for p in existing:
                p.unlink()
        elif existing and not resume:
            raise ValueError(
                f"{out} holds predictions of an earlier run: pass --resume or --overwrite"
            )
        for p in existing if resume else []:
            read_rows(p, repair=True)  # a torn last line of a killed run
    done = done_paths(out) if resume else set()
    todo = [(k, p) for k, p in keyed if k not in done]
    log.info(
        "%d audio files under %s; %d done before, %d to go",
        len(keyed),
        folder,
        len(done),
        len(todo),
    )
    total_s = _total_duration([p for _, p in todo], config.read_timeout_s)
    module = EnsembleModule(config)
    accelerator = {"auto": "auto", "cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}[config.device]
    writer = FileRollup(out, config, module.taxonomy, total_s)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[writer],
        use_distributed_sampler=False,
        default_root_dir=out,
    )
    stream = WindowStream(todo, config.hop_s, config.min_duration_s, config.read_timeout_s)
    loader = DataLoader(
        stream,
        batch_size=config.batch_size
        or (1 if isinstance(trainer.accelerator, CPUAccelerator) else 8),
        num_workers=config.num_workers,
        collate_fn=collate_windows,
    )
    if todo:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    counts = torch.tensor([writer.n_files, writer.n_errors, writer.audio_s], dtype=torch.float64)
    if trainer.world_size > 1:
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        trainer.strategy.barrier()
    n_files, n_errors, audio_s = int(counts[0]), int(counts[1]), float(counts[2])
    table = pd.DataFrame()
    wall = time.perf_counter() - t0
    if trainer.global_rank == 0:
        table = merge_outputs(out, [k for k, _ in keyed])
        sources = writer.sources
        if not any(sources.values()) and (out / "run.json").is_file():  # nothing new: resumed
            sources = json.loads((out / "run.json").read_text()).get("sources", sources)
        run = {
            "folder": str(root.resolve()),
            "members": config.names,
            "config": dataclasses.asdict(config),
            "n_files": len(table),
            "n_errors": int((table["status"] == "error").sum()) if len(table) else 0,
            "this_run": {"files": n_files, "errors": n_errors, "audio_s": audio_s, "wall_s": wall},
            "devices": trainer.world_size,
            "sources": sources,
        }
        (out / "run.json").write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    return InferResult(out, n_files, n_errors, len(done), audio_s, wall, table, trainer.global_rank)


def _launching_process() -> bool:
    """False in the processes that Lightning's DDP launcher (or torchrun) starts beside rank 0."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _total_duration(paths: list[Path], timeout_s: float) -> float:
    """Seconds of audio in `paths` from their headers (for the progress bar), read in a helper
    thread: a header that stalls for `timeout_s` ends the count there."""
    box: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [box.put(_duration(p)) for p in paths], daemon=True, name="durations"
    ).start()
    total = 0.0
    for _ in paths:
        try:
            total += box.get(timeout=timeout_s)
        except queue.Empty:
            break
    return total


def _duration(path: Path) -> float:
    try:
        d = audio_duration(path)
        return d if math.isfinite(d) else 0.0
    except (AudioError, OSError):
        return 0.0
