"""Top-K selection and metrics: hand-worked values, properties, and the audit's own definitions."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib import metrics
from metarec_lib.hashing import pair_hash
from metarec_lib.metrics import (
    coverage,
    evaluate_topk,
    intra_list_diversity,
    novelty,
    ranking_metrics,
    rating_metrics,
    rating_metrics_per_user,
    topk_from_scores,
    topk_overlap,
)

CHECK_RESULTS = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_results.py"
L3, L5, L6 = math.log2(3), math.log2(5), math.log2(6)  # rank discounts are 1/log2(rank + 1)


def csr(rows: list[set[int]], n_items: int) -> sp.csr_array:
    """A binary (len(rows), n_items) CSR matrix with row u holding the items in rows[u]."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in sorted(items)]
    return sp.csr_array((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


# Five users over 8 items, K = 5.
TOPK = np.array(
    [
        [3, 1, 5, 7, 0],  # u0: hits at ranks 2 and 4
        [4, 2, -1, -1, -1],  # u1: only two candidates, padded; hit at rank 2
        [0, 1, 2, 3, 4],  # u2: no relevant items -> NaN
        [6, 7, 0, 1, 5],  # u3: 7 relevant items (> k); hits at ranks 1, 3, 4, 5
        [0, 1, 2, 5, 4],  # u4: its one relevant item at rank 4 (beyond k = 3)
    ]
)
RELEVANT = csr([{1, 7, 2}, {2}, set(), {0, 1, 2, 3, 4, 5, 6}, {5}], 8)

EXPECTED_AT_5 = {
    # precision = hits / 5 (u1 divides by 5 although its list has 2 items)
    "precision": [2 / 5, 1 / 5, np.nan, 4 / 5, 1 / 5],
    # recall = hits / |rel|
    "recall": [2 / 3, 1 / 1, np.nan, 4 / 7, 1 / 1],
    "hr": [1, 1, np.nan, 1, 1],
    # mrr = 1 / rank of the first hit
    "mrr": [1 / 2, 1 / 2, np.nan, 1 / 1, 1 / 4],
    # ndcg: u0 dcg = 1/log2 3 + 1/log2 5, idcg over min(3, 5) = 3 ranks = 1 + 1/log2 3 + 1/2;
    # u1 (1/log2 3) / 1; u3 dcg = 1 + 1/2 + 1/log2 5 + 1/log2 6 over idcg of 5 ranks;
    # u4 (1/log2 5) / 1
    "ndcg": [
        (1 / L3 + 1 / L5) / (1 + 1 / L3 + 1 / 2),
        1 / L3,
        np.nan,
        (1 + 1 / 2 + 1 / L5 + 1 / L6) / (1 + 1 / L3 + 1 / 2 + 1 / L5 + 1 / L6),
        1 / L5,
    ],
    # map: u0 (P@2 + P@4) / min(3, 5) = (1/2 + 2/4) / 3; u1 (1/2) / 1;
    # u3 (P@1 + P@3 + P@4 + P@5) / min(7, 5) = (1 + 2/3 + 3/4 + 4/5) / 5; u4 (1/4) / 1
    "map": [(1 / 2 + 2 / 4) / 3, 1 / 2, np.nan, (1 + 2 / 3 + 3 / 4 + 4 / 5) / 5, 1 / 4],
}
EXPECTED_AT_3 = {
    # u0 hits [0, 1, 0]; u1 [0, 1, 0]; u3 [1, 0, 1]; u4 [0, 0, 0] (its hit is at rank 4)
    "precision": [1 / 3, 1 / 3, np.nan, 2 / 3, 0],
    "recall": [1 / 3, 1, np.nan, 2 / 7, 0],
    "hr": [1, 1, np.nan, 1, 0],
    "mrr": [1 / 2, 1 / 2, np.nan, 1, 0],
    # u0 and u3: idcg over min(|rel|, 3) = 3 ranks = 1 + 1/log2 3 + 1/2
    "ndcg": [(1 / L3) / (1 + 1 / L3 + 1 / 2), 1 / L3, np.nan, 1.5 / (1 + 1 / L3 + 1 / 2), 0],
    # u0 (1/2) / 3; u1 (1/2) / 1; u3 (1 + 2/3) / min(7, 3)
    "map": [(1 / 2) / 3, 1 / 2, np.nan, (1 + 2 / 3) / 3, 0],
}


@pytest.mark.parametrize("k, expected", [(5, EXPECTED_AT_5), (3, EXPECTED_AT_3)])
def test_ranking_metrics_hand_worked(k, expected):
    alone = ranking_metrics(TOPK, RELEVANT, ks=(k,))
    together = ranking_metrics(TOPK, RELEVANT, ks=(5, 3))  # one pass over the longest cut-off
    assert set(alone) == {f"{name}@{k}" for name in expected}
    for name, values in expected.items():
        for got in (alone, together):
            np.testing.assert_allclose(got[f"{name}@{k}"], values, atol=1e-12, err_msg=name)


def test_study_value_is_mean_over_users_with_relevant_items():
    got = evaluate_topk(TOPK, RELEVANT, ks=(5, 3))
    # precision@5 over u0, u1, u3, u4 (u2 has no relevant item): (0.4 + 0.2 + 0.8 + 0.2) / 4
    assert got["precision@5"] == pytest.approx(0.4, abs=1e-12)
    assert got["hr@3"] == pytest.approx(3 / 4, abs=1e-12)
    # coverage@3: items {0, 1, 2, 3, 4, 5, 6, 7} appear in the first 3 columns -> 8 / 8;
    # coverage@5 is the same catalogue
    assert got["coverage@3"] == pytest.approx(1.0)
    assert "novelty@5" not in got and "ild@5" not in got


def test_k_larger_than_list_counts_as_short_list():
    # K = 2 lists, k = 4: u0 has one hit at rank 1 -> precision 1/4, map (1/1) / min(2, 4)
    got = ranking_metrics(np.array([[0, 1]]), csr([{0, 5}], 6), ks=(4,))
    assert got["precision@4"][0] == pytest.approx(1 / 4)
    assert got["map@4"][0] == pytest.approx(1 / 2)
    assert got["ndcg@4"][0] == pytest.approx(1 / (1 + 1 / L3))


def test_no_relevant_anywhere_gives_nan_study_values():
    got = evaluate_topk(np.array([[0, 1]]), csr([set()], 3), ks=(2,))
    assert math.isnan(got["ndcg@2"]) and got["coverage@2"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "topk, message",
    [
        (np.array([[0, 8]]), "range"),
        (np.array([[0, -2]]), "range"),
        (np.array([[1, 1]]), "twice"),
        (np.array([[0.0, 1.0]]), "integer"),
    ],
)
def test_bad_topk_is_rejected(topk, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(topk, csr([{0}], 8))


def test_row_count_mismatch_and_unknown_metric_are_rejected():
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(TOPK[:2], RELEVANT)
    with pytest.raises(ValueError, match="unknown"):
        ranking_metrics(TOPK, RELEVANT, names=("auc",))


# --- the audit's definitions ------------------------------------------------------------------


def _audit_module():
    if not CHECK_RESULTS.exists():
        pytest.skip(f"{CHECK_RESULTS} not found (the shared tools folder is not next to the repo)")
    spec = importlib.util.spec_from_file_location("check_results", CHECK_RESULTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@st.composite
def ranking_cases(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 25))
    width = draw(st.integers(1, 12))
    rows, rel = [], []
    for _ in range(n_users):
        length = draw(st.integers(0, min(width, n_items)))
        items = draw(st.permutations(range(n_items)))[:length]
        rows.append(list(items) + [-1] * (width - length))
        rel.append(set(draw(st.lists(st.integers(0, n_items - 1), max_size=n_items))))
    ks = draw(st.lists(st.integers(1, 15), min_size=1, max_size=3, unique=True))
    return np.array(rows, dtype=np.int64), rel, n_items, ks


@settings(max_examples=150, deadline=None)
@given(ranking_cases())
def test_matches_check_results_ranking_metric(case):
    audit = _audit_module()
    topk, rel, n_items, ks = case
    got = ranking_metrics(topk, csr(rel, n_items), ks=ks)
    study = evaluate_topk(topk, csr(rel, n_items), ks=ks)
    for k in ks:
        for name in ("precision", "recall", "ndcg", "map", "hr", "mrr"):
            expected = []
            for u, items in enumerate(rel):
                ranked = [int(i) for i in topk[u] if i >= 0]
                expected.append(audit.ranking_metric(name, k, ranked, items) if items else np.nan)
            np.testing.assert_allclose(got[f"{name}@{k}"], expected, rtol=0, atol=1e-9)
            if any(rel):
                assert study[f"{name}@{k}"] == pytest.approx(np.nanmean(expected), abs=1e-9)


# --- top-K selection ----------------------------------------------------------------------------


def test_topk_excludes_seen_and_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    seen = csr([{1}, {0, 3}], 4)
    items, vals = topk_from_scores(scores, 2, seen)
    np.testing.assert_array_equal(items, [[3, 2], [1, 2]])
    np.testing.assert_array_equal(vals, [[0.7, 0.5], [0.3, 0.2]])
    assert scores[0, 1] == 0.9  # the caller's array is not modified


def test_topk_ties_follow_the_pair_hash_of_user_and_item():
    # pair_hash(0, i) ranks items 0..5 as 3, 5, 4, 1, 2, 0; pair_hash(7, i) as 1, 2, 0, 4, 5, 3.
    assert np.argsort(pair_hash(0, np.arange(6))).tolist() == [3, 5, 4, 1, 2, 0]
    assert np.argsort(pair_hash(7, np.arange(6))).tolist() == [1, 2, 0, 4, 5, 3]
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0, 2.0]])  # items 1, 2, 4, 5 tie at 2
    np.testing.assert_array_equal(topk_from_scores(scores, 2)[0], [[5, 4]])
    np.testing.assert_array_equal(topk_from_scores(scores, 5)[0], [[5, 4, 1, 2, 0]])
    # excluding item 4 moves the tie on to items 1 and 2
    np.testing.assert_array_equal(topk_from_scores(scores, 3, csr([{4}], 6))[0], [[5, 1, 2]])
    # the same row for user 7: its own order of the tied items
    np.testing.assert_array_equal(topk_from_scores(scores, 3, users=[7])[0], [[1, 2, 4]])
    with pytest.raises(ValueError, match="users: shape"):
        topk_from_scores(scores, 3, users=[7, 8])


