"""The Whisper member on a tiny random backbone: shapes, training, one encoder pass, checkpoints."""

import pytest
import pytorch_lightning as pl
import torch

from ensemble.core.data import AudioDataModule
from ensemble.core.member import MemberOutput
from whisper_head.model import (
    IGNORE,
    TimestepHead,
    WhisperHeadConfig,
    WhisperHeadModel,
    text_targets,
)
from whisper_head.module import WhisperHeadModule, clip_class_probs, smoothed_max

TINY = WhisperHeadConfig(source="random:tiny", hidden_dim=8, dropout=0.0)


def _module(config: WhisperHeadConfig = TINY, **kwargs) -> WhisperHeadModule:
    return WhisperHeadModule(WhisperHeadModel(config), max_new_tokens=3, cer_batches=1, **kwargs)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path, name="log"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**args, **kwargs})


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
    model = WhisperHeadModel(WhisperHeadConfig("random:tiny", 8, layer_weights=layer_weights))
    encoded = model.encode(torch.randn(2, 80, 3000))
    assert encoded.hidden.shape == (2, 1500, 16)
    assert (encoded.states is not None) == layer_weights
    assert model.frame_logits(encoded).shape == (2, 1500, 20)
    assert TimestepHead(16, 8, 20, 0.0)(torch.randn(3, 7, 16)).shape == (3, 7, 20)
    input_ids, labels = text_targets([50258, 50264, 50359, 50363], [[1, 2], []], eot=50257)
    assert input_ids.shape == labels.shape == (2, 6)
    assert labels[0].tolist() == [IGNORE] * 3 + [1, 2, 50257]
    assert labels[1].tolist() == [IGNORE] * 3 + [50257, IGNORE, IGNORE]
    loss = model.text_loss(encoded.hidden, input_ids, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_clip_class_and_smoothing():
    probs = torch.zeros(1, 4, 4)
    probs[0, :, 0] = 1.0  # none everywhere but timestep 2
    probs[0, 2] = torch.tensor([0.1, 0.2, 0.6, 0.1])
    mask = torch.tensor([[True, True, True, False]])
    assert clip_class_probs(probs, mask).argmax(1).tolist() == [1]  # id 2
    p = torch.tensor([[0.0, 0.9, 0.0, 1.0]])
    assert smoothed_max(p, mask, 1).item() == pytest.approx(0.9)
    assert smoothed_max(p, mask, 3).item() == pytest.approx(0.45)  # (0 + 0.9) / 2 at t=0


def test_fast_dev_run_trains_head_not_frozen_encoder(demo_manifest, tmp_path):
    module = _module()
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
