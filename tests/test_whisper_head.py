"""The Whisper member on a tiny random backbone: shapes, training, one encoder pass, checkpoints."""

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from helpers import quiet_trainer, tiny_whisper

from ensemble.core.data import AudioDataModule
from ensemble.core.member import MemberOutput, frame_events
from whisper_head.model import (
    IGNORE,
    TimestepHead,
    WhisperHeadConfig,
    WhisperHeadModel,
    text_targets,
    transcript_targets,
)
from whisper_head.module import WhisperHeadModule
from whisper_head.readout import clip_class_probs, smoothed_max
from whisper_head.tokens import text_language

TINY = tiny_whisper()


def _module(config: WhisperHeadConfig = TINY, **kwargs) -> WhisperHeadModule:
    return WhisperHeadModule(WhisperHeadModel(config), max_new_tokens=3, cer_batches=1, **kwargs)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"enable_checkpointing": False, **kwargs})


@pytest.fixture(scope="module")
def batch(demo_manifest):
    data = AudioDataModule(demo_manifest, batch_size=2, num_workers=0)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_random_backbone_is_deterministic():
    a, b = (WhisperHeadModel(TINY).backbone.state_dict() for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="random"):
        WhisperHeadConfig(source="random:huge")


@pytest.mark.parametrize("layer_weights", [False, True])
def test_shapes(layer_weights):
    model = WhisperHeadModel(tiny_whisper(dropout=0.1, layer_weights=layer_weights))
    encoded = model.encode(torch.randn(2, 80, 3000))
    assert encoded.hidden.shape == (2, 1500, 16)
    assert (encoded.states is not None) == layer_weights
    assert model.frame_logits(encoded).shape == (2, 1500, 20)
    assert TimestepHead(16, 8, 20, 0.0)(torch.randn(3, 7, 16)).shape == (3, 7, 20)
    ko, en = [50258, 50264, 50359, 50363], [50258, 50259, 50359, 50363]
    input_ids, labels = text_targets([ko, en], [[1, 2], []], eot=50257)
    assert input_ids.shape == labels.shape == (2, 6)
    assert input_ids[1, :4].tolist() == en and input_ids[1, 4:].tolist() == [50257, 50257]
    assert labels[0].tolist() == [IGNORE] * 3 + [1, 2, 50257]
    assert labels[1].tolist() == [IGNORE] * 3 + [50257, IGNORE, IGNORE]
    english_only = text_targets([[50257, 50362], ko], [[5], [6]], eot=50256)[1]
    assert english_only[0].tolist() == [IGNORE, 5, 50256, IGNORE, IGNORE]
    assert english_only[1, 3] == 6
    loss = model.text_loss(encoded.hidden, input_ids, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_clip_class_follows_the_vote_and_smoothing():
    # columns: none, two emergencies (ids 1, 2), one normal (id 3): a background everywhere
    # but timestep 2, where emergency 2 is the best class
    probs = torch.zeros(2, 4, 4)
    probs[:, :, 3] = 1.0
    probs[:, 2] = torch.tensor([0.1, 0.2, 0.6, 0.1])
    mask = torch.tensor([[True, True, True, False]] * 2)
    vote = torch.tensor([True, False])
    out = clip_class_probs(probs, mask, (1, 2), vote)
    assert out.argmax(1).tolist() == [1, 2]  # ids 2 (the event) and 3 (the background)
    assert out[0].tolist() == pytest.approx([0.25, 0.75, 0.0])  # emergency block only
    assert out[1].tolist() == pytest.approx([0.0, 0.0, 1.0])
    quiet = torch.zeros(1, 4, 4)
    quiet[0, :, 3] = 1.0  # voted emergency without an emergency timestep: every valid one counts
    quiet[0, :, 1] = 0.1
    assert clip_class_probs(quiet, mask[:1], (1, 2), vote[:1]).argmax(1).tolist() == [0]
    p = torch.tensor([[0.0, 0.9, 0.0, 1.0]])
    assert smoothed_max(p, mask[:1], 1).item() == pytest.approx(0.9)
    assert smoothed_max(p, mask[:1], 3).item() == pytest.approx(0.45)  # (0 + 0.9) / 2 at t=0


def test_fast_dev_run_trains_head_not_frozen_encoder(demo_manifest, tmp_path):
    module = _module(lead_token=True, head_schedule="cosine")  # a scheduled rate under a Trainer
    encoder = [p.detach().clone() for p in module.model.encoder.parameters()]
    head = [p.detach().clone() for p in module.model.head.parameters()]
    decoder = module.model.backbone.model.decoder.layers[0].fc1.weight.detach().clone()
    trainer = _trainer(tmp_path, fast_dev_run=True)
    trainer.fit(module, datamodule=AudioDataModule(demo_manifest, batch_size=2, num_workers=0))
    after = list(module.model.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(encoder, after, strict=True))
    changed = [
        not torch.equal(a, b) for a, b in zip(head, module.model.head.parameters(), strict=True)
    ]
    assert all(changed)
    assert not torch.equal(decoder, module.model.backbone.model.decoder.layers[0].fc1.weight)
    logged = trainer.logged_metrics
    for name in (
        "val/cer",
        "val/cer_nospace",
        "val/text_loss",
        "val/timestep_acc",
        "val/acc",
        "val/binary_acc",
        "val/loss",
        "train/loss",
    ):
        assert name in logged, name


def test_text_targets_score_the_language_or_no_speech_when_asked():
    module = _module()
    tok = module.tokenizer
    ids, labels = transcript_targets(tok, ["불이야!", "", "Help!"], ("ko", "en"), True, lead=False)
    assert (labels[:, 0] == IGNORE).all()
    assert ids[0, 1] == tok.to_language_token("ko") and ids[2, 1] == tok.to_language_token("en")
    _, led = transcript_targets(tok, ["불이야!", "", "Help!"], ("ko", "en"), True, lead=True)
    assert led[:, 0].tolist() == [ids[0, 1], tok.no_speech, ids[2, 1]]
    assert (led[:, 1:] == labels[:, 1:]).all()  # the text's labels are unchanged
    # an English-only model has no language token to learn
    _, en = transcript_targets(tok, ["Help!"], ("en",), False, lead=True)
    assert en[0, 0] == IGNORE


def test_head_schedule_warms_up_and_anneals_the_head_only():
    module = _module(head_lr=1e-3, head_schedule="cosine")
    module.trainer = type("T", (), {"estimated_stepping_batches": 100})()
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    head, decoder = opt.param_groups[0], opt.param_groups[1]
    start = (head["lr"], decoder["lr"])
    for _ in range(30):
        opt.step(), sched.step()
    assert start[0] < head["lr"] == pytest.approx(1e-3)  # warmed up over 30 % of the steps
    for _ in range(70):
        opt.step(), sched.step()
    assert head["lr"] == pytest.approx(1e-6, rel=0.05)  # annealed to 1/1000
    assert decoder["lr"] == start[1]
    with pytest.raises(ValueError, match="head_schedule"):
        _module(head_schedule="onecycle")


def test_freeze_options():
    none = _module(freeze="none")
    assert all(p.requires_grad for p in none.model.encoder.layers.parameters())
    head_only = _module(freeze="all_but_head")
    trainable = {n for n, p in head_only.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.head.") for n in trainable)


def test_predict_runs_encoder_once(batch):
    module = _module().eval()
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.model.encoder.register_forward_hook(hook)
    with torch.no_grad():
        out = module.predict_step(batch)
    assert calls[0] == 1
    assert set(out) == {"whisper_head", "keyword_judge"}
    head, judge = out["whisper_head"], out["keyword_judge"]
    assert isinstance(head, MemberOutput) and isinstance(judge, MemberOutput)
    assert head.frame_probs.shape == (2, 1500, 20) and head.class_probs.shape == (2, 19)
    assert torch.allclose(head.class_probs.sum(1), torch.ones(2))
    assert ((head.p_emergency >= 0) & (head.p_emergency <= 1 + 1e-5)).all()
    assert len(judge.transcript) == 2 and judge.vote.dtype == torch.bool
    assert len(head.events) == 2 and all(isinstance(e, list) for e in head.events)
    # events are exactly the runs of the smoothed frame classes (at least min_event_s long)
    ids = frame_events(head.frame_probs, batch["mask"], module.taxonomy, 25, 10)
    assert head.events == ids


def test_frame_events_are_runs_of_one_class_within_the_valid_steps():
    from ensemble.core.labels import load_taxonomy

    taxonomy = load_taxonomy()
    p = torch.zeros(2, 100, 20)
    p[..., 0] = 1.0
    p[0, 10:30] = 0.0
    p[0, 10:30, 8] = 1.0  # id 8 from 0.2 to 0.6 s
    p[0, 50:52, 0], p[0, 50:52, 3] = 0.0, 1.0  # a 2-step blip of id 3
    p[1, 90:, 0], p[1, 90:, 5] = 0.0, 1.0  # id 5 running into the padding
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 95:] = False
    key = taxonomy.key
    assert frame_events(p, mask, taxonomy) == [
        [(0.2, 0.6, key(8)), (1.0, 1.04, key(3))],
        [(1.8, 1.9, key(5))],
    ]
    assert frame_events(p, mask, taxonomy, min_steps=6) == [[(0.2, 0.6, key(8))], []]
    with pytest.raises(ValueError, match="need"):
        frame_events(p[0], mask, taxonomy)


def test_text_language_follows_the_script():
    assert text_language("불이야!", ("ko", "en")) == "ko"
    assert text_language("Help me!", ("ko", "en")) == "en"
    assert text_language("Help me!", ("ko",)) == "ko"
    assert text_language("...", ("en", "ko")) == "en"


def test_test_stage_writes_metrics_with_cer_and_timestep_accuracy(demo_manifest, tmp_path):
    import json

    module = _module(language=None)
    trainer = _trainer(tmp_path, limit_test_batches=2)
    trainer.test(module, datamodule=AudioDataModule(demo_manifest, batch_size=2, num_workers=0))
    metrics = json.loads((tmp_path / "log" / "version_0" / "test_metrics.json").read_text())
    n_test = (pd.read_csv(demo_manifest)["split"] == "test").sum()
    assert metrics["n"] == min(n_test, 4) >= 3 and 0 <= metrics["timestep_acc"] <= 1
    assert {"acc", "macro_f1", "binary_acc", "vote_acc", "auc", "cer", "cer_nospace"} <= set(
        metrics
    )
    assert (tmp_path / "log" / "version_0" / "test_confusion.png").is_file()


def test_checkpoint_round_trip(batch, tmp_path):
    module = _module(lam=0.7)
    trainer = _trainer(tmp_path, max_steps=0, limit_val_batches=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "w.ckpt")
    loaded = WhisperHeadModule.from_checkpoint(tmp_path / "w.ckpt")
    assert loaded.hparams.lam == 0.7
    with torch.no_grad():
        a = module.eval().predict_step(batch)["whisper_head"].frame_probs
        b = loaded.predict_step(batch)["whisper_head"].frame_probs
    assert torch.equal(a, b)


def test_ct2_decoder_serves_prediction_only(batch, tmp_path, monkeypatch):
    """CTranslate2 copies the weights when it exports them: validation and test, whose weights
    follow training, keep transformers' decoding; prediction decodes with the copy, and the
    transcripts agree."""
    monkeypatch.setenv("EMERGENCY_ENSEMBLE_CACHE", str(tmp_path))
    module = _module(decoder="ct2").eval()
    reference = _module().eval()
    with torch.no_grad():
        encoded = module._encode_wave(batch["wave"])
        module._transcribe(encoded)
        assert module._generator is None
        fast = module.predict_step(batch)["keyword_judge"].transcript
        slow = reference.predict_step(batch)["keyword_judge"].transcript
    assert module._generator is not None and (tmp_path / "whisper" / "ct2").is_dir()
    assert fast == slow


def test_cpu_bf16_runs_the_encoder_in_bfloat16_at_prediction_only(batch):
    module = _module(cpu_bf16=True)
    dtypes = []
    fc1 = module.model.encoder.layers[0].fc1  # its output's dtype is the matmul's
    fc1.register_forward_hook(lambda *a: dtypes.append(a[2].dtype))
    with torch.no_grad():
        module.eval()
        out = module.predict_step(batch)
        module.train()
        module._encode_wave(batch["wave"])
    assert dtypes == [torch.bfloat16, torch.float32]  # training stays fp32
    head = out["whisper_head"]
    assert head.frame_probs.dtype == torch.float32 and head.embedding.dtype == torch.float32
    assert len(out["keyword_judge"].transcript) == 2