def test_topk_of_tied_scores_favours_no_item():
    # Every score equal: each of 50 items should fill about 3000 * 5 / 50 = 300 of the places
    # (binomial sd about 16); by the lower index, items 0-4 filled all 3000 lists.
    items, _ = topk_from_scores(np.zeros((3000, 50)), 5, users=np.arange(3000) + 100)
    counts = np.bincount(items.ravel(), minlength=50)
    assert counts.sum() == 15000 and 200 < counts.min() and counts.max() < 400


def test_topk_pads_when_fewer_candidates_than_k():
    scores = np.array([[3.0, 1.0, 2.0, -np.inf], [1.0, 1.0, 1.0, 1.0]])
    items, vals = topk_from_scores(scores, 6, csr([{0, 2}, set()], 4))
    # u0: items 0 and 2 seen, item 3 scores -inf -> one candidate (item 1); u1: four, tied,
    # in the order of pair_hash(1, i): items 1, 3, 2, 0
    np.testing.assert_array_equal(items, [[1, -1, -1, -1, -1, -1], [1, 3, 2, 0, -1, -1]])
    assert np.isneginf(vals[0, 1:]).all() and np.isneginf(vals[1, 4:]).all()
    assert vals[0, 0] == 1.0


def test_topk_rejects_nan_and_bad_k():
    with pytest.raises(ValueError, match="NaN at row 0, item 1"):
        topk_from_scores(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="positive"):
        topk_from_scores(np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="shape"):
        topk_from_scores(np.zeros((2, 3)), 1, csr([set()], 3))


