"""The `emergency-ensemble` command: data subcommands and the main job."""

import json
from pathlib import Path

import pandas as pd

from ensemble.cli import main
from ensemble.core.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_import_split_summary(demo, tmp_path, capsys):
    root, truths = demo
    out = tmp_path / "m.csv"
    assert main(["import-aihub", str(root), "--out", str(out), "--split"]) == 0
    text = capsys.readouterr().out
    assert "38 paired" in text and "unpaired label files (no audio): 0" in text
    df = read_manifest(out)
    assert len(df) == len(truths) and set(df["split"]) == {"train", "val", "test"}
    assert pd.read_csv(tmp_path / "m.unpaired.csv").empty
    assert "what each --group-by choice would give" in (tmp_path / "m.split.txt").read_text()

    assert (
        main(
            [
                "split",
                str(out),
                "--fractions",
                "0.5",
                "0.25",
                "0.25",
                "--out",
                str(tmp_path / "s.jsonl"),
            ]
        )
        == 0
    )
    assert "speakers in two splits: 0; transcripts in two splits: 0" in capsys.readouterr().out

    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "38 clips" in text and "화재" in text and " h of audio" in text


def test_bad_manifest_is_a_clear_error(tmp_path, caplog):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label\na.wav,dragon\n", encoding="utf-8")
    assert main(["summary", str(bad)]) == 1
    assert "unknown label 'dragon'" in caplog.text


def test_demo_command_runs_every_stage(tmp_path, capsys):
    """The main job end to end with configs/demo.yaml's members made tiny (random Whisper)."""
    import yaml

    plan = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    tiny = {
        "whisper_head": [
            "--model.init_args.model.init_args.config.source=random:tiny",
            "--model.init_args.model.init_args.config.hidden_dim=8",
            "--model.init_args.model.init_args.config.layers=[0,1]",
            "--model.init_args.max_new_tokens=4",
        ],
        "cnn": [],
        "anomaly": [  # random EfficientNet-Lite0 moments at stride 3
            "--model.init_args.load_weights=false",
            "--model.init_args.model.init_args.config.stride=3",
            "--model.init_args.model.init_args.config.stage=2",
        ],
    }
    for name, member in plan["members"].items():
        member["args"] += tiny[name]
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(plan))
    quick = ["--trainer.max_steps=2", "--trainer.limit_val_batches=2"]
    quick += ["--data.init_args.num_workers=0", "--trainer.enable_progress_bar=false"]
    out = tmp_path / "run"
    args = ["demo", "--out", str(out), "--per-class", "2", "--config", str(config)]
    assert main(args + [f"--fit-arg={a}" for a in quick]) == 0
    text = capsys.readouterr().out
    assert "38 clips" in text and "demo finished" in text and "| ensemble |" in text
    assert f"{plan['join_normal']} joined normal clips added to the train split" in text
    assert len(list((out / "joins").glob("*.wav"))) == plan["join_normal"]
    assert f"{plan['crop_windows']} cut listening windows added to the train split" in text
    assert len(list((out / "crops").glob("*.wav"))) == plan["crop_windows"]
    for name, skips in (("whisper_head", False), ("cnn", True), ("anomaly", True)):
        saved = [yaml.safe_load(c.read_text()) for c in (out / name).rglob("config.yaml")]
        assert saved and all(
            ("crops" in (c["data"]["init_args"].get("skip_sources") or [])) == skips for c in saved
        ), name  # the CNN and the anomaly member train without the cut windows
    assert (out / "data" / "README.md").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "anomaly.ckpt",
        "cnn.ckpt",
        "whisper_head.ckpt",
    ]
    predictions = (out / "predictions" / "predictions.jsonl").read_text().splitlines()
    test_files = [p for p in (out / "test_audio").rglob("*.wav")]
    assert len(predictions) == len(test_files) > 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n_files"] == len(test_files) and metrics["n_missing"] == 0
    assert set(metrics["members"]) == {"whisper_head", "keyword_judge", "cnn", "anomaly"}
    # calibrated on val before the test split, the uncalibrated majority reported beside it
    calibrated = yaml.safe_load((out / "ensemble.calibrated.yaml").read_text())
    assert calibrated["calibration"]["split"] == "val"
    assert calibrated["vote"]["rule"] == calibrated["calibration"]["chosen_rule"]
    assert "uncalibrated majority" in text and "(chosen)" in text
    rules = (out / "report" / "vote_rules.md").read_text()
    assert all(f"| {r}" in rules for r in ("majority", "at_least", "soft", "weighted", "stack"))
    assert (out / "report" / "majority" / "metrics.json").is_file()


def test_every_option_of_every_subcommand_has_a_help_line():
    import argparse

    from ensemble.cli import build_parser

    parser = build_parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [
                    f"{name} {a.option_strings or a.dest}"
                    for a in sub._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)
                ]
    assert missing == []
