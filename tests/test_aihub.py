"""AI Hub import: real-shape trees, cp949 zips, pairing variants, unpaired files, determinism."""

from __future__ import annotations

import json
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import noise_wav, write_noise

from ensemble.core.aihub import ImportReport, import_aihub
from ensemble.core.manifest import COLUMNS

SR = 16000


def wav_bytes(seed: int = 0) -> bytes:
    """0.5 s of quiet noise at 16 kHz as 16-bit PCM WAV bytes."""
    return noise_wav(0.5, seed)


def write_wav(path: Path, seed: int = 0) -> Path:
    return write_noise(path, 0.5, seed)


def ann(
    category: str,
    area: Any = None,
    note: Any = "  불이야  ",
    audio_id: str = "",
    drop: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One AI Hub annotation with every field; `drop` removes optional ones."""
    a = {
        "audio_id": audio_id,
        "area": area,
        "categories": {"category_01": "위급상황", "category_02": category, "category_03": "기타"},
        "note": note,
        "audioType": "음성",
        "gender": "여",
        "generation": "60대",
        "dialect": "표준어",
        "soundQuality": "상",
        "soundDistance": "근거리",
        **extra,
    }
    for key in drop:
        a.pop(key)
    return a


def label_json(annotations: list[dict[str, Any]], file_name: str = "") -> str:
    audio = {
        "fileName": file_name,
        "fileSize": 16044,
        "duration": 0.5,
        "sampleRate": SR,
        "bitRate": "256kbps",
        "recodingType": "mono",
    }
    return json.dumps({"audio": audio, "annotations": annotations}, ensure_ascii=False, indent=1)


def write_label(
    path: Path, annotations: list[dict[str, Any]], file_name: str = "", bom: bool = False
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(label_json(annotations, file_name), encoding="utf-8-sig" if bom else "utf-8")
    return path


def build_real_tree(root: Path) -> dict[str, Path]:
    """The AI Hub layout: Training/Validation, [라벨]/[원천] folders, several classes."""
    t = root / "Training"
    fire = [ann("화재", {"start": 0.0, "end": 0.2}), ann("화재", {"start": "0.25", "end": "0.5"})]
    write_label(t / "[라벨]8.화재" / "A.json", fire, "A.wav", bom=True)
    indoor = [ann("실내", note=None, drop=("gender", "generation", "dialect", "area"))]
    write_label(t / "[라벨]15.실내" / "B.json", indoor, "B.wav")
    assault = [
        ann("강제추행(성범죄)", {"start": 0.1, "end": 0.3}, note="하지 마세요", speaker="S07")
    ]
    write_label(t / "[라벨]1.강제추행" / "C.json", assault, "C.wav", bom=True)
    wind = [ann("태풍-강풍", {"start": "", "end": None}, note="바람이 너무 세요")]
    write_label(root / "Validation" / "[라벨]10.태풍-강풍" / "D.json", wind, "D.wav")
    return {
        "A": write_wav(t / "[원천]8.화재_1" / "A.wav", 1),
        "B": write_wav(t / "[원천]15.실내_1" / "B.wav", 2),
        "C": write_wav(t / "[원천]1.강제추행_1" / "C.wav", 3),
        "D": write_wav(root / "Validation" / "[원천]10.태풍-강풍_1" / "D.wav", 4),
    }


def test_real_tree(tmp_path: Path) -> None:
    wavs = build_real_tree(tmp_path)
    df, report = import_aihub(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert (report.n_labels, report.n_audio, report.n_paired, report.n_rows) == (4, 4, 4, 5)
    assert report.unpaired_labels == report.unpaired_audio == report.errors == []
    assert df["path"].tolist() == [str(wavs[k]) for k in "CBAAD"]  # sorted walk of the JSON
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["label"].tolist() == ["sexual_assault", "indoor", "fire", "fire", "typhoon"]
    a = df[df["path"] == str(wavs["A"])]
    assert a[["event_start", "event_end"]].values.tolist() == [[0.0, 0.2], [0.25, 0.5]]
    assert a["transcript"].tolist() == ["불이야", "불이야"]  # stripped
    b = df[df["path"] == str(wavs["B"])].iloc[0]
    assert b["transcript"] == "" and np.isnan(b["event_start"]) and np.isnan(b["event_end"])
    c = df[df["path"] == str(wavs["C"])].iloc[0]
    assert (c["event_start"], c["event_end"], c["speaker"]) == (0.1, 0.3, "S07")
    assert df["speaker"].tolist() == ["S07", "", "", "", ""]
    assert df["split"].eq("").all()
    assert df["source"].tolist() == [
        "Training/[원천]1.강제추행_1",
        "Training/[원천]15.실내_1",
        "Training/[원천]8.화재_1",
        "Training/[원천]8.화재_1",
        "Validation/[원천]10.태풍-강풍_1",
    ]
    assert "4 paired, 5 manifest rows" in report.summary()
    assert report.to_frame().empty


class LegacyZipInfo(zipfile.ZipInfo):
    """Writes the name as raw cp437 bytes without the UTF-8 flag, like old Korean Windows zippers.

    CPython writes any non-ASCII name as UTF-8 and sets flag 0x800; this override forces the
    legacy encoding so the archive holds cp949 bytes exactly as AI Hub's releases do.
    """

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 (CPython's name)
        return self.filename.encode("cp437"), self.flag_bits & ~0x800


def write_cp949_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip whose member names are cp949 bytes with no UTF-8 flag; directory entries included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dirs = sorted({n.rsplit("/", 1)[0] + "/" for n in members if "/" in n})
    with zipfile.ZipFile(path, "w") as zf:
        for name in dirs:
            zf.writestr(LegacyZipInfo(name.encode("cp949").decode("cp437")), b"")
        for name, data in members.items():
            info = LegacyZipInfo(name.encode("cp949").decode("cp437"))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


KOREAN_MEMBERS = {
    "Training/[라벨]8.화재/화재_001.json": label_json(
        [ann("화재", {"start": 0.1, "end": 0.4})], "화재_001.wav"
    ),
    "Training/[원천]8.화재_1/화재_001.wav": b"",
    "Training/[라벨]14.도움요청/도움_002.json": label_json([ann("도움요청", note="살려주세요")]),
    "Training/[원천]14.도움요청_1/도움_002_1.wav": b"",
}


def korean_zip(path: Path) -> Path:
    members = {
        n: (wav_bytes(i) if n.endswith(".wav") else data.encode("utf-8"))
        for i, (n, data) in enumerate(KOREAN_MEMBERS.items())
    }
    return write_cp949_zip(path, members)


def test_cp949_zip_is_legacy_encoded(tmp_path: Path) -> None:
    """The fixture really is what AI Hub ships: no UTF-8 flag, names mojibake when read raw."""
    with zipfile.ZipFile(korean_zip(tmp_path / "data.zip")) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
    assert all(not i.flag_bits & 0x800 for i in infos)
    raw = [i.filename for i in infos]
    assert not any("화재" in n or "원천" in n for n in raw)  # mojibake
    assert [n.encode("cp437").decode("cp949") for n in raw] == list(KOREAN_MEMBERS)


@pytest.mark.parametrize("separate", [False, True])
def test_cp949_zip_import(tmp_path: Path, separate: bool) -> None:
    root = tmp_path / "root"
    korean_zip(root / "data.zip")
    extract_dir = tmp_path / "ex" if separate else None
    df, report = import_aihub(root, extract_dir=extract_dir)
    assert report.errors == [] and report.unpaired_audio == report.unpaired_labels == []
    assert (report.n_labels, report.n_audio, report.n_paired, report.n_rows) == (2, 2, 2, 2)
    base = (tmp_path / "ex" if separate else root / ".extracted") / "data" / "Training"
    assert df["path"].tolist() == [
        str(base / "[원천]14.도움요청_1" / "도움_002_1.wav"),
        str(base / "[원천]8.화재_1" / "화재_001.wav"),
    ]
    assert all(Path(p).is_file() for p in df["path"])
    assert df["label"].tolist() == ["help_request", "fire"]
    assert df["transcript"].tolist() == ["살려주세요", "불이야"]
    assert df["source"].tolist() == [
        "data/Training/[원천]14.도움요청_1",
        "data/Training/[원천]8.화재_1",
    ]
    assert (root / ".extracted").exists() != separate  # a separate dir leaves root untouched

    # a second run neither re-extracts (same size) nor scans the extraction twice
    wav = Path(df["path"].iloc[0])
    mtime = wav.stat().st_mtime_ns
    df2, report2 = import_aihub(root, extract_dir=extract_dir)
    assert wav.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(df, df2)
    assert report2 == report


def test_zip_slip_and_corrupt_zip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with zipfile.ZipFile(write_cp949_zip(root / "ok.zip", {"a/E.wav": wav_bytes()}), "a") as zf:
        zf.writestr("../../evil.wav", wav_bytes())
        zf.writestr("a/E.json", label_json([ann("화재")]))
    (root / "broken.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    df, report = import_aihub(root, extract_dir=tmp_path / "ex")
    assert not (tmp_path / "evil.wav").exists() and not (root / "evil.wav").exists()
    assert [p for p, _ in report.errors] == [str(root / "broken.zip"), str(root / "ok.zip")]
    assert "cannot extract" in report.errors[0][1] and "escapes" in report.errors[1][1]
    assert df["path"].tolist() == [str(tmp_path / "ex" / "ok" / "a" / "E.wav")]
    assert report.to_frame()["kind"].tolist() == ["zip", "zip"]


def test_pairing_variants(tmp_path: Path) -> None:
    lab, src = tmp_path / "Training" / "[라벨]8.화재", tmp_path / "Training" / "[원천]8.화재_1"
    cases = {  # json stem -> (fileName, audio_id, audio file name)
        "V1": ("nomatch.wav", "", "V1_1.wav"),  # <stem>_1
        "V2": ("", "", "V2_label.wav"),  # <stem>_label
        "V3_label": ("", "", "V3.wav"),  # JSON stem carries the suffix
        "X": ("nomatch.wav", "clip_777", "clip_777.wav"),  # audio_id only
        "Y": (r"C:\rec\other_888.wav", "", "other_888.wav"),  # fileName only (Windows path)
        "W": ("stemonly.mp3", "", "stemonly.wav"),  # fileName stem
        "Z": ("Q.wav", "", "Q.wav"),  # fileName beats the JSON's own stem
        "1.화재_05": ("", "", "1.화재_05.wav"),  # dotted stem, NFD audio name (macOS)
    }
    for i, (stem, (file_name, audio_id, wav)) in enumerate(cases.items()):
        write_label(lab / f"{stem}.json", [ann("화재", note=stem, audio_id=audio_id)], file_name)
        write_wav(src / unicodedata.normalize("NFD", wav), i)
    write_wav(src / "Z.wav", 99)
    df, report = import_aihub(tmp_path)
    paired = {
        t: unicodedata.normalize("NFC", Path(p).name)
        for t, p in zip(df.transcript, df.path, strict=True)
    }
    assert paired == {stem: wav for stem, (_, _, wav) in cases.items()}
    assert report.unpaired_audio == [str(src / "Z.wav")]
    assert report.errors == [] and report.unpaired_labels == []


def test_release_tree_preference_and_ambiguity(tmp_path: Path) -> None:
    write_label(tmp_path / "Validation" / "[라벨]8.화재" / "A.json", [ann("화재")], "A.wav")
    train = write_wav(tmp_path / "Training" / "[원천]8.화재_1" / "A.wav", 1)
    val = write_wav(tmp_path / "Validation" / "[원천]8.화재_1" / "A.wav", 2)
    write_label(tmp_path / "Training" / "[라벨]12.낙상" / "F.json", [ann("낙상")], "F.wav")
    f1 = write_wav(tmp_path / "Validation" / "[원천]12.낙상_1" / "F.wav", 3)
    f2 = write_wav(tmp_path / "Validation" / "[원천]12.낙상_2" / "F.wav", 4)
    df, report = import_aihub(tmp_path)
    assert df["path"].tolist() == [str(val)]  # same tree as its JSON wins
    assert report.unpaired_audio == [str(train), str(f1), str(f2)]
    [(path, reason)] = report.errors  # two candidates, neither in the JSON's tree: no guess
    assert path == str(tmp_path / "Training" / "[라벨]12.낙상" / "F.json") and "ambiguous" in reason


def test_unpaired_broken_and_unknown(tmp_path: Path) -> None:
    lab, src = tmp_path / "Training" / "[라벨]8.화재", tmp_path / "Training" / "[원천]8.화재_1"
    ok = write_wav(src / "ok.wav")
    write_label(lab / "ok.json", [ann("화재")], "ok.wav")
    lonely = write_label(lab / "lonely.json", [ann("화재")], "lonely.wav")
    orphan = write_wav(src / "orphan.wav")
    broken = lab / "broken.json"
    broken.write_text('{"audio": {"fileName": "x.wav"}, "annotations": [', encoding="utf-8")
    not_obj = lab / "list.json"
    not_obj.write_text("[1, 2]", encoding="utf-8")
    alien = write_label(lab / "alien.json", [ann("외계인침공")], "alien.wav", bom=True)
    write_wav(src / "alien.wav")
    df, report = import_aihub(tmp_path)
    assert df["path"].tolist() == [str(ok)]
    assert report.unpaired_labels == [str(lonely)]
    assert report.unpaired_audio == [str(orphan)]
    assert [p for p, _ in report.errors] == [str(broken), str(not_obj), str(alien)]
    assert "unreadable JSON" in report.errors[0][1]
    assert "valid labels" in report.errors[2][1] and "8=fire(화재)" in report.errors[2][1]
    assert (report.n_labels, report.n_audio, report.n_paired, report.n_rows) == (5, 3, 2, 1)
    text = report.summary()
    assert all(p in text for p in (str(lonely), str(orphan), str(alien), str(broken), str(not_obj)))
    frame = report.to_frame()
    assert list(frame.columns) == ["path", "kind", "reason"]
    assert frame["kind"].tolist() == ["label", "audio", "label", "label", "label"]
    assert frame["path"].tolist() == [str(p) for p in (lonely, orphan, broken, not_obj, alien)]


def test_deterministic(tmp_path: Path) -> None:
    build_real_tree(tmp_path / "root")
    korean_zip(tmp_path / "root" / "Training" / "extra.zip")
    runs = [import_aihub(tmp_path / "root", extract_dir=tmp_path / "ex") for _ in range(2)]
    (df1, r1), (df2, r2) = runs
    pd.testing.assert_frame_equal(df1, df2)
    assert r1 == r2 and r1.n_rows == 7


def test_empty_root(tmp_path: Path) -> None:
    df, report = import_aihub(tmp_path)
    assert df.empty and list(df.columns) == list(COLUMNS)
    assert report == ImportReport()
    with pytest.raises(FileNotFoundError):
        import_aihub(tmp_path / "missing")


def test_background_from_category_03_and_the_generators_record(tmp_path: Path) -> None:
    outside = ann("화재", {"start": 0.1, "end": 0.3})
    outside["categories"]["category_03"] = "실외"  # a scene that names a normal class
    write_label(tmp_path / "A.json", [outside], "A.wav")
    write_label(tmp_path / "B.json", [ann("화재", {"start": 0.1, "end": 0.3})], "B.wav")  # 기타
    doc = json.loads(label_json([ann("낙상", {"start": 0.1, "end": 0.3})], "C.wav"))
    doc["synthesis"] = {
        "background": {"kind": "washer_dryer", "sources": []},
        "identifiable": False,
        "origin": ["espeak-ng", "ufoai-sound"],
    }
    (tmp_path / "C.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    for i, name in enumerate("ABC"):
        write_wav(tmp_path / f"{name}.wav", i)
    df, report = import_aihub(tmp_path)
    assert report.errors == []
    assert df["background"].tolist() == ["outdoor", "", "washer_dryer"]
    assert df["identifiable"].tolist() == ["", "", "false"]
    assert df["origin"].tolist() == ["", "", "espeak-ng;ufoai-sound"]