def full_sort_topk(scores, k, seen, users):
    """The expected lists: each row sorted by score, then by pair_hash; -1 for -inf and past
    the catalogue."""
    masked = np.where(seen.toarray(), -np.inf, scores)
    hashes = pair_hash(users[:, None], np.arange(scores.shape[1])[None, :])
    order = np.lexsort((hashes, -masked), axis=1)[:, :k]
    expected = np.where(np.take_along_axis(masked, order, 1) == -np.inf, -1, order)
    pad = max(0, k - scores.shape[1])
    return np.hstack([expected, np.full((len(scores), pad), -1)])


@pytest.mark.parametrize("ratio", [1, 10**9])  # every selection by heap / by introselect
def test_topk_is_the_same_whichever_way_it_selects(monkeypatch, ratio):
    monkeypatch.setattr(metrics, "HEAP_RATIO", ratio)
    rng = np.random.default_rng(ratio)
    for k, dtype in [(1, np.float64), (3, np.float32), (10, np.float64), (40, np.float16)]:
        scores = rng.integers(0, 4, size=(25, 300)).astype(dtype)  # ties at the k-th place
        scores[rng.random(scores.shape) < 0.05] = -np.inf
        scores[0, :] = 1.0  # all tied
        scores[1, : 300 - k // 2] = -np.inf  # fewer candidates than k
        seen = sp.csr_array(rng.random(scores.shape) < 0.3)
        users = rng.integers(0, 10**6, 25)
        assert metrics.heap_selects(scores.dtype, k, 300) == (ratio == 1)
        items, vals = topk_from_scores(scores, k, seen, users=users)
        np.testing.assert_array_equal(items, full_sort_topk(scores, k, seen, users))
        assert vals.dtype == dtype


def test_heap_selects_only_small_k_of_torch_dtypes():
    heap = metrics.heap_selects
    assert heap(np.float64, 10, 640) and not heap(np.float64, 11, 640)  # k <= n / 64
    assert heap(np.float32, 1, 64) and not heap(np.float32, 1, 63)
    assert heap(np.float16, 2, 200) and not heap(np.longdouble, 1, 10**6)  # torch lacks it


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 30),
    st.integers(1, 35),
    st.integers(0, 2**32 - 1),
)
def test_topk_equals_a_full_sort_by_score_then_pair_hash(n_users, n_items, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float64)  # many ties
    seen = sp.csr_array(rng.random((n_users, n_items)) < 0.3)
    users = rng.integers(0, 1000, n_users)
    items, vals = topk_from_scores(scores, k, seen, users=users)
    np.testing.assert_array_equal(items, full_sort_topk(scores, k, seen, users))
    assert items.shape == vals.shape == (n_users, k) and items.dtype == np.int64
    # batch equals one row at a time
    for u in range(n_users):
        np.testing.assert_array_equal(
            topk_from_scores(scores[u : u + 1], k, seen[[u]], users=users[[u]])[0][0], items[u]
        )


