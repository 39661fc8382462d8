"""Cut listening windows: where they come from, their labels, and that only train clips go in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import write_noise

from ensemble.core.audio import SAMPLE_RATE, load_audio
from ensemble.core.crops import CROP_SOURCE, CropError, crop_rows, crop_windows
from ensemble.core.data import WindowDataset
from ensemble.core.joins import _normal_train_clips, join_normal_clips
from ensemble.core.labels import load_taxonomy
from ensemble.core.manifest import read_manifest

COLUMNS = [
    "path", "label", "transcript", "event_start", "event_end", "speaker", "split", "source",
    "background",
]  # fmt: skip


@pytest.fixture
def manifest(tmp_path):
    """Emergency and normal train clips (with and without speech), and val/test ones."""
    rows = [
        ("fire.wav", "fire", "불이야!", 14.0, 6.0, 9.5, "train", "indoor"),
        ("fall.wav", "fall", "", 20.0, 15.0, 19.0, "train", "outdoor"),
        ("long_event.wav", "violence", "", 25.0, 2.0, 14.0, "train", "indoor"),  # event > 10 s
        ("short.wav", "theft", "", 8.0, 1.0, 3.0, "train", "indoor"),  # clip < 10 s
        ("quiet.wav", "washer_dryer", "", 22.0, "", "", "train", ""),
        ("quiet2.wav", "outdoor", "", 16.0, "", "", "train", ""),
        ("talk.wav", "indoor", "뉴스 좀 보자.", 18.0, "", "", "train", ""),  # speech: never cut
        ("val.wav", "outdoor", "", 15.0, "", "", "val", ""),
        ("test.wav", "fire", "", 15.0, 2.0, 4.0, "test", "indoor"),
    ]
    out = []
    for i, (name, label, text, seconds, start, end, split, bg) in enumerate(rows):
        write_noise(tmp_path / name, seconds, seed=i)
        out.append((name, label, text, start, end, "s", split, "demo", bg))
    path = tmp_path / "manifest.csv"
    pd.DataFrame(out, columns=COLUMNS).to_csv(path, index=False)
    return path


def _source_of(wave: np.ndarray, sources: dict[str, np.ndarray]) -> tuple[str, float]:
    """The clip and offset (s) a cut window's samples were taken from."""
    for name, w in sources.items():
        if len(w) < len(wave):
            continue
        starts = np.flatnonzero(np.abs(w[: len(w) - len(wave) + 1] - wave[0]) < 1e-4)
        for i in starts:
            if np.allclose(w[i : i + len(wave)], wave, atol=1e-4):
                return name, i / SAMPLE_RATE
    raise AssertionError("a cut window is no slice of any source clip")


def test_cut_windows_hold_whole_events_or_quiet_normal_audio(manifest, tmp_path):
    taxonomy = load_taxonomy()
    sources = {p.name: load_audio(p) for p in tmp_path.glob("*.wav")}
    original = read_manifest(manifest)
    new = crop_windows(manifest, 20, seed=3)
    assert new["path"].nunique() == 20 and set(new["split"]) == {"train"}
    df = read_manifest(manifest)
    assert (df["source"] == CROP_SOURCE).sum() == len(new)
    n_emergency = 0
    for path, rows in df[df["source"] == CROP_SOURCE].groupby("path"):
        wave = load_audio(path)
        assert len(wave) == 10 * SAMPLE_RATE
        name, offset = _source_of(wave, sources)
        assert name in {"fire.wav", "fall.wav", "quiet.wav", "quiet2.wav"}
        src = original[original["path"].str.endswith(name)].iloc[0]
        assert (rows["label"] == src["label"]).all()
        if taxonomy.is_emergency(src["label"]):  # the whole event, re-timed, with its speech
            n_emergency += 1
            (row,) = rows.itertuples()
            assert row.event_start == pytest.approx(src["event_start"] - offset, abs=2e-3)
            assert row.event_end == pytest.approx(src["event_end"] - offset, abs=2e-3)
            assert 0 <= row.event_start < row.event_end <= 10.0
            assert row.transcript == src["transcript"] and row.background == src["background"]
        else:
            assert (rows["transcript"].fillna("") == "").all()
    assert n_emergency == 10  # half of them


