"""The main job: demo data -> every member fitted -> ensemble inference on the test split -> report.

`run_demo(out)` does it all on a 2-core CPU in well under 30 minutes (`configs/demo.yaml` shrinks
the member configs); each stage prints its progress and its time.
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


def _stage(title: str, t0: float) -> None:
    print(f"\n=== {title} ({(time.perf_counter() - t0) / 60:.1f} min in) ===", flush=True)


def fit_member(
    name: str, config: Path, args: list[str], manifest: Path, out: Path, extra: list[str] = ()
) -> Path:
    """`emergency-ensemble fit --config CONFIG ARGS` into `out/NAME`; the best checkpoint is
    linked (or copied) to `out/checkpoints/NAME.ckpt` (the last one when nothing was monitored)."""
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
            *args,
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


def test_folder(manifest: Path, folder: Path) -> Path:
    """Links to the test split's audio under `folder`, at their manifest paths."""
    from ensemble.core.manifest import read_manifest

    df = read_manifest(manifest)
    root = manifest.resolve().parent
    if folder.exists():
        shutil.rmtree(folder)
    for path in sorted(set(df.loc[df["split"] == "test", "path"])):
        link = folder / Path(path).relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(path, link)
        except OSError:
            shutil.copyfile(path, link)
    return folder


def ensemble_config(base: Path, checkpoints: dict[str, Path], path: Path) -> Path:
    """The ensemble config `base` with each member's checkpoint replaced by the demo's."""
    raw = yaml.safe_load(base.read_text())
    for member in raw["members"]:
        package = member["class_path"].split(".")[0]
        member["checkpoint"] = str(checkpoints[package])
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def run_demo(args: argparse.Namespace) -> dict:
    from ensemble.cli import _import_aihub, _make_demo_data, _summary
    from ensemble.evaluate import evaluate, report_table
    from ensemble.pipeline import infer, load_config

    t0 = time.perf_counter()
    out = Path(args.out)
    data, manifest = out / "data", out / "manifest.csv"
    plan = yaml.safe_load(Path(args.config).read_text())
    _stage("1/5 demo data", t0)
    _make_demo_data(
        argparse.Namespace(
            out=data,
            per_class=args.per_class,
            seed=args.seed,
            cache=args.cache,
            workers=args.workers,
        )
    )
    _import_aihub(
        argparse.Namespace(
            root=data,
            out=manifest,
            extract_dir=None,
            labels=None,
            split=True,
            fractions=args.fractions,
            seed=args.seed,
        )
    )
    _summary(argparse.Namespace(manifest=manifest, labels=None))
    checkpoints = {}
    for i, (name, member) in enumerate(plan["members"].items()):
        _stage(f"2/5 fit {name} ({i + 1} of {len(plan['members'])})", t0)
        checkpoints[name] = fit_member(
            name, REPO / member["config"], member.get("args", []), manifest, out, args.fit_args
        )
        print(f"{name}: {checkpoints[name]}")
    _stage("3/5 ensemble inference on the test split", t0)
    config = ensemble_config(REPO / plan["ensemble"], checkpoints, out / "ensemble.yaml")
    folder = test_folder(manifest, out / "test_audio")
    result = infer(folder, out / "predictions", load_config(config), overwrite=True)
    print(f"{result.n_files} files, {result.n_errors} errors, {result.wall_s:.0f} s")
    _stage("4/5 evaluation", t0)
    metrics = evaluate(out / "predictions", manifest, out / "report", split="test")
    _stage("5/5 done", t0)
    print(report_table(metrics))
    print(
        f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; report: "
        f"{out / 'report' / 'report.md'} (plots beside it); predictions: {out / 'predictions'}"
    )
    return metrics
