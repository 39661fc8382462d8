"""The encoder-feature cache and the timestep head's losses, on a tiny random Whisper."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from helpers import quiet_trainer, tiny_whisper

from ensemble.core.data import AudioDataModule
from whisper_head.cache import FeatureCache, file_digest, weights_digest
from whisper_head.losses import frame_weights, pooled_class_loss, sample_frames, text_keep
from whisper_head.model import IGNORE, WhisperHeadModel
from whisper_head.module import WhisperHeadModule
from whisper_head.readout import clip_class_probs

LAYERED = tiny_whisper(layer_weights=True)


def _module(cache, **kwargs) -> WhisperHeadModule:
    kwargs = {"freeze": "all_but_head", "lam": 1.0, "cer_batches": 0, **kwargs}
    return WhisperHeadModule(WhisperHeadModel(LAYERED), feature_cache=str(cache), **kwargs)


@pytest.fixture
def data(demo_manifest):
    dm = AudioDataModule(demo_manifest, batch_size=2, num_workers=0)
    dm.setup("fit")
    return dm


def test_cached_batch_gives_the_uncached_logits(data, tmp_path):
    """The first pass computes and stores; the second reads back: both give the logits of the
    encoder run on the waveform, to float16's precision."""
    module = _module(tmp_path / "cache").eval()
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        direct = module.model.frame_logits(module._encode_wave(batch["wave"]))
        first = module.model.frame_logits(module._encode(batch))
        assert len(list((tmp_path / "cache").glob("*/*.npy"))) == len(batch["wave"])
        cache = module.feature_cache()
        hits = []
        cache.get = lambda key, get=cache.get: hits.append(key) or get(key)
        second = module.model.frame_logits(module._encode(batch))
    assert len(hits) == len(batch["wave"])  # read back, not recomputed
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(second, direct, rtol=1e-2, atol=1e-2)
    assert not torch.equal(second, direct)  # it really went through float16
    # training reads only the timesteps it scores, and the last layer for the decoder
    index = torch.tensor([[3, 1, 7], [0, 2, 4]])[: len(batch["wave"])]
    with torch.no_grad():
        picked = module._encode(batch, index)
        assert picked.states[0].shape[1] == 3 and picked.hidden.shape[1] == 1500
        torch.testing.assert_close(
            module.model.frame_logits(picked, index),
            second.gather(1, index[..., None].expand(-1, -1, second.shape[-1])),
        )
        assert module._encode(batch, index, hidden=False).hidden is None


def test_changed_audio_or_weights_miss_the_cache(data, tmp_path):
    dataset = data.datasets["val"]
    module = _module(tmp_path / "cache")
    assert module.build_feature_cache(dataset) == len(dataset)
    assert module.build_feature_cache(dataset) == 0  # all there
    # a changed file: its windows get new keys, the others are still found
    path = tmp_path / "clip.wav"
    shutil.copy(dataset.clips["path"].iloc[0], path)
    cache = module.feature_cache()
    before = cache.key(path, 0, dataset.n_samples)
    wave, sr = sf.read(path, dtype="float32")
    sf.write(path, wave * 0.5, sr)
    assert cache.key(path, 0, dataset.n_samples) != before
    # other weights (a new checkpoint), other layers or another precision: another tag
    other = _module(tmp_path / "cache")
    with torch.no_grad():
        other.model.encoder.layers[0].fc1.weight.add_(1e-3)
    assert weights_digest(other.model.encoder) != weights_digest(module.model.encoder)
    assert other.feature_cache().tag != cache.tag
    assert other.build_feature_cache(dataset) == len(dataset)
    digest = weights_digest(module.model.encoder)
    tags = {
        FeatureCache(tmp_path, digest, layers, precision).tag
        for layers in ((0, 1), (1,))
        for precision in ("fp32", "bf16")
    }
    assert len(tags) == 4


def test_a_killed_build_resumes(data, tmp_path):
    dataset = data.datasets["train"]
    module = _module(tmp_path / "cache")
    module.build_feature_cache(dataset)
    entries = sorted((tmp_path / "cache").glob("*/*.npy"))
    entries[0].unlink()
    assert module.build_feature_cache(dataset) == 1
    assert not list((tmp_path / "cache").glob("*/*.tmp.npy"))


def test_trainable_encoder_has_no_cache(tmp_path):
    assert _module(tmp_path, freeze="none").feature_cache() is None
    assert _module(tmp_path).feature_cache() is not None
    assert WhisperHeadModule(WhisperHeadModel(LAYERED)).feature_cache() is None


