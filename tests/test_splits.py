import pandas as pd
import pytest

from ensemble.core.aihub import import_aihub
from ensemble.core.splits import assign_splits, leaks, normalize_text


def _manifest(rows):
    cols = ["path", "label", "transcript", "speaker"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("event_start", "event_end"):
        df[c] = float("nan")
    df["split"] = df["source"] = ""
    return df


def _assert_leak_free(df):
    for col, key in (("speaker", lambda s: s), ("transcript", normalize_text)):
        keys = df[col].map(key)
        seen = df[keys != ""].groupby(keys[keys != ""])["split"].nunique()
        assert (seen == 1).all(), f"{col} in two splits: {list(seen[seen > 1].index)}"


def test_no_speaker_and_no_transcript_in_two_splits():
    rows = []
    for i in range(300):  # scripted phrases repeated across speakers, as in the AI Hub data
        phrase = f"불이야 {i % 40}!" if i % 3 else ""
        speaker = f"spk{i % 25}" if i % 4 else ""
        rows.append((f"c{i}.wav", ["fire", "indoor", "fall"][i % 3], phrase, speaker))
    df = assign_splits(_manifest(rows), seed=1)
    _assert_leak_free(df)
    assert leaks(df) == {"speaker": [], "transcript": []}
    assert (df.groupby("split")["label"].nunique() == 3).all()  # every class in every split


def test_transcript_normalisation_joins_spellings():
    rows = [
        ("a.wav", "fire", "불이야!", ""),
        ("b.wav", "fire", " 불이야 ", ""),
        ("c.wav", "fire", "불이야.", ""),
    ]
    rows += [(f"x{i}.wav", "fire", f"line {i}", "") for i in range(20)]
    df = assign_splits(_manifest(rows))
    assert df.loc[df["path"].isin(["a.wav", "b.wav", "c.wav"]), "split"].nunique() == 1


def test_empty_speaker_and_transcript_link_nothing():
    rows = [(f"c{i}.wav", "indoor", "", "") for i in range(100)]
    df = assign_splits(_manifest(rows), fractions=(0.6, 0.2, 0.2))
    counts = df["split"].value_counts()
    assert counts["train"] == 60 and counts["val"] == 20 and counts["test"] == 20


def test_rows_of_one_clip_stay_together_and_runs_repeat():
    rows = [("same.wav", "fire", f"a{i}", "") for i in range(3)] + [
        (f"c{i}.wav", "fall", "", "") for i in range(30)
    ]
    a = assign_splits(_manifest(rows), seed=5)
    b = assign_splits(_manifest(rows), seed=5)
    assert a.loc[a["path"] == "same.wav", "split"].nunique() == 1
    pd.testing.assert_frame_equal(a, b)


def test_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(_manifest([("a.wav", "fire", "", "")]), fractions=(0.5, 0.5, 0.5))


def test_demo_split_is_leak_free_and_covers_every_class(demo):
    root, _ = demo
    df = assign_splits(import_aihub(root)[0])
    _assert_leak_free(df)
    sizes = df["split"].value_counts()
    assert (
        sizes["train"] >= 26 and sizes["val"] >= 4 and sizes["test"] >= 4
    )  # of 38, aiming at 70/15/15
    assert df.loc[df["split"] == "train", "label"].nunique() == 19
