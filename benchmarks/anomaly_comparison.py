"""The paper's comparison on one time scale, with and without pretraining and CutPaste.

    python benchmarks/anomaly_comparison.py --manifest runs/demo/manifest.csv \
        --out runs/anomaly_comparison

{multi-scale avg, multi-scale max, plain resize} x {pretrained training-free, pretrained + CutPaste,
from scratch + CutPaste} x {pooled, moments}, on two anomaly sets from the test split, AUC and pAUC
(FPR <= 0.1) with bootstrap 95 % intervals, and the val AUC every choice is made on.

- Image: every window as the moment member sees it (`fixed_scale_image`: per-image dB, 201 bins by
  one column per 40 ms, a 30 s window 750 columns), cut to its valid columns and pooled at stride 3
  (`multiscale_pool`, the paper's operation: 7 / 21 / 63 px averages or maxima, or the image
  resized, into 3 channels of 67 x 250 px for 30 s).
- Networks: EfficientNet-Lite0 with the ImageNet weights of the `weights` extra, used as it is
  ("pretrained, training-free") or fine-tuned with CutPaste ("pretrained + CutPaste"; BatchNorm
  statistics kept), and the project's ResNet-18 (`--width`, 16 on a CPU) trained with CutPaste from
  random weights ("scratch + CutPaste"). CutPaste: the paper's patch (2-15 % of the area) on random
  `--crop`-column crops of the normal train images, a binary normal / pasted classifier on the
  globally pooled last feature map, real Lightning training.
- Scores, both fitted on the normal train windows only: "pooled", the Mahalanobis distance of the
  window's globally pooled last feature map to their Ledoit-Wolf Gaussian (the paper's density);
  "moments", the stride-16 feature map (EfficientNet stage 4, ResNet layer 3) averaged over
  frequency into one vector per map column (1.9 s), each column's mean distance to its 3 nearest
  normal columns (L2-normalised, a coreset of at most `--bank`), the window's score its most
  unusual column.
- Sets: "emergency", the emergency test windows against the normal ones; "inserted", every normal
  test window as it is and `--insertions` times with an emergency event (the annotated segment of
  an emergency test window, peak-matched) spliced in at a random place, as the paper built its
  anomalies. Val AUC: emergency vs normal val windows.
- With `--member` (the default), one more row: the anomaly member's own image (stride 1, the
  plain image in 3 channels), pretrained, training-free, moments.

Writes comparison.md, .csv, .json and roc_emergency.png / roc_inserted.png to --out, and the
`anomaly-comparison` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_densities import gaussian, knn, roc_auc
from anomaly_networks import Backbone, features, train_cutpaste
from anomaly_pretrained import _ci
from anomaly_windows import GROUPS, images, load_windows
from speed import write_section

from anomaly.features import POOL_STRIDE
from ensemble.core.data import AudioDataModule
from ensemble.core.metrics import bootstrap_ci, write_json
from ensemble.core.plots import plot_roc

log = logging.getLogger("anomaly_comparison")
POOLINGS = {"avg": "multi-scale avg", "max": "multi-scale max", "resize": "plain resize"}
TRAININGS = {
    "free": "pretrained, training-free",
    "pretrained_cutpaste": "pretrained + CutPaste",
    "scratch_cutpaste": "scratch + CutPaste",
}
SCORINGS = ("pooled", "moments")
PAPER_AUC = {"avg": 0.9459, "max": 0.8697, "resize": 0.8571}  # pretrained + CutPaste, pooled
SETS = ("emergency", "inserted")


# --- scores and figures ---------------------------------------------------------------------


def scores(feats: dict[str, tuple], bank: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Window scores per scoring and group, both densities fitted on the train group only."""
    pooled = gaussian(feats["train"][0])
    moments = knn(np.concatenate(feats["train"][1]), bank, seed)
    out: dict[str, dict[str, np.ndarray]] = {"pooled": {}, "moments": {}}
    for group, (p, m) in feats.items():
        out["pooled"][group] = pooled(p)
        out["moments"][group] = np.array([moments(x).max() for x in m])
    return out


