"""Voting rules, tie rules, validation, segment merging and the per-file rollup of ensemble.vote."""

import numpy as np
import pytest
import torch

from ensemble.vote import (
    Decision,
    FileVerdict,
    VoteRule,
    at_least,
    decide,
    majority,
    merge_segments,
    rollup,
    soft,
    soft_score,
    weighted,
)


def col(*bits: int) -> np.ndarray:
    """One window's votes as an (M, 1) bool column."""
    return np.array(bits, dtype=bool)[:, None]


# (votes of the M members for one window, strict majority)
@pytest.mark.parametrize(
    "bits, expected",
    [
        ((1, 1, 0), True),  # M=3
        ((1, 0, 0), False),
        ((1, 1, 1, 0, 0), True),  # M=5
        ((1, 1, 0, 0, 0), False),
        ((1, 1), True),  # M=2
        ((1, 0), False),  # tie is not a majority
        ((1, 1, 1, 0), True),  # M=4
        ((1, 1, 0, 0), False),  # tie is not a majority
        ((1,), True),  # M=1
    ],
)
def test_majority_odd_and_even(bits, expected):
    assert majority(col(*bits)).tolist() == [expected]


def test_all_agree_and_all_disagree_patterns():
    votes = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [1, 0, 1, 1]])  # 3 members, 4 windows
    probs = np.where(votes, 0.9, 0.1)
    d = decide(votes, probs)
    assert isinstance(d, Decision)
    assert d.emergency.tolist() == [True, False, True, True]
    assert d.n_votes.tolist() == [3, 0, 2, 2]
    assert d.tie.tolist() == [False] * 4
    np.testing.assert_allclose(d.score, [0.9, 0.1, 1.9 / 3, 1.9 / 3])
    # every member alone against the rest: 1 of 3 is never an emergency
    assert majority(np.eye(3, dtype=bool)).tolist() == [False] * 3
    assert at_least(np.eye(3, dtype=bool), 1).tolist() == [True] * 3


@pytest.mark.parametrize(
    "tie_break, p_yes, expected",
    [
        ("soft", 0.9, True),  # score (0.9 + 0.9 + 0.4 + 0.4) / 4 = 0.65 >= 0.5
        ("soft", 0.55, False),  # score (0.55 + 0.55 + 0.4 + 0.4) / 4 = 0.475 < 0.5
        ("emergency", 0.55, True),
        ("normal", 0.9, False),
    ],
)
def test_majority_tie_two_of_four(tie_break, p_yes, expected):
    votes = col(1, 1, 0, 0)
    probs = np.array([[p_yes], [p_yes], [0.4], [0.4]])
    d = decide(votes, probs, VoteRule("majority", tie_break=tie_break))
    assert d.tie.tolist() == [True]
    assert d.n_votes.tolist() == [2]
    assert d.emergency.tolist() == [expected]


def test_soft_tie_break_uses_tau():
    votes, probs = col(1, 1, 0, 0), np.array([[0.9], [0.9], [0.4], [0.4]])  # score 0.65
    assert decide(votes, probs, VoteRule(tau=0.6)).emergency.tolist() == [True]
    assert decide(votes, probs, VoteRule(tau=0.7)).emergency.tolist() == [False]


def test_no_tie_for_odd_members_or_at_least_or_soft():
    votes = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], dtype=bool)
    probs = np.full(votes.shape, 0.5)
    for rule in (VoteRule("at_least", k=2), VoteRule("soft")):
        assert not decide(votes, probs, rule).tie.any()
    assert not decide(votes[:3], probs[:3]).tie.any()


@pytest.mark.parametrize(
    "k, expected", [(1, [True, True, False]), (2, [True, False, False]), (3, [True, False, False])]
)
def test_at_least(k, expected):
    votes = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)
    assert at_least(votes, k).tolist() == expected
    assert decide(votes, votes * 0.9, VoteRule("at_least", k=k)).emergency.tolist() == expected


@pytest.mark.parametrize("k", [0, 4, -1])
def test_at_least_k_out_of_range(k):
    votes = col(1, 0, 1)
    with pytest.raises(ValueError, match="k must be"):
        at_least(votes, k)


def test_at_least_k_larger_than_m_in_decide_and_k_required():
    with pytest.raises(ValueError, match="k must be"):
        decide(col(1, 0), np.full((2, 1), 0.5), VoteRule("at_least", k=3))
    with pytest.raises(ValueError, match="k is required"):
        VoteRule("at_least")


