"""The CutPaste multi-scale anomaly member: image features, CutPaste, density, module, checkpoints."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from sklearn.covariance import LedoitWolf

from anomaly.cutpaste import CutPaste, CutPaste3Way, CutPasteScar, make_augmentation
from anomaly.density import GaussianDensity, mahalanobis
from anomaly.features import multiscale_pool, spectrogram_image, spectrogram_images
from anomaly.model import AnomalyNet, AnomalyNetConfig, ResNet18, load_backbone
from anomaly.module import AnomalyModule
from ensemble.core.data import valid_samples
from ensemble.core.member import MemberOutput, load_member

TINY = {"image_size": 96, "width": 8, "head_dim": 32, "embed_dim": 16}  # 32 px into the ResNet


def tiny_module(**kwargs) -> AnomalyModule:
    n_classes = 3 if kwargs.get("variant") == "3way" else 2
    return AnomalyModule(AnomalyNet(AnomalyNetConfig(**TINY, n_classes=n_classes)), **kwargs)


# --- spectrogram image and multi-scale pooling -------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max", "resize"])
def test_pooled_image_is_3x256x256_from_768(pooling):
    assert multiscale_pool(torch.rand(2, 1, 768, 768), pooling).shape == (2, 3, 256, 256)


@pytest.mark.parametrize("pooling", ["avg", "max", "resize"])
def test_constant_image_stays_constant_to_the_edges(pooling):
    out = multiscale_pool(torch.full((1, 1, 768, 768), 0.37), pooling)
    torch.testing.assert_close(out, torch.full_like(out, 0.37), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_separable_pooling_equals_2d_pooling(pooling):
    x = torch.rand(2, 1, 96, 96)
    pool = F.avg_pool2d if pooling == "avg" else F.max_pool2d
    extra = {"count_include_pad": False} if pooling == "avg" else {}
    ref = torch.cat([pool(x, k, 3, (k - 3) // 2, **extra) for k in (7, 21, 63)], dim=1)
    torch.testing.assert_close(multiscale_pool(x, pooling), ref)


def test_spectrogram_rows_are_frequency_from_zero_hz():
    t = torch.arange(16000) / 16000
    img = spectrogram_image(torch.sin(2 * math.pi * 4000 * t), image_size=96)
    assert img.shape == (96, 96) and img.min() >= 0.0 and img.max() <= 1.0
    # 4 kHz is half of the 8 kHz Nyquist: the brightest row sits half-way down
    assert abs(int(img.mean(dim=1).argmax()) - 48) <= 2


def test_images_use_only_the_valid_samples():
    wave = torch.randn(2, 32000) * 0.1
    imgs = spectrogram_images(wave, torch.tensor([16000, 32000]), image_size=96)
    assert imgs.shape == (2, 1, 96, 96)
    torch.testing.assert_close(imgs[0, 0], spectrogram_image(wave[0, :16000], image_size=96))


def test_silence_is_black_and_mask_gives_samples():
    assert spectrogram_image(torch.zeros(8000), image_size=96).max() == 0
    mask = torch.arange(1500)[None] < torch.tensor([[50], [1500]])
    assert valid_samples(mask, 480000).tolist() == [16000, 480000]


# --- CutPaste ------------------------------------------------------------------------------


def test_patch_area_and_aspect_stay_in_range():
    g, cp = torch.Generator().manual_seed(0), CutPaste()
    boxes = [cp.sample(256, 256, g) for _ in range(1000)]
    for b in boxes:
        assert 0.02 <= b.h * b.w / 256**2 <= 0.15
        assert 0.3 <= b.h / b.w <= 3.3
        assert b.src_y + b.h <= 256 and b.src_x + b.w <= 256
        assert b.dst_y + b.h <= 256 and b.dst_x + b.w <= 256
        assert (b.src_y, b.src_x) != (b.dst_y, b.dst_x)
    aspects = [b.h / b.w for b in boxes]
    assert min(aspects) < 0.5 and max(aspects) > 2.0  # log-uniform: both ends are drawn


def test_cutpaste_copies_the_patch_to_the_destination_only():
    x = torch.rand(1, 3, 64, 64)
    cp = CutPaste(jitter=0.0)
    box = cp.sample(64, 64, torch.Generator().manual_seed(3))
    out = cp(x, torch.Generator().manual_seed(3))
    dst = (slice(None), slice(box.dst_y, box.dst_y + box.h), slice(box.dst_x, box.dst_x + box.w))
    src = (slice(None), slice(box.src_y, box.src_y + box.h), slice(box.src_x, box.src_x + box.w))
    torch.testing.assert_close(out[0][dst], x[0][src])
    changed = (out != x).any(dim=1)[0]
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[dst[1:]] = True
    assert not changed[~inside].any()


@pytest.mark.parametrize("aug", [CutPaste(), CutPasteScar(), CutPaste3Way()], ids=type)
def test_same_seed_same_batch_other_seed_other_batch(aug):
    x = torch.rand(4, 3, 64, 64)

    def run(seed):
        out = aug(x, torch.Generator().manual_seed(seed))
        return out[0] if isinstance(out, tuple) else out

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert not torch.equal(run(1)[:4], x)


def test_scar_is_a_thin_strip_and_3way_labels():
    g, scar = torch.Generator().manual_seed(0), CutPasteScar()
    for _ in range(200):
        _, inside = scar.mask(256, 256, g)
        assert 1 <= int(inside.sum()) <= 25 * 16 * 1.3  # at most length x thickness, plus edges
    imgs, labels = CutPaste3Way()(torch.rand(3, 3, 32, 32), g)
    assert imgs.shape == (6, 3, 32, 32) and labels.tolist() == [1, 1, 1, 2, 2, 2]


# --- density -------------------------------------------------------------------------------


def test_mahalanobis_matches_numpy():
    rng = np.random.default_rng(0)
    x, mean = rng.normal(size=(50, 8)), rng.normal(size=8)
    a = rng.normal(size=(8, 8))
    inv = np.linalg.inv(a @ a.T + np.eye(8))
    d = x - mean
    ref = np.sqrt(np.einsum("nd,de,ne->n", d, inv, d))
    got = mahalanobis(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(inv))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("n", [40, 10])  # more and fewer embeddings than dimensions
def test_density_matches_sklearn_ledoit_wolf(n):
    x = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
    density = GaussianDensity(16).fit(torch.from_numpy(x))
    squared = LedoitWolf().fit(x.astype(np.float64)).mahalanobis(x.astype(np.float64))
    np.testing.assert_allclose(density.score(torch.from_numpy(x)).numpy() ** 2, squared, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    cases = [
        (lambda: mahalanobis(torch.zeros(3), torch.zeros(3), torch.eye(3)), "x must be"),
        (lambda: mahalanobis(torch.zeros(2, 3), torch.zeros(4), torch.eye(4)), "sizes disagree"),
        (lambda: mahalanobis(torch.zeros(2, 3), torch.zeros(3), torch.zeros(3, 2)), "square"),
        (lambda: GaussianDensity(4).fit(torch.zeros(1, 4)), "at least 2"),
        (lambda: GaussianDensity(4).fit(torch.zeros(5, 3)), r"\(N, 4\)"),
        (lambda: multiscale_pool(torch.rand(1, 3, 768, 768)), r"\(B, 1, H, W\)"),
        (lambda: multiscale_pool(torch.rand(1, 1, 100, 100)), "multiples of 3"),
        (lambda: multiscale_pool(torch.rand(1, 1, 96, 96), "median"), "pooling must be"),
        (lambda: spectrogram_images(torch.rand(480000)), r"\(B, N\)"),
        (lambda: CutPaste(area=(0.2, 0.1)), "area"),
        (lambda: CutPaste()(torch.rand(3, 32, 32), torch.Generator()), r"\(B, C, H, W\)"),
        (lambda: make_augmentation("mixup"), "variant must be"),
        (lambda: AnomalyNetConfig(image_size=100), "image_size"),
        (lambda: AnomalyNetConfig(pooling="median"), "pooling"),
        (lambda: tiny_module(threshold_fpr=1.5), "threshold_fpr"),
        (lambda: AnomalyModule(AnomalyNet(AnomalyNetConfig(**TINY)), variant="3way"), "n_classes"),
        (lambda: tiny_module().predict_step({"wave": torch.zeros(16000)}), r"\(B, N\)"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    with pytest.raises(RuntimeError, match="not calibrated"):
        tiny_module().predict_step({"wave": torch.zeros(2, 16000)})


# --- network -------------------------------------------------------------------------------


def test_network_shapes_and_paper_defaults():
    net = AnomalyNet(AnomalyNetConfig(**TINY))
    out = net(torch.randn(2, 16000) * 0.1, torch.tensor([8000, 16000]))
    assert out.logits.shape == (2, 2) and out.embedding.shape == (2, 16)
    config = AnomalyNetConfig()
    assert (config.image_size, config.pooling, config.width, config.embed_dim) == (
        768,
        "avg",
        64,
        128,
    )
    assert AnomalyNet(config).image(torch.randn(1, 16000)).shape == (1, 3, 256, 256)


def test_load_backbone_checks_keys_and_shapes(tmp_path):
    source = ResNet18(8)
    state = {**source.state_dict(), "fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "tv.pt")  # torchvision layout, with its classifier
    net = AnomalyNet(AnomalyNetConfig(**TINY))
    load_backbone(net.backbone, tmp_path / "tv.pt")
    for k, v in source.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[k], v)
    with pytest.raises(ValueError, match="shapes"):
        load_backbone(ResNet18(16), tmp_path / "tv.pt")
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing"):
        load_backbone(net.backbone, tmp_path / "partial.pt")


# --- Lightning -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(demo, tmp_path_factory):
    """The demo clips with fixed splits: normal clips in train, val and test; emergencies in val/test."""
    from ensemble.core.aihub import import_aihub
    from ensemble.core.labels import load_taxonomy
    from ensemble.core.manifest import write_manifest

    df = import_aihub(demo[0])[0]
    emergency = df["label"].map(load_taxonomy().is_emergency)
    order = df.groupby(emergency).cumcount().to_numpy()
    normal_split = np.array(["train", "val", "train", "test"])[order % 4]
    df["split"] = np.where(emergency, np.where(order % 2 == 0, "val", "test"), normal_split)
    return write_manifest(df, tmp_path_factory.mktemp("anomaly") / "manifest.csv")


def datamodule(manifest):
    from ensemble.core.data import AudioDataModule

    return AudioDataModule(manifest, batch_size=4, train_classes="normal")


def trainer(**kwargs) -> pl.Trainer:
    return quiet_trainer(**kwargs)


@pytest.mark.parametrize("variant", ["cutpaste", "3way"])
def test_fast_dev_run(manifest, variant):
    module = tiny_module(variant=variant)
    trainer(fast_dev_run=True).fit(module, datamodule(manifest))
    assert module.density.fitted and module.global_step == 1


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory):
    """A tiny module after 2 steps and one validation, its checkpoint and its datamodule."""
    pl.seed_everything(0)
    module, dm = tiny_module(), datamodule(manifest)
    t = trainer(max_epochs=1, limit_train_batches=2, enable_checkpointing=False)
    t.fit(module, dm)
    path = tmp_path_factory.mktemp("ckpt") / "anomaly.ckpt"
    t.save_checkpoint(path)
    return module, path, dm, t


def test_validation_calibrates_and_logs_auc(trained):
    module, _, dm, t = trained
    assert {"val/auc", "val/pauc", "val/loss"} <= set(t.callback_metrics)
    assert math.isfinite(float(module.threshold)) and float(module.scale) > 0
    n_normal_train = len(dm.datasets["train"])  # train holds normal clips only
    assert int(module.density.n_fit) == n_normal_train


def test_predict_step_returns_member_output(trained):
    module, _, dm, _ = trained
    batch = next(iter(dm.test_dataloader()))
    out = module.predict_step(batch)
    assert isinstance(out, MemberOutput) and out.embedding.shape == (len(batch["label"]), 16)
    assert ((out.p_emergency >= 0) & (out.p_emergency <= 1)).all()
    assert torch.equal(out.vote, module.score(batch) > module.threshold)


def test_checkpoint_round_trip(trained):
    module, path, dm, _ = trained
    assert "density.precision" in torch.load(path, weights_only=True)["state_dict"]
    loaded = AnomalyModule.from_checkpoint(path)
    assert type(load_member(path)) is AnomalyModule
    batch = next(iter(dm.test_dataloader()))
    a, b = module.predict_step(batch), loaded.predict_step(batch)
    torch.testing.assert_close(a.p_emergency, b.p_emergency)
    torch.testing.assert_close(a.embedding, b.embedding)
    assert torch.equal(a.vote, b.vote) and torch.equal(loaded.threshold, module.threshold)
