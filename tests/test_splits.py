import numpy as np
import pandas as pd
import pytest

from ensemble.core.aihub import import_aihub
from ensemble.core.manifest import HOLDOUT, validate
from ensemble.core.split_report import (
    compare_group_by,
    format_report,
    largest_groups,
    split_table,
    split_with_report,
)
from ensemble.core.splits import assign_splits, leaks, split_manifest
from ensemble.core.text import normalize_text

NORMAL = ("indoor", "outdoor", "washer_dryer", "vacuum_cleaner", "other_appliance")


def _manifest(rows, origin=None):
    cols = ["path", "label", "transcript", "speaker"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("event_start", "event_end"):
        df[c] = float("nan")
    df["split"] = df["source"] = ""
    if origin is not None:
        df["origin"] = origin
    return validate(df)


def _split(df, **options):
    """split_manifest with no audio to read: every duration unknown."""
    return split_manifest(df, durations=np.full(len(df), np.nan), **options)


def _assert_leak_free(df):
    inside = df[df["split"] != HOLDOUT]
    for col, key in (("speaker", lambda s: s), ("transcript", normalize_text)):
        keys = inside[col].map(key)
        seen = inside[keys != ""].groupby(keys[keys != ""])["split"].nunique()
        assert (seen == 1).all(), f"{col} in two splits: {list(seen[seen > 1].index)}"


def _speech_spread(df) -> dict[str, float]:
    """Per kind, the spread (max - min) over train/val/test of the share of clips with speech."""
    kind = df["label"].isin(NORMAL).map({True: "normal", False: "emergency"})
    speech = df["transcript"].str.strip().ne("")
    share = speech.groupby([kind, df["split"]]).mean().unstack()[["train", "val", "test"]]
    return (share.max(axis=1) - share.min(axis=1)).to_dict()


def _scripted(n_per_class=60, seed=0):
    """A demo-shaped manifest: 10 script sets x 2 languages record every class's lines (speech
    clips join into 20 large groups by speaker and transcript); a quarter of the emergencies and
    40 % of the normal clips are speechless singletons, as in the AI Hub data and the demo."""
    rng = np.random.default_rng(seed)
    emergencies = ("fire", "fall", "violence", "theft", "gas_accident", "help_request")
    rows = []
    for label in emergencies + NORMAL:
        for i in range(n_per_class):
            speechless = rng.random() < (0.4 if label in NORMAL else 0.25)
            if speechless:
                rows.append((f"{label}{i}.wav", label, "", ""))
                continue
            s, lang = int(rng.integers(10)), "ko" if rng.random() < 0.7 else "en"
            text = f"{label} line {s}" if lang == "en" else f"{label} 대사 {s}"
            rows.append((f"{label}{i}.wav", label, text, f"spk{s}{lang}{rng.integers(3)}"))
    return _manifest(rows)


def test_no_speaker_and_no_transcript_in_two_splits():
    rows = []
    for i in range(300):  # scripted phrases repeated across speakers, as in the AI Hub data
        phrase = f"불이야 {i % 50}!" if i % 3 else ""
        speaker = f"spk{i % 50}" if i % 4 else ""
        rows.append((f"c{i}.wav", ["fire", "indoor", "fall"][i % 3], phrase, speaker))
    df = assign_splits(_manifest(rows), seed=1, durations=np.full(300, np.nan))
    _assert_leak_free(df)
    assert leaks(df) == {"speaker": [], "transcript": []}
    assert (df.groupby("split")["label"].nunique() == 3).all()  # every class in every split


def test_speech_share_is_alike_in_every_split():
    """The old split balanced classes alone: the large speech groups were dealt first and the
    speechless singletons filled val and test (speech share 92 % / 44 % / 46 % of emergencies)."""
    df = _split(_scripted()).df
    _assert_leak_free(df)
    spread = _speech_spread(df)
    assert spread["emergency"] <= 0.05 and spread["normal"] <= 0.05, spread
    sizes = df["split"].value_counts(normalize=True)
    assert sizes["train"] == pytest.approx(0.7, abs=0.03)
    assert sizes["val"] == pytest.approx(0.15, abs=0.03)


def test_transcript_normalisation_joins_spellings():
    rows = [
        ("a.wav", "fire", "불이야!", ""),
        ("b.wav", "fire", " 불이야 ", ""),
        ("c.wav", "fire", "불이야.", ""),
    ]
    rows += [(f"x{i}.wav", "fire", f"line {i}", "") for i in range(20)]
    df = _split(_manifest(rows)).df
    assert df.loc[df["path"].isin(["a.wav", "b.wav", "c.wav"]), "split"].nunique() == 1


def test_empty_speaker_and_transcript_link_nothing():
    rows = [(f"c{i}.wav", "indoor", "", "") for i in range(100)]
    df = _split(_manifest(rows), fractions=(0.6, 0.2, 0.2)).df
    counts = df["split"].value_counts()
    assert counts["train"] == 60 and counts["val"] == 20 and counts["test"] == 20


def test_rows_of_one_clip_stay_together_and_runs_repeat():
    rows = [("same.wav", "fire", f"a{i}", "") for i in range(3)] + [
        (f"c{i}.wav", "fall", "", "") for i in range(30)
    ]
    a = _split(_manifest(rows), seed=5).df
    b = _split(_manifest(rows), seed=5).df
    assert a.loc[a["path"] == "same.wav", "split"].nunique() == 1
    pd.testing.assert_frame_equal(a, b)


def test_bad_options():
    df = _manifest([("a.wav", "fire", "", "")])
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(df, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="group_by"):
        assign_splits(df, group_by=("room",))
    with pytest.raises(ValueError, match="origin"):
        assign_splits(df, holdout_sources=("festival",))


def _one_phrase_everywhere(n=400):
    """AI Hub-shaped: one shout in 30 % of the clips, each said by its own speaker; every other
    clip has a line of its own."""
    rows = []
    for i in range(n):
        label = ["help_request", "fire", "indoor", "fall"][i % 4]
        text = "살려주세요!" if i % 10 < 3 else f"line {i}"
        rows.append((f"c{i}.wav", label, text, f"spk{i}"))
    return _manifest(rows)


def test_a_phrase_in_30_percent_of_clips_is_named_and_capped():
    df = _one_phrase_everywhere()
    result, report = split_with_report(df, durations=np.full(len(df), np.nan))
    top = largest_groups(result)[0]
    assert top["rows"] == 120 and top["share"] == pytest.approx(0.3)
    assert "'살려주세요!' in 120 rows" in top["joined_by"] and top["split"] == "train"
    assert "120 rows (30% of those dealt) in train: transcript '살려주세요!'" in report
    _assert_within_cap(result)
    assert result.broken == [] and leaks(result.df)["transcript"] == []

    # a stricter cap: no split may be a quarter one group, so the phrase stops joining clips
    result = _split(df, max_group_share=0.25)
    _assert_within_cap(result)
    assert [(b.key, b.value, b.rows) for b in result.broken] == [("transcript", "살려주세요", 120)]
    assert leaks(result.df)["transcript"] == ["살려주세요"]
    assert "leaked on purpose: transcript '살려주세요' joins 120 rows (30%)" in format_report(
        result
    )
    spread = result.df.groupby("split")["transcript"].apply(lambda t: (t == "살려주세요!").mean())
    assert spread.max() - spread.min() < 0.05  # the shout is now in every split alike


def _assert_within_cap(result):
    dealt = result.df[result.group >= 0]
    sizes = dealt.groupby(result.group[result.group >= 0]).size()
    split_of = dealt.groupby(result.group[result.group >= 0])["split"].first()
    for split, limit in zip(("train", "val", "test"), result.limit, strict=True):
        assert (sizes[split_of == split] <= limit).all(), split


def test_group_by_choices_and_what_they_leak():
    df = _scripted(n_per_class=30)
    speaker_only = _split(df, group_by=("speaker",)).df
    assert leaks(speaker_only)["speaker"] == []
    table = compare_group_by(df, durations=np.full(len(df), np.nan))
    assert list(table.index) == ["speaker+transcript", "speaker", "transcript", "none"]
    assert table.loc["speaker+transcript", "speakers_in_two_splits"] == 0
    assert table.loc["speaker+transcript", "transcripts_in_two_splits"] == 0
    assert table.loc["none", "speakers_in_two_splits"] > 0
    assert table.loc["none", "largest_group"] < table.loc["speaker+transcript", "largest_group"]


def test_holdout_sources_never_reach_train():
    rows = [(f"c{i}.wav", ["fire", "indoor"][i % 2], "", "") for i in range(200)]
    origin = ["espeak-ng;ufoai-sound" if i % 5 else "festival;ufoai-sound" for i in range(200)]
    origin[7] = "espeak-ng;sonic-pi-samples"
    result = _split(_manifest(rows, origin), holdout_sources=("festival", "sonic-pi-samples"))
    df = result.df
    held = df["origin"].str.contains("festival|sonic-pi")
    assert (df.loc[held, "split"] == HOLDOUT).all() and (df.loc[~held, "split"] != HOLDOUT).all()
    assert split_table(result).loc[HOLDOUT, "clips"] == "41"
    assert "held out: festival, sonic-pi-samples" in format_report(result)
    with pytest.raises(ValueError, match="every clip is made of a held-out source"):
        _split(_manifest(rows, origin), holdout_sources=("ufoai-sound", "sonic-pi-samples"))


def test_demo_split_is_leak_free_and_covers_every_class(demo):
    root, _ = demo
    df = assign_splits(import_aihub(root)[0])
    _assert_leak_free(df)
    sizes = df["split"].value_counts()
    assert sizes["train"] >= 26 and sizes["val"] >= 3 and sizes["test"] >= 3  # of 38
    assert df.loc[df["split"] == "train", "label"].nunique() == 19


@pytest.mark.slow
def test_the_default_demo_split(tmp_path_factory):
    """`make demo`'s data and split (30 s): balanced, leak-free, 40+ training clips per class,
    and a held-out split that training never sees."""
    from ensemble.demo import DEMO_HOLDOUT
    from ensemble.demodata.build import make_demo_data

    root = tmp_path_factory.mktemp("default_demo")
    make_demo_data(root, seed=0, workers=2, progress=False)  # the default size
    result, report = split_with_report(import_aihub(root)[0], holdout_sources=DEMO_HOLDOUT)
    df = result.df
    _assert_leak_free(df)
    spread = _speech_spread(df[df["split"] != HOLDOUT])
    assert spread["emergency"] <= 0.05 and spread["normal"] <= 0.05, spread
    assert df.loc[df["split"] == "train", "label"].value_counts().min() >= 40
    held = df["split"] == HOLDOUT
    assert 0.05 < held.mean() < 0.2
    assert not df.loc[~held, "origin"].str.contains("festival|sonic-pi-samples").any()
    speakers = split_table(result)["speakers"].astype(int)
    assert speakers["test"] >= 15 and speakers["val"] >= 15  # not one or two voices
    assert "speakers in two splits: 0; transcripts in two splits: 0" in report