def test_fit_from_the_cache(data, tmp_path):
    """A fit builds the cache before its first epoch and trains the head from it; the
    class-balanced weights come from the training split."""
    # the decoder's text loss keeps every everyday line and half the emergency ones
    kw = {"lam": 0.5, "freeze": "encoder", "speech_text": 0.5, "normal_speech_text": 1.0}
    kw["head_average"] = 0.9  # validation and the fitted module hold the head's average
    module = _module(tmp_path / "cache", train_frames=64, clip_loss=1.0, class_balance=0.5, **kw)
    head = [p.clone() for p in module.model.head.parameters()]
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    n_windows = len(data.datasets["train"]) + len(data.datasets["val"])
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == n_windows
    assert module.frame_weights is not None and module.frame_weights[0] == 0
    assert any(
        not torch.equal(a, b) for a, b in zip(head, module.model.head.parameters(), strict=True)
    )
    assert {"train/clip_loss", "train/text_loss", "val/event_timestep_acc"} <= set(
        trainer.callback_metrics
    )
    # every window cached: the loaders stop reading audio, the labels stay the same
    train = data.datasets["train"]
    assert not train.read_audio and train[0]["wave"].shape == (0,)
    train.read_audio = True
    item = train[0]
    train.read_audio = False
    assert torch.equal(item["mask"], train[0]["mask"])
    assert torch.equal(item["frame_labels"], train[0]["frame_labels"])


def test_top_blocks_train_on_the_cache_below_them(data, tmp_path):
    """`top_blocks`: the encoder's last block and final norm train (at `top_lr`) on the cached
    states under them; the blocks below stay as cached, and after the fit the states rebuilt from
    the cache are those the trained encoder gives on the waveform (float16's precision)."""
    module = _module(tmp_path / "cache", freeze="encoder", lam=0.5, top_blocks=1, top_lr=1e-2)
    assert not module.encoder_trainable and module.feature_cache() is not None
    encoder = module.model.encoder
    top, below = encoder.layers[-1], encoder.conv1
    before = [p.detach().clone() for p in (*top.parameters(), *below.parameters())]
    digests = weights_digest(encoder), weights_digest(encoder, module._top_names())
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    lrs = sorted(g["lr"] for g in trainer.optimizers[0].param_groups)
    assert 1e-2 in lrs and len(lrs) == 3  # head, top blocks, decoder
    n_top = len(list(top.parameters()))
    after = [p.detach() for p in (*top.parameters(), *below.parameters())]
    assert any(not torch.equal(a, b) for a, b in zip(before[:n_top], after[:n_top], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before[n_top:], after[n_top:], strict=True))
    # the cache's key is of the weights under the trained blocks: the same after the fit
    assert weights_digest(encoder) != digests[0]
    assert weights_digest(encoder, module._top_names()) == digests[1] != digests[0]
    module.eval()
    data.datasets["val"].read_audio = True  # the fit cached every window: the loaders stopped
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        cached = module._encode(batch)
        fresh = module._encode_wave(batch["wave"])
    torch.testing.assert_close(cached.hidden.float(), fresh.hidden.float(), rtol=1e-2, atol=1e-2)


def test_top_blocks_stay_after_top_epochs(data, tmp_path):
    """With `top_epochs` 0 the blocks never train (the head still does)."""
    module = _module(tmp_path / "cache", freeze="encoder", top_blocks=1, top_lr=1e-2, top_epochs=0)
    top = [p.detach().clone() for p in module.model.encoder.layers[-1].parameters()]
    head = [p.detach().clone() for p in module.model.head.parameters()]
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=data)
    after = module.model.encoder.layers[-1].parameters()
    assert all(torch.equal(a, b) for a, b in zip(top, after, strict=True))
    moved = zip(head, module.model.head.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in moved)


def test_top_blocks_need_a_frozen_encoder_and_a_cached_state_under_them(tmp_path):
    with pytest.raises(ValueError, match="top_blocks"):
        _module(tmp_path, freeze="none", top_blocks=1)
    with pytest.raises(ValueError, match="top_blocks"):
        _module(tmp_path, freeze="encoder", top_blocks=5)
    model = WhisperHeadModel(tiny_whisper(layer_weights=True, layers=[1]))  # caches layer 1 only
    with pytest.raises(ValueError, match="not cached"):
        model.recompute_top(torch.zeros(1, 1, 1500, 16), 1)


