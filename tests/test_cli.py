import pandas as pd

from ensemble.cli import main
from ensemble.core.manifest import read_manifest


def test_import_split_summary(demo, tmp_path, capsys):
    root, truths = demo
    out = tmp_path / "m.csv"
    assert main(["import-aihub", str(root), "--out", str(out), "--split"]) == 0
    text = capsys.readouterr().out
    assert "38 paired" in text and "unpaired label files (no audio): 0" in text
    df = read_manifest(out)
    assert len(df) == len(truths) and set(df["split"]) == {"train", "val", "test"}
    assert pd.read_csv(tmp_path / "m.unpaired.csv").empty

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


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--per-class", "1", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "19 clips" in text and "demo finished" in text
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "data" / "README.md").is_file()
