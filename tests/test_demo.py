import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from ensemble.core.aihub import import_aihub
from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.labels import load_taxonomy
from ensemble.demodata.build import CEILING_FILE, make_demo_data
from ensemble.demodata.recipes import (
    EMERGENCY_BED_MIX,
    ceiling,
    draw_bed,
    evidence_given_class,
    identifiable,
)
from ensemble.demodata.scripts import N_SETS, SESSIONS
from ensemble.demodata.speakers import FESTIVAL_SETS, make_speakers
from ensemble.demodata.synth import Voice, speak


def test_round_trip_gives_back_every_clip(demo):
    root, truths = demo
    df, report = import_aihub(root)
    assert report.unpaired_labels == [] and report.unpaired_audio == [] and report.errors == []
    assert len(df) == len(truths) == 19 * 2
    truth = pd.DataFrame([t.__dict__ for t in truths])
    truth["path"] = [str((root / a).resolve()) for a in truth["audio"]]
    truth["identifiable"] = truth["identifiable"].map({True: "true", False: "false"})
    merged = df.merge(truth, on="path", suffixes=("", "_truth"), validate="one_to_one")
    assert len(merged) == len(truths)
    for col in (
        "label",
        "event_start",
        "event_end",
        "transcript",
        "speaker",
        "background",
        "identifiable",
        "origin",
    ):
        assert (merged[col] == merged[f"{col}_truth"]).all(), col
    normal = merged["label"].isin(["indoor", "outdoor"])
    assert (merged.loc[normal, "background"] == merged.loc[normal, "label"]).all()


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


def test_speakers_are_distinct_and_festival_reads_its_own_sets():
    speakers = make_speakers(0)
    assert len({s.voice for s in speakers}) == len(speakers) == len({s.id for s in speakers})
    assert len(speakers) == N_SETS * len(SESSIONS) * 4
    ked = [s for s in speakers if s.voice.engine == "festival"]
    assert ked and all(s.language == "en" and s.script_set in FESTIVAL_SETS for s in ked)
    english = [s for s in speakers if s.language == "en" and s.script_set in FESTIVAL_SETS]
    assert english == ked  # no espeak-ng voice reads those scripts: a held-out voice is clean
    assert len({s.voice.variant for s in speakers if s.voice.engine == "espeak-ng"}) > 30


def test_festival_speaks():
    wave = speak("The kitchen is on fire!", Voice("en", "ked_diphone", 120, 100, "festival", 1.05))
    assert 0.5 < len(wave) / SAMPLE_RATE < 3 and np.abs(wave).max() > 0.1


def test_identifiable_follows_what_can_be_heard():
    line = {"text": "불이야!", "voice": {"engine": "espeak-ng"}}
    assert identifiable("fire", {"sounds": [{"pool": "flames"}], "speech": None})
    assert identifiable("violence", {"sounds": [{"pool": "scream"}], "speech": line})
    assert not identifiable("violence", {"sounds": [{"pool": "scream"}], "speech": None})
    assert not identifiable("theft", {"sounds": [{"pool": "doors"}], "speech": None})
    assert not identifiable("indoor", {"sounds": [{"pool": "doors"}], "speech": None})  # a theft?
    assert identifiable("indoor", {"sounds": [{"pool": "chimes"}], "speech": None})
    assert identifiable("indoor", {"sounds": [{"pool": "doors"}], "speech": line})


def test_ceiling_of_the_recipes():
    keys = list(load_taxonomy().keys[1:])
    best, per_class = ceiling(keys)
    assert 0.9 < best < 1.0 and best == pytest.approx(np.mean(list(per_class.values())))
    assert (
        per_class["help_request"] == per_class["indoor"] == 1.0
    )  # always a line / a bed of its own
    assert per_class["robbery"] < 0.9  # its speechless clips sound like assault or violence
    for key in keys:  # every draw of a class is accounted for
        assert sum(evidence_given_class(key).values()) == pytest.approx(1.0)


def test_demo_readme_states_the_ceiling(demo):
    root, _ = demo
    summary = yaml.safe_load((root / CEILING_FILE).read_text(encoding="utf-8"))
    assert summary["best_acc19"] == pytest.approx(
        ceiling(list(load_taxonomy().keys[1:]))[0], abs=1e-4
    )
    assert set(summary["classes"]) == set(load_taxonomy().keys[1:])
    assert "Best possible 19-class accuracy" in (root / "README.md").read_text(encoding="utf-8")


def test_the_background_says_nothing_of_which_emergency():
    rng = np.random.default_rng(0)
    mix = dict(EMERGENCY_BED_MIX)
    for key in ("fire", "fall", "theft"):
        beds = pd.Series([draw_bed(key, rng) for _ in range(4000)]).value_counts(normalize=True)
        for bed, p in mix.items():
            assert beds[bed] == pytest.approx(p, abs=0.03), (key, bed)
    assert draw_bed("vacuum_cleaner", rng) == "vacuum_cleaner"


def test_docs_match_the_recipes():
    from pathlib import Path

    from ensemble.demodata.recipes import describe

    doc = (Path(__file__).resolve().parents[1] / "docs" / "demo-data.md").read_text(
        encoding="utf-8"
    )
    assert describe() in doc, "docs/demo-data.md is out of date with ensemble/demodata/recipes.py"
