"""The `emergency-ensemble` command: one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ensemble.console import quiet
from ensemble.fit import LIGHTNING
from ensemble.listen import cli as listen

log = logging.getLogger("emergency-ensemble")


def _make_demo_data(args: argparse.Namespace) -> None:
    from ensemble.demodata.build import make_demo_data

    t0 = time.perf_counter()
    truths = make_demo_data(
        args.out, args.per_class, args.seed, cache=args.cache, workers=args.workers
    )
    log.info("wrote %d clips to %s in %.1f s", len(truths), args.out, time.perf_counter() - t0)


def split_options(args: argparse.Namespace) -> dict:
    """`split_manifest` keyword arguments from the parsed split options."""
    return {
        "fractions": tuple(args.fractions),
        "seed": args.seed,
        "group_by": () if args.group_by == "none" else tuple(args.group_by.split("+")),
        "max_group_share": args.max_group_share,
        "holdout_sources": tuple(args.holdout_source),
    }


def _write_split(df, args: argparse.Namespace, out: Path, taxonomy=None):
    """Split `df` by the CLI's options, write manifest and report, print the report."""
    from ensemble.core.split_report import write_split

    result, path, report = write_split(
        df, out, compare=not args.no_compare, taxonomy=taxonomy, **split_options(args)
    )
    print(report)
    return result, path


def _import_aihub(args: argparse.Namespace) -> None:
    from ensemble.core.aihub import import_aihub
    from ensemble.core.labels import load_taxonomy
    from ensemble.core.manifest import write_manifest

    taxonomy = load_taxonomy(args.labels)
    df, report = import_aihub(args.root, extract_dir=args.extract_dir, taxonomy=taxonomy)
    if args.split:
        result, out = _write_split(df, args, args.out, taxonomy)
        df = result.df
    else:
        out = write_manifest(df, args.out, taxonomy)
    unpaired = out.with_name(out.stem + ".unpaired.csv")
    report.to_frame().to_csv(unpaired, index=False)
    print(report.summary())
    print(f"manifest: {out} ({len(df)} rows); unpaired files and errors: {unpaired}")


def _split(args: argparse.Namespace) -> None:
    from ensemble.core.manifest import read_manifest

    result, out = _write_split(read_manifest(args.manifest, None), args, args.out or args.manifest)
    counts = result.df["split"].value_counts()
    print(f"{out}: " + ", ".join(f"{s} {n} rows" for s, n in counts.items()))


def _summary(args: argparse.Namespace) -> None:
    from ensemble.core.labels import load_taxonomy
    from ensemble.core.manifest import read_manifest, summarize

    taxonomy = load_taxonomy(args.labels)
    print(summarize(read_manifest(args.manifest, taxonomy), taxonomy))


def _demo(args: argparse.Namespace) -> None:
    from ensemble.demo import DemoOptions, run_demo

    split = split_options(args)
    held = split.pop("holdout_sources")
    split.pop("seed")
    run_demo(
        DemoOptions(
            out=args.out,
            config=args.config,
            per_class=args.per_class,
            seed=args.seed,
            workers=args.workers,
            cache=args.cache,
            split=split,
            holdout_sources=() if held == ("none",) else (held or None),
            compare=not args.no_compare,
            fit_args=args.fit_args,
            reuse_fits=args.reuse_fits,
        )
    )


def _evaluate(args: argparse.Namespace) -> None:
    from ensemble.evaluate import evaluate
    from ensemble.report import interval_table, report_table

    metrics = evaluate(
        args.predictions,
        args.manifest,
        args.out,
        args.labels,
        args.timelines,
        args.seed,
        args.split,
    )
    print(report_table(metrics))
    print()
    print(interval_table(metrics))
    print(f"report: {args.out / 'report.md'}; metrics: {args.out / 'metrics.json'}")


