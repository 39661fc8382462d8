"""The mel-CNN member: front end against Whisper's, augmentations, training, checkpoints, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import whisper
from helpers import quiet_trainer

from cnn.augment import mixup, spec_augment
from cnn.model import CNNOutput, LogMel, MelCNN, MelCNNConfig
from cnn.module import CNNModule, crop_starts, event_crops, pool_crops, vote_class
from cnn.relevance import explain_files, relevance_map
from cnn.relevance import main as relevance_main
from ensemble.core.audio import N_SAMPLES
from ensemble.core.data import AudioDataModule
from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberOutput, load_member

ROOT = Path(__file__).resolve().parents[1]
TINY = MelCNNConfig(widths=(4, 8), convs_per_block=1, emb_dim=8, dropout=0.0)


def _module(**kwargs) -> CNNModule:
    return CNNModule(MelCNN(TINY), **kwargs)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **kwargs)


def _data(manifest, **kwargs) -> AudioDataModule:
    return AudioDataModule(manifest, batch_size=4, num_workers=0, **kwargs)


def test_log_mel_matches_whisper():
    """Mel power equals openai-whisper's before its log and clamping (same filters and STFT)."""
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((0.1 * rng.standard_normal(16000 * 3)).astype(np.float32))
    floor = 1e-6
    ours = LogMel(floor=floor)(wave[None])[0]  # (F, T + 1)
    ref = whisper.log_mel_spectrogram(wave)  # (F, T): log10, clamped to max - 8, (x + 4) / 4
    ours_whisper = torch.log10((ours.exp() - floor).clamp(min=1e-10))[:, :-1]
    ours_whisper = (torch.maximum(ours_whisper, ours_whisper.max() - 8.0) + 4.0) / 4.0
    assert ours_whisper.shape == ref.shape == (80, 300)
    torch.testing.assert_close(ours_whisper, ref, atol=2e-4, rtol=1e-4)


def test_model_shapes_and_named_outputs():
    model = MelCNN(TINY)
    out = model(torch.randn(3, N_SAMPLES))
    assert out.logits.shape == (3, 19) and out.embedding.shape == (3, 8)
    mel = model.mel(torch.randn(2, N_SAMPLES))
    assert mel.shape == (2, 80, 3001)
    model.eval()
    wave = torch.randn(2, N_SAMPLES)
    torch.testing.assert_close(model(wave).logits, model.forward_mel(model.mel(wave)).logits)


def test_padding_barely_changes_a_clips_prediction():
    """Time pooling ignores padding: a 7 s clip scores about the same alone and padded to 30 s.

    Not exactly: the STFT and the convolutions see across the end of the audio.
    """
    torch.manual_seed(0)
    model = MelCNN(TINY).eval()
    wave = torch.randn(1, 16000 * 7)
    padded = torch.nn.functional.pad(wave, (0, N_SAMPLES - wave.shape[1]))
    n = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        alone, with_pad = model(wave, n).logits, model(padded, n).logits
        ignored = model(padded).logits  # without lengths the padding is pooled too
    assert (alone - with_pad).abs().max() < 0.1 * (alone - ignored).abs().max()


def test_event_crops_hold_the_event_and_stay_in_the_audio():
    torch.manual_seed(0)
    B, T = 64, 1500
    wave = torch.arange(N_SAMPLES, dtype=torch.float32).repeat(B, 1)  # value = sample index
    labels = torch.zeros(B, T, dtype=torch.long)
    labels[:, :1200] = 15  # the background's class (indoor) around the event
    labels[:, 900:950] = 8  # an event at 18-19 s
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, :1200] = True  # 24 s of audio
    crops = event_crops(wave, labels, torch.full((B,), 8), mask, crop_s=10.0)
    assert crops.shape == (B, 160000)
    first, last = crops[:, 0], crops[:, -1]
    assert (torch.diff(crops, dim=1) == 1).all()  # contiguous pieces
    assert (first >= 0).all() and (last < 1200 * 320).all()  # inside the audio
    assert ((first <= 950 * 320) & (last >= 900 * 320)).all()  # overlapping the event
    assert first.unique().numel() > 10  # at random places


