"""The benchmark scripts' report helpers (the benchmarks themselves run outside the tests)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import anomaly_densities
import numpy as np
import pandas as pd
import speed
import speed_steps
from sklearn.metrics import roc_auc_score


def test_sections_are_replaced_in_place_and_the_rest_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    speed.write_section(path, "speed", "table 1")
    path.write_text(path.read_text() + "\nhand-written notes\n")
    speed.write_section(path, "steps", "steps 1")
    speed.write_section(path, "speed", "table 2")
    text = path.read_text()
    assert "table 1" not in text and text.count("table 2") == 1 and "steps 1" in text
    assert text.index("table 2") < text.index("hand-written notes") < text.index("steps 1")


def test_table_ratios_against_openai_whisper():
    results = {
        "ensemble": {"wall_s": 50.0, "peak_mb": 900.0},
        "openai-whisper": {"wall_s": 200.0, "peak_mb": 800.0},
    }
    rows = speed.table(results, audio_s=1000.0).splitlines()
    assert rows[2].split("|")[1:5] == [" ensemble ", " 50.0 ", " 20.0 ", " 0.25 "]
    assert rows[3].split("|")[4] == " 1.00 "


def test_largest_change_in_points_skips_missing_metrics():
    assert speed_steps.largest_change([0.5, None, 0.81], [0.52, 0.3, 0.8]) == pytest.approx(2.0)
    assert speed_steps.largest_change([None], [0.1]) == 0


@pytest.mark.parametrize("max_fpr", [None, 0.1, 0.3])
def test_fast_roc_auc_equals_scikit_learn_with_ties(max_fpr):
    rng = np.random.default_rng(0)
    for n in (7, 40, 201):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        s = np.round(rng.normal(size=n) + y, 1)  # rounded: many ties
        expected = roc_auc_score(y, s, max_fpr=max_fpr)
        assert anomaly_densities.roc_auc(y, s, max_fpr) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        anomaly_densities.roc_auc(np.ones(5, bool), np.arange(5.0))


def test_coreset_keeps_the_outliers_and_knn_scores_them_far():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.01, (200, 16)) + 1, np.eye(16)[:3] * -5]  # a cloud and 3 outliers
    picked = anomaly_densities.coreset(x, 10)
    assert len(set(picked.tolist())) == 10 and {200, 201, 202} <= set(picked.tolist())
    score = anomaly_densities.knn(x[:200], bank=50)
    near, far = score(x[:5]), score(-x[:5])
    assert near.max() < far.min()


def test_moment_scores_aggregate_per_window():
    s, offsets = np.array([1.0, 5.0, 2.0, 3.0, 0.0]), np.array([0, 1, 5])
    assert anomaly_densities.aggregate(s, offsets, "max").tolist() == [1.0, 5.0]
    assert anomaly_densities.aggregate(s, offsets, "top3").tolist() == [1.0, 10 / 3]


def test_anomaly_comparison_runs_every_arm_on_the_demo_manifest(demo_manifest, tmp_path):
    """The paper's table end to end on the tiny demo data: 3 trainings x 2 scorings of one
    pooling plus the member's row, each with finite test figures inside their intervals."""
    import anomaly_comparison

    out = tmp_path / "comparison"
    rows = anomaly_comparison.main(
        [
            f"--manifest={demo_manifest}",
            f"--out={out}",
            "--poolings=max",
            "--steps=2",
            "--batch-size=2",
            "--n-boot=20",
            "--threads=1",
            "--no-progress",
            f"--results={tmp_path / 'RESULTS.md'}",
        ]
    )
    trainings = [(r["training"], r["scoring"], r["stride"]) for r in rows]
    assert trainings == [
        (t, s, 3) for t in anomaly_comparison.TRAININGS for s in anomaly_comparison.SCORINGS
    ] + [("free", "pooled", 1), ("free", "moments", 1)]
    for r in rows:
        for name in ("emergency_auc", "inserted_pauc"):
            value, low, high = r[name]
            assert 0.0 <= low <= value <= high <= 1.0
    trained = [r for r in rows if r["training"] != "free"]
    assert trained and all(r["train_images_per_s"] > 0 for r in trained)
    table = (out / "comparison.md").read_text()
    assert table.count("\n| multi-scale max |") == 6 and "0.8697" in table
    assert "anomaly-comparison:begin" in (tmp_path / "RESULTS.md").read_text()
    assert {"comparison.csv", "comparison.json", "roc_emergency.png"} <= {
        p.name for p in out.iterdir()
    }


