"""Every YAML in configs/ is instantiated here."""

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from ensemble.core.data import AudioDataModule
from ensemble.core.labels import load_taxonomy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KNOWN = {
    "labels.yaml",
    "data.yaml",
    "cnn.yaml",
    "cnn_pretrained.yaml",
    "anomaly.yaml",
    "anomaly_pretrained.yaml",
    "keywords.yaml",
    "whisper_head.yaml",
    "whisper_head_gpu.yaml",
    "ensemble.yaml",  # tests/test_pipeline.py
    "demo.yaml",
    "trainer.yaml",  # read before every member config (test_trainer_yaml_is_shared)
}


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} <= KNOWN, "add a test for the new config"


def test_labels_yaml():
    taxonomy = load_taxonomy(CONFIGS / "labels.yaml")
    assert taxonomy.n_classes == 19 and taxonomy.key("화재") == "fire"


def test_keywords_yaml():
    from whisper_head.judge import GENERIC, load_keywords

    lexicon = load_keywords(CONFIGS / "keywords.yaml")
    by_key = {k: {p.text for p in lexicon.phrases if p.key == k} for k in lexicon.keys}
    assert "불이야" in by_key["fire"] and "ambulance" in by_key["medical_emergency"]
    assert "살려 주세요" in by_key[GENERIC] and "시청해주셔서감사합니다" in lexicon.hallucinations


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


def lightning_cli(config: str, manifest, tmp_path, *overrides: str, over: str | None = None):
    """A member config (and the override config `over` read after it) through LightningCLI
    (run=False), shrunk to the test's data and folder."""
    from ensemble.fit import lightning

    raw = yaml.safe_load((CONFIGS / config).read_text())
    # keys of the fit/test subcommands, which run=False has not; `emergency-ensemble fit` reads them
    assert raw.pop("weights_only") is True, "member checkpoints must load with weights_only"
    shrunk = tmp_path / config
    shrunk.write_text(yaml.safe_dump(raw))
    configs = ["--config", str(shrunk)] + (["--config", str(CONFIGS / over)] if over else [])
    return lightning(  # configs/trainer.yaml first, as every command reads it
        [
            *configs,
            f"--data.init_args.manifest={manifest}",
            "--data.init_args.num_workers=0",
            f"--trainer.default_root_dir={tmp_path}",
            *overrides,
        ],
        run=False,
    )


@pytest.mark.parametrize(
    "member", ["cnn", "cnn_pretrained", "anomaly", "anomaly_pretrained", "whisper_head"]
)
def test_trainer_yaml_is_shared(member, demo_manifest, tmp_path):
    shared = yaml.safe_load((CONFIGS / "trainer.yaml").read_text())
    raw = yaml.safe_load((CONFIGS / f"{member}.yaml").read_text())
    assert not set(shared["trainer"]) & set(raw["trainer"]), "say it once, in trainer.yaml"
    extra = ["--model.init_args.model.init_args.config.source=random:tiny"]
    extra = [*extra, "--model.init_args.model.init_args.config.layers=[0,1]"]
    cli = lightning_cli(
        f"{member}.yaml",
        demo_manifest,
        tmp_path,
        "--trainer.logger=false",
        *(extra if member == "whisper_head" else []),
    )
    assert cli.trainer.log_every_n_steps == shared["trainer"]["log_every_n_steps"] == 5
    assert cli.config["seed_everything"] == 0