def _infer(args: argparse.Namespace) -> None:
    from ensemble.config import load_config
    from ensemble.pipeline import infer

    config = load_config(args.config, batch_size=args.batch_size, device=args.device)
    result = infer(
        args.folder,
        args.out,
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        devices=args.devices,
        strategy=args.strategy,
    )
    if result.rank != 0:
        return  # DDP: rank 0 merges and reports
    hours = result.audio_s / 3600
    print(
        f"{result.n_files} files ({result.n_errors} errors, {result.n_skipped} done before), "
        f"{hours:.2f} h of audio in {result.wall_s:.1f} s "
        f"({result.audio_s / max(result.wall_s, 1e-9):.1f}x real time)"
    )
    if len(result.table):
        emergencies = int(result.table["emergency"].fillna(False).astype(bool).sum())
        print(f"{emergencies} of {len(result.table)} files hold an emergency")
        ok = result.table[result.table["status"] == "ok"]
        undecided = int((~ok["decided"].astype(bool)).sum()) if "decided" in ok else 0
        if undecided:
            print(f"{undecided} files without a decision: every member abstained on every window")
    print(f"predictions: {result.out / 'predictions.csv'} (and predictions.jsonl, windows.jsonl)")


def _calibrate(args: argparse.Namespace) -> None:
    from ensemble.calibrate import calibrate, rule_table

    block = calibrate(
        args.config,
        args.manifest,
        args.work,
        args.out,
        split=args.split,
        folder=args.folder,
        criterion=args.criterion,
        target_fpr=args.target_fpr,
        cv_repeats=args.cv_repeats,
    )
    print(rule_table(block))
    print(f"chosen: {block['chosen_rule']}; config: {args.out}")


