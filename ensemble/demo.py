"""The main job: demo data -> every member fitted -> the ensemble calibrated on the val split ->
ensemble inference on the test split -> report (beside the uncalibrated majority).

`run_demo(out)` does it all on a 2-core CPU in under 30 minutes (`configs/demo.yaml` shrinks the
member configs); each stage prints its progress and its time. Clips made of held-out sources (a
voice engine and a sound package) are never trained on: the report scores the in-domain test split
and the held-out-source split side by side.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ensemble.core.labels import CONFIG_DIR

log = logging.getLogger(__name__)

REPO = CONFIG_DIR.parent
DEMO_HOLDOUT = ("festival", "sonic-pi-samples")  # a voice engine and a sound package


def _stage(title: str, t0: float) -> None:
    print(f"\n=== {title} ({(time.perf_counter() - t0) / 60:.1f} min in) ===", flush=True)


def ensemble_config(base: Path, checkpoints: dict[str, Path], path: Path) -> Path:
    """The ensemble config `base` with each member's checkpoint replaced by the demo's (relative
    to the written file's folder, as config paths are)."""
    from ensemble.config import relative_to

    raw = yaml.safe_load(base.read_text())
    for member in raw["members"]:
        package = member["class_path"].split(".")[0]
        member["checkpoint"] = relative_to(checkpoints[package], path.parent)
    if raw.get("labels"):
        raw["labels"] = relative_to(base.parent / raw["labels"], path.parent)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


@dataclass
class DemoOptions:
    """What `run_demo` does: where, with which plan, on how much data."""

    out: Path = Path("runs/demo")
    config: Path = Path("configs/demo.yaml")  # the members' configs and shrinking arguments
    per_class: int = 80  # demo clips of every class, all splits together
    seed: int = 0  # of the data and of the split
    workers: int = 2  # processes building the clips
    cache: Path | None = None  # sound-package cache (None: ~/.cache/emergency-ensemble)
    split: dict = field(default_factory=dict)  # more `split_manifest` keyword arguments
    holdout_sources: tuple[str, ...] | None = None  # None: DEMO_HOLDOUT; (): nothing held out
    compare: bool = True  # the split report's table of what each grouping would leak
    fit_args: list[str] = field(default_factory=list)  # LightningCLI overrides for every member
    reuse_fits: bool = False  # keep members already fitted in OUT/checkpoints


def build_data(options: DemoOptions, data: Path, manifest: Path) -> list[str]:
    """Demo clips under `data`, imported and split into `manifest` (report beside it); returns
    the splits to score: test, and holdout when sources are held out."""
    from ensemble.core.aihub import import_aihub
    from ensemble.core.manifest import HOLDOUT, summarize
    from ensemble.core.split_report import write_split
    from ensemble.demodata.build import make_demo_data

    t0 = time.perf_counter()
    truths = make_demo_data(
        data, options.per_class, options.seed, cache=options.cache, workers=options.workers
    )
    log.info("wrote %d clips to %s in %.1f s", len(truths), data, time.perf_counter() - t0)
    df, report = import_aihub(data)
    if report.errors or report.unpaired_audio or report.unpaired_labels:
        raise RuntimeError(f"the demo data did not import cleanly:\n{report.summary()}")
    held = DEMO_HOLDOUT if options.holdout_sources is None else options.holdout_sources
    result, _, split_report = write_split(
        df,
        manifest,
        compare=options.compare,
        **{**options.split, "seed": options.seed, "holdout_sources": tuple(held)},
    )
    print(split_report)
    print(summarize(result.df))
    return ["test", *([HOLDOUT] if (result.df["split"] == HOLDOUT).any() else [])]


def run_demo(options: DemoOptions) -> dict:
    """The demo end to end; returns {split: metrics} for the test split and the held-out one."""
    from ensemble.calibrate import calibrate, rule_table, score_rules
    from ensemble.config import load_config
    from ensemble.core.labels import load_taxonomy
    from ensemble.core.manifest import link_split
    from ensemble.demodata.build import CEILING_FILE
    from ensemble.evaluate import evaluate
    from ensemble.fit import fit_member
    from ensemble.pipeline import infer
    from ensemble.report import interval_table, report_table, with_ci
    from ensemble.revote import read_run, write_revote

    t0 = time.perf_counter()
    out = Path(options.out)
    data, manifest = out / "data", out / "manifest.csv"
    plan = yaml.safe_load(Path(options.config).read_text())
    held = DEMO_HOLDOUT if options.holdout_sources is None else options.holdout_sources
    _stage("1/6 demo data", t0)
    splits = build_data(options, data, manifest)
    if plan.get("join_normal"):  # train clips where the everyday scene changes (core/joins.py)
        from ensemble.core.joins import JoinError, join_normal_clips

        try:
            joined = join_normal_clips(manifest, int(plan["join_normal"]), out / "joins")
            print(f"{joined['path'].nunique()} joined normal clips added to the train split")
        except JoinError as e:  # too few normal train clips (a tiny demo): train without
            log.warning("no joined normal clips: %s", e)
    if plan.get("crop_windows"):  # train windows shaped like listening's (core/crops.py)
        from ensemble.core.crops import CropError, crop_windows

        try:
            cut = crop_windows(manifest, int(plan["crop_windows"]), out / "crops")
            print(f"{cut['path'].nunique()} cut listening windows added to the train split")
        except CropError as e:
            log.warning("no cut windows: %s", e)
    checkpoints = {}
    for i, (name, member) in enumerate(plan["members"].items()):
        _stage(f"2/6 fit {name} ({i + 1} of {len(plan['members'])})", t0)
        kept = out / "checkpoints" / f"{name}.ckpt"
        if options.reuse_fits and kept.is_file():
            checkpoints[name] = kept
            print(f"{name}: reusing {kept} (--reuse-fits)")
            continue
        checkpoints[name] = fit_member(
            name, REPO / member["config"], member.get("args", []), manifest, out, options.fit_args
        )
        print(f"{name}: {checkpoints[name]}")
    base = ensemble_config(REPO / plan["ensemble"], checkpoints, out / "ensemble.yaml")
    _stage("3/6 calibration of the ensemble on the val split", t0)
    config = out / "ensemble.calibrated.yaml"
    block = calibrate(base, manifest, out / "predictions_val", config, split="val")
    print(rule_table(block))
    print(f"chosen on val: {block['chosen_rule']}; {config}")
    results = {}
    for split in splits:
        _stage(f"4/6 ensemble inference on the {split} split", t0)
        folder = link_split(manifest, split, out / f"{split}_audio")
        pred = out / ("predictions" if split == "test" else f"predictions_{split}")
        result = infer(folder, pred, load_config(config), overwrite=True)
        print(f"{result.n_files} files, {result.n_errors} errors, {result.wall_s:.0f} s")
    taxonomy = load_taxonomy(None)
    for split in splits:
        _stage(f"5/6 evaluation of the {split} split", t0)
        suffix = "" if split == "test" else f"_{split}"
        pred, report = out / f"predictions{suffix}", out / f"report{suffix}"
        results[split] = evaluate(pred, manifest, report, split=split)
        # the uncalibrated majority of the base config, from the same member outputs
        run = read_run(pred, manifest, split, taxonomy)
        majority = write_revote(
            run, load_config(base), taxonomy, out / f"predictions{suffix}_majority"
        )
        results[f"{split}_majority"] = evaluate(
            majority, manifest, report / "majority", split=split
        )
        table = rule_table(block, score_rules(config, pred, manifest, split), split)
        (report / "vote_rules.md").write_text(
            f"Every vote rule, chosen on val ({block['val']['n_files']} files), scored once on "
            f"{split} ({results[split]['n_files']} files):\n\n{table}\n",
            encoding="utf-8",
        )
    _stage("6/6 done", t0)
    for split in splits:
        metrics = results[split]
        what = "in-domain test split" if split == "test" else "held-out sources: " + ", ".join(held)
        print(f"\n{split} ({what}), {metrics['n_files']} files, the calibrated ensemble:\n")
        print(report_table(metrics))
        print()
        print(interval_table(metrics))
        majority = results[f"{split}_majority"]["ensemble"]
        print(
            f"\nthe uncalibrated majority of {base.name} on the same outputs: binary_acc "
            f"{with_ci(majority, 'binary_acc')}, auc {with_ci(majority, 'auc')}, acc19 "
            f"{with_ci(majority, 'acc19')}"
        )
    ceiling = yaml.safe_load((data / CEILING_FILE).read_text(encoding="utf-8"))
    print(
        f"\nbest possible 19-class accuracy on the demo: {ceiling['best_acc19']:.3f} "
        f"({ceiling['identifiable']:.0%} of clips identifiable; {data / 'README.md'})"
    )
    print(
        f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; reports: "
        + ", ".join(str(out / ("report" if s == "test" else f"report_{s}")) for s in splits)
    )
    return {split: results[split] for split in splits}