def figures(s: dict[str, np.ndarray], val_y: np.ndarray, n_boot: int, seed: int) -> dict:
    """Val AUC, and each set's AUC and pAUC with bootstrap intervals, and its ROC curve."""
    both = 0 < val_y.sum() < len(val_y)  # a val AUC needs both kinds of window
    out: dict = {"val_auc": roc_auc(val_y, s["val"]) if both else math.nan, "curves": {}}
    for name in SETS:
        y = np.r_[np.zeros(len(s["normal"]), bool), np.ones(len(s[name]), bool)]
        x = np.r_[s["normal"], s[name]]
        out[f"{name}_auc"] = bootstrap_ci(roc_auc, y, x, n_boot=n_boot, seed=seed)
        out[f"{name}_pauc"] = bootstrap_ci(
            lambda a, b: roc_auc(a, b, 0.1), y, x, n_boot=n_boot, seed=seed
        )
        out["curves"][name] = (y, x)
    return out


@dataclass
class Arm:
    """One network of the table: how it is made, and its rows' pooling."""

    training: str
    pooling: str
    stride: int = POOL_STRIDE


def run_arm(arm: Arm, imgs: dict, val_y: np.ndarray, args) -> list[dict]:
    """Make one network, embed every group, score both ways: two rows."""
    t0 = time.perf_counter()
    pretrained = arm.training != "scratch_cutpaste"
    kind = "efficientnet" if pretrained else "resnet"
    torch.manual_seed(args.seed)
    backbone = Backbone(kind, args.width, pretrained)
    info: dict = {}
    if arm.training != "free":
        info = train_cutpaste(backbone, imgs["train"], args, pretrained)
    feats = {group: features(backbone, imgs[group]) for group in GROUPS}
    embed_s = time.perf_counter() - t0 - info.get("train_s", 0.0)
    rows = []
    for scoring, s in scores(feats, args.bank, args.seed).items():
        row = {
            "pooling": arm.pooling,
            "stride": arm.stride,
            "training": arm.training,
            "scoring": scoring,
            "network": "EfficientNet-Lite0" if pretrained else f"ResNet-18 w{args.width}",
            **info,
            "embed_s": embed_s,
            **figures(s, val_y, args.n_boot, args.seed),
        }
        rows.append(row)
        log.info(
            "%s / %s / %s: val %.3f, emergency %.3f, inserted %.3f",
            POOLINGS[arm.pooling], TRAININGS[arm.training], scoring, row["val_auc"],
            row["emergency_auc"][0], row["inserted_auc"][0],
        )  # fmt: skip
    return rows


