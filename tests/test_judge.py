"""The keyword judge: normalisation, fuzzy matching, hallucination guards, the demo scripts."""

import math
import unicodedata

import pytest
import torch

from ensemble.core.member import MemberOutput
from ensemble.demodata.scripts import EMERGENCY_LINES, EVERYDAY_LINES, GENERIC_CALLS
from whisper_head.judge import (
    JudgeOptions,
    KeywordJudge,
    judgement_tensors,
    load_keywords,
    normalize_text,
)


@pytest.fixture(scope="module")
def judge():
    return KeywordJudge(load_keywords())


def test_normalize_text():
    decomposed = unicodedata.normalize("NFD", "불이야")
    assert decomposed != "불이야" and normalize_text(decomposed) == "불이야"
    assert normalize_text("  Help!!  Me,\tsomebody… ") == "help me somebody"
    assert normalize_text("I can't breathe!") == "i cant breathe"
    assert normalize_text("살려 주세요!!", spaces=False) == "살려주세요"
    assert normalize_text("119에 신고해!") == "119에 신고해"


@pytest.mark.parametrize("text", ["불이야!", "불 이 야", "불이야아"])
def test_fire_votes(judge, text):
    j = judge.judge(text)
    assert j.vote and j.class_key == "fire" and j.p_emergency == 1.0


def test_english_call_for_an_ambulance(judge):
    j = judge.judge("Help me, somebody call an ambulance")
    assert j.vote and j.class_key in {"medical_emergency", "help_request"}
    assert j.p_emergency >= judge.options.threshold
    assert {m.phrase for m in j.matches} >= {"ambulance", "help me"}


@pytest.mark.parametrize("text", ["살려 주새요", "hepl me"])
def test_near_miss_transcription_still_votes(judge, text):
    j = judge.judge(text)
    assert j.vote and j.class_key == "help_request"
    assert all(m.similarity < 1 for m in j.matches)


@pytest.mark.parametrize(
    "text",
    [
        "물이야",
        "I'm fine",
        "the chief said",
        "걱정하지 마세요",
        "The parking arrived this morning.",
    ],
)
def test_short_phrases_match_only_exactly(judge, text):
    assert not judge.judge(text).vote


@pytest.mark.parametrize(
    "text", ["", "   ", "...", "시청해주셔서 감사합니다", "Thank you for watching!"]
)
def test_nothing_spoken_never_votes(judge, text):
    j = judge.judge(text)
    assert not j.vote and j.p_emergency == 0.0 and j.class_key is None and not j.matches


def test_repetition_is_guarded(judge):
    j = judge.judge("help " * 50)
    assert not j.vote and "repetitive" in j.reason
    loop = KeywordJudge(judge.lexicon, JudgeOptions(compression_ratio_threshold=100.0))
    assert not loop.judge("help " * 10).vote  # same word 8+ times in a row
    assert judge.judge("Help! Help! Help!").vote


def test_no_speech_decoding_is_guarded(judge):
    j = judge.judge("Help me!", no_speech_prob=0.9, avg_logprob=-1.5)
    assert not j.vote and j.reason.startswith("no speech")
    # openai-whisper's rule needs both: a confident decoding keeps its vote
    assert judge.judge("Help me!", no_speech_prob=0.9, avg_logprob=-0.3).vote
    assert judge.judge("Help me!", no_speech_prob=0.2, avg_logprob=-1.5).vote


def test_batch_and_tensors(judge):
    texts = ["불이야!", "오늘 날씨가 참 좋네요.", "help me"]
    out = judge.judge_batch(texts, no_speech_probs=[0.1, 0.1, 0.95], avg_logprobs=[-0.2, -0.2, -2])
    assert [j.vote for j in out] == [True, False, False]
    p, vote = judgement_tensors(out)
    assert p.shape == (3,) and vote.dtype == torch.bool and vote.tolist() == [True, False, False]
    MemberOutput(p_emergency=p, vote=vote, transcript=texts)
    with pytest.raises(ValueError, match="no_speech_probs"):
        judge.judge_batch(texts, no_speech_probs=[0.1])


