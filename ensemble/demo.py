"""The main job: demo data -> every member fitted -> the ensemble calibrated on the val split ->
ensemble inference on the test split -> report (beside the uncalibrated majority).

`run_demo(out)` does it all on a 2-core CPU in under 30 minutes (`configs/demo.yaml` shrinks the
member configs); each stage prints its progress and its time. Clips made of held-out sources (a
voice engine and a sound package) are never trained on: the report scores the in-domain test split
and the held-out-source split side by side.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

import yaml

from ensemble.core.labels import CONFIG_DIR

log = logging.getLogger(__name__)

REPO = CONFIG_DIR.parent
DEMO_HOLDOUT = ("festival", "sonic-pi-samples")  # a voice engine and a sound package


def _stage(title: str, t0: float) -> None:
    print(f"\n=== {title} ({(time.perf_counter() - t0) / 60:.1f} min in) ===", flush=True)


def fit_member(
    name: str, config: Path, args: list[str], manifest: Path, out: Path, extra: list[str] = ()
) -> Path:
    """`emergency-ensemble fit --config CONFIG ARGS` into `out/NAME`; the best checkpoint is
    linked (or copied) to `out/checkpoints/NAME.ckpt` (the last one when nothing was monitored).
    `{out}` in an argument stands for `out`."""
    from ensemble.cli import lightning

    raw = yaml.safe_load(Path(config).read_text())
    raw.pop("weights_only", None)  # a key of `emergency-ensemble fit`, not of LightningCLI
    root = out / name
    root.mkdir(parents=True, exist_ok=True)
    shrunk = root / "config.in.yaml"
    shrunk.write_text(yaml.safe_dump(raw, allow_unicode=True))
    logger = []
    if isinstance(raw["trainer"].get("logger"), dict):
        logger = [
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.logger.init_args.name=logs",
        ]
    cli = lightning(
        [
            "--config",
            str(shrunk),
            *(a.replace("{out}", str(out)) for a in args),
            f"--data.init_args.manifest={manifest}",
            f"--trainer.default_root_dir={root}",
            *logger,
            *extra,
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = cli.trainer.checkpoint_callback
    best = Path(callback.best_model_path or callback.last_model_path) if callback else None
    target = out / "checkpoints" / f"{name}.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    if best is None or not best.is_file():
        cli.trainer.save_checkpoint(target, weights_only=True)
    else:
        try:
            os.link(best, target)  # no second copy of a 300 MB Whisper checkpoint
        except OSError:
            shutil.copyfile(best, target)
    return target


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


def build_data(args: argparse.Namespace, data: Path, manifest: Path) -> list[str]:
    """Demo clips under `data`, imported and split into `manifest` (report beside it); returns
    the splits to score: test, and holdout when sources are held out."""
    from ensemble.cli import split_options
    from ensemble.core.aihub import import_aihub
    from ensemble.core.demo.build import make_demo_data
    from ensemble.core.manifest import HOLDOUT, summarize
    from ensemble.core.split_report import write_split

    t0 = time.perf_counter()
    truths = make_demo_data(data, args.per_class, args.seed, cache=args.cache, workers=args.workers)
    log.info("wrote %d clips to %s in %.1f s", len(truths), data, time.perf_counter() - t0)
    df, report = import_aihub(data)
    if report.errors or report.unpaired_audio or report.unpaired_labels:
        raise RuntimeError(f"the demo data did not import cleanly:\n{report.summary()}")
    result, _, split_report = write_split(
        df, manifest, compare=not args.no_compare, **split_options(args)
    )
    print(split_report)
    print(summarize(result.df))
    return ["test", *([HOLDOUT] if (result.df["split"] == HOLDOUT).any() else [])]


def run_demo(args: argparse.Namespace) -> dict:
    """The demo end to end; returns {split: metrics} for the test split and the held-out one."""
    from ensemble.calibrate import calibrate, rule_table, score_rules
    from ensemble.config import load_config
    from ensemble.core.demo.build import CEILING_FILE
    from ensemble.core.labels import load_taxonomy
    from ensemble.core.manifest import link_split
    from ensemble.evaluate import evaluate, interval_table, report_table, with_ci
    from ensemble.pipeline import infer
    from ensemble.revote import read_run, write_revote

    t0 = time.perf_counter()
    out = Path(args.out)
    data, manifest = out / "data", out / "manifest.csv"
    plan = yaml.safe_load(Path(args.config).read_text())
    if args.holdout_source == ["none"]:
        args.holdout_source = []
    elif not args.holdout_source:
        args.holdout_source = list(DEMO_HOLDOUT)
    _stage("1/6 demo data", t0)
    splits = build_data(args, data, manifest)
    checkpoints = {}
    for i, (name, member) in enumerate(plan["members"].items()):
        _stage(f"2/6 fit {name} ({i + 1} of {len(plan['members'])})", t0)
        kept = out / "checkpoints" / f"{name}.ckpt"
        if getattr(args, "reuse_fits", False) and kept.is_file():
            checkpoints[name] = kept
            print(f"{name}: reusing {kept} (--reuse-fits)")
            continue
        checkpoints[name] = fit_member(
            name, REPO / member["config"], member.get("args", []), manifest, out, args.fit_args
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
        what = (
            "in-domain test split"
            if split == "test"
            else "held-out sources: " + ", ".join(args.holdout_source)
        )
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