@pytest.mark.parametrize("tau, expected", [(0.3, [True, True]), (0.5, [True, False])])
def test_soft_with_tau(tau, expected):
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.6]])  # means 0.5, 0.4
    np.testing.assert_allclose(soft_score(probs), [0.5, 0.4])
    assert soft(probs, tau=tau).tolist() == expected
    assert decide(probs > 0.5, probs, VoteRule("soft", tau=tau)).emergency.tolist() == expected


def test_soft_score_weighted():
    probs = np.array([[1.0], [0.0]])
    np.testing.assert_allclose(soft_score(probs, [3.0, 1.0]), [0.75])
    assert soft(probs, 0.7, [3.0, 1.0]).tolist() == [True]
    assert soft(probs, 0.7).tolist() == [False]


def test_weighted_heavy_member_flips_outcome():
    votes, probs = col(1, 0, 0), np.array([[0.9], [0.2], [0.2]])
    assert decide(votes, probs, VoteRule("weighted")).emergency.tolist() == [False]
    w = [5.0, 1.0, 1.0]
    np.testing.assert_allclose(weighted(votes, w), [5 / 7])
    d = decide(votes, probs, VoteRule("weighted"), weights=w)
    assert d.emergency.tolist() == [True]
    assert d.tie.tolist() == [False]
    np.testing.assert_allclose(d.score, [(4.5 + 0.4) / 7])  # the weights reach the score too


@pytest.mark.parametrize("tie_break, expected", [("emergency", True), ("normal", False)])
def test_weighted_tie(tie_break, expected):
    votes, probs = col(1, 0, 0), np.array([[0.9], [0.1], [0.1]])
    w = [2.0, 1.0, 1.0]  # fraction 2/4 == threshold 0.5
    d = decide(votes, probs, VoteRule("weighted", tie_break=tie_break), weights=w)
    assert d.tie.tolist() == [True]
    assert d.emergency.tolist() == [expected]
    for tau, soft_expected in ((0.4, True), (0.6, False)):  # score (1.8 + 0.2) / 4 = 0.5
        soft_rule = VoteRule("weighted", tie_break="soft", tau=tau)
        assert decide(votes, probs, soft_rule, weights=w).emergency.tolist() == [soft_expected]
    tie_03 = decide(col(1, 0, 0), probs, VoteRule("weighted", threshold=0.3, tie_break="normal"))
    assert tie_03.tie.tolist() == [False] and tie_03.emergency.tolist() == [True]


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 16))
    votes = probs > 0.5
    w = np.array([1.0, 2.0, 0.5, 1.5])
    for rule in (VoteRule(), VoteRule("at_least", k=2), VoteRule("soft"), VoteRule("weighted")):
        a = decide(votes, probs, rule, w)
        b = decide(torch.from_numpy(votes), torch.from_numpy(probs).float(), rule, torch.tensor(w))
        np.testing.assert_array_equal(a.emergency, b.emergency)
        np.testing.assert_array_equal(a.tie, b.tie)
        np.testing.assert_array_equal(a.n_votes, b.n_votes)
        np.testing.assert_allclose(a.score, b.score, atol=1e-6)
    assert isinstance(majority(torch.tensor([[1, 0], [1, 1], [0, 1]])), np.ndarray)
    assert majority(np.array([[1, 0], [1, 1], [0, 0]])).tolist() == [True, False]  # 0/1 ints


ok_v, ok_p = np.ones((3, 2), dtype=bool), np.full((3, 2), 0.5)


