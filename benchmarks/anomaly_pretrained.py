"""Training-free anomaly detection with ImageNet EfficientNet-Lite0 features on a manifest.

    python benchmarks/anomaly_pretrained.py --manifest runs/demo/manifest.csv

No CutPaste training: each window becomes a fixed time-scale spectrogram image (`fixed_scale_image`,
absolute or per-image dB), a 3-channel image (multi-scale average or max pooling, or the plain
image in 3 channels; at stride 3 as `multiscale_pool` does, or at stride 1), ImageNet-normalised,
and the pretrained network's feature map of one stage (`anomaly_features`). Per window, either the
map's global average (pooled: one vector) or its frequency average per time column (moments: one
vector per column of the window's real audio). Densities are fitted on the normal train windows
only (`anomaly_densities`): one Gaussian (Ledoit-Wolf, Mahalanobis distance), one Gaussian per
normal class (the smallest distance), and a kNN memory bank (k = 3, Euclidean on L2-normalised
vectors, bounded by a greedy k-center coreset as in PatchCore). A moments window scores its most
unusual column (or the mean of its 3 most unusual ones).

Scored on the test split: emergency vs normal windows, and inserted events (each normal window as
it is and with an emergency event spliced in, `anomaly_windows.eval_sets`); AUC and pAUC (FPR
<= 0.1) with bootstrap 95 % intervals. The variant with the best val AUC (emergency vs normal val
windows) gets a threshold at 5 % FPR on the normal val windows.
Features are cached per (image, stride, stage) under `--out`/cache; results go to
`--out`/results.md and .json and to the `anomaly-pretrained` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_densities import DENSITIES, aggregate, fit_density, roc_auc, threshold_check
from anomaly_features import IMAGES, STAGE_INFO, STAGES, STRIDES, extract
from anomaly_windows import dataset_windows, eval_sets, train_indices
from speed import write_section

from anomaly.features import FRAMES_PER_COLUMN
from ensemble.core.audio import HOP_LENGTH, SAMPLE_RATE
from ensemble.core.data import AudioDataModule
from ensemble.core.efficientnet import load_pretrained
from ensemble.core.metrics import bootstrap_ci, write_json

log = logging.getLogger("anomaly_pretrained")
CACHE_VERSION = 1
SETS = ("train", "val", "test_normal", "test_emergency", "inserted")
FIELDS = ("pooled", "moments", "offsets", "labels")
AGGREGATES = ("max", "top3")  # a moments window's score: its highest column, mean of the top 3


def cache_key(args: argparse.Namespace) -> str:
    """What the cached features depend on: the manifest's bytes and the sampling arguments."""
    digest = hashlib.sha256(Path(args.manifest).read_bytes())
    parts = (CACHE_VERSION, args.max_train, args.insertions, args.seed)
    digest.update(json.dumps(parts).encode())
    return digest.hexdigest()


def load_features(args: argparse.Namespace, dm: AudioDataModule) -> dict:
    """Features per (image, stride, stage) and set: cached, else extracted (and then cached)."""
    cache, key = args.out / "cache", cache_key(args)
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [(i, st, s) for st in args.strides for i in args.images for s in args.stages]

    def path(image: str, stride: int, stage: str) -> Path:
        return cache / f"{image}_stride{stride}_{stage}.npz"

    feats: dict = {}
    for combo in wanted:
        if path(*combo).is_file():
            with np.load(path(*combo)) as z:
                if str(z["key"]) == key:
                    feats[combo] = {s: {f: z[f"{s}.{f}"] for f in FIELDS} for s in SETS}
    missing = [c for c in wanted if c not in feats]
    if not missing:
        log.info("all %d feature sets from %s", len(wanted), cache)
        return feats
    images = sorted({(i, st) for i, st, _ in missing})
    stages = sorted({s for _, _, s in missing})
    log.info("extracting images %s, stages %s", images, stages)
    model = load_pretrained()
    train = dm.datasets["train"]
    idx = train_indices(len(train), args.max_train, args.seed)
    val = dm.datasets["val"]
    test = eval_sets(dm, args.insertions, args.seed)
    sources = {
        "train": (dataset_windows(train, idx), len(idx)),
        "val": (dataset_windows(val, list(range(len(val)))), len(val)),
        "test_normal": (test["normal"], len(test["normal"])),
        "test_emergency": (test["emergency"], len(test["emergency"])),
        "inserted": (test["inserted"], len(test["inserted"])),
    }
    new: dict = {}
    for name, (windows, total) in sources.items():
        for combo, f in extract(model, windows, total, images, stages, name).items():
            new.setdefault(combo, {})[name] = f
    for combo in missing:
        feats[combo] = new[combo]
        arrays = {f"{s}.{f}": v for s, fs in new[combo].items() for f, v in fs.items()}
        np.savez(path(*combo), key=key, **arrays)
    return {c: feats[c] for c in wanted}


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return roc_auc(y, s)


