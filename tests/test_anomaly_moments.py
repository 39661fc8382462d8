"""Tests of the training-free moment member: moments, bank, fit, checkpoints and prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import quiet_trainer

from anomaly.density import coreset, knn_distance, l2_normalise
from anomaly.moment_module import MomentAnomalyModule
from anomaly.moments import MomentNet, MomentNetConfig, pool_image
from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.data import AudioDataModule
from ensemble.core.efficientnet import load_pretrained
from ensemble.core.member import MemberOutput, load_member

SECONDS = 8.0  # short windows keep the backbone cheap


def _data(manifest, **kwargs) -> AudioDataModule:
    args = dict(batch_size=4, num_workers=0, train_classes="normal", window_s=SECONDS)
    return AudioDataModule(manifest, **{**args, **kwargs})


@pytest.fixture(scope="module")
def fitted(demo_manifest, tmp_path_factory):
    """A member fitted on the demo data with the ImageNet weights, and its checkpoint."""
    out = tmp_path_factory.mktemp("moments")
    module = MomentAnomalyModule(MomentNet(MomentNetConfig(bank_size=200)))
    trainer = quiet_trainer(out, max_epochs=1, num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(module, datamodule=_data(demo_manifest))
    path = out / "moments.ckpt"
    trainer.save_checkpoint(path)
    return module, trainer, path


def _batch(n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    wave = 0.05 * torch.randn(n, int(SECONDS * SAMPLE_RATE), generator=g)
    mask = torch.ones(n, int(SECONDS * 50), dtype=torch.bool)
    mask[0, 200:] = False  # the first window: 4 s of real audio
    return {"wave": wave, "mask": mask}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="stride"):
        MomentNetConfig(stride=2)
    with pytest.raises(ValueError, match="pooling"):
        MomentNetConfig(pooling="median")
    with pytest.raises(ValueError, match="stage"):
        MomentNetConfig(stage=7)


def test_pool_image_keeps_full_resolution() -> None:
    img = torch.rand(1, 1, 21, 30)
    assert torch.equal(pool_image(img, "resize", 1), img.expand(-1, 3, -1, -1))
    avg = pool_image(img, "avg", 1)
    assert avg.shape == (1, 3, 21, 30)
    assert pool_image(img, "max", 1)[0, 0, 5, 5] == img[0, 0, 2:9, 2:9].max()
    assert pool_image(torch.rand(1, 1, 21, 30), "avg", 3).shape == (1, 3, 7, 10)


def test_moments_follow_the_valid_audio_and_the_backbone_stays_frozen() -> None:
    net = MomentNet(MomentNetConfig())
    net.train()
    assert not net.backbone.training and net.training
    assert not any(p.requires_grad for p in net.backbone.parameters())
    b = _batch()
    n_valid = b["mask"].sum(dim=1) * (b["wave"].shape[1] // b["mask"].shape[1])
    moments = net.moments(b["wave"], n_valid)
    # 8 s -> 200 image columns -> ceil(200 / 16) = 13 map columns; 4 s -> 100 -> 7
    assert [tuple(m.shape) for m in moments] == [(7, 112), (13, 112), (13, 112)]
    before = net.backbone._bn0.running_mean.clone()
    net.moments(b["wave"])
    assert torch.equal(before, net.backbone._bn0.running_mean)


def test_bank_is_a_coreset_of_unit_moments_and_scores_far_rows_higher() -> None:
    net = MomentNet(MomentNetConfig(bank_size=10, stage=0))  # 16 channels
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.r_[rng.normal(0, 0.01, (200, 16)) + 1, np.eye(16)[:3] * -5]).float()
    net.fill_bank(x, seed=0)
    assert int(net.n_bank) == 10
    assert torch.allclose(net.bank.norm(dim=1), torch.ones(10))
    assert {200, 201, 202} <= set(coreset(l2_normalise(x).numpy(), 10).tolist())
    near, far = net.score_moments([x[:5]]), net.score_moments([-x[:5]])
    assert near.shape == (1,) and near.item() < far.item()
    q = l2_normalise(x[:4])
    assert torch.allclose(knn_distance(q, q, k=1), torch.zeros(4), atol=1e-3)


def test_fit_fills_the_bank_and_sets_the_threshold(fitted) -> None:
    module, trainer, _ = fitted
    assert 0 < int(module.model.n_bank) <= 200
    assert not torch.isnan(module.threshold) and module.scale > 0
    assert {"val/auc", "val/pauc"} <= set(trainer.callback_metrics)
    assert not module.model.backbone.training
    reference = load_pretrained().state_dict()
    state = module.model.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())  # weights and BN stats


def test_checkpoint_round_trip_predicts_the_same(fitted) -> None:
    module, _, path = fitted
    assert torch.load(path, weights_only=True)["model_config"]["bank_size"] == 200
    loaded = load_member(path)
    assert isinstance(loaded, MomentAnomalyModule)
    b = _batch(seed=1)
    module.eval()
    a, c = module.predict_step(b), loaded.predict_step(b)
    assert isinstance(a, MemberOutput)
    assert a.p_emergency.shape == (3,) and a.vote.shape == (3,) and a.vote.dtype == torch.bool
    assert a.embedding.shape == (3, 112)
    assert ((a.p_emergency >= 0) & (a.p_emergency <= 1)).all()
    assert torch.equal(a.p_emergency, c.p_emergency) and torch.equal(a.vote, c.vote)
    assert torch.equal(a.p_emergency > 0.5, a.vote)


def test_fit_without_validation_still_calibrates(demo_manifest, tmp_path) -> None:
    module = MomentAnomalyModule(MomentNet(MomentNetConfig(stage=0)), load_weights=False)
    trainer = quiet_trainer(
        None, max_epochs=1, limit_train_batches=1, limit_val_batches=0, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=_data(demo_manifest, window_s=4.0))
    assert int(module.model.n_bank) > 0 and not torch.isnan(module.threshold)
    assert module.calibration["threshold"] == float(module.threshold)


def test_uncalibrated_member_refuses_to_predict() -> None:
    module = MomentAnomalyModule(MomentNet(MomentNetConfig()))
    with pytest.raises(RuntimeError, match="not calibrated"):
        module.predict_step(_batch())
    with pytest.raises(ValueError, match="threshold_fpr"):
        MomentAnomalyModule(MomentNet(MomentNetConfig()), threshold_fpr=1.0)


def test_a_tone_burst_scores_higher_than_the_clip_itself(fitted, demo_manifest) -> None:
    module, _, _ = fitted
    dm = _data(demo_manifest)
    dm.setup()
    train = dm.datasets["train"]
    item = train[0]
    wave = item["wave"].clone()
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    burst = 0.8 * torch.sin(2 * math.pi * (1500 + 1500 * t) * t)  # a loud 1 s siren-like sweep
    wave[2 * SAMPLE_RATE : 3 * SAMPLE_RATE] += burst
    batch = {"wave": torch.stack([item["wave"], wave]), "mask": item["mask"][None].repeat(2, 1)}
    scores = module.score(batch)
    assert scores[1] > scores[0]
