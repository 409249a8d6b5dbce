import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib import metrics
from metarec_lib.data.dataset import Interactions
from metarec_lib.hashing import pair_hash
from metarec_lib.models import knn
from metarec_lib.models.knn import ItemKNN, UserKNN, blockwise_topk, keep_topk
from metarec_lib.testing import check_recommender, checkerboard

# The tiny example of the hand-worked tests, 3 users x 4 items, binary:
#   user 0: items 0, 1        user 1: items 0, 1, 2        user 2: items 1, 2, 3
ROWS = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]


def interactions(pairs, n_users, n_items, ratings=None) -> Interactions:
    users, items = zip(*pairs, strict=True)
    frame = pd.DataFrame({"user": np.array(users, np.int64), "item": np.array(items, np.int64),
                          "rating": ratings if ratings is not None else np.ones(len(pairs)),
                          "timestamp": np.zeros(len(pairs), np.int64)})  # fmt: skip
    return Interactions(frame, n_users, n_items)


def random_interactions(seed: int, n_users: int, n_items: int, density: float = 0.4):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[np.arange(n_users), rng.integers(n_items, size=n_users)] = True  # nobody empty
    users, items = np.nonzero(mask)
    ratings = rng.integers(1, 6, size=len(users)).astype(float)
    return interactions(list(zip(users, items, strict=True)), n_users, n_items, ratings)


def assert_topk_of(sparse_rows: sp.csr_matrix, dense: np.ndarray, k: int) -> None:
    """`sparse_rows` keeps, per row of `dense`, min(k, #positive) positive entries with their
    exact values, and no dropped positive entry beats a kept one (up to float32 rounding)."""
    got = sparse_rows.toarray()
    for r in range(dense.shape[0]):
        kept = got[r] != 0
        positive = dense[r] > 0
        assert kept.sum() == min(k, positive.sum()), f"row {r}: kept {kept.sum()}"
        assert (positive[kept]).all()
        np.testing.assert_allclose(got[r][kept], dense[r][kept], rtol=1e-5)
        dropped = positive & ~kept
        if dropped.any() and kept.any():
            assert dense[r][dropped].max() <= dense[r][kept].min() * (1 + 1e-5)


def shrunk_cosine(m: np.ndarray, shrink: float) -> np.ndarray:
    """Reference similarity between the ROWS of m, written directly from the definition."""
    norms = np.sqrt((m**2).sum(axis=1))
    with np.errstate(invalid="ignore"):  # 0 / 0 for an empty row with shrink 0
        sim = (m @ m.T) / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(sim, 0.0)
    return np.nan_to_num(sim)


@pytest.mark.parametrize(
    "make",
    [
        ItemKNN,
        UserKNN,
        lambda: ItemKNN(k=3, shrink=2.0, binary=False),
        lambda: UserKNN(k=5, shrink=1.0, binary=False),
    ],
)
def test_contract(make):
    check_recommender(make)