def test_a_fit_that_builds_the_cache_trains_as_one_that_finds_it(demo_manifest, tmp_path):
    """Building the cache draws nothing from the global generator, so the second fit (every
    window cached) ends with the first's weights."""

    def fit() -> list[torch.Tensor]:
        pl.seed_everything(0)
        dm = AudioDataModule(demo_manifest, batch_size=2, num_workers=0)
        module = _module(tmp_path / "cache", train_frames=32, clip_loss=1.0)
        trainer = quiet_trainer(
            max_epochs=1, limit_train_batches=3, limit_val_batches=1, enable_checkpointing=False
        )
        trainer.fit(module, datamodule=dm)
        return [p.detach().clone() for p in module.model.head.parameters()]

    built, found = fit(), fit()
    assert all(torch.equal(a, b) for a, b in zip(built, found, strict=True))


def test_bf16_features_from_the_cache_at_evaluation(data, tmp_path):
    """bfloat16 encoder features (another cache entry than float32's) feed the head under
    the evaluation's autocast."""
    module = _module(tmp_path / "cache", cpu_bf16=True).eval()
    module.log = lambda *args, **kwargs: None  # no trainer here
    assert module.feature_cache().tag != _module(tmp_path / "cache").feature_cache().tag
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        module._step(batch, "val")  # computes and stores
        loss, _, probs = module._step(batch, "val")  # reads back
    assert torch.isfinite(loss) and probs.shape[:2] == batch["mask"].shape


def test_file_digest_is_of_the_content(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 10)
    assert file_digest(a) == file_digest(b)
    b.write_bytes(b"y" * 11)
    assert file_digest(a) != file_digest(b)


def test_sample_frames_keeps_the_event_first():
    emergency = torch.tensor([False, True, False])
    targets = torch.full((2, 10), 2)
    targets[0, 3:6] = 1
    targets[1, 8:] = IGNORE  # padding
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    index = sample_frames(targets, mask, emergency, 4)
    assert index.shape == (2, 4)
    assert {3, 4, 5} <= set(index[0].tolist())
    assert not {8, 9} & set(index[1].tolist())


def test_pooled_class_loss_reads_the_vote_evidence():
    """The loss is -log of the class probability `clip_class_probs` gives the window."""
    torch.manual_seed(0)
    emergency = torch.tensor([False, True, True, False, False])
    logits = torch.randn(2, 6, 5)
    targets = torch.tensor([[3, 3, 1, 1, 3, IGNORE], [4, 4, 3, 3, 4, 4]])
    labels = torch.tensor([1, 4])
    loss = pooled_class_loss(logits, targets, labels, emergency)
    probs = logits.softmax(-1)
    # window 0 (emergency): pooled over its emergency timesteps, as the vote's class would be
    em_probs = clip_class_probs(
        probs[:1, 2:4], torch.ones(1, 2, dtype=torch.bool), [1, 2], torch.tensor([True])
    )
    normal = clip_class_probs(
        probs[1:], torch.ones(1, 6, dtype=torch.bool), [1, 2], torch.tensor([False])
    )
    expected = -(em_probs[0, 0].log() + normal[0, 3].log()) / 2
    torch.testing.assert_close(loss, expected)


def test_text_keep_draws_each_kind_of_window_at_its_share():
    texts, em = ["help!", "", "tea?", "fire!"] * 500, [True, False, False, True] * 500
    torch.manual_seed(0)
    keep = np.array(text_keep(texts, em, 0.25, 0.0, 1.0)).reshape(-1, 4)
    assert keep[:, 2].all() and not keep[:, 1].any()  # everyday speech always, silence never
    assert 0.2 < keep[:, [0, 3]].mean() < 0.3  # emergency speech at 0.25
    torch.manual_seed(0)
    same = np.array(text_keep(texts, em, 0.25, 0.0)).reshape(-1, 4)  # None: speech's share
    assert 0.2 < same[:, 2].mean() < 0.3 and (same[:, 0] == keep[:, 0]).all()
    with pytest.raises(ValueError, match="shares"):
        _module(Path("unused"), normal_speech_text=1.5)


def test_frame_weights_balance_the_classes():
    w = frame_weights(torch.tensor([0, 100, 25, 0]), power=1.0)
    assert w[0] == 0 and w[3] == 0
    assert torch.isclose(w[2], 4 * w[1]) and torch.isclose(w[1:3].mean(), torch.tensor(1.0))
    assert torch.allclose(frame_weights(torch.tensor([0, 100, 25]), 0.0)[1:], torch.ones(2))