def test_crop_starts_cover_the_audio_and_stay_inside_it():
    """10 s crops every 5 s: the last one ends with the audio; a short window is one crop."""
    s = 16000
    n_valid = torch.tensor([30 * s, 12 * s, 10 * s, 4 * s, 25 * s])
    starts, real = crop_starts(n_valid, crop=10 * s, hop=5 * s)
    assert starts.shape == real.shape == (5, 5)
    want = [[0, 5, 10, 15, 20], [0, 2], [0], [0], [0, 5, 10, 15]]
    for row, (st, r, n) in enumerate(zip(starts, real, n_valid, strict=True)):
        assert (st[r] / s).tolist() == want[row], row
        assert (st[~r] == 0).all()
        ends = st[r] + 10 * s
        if n >= 10 * s:  # every crop inside the audio, the last one ending with it
            assert (ends <= n).all() and ends[-1] == n
    with pytest.raises(ValueError):
        crop_starts(n_valid, crop=0, hop=1)


def test_pool_crops_keeps_class_evidence_consistent_with_the_vote():
    tax = load_taxonomy(None)
    em = torch.zeros(19, dtype=torch.bool)
    em[[i - 1 for i in tax.emergency_ids]] = True
    torch.manual_seed(0)
    probs = torch.randn(3, 4, 19).mul(3).softmax(dim=-1)
    real = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    probs[1, 2:] = 0.0  # not real: must not count
    class_probs, p, best = pool_crops(probs, real, tax)
    p_crop = probs[..., em].sum(-1)
    for b in range(3):
        assert p[b] == p_crop[b, real[b]].max() and real[b, best[b]]
        torch.testing.assert_close(class_probs[b, em], probs[b, best[b], em])
        normal = probs[b, real[b]][:, ~em]
        normal = (normal / normal.sum(-1, keepdim=True)).mean(0) * (1 - p[b])
        torch.testing.assert_close(class_probs[b, ~em], normal)
    torch.testing.assert_close(class_probs.sum(-1), torch.ones(3))
    torch.testing.assert_close(class_probs[:, em].sum(-1), p)
    # a window with one crop is that crop
    torch.testing.assert_close(class_probs[2], probs[2, 0])
    # the predicted class lies on the vote's side
    vote = torch.tensor([True, False, True])
    pred = vote_class(class_probs, vote, tax)
    assert em[pred].tolist() == vote.tolist()
    assert pred[1] == class_probs[1].masked_fill(em, -1).argmax()


class LoudnessCNN(MelCNN):
    """Fire's logit 80 * (mean power of the audio it is given - 0.2) against indoor's 0, the other
    classes out: a loud sound is an alarm."""

    def forward(self, wave, n_valid=None):
        n = torch.full((len(wave),), wave.shape[1]) if n_valid is None else n_valid
        valid = torch.arange(wave.shape[1]) < n[:, None]
        power = (wave.square() * valid).sum(1) / n
        logits = torch.full((len(wave), 19), -30.0)
        logits[:, 7] = 80 * (power - 0.2)  # fire
        logits[:, 14] = 0.0  # indoor
        return CNNOutput(logits, power[:, None].expand(-1, TINY.emb_dim))