def _pauc(y: np.ndarray, s: np.ndarray) -> float:
    return roc_auc(y, s, max_fpr=0.1)


def variant_row(
    meta: dict, s: dict[str, np.ndarray], val_y: np.ndarray, n_boot: int, seed: int
) -> dict:
    """Val AUC and the test AUC and pAUC (with bootstrap intervals) of one variant's scores."""
    row = {**meta, "val_auc": _auc(val_y, s["val"]), "scores": s, "val_y": val_y}
    normal = s["test_normal"]
    for set_name in ("test_emergency", "inserted"):
        y = np.r_[np.zeros(len(normal), bool), np.ones(len(s[set_name]), bool)]
        x = np.r_[normal, s[set_name]]
        for metric, fn in (("auc", _auc), ("pauc", _pauc)):
            row[f"{set_name}.{metric}"] = bootstrap_ci(fn, y, x, n_boot=n_boot, seed=seed)
    return row


def evaluate(feats: dict, taxonomy, args: argparse.Namespace) -> list[dict]:
    """Every variant's val AUC and test figures; one density fit serves both moment aggregates."""
    rows = []
    for (image, stride, stage), sets in feats.items():
        val_y = np.array([taxonomy.is_emergency(int(c)) for c in sets["val"]["labels"]])
        for level in ("pooled", "moments"):
            for density_name in DENSITIES:
                t0 = time.perf_counter()
                density = fit_density(density_name, sets["train"], level, args.bank, args.seed)
                raw = {name: density(sets[name][level]) for name in SETS[1:]}
                fit_s = time.perf_counter() - t0
                for how in ("",) if level == "pooled" else AGGREGATES:
                    s = raw
                    if how:
                        s = {n: aggregate(v, sets[n]["offsets"], how) for n, v in raw.items()}
                    meta = {
                        "image": image,
                        "stride": stride,
                        "stage": stage,
                        "features": f"{level} {how}".strip(),
                        "density": density_name,
                        "fit_score_s": fit_s,
                    }
                    row = variant_row(meta, s, val_y, args.n_boot, args.seed)
                    rows.append(row)
                    log.info(
                        "%s /%d %s %s %s: val %.3f, emergency %.3f, inserted %.3f (fit %.1f s)",
                        image, stride, stage, row["features"], density_name, row["val_auc"],
                        row["test_emergency.auc"][0], row["inserted.auc"][0], fit_s,
                    )  # fmt: skip
    return rows


def _ci(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]"


