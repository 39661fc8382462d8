"""The paper's Tables 1 and 2 on a manifest: multi-scale average vs max pooling vs plain resize.

    python benchmarks/anomaly_comparison.py --manifest runs/demo/manifest.csv \
        --out runs/anomaly_comparison

Every variant trains the same network (same seed, same normal train clips, real Lightning
training), fits its density on the normal train clips and its threshold on the val clips, and is
scored on two anomaly sets built from the test split:
- inserted: every normal test clip once as it is and `--insertions` times with an emergency event
  (the annotated segment of an emergency test clip, peak-matched to the clip) spliced in at a
  random place, as the paper built its anomalies;
- emergency: the emergency test clips against the normal test clips.
Writes comparison.md, comparison.csv, comparison.json and one ROC plot per anomaly set to --out.
The defaults fit a shared 2-core CPU (ResNet width 16, 240 steps of 8 clips, one thread: two
processes with two threads each on two cores run several times slower than with one); on a GPU
use e.g. --width 64 --steps 2000 --batch-size 64 --threads 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly.density import GaussianDensity
from anomaly.features import multiscale_pool, spectrogram_images
from anomaly.model import AnomalyNet, AnomalyNetConfig
from anomaly.module import AnomalyModule
from ensemble.core.audio import samples_to_timesteps
from ensemble.core.data import AudioDataModule, valid_samples
from ensemble.core.metrics import binary_metrics, write_json
from ensemble.core.plots import plot_roc

log = logging.getLogger("anomaly_comparison")
VARIANTS = {"avg": "multi-scale average", "max": "multi-scale max", "resize": "plain resize"}
PAPER_AUC = {"avg": 0.9459, "max": 0.8697, "resize": 0.8571}  # the paper, AI Hub data
SETS = ("inserted", "emergency")


class Throughput(pl.Callback):
    """Training clips per second: front end, forward and backward of the clips and their CutPaste
    copies, and the optimiser step (audio loading, which happens before each step, left out)."""

    def __init__(self, every: int = 10):
        self.every, self.seconds, self.clips, self._t0 = every, 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.clips += len(batch["label"])
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            log.info(
                "step %d/%d loss %.3f, %.1f clips/s",
                step,
                trainer.max_steps,
                float(outputs["loss"]),
                self.clips / self.seconds,
            )


def eval_sets(dm: AudioDataModule, insertions: int, seed: int) -> dict[str, list[dict]]:
    """Test windows as {"wave" (N,), "n_valid"} dicts: normal, inserted and emergency."""
    out: dict[str, list[dict]] = {"normal": [], "emergency": [], "inserted": []}
    segments = []
    for item in dm.datasets["test"]:
        n_valid = int(item["mask"].sum()) * (len(item["wave"]) // len(item["mask"]))
        window = {"wave": item["wave"], "n_valid": min(n_valid, len(item["wave"]))}
        if dm.taxonomy.is_emergency(int(item["label"])):
            out["emergency"].append(window)
            segments.append(_event(item, window["n_valid"]))
        else:
            out["normal"].append(window)
    rng = np.random.default_rng(seed)
    for normal in out["normal"]:
        for _ in range(insertions):
            segment = segments[rng.integers(len(segments))]
            out["inserted"].append(_insert(normal, segment, rng))
    log.info("test windows: %s", {k: len(v) for k, v in out.items()})
    return out


def _event(item: dict, n_valid: int) -> torch.Tensor:
    """The annotated event of an emergency window `(n,)`, or its whole valid audio."""
    steps = torch.nonzero(item["frame_labels"] == item["label"]).flatten()
    hop = len(item["wave"]) // len(item["frame_labels"])  # samples per timestep
    if len(steps) == 0:
        return item["wave"][:n_valid]
    return item["wave"][int(steps[0]) * hop : min((int(steps[-1]) + 1) * hop, n_valid)]


def _insert(normal: dict, segment: torch.Tensor, rng: np.random.Generator) -> dict:
    """`segment` spliced into the normal window at a random offset, scaled to its peak level."""
    n = normal["n_valid"]
    segment = segment[:n]
    peak = normal["wave"][:n].abs().max() / segment.abs().max().clamp(min=1e-8)
    offset = int(rng.integers(n - len(segment) + 1))
    wave = normal["wave"].clone()
    wave[offset : offset + len(segment)] = segment * peak
    return {"wave": wave, "n_valid": n}


def batches(windows: list[dict], batch_size: int):
    """Windows as model batches: `wave (B, N)` and the valid-timestep `mask (B, T)`."""
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        wave = torch.stack([w["wave"] for w in chunk])  # (B, N)
        valid = torch.tensor([samples_to_timesteps(w["n_valid"]) for w in chunk])
        mask = torch.arange(samples_to_timesteps(wave.shape[1]))[None] < valid[:, None]  # (B, T)
        yield {"wave": wave, "mask": mask}


def evaluate(scorer: Callable[[dict], Tensor], windows: dict, batch_size: int) -> dict:
    """AUC and pAUC of a scorer (batch -> scores `(B,)`) on both anomaly sets, and its curves."""

    def scores(name: str) -> np.ndarray:
        return torch.cat([scorer(b).cpu() for b in batches(windows[name], batch_size)]).numpy()

    normal, result = scores("normal"), {"curves": {}}
    for name in SETS:
        anomalous = scores(name)
        y = np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]
        s = np.r_[normal, anomalous].astype(np.float64)
        result[name] = {
            **binary_metrics(y, s),
            "n_normal": len(normal),
            "n_anomaly": len(anomalous),
        }
        result["curves"][name] = (y, s)
    return result


def run_variant(pooling: str, args: argparse.Namespace, windows: dict) -> dict:
    """Train, calibrate and score one pooling variant."""
    pl.seed_everything(args.seed, verbose=False)
    config = AnomalyNetConfig(pooling=pooling, image_size=args.image_size, width=args.width)
    module = AnomalyModule(AnomalyNet(config), seed=args.seed)
    speed = Throughput()
    trainer = pl.Trainer(
        max_steps=args.steps,
        max_epochs=-1,
        accelerator=args.accelerator,
        devices=1,
        limit_val_batches=0,  # calibration runs once, at the end of fit
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[speed],
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule(args))
    fit_s = time.perf_counter() - t0

    def scorer(batch: dict) -> Tensor:
        return module.score({k: v.to(module.device) for k, v in batch.items()})

    result = {
        "variant": VARIANTS[pooling],
        "pooling": pooling,
        "fit_s": fit_s,
        "train_s": speed.seconds,
        "train_clips_per_s": speed.clips / speed.seconds,
        "val_auc": module.calibration.get("auc", math.nan),
        "threshold": float(module.threshold),
        **evaluate(scorer, windows, args.batch_size),
    }
    log.info("%s: %s", pooling, {k: result[k] for k in ("fit_s", *SETS)})
    return result


def run_pixel_baseline(args: argparse.Namespace, dm: AudioDataModule, windows: dict) -> dict:
    """No network: the same density on 8 x 8 averages of the multi-scale image `(B, 3 * 64)`.

    Tells how much the learned embedding adds over the pooled pixels themselves.
    """

    def pixels(batch: dict) -> Tensor:
        n_valid = valid_samples(batch["mask"], batch["wave"].shape[1])
        img = multiscale_pool(spectrogram_images(batch["wave"], n_valid, args.image_size), "avg")
        return F.adaptive_avg_pool2d(img, 8).flatten(1)  # (B, 192)

    train = torch.cat([pixels(b) for b in dm.train_dataloader()])  # normal clips only
    density = GaussianDensity(train.shape[1]).fit(train)
    result = {"variant": "pixels + density (no network)", "pooling": "avg", "val_auc": math.nan}
    result |= evaluate(lambda b: density.score(pixels(b)), windows, args.batch_size)
    log.info("pixel baseline: %s", {k: result[k] for k in SETS})
    return result


def datamodule(args: argparse.Namespace) -> AudioDataModule:
    return AudioDataModule(
        args.manifest,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        train_classes="normal",
        seed=args.seed,
    )


def markdown(results: list[dict], args: argparse.Namespace, wall_s: float) -> str:
    """One table: AUC and pAUC per variant and anomaly set, val AUC, speed, the paper's AUC."""

    def fmt(x: float | None, digits: int = 4) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    lines = [
        "| variant | inserted AUC | inserted pAUC | emergency AUC | emergency pAUC "
        "| val AUC | train clips/s | paper AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        i, e, trained = r["inserted"], r["emergency"], "train_clips_per_s" in r
        lines.append(
            f"| {r['variant']} | {fmt(i['auc'])} | {fmt(i['pauc'])} | {fmt(e['auc'])} "
            f"| {fmt(e['pauc'])} | {fmt(r['val_auc'])} "
            f"| {fmt(r.get('train_clips_per_s'), 1)} "
            f"| {fmt(PAPER_AUC[r['pooling']] if trained else None)} |"
        )
    n = results[0]
    lines.append(
        f"\n{n['inserted']['n_normal']} normal test windows, {n['inserted']['n_anomaly']} with an "
        f"inserted event, {n['emergency']['n_anomaly']} emergency test windows; pAUC: FPR <= 0.1. "
        f"{args.steps} steps of {args.batch_size} clips, width {args.width}, image "
        f"{args.image_size} px, seed {args.seed}; {wall_s / 60:.1f} min in all."
    )
    return "\n".join(lines)


def write_outputs(results: list[dict], args: argparse.Namespace, wall_s: float) -> str:
    """The table as Markdown (returned), CSV and JSON, and one ROC plot per anomaly set."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "variant": r["variant"],
            "anomaly_set": name,
            **{k: r[name][k] for k in ("n_normal", "n_anomaly", "auc", "pauc")},
        }
        for r in results
        for name in SETS
    ]
    pd.DataFrame(rows).to_csv(out / "comparison.csv", index=False)
    table = markdown(results, args, wall_s)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    info = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = [{k: v for k, v in r.items() if k != "curves"} for r in results]
    write_json(
        {"args": info, "wall_s": wall_s, "rows": rows, "variants": summary}, out / "comparison.json"
    )
    for name in SETS:
        curves = {r["variant"]: r["curves"][name] for r in results}
        plot_roc(curves, out / f"roc_{name}.png", title=f"anomaly set: {name}")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/anomaly_comparison"))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=240, help="training steps per variant")
    p.add_argument("--batch-size", type=int, default=8, help="clips per step (plus their copies)")
    p.add_argument("--width", type=int, default=16, help="ResNet-18 base width (paper: 64)")
    p.add_argument("--image-size", type=int, default=768, help="spectrogram image side, px")
    p.add_argument("--insertions", type=int, default=3, help="inserted events per normal clip")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score the pooled pixels with the density, without a network",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dm = datamodule(args)
    dm.setup()
    windows = eval_sets(dm, args.insertions, args.seed)
    results = [run_variant(v, args, windows) for v in args.variants]
    if args.baseline:
        results.append(run_pixel_baseline(args, dm, windows))
    table = write_outputs(results, args, time.perf_counter() - t0)
    print(table)  # the benchmark's result, on stdout
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
