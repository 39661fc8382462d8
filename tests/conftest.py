import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo dataset (2 clips per class) and the truth it was built from."""
    from ensemble.demodata.build import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    truths = make_demo_data(root, per_class=2, seed=0, progress=False)
    return root, truths


@pytest.fixture(scope="session")
def demo_manifest(demo, tmp_path_factory):
    """The demo dataset imported with leak-free splits: path of its manifest CSV."""
    from ensemble.core.aihub import import_aihub
    from ensemble.core.manifest import write_manifest
    from ensemble.core.splits import assign_splits

    root, _ = demo
    df = assign_splits(import_aihub(root)[0], seed=0)
    return write_manifest(df, tmp_path_factory.mktemp("manifest") / "manifest.csv")


@pytest.fixture(scope="session")
def member_checkpoints(demo_manifest, tmp_path_factory):
    """Tiny checkpoints of the three member modules after a step or two on the demo data:
    {"whisper_head": random tiny Whisper, "cnn": ..., "anomaly": the moment member (random
    EfficientNet-Lite0, bank filled and threshold set)}."""
    import pytorch_lightning as pl

    from anomaly.moment_module import MomentAnomalyModule
    from anomaly.moments import MomentNet, MomentNetConfig
    from cnn.model import MelCNN, MelCNNConfig
    from cnn.module import CNNModule
    from ensemble.core.data import AudioDataModule
    from whisper_head.model import WhisperHeadConfig, WhisperHeadModel
    from whisper_head.module import WhisperHeadModule

    out = tmp_path_factory.mktemp("members")
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    modules = {
        "whisper_head": WhisperHeadModule(
            WhisperHeadModel(WhisperHeadConfig("random:tiny", hidden_dim=8)),
            language=None,
            max_new_tokens=4,
        ),
        "cnn": CNNModule(MelCNN(MelCNNConfig(widths=(4, 8), emb_dim=8, dropout=0.0))),
        "anomaly": MomentAnomalyModule(
            MomentNet(MomentNetConfig(stride=3, stage=2, bank_size=64)), load_weights=False
        ),
    }
    paths = {}
    pl.seed_everything(0)
    for name, module in modules.items():
        data = AudioDataModule(
            demo_manifest,
            batch_size=4,
            num_workers=0,
            train_classes="normal" if name == "anomaly" else "all",
        )
        calibrate = name == "anomaly"  # its validation sets the threshold
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=1.0 if calibrate else 0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            **quiet,
        )
        trainer.fit(module, datamodule=data)
        paths[name] = out / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    return paths


@pytest.fixture(scope="session")
def ensemble_config(member_checkpoints, tmp_path_factory):
    """configs/ensemble.yaml pointed at the tiny checkpoints, on the CPU, no decoding workers."""
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs/ensemble.yaml").read_text())
    for member in raw["members"]:
        member["checkpoint"] = str(member_checkpoints[member["class_path"].split(".")[0]])
    raw |= {"device": "cpu", "num_workers": 0, "batch_size": 3}
    path = tmp_path_factory.mktemp("ensemble") / "ensemble.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