def test_layer_subset_and_cache_states():
    config = tiny_whisper(layer_weights=True, layers=(0,))
    model = WhisperHeadModel(config).eval()
    assert model.head_layers == (0,) and model.cached_layers == (0, 1)
    encoded = model.encode(torch.randn(1, 80, 3000))
    states = model.cache_states(encoded)
    assert states.shape == (1, 2, 1500, 16)
    back = model.from_cache(states)
    assert torch.equal(back.hidden, encoded.hidden) and torch.equal(back.states[0], states[:, 0])
    index = torch.tensor([[0, 5, 7]])
    torch.testing.assert_close(
        model.frame_logits(encoded, index), model.frame_logits(encoded)[:, [0, 5, 7]]
    )
    with pytest.raises(ValueError, match="hidden states"):
        WhisperHeadModel(tiny_whisper(dropout=0.1, layer_weights=True, layers=(5,)))
    np.testing.assert_equal(model.cached_layers, (0, 1))


def test_lam_only_scales_separate_gradients_with_a_frozen_encoder(data, tmp_path):
    """With the encoder frozen the head and the decoder share no parameter, and AdamW's step does
    not depend on a gradient's scale: one step at lam 0.2 and at 0.8 moves every weight alike."""
    batch = next(iter(data.train_dataloader()))
    after = []
    for lam in (0.2, 0.8):
        torch.manual_seed(0)
        module = _module(tmp_path / "cache", freeze="encoder", lam=lam, language=None)
        module.log = lambda *args, **kwargs: None
        opt = module.configure_optimizers()
        module._step(batch, "val")[0].backward()  # "val": no dropout draws differ
        opt.step()
        after.append({n: p.detach().clone() for n, p in module.named_parameters()})
    torch.manual_seed(0)
    start = _module(tmp_path).state_dict()
    step = [{n: p - start[n] for n, p in a.items()} for a in after]
    assert step[0]["model.head.layers.1.weight"].abs().max() > 0
    assert any(".decoder." in n and step[0][n].abs().max() > 0 for n in step[0])
    # the same step but where a gradient is as small as AdamW's eps (rare tokens' embeddings)
    a, b = (torch.cat([d.flatten() for d in s.values()]) for s in step)
    assert (a - b).norm() < 0.05 * a.norm()


def test_clip_head_reads_the_picked_timesteps():
    from whisper_head.losses import block_cross_entropy, event_pick
    from whisper_head.readout import block_probs, peak_pick

    config = tiny_whisper(layer_weights=True, layer_norm=True, clip_head=True)
    model = WhisperHeadModel(config).eval()
    encoded = model.encode(torch.randn(2, 80, 3000))
    pick = torch.zeros(2, 1500, dtype=torch.bool)
    pick[0, 100:200] = True
    logits = model.clip_logits(encoded, pick)
    assert logits.shape == (2, 20)
    # row 1 picks nothing: every timestep; changing what row 0 does not pick changes nothing
    torch.testing.assert_close(logits[1], model.clip_logits(encoded, torch.ones_like(pick))[1])
    states = tuple(t.clone() for t in encoded.states)
    for t in states:  # noise outside row 0's pick, and inside row 1's (all of it)
        t[:, 300:] += torch.randn_like(t[:, 300:])
    moved = model.clip_logits(encoded._replace(states=states), pick)
    torch.testing.assert_close(moved[0], logits[0])
    assert not torch.allclose(moved[1], logits[1])

    emergency = torch.zeros(20, dtype=torch.bool)
    emergency[1:15] = True
    vote = torch.tensor([True, False])
    probs = block_probs(logits, vote, emergency)
    assert probs.shape == (2, 19)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    assert probs[0, 14:].sum() == 0 and probs[1, :14].sum() == 0
    p = torch.zeros(2, 1500)
    p[0, 10:20] = 0.9
    p[0, 20:30] = 0.3
    mask = torch.ones(2, 1500, dtype=torch.bool)
    picked = peak_pick(p, mask, vote)
    assert picked[0].nonzero().flatten().tolist() == list(range(10, 20)) and picked[1].all()
    # the training pick and loss: an emergency window's event, a normal window's known steps
    targets = torch.tensor([[16, 3, 3, 16], [16, IGNORE, 17, 17]])
    labels = torch.tensor([3, 17])
    assert event_pick(targets, labels, emergency).tolist() == [
        [False, True, True, False],
        [True, False, True, True],
    ]
    loss = block_cross_entropy(logits, labels, emergency)
    expected = -(logits[0, 1:15].log_softmax(0)[2] + logits[1, 15:].log_softmax(0)[17 - 15]) / 2
    torch.testing.assert_close(loss, expected)
