"""Joined normal clips: what they are made of, their labels, and that only train clips go in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import write_noise

from ensemble.core.audio import SAMPLE_RATE, load_audio
from ensemble.core.data import WindowDataset
from ensemble.core.joins import JOIN_SOURCE, join_normal_clips
from ensemble.core.labels import load_taxonomy
from ensemble.core.manifest import read_manifest

COLUMNS = ["path", "label", "transcript", "event_start", "event_end", "speaker", "split", "source"]


@pytest.fixture
def manifest(tmp_path):
    """Normal train clips (with and without speech), an emergency train clip, and val/test ones."""
    rows = [
        ("a0.wav", "indoor", "뉴스 좀 보자.", 12.0, "s1", "train"),
        ("a1.wav", "outdoor", "Take an umbrella.", 20.0, "s2", "train"),
        ("b0.wav", "washer_dryer", "", 25.0, "", "train"),
        ("b1.wav", "vacuum_cleaner", "", 14.0, "", "train"),
        ("long.wav", "indoor", "", 29.0, "", "train"),  # too long for A, a speechless B
        ("fire.wav", "fire", "불이야!", 15.0, "s3", "train"),
        ("val.wav", "outdoor", "", 10.0, "", "val"),
        ("test.wav", "other_appliance", "", 10.0, "", "test"),
    ]
    out = []
    for i, (name, label, text, seconds, speaker, split) in enumerate(rows):
        write_noise(tmp_path / name, seconds, seed=i)
        out.append((name, label, text, "", "", speaker, split, "demo"))
    path = tmp_path / "manifest.csv"
    pd.DataFrame(out, columns=COLUMNS).to_csv(path, index=False)
    return path


def _contains(wave: np.ndarray, probe: np.ndarray) -> bool:
    """Whether `probe` occurs in `wave` at some sample offset (within 16-bit rounding)."""
    n = len(probe)
    starts = np.flatnonzero(np.abs(wave[: len(wave) - n + 1] - probe[0]) < 1e-4)
    return any(np.allclose(wave[i : i + n], probe, atol=1e-4) for i in starts)


def _audio(tmp_path) -> dict[str, np.ndarray]:
    return {p.name: load_audio(p) for p in tmp_path.glob("*.wav")}


def test_a_joined_clip_is_a_whole_normal_clip_and_a_quiet_piece_of_another_class(
    manifest, tmp_path
):
    taxonomy = load_taxonomy()
    sources = _audio(tmp_path)
    new = join_normal_clips(manifest, 12, seed=3)
    assert new["path"].nunique() == 12 and len(new) == 24
    df = read_manifest(manifest)
    joins = df[df["source"] == JOIN_SOURCE]
    assert set(joins["split"]) == {"train"} and len(df) == 8 + 24
    for path, rows in joins.groupby("path"):
        wave = load_audio(path)
        assert len(wave) <= 30 * SAMPLE_RATE
        spans = sorted((float(s), float(e), lab, t) for s, e, lab, t in zip(
            rows.event_start, rows.event_end, rows.label, rows.transcript, strict=True))  # fmt: skip
        assert spans[0][0] == 0 and spans[0][1] == spans[1][0]
        assert abs(spans[1][1] - len(wave) / SAMPLE_RATE) < 1e-3  # the rows cover the clip
        assert spans[0][2] != spans[1][2]  # two scenes
        assert not any(taxonomy.is_emergency(lab) for _, _, lab, _ in spans)
        whole = [name for name, w in sources.items() for part in (wave[:len(w)], wave[-len(w):])
                 if len(w) < len(wave) and np.allclose(part, w, atol=1e-4)]  # fmt: skip
        assert whole and whole[0] in {"a0.wav", "a1.wav", "b0.wav", "b1.wav"}  # A, unchanged
        a_seconds = len(sources[whole[0]]) / SAMPLE_RATE  # A's row spans A's samples
        assert any(abs(s[1] - s[0] - a_seconds) < 1e-3 for s in spans)
        # the transcript is A's, on A's row; the other piece comes from a clip without speech
        assert sum(bool(s[3]) for s in spans) <= 1
        a_wave = sources[whole[0]]
        rest = wave[len(a_wave):] if np.allclose(wave[: len(a_wave)], a_wave, atol=1e-4) else (
            wave[: len(wave) - len(a_wave)])  # fmt: skip
        probe = rest[: SAMPLE_RATE // 2]
        quiet = [n for n in ("b0.wav", "b1.wav", "long.wav") if _contains(sources[n], probe)]
        assert quiet, f"{path}: the piece of B is not from a clip without speech"
    used = set(joins["origin"]) | set(joins["speaker"])
    assert "s3" not in used  # never the emergency clip's speaker


def test_joins_never_read_val_test_or_emergency_audio(manifest, tmp_path):
    sources = _audio(tmp_path)
    join_normal_clips(manifest, 10, seed=0)
    banned = [sources[n] for n in ("val.wav", "test.wav", "fire.wav")]
    for path in (tmp_path / "joins").glob("*.wav"):
        wave = load_audio(path)
        for b in banned:  # no 0.1 s of a banned clip anywhere in a join
            for start in range(0, len(b) - 1600, SAMPLE_RATE):
                assert not _contains(wave, b[start : start + 1600])


def test_joins_are_reproducible_and_a_rerun_replaces_them(manifest, tmp_path):
    join_normal_clips(manifest, 5, seed=1)
    first = {p.name: p.read_bytes() for p in (tmp_path / "joins").glob("*.wav")}
    join_normal_clips(manifest, 5, seed=1)
    again = {p.name: p.read_bytes() for p in (tmp_path / "joins").glob("*.wav")}
    assert first == again and len(first) == 5
    df = read_manifest(manifest)
    assert (df["source"] == JOIN_SOURCE).sum() == 10  # not 20: the first ones were replaced


def test_a_joined_window_is_labelled_by_each_scene(manifest):
    taxonomy = load_taxonomy()
    join_normal_clips(manifest, 4, seed=2)
    df = read_manifest(manifest)
    joins = df[df["source"] == JOIN_SOURCE]
    dataset = WindowDataset(joins, taxonomy)
    for i, ref in enumerate(dataset.refs):
        item = dataset[i]
        clip = dataset.clips.iloc[ref.clip]
        labels = item["frame_labels"][item["mask"]].numpy()
        ids = {taxonomy.id(lab) for _, _, lab in clip["segments"]}
        assert set(np.unique(labels)) == ids  # both scenes, nothing unknown, no `none`
        assert not taxonomy.is_emergency(taxonomy.classes[int(item["label"])].key)


def test_joins_need_normal_clips_of_two_classes(tmp_path):
    write_noise(tmp_path / "x.wav", 10.0)
    path = tmp_path / "m.csv"
    row = ("x.wav", "indoor", "hello", "", "", "s", "train", "demo")
    pd.DataFrame([row], columns=COLUMNS).to_csv(path, index=False)
    with pytest.raises(ValueError, match="two classes"):
        join_normal_clips(path, 3)


def test_joins_need_a_speechless_clip_of_another_class(tmp_path):
    rows = [("x.wav", "indoor", "hello"), ("y.wav", "indoor", ""), ("z.wav", "outdoor", "hi")]
    for i, (name, _, _) in enumerate(rows):
        write_noise(tmp_path / name, 10.0, seed=i)
    path = tmp_path / "m.csv"
    table = [(n, lab, t, "", "", "s", "train", "demo") for n, lab, t in rows]
    pd.DataFrame(table, columns=COLUMNS).to_csv(path, index=False)
    # z (outdoor) can take y (indoor, speechless); x and y cannot: the joins use z alone
    new = join_normal_clips(path, 3)
    assert set(new["label"]) == {"outdoor", "indoor"} and set(new["transcript"]) == {"hi", ""}
    pd.DataFrame(table[:2], columns=COLUMNS).to_csv(path, index=False)  # no outdoor clip
    with pytest.raises(ValueError, match="another class"):
        join_normal_clips(path, 3)
