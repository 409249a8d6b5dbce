"""Aggregation over seeds and paired tests: textbook values and invariants."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from metarec_lib.stats import aggregate, aggregate_frame, compare_to_best, holm, paired_test

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


def test_aggregate_hand_worked():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5 -> std sqrt(5/3);
    # t_{0.975, 3} = 3.182446 (table); half-width 3.182446 * sqrt(5/3) / 2 = 2.054260
    got = aggregate([1, 2, 3, 4])
    assert got["mean"] == 2.5 and got["n"] == 4
    assert got["std"] == pytest.approx(math.sqrt(5 / 3))
    assert got["ci_low"] == pytest.approx(2.5 - 2.054260, abs=1e-6)
    assert got["ci_high"] == pytest.approx(2.5 + 2.054260, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), st.sampled_from([0.9, 0.95, 0.99]))
def test_aggregate_interval_equals_scipy_t_interval(values, confidence):
    got = aggregate(values, confidence=confidence)
    v = np.asarray(values)
    sem = v.std(ddof=1) / math.sqrt(v.size)
    if sem == 0:
        assert got["ci_low"] == got["ci_high"] == pytest.approx(v.mean())
        return
    low, high = sps.t.interval(confidence, v.size - 1, loc=v.mean(), scale=sem)
    assert got["ci_low"] == pytest.approx(low, abs=1e-9)
    assert got["ci_high"] == pytest.approx(high, abs=1e-9)


def test_aggregate_single_empty_and_nan():
    one = aggregate([0.3])
    assert one["mean"] == 0.3 and one["n"] == 1
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    none = aggregate([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    # NaN is dropped: same as [1, 3]
    assert aggregate([1.0, np.nan, 3.0]) == pytest.approx(aggregate([1.0, 3.0]), nan_ok=True)


def _long_table() -> pd.DataFrame:
    rows = []
    for model, values in {"ease": [0.30, 0.32, 0.34], "pop": [0.10, 0.10]}.items():
        for seed, v in enumerate(values):
            rows.append(("ml-100k", "random", "collaborative", model, seed, "ndcg@10", v))
    columns = ["dataset", "protocol", "family", "model", "seed", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def test_aggregate_frame_per_group_over_seeds():
    out = aggregate_frame(_long_table())
    assert list(out["model"]) == ["ease", "pop"]
    ease = out.iloc[0]
    # ease: mean 0.32, std 0.02 over 3 seeds, half-width t_{0.975, 2} * 0.02 / sqrt 3
    assert ease["mean"] == pytest.approx(0.32) and ease["n"] == 3
    assert ease["std"] == pytest.approx(0.02)
    assert ease["ci_high"] - ease["mean"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    pop = out.iloc[1]
    assert pop["std"] == pytest.approx(0.0) and pop["ci_low"] == pytest.approx(0.10)
    for _, row in out.iterrows():
        group = _long_table().query("model == @row.model")["value"]
        assert row[["mean", "std", "n", "ci_low", "ci_high"]].to_dict() == pytest.approx(
            aggregate(group)
        )


def test_aggregate_frame_rejects_missing_columns_and_duplicate_seeds():
    with pytest.raises(ValueError, match="missing columns \\['seed'\\]"):
        aggregate_frame(_long_table().drop(columns="seed"))
    doubled = pd.concat([_long_table(), _long_table().iloc[[0]]])
    with pytest.raises(ValueError, match="duplicate rows, first at .*model='ease'.*seed=0"):
        aggregate_frame(doubled)


def test_paired_test_textbook_values():
    # differences 1..5, all positive: exact Wilcoxon two-sided p = 2 / 2^5 = 0.0625.
    # t = mean / (sd / sqrt n) = 3 / (sqrt(2.5) / sqrt 5) = 3 sqrt 2; p = 2 * sf(t, df = 4)
    a = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = paired_test(a, b)
    assert got["n"] == 5 and got["mean_diff"] == pytest.approx(3.0)
    assert got["wilcoxon_p"] == pytest.approx(0.0625)
    assert got["ttest_p"] == pytest.approx(2 * sps.t.sf(3 * math.sqrt(2), 4))


def test_paired_test_zero_and_nan_handling():
    a = np.array([0.5, np.nan, 0.2, 0.0])
    assert paired_test(a, a) == pytest.approx(
        {"n": 3, "mean_diff": 0.0, "wilcoxon_p": 1.0, "ttest_p": 1.0}
    )
    b = np.array([0.1, 0.9, np.nan, 0.3])
    # pairs 1 and 2 dropped: differences 0.4 and -0.3
    got = paired_test(a, b)
    assert got["n"] == 2 and got["mean_diff"] == pytest.approx(0.05)
    empty = paired_test([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["wilcoxon_p"]) and math.isnan(empty["ttest_p"])
    with pytest.raises(ValueError, match="length 2 and 3"):
        paired_test([1, 2], [1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=30))
def test_paired_test_is_symmetric(pairs):
    a, b = np.array(pairs).T
    ab, ba = paired_test(a, b), paired_test(b, a)
    assert ab["n"] == ba["n"] and ab["mean_diff"] == pytest.approx(-ba["mean_diff"])
    assert ab["wilcoxon_p"] == pytest.approx(ba["wilcoxon_p"], nan_ok=True)
    assert ab["ttest_p"] == pytest.approx(ba["ttest_p"], nan_ok=True)
    for key in ("wilcoxon_p", "ttest_p"):
        assert math.isnan(ab[key]) or 0.0 <= ab[key] <= 1.0


def test_paired_test_detects_a_consistent_gain():
    rng = np.random.default_rng(7)
    b = rng.random(200)
    a = b + 0.05 + 0.01 * rng.standard_normal(200)
    got = paired_test(a, b)
    assert got["mean_diff"] > 0 and got["wilcoxon_p"] < 1e-10 and got["ttest_p"] < 1e-10
    noise = paired_test(b + 0.01 * rng.standard_normal(200), b)
    assert noise["wilcoxon_p"] > 0.001


def test_holm_textbook_example():
    # Holm (1979) as on Wikipedia: p = 0.01, 0.04, 0.03, 0.005; sorted 0.005, 0.01, 0.03, 0.04
    # scaled by 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 2 * 0.5, max(1.0, 0.6) capped
    np.testing.assert_allclose(holm([0.2, np.nan, 0.01]), [0.2, np.nan, 0.02])  # m = 2
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        holm([0.5, 1.5])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_is_monotone_bounded_and_at_least_raw(pvalues):
    p = np.array(pvalues)
    adj = holm(p)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj <= np.minimum(p * p.size, 1.0) + 1e-15)  # never worse than Bonferroni


def test_compare_to_best():
    rng = np.random.default_rng(3)
    base = rng.random(300)
    per_user = {
        "pop": base - 0.2 + 0.01 * rng.standard_normal(300),
        "ease": base,
        "knn": base - 0.001 * rng.standard_normal(300),  # tied with ease in distribution
    }
    per_user["ease"][:5] = np.nan  # users without relevant items
    out = compare_to_best(per_user)
    assert out["model"].iloc[0] in ("ease", "knn") and out["is_best"].sum() == 1
    best = out[out["is_best"]].iloc[0]
    assert best["diff"] == 0.0 and math.isnan(best["wilcoxon_p"]) and not best["significant"]
    pop = out.set_index("model").loc["pop"]
    assert pop["diff"] == pytest.approx(-0.2, abs=0.01) and pop["significant"]
    assert pop["n"] == 295  # NaN pairs of the best model dropped
    assert list(out["model"])[-1] == "pop"
    p = out["wilcoxon_p"].to_numpy()
    np.testing.assert_allclose(out["wilcoxon_p_holm"].to_numpy(), holm(p))


def test_compare_to_best_lower_is_better_and_errors():
    out = compare_to_best({"a": [1.0, 2.0, 3.0], "b": [0.5, 1.0, 1.5]}, higher_is_better=False)
    assert list(out["model"]) == ["b", "a"] and out["is_best"].tolist() == [True, False]
    assert out["diff"].iloc[1] == pytest.approx(1.0)  # a - b: 0.5, 1, 1.5
    with pytest.raises(ValueError, match="different lengths"):
        compare_to_best({"a": [1.0], "b": [1.0, 2.0]})


def test_compare_to_best_against_a_named_best():
    """A leaderboard names its rank 1; a model whose per-user mean beats it is not worse."""
    a = np.arange(1.0, 21.0)  # users' values 1..20
    per_user = {"a": a, "b": a + 1.0, "c": a - 1.0}
    out = compare_to_best(per_user, best="a").set_index("model")
    assert list(out.index) == ["a", "b", "c"]  # the named best first, then by mean
    assert out["is_best"].tolist() == [True, False, False]
    assert out.loc["b", "diff"] == 1.0 and out.loc["c", "diff"] == -1.0
    # a constant difference over 20 users: both two-sided p are far below 0.05 ...
    assert out.loc["b", "wilcoxon_p_holm"] < 0.05 and out.loc["c", "wilcoxon_p_holm"] < 0.05
    # ... but only c, lower per user, is significantly worse than the best
    assert not out.loc["b", "significant"] and out.loc["c", "significant"]
    lower = compare_to_best(per_user, higher_is_better=False, best="a").set_index("model")
    assert lower.loc["b", "significant"] and not lower.loc["c", "significant"]
    with pytest.raises(ValueError, match="best='z' is not among"):
        compare_to_best(per_user, best="z")