@pytest.mark.parametrize(
    "votes, probs, weights, match",
    [
        (np.ones(3, dtype=bool), ok_p, None, "votes must be 2-D"),
        (ok_v, np.full(3, 0.5), None, "probs must be 2-D"),
        (np.ones((0, 2), dtype=bool), np.ones((0, 2)), None, "M >= 1"),
        (ok_v, np.full((3, 3), 0.5), None, "shape of votes"),
        (np.full((3, 2), 2), ok_p, None, "votes must be bool or 0/1"),
        (ok_v, np.full((3, 2), 1.5), None, r"within \[0, 1\]"),
        (ok_v, np.full((3, 2), -0.1), None, r"within \[0, 1\]"),
        (ok_v, np.array([[0.5, np.nan]] * 3), None, "finite"),
        (ok_v, ok_p, [1.0, -1.0, 1.0], "non-negative"),
        (ok_v, ok_p, [0.0, 0.0, 0.0], "positive sum"),
        (ok_v, ok_p, [1.0, 1.0], "weights must have shape"),
    ],
)
def test_invalid_inputs(votes, probs, weights, match):
    with pytest.raises(ValueError, match=match):
        decide(votes, probs, weights=weights)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rule": "vote"}, "rule must be one of .*'vote'"),
        ({"tie_break": "coin"}, "tie_break must be one of .*'coin'"),
        ({"tau": 0.0}, "tau must be in"),
        ({"tau": 1.0}, "tau must be in"),
        ({"threshold": 1.2}, "threshold must be in"),
        ({"rule": "at_least", "k": 0}, "k must be a positive int"),
    ],
)
def test_bad_vote_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VoteRule(**kwargs)


def test_merge_segments():
    segs = [
        (60.0, 90.0, "fire"),
        (30.0, 60.0, "fire"),  # touches the next window at 30.0 s and 60.0 s
        (0.0, 30.0, "fire"),
        (0.0, 30.0, "scream"),  # another class is never merged in
        (95.0, 100.0, "fire"),  # 5 s gap > gap=2
        (40.0, 40.0, "fall"),  # zero length: dropped
        (50.0, 45.0, "fall"),  # negative length: dropped
    ]
    expected = [(0.0, 30.0, "scream"), (0.0, 90.0, "fire"), (95.0, 100.0, "fire")]
    assert merge_segments(segs, gap=2.0) == expected  # equal starts: shorter first
    assert merge_segments(segs, gap=5.0)[1:] == [(0.0, 100.0, "fire")]  # a 5 s gap <= 5
    assert merge_segments([(0.0, 10.0, "a"), (5.0, 7.0, "a")]) == [(0.0, 10.0, "a")]
    assert merge_segments([(1.5, 2.0, "a"), (0.0, 1.0, "a")]) == [(0.0, 1.0, "a"), (1.5, 2.0, "a")]
    assert merge_segments([]) == []
    with pytest.raises(ValueError, match="gap"):
        merge_segments(segs, gap=-1.0)


@pytest.mark.parametrize("where", [0, 2, 4])
def test_rollup_one_emergency_window_anywhere(where):
    emergency = np.zeros(5, dtype=bool)
    emergency[where] = True
    score = np.array([0.1, 0.3, 0.2, 0.9, 0.4])
    v = rollup(emergency, score, np.arange(5) * 30.0)
    assert v == FileVerdict(True, 0.9, 30.0 * where, 5, 1)


def test_rollup_first_emergency_and_normal_file():
    v = rollup([0, 1, 1], torch.tensor([0.2, 0.7, 0.8]), [60.0, 30.0, 0.0])  # starts unsorted
    assert v.emergency and v.first_emergency_s == 0.0 and v.n_emergency_windows == 2
    assert v.score == pytest.approx(0.8)
    v = rollup(np.zeros(2, dtype=bool), [0.1, 0.4], [0.0, 30.0])
    assert v == FileVerdict(False, 0.4, None, 2, 0)


def test_rollup_errors():
    with pytest.raises(ValueError, match="W >= 1"):
        rollup(np.zeros(0, dtype=bool), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="equal lengths"):
        rollup([True, False], [0.1], [0.0, 30.0])


# --- abstention ---------------------------------------------------------------------------------


def test_all_abstain_is_no_decision():
    votes, probs = col(1, 1, 0), np.array([[0.9], [0.8], [0.1]])
    d = decide(votes, probs, opinion=col(0, 0, 0))
    assert d.decided.tolist() == [False] and d.emergency.tolist() == [False]
    assert d.n_opinions.tolist() == [0] and np.isnan(d.score).all()
    for rule in (VoteRule("at_least", k=1), VoteRule("soft", tau=0.1), VoteRule("weighted")):
        assert decide(votes, probs, rule, opinion=col(0, 0, 0)).emergency.tolist() == [False]