def _fractions(p: argparse.ArgumentParser, holdout_default: str = "none") -> None:
    p.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of the rows of every class (of those not held out)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument(
        "--group-by",
        choices=["speaker+transcript", "speaker", "transcript", "none"],
        default="speaker+transcript",
        help="what keeps rows in one split (a clip's rows always stay together); the report shows "
        "what each choice leaks",
    )
    p.add_argument(
        "--max-group-share",
        type=float,
        default=0.5,
        help="the largest share of a split one group may make up; a group too large for any "
        "split is broken at its commonest link and reported as a leak",
    )
    p.add_argument(
        "--holdout-source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="put every clip made of SOURCE (a voice engine or sound package in the manifest's "
        "origin column, e.g. festival, sonic-pi-samples) in a `holdout` split, never trained on "
        f"(repeatable; default: {holdout_default})",
    )
    p.add_argument(
        "--no-compare", action="store_true", help="skip the table of what each --group-by leaks"
    )


def _generator_options(p: argparse.ArgumentParser) -> None:
    from ensemble.demodata.build import DEFAULT_PER_CLASS

    p.add_argument(
        "--per-class",
        type=int,
        default=DEFAULT_PER_CLASS,
        help="demo clips of every class, all splits together",
    )
    p.add_argument("--workers", type=int, default=2, help="processes building the clips")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="sound-package cache (default ~/.cache/emergency-ensemble)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emergency-ensemble", description=__doc__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and the dependencies' warnings and tips (anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "make-demo-data", help="build the synthetic demo dataset in the AI Hub layout"
    )
    p.add_argument("out", type=Path, help="folder to write the dataset into")
    p.add_argument("--seed", type=int, default=0, help="one seed, the same bytes")
    _generator_options(p)
    p.set_defaults(func=_make_demo_data)

    p = sub.add_parser("import-aihub", help="AI Hub label JSON + audio -> manifest")
    p.add_argument("root", type=Path, help="folder (or .zip) of AI Hub label JSON and audio")
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.csv or .jsonl)")
    p.add_argument(
        "--extract-dir",
        type=Path,
        default=None,
        help="where zips are unpacked (default ROOT/.extracted)",
    )
    p.add_argument(
        "--labels", type=Path, default=None, help="taxonomy YAML (default configs/labels.yaml)"
    )
    p.add_argument(
        "--split", action="store_true", help="also assign leak-free train/val/test splits"
    )
    _fractions(p)
    p.set_defaults(func=_import_aihub)

    p = sub.add_parser(
        "split", help="assign leak-free splits (no speaker or transcript in two splits)"
    )
    p.add_argument("manifest", type=Path, help="the manifest CSV/JSONL to split")
    p.add_argument("--out", type=Path, default=None, help="default: rewrite MANIFEST")
    _fractions(p)
    p.set_defaults(func=_split)

    p = sub.add_parser("summary", help="clips per class and split, hours, speakers")
    p.add_argument("manifest", type=Path, help="the manifest CSV/JSONL to summarise")
    p.add_argument(
        "--labels", type=Path, default=None, help="taxonomy YAML (default configs/labels.yaml)"
    )
    p.set_defaults(func=_summary)

    p = sub.add_parser("infer", help="the ensemble over every audio file in a folder")
    p.add_argument("folder", type=Path, help="a folder (searched recursively) or one file")
    p.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    p.add_argument(
        "--config", type=Path, default=Path("configs/ensemble.yaml"), help="the ensemble config"
    )
    p.add_argument("--resume", action="store_true", help="skip files with a row already")
    p.add_argument("--overwrite", action="store_true", help="delete earlier predictions in OUT")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default=None,
        help="override the config's device",
    )
    p.add_argument("--devices", type=int, default=1, help="processes (DDP shards files)")
    p.add_argument("--strategy", default="auto", help="e.g. ddp with --devices > 1")
    p.set_defaults(func=_infer)

    p = sub.add_parser(
        "calibrate",
        help="choose thresholds, abstention, the vote rule and class weights on the val split",
    )
    p.add_argument("--config", type=Path, default=Path("configs/ensemble.yaml"), help="base config")
    p.add_argument("--manifest", type=Path, required=True, help="the manifest with a val split")
    p.add_argument(
        "--work", type=Path, required=True, help="folder for the members' outputs on the split"
    )
    p.add_argument("--out", type=Path, required=True, help="the calibrated config to write")
    p.add_argument("--split", default="val", help="the split to calibrate on (never test)")
    p.add_argument("--folder", type=Path, default=None, help="the split's audio (default: linked)")
    p.add_argument(
        "--criterion",
        choices=["balanced", "fpr"],
        default="balanced",
        help="thresholds at the best balanced accuracy, or at --target-fpr false positives",
    )
    p.add_argument("--target-fpr", type=float, default=0.05, help="with --criterion fpr")
    p.add_argument("--cv-repeats", type=int, default=None, help="cross-validation repeats")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser(
        "evaluate", help="metrics, report and plots of predictions against a manifest"
    )
    p.add_argument("predictions", type=Path, help="infer output dir, or its predictions.jsonl")
    p.add_argument("manifest", type=Path, help="manifest CSV/JSONL with the true labels")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, report, plots")
    p.add_argument("--labels", default=None, help="taxonomy YAML (default configs/labels.yaml)")
    p.add_argument("--timelines", type=int, default=8, help="files drawn in timelines.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the timeline sample")
    p.add_argument("--split", default=None, help="expect only this split's clips, e.g. test")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "demo", help="the main job: demo data, fit every member, infer on the test split, report"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder for everything the demo makes"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path("configs/demo.yaml"),
        help="the demo's plan: members, their shrinking arguments, the ensemble",
    )
    p.add_argument(
        "--fit-arg",
        dest="fit_args",
        action="append",
        default=[],
        metavar="ARG",
        help="a LightningCLI override for every member (repeatable): --fit-arg=--trainer.max_steps=2",
    )
    p.add_argument(
        "--reuse-fits",
        action="store_true",
        help="keep the members already fitted in OUT/checkpoints (e.g. after changing the ensemble)",
    )
    _generator_options(p)
    _fractions(p, holdout_default="festival and sonic-pi-samples; `none` holds nothing out")
    p.set_defaults(func=_demo)

    listen.add_parser(sub)

    for name in LIGHTNING:  # parsed by LightningCLI: listed here for --help only
        sub.add_parser(
            name,
            add_help=False,
            help=f"{name} a member: --config configs/<member>.yaml (see `{name} --help`)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    verbose = bool({"-v", "--verbose"} & set(words))  # anywhere on the line
    words = [w for w in words if w not in ("-v", "--verbose")]
    quiet(verbose)
    if words and words[0] in LIGHTNING:
        from ensemble.fit import lightning

        lightning(words)
        return 0
    args = build_parser().parse_args(words)
    try:
        args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