def test_crop_scoring_finds_a_short_event_that_a_whole_window_dilutes():
    """A 3 s loud sound in 30 s of quiet: whole-window scoring averages it away, crops do not."""
    s = 16000
    wave = torch.full((3, 30 * s), 0.05)  # power 0.0025
    wave[0, 17 * s : 20 * s] = 1.0  # power 1 for 3 s: about 0.1 in the window, 0.3 in a 10 s crop
    wave[1, 12 * s :] = 1.0  # loud padding after 12 s of quiet audio: never scored
    n_valid = torch.tensor([30 * s, 12 * s, 7 * s])  # the third: shorter than a crop
    mask = torch.arange(1500) < (n_valid // 320)[:, None]
    batch = {"wave": wave, "mask": mask}
    out = {}
    for scoring in ("windows", "crops"):
        module = CNNModule(LoudnessCNN(TINY), scoring=scoring, crop_s=10.0).eval()
        out[scoring] = module.predict_step(batch)
        assert isinstance(out[scoring], MemberOutput)
        assert out[scoring].class_probs.shape == (3, 19) and out[scoring].embedding.shape == (3, 8)
    windows, crops = out["windows"], out["crops"]
    assert windows.p_emergency[0] < 0.5 < 0.99 < crops.p_emergency[0]
    assert crops.vote.tolist() == [True, False, False] and not windows.vote.any()
    assert crops.class_probs[0].argmax() == 7  # the class of the loud crop
    assert crops.embedding[0, 0] == pytest.approx(0.3 + 0.7 * 0.0025, rel=1e-4)  # the loud crop's
    assert crops.p_emergency[1] < 0.01 and crops.p_emergency[2] < 0.01
    torch.testing.assert_close(crops.p_emergency[2], windows.p_emergency[2])  # one crop = window
    with pytest.raises(ValueError, match="crop_s"):
        CNNModule(MelCNN(TINY), scoring="crops", crop_s=None)
    with pytest.raises(ValueError, match="scoring"):
        CNNModule(MelCNN(TINY), scoring="frames")


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="widths"):
        MelCNNConfig(widths=())
    with pytest.raises(ValueError, match="dropout"):
        MelCNNConfig(dropout=1.0)
    with pytest.raises(ValueError, match="classes"):
        CNNModule(MelCNN(MelCNNConfig(n_classes=5, widths=(4,), emb_dim=4)))