# --- rating and beyond-accuracy metrics ---------------------------------------------------------


def test_rating_metrics_hand_worked():
    # errors 0.5, 0, -1, 0: MAE = 1.5 / 4; RMSE = sqrt((0.25 + 1) / 4)
    got = rating_metrics([1, 2, 3, 4], [1.5, 2, 2, 4])
    assert got == pytest.approx({"rmse": math.sqrt(0.3125), "mae": 0.375})
    per_user = rating_metrics_per_user([1, 2, 3, 4], [1.5, 2, 2, 4], [0, 0, 1, 1], 3)
    # u0 errors 0.5, 0: RMSE sqrt(0.125), MAE 0.25; u1 errors -1, 0: sqrt(0.5), 0.5; u2 none
    np.testing.assert_allclose(per_user["rmse"], [math.sqrt(0.125), math.sqrt(0.5), np.nan])
    np.testing.assert_allclose(per_user["mae"], [0.25, 0.5, np.nan])
    with pytest.raises(ValueError, match="equal"):
        rating_metrics([1, 2], [1])


def test_coverage_counts_distinct_items_and_ignores_padding():
    # items {0, 1, 2} of 10
    assert coverage(np.array([[0, 1], [1, 2], [-1, -1]]), 10) == pytest.approx(0.3)


def test_topk_overlap_hand_worked():
    # row 0: both items shared, other order -> 1; row 1: one of two -> 0.5; row 2: a's one
    # real item (padding ignored) is not in b -> 0; row 3: no item in a -> left out
    a = np.array([[0, 1], [2, 3], [4, -1], [-1, -1]])
    b = np.array([[1, 0], [3, 5], [5, -1], [0, 1]])
    assert topk_overlap(a, b) == pytest.approx(0.5)
    assert topk_overlap(a[:1], b[:1]) == 1.0
    with pytest.raises(ValueError, match="same users"):
        topk_overlap(a, b[:2])