@pytest.mark.parametrize("bit", [0, 1])
def test_one_member_left_decides(bit):
    # three members vote "yes" but abstain; the one with an opinion decides alone
    votes = col(1, 1, 1, bit)
    probs = np.array([[0.9], [0.9], [0.9], [0.8 if bit else 0.2]])
    d = decide(votes, probs, opinion=col(0, 0, 0, 1))
    assert d.emergency.tolist() == [bool(bit)] and d.n_votes.tolist() == [bit]
    assert d.score == pytest.approx(0.8 if bit else 0.2)  # the abstainers' p is not averaged
    assert (
        decide(votes, probs, VoteRule("at_least", k=3), opinion=col(0, 0, 0, 1)).emergency[0] == bit
    )


@pytest.mark.parametrize(
    "tie_break, expected", [("soft", True), ("emergency", True), ("normal", False)]
)
def test_tie_among_the_members_with_an_opinion(tie_break, expected):
    # 4 members, 2 abstain: 1 of the 2 left votes yes, a tie settled by the tie rule
    votes, probs = col(1, 0, 1, 1), np.array([[0.9], [0.3], [0.9], [0.9]])
    d = decide(votes, probs, VoteRule("majority", tie_break=tie_break), opinion=col(1, 1, 0, 0))
    assert d.tie.tolist() == [True] and d.n_opinions.tolist() == [2]
    assert d.score == pytest.approx(0.6)  # (0.9 + 0.3) / 2 >= tau 0.5
    assert d.emergency.tolist() == [expected]
    # without abstention, 3 of 4 is a majority and no tie
    assert decide(votes, probs).emergency.tolist() == [True]


def test_stack_reads_probabilities_and_abstentions():
    from ensemble.vote import Stack

    stack = Stack(intercept=-2.0, coef_p=(0.5, 1.0), coef_abstain=(0.0, 3.0))
    probs = np.array([[1.0, 0.9, 0.0], [0.0, 0.0, 0.5]])
    opinion = np.array([[1, 1, 1], [1, 0, 1]], dtype=bool)
    edge = np.log((1 - 1e-4) / 1e-4)  # p = 1 or 0 is clipped: a logit of ±9.21
    z = np.array([-2 + 0.5 * edge - edge, -2 + 0.5 * np.log(9) + 3.0, -2 - 0.5 * edge + 0.0])
    np.testing.assert_allclose(stack.score(probs, opinion), 1 / (1 + np.exp(-z)))
    d = decide(probs > 0.5, probs, VoteRule("stack", tau=0.5, stack=stack), opinion=opinion)
    assert d.emergency.tolist() == [False, True, False]
    # from YAML: a dict becomes a Stack; the rule without coefficients is refused
    rule = VoteRule("stack", stack={"intercept": 0, "coef_p": [1, 1], "coef_abstain": [0, 0]})
    assert isinstance(rule.stack, Stack)
    with pytest.raises(ValueError, match="coefficients"):
        VoteRule("stack")
    with pytest.raises(ValueError, match="2 members"):
        stack.score(np.ones((3, 1)))


def test_score_stack_ranks_and_settles_ties_but_leaves_the_rule():
    """`score: stack` replaces the mean probability as the window score (and so the soft tie
    rule's input) under any rule; the rule's own decision is unchanged."""
    from ensemble.vote import Stack

    stack = Stack(intercept=0.0, coef_p=(0.0, 1.0), coef_abstain=(0.0, 0.0))  # member 2 alone
    votes = np.array([[True, True, False], [False, True, False]])
    probs = np.array([[0.9, 0.9, 0.4], [0.2, 0.8, 0.3]])
    mean = decide(votes, probs, VoteRule("majority", tie_break="soft"))
    scored = decide(
        votes, probs, VoteRule("majority", tie_break="soft", score="stack", stack=stack)
    )
    np.testing.assert_allclose(mean.score, probs.mean(0))
    np.testing.assert_allclose(scored.score, probs[1])
    # window 0 is a 1-1 tie: the mean (0.55) says emergency, the stack (0.2) says normal
    assert mean.emergency.tolist() == [True, True, False]
    assert scored.emergency.tolist() == [False, True, False]
    soft = VoteRule("soft", tau=0.5, score="stack", stack=stack)
    assert decide(votes, probs, soft).emergency.tolist() == [True, True, False]  # the mean decides
    with pytest.raises(ValueError, match="coefficients"):
        VoteRule("majority", score="stack")
    with pytest.raises(ValueError, match="score must be"):
        VoteRule(score="max", stack=stack)