def test_keep_topk_keeps_k_largest_positive_breaking_ties_by_pair_hash():
    block = np.array([[3.0, 1.0, 3.0, 3.0, 0.0, -1.0],
                      [0.0, 0.0, 2.0, 0.0, 0.0, 0.0],
                      [-1.0, -2.0, 0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    two = keep_topk(block, 2).toarray()
    # Row 0: three 3s tie for the top two places. pair_hash(0, c) for c = 0, 2, 3 is
    # 16294208416658607535, 10905525725756348110, 2092789425003139053: the two lowest are
    # columns 3 and 2 (the lower index would have kept 0 and 2).
    assert pair_hash(0, 3) < pair_hash(0, 2) < pair_hash(0, 0)
    np.testing.assert_array_equal(two[0], [0, 0, 3, 3, 0, 0])
    # Row 1: only one positive entry; zeros and negatives are never neighbours.
    np.testing.assert_array_equal(two[1], [0, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(two[2], 0)
    five = keep_topk(block, 5).toarray()
    np.testing.assert_array_equal(five[0], [3, 1, 3, 3, 0, 0])
    assert keep_topk(block, 6).nnz == 5
    # The ids, not the positions, break ties: row 0 as row 7 of a matrix whose columns are
    # items 10..15 keeps the tied columns with the lowest pair_hash(7, 10 + c).
    ids = keep_topk(block[:1], 2, rows=np.array([7]), cols=np.arange(10, 16)).toarray()[0]
    ranked = sorted((0, 2, 3), key=lambda c: pair_hash(7, 10 + c))
    np.testing.assert_array_equal(np.flatnonzero(ids), sorted(ranked[:2]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_topk_is_the_same_whichever_way_it_finds_the_kth(monkeypatch, dtype):
    rng = np.random.default_rng(3)
    block = (rng.integers(-1, 4, size=(30, 700)) * (rng.random((30, 700)) < 0.4)).astype(dtype)
    rows, cols = rng.permutation(10**6)[:30], rng.permutation(10**6)[:700]
    for k in (1, 5, 10, 300):
        monkeypatch.setattr(metrics, "HEAP_RATIO", 1)  # torch.topk
        heap = keep_topk(block, k, rows, cols)
        monkeypatch.setattr(metrics, "HEAP_RATIO", 10**9)  # np.partition
        select = keep_topk(block, k, rows, cols)
        assert (heap != select).nnz == 0 and np.array_equal(heap.indices, select.indices)
        assert_topk_of(select, block, k)


def test_keep_topk_ties_favour_no_column():
    # 400 rows of 50 equal values, k = 5: the lower index kept columns 0-4 in every row; the
    # hash order keeps each column about 400 * 5 / 50 = 40 times (binomial sd about 6).
    kept = keep_topk(np.ones((400, 50)), 5)
    assert np.diff(kept.indptr).tolist() == [5] * 400
    counts = np.bincount(kept.indices, minlength=50)
    assert counts.min() >= 15 and counts.max() <= 65
    assert abs(kept.indices.mean() - 24.5) < 1.0


def test_item_topk_ties_do_not_depend_on_inactive_items():
    # Items 1 and 4 have no rows: item_topk works on the other three, and its ties must be
    # those of the whole matrix (by item index, not by position among the active items).
    x = sp.csr_matrix(np.array([[1, 0, 1, 1, 0], [1, 0, 1, 1, 0]], dtype=float))

    def make_block(xa):
        dense = (xa.T @ xa).toarray()
        np.fill_diagonal(dense, 0.0)
        return lambda s, e: dense[s:e]

    full = (x.T @ x).toarray()
    np.fill_diagonal(full, 0.0)  # items 0, 2, 3 all tie at 2 with each other
    got = knn.item_topk(x, 1, make_block)
    expected = blockwise_topk(5, 5, 1, lambda s, e: full[s:e])
    assert (got != expected).nnz == 0
    for item in (0, 2, 3):
        others = [j for j in (0, 2, 3) if j != item]
        assert got[item].indices.tolist() == [min(others, key=lambda j: pair_hash(item, j))]


def test_blockwise_topk_does_not_depend_on_block_size(monkeypatch):
    rng = np.random.default_rng(0)
    dense = np.round(rng.random((23, 17)) * 4) - 1  # many ties, some negatives
    whole = blockwise_topk(23, 17, 4, lambda s, e: dense[s:e].copy())
    monkeypatch.setattr(knn, "BLOCK_ENTRIES", 40)  # 2 rows per block
    parts = blockwise_topk(23, 17, 4, lambda s, e: dense[s:e].copy())
    assert (whole != parts).nnz == 0
    assert_topk_of(whole, dense, 4)


def test_itemknn_hand_worked():
    # Item columns: i0 = (1,1,0), i1 = (1,1,1), i2 = (0,1,1), i3 = (0,0,1);
    # norms sqrt2, sqrt3, sqrt2, 1. Dot products: 0.1 = 2, 0.2 = 1, 0.3 = 0, 1.2 = 2, 1.3 = 1,
    # 2.3 = 1. With shrink = 1:
    s01 = 2 / (np.sqrt(6) + 1)  # 0.5798 (= s12 as well: same dot, same norms)
    s02 = 1 / (2 + 1)  # 0.3333
    s13 = 1 / (np.sqrt(3) + 1)  # 0.3660
    s23 = 1 / (np.sqrt(2) + 1)  # 0.4142
    train = interactions(ROWS, 3, 4)
    model = ItemKNN(k=1, shrink=1.0).fit(train)
    # k = 1 neighbour per target item j:
    #   j=0: s10 = .5798 > s20 = .3333            -> item 1
    #   j=1: s01 = s21 = .5798 tie                -> item 2 (pair_hash(1, 2) < pair_hash(1, 0))
    #   j=2: s12 = .5798 > s32 = .4142 > s02       -> item 1
    #   j=3: s23 = .4142 > s13 = .3660             -> item 2
    assert pair_hash(1, 2) < pair_hash(1, 0)
    expected_w = np.zeros((4, 4))
    expected_w[1, 0] = expected_w[2, 1] = expected_w[1, 2] = s01
    expected_w[2, 3] = s23
    np.testing.assert_allclose(model.w_.toarray(), expected_w, rtol=1e-6)
    # Scores = X_u @ W. User 0 (items 0, 1): (W10, 0, W12, 0);
    # user 2 (items 1, 2, 3): (W10, W21, W12, W23).
    np.testing.assert_allclose(model.score([0, 2]),
                               [[s01, 0, s01, 0], [s01, s01, s01, s23]], rtol=1e-6)  # fmt: skip
    # k = 3 keeps every positive similarity: W = full shrunk cosine, zero diagonal.
    full = ItemKNN(k=3, shrink=1.0).fit(train).w_.toarray()
    expected_full = np.array([[0, s01, s02, 0], [s01, 0, s01, s13],
                              [s02, s01, 0, s23], [0, s13, s23, 0]])  # fmt: skip
    np.testing.assert_allclose(full, expected_full, rtol=1e-6)


def test_userknn_hand_worked():
    # User rows: u0 = (1,1,0,0), u1 = (1,1,1,0), u2 = (0,1,1,1); norms sqrt2, sqrt3, sqrt3.
    # Dots: u0.u1 = 2, u0.u2 = 1, u1.u2 = 2. With shrink = 1:
    s01 = 2 / (np.sqrt(6) + 1)  # 0.5798
    s02 = 1 / (np.sqrt(6) + 1)  # 0.2899
    s12 = 2 / (3 + 1)  # 0.5
    train = interactions(ROWS, 3, 4)
    model = UserKNN(k=1, shrink=1.0).fit(train)
    # k = 1: u0 -> u1 (.5798 > .2899); u1 -> u0 (.5798 > .5); u2 -> u1 (.5 > .2899).
    expected_sim = np.array([[0, s01, 0], [s01, 0, 0], [0, s12, 0]])
    np.testing.assert_allclose(model.sim_.toarray(), expected_sim, rtol=1e-6)
    # Scores = sum of neighbours' rows weighted by similarity.
    expected = np.array([[s01, s01, s01, 0], [s01, s01, 0, 0], [s12, s12, s12, 0]])
    np.testing.assert_allclose(model.score([0, 1, 2]), expected, rtol=1e-6)
    full = UserKNN(k=2, shrink=1.0).fit(train)
    np.testing.assert_allclose(full.score([2]), [[s12 + s02, s12 + s02, s12, 0]], rtol=1e-6)


def test_ratings_as_weights():
    # Items 0 and 1 rated by the same two users: binary cosine is 1 (shrink 0); with ratings
    # (5, 1) and (1, 5) it is (5 + 5) / (sqrt26 sqrt26) = 10 / 26.
    train = interactions([(0, 0), (0, 1), (1, 0), (1, 1)], 2, 2, np.array([5.0, 1, 1, 5]))
    np.testing.assert_allclose(ItemKNN(shrink=0.0).fit(train).w_.toarray(), [[0, 1], [1, 0]],
                               rtol=1e-6)  # fmt: skip
    weighted = ItemKNN(shrink=0.0, binary=False).fit(train)
    np.testing.assert_allclose(weighted.w_.toarray()[0, 1], 10 / 26, rtol=1e-6)
    # User 0 (ratings 5, 1) scores item 0 with 1 x sim and item 1 with 5 x sim.
    np.testing.assert_allclose(weighted.score([0]), [[10 / 26, 50 / 26]], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(2, 9), n_items=st.integers(2, 9),
       k=st.integers(1, 9), shrink=st.sampled_from([0.0, 0.5, 3.0]),
       binary=st.booleans())  # fmt: skip
def test_similarities_are_the_topk_of_the_shrunk_cosine(seed, n_users, n_items, k, shrink, binary):
    train = random_interactions(seed, n_users, n_items)
    x = train.matrix(binary=binary).toarray()
    item = ItemKNN(k=k, shrink=shrink, binary=binary).fit(train)
    # Row j of W^T holds target item j's neighbours.
    assert_topk_of(item.w_.T.tocsr(), shrunk_cosine(x.T, shrink), k)
    user = UserKNN(k=k, shrink=shrink, binary=binary).fit(train)
    assert_topk_of(user.sim_, shrunk_cosine(x, shrink), k)
    np.testing.assert_allclose(item.score(np.arange(n_users)), x @ item.w_.toarray(),
                               rtol=1e-9, atol=1e-12)  # fmt: skip


def test_score_items_equals_score_of_a_user_with_those_items():
    train = random_interactions(3, 15, 10)
    for binary in (True, False):
        model = ItemKNN(k=4, shrink=1.0, binary=binary).fit(train)
        x = train.matrix(binary=binary)
        for u in range(train.n_users):
            row = x[u]
            got = model.score_items(row.indices, None if binary else row.data)
            np.testing.assert_allclose(got, model.score([u])[0], rtol=1e-12, atol=1e-12)
    # Repeated items add up; weights default to 1.
    np.testing.assert_allclose(model.score_items([2, 2], [1.0, 1.0]), model.score_items([2]) * 2)
    assert model.score_items(np.array([], np.int64)).shape == (train.n_items,)


def test_score_items_rejects_bad_input():
    model = ItemKNN().fit(checkerboard()[0])
    with pytest.raises(ValueError, match="support item 12 out of range; expected 0..11"):
        model.score_items([1, 12])
    with pytest.raises(ValueError, match="weights shape"):
        model.score_items([1, 2], [1.0])
    with pytest.raises(ValueError, match="1-d array of item indices"):
        model.score_items([0.5])


@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
def test_bad_hyperparameters_are_named(cls):
    train, _ = checkerboard()
    with pytest.raises(ValueError, match=r"hyperparameter k=0; expected an integer >= 1"):
        cls(k=0).fit(train)
    with pytest.raises(ValueError, match=r"shrink=-1"):
        cls(shrink=-1).fit(train)
    with pytest.raises(ValueError, match=r"binary='yes'"):
        cls(binary="yes").fit(train)


def test_items_and_users_without_interactions_score_zero():
    # Item 3 and user 2 have no training data: finite zero scores / no neighbours.
    train = interactions([(0, 0), (0, 1), (1, 1), (1, 2)], 3, 4)
    for model in (ItemKNN(), UserKNN()):
        scores = model.fit(train).score([0, 1, 2])
        assert np.isfinite(scores).all()
        assert (scores[:, 3] == 0).all() and (scores[2] == 0).all()


@pytest.mark.skipif("METAREC_DATA_DIR" not in os.environ,
                    reason="METAREC_DATA_DIR is not set (MovieLens files)")  # fmt: skip
def test_ml100k_beats_mostpop_clearly(ml100k_holdout):
    from metarec_lib.evaluate import ndcg_on
    from metarec_lib.models.popularity import MostPop

    train, test = ml100k_holdout
    floor = ndcg_on(MostPop().fit(train), test)
    # Measured 0.252 (MostPop), 0.444 (ItemKNN defaults), 0.437 (UserKNN defaults).
    assert floor == pytest.approx(0.252, abs=0.01)
    assert ndcg_on(ItemKNN().fit(train), test) > 0.43
    assert ndcg_on(UserKNN().fit(train), test) > 0.42