def test_hop_thresholds_set_each_members_false_positive_rate_and_are_written(ensemble_config):
    import listen_choose

    from ensemble.config import load_config

    names = [m.name for m in load_config(ensemble_config).members]
    hops = [
        {f"p_{n}": i / 100 for n in names} | {"p_keyword_judge": float(i < 10)} for i in range(100)
    ]
    t = listen_choose.hop_thresholds(hops, ensemble_config, 0.05)
    assert np.mean([h["p_cnn"] > t["cnn"] for h in hops]) == pytest.approx(0.05)
    assert t["keyword_judge"] == pytest.approx(1 - 1e-6)  # p of 1 on 10 %: cannot reach 5 %
    out = ensemble_config.with_name("ensemble.listen.yaml")
    listen_choose.write_config(ensemble_config, t, {"confirm": 2, "min_score": None}, out)
    written = load_config(out)
    assert {m.name: m.threshold for m in written.members} == pytest.approx(t, abs=1e-6)
    assert out.read_text().splitlines()[1].endswith("--confirm 2")  # the default --window: unsaid
    listen_choose.write_config(
        ensemble_config, t, {"confirm": 4, "min_score": 0.9, "window": 20.0}, out
    )
    assert out.read_text().splitlines()[1].endswith("--confirm 4 --min-score 0.9 --window 20")
    with pytest.raises(ValueError, match="beside"):
        listen_choose.write_config(ensemble_config, t, {"confirm": 2, "min_score": None},
                                   out.parent / "elsewhere" / "x.yaml")  # fmt: skip


def test_join_rates_tell_hops_at_a_clip_join_from_the_others():
    import listen_choose

    parts = [{"clip_start": 0.0}, {"clip_start": 20.0}]  # one join, at 20 s
    hops = [  # 10 s windows ending at 8 (not full), 12, 18, 22, 28, 34 s
        {"end_s": e, "emergency": e in (22, 28), "own_vote_cnn": e in (12, 22),
         "own_opinion_cnn": e != 34}
        for e in (8, 12, 18, 22, 28, 34)
    ]  # fmt: skip
    rows = listen_choose.join_rates(hops, parts, 10.0).splitlines()[2:]
    assert rows[0] == "| cnn votes emergency | 0.50 of 2 | 0.50 of 2 |"  # 34 s: no opinion
    assert rows[1] == "| ensemble votes emergency | 1.00 of 2 | 0.00 of 3 |"


def test_settings_pool_every_run_and_the_choice_prefers_clean_then_events():
    import listen_choose

    def hop(t, emergency, score=0.9):
        return {"end_s": t, "emergency": emergency, "score": score, "class": "fire"}

    # one event (its clip 20-40 s, onset 25 s) voted for 3 hops; one normal run with a 1-hop blip
    event = {"emergency": True, "label": "fire", "clip_start": 20.0, "end": 40.0, "onset": 25.0}
    parts = [{"emergency": False, "clip_start": 0.0, "clip_end": 20.0}, event]
    ev_hops = [hop(t, 26 <= t <= 30) for t in range(2, 42, 2)]
    no_parts = [{"clip_start": 0.0, "split": "test"}, {"clip_start": 30.0, "split": "holdout"}]
    no_hops = [hop(t, t == 34, score=0.85) for t in range(2, 62, 2)]
    ev_run = ({"n_events": 1}, [dict(p, clip_end=p.get("clip_end", 40.0)) for p in parts], ev_hops)
    no_run = ({"summary": {"stream_s": 60.0}}, no_parts, no_hops)
    rows = [
        listen_choose.setting_row([ev_run, ev_run], [no_run], k, m, 10.0, 10.0)
        for m in (None, 0.9) for k in (1, 2, 4)
    ]  # fmt: skip
    by = {(r["confirm"], r["min_score"]): r for r in rows}
    assert by[1, None]["events_alerted"] == "2 / 2" and by[1, None]["false_alerts"] == 1
    assert by[1, None]["normal_run_at_joins"] == 1  # the blip's window holds the join at 30 s
    assert (
        by[1, None]["normal_run_by_split"] == "holdout 1"
        and by[2, None]["normal_run_by_split"] == "-"
    )
    assert by[2, None]["false_alerts"] == 0 and by[4, None]["events_alerted"] == "0 / 2"
    assert by[1, None]["_normal_min"] == pytest.approx((2 * 20 + 60) / 60)
    best, clean = listen_choose.choose(rows)
    assert clean and (best["confirm"], best["min_score"]) == (1, 0.9)  # the bar stops the blip
    best, clean = listen_choose.choose([by[1, None]])
    assert not clean and best is by[1, None]


