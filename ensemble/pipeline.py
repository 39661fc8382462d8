"""Folder inference: every member on every 30 s window, a vote per window, one row per file.

`configs/ensemble.yaml` names the members (class path, checkpoint, threshold, weight), the vote
rule, the windowing and the batch size; members are reached only through it. `infer(folder, out)`
is a short run of named steps: list the audio (`windows.list_audio`), refuse or resume earlier
outputs, stream windows of many files per batch (`windows.WindowStream`) through the members
(`members.EnsembleModule`, run by a Lightning `Trainer`, so DDP shards files across processes),
vote and write rows as files complete (`writer.FileRollup`), merge the shards and write `run.json`.
A file that cannot be read is one row with `status=error`; the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from torch.utils.data import DataLoader

from ensemble.config import EnsembleConfig, load_config
from ensemble.members import EnsembleModule
from ensemble.windows import WindowStream, collate_windows, list_audio, total_duration
from ensemble.writer import FileRollup, done_paths, merge_outputs, read_rows, shards

log = logging.getLogger(__name__)


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
        existing = [p for n in ("predictions", "windows") for p in shards(out, n) if p.exists()]
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
    log.debug(
        "%d audio files under %s; %d done before, %d to go",
        len(keyed),
        folder,
        len(done),
        len(todo),
    )
    total_s = total_duration([p for _, p in todo], config.read_timeout_s)
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