def test_spec_augment_masks_bands_with_the_mean_and_follows_its_generator():
    mel = torch.randn(4, 80, 500)
    a = spec_augment(mel, generator=torch.Generator().manual_seed(1))
    b = spec_augment(mel, generator=torch.Generator().manual_seed(1))
    c = spec_augment(mel, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = a != mel
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    assert torch.equal(a[changed], fill[changed])
    # 2 bands of <= 10 bins and 2 spans of <= 100 frames: at most this share is masked
    assert changed.float().mean(dim=(1, 2)).max() <= 1 - (1 - 20 / 80) * (1 - 200 / 500) + 1e-6
    assert changed.any()


def test_mixup_is_a_convex_combination():
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.arange(6)
    mixed, y_b, lam = mixup(x, y, alpha=0.4)
    assert 0.0 <= lam <= 1.0
    perm = y_b  # labels are 0..5, so y_b is the permutation itself
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    with pytest.raises(ValueError):
        mixup(x, y, alpha=0.0)


def test_fast_dev_run_trains_and_tests(demo_manifest, tmp_path):
    module = _module(mixup_alpha=0.2)
    trainer = _trainer(tmp_path, fast_dev_run=True)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer.fit(module, datamodule=_data(demo_manifest))
    after = list(module.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert module.class_weight.shape == (19,) and (module.class_weight > 0).all()


def test_test_stage_writes_sklearn_metrics_and_confusion(demo_manifest, tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    module = _module()
    data = _data(demo_manifest)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data)
    out = Path(trainer.log_dir)
    metrics = __import__("json").loads((out / "test_metrics.json").read_text())
    assert {"acc", "binary_acc", "vote_acc", "auc", "pauc", "macro_f1", "confusion"} <= set(metrics)
    assert np.asarray(metrics["confusion"]).sum() == metrics["n"] == len(data.datasets["test"])
    assert (out / "test_confusion.png").stat().st_size > 10_000


@pytest.mark.parametrize("scoring", ["windows", "crops"])
def test_checkpoint_rebuilds_and_predicts_identically(demo_manifest, tmp_path, scoring):
    module = _module(threshold=0.3, scoring=scoring)
    data = _data(demo_manifest, predict_split="val")
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "cnn.ckpt"
    trainer.save_checkpoint(path)
    batch = next(iter(data.predict_dataloader()))
    module.eval()
    with torch.no_grad():
        want = module.predict_step(batch)
        for loaded in (CNNModule.from_checkpoint(path), load_member(path)):
            got = loaded.predict_step(batch)
            assert isinstance(got, MemberOutput) and loaded.hparams.threshold == 0.3
            assert loaded.hparams.scoring == scoring
            for name in ("p_emergency", "vote", "class_probs", "embedding"):
                assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert want.class_probs.shape == (4, 19)
    torch.testing.assert_close(want.class_probs.sum(dim=1), torch.ones(4))
    assert torch.equal(want.vote, want.p_emergency > 0.3)


def test_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.ckpt"):
        CNNModule.from_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_member(tmp_path / "missing.ckpt")


def test_relevance_maps_ig_and_lrp():
    torch.manual_seed(0)
    model = MelCNN(TINY).eval()
    short = relevance_map(model, torch.randn(16000 * 5), method="ig", steps=8)
    assert short.mel.shape == short.relevance.shape == (80, 501)  # frames centred in the 5 s
    # integrated gradients are complete: over a full window they sum to f(x) - f(silence)
    wave = torch.randn(N_SAMPLES)
    ig = relevance_map(model, wave, method="ig", steps=64)
    assert ig.relevance.shape == (80, 3001)
    mel = model.mel(wave[None])
    silence = torch.full_like(mel, np.log(TINY.log_floor))
    with torch.no_grad():
        k = ig.target - 1
        gap = (model.forward_mel(mel).logits[0, k] - model.forward_mel(silence).logits[0, k]).item()
    assert ig.relevance.sum() == pytest.approx(gap, rel=0.05, abs=1e-3)
    assert ig.target == int(ig.probs.argmax()) + 1
    lrp = relevance_map(model, wave, method="lrp", target=3)
    assert lrp.target == 3 and np.isfinite(lrp.relevance).all() and np.abs(lrp.relevance).sum() > 0
    with pytest.raises(ValueError, match="method"):
        relevance_map(model, wave, method="gradcam")


def test_relevance_command_writes_a_png_per_clip(demo, tmp_path):
    root, _ = demo
    module = _module()
    path = tmp_path / "cnn.ckpt"
    trainer = _trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    wavs = sorted(root.rglob("*.wav"))[:2]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF")
    assert (
        relevance_main(
            [str(path), *map(str, wavs), str(bad), "--out", str(tmp_path / "rel"), "--steps", "4"]
        )
        == 1
    )
    pngs = sorted((tmp_path / "rel").glob("*.relevance.png"))
    assert [p.name for p in pngs] == sorted(f"{w.stem}.relevance.png" for w in wavs)
    assert all(p.stat().st_size > 20_000 for p in pngs)
    assert explain_files(module, [bad], tmp_path / "x") == []


def test_ddp_fit_on_two_cpu_processes(demo_manifest, tmp_path):
    """`emergency-ensemble fit` with the real config, 2 gloo processes, a few steps."""
    c = "--model.init_args.model.init_args.config"
    args = [
        sys.executable, "-m", "ensemble.cli", "fit", "--verbose", "--config", str(ROOT / "configs/cnn.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.init_args.manifest={demo_manifest}", "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=2", f"{c}.widths=[4,8]", f"{c}.emb_dim=8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Starting with 2 processes" in log and "gloo" in log
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, log[-2000:]
    loaded = load_member(ckpts[0])
    assert isinstance(loaded, CNNModule) and loaded.model.config.widths == (4, 8)