def test_novelty_hand_worked():
    # popularity over 8 users: self-information -log2(pop / 8) = 0, 1, 2, and 3 for the
    # never-seen item (pop 0 counted as 1); list means 0.5, 2.5, 1 (padding ignored) -> 4/3
    pop = np.array([8, 4, 2, 0])
    assert novelty(np.array([[0, 1], [2, 3], [1, -1]]), pop, 8) == pytest.approx(4 / 3)


FEATURES = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])


def test_intra_list_diversity_hand_worked():
    # cos(0, 1) = 1/sqrt 2, every other pair 0 (item 3 has no features).
    # list [0, 1, 2]: distances 1 - 1/sqrt 2, 1, 1 -> mean (3 - 1/sqrt 2) / 3
    # list [0, 1]: 1 - 1/sqrt 2; list [3]: fewer than two items, left out
    topk = np.array([[0, 1, 2], [0, 1, -1], [3, -1, -1]])
    expected = ((3 - 1 / math.sqrt(2)) / 3 + (1 - 1 / math.sqrt(2))) / 2
    assert intra_list_diversity(topk, FEATURES) == pytest.approx(expected)
    assert intra_list_diversity(topk, sp.csr_array(FEATURES)) == pytest.approx(expected)
    assert intra_list_diversity(np.array([[0, 1, 2], [2, 3, 0]]), FEATURES) == pytest.approx(
        ((3 - 1 / math.sqrt(2)) / 3 + 1) / 2
    )
    assert math.isnan(intra_list_diversity(np.array([[3, -1]]), FEATURES))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intra_list_diversity_equals_pairwise_loop(seed):
    rng = np.random.default_rng(seed)
    feats = (rng.random((20, 5)) < 0.4).astype(float)
    topk = np.stack([rng.permutation(20)[:6] for _ in range(7)])
    topk[0, 3:] = -1
    norms = np.linalg.norm(feats, axis=1)
    per_list = []
    for row in topk:
        items = [i for i in row if i >= 0]
        d = [
            1 - (feats[i] @ feats[j] / (norms[i] * norms[j]) if norms[i] * norms[j] else 0.0)
            for a, i in enumerate(items)
            for j in items[a + 1 :]
        ]
        per_list.append(np.mean(d))
    assert intra_list_diversity(topk, feats) == pytest.approx(np.mean(per_list))


def test_evaluate_topk_includes_beyond_accuracy_when_given():
    topk = np.array([[0, 1, 2], [0, 1, 3]])
    rel = csr([{1}, {3}], 4)
    got = evaluate_topk(
        topk, rel, ks=(2,), item_popularity=[8, 4, 2, 0], n_users=8, item_features=FEATURES
    )
    # top-2 lists are both [0, 1]: coverage 2/4, novelty (0 + 1) / 2, ild 1 - 1/sqrt 2
    assert got["coverage@2"] == pytest.approx(0.5)
    assert got["novelty@2"] == pytest.approx(0.5)
    assert got["ild@2"] == pytest.approx(1 - 1 / math.sqrt(2))
    # u0 hit at rank 2 (ndcg (1/log2 3) / 1), u1 no hit in the top 2
    assert got["ndcg@2"] == pytest.approx((1 / L3 + 0) / 2)


def test_interest_metrics_by_hand():
    from metarec_lib.metrics import interest_metrics

    # Positives 0.9, 0.4; negatives 0.6, 0.1: 3 of the 4 (pos, neg) pairs are ordered right.
    out = interest_metrics([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    assert out["auc"] == pytest.approx(0.75)
    expected = -np.mean(np.log([0.9, 0.4, 0.4, 0.9]))
    assert out["logloss"] == pytest.approx(expected)
    assert interest_metrics([1, 0], [1.0, 0.0])["logloss"] == pytest.approx(1e-7, abs=1e-6)
    with pytest.raises(ValueError, match="both 0 and 1"):
        interest_metrics([1, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="probabilities"):
        interest_metrics([1, 0], [1.5, 0.2])