def test_cnn_yaml_instantiates_and_trains_a_step(demo_manifest, tmp_path):
    from cnn.module import CNNModule

    cli = lightning_cli(
        "cnn.yaml",
        demo_manifest,
        tmp_path,
        "--trainer.logger=false",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
    )
    assert isinstance(cli.model, CNNModule) and cli.model.model.config.widths == (16, 32, 64, 128)
    assert cli.datamodule.hparams.batch_size == 16 and cli.trainer.max_epochs == 30
    optimizer = cli.model.optimizer(cli.model.parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 0.001
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1


def test_cnn_pretrained_yaml_fine_tunes_imagenet_weights_a_step(demo_manifest, tmp_path):
    from cnn.module import CNNModule
    from cnn.pretrained import PretrainedMelCNN
    from ensemble.core.efficientnet import load_pretrained

    cli = lightning_cli(
        "cnn_pretrained.yaml",
        demo_manifest,
        tmp_path,
        "--trainer.logger=false",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--data.init_args.batch_size=4",
    )
    model = cli.model.model
    assert isinstance(cli.model, CNNModule) and isinstance(model, PretrainedMelCNN)
    c = model.config
    assert (c.n_mels, c.time_pool, c.frozen_stages, c.load_weights) == (128, 2, 3, True)
    assert cli.model.hparams.scoring == "crops" and cli.model.hparams.crop_s == 5.0
    net, wheel = model.classifier.backbone, load_pretrained()
    torch.testing.assert_close(
        net._blocks[0]._depthwise_conv.weight, wheel._blocks[0]._depthwise_conv.weight
    )
    last = net._blocks[-1]._project_conv.weight.detach().clone()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    # the frozen first stages keep ImageNet's weights, the last stage has moved
    torch.testing.assert_close(
        net._blocks[0]._depthwise_conv.weight, wheel._blocks[0]._depthwise_conv.weight
    )
    assert not torch.equal(net._blocks[-1]._project_conv.weight, last)


def test_anomaly_yaml_instantiates(demo_manifest, tmp_path):
    from anomaly.module import AnomalyModule

    cli = lightning_cli("anomaly.yaml", demo_manifest, tmp_path, "--trainer.logger=false")
    assert isinstance(cli.model, AnomalyModule) and cli.datamodule.hparams.train_classes == "normal"
    c = cli.model.model.config
    assert (c.image_size, c.pooling, c.width, c.embed_dim) == (768, "avg", 64, 128)
    assert cli.model.configure_optimizers().defaults["lr"] == 0.001


def test_anomaly_pretrained_yaml_fits_and_saves_a_loadable_last_checkpoint(demo_manifest, tmp_path):
    from anomaly.moment_module import MomentAnomalyModule
    from ensemble.core.member import load_member

    cli = lightning_cli(
        "anomaly_pretrained.yaml",
        demo_manifest,
        tmp_path,
        "--trainer.logger=false",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=2",
        "--data.init_args.window_s=8.0",
    )
    module = cli.model
    assert isinstance(module, MomentAnomalyModule) and cli.trainer.max_epochs == 1
    c = module.model.config
    assert (c.absolute, c.pooling, c.stride, c.stage, c.bank_size, c.k) == (
        False, "resize", 1, 4, 2000, 3
    )  # fmt: skip
    assert cli.datamodule.hparams.train_classes == "normal" and module.hparams.load_weights
    cli.trainer.fit(module, datamodule=cli.datamodule)
    last = next(tmp_path.rglob("last.ckpt"))
    loaded = load_member(last)
    assert int(loaded.model.n_bank) > 0 and not torch.isnan(loaded.threshold)


def test_whisper_head_yaml_instantiates_with_bundled_base(demo_manifest, tmp_path):
    from whisper_head.module import WhisperHeadModule

    cli = lightning_cli("whisper_head.yaml", demo_manifest, tmp_path, "--trainer.logger=false")
    module = cli.model
    assert isinstance(module, WhisperHeadModule) and module.model.config.source == "bundled:base"
    assert module.model.backbone.config.d_model == 512 and module.model.config.layer_weights
    assert not module.encoder_trainable and module.languages == ("ko", "en")
    groups = module.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4, 1e-5]  # head, the last encoder block, decoder
    head = {id(p) for p in module.model.head.parameters()} | {id(module.model.layer_logits)}
    head |= {id(p) for p in module.model.clip_head.parameters()}
    assert {id(p) for p in groups[0]["params"]} == head
    encoder = module.model.encoder
    top = [*encoder.layers[-1].parameters(), *encoder.layer_norm.parameters()]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in top}
    assert cli.trainer.max_epochs == 4 and cli.datamodule.hparams.batch_size == 8


def test_whisper_head_gpu_yaml_trains_a_step_on_cpu(demo_manifest, tmp_path):
    """The GPU config as written, shrunk to a tiny random Whisper and one CPU process."""
    from whisper_head.module import WhisperHeadModule

    raw = yaml.safe_load((CONFIGS / "whisper_head_gpu.yaml").read_text())
    t = raw["trainer"]
    assert (t["accelerator"], t["strategy"], t["precision"]) == ("gpu", "ddp", "bf16-mixed")
    assert "class_path" not in raw["model"], "an override of whisper_head.yaml, not a copy"
    cli = lightning_cli(
        "whisper_head.yaml",
        demo_manifest,
        tmp_path,
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--data.init_args.batch_size=2",
        "--model.init_args.model.init_args.config.source=random:tiny",
        "--model.init_args.model.init_args.config.hidden_dim=8",
        "--model.init_args.model.init_args.config.layers=[0,1]",
        over="whisper_head_gpu.yaml",
    )
    module = cli.model
    assert isinstance(module, WhisperHeadModule) and module.hparams.freeze == "none"
    assert module.hparams.feature_cache is None and module.hparams.train_frames is None
    assert module.hparams.head_lr == 1e-3  # from the CPU config, not repeated
    assert cli.trainer.max_epochs == 10 and cli.datamodule.hparams.batch_size == 2
    assert module.encoder_trainable and module.hparams.lam == 0.5
    assert module.hparams.text_epochs is None  # the decoder trains in every epoch
    assert module.model.attention_pool  # the CPU config's clip head
    assert module.hparams.lead_token and module.hparams.head_schedule == "constant"
    before = module.model.encoder.layers[0].fc1.weight.detach().clone()
    cli.trainer.fit(module, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert not torch.equal(before, module.model.encoder.layers[0].fc1.weight)  # joint training
    assert {"train/samples_per_s", "train/epoch_s"} <= set(cli.trainer.callback_metrics)


@pytest.mark.parametrize("member", ["whisper_head", "cnn", "anomaly"])
def test_demo_yaml_shrinks_each_member_config(member, demo_manifest, tmp_path):
    plan = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert set(plan["members"]) == {"whisper_head", "cnn", "anomaly"}
    assert (CONFIGS.parent / plan["ensemble"]).is_file()
    entry = plan["members"][member]
    config = (CONFIGS.parent / entry["config"]).name
    args = [a.replace("{out}", str(tmp_path)) for a in entry["args"]]
    cli = lightning_cli(config, demo_manifest, tmp_path, "--trainer.logger=false", *args)
    assert cli.trainer.max_epochs == {"whisper_head": 8, "cnn": 20, "anomaly": 1}[member]
    if member == "whisper_head":  # heads and decoder from the encoder's cached features
        assert cli.model.hparams.lam == 0.5 and cli.model.hparams.freeze == "encoder"
        assert cli.model.model.config.source == "bundled:base"
        assert cli.model.feature_cache().root == tmp_path / "features"
    if member == "anomaly":  # the training-free member: pretrained moments, weights at fit
        assert type(cli.model).__name__ == "MomentAnomalyModule" and cli.model.hparams.load_weights


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
