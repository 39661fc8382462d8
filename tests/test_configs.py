"""Every YAML in configs/ is instantiated here."""

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from ensemble.core.data import AudioDataModule
from ensemble.core.labels import load_taxonomy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KNOWN = {"labels.yaml", "data.yaml"}


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} <= KNOWN, "add a test for the new config"


def test_labels_yaml():
    taxonomy = load_taxonomy(CONFIGS / "labels.yaml")
    assert taxonomy.n_classes == 19 and taxonomy.key("화재") == "fire"


def test_data_yaml_instantiates(demo, tmp_path):
    from ensemble.core.aihub import import_aihub
    from ensemble.core.manifest import write_manifest

    root, _ = demo
    manifest = write_manifest(import_aihub(root)[0], tmp_path / "m.csv")
    parser = ArgumentParser()
    parser.add_subclass_arguments(AudioDataModule, "data")
    raw = yaml.safe_load((CONFIGS / "data.yaml").read_text())
    raw["init_args"]["manifest"] = str(manifest)
    raw["init_args"]["num_workers"] = 0
    cfg = parser.parse_object({"data": raw})
    dm = parser.instantiate_classes(cfg)["data"]
    assert isinstance(dm, AudioDataModule) and dm.hparams.batch_size == 8
    dm.setup()
    assert next(iter(dm.val_dataloader()))["wave"].shape[1] == 480000


def test_unknown_key_is_rejected():
    parser = ArgumentParser()
    parser.add_subclass_arguments(AudioDataModule, "data")
    with pytest.raises(SystemExit):
        parser.parse_object(
            {
                "data": {
                    "class_path": "ensemble.core.data.AudioDataModule",
                    "init_args": {"manifest": "m.csv", "batch_sise": 4},
                }
            }
        )
