"""ensemble.core.manifest: CSV/JSONL round trips, validation messages that name the line, clips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ensemble.core.labels import load_taxonomy
from ensemble.core.manifest import (
    COLUMNS,
    ManifestError,
    clips,
    read_manifest,
    validate,
    write_manifest,
)

NAN = float("nan")


def _frame(root: Path) -> pd.DataFrame:
    """Labels as Korean names, ids and aliases; absolute paths under `root`; one clip twice."""
    return pd.DataFrame(
        {
            "path": [
                str(root / "audio" / "a.wav"),
                str(root / "audio" / "a.wav"),
                str(root / "audio" / "sub" / "b.wav"),
                str(root / "c.flac"),
            ],
            "label": ["화재", "8", 2, "가전소음_청소기"],
            "transcript": ["불이야", "불이야", "", "윙"],
            "event_start": [1.0, 3.5, NAN, NAN],
            "event_end": [2.0, 4.25, NAN, NAN],
            "speaker": ["s1", "s1", "", "s2"],
            "split": ["train", "train", "val", "test"],
            "source": ["aihub170", "aihub170", "aihub170", ""],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip(tmp_path, suffix):
    df = _frame(tmp_path)
    out = write_manifest(df, tmp_path / f"manifest{suffix}")
    assert out == tmp_path / f"manifest{suffix}"
    text = out.read_text(encoding="utf-8")
    assert str(tmp_path) not in text.replace("\\/", "/")  # paths below the folder are relative
    assert "불이야" in text  # Korean written as UTF-8, not escaped

    back = read_manifest(out)
    assert list(back.columns) == list(COLUMNS)
    assert len(back) == 4
    assert list(back["label"]) == ["fire", "fire", "robbery", "vacuum_cleaner"]
    assert list(back["path"]) == list(df["path"])
    assert list(back["transcript"]) == list(df["transcript"])
    assert list(back["speaker"]) == list(df["speaker"])
    assert list(back["split"]) == list(df["split"])
    assert list(back["source"]) == list(df["source"])
    assert back["event_start"].dtype == float
    assert back["event_end"].dtype == float
    assert back["event_start"].tolist()[:2] == [1.0, 3.5]
    assert back["event_end"].tolist()[:2] == [2.0, 4.25]
    assert math.isnan(back["event_start"][2]) and math.isnan(back["event_end"][2])
    assert math.isnan(back["event_start"][3]) and math.isnan(back["event_end"][3])

    # a second round trip changes nothing
    again = read_manifest(write_manifest(back, tmp_path / f"again{suffix}"))
    pd.testing.assert_frame_equal(again, back)


def test_csv_and_jsonl_agree(tmp_path):
    df = _frame(tmp_path)
    a = read_manifest(write_manifest(df, tmp_path / "m.csv"))
    b = read_manifest(write_manifest(df, tmp_path / "m.jsonl"))
    pd.testing.assert_frame_equal(a, b)


def test_paths_outside_the_folder_stay_absolute(tmp_path):
    outside = tmp_path / "elsewhere" / "x.wav"
    df = pd.DataFrame({"path": [str(outside)], "label": ["fire"]})
    out = write_manifest(df, tmp_path / "manifests" / "m.csv")
    assert out.parent.is_dir()
    assert str(outside) in out.read_text(encoding="utf-8")
    assert read_manifest(out)["path"][0] == str(outside)


def test_csv_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "m.csv").write_text(
        "path,label,event_start,event_end\n"
        "clips/a.wav,화재,,\n"
        "../b.wav,3,0.5,1.5\n"
        "/abs/c.wav,Fire,,\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    df = read_manifest(Path("data") / "m.csv")
    assert df["path"][0] == str(folder.resolve() / "clips" / "a.wav")
    assert Path(df["path"][1]).resolve() == (tmp_path / "b.wav").resolve()
    assert df["path"][2] == "/abs/c.wav"
    assert list(df["label"]) == ["fire", "theft", "fire"]
    # optional columns absent from the file come back empty
    assert list(df["split"]) == ["", "", ""]
    assert list(df["transcript"]) == ["", "", ""]


def test_jsonl_relative_paths_and_int_labels(tmp_path):
    rows = [
        {"path": "a.wav", "label": 12, "event_start": None, "event_end": None},
        {"path": "b.wav", "label": "강제추행(성범죄)", "event_start": 0, "event_end": 2.5},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    df = read_manifest(path)
    assert list(df["path"]) == [
        str(tmp_path.resolve() / "a.wav"),
        str(tmp_path.resolve() / "b.wav"),
    ]
    assert list(df["label"]) == ["fall", "sexual_assault"]
    assert math.isnan(df["event_start"][0])
    assert df["event_start"][1] == 0.0
    assert df["event_end"][1] == 2.5


def test_csv_with_bom(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("path,label\na.wav,낙상\n".encode("utf-8-sig"))
    assert read_manifest(path)["label"].tolist() == ["fall"]


def test_custom_taxonomy(tmp_path):
    yaml_text = (
        "classes:\n"
        "  - {id: 0, key: none, ko: 없음, en: none, emergency: false}\n"
        "  - {id: 1, key: alarm, ko: 경보, en: alarm, emergency: true}\n"
        "  - {id: 2, key: quiet, ko: 조용, en: quiet, emergency: false}\n"
    )
    (tmp_path / "t.yaml").write_text(yaml_text, encoding="utf-8")
    tax = load_taxonomy(tmp_path / "t.yaml")
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.wav,경보\nb.wav,2\n", encoding="utf-8")
    assert read_manifest(path, tax)["label"].tolist() == ["alarm", "quiet"]
    path.write_text("path,label\na.wav,화재\n", encoding="utf-8")  # fine by default, not here
    with pytest.raises(ManifestError, match="line\\(s\\) 2: unknown label"):
        read_manifest(path, tax)


# ---------------------------------------------------------------------------------------------
# validation errors name the file and the line

BAD_CSV = {
    "unknown label": (
        "path,label\na.wav,fire\nb.wav,fire\nc.wav,explosion\n",
        ["line(s) 4:", "unknown label 'explosion'", "8=fire(화재)"],
    ),
    "end equals start": (
        "path,label,event_start,event_end\na.wav,fire,1,2\nb.wav,fire,2,2\n",
        ["line(s) 3:", "event_start < event_end"],
    ),
    "end before start": (
        "path,label,event_start,event_end\na.wav,fire,5,2\n",
        ["line(s) 2:", "event_start < event_end"],
    ),
    "negative start": (
        "path,label,event_start,event_end\na.wav,fire,1,2\nb.wav,fire,-1,2\n",
        ["line(s) 3:", "0 <= event_start"],
    ),
    "only start": (
        "path,label,event_start,event_end\na.wav,fire,1,2\nb.wav,fire,1,\n",
        ["line(s) 3:", "both be set or both empty"],
    ),
    "only end": (
        "path,label,event_start,event_end\na.wav,fire,,2\n",
        ["line(s) 2:", "both be set or both empty"],
    ),
    "non-numeric start": (
        "path,label,event_start,event_end\na.wav,fire,1,2\nb.wav,fire,1,2\nc.wav,fire,abc,3\n",
        ["line(s) 4:", "event_start is not a number"],
    ),
    "non-numeric end": (
        "path,label,event_start,event_end\na.wav,fire,1,1.5s\n",
        ["line(s) 2:", "event_end is not a number"],
    ),
    "bad split": (
        "path,label,split\na.wav,fire,train\nb.wav,fire,dev\nc.wav,fire,validation\n",
        ["line(s) 3, 4:", "split must be one of"],
    ),
    "missing path column": (
        "file,label\na.wav,fire\n",
        ["missing column(s) ['path']"],
    ),
    "missing label column": (
        "path\na.wav\n",
        ["missing column(s) ['label']"],
    ),
    "empty path": (
        "path,label\na.wav,fire\n ,fire\n",
        ["line(s) 3:", "empty path"],
    ),
    "none as clip label": (
        "path,label\na.wav,none\n",
        ["line(s) 2:", "'none' is not a clip label"],
    ),
    "emergency background": (
        "path,label,background\na.wav,fire,indoor\nb.wav,fire,fall\n",
        ["line(s) 3:", "background 'fall' is not a normal class"],
    ),
    "unknown background": (
        "path,label,background\na.wav,fire,kitchen\n",
        ["line(s) 2:", "background: unknown label 'kitchen'"],
    ),
    "bad identifiable": (
        "path,label,identifiable\na.wav,fire,true\nb.wav,fire,maybe\n",
        ["line(s) 3:", "identifiable must be true, false or empty"],
    ),
}


def test_background_identifiable_and_origin_are_normalised(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "path,label,background,identifiable,origin,split\n"
        "a.wav,fire,실내,1,espeak-ng;ufoai-sound,holdout\n"
        "b.wav,fall,,no,,train\n",
        encoding="utf-8",
    )
    df = read_manifest(path)
    assert df["background"].tolist() == ["indoor", ""]
    assert df["identifiable"].tolist() == ["true", "false"]
    assert df["origin"].tolist() == ["espeak-ng;ufoai-sound", ""]
    assert df["split"].tolist() == ["holdout", "train"]


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_csv_validation_errors(tmp_path, case):
    body, expected = BAD_CSV[case]
    path = tmp_path / "bad.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    for part in expected:
        assert part in message


def test_many_bad_lines_are_summarised(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,label,split\n" + "a.wav,fire,dev\n" * 8, encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line\(s\) 2, 3, 4, 5, 6 \(and 3 more\)"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"path": "a.wav", "label": "bogus"}], "line(s) 1: unknown label 'bogus'"),
        (
            [{"path": "a.wav", "label": "fire"}, {"path": "b.wav", "label": "fire", "split": "x"}],
            "line(s) 2: split",
        ),
        (
            [
                {"path": "a.wav", "label": "fire"},
                {"path": "b.wav", "label": "fire"},
                {"path": "c.wav", "label": "fire", "event_start": 3, "event_end": 1},
            ],
            "line(s) 3: segment",
        ),
    ],
)
def test_jsonl_errors_name_the_file_line(tmp_path, rows, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert expected in str(info.value)


def test_write_validates_first(tmp_path):
    df = pd.DataFrame({"path": ["a.wav"], "label": ["fire"], "event_start": [1.0]})
    path = tmp_path / "m.csv"
    with pytest.raises(ManifestError, match="both be set"):
        write_manifest(df, path)
    assert not path.exists()


def test_validate_a_filtered_frame_names_rows_not_index_labels():
    df = pd.DataFrame(
        {"path": ["a.wav", "b.wav", "c.wav"], "label": ["fire", "fire", "bogus"]},
        index=["x", "y", "z"],
    )
    with pytest.raises(ManifestError, match=r"where: line\(s\) 4: unknown label"):
        validate(df, where="where")
    ok = validate(df.iloc[:2], where="where")
    assert list(ok.index) == [0, 1]


@pytest.mark.parametrize("name", ["m.txt", "m.json", "m"])
def test_unknown_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("path,label\na.wav,fire\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"\.csv or \.jsonl"):
        read_manifest(path)
    with pytest.raises(ManifestError, match=r"\.csv or \.jsonl"):
        write_manifest(pd.DataFrame({"path": ["a.wav"], "label": ["fire"]}), tmp_path / "o.txt")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------
# clips


def test_clips_groups_annotations_of_one_file(tmp_path):
    df = read_manifest(write_manifest(_frame(tmp_path), tmp_path / "m.csv"))
    c = clips(df)
    assert len(c) == 3
    assert list(c["path"]) == [
        str(tmp_path / "audio" / "a.wav"),
        str(tmp_path / "audio" / "sub" / "b.wav"),
        str(tmp_path / "c.flac"),
    ]
    assert c["segments"][0] == [(1.0, 2.0, "fire"), (3.5, 4.25, "fire")]
    assert list(c["label"]) == ["fire", "robbery", "vacuum_cleaner"]
    ((s, e, lab),) = c["segments"][1]
    assert math.isnan(s) and math.isnan(e) and lab == "robbery"


def test_clips_keeps_the_first_annotation_row(tmp_path):
    df = validate(
        pd.DataFrame(
            {
                "path": ["a.wav", "a.wav", "b.wav"],
                "label": ["fire", "강도", "fall"],
                "event_start": [NAN, 2.0, 0.0],
                "event_end": [NAN, 3.0, 1.0],
                "speaker": ["", "s9", "s1"],
            }
        )
    )
    c = clips(df)
    assert list(c["path"]) == ["a.wav", "b.wav"]
    assert c["label"][0] == "fire"
    # the first annotation covers the whole clip; no field comes from the second one
    assert math.isnan(c["event_start"][0]) and math.isnan(c["event_end"][0])
    assert c["speaker"][0] == ""
    assert c["segments"][0][1] == (2.0, 3.0, "robbery")
    assert c["segments"][1] == [(0.0, 1.0, "fall")]


def test_clips_joins_the_transcripts_of_all_annotations():
    df = validate(
        pd.DataFrame(
            {
                "path": ["a.wav", "a.wav", "a.wav", "b.wav"],
                "label": ["fire", "fire", "fire", "fall"],
                "event_start": [1.0, 5.0, 9.0, NAN],
                "event_end": [2.0, 6.0, 10.0, NAN],
                "transcript": ["불이야!", "", " 살려주세요! ", ""],
            }
        )
    )
    c = clips(df)
    assert list(c["transcript"]) == ["불이야! 살려주세요!", ""]
