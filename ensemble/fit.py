"""Fitting a member: LightningCLI over any member's config (`emergency-ensemble fit|validate|test|
predict --config configs/<member>.yaml`), and `fit_member`, which the demo and the notebook use to
fit one member into a run folder and link its best checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from ensemble.core.labels import CONFIG_DIR

LIGHTNING = ("fit", "validate", "test", "predict")
SHARED = CONFIG_DIR / "trainer.yaml"  # the trainer settings every member shares


def lightning(argv: list[str] | None, run: bool = True):
    """`fit|validate|test|predict --config configs/<member>.yaml`: LightningCLI over any member.

    The member and the data come from `class_path` entries of the config, so this module imports no
    member; `configs/trainer.yaml` (what every member shares) is read before the config. Checkpoints and logs go to the trainer's `default_root_dir`. With `run=False` (no
    subcommand in `argv`) the CLI only builds the trainer, model and datamodule, and returns them.
    """
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningCLI

    shared = {"default_config_files": [str(SHARED)]}  # read before any --config
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # members build their own optimiser from their arguments
        save_config_kwargs={"overwrite": True},
        parser_kwargs={command: shared for command in LIGHTNING} if run else shared,
        run=run,
        args=argv,
    )


def fit_member(
    name: str, config: Path, args: list[str], manifest: Path, out: Path, extra: list[str] = ()
) -> Path:
    """`emergency-ensemble fit --config CONFIG ARGS` into `out/NAME`; the best checkpoint is
    linked (or copied) to `out/checkpoints/NAME.ckpt` (the last one when nothing was monitored).
    `{out}` in an argument stands for `out`."""
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