def test_options_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        JudgeOptions(threshold=1.5)


def test_confidence_weighs_a_match_by_the_decoders_certainty(tmp_path):
    plain = KeywordJudge(load_keywords())
    sure, unsure = (
        plain.judge("불이야!", avg_logprob=-0.05),
        plain.judge("불이야!", avg_logprob=-1.2),
    )
    assert sure.p_emergency == unsure.p_emergency == 1.0  # off: the log-prob only guards silence
    path = tmp_path / "keywords.yaml"
    path.write_text("classes:\n  fire: [불이야]\njudge:\n  confidence: true\n", encoding="utf-8")
    judge = KeywordJudge.from_yaml(path)
    assert judge.options.confidence
    sure, unsure = (
        judge.judge("불이야!", avg_logprob=-0.05),
        judge.judge("불이야!", avg_logprob=-1.2),
    )
    assert sure.p_emergency == pytest.approx(math.exp(-0.05))
    assert unsure.p_emergency == pytest.approx(math.exp(-1.2)) and not unsure.vote
    assert judge.judge("불이야!").p_emergency == 1.0  # no log-prob: nothing to weigh by
    assert not KeywordJudge.from_yaml(path, confidence=False).options.confidence
    path.write_text("classes:\n  fire: [불이야]\njudge:\n  confident: true\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown option.*confident"):
        KeywordJudge.from_yaml(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("classes:\n  flood: [물난리]\n", "unknown class key 'flood'"),
        ("classes:\n  indoor: [거실]\n", "'indoor' is not an emergency class"),
        ("classes:\n  fire: [[불이야, 2]]\n", "weight"),
    ],
)
def test_bad_lexicon(tmp_path, body, message):
    path = tmp_path / "keywords.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        load_keywords(path)
    assert str(path) in str(err.value)


def test_demo_scripts(judge):
    """Measured: 146/148 emergency lines vote (0.986), 136/140 class lines name their class,
    25/25 everyday lines do not vote."""
    emergency = [(k, line) for k, (ko, en) in EMERGENCY_LINES.items() for line in ko + en]
    calls = [line for lines in GENERIC_CALLS for line in lines]
    everyday = [line for lines in EVERYDAY_LINES for line in lines]
    judged = [(k, judge.judge(line)) for k, line in emergency]
    votes = sum(j.vote for _, j in judged) + sum(judge.judge(line).vote for line in calls)
    assert votes / (len(emergency) + len(calls)) >= 0.98
    assert sum(j.class_key == k for k, j in judged) / len(emergency) >= 0.95
    assert not any(judge.judge(line).vote for line in everyday)


def test_the_judge_abstains_where_nothing_was_said_and_names_its_class(judge):
    from ensemble.core.labels import load_taxonomy
    from whisper_head.judge import judgement_classes

    texts = ["불이야!", "오늘 날씨가 참 좋네요.", "help me", "", "시청해주셔서 감사합니다"]
    out = judge.judge_batch(texts, no_speech_probs=[0.1, 0.1, 0.95, 0.1, 0.1],
                            avg_logprobs=[-0.2, -0.2, -2, -0.2, -0.2])  # fmt: skip
    # an opinion where words were heard (even without a keyword), none where nothing was said
    assert [j.opinion for j in out] == [True, True, False, False, False]
    taxonomy = load_taxonomy(None)
    classes = judgement_classes(out, taxonomy)
    assert classes.shape == (5, taxonomy.n_classes)
    assert classes[0].sum() == 1 and taxonomy.key(int(classes[0].argmax()) + 1) == "fire"
    assert classes[1:].isnan().all()  # no vote, no class
    opinion = torch.tensor([j.opinion for j in out])
    p, vote = judgement_tensors(out)
    MemberOutput(p_emergency=p, vote=vote, class_probs=classes, opinion=opinion)
    with pytest.raises(ValueError, match="opinion"):
        MemberOutput(p_emergency=p, vote=vote, opinion=opinion.float())