def test_each_normal_run_left_out_is_judged_under_the_setting_chosen_on_the_rest():
    import listen_choose

    def hop(t, emergency, score):
        return {"end_s": t, "emergency": emergency, "score": score, "class": "fire"}

    event = {"emergency": True, "label": "fire", "clip_start": 20.0, "end": 40.0, "onset": 25.0}
    parts = [{"emergency": False, "clip_start": 0.0, "clip_end": 20.0}, event]
    ev_run = ({"n_events": 1}, parts, [hop(t, 26 <= t <= 30, 0.99) for t in range(2, 42, 2)])

    def normal(blip_score):  # a one-hop blip at 34 s
        hops = [hop(t, t == 34, blip_score) for t in range(2, 62, 2)]
        return {"summary": {"stream_s": 60.0}}, [{"clip_start": 0.0}], hops

    text = listen_choose.held_out([ev_run], [normal(0.85), normal(0.95)], ["a", "b"], 10.0, 10.0)
    rows = [line.split(" | ") for line in text.splitlines()[2:4]]
    # without a, b's blip (0.95) needs a bar above it: 0.98, under which a's blip (0.85) is quiet
    assert rows[0][2:] == ["`--confirm 1 --min-score 0.98`", "1 / 1", "0 |"]
    # without b, 0.9 clears a's blip, and b's blip (0.95) passes it: one false alert
    assert rows[1][2:] == ["`--confirm 1 --min-score 0.9`", "1 / 1", "1 |"]
    assert "1 false alerts in 2 min" in text


