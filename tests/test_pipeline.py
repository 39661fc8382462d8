"""Folder inference: configs, good and bad files, resume after a kill, DDP shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ensemble.config import load_config
from ensemble.core.aihub import import_aihub
from ensemble.members import EnsembleModule
from ensemble.pipeline import infer
from ensemble.vote import VoteRule, decide
from ensemble.windows import list_audio

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ["whisper_head", "keyword_judge", "cnn", "anomaly"]


def good_clips(demo, n: int) -> list[Path]:
    paths = sorted(import_aihub(demo[0])[0]["path"].unique())
    return [Path(p) for p in paths[:: max(1, len(paths) // n)][:n]]


def copy_clips(clips: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        (folder / f"sub{i % 2}").mkdir(exist_ok=True)
        shutil.copy(clip, folder / f"sub{i % 2}" / f"good{i}.wav")
    return folder


def rows(out: Path) -> pd.DataFrame:
    return pd.read_json(out / "predictions.jsonl", lines=True, dtype=False).set_index("path")


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """The same files, decisions and classes; probabilities equal to float noise (batches differ)."""
    assert list(a.index) == list(b.index)
    for column in a.columns:
        if column.startswith(("p_", "score", "confidence", "duration")):
            np.testing.assert_allclose(a[column].astype(float), b[column].astype(float), atol=1e-4)
        elif column not in ("events", "transcript"):
            assert a[column].fillna("-").tolist() == b[column].fillna("-").tolist(), column


def test_ensemble_yaml_names_four_members_and_one_whisper_module(ensemble_config):
    config = load_config(ROOT / "configs/ensemble.yaml")
    assert config.names == MEMBERS and config.vote == VoteRule("majority", tie_break="soft")
    assert (config.window_s, config.hop_s, config.batch_size) == (30.0, None, None)
    module = EnsembleModule(load_config(ensemble_config))
    assert len(module.members) == 3  # whisper_head and keyword_judge share one module


@pytest.mark.parametrize(
    "change, match",
    [
        ({"batch_sise": 4}, "batch_sise"),
        ({"vote": {"rule": "plurality"}}, "plurality"),
        ({"members": []}, "at least one member"),
        ({"window_s": 10.0}, "window_s"),
    ],
)
def test_config_errors_name_the_fault(tmp_path, change, match):
    import yaml

    raw = yaml.safe_load((ROOT / "configs/ensemble.yaml").read_text()) | change
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_bad_member_threshold_and_missing_checkpoint(ensemble_config, tmp_path):
    import yaml

    raw = yaml.safe_load(ensemble_config.read_text())
    raw["members"][2]["threshold"] = 1.5
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="cnn: threshold"):
        load_config(tmp_path / "a.yaml")
    raw["members"][2]["threshold"] = None
    raw["members"][2]["checkpoint"] = str(tmp_path / "missing.ckpt")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(FileNotFoundError, match=r"not found .*: cnn: .*missing\.ckpt$"):
        EnsembleModule(load_config(tmp_path / "b.yaml"))


def write_bad_files(folder: Path) -> dict[str, str]:
    """Each kind of bad file; name -> the fault its error row must give."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "whole.wav", np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    data = (folder / "whole.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    (folder / "whole.wav").unlink()
    (folder / "text.wav").write_text("this is not audio, only text named .wav\n")
    nan = np.zeros(16000, np.float32)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    (folder / "x.wav").mkdir()
    (folder / "gone.wav").symlink_to(folder / "does-not-exist.wav")
    sf.write(folder / "short.wav", np.full(800, 0.1, np.float32), 16000)  # 0.05 s
    faults = {
        "empty.wav": "empty file",
        "truncated.wav": "truncated",
        "text.wav": "not an audio file",
        "nan.wav": "NaN/inf samples",
        "x.wav": "is a directory",
        "gone.wav": "no such file",
        "short.wav": "too short",
    }
    if os.geteuid() != 0:  # root reads anything: then the dangling link is the unreadable file
        sf.write(folder / "locked.wav", np.zeros(16000, np.float32), 16000)
        (folder / "locked.wav").chmod(0)
        faults["locked.wav"] = "cannot be read"
    return faults


