"""`emergency-ensemble calibrate`: settings chosen on val only, a config that reproduces its val
figures through `infer`, and revoting that equals inference."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ensemble.calibrate import calibrate, rule_table
from ensemble.config import load_config
from ensemble.core.labels import load_taxonomy
from ensemble.pipeline import infer
from ensemble.revote import figures, read_run, revote
from ensemble.tuning import Goal, best_cut
from ensemble.vote import VoteRule


@pytest.fixture(scope="module")
def calibrated(demo_manifest, ensemble_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    block = calibrate(ensemble_config, demo_manifest, out / "val", out / "calibrated.yaml")
    return out, block


def test_best_cut_balanced_and_at_a_false_positive_rate():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    t = best_cut(p, y, Goal("balanced"))
    assert 0.2 < t < 0.3  # catches every emergency, one false alarm of three
    t = best_cut(p, y, Goal("fpr", target_fpr=0.0))
    assert 0.6 < t < 0.7  # no false alarm at all
    assert 0 < best_cut(np.zeros(4), np.array([0, 1, 0, 1], bool), Goal()) < 1


def test_calibrated_config_loads_and_names_its_choices(calibrated):
    out, block = calibrated
    config = load_config(out / "calibrated.yaml")
    assert config.calibration["chosen_rule"] == block["chosen_rule"]
    assert config.vote.rule == block["chosen_rule"]
    assert set(block["rules"]) == {"majority", "at_least", "soft", "weighted", "stack"}
    for spec in config.members:  # every member got a threshold where val had both kinds
        assert spec.threshold is None or 0 < spec.threshold < 1
    assert block["val"]["n_files"] == block["rules"]["majority"]["val"]["n_files"] > 0
    assert "(chosen)" in rule_table(block)


def test_calibrated_config_reproduces_its_val_figures_through_infer(calibrated, demo_manifest):
    out, block = calibrated
    again = out / "val_again"
    infer(out / "val" / "audio", again, load_config(out / "calibrated.yaml"))
    taxonomy = load_taxonomy(None)
    run = read_run(again, demo_manifest, "val", taxonomy)
    files = [json.loads(line) for line in (again / "predictions.jsonl").read_text().splitlines()]
    assert figures(run, [f for f in files if f["status"] == "ok"]) == block["val"]


def test_revote_equals_inference_with_the_other_config(calibrated, demo_manifest, tmp_path):
    out, _ = calibrated
    taxonomy = load_taxonomy(None)
    run = read_run(out / "val", demo_manifest, "val", taxonomy)  # written by the base config
    config = load_config(out / "calibrated.yaml")
    windows, files = revote(run, config, taxonomy)
    inferred = out / "val_again"
    if not inferred.exists():
        infer(out / "val" / "audio", inferred, config)
    read = [json.loads(x) for x in (inferred / "windows.jsonl").read_text().splitlines()]
    assert windows == read
    read = [json.loads(x) for x in (inferred / "predictions.jsonl").read_text().splitlines()]
    assert files == [r for r in read if r["status"] == "ok"]


def test_calibrate_reads_no_test_label(calibrated, demo_manifest, ensemble_config, tmp_path):
    out, block = calibrated
    df = pd.read_csv(demo_manifest, dtype=str, keep_default_na=False)
    test = df["split"] == "test"
    assert test.any()
    # every test clip relabelled and its transcript changed: nothing calibrate writes may move
    df.loc[test, "label"] = np.where(df.loc[test, "label"] == "fire", "indoor", "fire")
    df.loc[test, "transcript"] = "불이야 살려주세요"
    poisoned = Path(demo_manifest).with_name("manifest.poisoned.csv")  # same folder: same paths
    df.to_csv(poisoned, index=False)
    again = calibrate(ensemble_config, poisoned, out / "val", tmp_path / "calibrated.yaml")
    assert again == block
    first = yaml.safe_load((out / "calibrated.yaml").read_text())
    second = yaml.safe_load((tmp_path / "calibrated.yaml").read_text())
    assert first == second


def test_calibrate_refuses_a_run_of_other_files(calibrated, demo_manifest, tmp_path):
    out, _ = calibrated
    with pytest.raises(ValueError, match=r"not test clips|no clip of split"):
        read_run(out / "val", demo_manifest, "test", load_taxonomy(None))


def test_stack_rule_round_trips_through_yaml(calibrated):
    _, block = calibrated
    stack = block["rules"]["stack"]["vote"]
    rule = VoteRule(**stack)
    assert rule.rule == "stack" and len(rule.stack.coef_p) == 4


def test_score_source_is_chosen_out_of_fold(calibrated):
    """The calibration block says which score ranks files and the out-of-fold AUCs that chose it;
    a `score: stack` config carries the stack, and every rule of the table is scored the same."""
    out, block = calibrated
    score = block["score"]
    assert score["score"] in ("mean", "stack")
    better = score["auc_stack_cv"] > score["auc_mean"]
    assert (score["score"] == "stack") == better
    config = load_config(out / "calibrated.yaml")
    assert config.vote.score == score["score"]
    for name, r in block["rules"].items():
        if name != "stack":
            assert r["vote"]["score"] == score["score"]


def test_score_source_prefers_a_stack_that_ranks_better():
    """A member whose probability ranks the files but is swamped in the mean by a member that
    does not: the stack learns to read the first and wins out of fold."""
    from types import SimpleNamespace

    from ensemble.config import EnsembleConfig, MemberSpec
    from ensemble.tuning import Search

    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 2 == 0
    good = np.where(y, 0.55, 0.45) + rng.normal(0, 0.02, n)
    noise = rng.uniform(0, 1, n)
    search = Search.__new__(Search)
    search.run = SimpleNamespace(y_file=y, y_window=y, group=np.arange(n), names=["a", "b"])
    search.n_files, search.repeats = n, 1
    search.table = SimpleNamespace(
        p=np.stack([good, noise]),
        opinion=np.ones((2, n), bool),
        own_vote=np.stack([good > 0.5, noise > 0.5]),
        no_speech=np.full(n, np.nan),
        class_probs=[None, None],
        names=["a", "b"],
    )
    spec = MemberSpec(name="a", class_path="x.Y", checkpoint="a.ckpt")
    config = EnsembleConfig(
        members=(spec, MemberSpec(name="b", class_path="x.Y", checkpoint="b.ckpt"))
    )
    chosen = search.score_source(config)
    assert chosen["score"] == "stack" and chosen["auc_stack_cv"] > chosen["auc_mean"]


def test_a_run_is_reused_under_another_vote(calibrated, demo_manifest, monkeypatch, tmp_path):
    """Calibrating the calibrated config again (other thresholds, vote and calibration block)
    revotes the finished val run: the members are not run again."""
    import ensemble.calibrate as cal

    out, block = calibrated

    def no_infer(*args, **kwargs):
        raise AssertionError("the members ran again")

    monkeypatch.setattr(cal, "infer", no_infer)
    again = cal.calibrate(out / "calibrated.yaml", demo_manifest, out / "val", tmp_path / "c.yaml")
    assert again["val"] == block["val"]


def test_a_run_is_stale_once_the_lexicon_changes(calibrated, monkeypatch, tmp_path):
    """The judge's outputs depend on its lexicon, which the config names only by default: a
    lexicon edited after the val run makes the run stale, as a newer checkpoint does."""
    import os

    import ensemble.calibrate as cal
    from ensemble.config import load_config

    out, _ = calibrated
    config = load_config(out / "calibrated.yaml")
    assert cal._reusable(out / "val", config)
    lexicon = tmp_path / "keywords.yaml"
    lexicon.write_text("classes: {}\n", encoding="utf-8")
    later = (out / "val" / "run.json").stat().st_mtime + 10
    os.utime(lexicon, (later, later))
    monkeypatch.setattr(cal, "DEFAULT_KEYWORDS", lexicon)
    assert not cal._reusable(out / "val", config)


def test_cv_repeats_average_the_figures_of_several_fold_splits(monkeypatch):
    """`repeats` R: every repeat splits all files into folds anew; the figures are the mean over
    the R splits (R = 1 is the single split of before)."""
    from types import SimpleNamespace

    from ensemble.config import EnsembleConfig, MemberSpec
    from ensemble.tuning import Goal, Search

    rng = np.random.default_rng(1)
    n = 40
    y = np.arange(n) % 3 == 0
    p = np.clip(np.where(y, 0.6, 0.4) + rng.normal(0, 0.15, (2, n)), 0, 1).round(6)

    def search(repeats):
        s = Search.__new__(Search)
        s.run = SimpleNamespace(y_file=y, y_window=y, group=np.arange(n), names=["a", "b"])
        s.n_files, s.repeats, s.goal = n, repeats, Goal()
        s.table = SimpleNamespace(
            p=p, opinion=np.ones((2, n), bool), own_vote=p > 0.5,
            no_speech=np.full(n, np.nan), class_probs=[None, None], names=["a", "b"],
        )  # fmt: skip
        return s

    config = EnsembleConfig(
        members=tuple(MemberSpec(name=m, class_path="x.Y", checkpoint=f"{m}.ckpt") for m in "ab")
    )
    splits = search(3)._splits(y)
    assert len(splits) == 3
    for repeat in splits:  # every file held out exactly once per repeat
        held = np.sort(np.concatenate([test for _, test in repeat]))
        assert (held == np.arange(n)).all()
    assert not all(
        (a[1] == b[1]).all() for a, b in zip(splits[0], splits[1], strict=True)
    )  # the repeats split differently

    first = search(1).cross_validated("soft", config)
    second = search(1)
    monkeypatch.setattr(second, "_splits", lambda y: [splits[1]])
    second = second.cross_validated("soft", config)
    both = search(2).cross_validated("soft", config)
    assert both["cv_score"] == pytest.approx((first["cv_score"] + second["cv_score"]) / 2, abs=2e-6)
    with pytest.raises(ValueError, match="repeats"):
        Search(None, None, Goal(), repeats=0)


def test_cross_validation_chooses_member_thresholds_on_the_training_folds(monkeypatch):
    """The rules that vote on thresholded members are judged out of fold with thresholds chosen
    on the other folds: a member of pure noise, whose threshold on all files fits them, scores
    its in-sample balanced accuracy no more once the held-out fold did not choose it."""
    from types import SimpleNamespace

    from ensemble.config import EnsembleConfig, MemberSpec
    from ensemble.revote import balanced
    from ensemble.tuning import Search, with_rule

    rng = np.random.default_rng(3)
    n = 60
    y = rng.uniform(size=n) < 0.5
    p = rng.uniform(size=(1, n)).round(6)
    search = Search.__new__(Search)
    search.run = SimpleNamespace(y_file=y, y_window=y, group=np.arange(n), names=["a"])
    search.n_files, search.repeats, search.goal = n, 1, Goal()
    search.table = SimpleNamespace(
        p=p, opinion=np.ones((1, n), bool), own_vote=p > 0.5,
        no_speech=np.full(n, np.nan), class_probs=[None], names=["a"],
    )  # fmt: skip
    config = EnsembleConfig(members=(MemberSpec(name="a", class_path="x.Y", checkpoint="a.ckpt"),))
    full = search.thresholds(config)
    config = with_rule(config, VoteRule("at_least", k=1), [1.0], threshold=full)
    in_sample = balanced(y, p[0] > full["a"])

    seen = []
    fit = search.fit
    monkeypatch.setattr(
        search,
        "fit",
        lambda family, cfg, files: seen.append((cfg, files)) or fit(family, cfg, files),
    )
    cv = search.cross_validated("at_least", config)
    assert len(seen) == 5
    for cfg, train in seen:
        keep = np.isin(np.arange(n), train)
        assert cfg.members[0].threshold == search.thresholds(config, keep)["a"]
    assert len({cfg.members[0].threshold for cfg, _ in seen}) > 1
    assert in_sample > 0.6 and cv["cv_score"] < in_sample - 0.03  # the old CV: equal to it
