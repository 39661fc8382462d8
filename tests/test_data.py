import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import write_noise

from ensemble.core.audio import N_SAMPLES, N_TIMESTEPS, SAMPLE_RATE, AudioError
from ensemble.core.data import AudioDataModule, WindowDataset, timestep_labels, valid_samples
from ensemble.core.labels import IGNORE_ID, load_taxonomy
from ensemble.core.manifest import validate, write_manifest

TAX = load_taxonomy()


def _wav(path, seconds):
    return str(write_noise(path, seconds, level=0.1))


def test_fire_segment_marks_timesteps_500_to_599():
    labels, mask = timestep_labels(
        [(10.0, 12.0, "fire")], TAX, 0.0, n_valid=20 * SAMPLE_RATE, n_samples=N_SAMPLES
    )
    fire = TAX.id("fire")
    assert labels.shape == mask.shape == (N_TIMESTEPS,)
    assert np.flatnonzero(labels == fire).tolist() == list(range(500, 600))
    outside = np.r_[0:500, 600:1000]
    assert (labels[outside] == IGNORE_ID).all()  # audio of unknown background: ignored
    assert (labels[1000:] == 0).all()  # none over the padding only
    assert mask.sum() == 1000 and mask[:1000].all()  # 20 s of audio = 1000 valid timesteps


def test_background_fills_the_audio_outside_the_event():
    indoor = TAX.id("indoor")
    labels, _ = timestep_labels(
        [(10.0, 12.0, "fire")], TAX, 0.0, 20 * SAMPLE_RATE, N_SAMPLES, background=indoor
    )
    assert (labels[500:600] == TAX.id("fire")).all()
    assert (labels[np.r_[0:500, 600:1000]] == indoor).all() and (labels[1000:] == 0).all()


def test_whole_clip_segment_stops_at_padding():
    labels, mask = timestep_labels(
        [(math.nan, math.nan, "indoor")],
        TAX,
        0.0,
        n_valid=12 * SAMPLE_RATE + 1,
        n_samples=N_SAMPLES,
    )
    assert (labels[:601] == TAX.id("indoor")).all() and (labels[601:] == 0).all()
    assert mask.sum() == 601  # a partial timestep counts as valid


def test_segment_in_second_window_is_relative():
    labels, _ = timestep_labels(
        [(40.0, 41.0, "fall")], TAX, window_start_s=30.0, n_valid=N_SAMPLES, n_samples=N_SAMPLES
    )
    assert np.flatnonzero(labels == TAX.id("fall")).tolist() == list(range(500, 550))


def test_dataset_windows_and_items(tmp_path):
    df = validate(
        pd.DataFrame(
            {
                "path": [
                    _wav(tmp_path / "long.wav", 45.0),
                    _wav(tmp_path / "short.wav", 20.0),
                    _wav(tmp_path / "short.wav", 20.0),
                ],
                "label": ["fire", "fall", "fall"],
                "event_start": [40.0, 1.0, 15.0],
                "event_end": [42.0, 2.0, 16.0],
                "transcript": ["불이야!", "", ""],
            }
        )
    )
    ds = WindowDataset(df, TAX)
    # the 45 s clip's last window ends at its end (15-45 s), not a 15 s tail
    assert [(r.clip, r.start) for r in ds.refs] == [(0, 0), (0, 15 * SAMPLE_RATE), (1, 0)]
    second = ds[1]
    fire, fall = TAX.id("fire"), TAX.id("fall")
    assert second["wave"].shape == (N_SAMPLES,) and second["start_s"] == 15.0
    assert torch.nonzero(second["frame_labels"] == fire).flatten().tolist() == list(
        range(1250, 1350)
    )
    assert second["mask"].sum() == 1500 and second["label"] == fire
    # a window with no event still carries its clip's class; its audio's background is unknown
    first = ds[0]["frame_labels"]
    assert ds[0]["label"] == fire and (first == IGNORE_ID).all()
    # two annotations of one clip mark both segments
    short = ds[2]["frame_labels"]
    assert torch.nonzero(short == fall).flatten().tolist() == [*range(50, 100), *range(750, 800)]


