"""ensemble.evaluate: matching predictions to a manifest, metrics by hand and by sklearn/jiwer, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jiwer
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from ensemble.cli import main
from ensemble.core.labels import load_taxonomy
from ensemble.evaluate import evaluate, rasterize

TAX = load_taxonomy()
NAN = float("nan")
MEMBERS = ("whisper_head", "keyword_judge", "cnn", "anomaly")
# file -> (label, event_start, event_end, reference transcript); a, b emergencies, c, d normal
TRUTH = {
    "a.wav": ("fire", 0.5, 1.5, "불이야 불이야"),
    "b.wav": ("fall", NAN, NAN, "넘어졌어요"),
    "c.wav": ("indoor", NAN, NAN, ""),
    "d.wav": ("vacuum_cleaner", NAN, NAN, ""),
    "e.wav": ("fire", NAN, NAN, ""),  # its prediction is an error row
    "f.wav": ("outdoor", NAN, NAN, ""),  # no prediction
}
IDENTIFIABLE = {"a.wav": "true", "b.wav": "false", "c.wav": "true", "d.wav": "true"}
Y = np.array([True, True, False, False])  # truth of a..d
P = {  # member scores of a..d
    "whisper_head": [0.9, 0.4, 0.5, 0.1],
    "keyword_judge": [0.8, 0.7, 0.2, 0.75],
    "cnn": [0.6, 0.3, 0.35, 0.2],
    "anomaly": [0.55, 0.45, 0.6, 0.3],
}
HYP = {"a.wav": "불이야 부리야", "b.wav": "넘어 졌어요", "c.wav": "", "d.wav": "윙"}


def _row(name: str, i: int) -> dict:
    """The prediction for file `name` (index `i` among a..d)."""
    row = {
        "path": f"sub/{name}",
        "duration_s": 2.0,
        "status": "ok",
        "error": "",
        "emergency": [True, True, False, True][i],  # 3 of 4 right
        "class": ["fire", "fire", "indoor", None][i],
        "class_ko": None,
        "confidence": 0.8,
        "score": [0.74, 0.6, 0.2, 0.65][i],
    }
    for m in MEMBERS:
        row[f"p_{m}"] = P[m][i]
        row[f"vote_{m}"] = P[m][i] >= 0.5
        row[f"class_{m}"] = None
    row["class_whisper_head"] = ["fire", "fall", "outdoor", "vacuum_cleaner"][i]
    row["class_cnn"] = ["fire", "fall", "indoor", "indoor"][i]
    row["transcript"] = HYP[name]
    row["events"] = [
        [[0.5, 1.0, "fire"]],
        [[0.0, 2.0, "fall"]],
        [[0.0, 2.0, "indoor"]],
        [[0.0, 1.0, "vacuum_cleaner"]],
    ][i]
    row["n_windows"] = 1
    return row


def _write(tmp_path: Path, folder: Path | None = None, rows: list[dict] | None = None):
    """Audio in tmp/data/sub, a manifest CSV, and infer output in tmp/infer; returns (dir, csv)."""
    audio = tmp_path / "data" / "sub"
    audio.mkdir(parents=True, exist_ok=True)
    for name in TRUTH:
        sf.write(audio / name, np.zeros(1600, dtype=np.float32), 16000)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        [
            {
                "path": f"data/sub/{n}",
                "label": lab,
                "event_start": s,
                "event_end": e,
                "transcript": t,
                "split": "test",
                "identifiable": IDENTIFIABLE.get(n, ""),
            }
            for n, (lab, s, e, t) in TRUTH.items()
        ]
    ).to_csv(manifest, index=False)
    if rows is None:
        rows = [_row(n, i) for i, n in enumerate(("a.wav", "b.wav", "c.wav", "d.wav"))]
        error = {"path": "sub/e.wav", "status": "error", "error": "could not decode"}
        error |= {k: None for k in rows[0] if k not in ("path", "status", "error")}
        rows += [error, {**rows[0], "path": "elsewhere/zzz.wav"}]
    infer = tmp_path / "infer"
    infer.mkdir(exist_ok=True)
    (infer / "predictions.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    run = {"folder": str(folder or tmp_path / "data")}
    (infer / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return infer, manifest


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    infer, manifest = _write(tmp)
    return evaluate(infer, manifest, tmp / "out", timelines=3), tmp / "out"


def test_counts_errors_unmatched_and_missing(result):
    m, _ = result
    assert (m["n_files"], m["n_errors"], m["n_unmatched"], m["n_missing"]) == (4, 1, 1, 1)
    assert m["unmatched"] == ["elsewhere/zzz.wav"]
    assert [Path(p).name for p in m["missing"]] == ["f.wav"]
    assert list(m["members"]) == list(MEMBERS)
    assert all(v["n"] == 4 for v in [*m["members"].values(), m["ensemble"]])


def test_ensemble_binary_and_class_metrics(result):
    e = result[0]["ensemble"]
    # votes E, E, N, E against truth E, E, N, N: d is a false alarm
    assert e["binary_acc"] == pytest.approx(0.75)
    assert e["precision"] == pytest.approx(2 / 3) and e["recall"] == 1.0
    assert e["f1"] == pytest.approx(0.8)
    assert e["auc"] == pytest.approx(roc_auc_score(Y, [0.74, 0.6, 0.2, 0.65]))
    # classes fire, fire, indoor, null vs fire, fall, indoor, vacuum: the null counts as wrong
    assert e["acc19"] == pytest.approx(0.5) and e["n_no_class"] == 1
    # F1 per class: fire 2/3 (p 1/2, r 1), fall 0, indoor 1, vacuum 0
    assert e["macro_f1"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)


def test_member_metrics_match_sklearn(result):
    members = result[0]["members"]
    for name, p in P.items():
        m = members[name]
        assert m["auc"] == pytest.approx(roc_auc_score(Y, p)), name
        assert m["pauc"] == pytest.approx(roc_auc_score(Y, p, max_fpr=0.1)), name
        assert m["binary_acc"] == pytest.approx(np.mean((np.array(p) >= 0.5) == Y)), name
    assert members["cnn"]["acc19"] == pytest.approx(0.75)
    assert members["whisper_head"]["acc19"] == pytest.approx(0.75)  # outdoor for indoor


def test_member_without_classes_gets_nan_class_metrics(result):
    anomaly = result[0]["members"]["anomaly"]
    assert math.isnan(anomaly["acc19"]) and math.isnan(anomaly["macro_f1"])
    assert anomaly["n_no_class"] == 4
    assert not math.isnan(anomaly["auc"]) and anomaly["binary_acc"] == pytest.approx(0.5)


def test_timestep_accuracy():
    fire = TAX.id("fire")
    truth = rasterize([(0.5, 1.5, "fire")], 2.0, TAX)
    pred = rasterize([(0.5, 1.0, "fire")], 2.0, TAX)
    assert len(truth) == 100 and (truth == fire).sum() == 50 and (pred == fire).sum() == 25
    assert (truth == pred).mean() == pytest.approx(0.75)
    assert (rasterize([(NAN, NAN, "fall")], 1.0, TAX) == TAX.id("fall")).all()


def test_timestep_accuracy_only_for_the_head_and_the_ensemble(result):
    m = result[0]
    # a: only its 50 event timesteps count (the fire clip's background is unknown), 25 right;
    # b and c all 100, d 50: (25 + 100 + 100 + 50) / 350
    for v in (m["members"]["whisper_head"], m["ensemble"]):
        assert v["timestep_acc"] == pytest.approx(275 / 350) and v["n_timesteps"] == 350
    assert all(math.isnan(m["members"][n]["timestep_acc"]) for n in ("cnn", "anomaly"))


def test_accuracy_on_identifiable_clips_and_intervals(result):
    ens = result[0]["ensemble"]
    # ensemble classes: a fire (right), b fire (wrong, not identifiable), c indoor (right), d none
    assert ens["acc19"] == pytest.approx(2 / 4) and ens["n_identifiable"] == 3
    assert ens["acc19_identifiable"] == pytest.approx(2 / 3)
    low, high = ens["acc19_ci"]
    assert 0 <= low <= 0.5 <= high <= 1 and ens["binary_acc_ci"][0] <= 0.75
    assert math.isnan(result[0]["members"]["anomaly"]["acc19_identifiable"])


def test_cer_goes_to_the_keyword_judge(result):
    m = result[0]
    judge = m["members"]["keyword_judge"]
    refs, hyps = ["불이야 불이야", "넘어졌어요"], ["불이야 부리야", "넘어 졌어요"]
    assert judge["n_cer"] == 2
    assert judge["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    nospace = [r.replace(" ", "") for r in refs], [h.replace(" ", "") for h in hyps]
    assert judge["cer_nospace"] == pytest.approx(jiwer.cer(*nospace))
    # 불→부 and 이→리 over 11 characters; with spaces also the inserted one, over 12
    assert judge["cer_nospace"] == pytest.approx(2 / 11) and judge["cer"] == pytest.approx(3 / 12)
    assert math.isnan(m["ensemble"]["cer"]) and math.isnan(m["members"]["cnn"]["cer"])
    # c and d say nothing; the judge votes emergency on d (0.75)
    assert judge["n_speechless"] == 2 and judge["speechless_votes"] == 1
    assert "speechless_votes" not in m["members"]["cnn"]


def test_output_files(result):
    out = result[1]
    names = {"metrics.json", "report.md", "roc.png", "timelines.png"}
    names |= {f"confusion_{n}.png" for n in ("ensemble", "whisper_head", "cnn")}
    assert names <= {p.name for p in out.iterdir()}
    assert not (out / "confusion_anomaly.png").exists()
    assert not (out / "confusion_keyword_judge.png").exists()
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["members"]["anomaly"]["acc19"] is None
    assert saved["ensemble"]["binary_acc"] == pytest.approx(0.75)
    report = (out / "report.md").read_text(encoding="utf-8")
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 2 * (2 + 5)  # the metrics, then accuracies and AUC with intervals
    assert table[6].startswith("| ensemble | 0.000 | 0.500 |")  # abstain, acc19
    assert table[-1].startswith("| ensemble | 0.500 [") and "acc19 on identifiable" in table[7]
    assert "| anomaly | – | – |" in report
    assert "keyword_judge: 1 emergency vote(s) on 2 clips without speech" in report
    assert "4 files evaluated" in report and "1 errors" in report and "elsewhere/zzz.wav" in report


def test_symlinked_folder_matches(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    infer, manifest = _write(tmp_path, folder=tmp_path / "link")
    m = evaluate(infer / "predictions.jsonl", manifest, tmp_path / "out", timelines=0)
    assert (m["n_files"], m["n_unmatched"]) == (4, 1)
    assert not (tmp_path / "out" / "timelines.png").exists()


def test_moved_folder_matches_by_path_tail(tmp_path):
    infer, manifest = _write(tmp_path, folder=tmp_path / "moved")
    m = evaluate(infer, manifest, tmp_path / "out", timelines=0)
    assert (m["n_files"], m["n_errors"], m["n_unmatched"]) == (4, 1, 1)


def test_nothing_matches_raises(tmp_path):
    rows = [{**_row("a.wav", 0), "path": "x/nothere.wav"}]
    infer, manifest = _write(tmp_path, rows=rows)
    with pytest.raises(ValueError, match=r"predictions\.jsonl.*manifest\.csv"):
        evaluate(infer, manifest, tmp_path / "out")


def test_main_prints_the_table(tmp_path, capsys):
    infer, manifest = _write(tmp_path)
    args = [str(infer), str(manifest), "--out", str(tmp_path / "out"), "--timelines", "2"]
    assert main(["evaluate", *args]) == 0
    printed = capsys.readouterr().out
    assert "| ensemble |" in printed and str(tmp_path / "out" / "report.md") in printed