def test_cut_windows_are_reproducible_and_a_rerun_replaces_them(manifest, tmp_path):
    crop_windows(manifest, 6, seed=1)
    first = {p.name: p.read_bytes() for p in (tmp_path / "crops").glob("*.wav")}
    crop_windows(manifest, 6, seed=1)
    again = {p.name: p.read_bytes() for p in (tmp_path / "crops").glob("*.wav")}
    assert first == again and len(first) == 6
    assert (read_manifest(manifest)["source"] == CROP_SOURCE).sum() == 6


def test_a_cut_window_is_labelled_event_and_background(manifest):
    taxonomy = load_taxonomy()
    crop_windows(manifest, 4, seed=2)
    df = read_manifest(manifest)
    dataset = WindowDataset(df[df["source"] == CROP_SOURCE], taxonomy)
    for i, ref in enumerate(dataset.refs):
        item, clip = dataset[i], dataset.clips.iloc[ref.clip]
        labels = set(np.unique(item["frame_labels"][item["mask"]].numpy()))
        event = {taxonomy.id(lab) for _, _, lab in clip["segments"]}
        assert event <= labels and -100 not in labels  # the event, its background around it


def test_joins_are_cut_but_never_joined_again(manifest, tmp_path):
    join_normal_clips(manifest, 3, seed=0)
    crop_windows(manifest, 8, seed=0)
    join_normal_clips(manifest, 3, seed=0)  # the crops are no join source
    df = read_manifest(manifest)
    assert (df["source"] == CROP_SOURCE).sum() >= 8 and df["path"].nunique() == 9 + 3 + 8
    cut = df[df["source"] == CROP_SOURCE]["path"].map(lambda p: p.rsplit("/", 1)[-1])
    assert cut.str.startswith("crop_").all()
    joinable = _normal_train_clips(df, load_taxonomy())["path"]
    assert len(joinable) and not joinable.str.contains("crop_").any()  # crops are never joined


def test_crop_rows_intersect_and_shift():
    rows = pd.DataFrame(
        {
            "path": ["a"] * 3,
            "label": ["fire", "indoor", "fall"],
            "source": ["demo"] * 3,
            "event_start": [1.0, 5.0, 12.0],
            "event_end": [4.0, 9.0, 14.0],
        }
    )
    out = crop_rows(rows, 3.0, 5.0, "crop.wav")
    assert out["label"].tolist() == ["fire", "indoor"]  # fall (12-14 s) lies outside 3-8 s
    assert out["event_start"].tolist() == [0.0, 2.0] and out["event_end"].tolist() == [1.0, 5.0]
    assert set(out["path"]) == {"crop.wav"} and set(out["source"]) == {CROP_SOURCE}


def test_cut_windows_need_clips_long_enough(tmp_path):
    write_noise(tmp_path / "x.wav", 8.0)
    path = tmp_path / "m.csv"
    row = ("x.wav", "indoor", "", "", "", "s", "train", "demo", "")
    pd.DataFrame([row], columns=COLUMNS).to_csv(path, index=False)
    with pytest.raises(CropError, match="at least 10 s"):
        crop_windows(path, 4)


def test_a_member_can_train_without_the_cut_windows(manifest):
    from ensemble.core.data import AudioDataModule

    crop_windows(manifest, 4, seed=0)
    kept = AudioDataModule(manifest, window_s=30.0, skip_sources=("crops",))
    every = AudioDataModule(manifest, window_s=30.0)
    kept.setup(), every.setup()
    paths = {
        name: set(dm.datasets["train"].clips["path"])
        for name, dm in (("kept", kept), ("every", every))
    }
    assert not any("crop_" in p for p in paths["kept"]) and len(paths["every"] - paths["kept"]) == 4
    assert set(kept.datasets["val"].clips["path"]) == set(every.datasets["val"].clips["path"])