def table(rows: list[dict], best: dict) -> list[str]:
    """One Markdown row per variant; the variant chosen on val is marked."""
    lines = [
        "| image | stride | stage | features | density | val AUC | emergency AUC "
        "| emergency pAUC | inserted AUC | inserted pAUC |",
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        absolute, pooling = IMAGES[r["image"]]
        mark = " **(chosen on val)**" if r is best else ""
        lines.append(
            f"| {'abs' if absolute else 'per-image'} dB, {pooling} | {r['stride']} | {r['stage']} "
            f"| {r['features']} | {r['density']}{mark} | {r['val_auc']:.3f} "
            f"| {_ci(r['test_emergency.auc'])} | {_ci(r['test_emergency.pauc'])} "
            f"| {_ci(r['inserted.auc'])} | {_ci(r['inserted.pauc'])} |"
        )
    return lines


def markdown(rows: list[dict], best: dict, check: dict, info: str, full: bool = True) -> str:
    """A summary (the best variant on val per features and density), the chosen variant's
    threshold, and (with `full`) the table of every variant."""
    groups: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["features"], r["density"])
        if key not in groups or r["val_auc"] > groups[key]["val_auc"]:
            groups[key] = r
    c = check
    return "\n".join(
        [
            "Best variant on val AUC for each features / density pair (test figures with 95 % "
            "bootstrap intervals; pAUC: FPR <= 0.1, McClish-standardised as scikit-learn gives "
            "it; emergency: emergency vs normal test windows; inserted: normal test windows as "
            "they are vs with an emergency event spliced in):",
            "",
            *table(list(groups.values()), best),
            "",
            f"Chosen on val AUC: {best['image']}, stride {best['stride']}, {best['stage']}, "
            f"{best['features']}, {best['density']} (val AUC {best['val_auc']:.3f}). Threshold "
            f"at 5 % FPR on {c['n_val_normal']} normal val windows: {c['threshold']:.4g} (val "
            f"FPR {c['val_fpr']:.3f}); on test: FPR {c['test_fpr']:.3f} on normal windows, TPR "
            f"{c['test_emergency_tpr']:.3f} on emergency windows, {c['inserted_tpr']:.3f} on "
            f"inserted events; test emergency AUC {_ci(best['test_emergency.auc'])}, inserted "
            f"AUC {_ci(best['inserted.auc'])}.",
            "",
            info,
            "",
            *(["All variants:", "", *table(rows, best)] if full else []),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--manifest", type=Path, default=Path("runs/demo/manifest.csv"))
    p.add_argument("--out", type=Path, default=Path("runs/anomaly_pretrained"))
    p.add_argument("--images", nargs="+", choices=list(IMAGES), default=list(IMAGES))
    p.add_argument("--strides", nargs="+", type=int, choices=STRIDES, default=list(STRIDES))
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=["head", "stage4"])
    p.add_argument("--max-train", type=int, default=300, help="normal train windows at most")
    p.add_argument("--bank", type=int, default=2000, help="kNN memory bank size (coreset)")
    p.add_argument("--insertions", type=int, default=1, help="inserted events per normal window")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dm = AudioDataModule(args.manifest, train_classes="normal", seed=args.seed)
    dm.setup()
    feats = load_features(args, dm)
    rows = evaluate(feats, dm.taxonomy, args)
    best = max(rows, key=lambda r: r["val_auc"])
    check = threshold_check(best)
    sets = next(iter(feats.values()))
    counts = {s: len(sets[s]["labels"]) for s in SETS}
    wall_s = time.perf_counter() - t0
    column_s = FRAMES_PER_COLUMN * HOP_LENGTH / SAMPLE_RATE  # one image column: 40 ms
    spans = ", ".join(
        f"{s} ({STAGE_INFO[s][0]} channels): "
        + " / ".join(f"{STAGE_INFO[s][1] * st * column_s:.2f} s" for st in args.strides)
        for s in args.stages
    )
    info = (
        f"Windows: {', '.join(f'{k} {v}' for k, v in counts.items())} (normal train windows "
        f"at most {args.max_train}). One moment spans, "
        f"at stride {' / '.join(map(str, args.strides))}: {spans}. kNN: k = 3, bank of at most "
        f"{args.bank} moments (greedy k-center coreset). {args.threads} CPU thread(s); "
        f"{wall_s / 60:.1f} min in all (feature extraction included unless cached)."
    )
    text = markdown(rows, best, check, info)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n", encoding="utf-8")
    keep = [{k: v for k, v in r.items() if k not in ("scores", "val_y")} for r in rows]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = {"args": config, "wall_s": wall_s, "counts": counts, "rows": keep}
    write_json(summary | {"chosen": keep[rows.index(best)], "threshold": check},
               args.out / "results.json")  # fmt: skip
    command = "python benchmarks/anomaly_pretrained.py --manifest " + str(args.manifest)
    header = (
        "## Pretrained EfficientNet-Lite0 features as an anomaly detector (no training)\n\n"
        f"Written by `{command}`.\n\n"
    )
    short = markdown(rows, best, check, info, full=False)
    more = f"All {len(rows)} variants: {args.out / 'results.md'}.\n"
    write_section(args.results, "anomaly-pretrained", header + short + "\n" + more)
    print(text)
    print(json.dumps({"out": str(args.out), "wall_s": round(wall_s, 1)}))


if __name__ == "__main__":
    main()
