import hashlib
import json

import numpy as np
import pandas as pd
import soundfile as sf

from ensemble.core.aihub import import_aihub
from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.demo.build import make_demo_data, make_speakers
from ensemble.core.labels import load_taxonomy


def test_round_trip_gives_back_every_clip(demo):
    root, truths = demo
    df, report = import_aihub(root)
    assert report.unpaired_labels == [] and report.unpaired_audio == [] and report.errors == []
    assert len(df) == len(truths) == 19 * 2
    truth = pd.DataFrame([t.__dict__ for t in truths])
    truth["path"] = [str((root / a).resolve()) for a in truth["audio"]]
    merged = df.merge(truth, on="path", suffixes=("", "_truth"), validate="one_to_one")
    assert len(merged) == len(truths)
    for col in ("label", "event_start", "event_end", "transcript", "speaker"):
        assert (merged[col] == merged[f"{col}_truth"]).all(), col


def test_every_class_and_layout(demo):
    root, truths = demo
    taxonomy = load_taxonomy()
    assert {t.label for t in truths} == set(taxonomy.keys[1:])
    fire = next(t for t in truths if t.label == "fire")
    assert fire.audio.startswith("Training/[원천]8.화재_1/")
    assert fire.label_json.startswith("Training/[라벨]8.화재/")
    doc = json.loads((root / fire.label_json).read_text(encoding="utf-8"))
    assert doc["annotations"][0]["categories"]["category_02"] == "화재"
    assert set(doc["audio"]) == {
        "fileName",
        "fileSize",
        "duration",
        "sampleRate",
        "bitRate",
        "recodingType",
    }
    assert doc["synthesis"]["seed"] == [0, 8, int(fire.stem.split("_")[1])]


def test_clips_are_real_audio_with_the_event_inside(demo):
    root, truths = demo
    taxonomy = load_taxonomy()
    for t in truths:
        wave, sr = sf.read(root / t.audio)
        duration = len(wave) / sr
        assert sr == SAMPLE_RATE and 10.0 <= duration <= 32.0
        assert 0 < np.abs(wave).max() <= 1.0 and np.isfinite(wave).all()
        if taxonomy[t.label].emergency:
            assert 0 <= t.event_start < t.event_end <= duration
            assert t.event_end - t.event_start < duration  # a segment, not the whole clip
        else:
            assert t.event_start == 0 and abs(t.event_end - duration) < 1e-3


def test_honest_data_not_a_puzzle(demo):
    root, truths = demo
    taxonomy = load_taxonomy()
    docs = {
        t.label_json: json.loads((root / t.label_json).read_text(encoding="utf-8")) for t in truths
    }
    emergency = [t for t in truths if taxonomy[t.label].emergency]
    # emergency backgrounds are drawn from one mix, whatever the class
    beds = {docs[t.label_json]["synthesis"]["background"]["kind"] for t in emergency}
    assert len(beds) >= 3
    # speech is in Korean and English, some normal clips talk, levels vary
    texts = [t.transcript for t in truths if t.transcript]
    assert any(any("\uac00" <= ch <= "\ud7a3" for ch in x) for x in texts)
    assert any(x.isascii() for x in texts)
    snrs = [d["synthesis"]["snr_db"] for d in docs.values() if d["synthesis"]["snr_db"] is not None]
    assert min(snrs) < 6 and max(snrs) > 12


def test_same_seed_same_bytes(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    make_demo_data(tmp_path / "a", per_class=1, seed=3, progress=False)
    make_demo_data(tmp_path / "b", per_class=1, seed=3, progress=False, workers=2)
    make_demo_data(tmp_path / "c", per_class=1, seed=4, progress=False)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_speakers_are_distinct():
    speakers = make_speakers(0)
    assert len({s.voice for s in speakers}) == len(speakers) == len({s.id for s in speakers})


def test_docs_match_the_recipes():
    from pathlib import Path

    from ensemble.core.demo.recipes import describe

    doc = (Path(__file__).resolve().parents[1] / "docs" / "demo-data.md").read_text(
        encoding="utf-8"
    )
    assert describe() in doc, "docs/demo-data.md is out of date with ensemble/core/demo/recipes.py"