def test_a_hop_stack_labels_hops_by_event_overlap_and_is_written_as_a_listen_config(
    ensemble_config,
):
    import listen_stack

    from ensemble.config import load_config
    from ensemble.vote import Stack

    parts = [{"emergency": False}, {"emergency": True, "onset": 30.0, "end": 33.0}]
    hops = [{"end_s": t} for t in (28.0, 30.5, 32.0, 42.0, 42.5, 50.0)]
    labels = listen_stack.hop_labels(parts, hops, 10.0, min_overlap=1.0)
    assert labels.tolist() == [0, -1, 1, 1, -1, 0]  # 0.5 s of the event: left out

    names = list(load_config(ensemble_config).names)
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    rows = [
        {f"p_{n}": float(np.clip(0.5 + (0.3 if e else -0.3) + rng.normal(0, 0.2), 0, 1))
         for n in names} | {f"opinion_{names[1]}": bool(i % 3)}
        for i, e in enumerate(y)
    ]  # fmt: skip
    x = listen_stack.features(rows, names)
    assert (
        x.shape == (400, 2 * len(names))
        and (x[:, 1][~x[:, len(names) + 1].astype(bool)] != 0).all()
    )
    lr, scores = listen_stack.fit(x, y.astype(int), np.arange(400) // 40)
    assert set(scores) == set(listen_stack.C_GRID) and (lr.coef_[0][: len(names)] > 0).all()
    out = ensemble_config.with_name("ensemble.hops.yaml")
    listen_stack.write_config(ensemble_config, lr, names, out, "a test")
    vote = load_config(out).vote
    assert vote.rule == "stack" and vote.tau == 0.5 and isinstance(vote.stack, Stack)
    p = np.array([[r[f"p_{n}"] for r in rows] for n in names])
    o = np.array([[r.get(f"opinion_{n}", True) for r in rows] for n in names])
    assert vote.stack.score(p, o) == pytest.approx(lr.predict_proba(x)[:, 1], abs=1e-4)
    with pytest.raises(ValueError, match="beside"):
        listen_stack.write_config(ensemble_config, lr, names, out.parent / "x" / "y.yaml", "")


def test_a_stream_says_how_much_of_it_is_distinct_audio():
    import listen_latency

    parts = [
        {"file": f, "clip_start": a, "clip_end": b}
        for f, a, b in (("a", 0, 30), ("b", 30, 45), ("a", 45, 75), ("c", 75, 87))
    ]
    assert listen_latency.unique_audio(parts) == {
        "clips": 4,
        "unique_clips": 3,
        "unique_min": pytest.approx(57 / 60),
    }


def test_a_fresh_draw_keeps_only_unheard_sentences_and_no_held_out_source():
    import fresh_draw

    reference = pd.DataFrame(
        {
            "transcript": ["val only", "both", "both", "train only", None],
            "split": ["val", "val", "train", "train", "val"],
        }
    )
    draw = pd.DataFrame(
        {
            "transcript": ["val only", "both", "train only", "", None, "val only"],
            "origin": ["espeak-ng"] * 3 + ["ufoai-sound", "lugaru-data", "festival;ufoai-sound"],
        }
    )
    keep = fresh_draw.fresh_rows(draw, reference).tolist()
    assert keep == [True, False, False, True, True, False]


def test_transcripts_of_a_split_from_the_cache(member_checkpoints, demo_manifest, tmp_path):
    import pandas as pd

    from benchmarks import transcripts

    cache, out = tmp_path / "features", tmp_path / "rows.csv"
    argv = ["--ckpt", str(member_checkpoints["whisper_head"]), "--manifest", str(demo_manifest)]
    result = transcripts.main([*argv, "--cache", str(cache), "--out", str(out)])
    rows = pd.read_csv(out, keep_default_na=False)
    manifest = pd.read_csv(demo_manifest, keep_default_na=False)
    val = manifest[manifest["split"] == "val"]
    assert len(rows) == result["windows"] >= val["path"].nunique()
    assert result["with_speech"] == (rows["reference"].str.strip() != "").sum() > 0
    assert set(rows["language"]) <= {"ko", "en"} and rows["no_speech_prob"].between(0, 1).all()
    assert (pd.to_numeric(rows["avg_logprob"]) <= 0).all()
    assert 0 <= result["language_acc"] <= 1 and 0 <= result["no_speech_auc"] <= 1
    assert rows["judge_vote"].isin([True, False]).all() and rows["emergency"].any()
    judged = [v for k, v in result.items() if k.startswith("judge_votes_")]
    assert judged and all(0 <= v <= 1 for v in judged)
    assert result["cer"] >= 0 and result["cer_as_decoded"] >= 0
    assert any(cache.rglob("*")), "the windows were encoded into the cache"


def test_rerecord_replaces_one_members_outputs_and_keeps_the_rest(ensemble_config):
    import listen_rerecord
    import yaml

    old = [{"end_s": e, "p_cnn": 0.1, "vote_cnn": False, "p_anomaly": 0.7, "p_whisper_head": 0.2,
            "transcript": "old", "emergency": False} for e in (2.0, 4.0)]  # fmt: skip
    new = [{"end_s": e, "p_cnn": 0.9, "vote_cnn": True, "transcript": ""} for e in (2.0, 4.0)]
    merged = listen_rerecord.merge_hops(old, new, ["cnn"])
    assert [h["p_cnn"] for h in merged] == [0.9, 0.9] and all(h["vote_cnn"] for h in merged)
    assert all(h["p_anomaly"] == 0.7 and h["transcript"] == "old" for h in merged)
    assert old[0]["p_cnn"] == 0.1  # the recorded run is not touched
    with pytest.raises(ValueError, match="was a hop skipped"):
        listen_rerecord.merge_hops(old, new[:1], ["cnn"])
    with pytest.raises(ValueError, match="no outputs of member 'anomaly'"):
        listen_rerecord.merge_hops(old, new, ["anomaly"])
    path = ensemble_config.with_name("one.yaml")
    raw = yaml.safe_load(listen_rerecord.single_member_config(ensemble_config, ["cnn"], path)
                         .read_text())  # fmt: skip
    assert [m["name"] for m in raw["members"]] == ["cnn"] and raw["vote"] == {"rule": "majority"}
    from ensemble.config import load_config

    assert [m.name for m in load_config(path).members] == ["cnn"]
    with pytest.raises(ValueError, match="no member"):
        listen_rerecord.single_member_config(ensemble_config, ["nope"], path)


def test_a_streams_times_without_its_audio_are_those_of_the_written_stream(tmp_path):
    import listen_latency
    import soundfile as sf

    files = []
    for i, (n, sr) in enumerate([(16000 * 3 + 7, 16000), (8000 * 2, 8000)]):  # one resampled
        files.append(str(tmp_path / f"{i}.wav"))
        sf.write(files[-1], np.zeros(n, dtype=np.float32), sr)

    def parts():
        return [
            {"file": files[0], "emergency": False},
            {"file": files[1], "emergency": True, "event_start": 0.5, "event_end": 1.5},
        ]

    written = listen_latency.build_stream(parts(), tmp_path / "stream.wav")
    timed = listen_latency.build_stream(parts(), None)
    assert timed == written
    assert timed[-1]["clip_end"] * 16000 == sf.info(tmp_path / "stream.wav").frames
    assert timed[1]["onset"] == pytest.approx(3 + 7 / 16000 + 0.5)