def markdown(rows: list[dict], counts: dict, args, wall_s: float) -> str:
    """The table (one row per image x training x scoring) and what it rests on."""
    lines = [
        "| image | network | scoring | val AUC | emergency AUC | emergency pAUC "
        "| inserted AUC | inserted pAUC | paper AUC |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best = max(rows, key=lambda r: -math.inf if math.isnan(r["val_auc"]) else r["val_auc"])
    for r in rows:
        image = POOLINGS[r["pooling"]] + ("" if r["stride"] == POOL_STRIDE else ", stride 1")
        paper = r["training"] == "pretrained_cutpaste" and r["scoring"] == "pooled"
        mark = " **(best val)**" if r is best else ""
        lines.append(
            f"| {image} | {TRAININGS[r['training']]}{mark} | {r['scoring']} | {r['val_auc']:.3f} "
            f"| {_ci(r['emergency_auc'])} | {_ci(r['emergency_pauc'])} "
            f"| {_ci(r['inserted_auc'])} | {_ci(r['inserted_pauc'])} "
            f"| {PAPER_AUC[r['pooling']] if paper and r['stride'] == POOL_STRIDE else '-'} |"
        )
    trained = [r for r in rows if "train_s" in r]
    speed = ", ".join(
        f"{r['network']} {r['train_images_per_s']:.0f} images/s (last batch acc {r['train_acc']:.2f})"
        for r in trained[:: len(SCORINGS)][:2]
    )
    lines += [
        "",
        f"Windows: {', '.join(f'{k} {v}' for k, v in counts.items())} (normal train windows at "
        f"most {args.max_train}; inserted: {args.insertions} per normal test window). pAUC: FPR "
        f"<= 0.1, McClish-standardised. Intervals: {args.n_boot} bootstrap resamples. CutPaste: "
        f"{args.steps} steps of {args.batch_size} crops of {args.crop} columns "
        f"({args.crop * 3 * 0.04:.1f} s) and their pasted copies; Adam, lr {args.lr_pretrained} "
        f"(pretrained, BatchNorm statistics kept) / {args.lr_scratch} (scratch). Training "
        f"speed: {speed or '-'}. Seed {args.seed}; {args.threads or 'all'} CPU thread(s); "
        f"{wall_s / 60:.1f} min in all.",
    ]
    return "\n".join(lines)


def write_outputs(rows: list[dict], counts: dict, args, wall_s: float) -> str:
    """The table as Markdown (returned), CSV, JSON, one ROC plot per set, and RESULTS.md."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flat = [
        {
            **{k: r[k] for k in ("pooling", "stride", "training", "scoring", "val_auc")},
            **{f"{m}{part}": r[m][i] for m in (f"{s}_{q}" for s in SETS for q in ("auc", "pauc"))
               for i, part in enumerate(("", "_low", "_high"))},
        }
        for r in rows
    ]  # fmt: skip
    pd.DataFrame(flat).to_csv(out / "comparison.csv", index=False)
    table = markdown(rows, counts, args, wall_s)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = [{k: v for k, v in r.items() if k != "curves"} for r in rows]
    write_json({"args": config, "wall_s": wall_s, "counts": counts, "rows": summary},
               out / "comparison.json")  # fmt: skip
    for name in SETS:
        curves = {
            f"{POOLINGS[r['pooling']]}{'' if r['stride'] == POOL_STRIDE else ' s1'}, "
            f"{TRAININGS[r['training']]}, {r['scoring']}": r["curves"][name]
            for r in rows
            if r["scoring"] == "moments" or r["training"] == "pretrained_cutpaste"
        }
        plot_roc(curves, out / f"roc_{name}.png", title=f"anomaly set: {name}")
    if args.results:
        command = f"python benchmarks/anomaly_comparison.py --manifest {args.manifest}"
        header = (
            "## The paper's comparison on one time scale: pooling x pretraining / CutPaste x "
            f"scoring\n\nWritten by `{command}`.\n\n"
        )
        write_section(args.results, "anomaly-comparison", header + table)
    return table


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--manifest", type=Path, default=Path("runs/demo/manifest.csv"))
    p.add_argument("--out", type=Path, default=Path("runs/anomaly_comparison"))
    p.add_argument("--poolings", nargs="+", choices=list(POOLINGS), default=list(POOLINGS))
    p.add_argument("--trainings", nargs="+", choices=list(TRAININGS), default=list(TRAININGS))
    p.add_argument(
        "--member",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the anomaly member's own image (stride 1, plain), training-free",
    )
    p.add_argument("--max-train", type=int, default=300, help="normal train windows at most")
    p.add_argument("--insertions", type=int, default=1, help="inserted events per normal window")
    p.add_argument("--steps", type=int, default=300, help="CutPaste training steps")
    p.add_argument("--batch-size", type=int, default=16, help="crops per step (plus their copies)")
    p.add_argument("--crop", type=int, default=84, help="image columns per crop (84: 10 s)")
    p.add_argument("--lr-pretrained", type=float, default=1e-4)
    p.add_argument("--lr-scratch", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=16, help="ResNet-18 base width (paper: 64)")
    p.add_argument("--bank", type=int, default=2000, help="kNN memory bank size (coreset)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dm = AudioDataModule(args.manifest, train_classes="normal", seed=args.seed)
    dm.setup()
    windows = load_windows(dm, args)
    val_y = np.array([w["emergency"] for w in windows["val"]])
    counts = {g: len(windows[g]) for g in GROUPS}
    arms = [Arm(t, p) for p in args.poolings for t in args.trainings]
    if args.member:
        arms.append(Arm("free", "resize", stride=1))
    rows: list[dict] = []
    cache: dict[tuple[str, int], dict] = {}
    for i, arm in enumerate(arms, 1):
        log.info(
            "arm %d/%d: %s, %s, stride %d", i, len(arms), arm.pooling, arm.training, arm.stride
        )
        key = (arm.pooling, arm.stride)
        if key not in cache:  # the images of one pooling serve every training
            cache = {key: {g: images(windows[g], *key) for g in GROUPS}}
        rows += run_arm(arm, cache[key], val_y, args)
    table = write_outputs(rows, counts, args, time.perf_counter() - t0)
    print(table)  # the benchmark's result, on stdout
    print(json.dumps({"out": str(args.out), "wall_s": round(time.perf_counter() - t0, 1)}))
    return rows


if __name__ == "__main__":
    main()
