"""The Whisper member's attention clip head (`whisper_head.attention`), on a tiny random Whisper."""

import math

import pytest
import torch
from helpers import quiet_trainer, tiny_whisper

from ensemble.core.data import AudioDataModule
from whisper_head.attention import attention_target_loss, strided_mask, strided_mean
from whisper_head.losses import augment_clip_inputs, mask_runs, paste_events
from whisper_head.model import Encoded, WhisperHeadConfig, WhisperHeadModel
from whisper_head.module import WhisperHeadModule

ATTENTION = dict(layer_weights=True, layer_norm=True, clip_head=True, clip_pool="attention")


def test_strides():
    mask = torch.tensor([[True] * 5 + [False] * 5])
    assert strided_mask(mask, 4).tolist() == [[True, True, False]]
    x = torch.arange(10.0).reshape(1, 10, 1)
    assert strided_mean(x, 4)[0, :, 0].tolist() == [
        1.5,
        5.5,
        8.75,
    ]  # the last run [8, 9] padded with 9s


def test_pool_on_strided_layers_is_forward():
    """`pool` on states layer-normalised and strided beforehand (how benchmarks/clip_pool.py
    trains on features in memory) gives `forward`'s logits and attention."""
    import torch.nn.functional as F

    from whisper_head.attention import AttentionClipHead, strided_mean_layers

    torch.manual_seed(0)
    head = AttentionClipHead(3, 16, 20, hidden=8, attention_dim=4).eval()
    states = tuple(3 * torch.randn(2, 1500, 16) + 1 for _ in range(3))
    mask = torch.ones(2, 1500, dtype=torch.bool)
    mask[1, 1000:] = False
    normed = torch.stack([F.layer_norm(t, (16,)) for t in states], 1)
    pooled = head.pool(strided_mean_layers(normed, 4), strided_mask(mask, 4))
    for a, b in zip(head(states, mask), pooled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_padding_and_unread_steps_change_nothing():
    """Logits read the valid timesteps only: noise in the padding leaves them as they were, noise
    in the audio moves them; the attention is a distribution over the valid steps."""
    model = WhisperHeadModel(tiny_whisper(**ATTENTION)).eval()
    encoded = model.encode(torch.randn(2, 80, 3000))
    mask = torch.ones(2, 1500, dtype=torch.bool)
    mask[0, 600:] = False
    logits, log_att = model.attention_logits(encoded, mask)
    assert logits.shape == (2, 20) and log_att.shape == (2, 375)
    att = log_att.exp()
    torch.testing.assert_close(att.sum(1), torch.ones(2))
    assert att[0, 150:].sum() < 1e-6 and (att[1] > 0).all()
    noisy = tuple(t.clone() for t in encoded.states)
    for t in noisy:
        t[:, 600:] += 3 * torch.randn_like(t[:, 600:])
    moved, _ = model.attention_logits(encoded._replace(states=noisy), mask)
    torch.testing.assert_close(moved[0], logits[0])
    assert not torch.allclose(moved[1], logits[1])
    with pytest.raises(ValueError, match="event-pooled"):
        model.clip_logits(encoded, mask)
    with pytest.raises(ValueError, match="clip_pool"):
        WhisperHeadConfig(clip_pool="mean")


def test_attention_target_loss():
    """1 for a uniform attention over a whole-window target, less when it looks at the event,
    rows without a target left out."""
    S = 375
    uniform = torch.full((1, S), -math.log(S))
    pick = torch.ones(1, 1500, dtype=torch.bool)
    torch.testing.assert_close(attention_target_loss(uniform, pick, 4), torch.tensor(1.0))
    event = torch.zeros(1, 1500, dtype=torch.bool)
    event[0, 400:800] = True
    focused = torch.full((1, S), -1e4)
    focused[0, 100:200] = -math.log(100)
    assert attention_target_loss(focused, event, 4) < attention_target_loss(uniform, event, 4)
    none = torch.zeros(1, 1500, dtype=torch.bool)
    both = attention_target_loss(torch.cat([focused, uniform]), torch.cat([event, none]), 4)
    torch.testing.assert_close(both, attention_target_loss(focused, event, 4))


def cached_attention_module(tmp_path, **options) -> WhisperHeadModule:
    """A tiny Whisper member with the attention clip head, its encoder frozen and cached."""
    return WhisperHeadModule(
        WhisperHeadModel(tiny_whisper(**ATTENTION)),
        feature_cache=str(tmp_path / "cache"),
        freeze="encoder",
        cer_batches=0,
        clip_loss=1.0,
        train_frames=64,
        **options,
    )


def test_fit_from_the_cache_moves_the_attention_head(demo_manifest, tmp_path):
    """One fit from cached features trains the attention head (clip and attention losses logged),
    and prediction reads p_emergency and the class from it on the vote's side. With
    `text_epochs=0` the decoder does not train, though validation still scores its text loss."""
    dm = AudioDataModule(demo_manifest, batch_size=2, num_workers=0)
    module = cached_attention_module(tmp_path, lam=0.5, text_epochs=0)
    before = {n: p.detach().clone() for n, p in module.model.clip_head.named_parameters()}
    decoder = {
        n: p.detach().clone() for n, p in module.model.backbone.model.decoder.named_parameters()
    }
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    logged = set(trainer.logged_metrics)
    assert {"train/clip_loss", "train/attention_loss", "val/acc", "val/text_loss"} <= logged
    assert "train/text_loss" not in logged
    for n, p in module.model.backbone.model.decoder.named_parameters():
        assert torch.equal(p, decoder[n]), n
    moved = [
        n for n, p in module.model.clip_head.named_parameters() if not torch.equal(p, before[n])
    ]
    assert "out.weight" in moved and "attn_w.weight" in moved
    module.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = module.predict_step(batch)["whisper_head"]
        logits, _ = module.model.attention_logits(module._encode_wave(batch["wave"]), batch["mask"])
    probs = logits[:, 1:].softmax(-1)
    torch.testing.assert_close(out.p_emergency, probs[:, :14].sum(1), rtol=1e-4, atol=1e-4)
    for p, row in zip(out.p_emergency, out.class_probs, strict=True):
        side = slice(0, 14) if p > module.hparams.threshold else slice(14, 19)
        torch.testing.assert_close(row[side].sum(), torch.tensor(1.0))


def test_mask_runs_masks_a_share_in_runs_and_keeps_the_event():
    torch.manual_seed(0)
    mask = torch.zeros(3, 1500, dtype=torch.bool)
    mask[:, :1000] = True  # 20 s valid, the rest padding
    event = torch.zeros_like(mask)
    event[:, 400:500] = True
    out = mask_runs(mask, event, 0.2, 24)
    assert not (out & ~mask).any()  # padding stays padding
    for row in out:
        masked = (~row[:1000]).sum().item()
        assert 0.1 * 1000 <= masked <= 0.2 * 1000  # overlapping runs mask a little less
        starts = (~row[1:1000] & row[:999]).sum().item() + int(not row[0])
        assert starts <= round(0.2 * 1000 / 24)  # runs, not scattered timesteps
    assert ((out & event).any(1)).all()
    tiny = torch.zeros_like(event)
    tiny[:, 10] = True  # an event one timestep long: a run over it would erase it
    kept = mask_runs(mask, tiny, 0.9, 24)
    assert kept[:, 10].all()
    assert torch.equal(mask_runs(mask, event, 0.0, 24), mask)
    with pytest.raises(ValueError, match="time masking"):
        mask_runs(mask, event, 1.0, 24)


def test_clip_time_mask_hides_timesteps_from_the_attention_head_in_training_only(
    demo_manifest, tmp_path
):
    """With `clip_time_mask` the attention head trains on windows with timesteps masked out;
    validation reads them whole."""
    dm = AudioDataModule(demo_manifest, batch_size=2, num_workers=0)
    module = cached_attention_module(tmp_path, lam=1.0, clip_time_mask=0.3)
    seen = {"train": [], "val": []}
    attend = module.model.attention_logits

    def spy(encoded, mask):
        seen["train" if module.training else "val"].append(mask.sum().item())
        return attend(encoded, mask)

    module.model.attention_logits = spy
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    dm.setup("fit")  # the loaders are seeded: the trainer's first batches are these
    batches = {"train": next(iter(dm.train_dataloader())), "val": next(iter(dm.val_dataloader()))}
    trainer.fit(module, dm)
    assert seen["train"] and seen["val"]
    assert seen["train"][0] < batches["train"]["mask"].sum().item()
    assert seen["val"][0] == batches["val"]["mask"].sum().item()
    with pytest.raises(ValueError, match="clip_time_mask"):
        WhisperHeadModule(WhisperHeadModel(tiny_whisper(**ATTENTION)), clip_time_mask=1.0)


def test_paste_events_moves_an_event_into_a_normal_scene():
    """An emergency row becomes a normal row's states with its event written in at a valid place
    of the same phase; the normal rows, and every row at share 0, stay as they were."""
    torch.manual_seed(0)
    emergency = torch.tensor([False, True, True, False])  # column 0 is `none`
    labels = torch.tensor([3, 1, 3])  # rows 0 and 2 normal, row 1 an emergency
    T = 100
    states = tuple(torch.randn(3, T, 5) for _ in range(2))
    mask = torch.zeros(3, T, dtype=torch.bool)
    mask[0, :60], mask[1], mask[2, :80] = True, True, True
    pick = torch.zeros_like(mask)
    pick[1, 30:42] = True
    pick[1, 35] = False  # a gap inside the event travels with it
    for _ in range(20):
        out, m, p = paste_events(states, mask, pick, labels, emergency, 1.0, stride=4)
        t = int(p[1].nonzero()[0])
        j = 0 if torch.equal(m[1], mask[0]) else 2
        assert torch.equal(m[1], mask[j]) and t % 4 == 30 % 4 and t + 12 <= mask[j].sum()
        assert torch.equal(p[1, t : t + 12], pick[1, 30:42]) and p[1].sum() == pick[1].sum()
        for o, s in zip(out, states, strict=True):
            assert torch.equal(o[1, t : t + 12], s[1, 30:42])
            assert torch.equal(o[1, :t], s[j, :t]) and torch.equal(o[1, t + 12 :], s[j, t + 12 :])
            assert torch.equal(o[[0, 2]], s[[0, 2]])
        assert torch.equal(m[[0, 2]], mask[[0, 2]]) and torch.equal(p[[0, 2]], pick[[0, 2]])
    same = paste_events(states, mask, pick, labels, emergency, 0.0, stride=4)
    assert same[0] is states and same[1] is mask
    alone = paste_events(states, mask, pick, torch.tensor([1, 2, 2]), emergency, 1.0)
    assert alone[0] is states  # no normal window to paste into
    with pytest.raises(ValueError, match="event pasting"):
        paste_events(states, mask, pick, labels, emergency, 1.5)


def test_augment_clip_inputs_leaves_the_decoder_states_alone():
    torch.manual_seed(0)
    emergency = torch.tensor([False, True, False])
    hidden, layers = torch.randn(2, 40, 4), (torch.randn(2, 40, 4),)
    mask, pick = torch.ones(2, 40, dtype=torch.bool), torch.zeros(2, 40, dtype=torch.bool)
    pick[0, 5:9] = True
    encoded = Encoded(hidden, layers)
    clip, m, p = augment_clip_inputs(encoded, mask, pick, torch.tensor([1, 2]), emergency,
                                     1.0, 0.0, 1)  # fmt: skip
    assert clip.hidden is hidden and not torch.equal(clip.states[0][0], layers[0][0])
    assert m.all() and p[0].sum() == 4 and not p[1].any()  # the event moved, nothing else
    plain = Encoded(hidden, None)  # unweighted layers: the clip head reads `hidden`
    clip = augment_clip_inputs(plain, mask, pick, torch.tensor([1, 2]), emergency,
                               1.0, 0.0, 1)[0]  # fmt: skip
    assert plain.hidden is hidden and not torch.equal(clip.hidden[0], hidden[0])


def test_clip_event_paste_feeds_the_attention_head_pasted_windows_in_training_only(
    demo_manifest, tmp_path
):
    """With `clip_event_paste` the attention head trains on emergency events in normal windows'
    scenes (states it was never given as they are); validation reads the windows as cached."""
    dm = AudioDataModule(demo_manifest, batch_size=4, num_workers=0)
    module = cached_attention_module(tmp_path, lam=1.0, clip_event_paste=1.0)
    seen = {"train": [], "val": []}
    attend = module.model.attention_logits

    def spy(encoded, mask):
        seen["train" if module.training else "val"].append((encoded.states[0].clone(), mask))
        return attend(encoded, mask)

    module.model.attention_logits = spy
    spied = {}
    encode = module._encode

    def keep(batch, *args, **kwargs):
        out = encode(batch, *args, **kwargs)
        spied.setdefault("train" if module.training else "val", []).append((out, batch))
        return out

    module._encode = keep
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, dm)
    pasted = 0
    for (states, _), (encoded, batch) in zip(seen["train"], spied["train"], strict=True):
        is_em = module._emergency[batch["label"]]
        for i in range(len(states)):
            same = torch.equal(states[i], encoded.states[0][i])
            assert same or is_em[i]  # normal windows are never changed
            pasted += not same
    assert pasted > 0
    for states, mask in seen["val"]:  # read twice a batch: the clip loss, the readout
        assert any(
            torch.equal(states, e.states[0]) and torch.equal(mask, b["mask"])
            for e, b in spied["val"]
        )
    with pytest.raises(ValueError, match="clip_event_paste"):
        WhisperHeadModule(WhisperHeadModel(tiny_whisper(**ATTENTION)), clip_event_paste=2.0)