def test_datamodule_batches(tmp_path):
    paths = [_wav(tmp_path / f"c{i}.wav", 10.0 + i) for i in range(6)]
    df = pd.DataFrame(
        {"path": paths, "label": ["fire", "indoor"] * 3, "split": ["train"] * 4 + ["val", "test"]}
    )
    manifest = write_manifest(df, tmp_path / "m.csv")
    dm = AudioDataModule(str(manifest), batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["wave"].shape == (3, N_SAMPLES) and batch["wave"].dtype == torch.float32
    assert batch["label"].shape == (3,) and batch["frame_labels"].shape == batch["mask"].shape == (
        3,
        N_TIMESTEPS,
    )
    assert batch["mask"].dtype == torch.bool and isinstance(batch["transcript"], list)
    assert len(dm.datasets["val"]) == len(dm.datasets["test"]) == 1


def test_datamodule_names_bad_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    df = pd.DataFrame(
        {
            "path": [_wav(tmp_path / "ok.wav", 10.0), str(bad)],
            "label": ["fire", "fall"],
            "split": ["train", "train"],
        }
    )
    dm = AudioDataModule(str(write_manifest(df, tmp_path / "m.csv")))
    with pytest.raises(AudioError, match=r"bad\.wav: not an audio file"):
        dm.setup("fit")


def test_datamodule_splits_an_unsplit_manifest(demo, tmp_path):
    from ensemble.core.aihub import import_aihub

    root, _ = demo
    manifest = write_manifest(import_aihub(root)[0], tmp_path / "m.csv")
    dm = AudioDataModule(str(manifest))
    dm.setup()
    assert set(dm.datasets) == {"train", "val", "test"}
    assert sum(len(d) for d in dm.datasets.values()) == 38


def test_window_labels_match_the_items_without_reading_audio(tmp_path, monkeypatch):
    df = validate(
        pd.DataFrame(
            {
                "path": [_wav(tmp_path / "a.wav", 45.0), _wav(tmp_path / "b.wav", 12.0)],
                "label": ["fire", "indoor"],
                "event_start": [40.0, math.nan],
                "event_end": [42.0, math.nan],
            }
        )
    )
    ds = WindowDataset(df, TAX)
    want = [int(ds[i]["label"]) for i in range(len(ds))]
    monkeypatch.setattr("ensemble.core.data.load_audio", lambda p: 1 / 0)  # no audio is read
    assert ds.window_labels().tolist() == want == [TAX.id("fire"), TAX.id("fire"), TAX.id("indoor")]


def test_valid_samples_from_the_mask():
    mask = torch.zeros(2, N_TIMESTEPS, dtype=torch.bool)
    mask[0, :50] = True
    mask[1] = True
    assert valid_samples(mask).tolist() == [16000, N_SAMPLES]
    assert valid_samples(mask, 10000).tolist() == [10000, 10000]
    with pytest.raises(ValueError, match="mask"):
        valid_samples(mask[0])


def test_train_classes_keeps_one_kind_in_train_only(tmp_path):
    paths = [_wav(tmp_path / f"c{i}.wav", 5.0) for i in range(6)]
    df = pd.DataFrame(
        {
            "path": [*paths, paths[0]],  # clip 0 has a normal and an emergency annotation
            "label": ["indoor", "fire", "outdoor", "fall", "indoor", "fire", "fall"],
            "split": ["train"] * 4 + ["val", "val", "train"],
        }
    )
    manifest = write_manifest(df, tmp_path / "m.csv")
    kinds = {}
    for kind in ("all", "normal", "emergency"):
        dm = AudioDataModule(str(manifest), train_classes=kind)
        dm.setup()
        kinds[kind] = sorted(Path(p).name for p in dm.datasets["train"].clips["path"])
        assert len(dm.datasets["val"]) == 2  # val keeps both kinds
    assert kinds["all"] == ["c0.wav", "c1.wav", "c2.wav", "c3.wav"]
    assert kinds["normal"] == ["c2.wav"]  # c0 holds an emergency annotation too
    assert kinds["emergency"] == ["c0.wav", "c1.wav", "c3.wav"]


def test_no_background_frame_of_an_emergency_clip_is_none(demo_manifest):
    """Outside its event, an emergency clip's real audio carries its background's normal class
    (the generator's record), the class the same sound has in a normal clip; never `none`."""
    from ensemble.core.manifest import read_manifest

    df = read_manifest(demo_manifest)
    ds = WindowDataset(df, TAX)
    seen = 0
    for i, ref in enumerate(ds.refs):
        clip = ds.clips.iloc[ref.clip]
        if not TAX.is_emergency(clip["label"]):
            continue
        item = ds[i]
        labels, mask = item["frame_labels"].numpy(), item["mask"].numpy()
        background = TAX.id(clip["background"])
        assert not TAX.is_emergency(background)
        outside = mask & (labels != TAX.id(clip["label"]))
        assert outside.any() and (labels[outside] == background).all()
        assert (labels[mask] != 0).all() and (labels[~mask] == 0).all()  # none: padding only
        seen += 1
    assert seen == 14 * 2


def test_background_rule_for_clips_the_data_says_nothing_about(tmp_path):
    """A normal clip's surroundings are its own class; an emergency clip's are unknown (ignored)
    unless the manifest names them."""
    df = validate(
        pd.DataFrame(
            {
                "path": [_wav(tmp_path / f"{k}.wav", 12.0) for k in "abc"],
                "label": ["fire", "fire", "washer_dryer"],
                "event_start": [2.0, 2.0, 1.0],
                "event_end": [4.0, 4.0, 3.0],
                "background": ["", "실내", ""],
            }
        )
    )
    ds = WindowDataset(df, TAX)
    outside = np.r_[0:100, 200:600]
    unknown, indoor, washer = (ds[i]["frame_labels"].numpy() for i in range(3))
    assert (unknown[outside] == IGNORE_ID).all()
    assert (indoor[outside] == TAX.id("indoor")).all()
    assert (washer[:600] == TAX.id("washer_dryer")).all()


def test_held_out_clips_are_only_predicted(tmp_path):
    paths = [_wav(tmp_path / f"c{i}.wav", 5.0) for i in range(4)]
    df = pd.DataFrame(
        {"path": paths, "label": ["fire", "indoor", "fall", "fire"]}
        | {"split": ["train", "val", "test", "holdout"]}
    )
    manifest = write_manifest(df, tmp_path / "m.csv")
    dm = AudioDataModule(str(manifest))
    dm.setup()
    assert set(dm.datasets) == {"train", "val", "test"}
    dm = AudioDataModule(str(manifest), predict_split="holdout")
    dm.setup()
    assert len(dm.datasets["holdout"]) == 1 and len(dm.datasets["train"]) == 1
    assert next(iter(dm.predict_dataloader()))["path"] == [paths[3]]