def write_silence(path: Path, seconds: float, sr: int = 8000) -> None:
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        block = np.zeros(sr * 600, np.int16)
        for _ in range(int(seconds // 600)):
            f.write(block)


def test_good_and_bad_files_one_row_each(demo, ensemble_config, tmp_path):
    folder = copy_clips(good_clips(demo, 3), tmp_path / "in")
    faults = write_bad_files(folder / "bad")
    (folder / "long").mkdir()
    write_silence(folder / "long" / "silence_2h.wav", 7200)
    result = infer(folder, tmp_path / "out", ensemble_config)
    table = rows(tmp_path / "out")
    assert len(table) == 3 + len(faults) + 1 == result.n_files  # one row per file
    assert result.n_errors == len(faults)
    for name, fault in faults.items():
        row = table.loc[f"bad/{name}"]
        assert row["status"] == "error" and fault in row["error"]
        assert pd.isna(row["emergency"]) and pd.isna(row["p_cnn"])
    long = table.loc["long/silence_2h.wav"]
    assert long["status"] == "ok" and long["duration_s"] == pytest.approx(7200, abs=0.01)
    assert long["n_windows"] == 240
    good = table[table.index.str.startswith("sub")]
    assert (good["status"] == "ok").all() and (good["n_windows"] == 1).all()
    for m in MEMBERS:
        assert good[f"p_{m}"].between(0, 1).all() and good[f"vote_{m}"].isin([True, False]).all()
    # the bad files change nothing in the good files' rows
    for sub in ("sub0", "sub1"):
        shutil.copytree(folder / sub, tmp_path / "alone_in" / sub)
    infer(tmp_path / "alone_in", tmp_path / "alone", ensemble_config)
    assert_same_rows(good, rows(tmp_path / "alone"))
    csv = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(csv["path"]) == list(table.index) and "class_ko" in csv.columns
    assert json.loads((tmp_path / "out" / "run.json").read_text())["n_errors"] == len(faults)


def test_windows_hold_the_vote_of_their_members(demo, ensemble_config, tmp_path):
    folder = copy_clips(good_clips(demo, 4), tmp_path / "in")
    infer(folder, tmp_path / "out", ensemble_config)
    windows = pd.read_json(tmp_path / "out" / "windows.jsonl", lines=True, dtype=False)
    votes = windows[[f"vote_{m}" for m in MEMBERS]].to_numpy(bool).T
    probs = windows[[f"p_{m}" for m in MEMBERS]].to_numpy(float).T
    decision = decide(votes, probs, VoteRule())
    assert windows["emergency"].tolist() == decision.emergency.tolist()
    np.testing.assert_allclose(windows["score"], decision.score, atol=1e-6)
    files = rows(tmp_path / "out")
    by_file = windows.groupby("path")["emergency"].any()
    assert files["emergency"].to_dict() == by_file.to_dict()
    # Whisper's no-speech probability comes with every window; the gate leaves those above empty
    gate = load_config(ensemble_config).members[1].overrides["speech_gate"]
    assert windows["no_speech_prob"].between(0, 1).all()
    assert (windows.loc[windows["no_speech_prob"] > gate, "transcript"] == "").all()


def test_overrides_reach_the_whisper_module(ensemble_config, tmp_path):
    import yaml

    raw = yaml.safe_load(ensemble_config.read_text())
    assert raw["members"][0]["overrides"]["decoder"] == "ct2"  # configs/ensemble.yaml's choice
    for member in raw["members"][:2]:
        member["overrides"] = {"speech_gate": 0.25, "decoder": "transformers"}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    module = EnsembleModule(load_config(tmp_path / "a.yaml"))
    whisper = module.members["m0"]
    assert len(module.members) == 3 and whisper.decoding.speech_gate == 0.25
    assert whisper.hparams.decoder == "transformers" and whisper._ct2() is None
    assert whisper.wanted_outputs == {"whisper_head", "keyword_judge"}
    raw["members"][0]["overrides"] = {"speech_gat": 0.25}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"whisper_head: bad overrides .*speech_gat"):
        EnsembleModule(load_config(tmp_path / "b.yaml"))


def test_whisper_head_alone_does_not_decode(ensemble_config, tmp_path, monkeypatch):
    import yaml

    import whisper_head.module

    raw = yaml.safe_load(ensemble_config.read_text())
    raw["members"] = raw["members"][:1]
    (tmp_path / "alone.yaml").write_text(yaml.safe_dump(raw))
    module = EnsembleModule(load_config(tmp_path / "alone.yaml"))
    calls = []
    monkeypatch.setattr(
        whisper_head.module, "transcribe_encoded", lambda *a, **k: calls.append(1) or []
    )
    wave = np.zeros((2, 16000 * 30), np.float32)
    import torch

    out = module(torch.from_numpy(wave), torch.tensor([16000 * 30, 16000 * 5]))
    assert list(out) == ["whisper_head"] and calls == []


def test_existing_outputs_are_refused_without_resume(demo, ensemble_config, tmp_path):
    folder = copy_clips(good_clips(demo, 1), tmp_path / "in")
    infer(folder, tmp_path / "out", ensemble_config)
    with pytest.raises(ValueError, match="--resume or --overwrite"):
        infer(folder, tmp_path / "out", ensemble_config)
    again = infer(folder, tmp_path / "out", ensemble_config, resume=True)
    assert (again.n_files, again.n_skipped) == (0, 1)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ensemble.cli", *args]


def test_resume_after_a_kill_gives_the_uninterrupted_table(demo, ensemble_config, tmp_path):
    folder = copy_clips(good_clips(demo, 10), tmp_path / "in")
    whole = infer(folder, tmp_path / "whole", ensemble_config)
    out = tmp_path / "killed"
    command = cli("infer", str(folder), "--out", str(out), "--config", str(ensemble_config))
    proc = subprocess.Popen([*command, "--batch-size", "1"], stderr=subprocess.DEVNULL)
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if predictions.exists() and len(predictions.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    n_before = len(predictions.read_text().splitlines())
    assert 3 <= n_before < 10, "the run was not cut short"
    with predictions.open("a") as f:
        f.write('{"path": "sub0/good8.wav", "dura')  # a row torn by the kill
    resumed = infer(folder, out, ensemble_config, resume=True)
    assert resumed.n_skipped == n_before and resumed.n_files == 10 - n_before
    assert_same_rows(rows(out), rows(tmp_path / "whole"))
    assert len(whole.table) == 10 and not list(out.glob("*.rank*"))
    windows = pd.read_json(out / "windows.jsonl", lines=True)
    assert len(windows) == 10 and not windows.duplicated(["path", "window"]).any()


def test_two_process_ddp_equals_one_process(demo, ensemble_config, tmp_path):
    folder = copy_clips(good_clips(demo, 5), tmp_path / "in")
    infer(folder, tmp_path / "one", ensemble_config)
    out = tmp_path / "two"
    command = cli("infer", str(folder), "--out", str(out), "--config", str(ensemble_config))
    done = subprocess.run(
        [*command, "--devices", "2", "--strategy", "ddp", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("predictions:") == 1  # rank 0 alone reports
    run = json.loads((out / "run.json").read_text())
    assert run["devices"] == 2 and not list(out.glob("*.rank*"))
    assert_same_rows(rows(out), rows(tmp_path / "one"))


def test_list_audio_is_recursive_sorted_and_by_extension(tmp_path):
    for name in ["b/z.wav", "a.FLAC", "b/a.mp3", "notes.txt", "c/d/e.ogg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio(tmp_path)]
    assert found == ["a.FLAC", "b/a.mp3", "b/z.wav", "c/d/e.ogg"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_audio(tmp_path / "nope")


def test_special_files_and_a_stalled_file_are_error_rows_within_seconds(
    demo, ensemble_config, tmp_path, monkeypatch
):
    import threading

    import ensemble.windows as windows

    folder = copy_clips(good_clips(demo, 2), tmp_path / "in")
    os.mkfifo(folder / "fifo.wav")  # opened for reading, it would block until a writer comes
    os.symlink("/dev/zero", folder / "device.wav")  # a character device: endless zeros
    shutil.copy(next(folder.rglob("good0.wav")), folder / "stall.wav")
    real = windows.stream_windows

    def stalling(path, *args, **kwargs):  # a network file that stops answering
        if Path(path).name == "stall.wav":
            time.sleep(30)
        yield from real(path, *args, **kwargs)

    monkeypatch.setattr(windows, "stream_windows", stalling)
    config = load_config(ensemble_config, read_timeout_s=2.0)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(r=infer(folder, tmp_path / "out", config)), daemon=True
    )
    t0 = time.perf_counter()
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "infer hung on a special or stalled file"
    assert time.perf_counter() - t0 < 60
    table = rows(tmp_path / "out")
    assert "FIFO" in table.loc["fifo.wav", "error"]
    assert "character device" in table.loc["device.wav", "error"]
    assert "stalled" in table.loc["stall.wav", "error"]
    ok = table[table["status"] == "ok"]
    assert sorted(ok.index) == ["sub0/good0.wav", "sub1/good1.wav"]
    assert ok["emergency"].notna().all() and result["r"].n_errors == 3


def test_config_paths_are_relative_to_the_config_file(demo, ensemble_config, tmp_path, monkeypatch):
    import yaml

    from ensemble.config import relative_to

    raw = yaml.safe_load(ensemble_config.read_text())
    home = tmp_path / "deep" / "configs"
    home.mkdir(parents=True)
    for member in raw["members"]:
        member["checkpoint"] = relative_to(member["checkpoint"], home)
        assert not Path(member["checkpoint"]).is_absolute()
    (home / "ensemble.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the repository nor the config's folder
    config = load_config(Path("..") / "deep" / "configs" / "ensemble.yaml")
    assert all(Path(m.checkpoint).is_file() for m in config.members)
    folder = copy_clips(good_clips(demo, 1), tmp_path / "in")
    result = infer(folder, tmp_path / "out", config)
    assert result.n_files == 1 and result.n_errors == 0
