"""Metrics, plots and the member protocol of ensemble.core."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberOutput, emergency_probability, emergency_targets
from ensemble.core.metrics import (
    binary_metrics,
    class_confusion,
    class_metrics,
    threshold_at_fpr,
    write_json,
)
from ensemble.core.plots import plot_confusion, plot_roc

TAX = load_taxonomy()
FIRE, FALL, INDOOR, VACUUM = (TAX.id(k) for k in ("fire", "fall", "indoor", "vacuum_cleaner"))


def test_class_metrics_by_hand():
    y_true = np.array([FIRE, FIRE, FALL, INDOOR, VACUUM])
    y_pred = np.array([FIRE, FALL, FALL, VACUUM, FIRE])
    m = class_metrics(y_true, y_pred, TAX)
    assert m["n"] == 5 and m["acc"] == pytest.approx(2 / 5)
    # emergency, emergency, emergency, normal, normal vs E, E, E, N, E: 4 of 5 right
    assert m["binary_acc"] == pytest.approx(4 / 5)
    # F1 per present class: fire 1/2 (p 1/2, r 1/2), fall 2/3, indoor 0, vacuum 0
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0 + 0) / 4)
    with pytest.raises(ValueError, match="non-empty"):
        class_metrics(np.array([]), np.array([]), TAX)


def test_confusion_rows_are_true_classes():
    cm = class_confusion(np.array([FIRE, FIRE, INDOOR]), np.array([FIRE, INDOOR, INDOOR]), TAX)
    assert cm.shape == (19, 19) and cm.sum() == 3
    assert cm[FIRE - 1, FIRE - 1] == 1 and cm[FIRE - 1, INDOOR - 1] == 1
    assert cm[INDOOR - 1, INDOOR - 1] == 1


def test_binary_metrics_match_sklearn_and_handle_one_kind():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = y + rng.normal(0, 1, 200)
    m = binary_metrics(y, s, max_fpr=0.1)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pauc"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    assert 0.5 < m["auc"] < 1.0
    assert all(math.isnan(v) for v in binary_metrics(np.ones(4, bool), np.arange(4.0)).values())
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(y, np.full(200, np.nan))


def test_threshold_at_fpr_leaves_that_fraction_above():
    normal = np.arange(1000.0)
    t = threshold_at_fpr(normal, 0.05)
    assert np.mean(normal > t) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError):
        threshold_at_fpr(np.array([]), 0.05)
    with pytest.raises(ValueError):
        threshold_at_fpr(normal, 1.5)


def test_plots_and_json(tmp_path):
    cm = class_confusion(np.array([FIRE, INDOOR]), np.array([FIRE, FIRE]), TAX)
    assert plot_confusion(cm, TAX, tmp_path / "a" / "cm.png").stat().st_size > 10_000
    y = np.array([0, 0, 1, 1], bool)
    roc = plot_roc({"x": (y, np.array([0.1, 0.4, 0.35, 0.8]))}, tmp_path / "roc.png")
    assert roc.stat().st_size > 5_000
    path = write_json({"auc": math.nan, "cm": cm, "n": np.int64(3)}, tmp_path / "m.json")
    back = json.loads(path.read_text())
    assert back["auc"] is None and back["n"] == 3 and np.asarray(back["cm"]).shape == (19, 19)


def test_member_output_checks_shapes():
    p = torch.tensor([0.2, 0.9])
    out = MemberOutput(p, p > 0.5, class_probs=torch.rand(2, 19), transcript=["a", "b"])
    assert out.cpu().vote.tolist() == [False, True]
    with pytest.raises(ValueError, match="vote"):
        MemberOutput(p, p)  # not bool
    with pytest.raises(ValueError, match="class_probs"):
        MemberOutput(p, p > 0.5, class_probs=torch.rand(3, 19))
    with pytest.raises(ValueError, match="transcript"):
        MemberOutput(p, p > 0.5, transcript=["only one"])
    with pytest.raises(ValueError, match="p_emergency"):
        MemberOutput(p[None], p > 0.5)


def test_emergency_probability_and_targets():
    probs = torch.zeros(2, 19)
    probs[0, FIRE - 1], probs[0, INDOOR - 1] = 0.7, 0.3
    probs[1, VACUUM - 1] = 1.0
    torch.testing.assert_close(emergency_probability(probs, TAX), torch.tensor([0.7, 0.0]))
    labels = torch.tensor([FIRE, INDOOR, FALL])
    assert emergency_targets(labels, TAX).tolist() == [True, False, True]


def test_bootstrap_interval_holds_the_value_and_narrows_with_more_data():
    from sklearn.metrics import roc_auc_score

    from ensemble.core.metrics import bootstrap_ci

    rng = np.random.default_rng(0)

    def acc(y, p):
        return float(np.mean(y == p))

    widths = []
    for n in (50, 800):
        y = rng.random(n) < 0.5
        p = np.where(rng.random(n) < 0.8, y, ~y)  # 80 % right
        value, low, high = bootstrap_ci(acc, y, p)
        assert low <= value <= high and value == pytest.approx(acc(y, p))
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # sqrt(16) = 4 times narrower, about
    # an AUC over 6 files: resamples with one class only are skipped, not errors
    value, low, high = bootstrap_ci(roc_auc_score, np.array([0, 0, 0, 1, 1, 1]), np.arange(6.0))
    assert value == 1.0 and low == high == 1.0
    with pytest.raises(ValueError, match="equal"):
        bootstrap_ci(acc, np.zeros(3), np.zeros(4))
