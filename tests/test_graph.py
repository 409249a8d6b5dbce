import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.models.graph import RP3beta
from metarec_lib.testing import check_recommender, checkerboard
from tests.test_knn import assert_topk_of, interactions, random_interactions

# 3 users x 3 items: user 0 has items {0, 1}, user 1 {0, 1, 2}, user 2 {1}.
# Item popularity: (2, 3, 1).
ROWS = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]
POP = np.array([2.0, 3.0, 1.0])


def reference(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """W before pruning, straight from the definition (dense, zero diagonal)."""
    p_ui = x / x.sum(axis=1, keepdims=True)
    p_iu = x.T / x.T.sum(axis=1, keepdims=True)
    # Only existing edges are raised to alpha (0 ** 0 would invent edges).
    p_ui, p_iu = (np.where(p > 0, p, 1.0) ** alpha * (p > 0) for p in (p_ui, p_iu))
    w = p_iu @ p_ui / x.sum(axis=0) ** beta
    np.fill_diagonal(w, 0.0)
    return w


@pytest.mark.parametrize(
    "make", [RP3beta, lambda: RP3beta(alpha=0.5, beta=0.3, k=6, normalize=False)]
)
def test_contract(make):
    check_recommender(make)


def test_rp3beta_hand_worked_alpha_1():
    # P_ui rows (users):  u0 (1/2, 1/2, 0), u1 (1/3, 1/3, 1/3), u2 (0, 1, 0).
    # P_iu rows (items):  i0 (1/2, 1/2, 0), i1 (1/3, 1/3, 1/3), i2 (0, 1, 0).
    # P_iu @ P_ui:
    #   i0: 1/2 u0 + 1/2 u1         = (5/12, 5/12, 1/6)
    #   i1: 1/3 (u0 + u1 + u2)      = (5/18, 11/18, 1/9)
    #   i2: u1                      = (1/3, 1/3, 1/3)
    # Diagonal dropped, column j divided by pop_j^0.5 = (sqrt2, sqrt3, 1):
    w = np.array([[0, 5 / 12 / np.sqrt(3), 1 / 6],             # (0, .2406, .1667)
                  [5 / 18 / np.sqrt(2), 0, 1 / 9],             # (.1964, 0, .1111)
                  [1 / 3 / np.sqrt(2), 1 / 3 / np.sqrt(3), 0]])  # (.2357, .1925, 0)  # fmt: skip
    train = interactions(ROWS, 3, 3)
    full = RP3beta(alpha=1.0, beta=0.5, k=3, normalize=False).fit(train)
    np.testing.assert_allclose(full.w_.toarray(), w, rtol=1e-6)
    # Scores X_u @ W; user 2 has only item 1, so its scores are row 1 of W.
    np.testing.assert_allclose(full.score([2])[0], w[1], rtol=1e-6)
    np.testing.assert_allclose(full.score([0])[0], w[0] + w[1], rtol=1e-6)
    # k = 1 keeps each row's largest: i0 -> i1, i1 -> i0, i2 -> i0; normalize makes them 1.
    top1 = RP3beta(alpha=1.0, beta=0.5, k=1, normalize=True).fit(train)
    np.testing.assert_allclose(top1.w_.toarray(), [[0, 1, 0], [1, 0, 0], [1, 0, 0]])
    # k = 2 with normalize: each row divided by its sum, e.g. row 0 / (.2406 + .1667).
    top2 = RP3beta(alpha=1.0, beta=0.5, k=2, normalize=True).fit(train)
    np.testing.assert_allclose(top2.w_.toarray(), w / w.sum(axis=1, keepdims=True), rtol=1e-6)


def test_rp3beta_hand_worked_alpha_2_and_beta_0():
    # alpha = 2 squares each transition probability BEFORE the product:
    #   i0 row = (1/2)^2 (u0)^2 + (1/2)^2 (u1)^2 = 1/4 (1/4, 1/4, 0) + 1/4 (1/9, 1/9, 1/9)
    #          = (13/144, 13/144, 1/36);  beta = 0 leaves it undivided (P3alpha).
    train = interactions(ROWS, 3, 3)
    model = RP3beta(alpha=2.0, beta=0.0, k=3, normalize=False).fit(train)
    np.testing.assert_allclose(model.w_.toarray()[0], [0, 13 / 144, 1 / 36], rtol=1e-6)
    # beta = 1 divides column j by pop_j: (0, 13/144/3, 1/36/1).
    damped = RP3beta(alpha=2.0, beta=1.0, k=3, normalize=False).fit(train)
    np.testing.assert_allclose(damped.w_.toarray()[0], [0, 13 / 432, 1 / 36], rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(2, 9), n_items=st.integers(2, 9),
       k=st.integers(1, 9), alpha=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
       beta=st.sampled_from([0.0, 0.4, 1.0]))  # fmt: skip
def test_w_is_the_rowwise_topk_of_the_definition(seed, n_users, n_items, k, alpha, beta):
    train = random_interactions(seed, n_users, n_items)
    x = train.matrix(binary=True).toarray()
    used = x.sum(axis=0) > 0
    x_used = x[:, used]  # the reference divides by popularity: keep items that have some
    model = RP3beta(alpha=alpha, beta=beta, k=k, normalize=False).fit(train)
    w = model.w_.toarray()
    assert (w[~used] == 0).all() and (w[:, ~used] == 0).all()
    dense = reference(x_used, alpha, beta)
    assert_topk_of(sp.csr_matrix(w[np.ix_(used, used)]), dense, k)
    normed = RP3beta(alpha=alpha, beta=beta, k=k, normalize=True).fit(train).w_.toarray()
    sums = normed.sum(axis=1)
    np.testing.assert_allclose(sums[w.sum(axis=1) > 0], 1.0, rtol=1e-9)


def test_score_items_equals_score_of_a_user_with_those_items():
    train = random_interactions(5, 12, 9)
    model = RP3beta(alpha=0.8, beta=0.4, k=4).fit(train)
    x = train.matrix(binary=True)
    for u in range(train.n_users):
        np.testing.assert_allclose(model.score_items(x[u].indices), model.score([u])[0],
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="RP3beta.score_items: support item -1"):
        model.score_items([-1])


def test_bad_hyperparameters_are_named():
    train, _ = checkerboard()
    with pytest.raises(ValueError, match=r"RP3beta: hyperparameter alpha=-0.5"):
        RP3beta(alpha=-0.5).fit(train)
    with pytest.raises(ValueError, match=r"k=2.5; expected an integer >= 1"):
        RP3beta(k=2.5).fit(train)
    with pytest.raises(ValueError, match=r"normalize=None"):
        RP3beta(normalize=None).fit(train)


@pytest.mark.skipif("METAREC_DATA_DIR" not in os.environ,
                    reason="METAREC_DATA_DIR is not set (MovieLens files)")  # fmt: skip
def test_ml100k_quality(ml100k_holdout):
    from metarec_lib.evaluate import ndcg_on

    train, test = ml100k_holdout
    # Measured 0.453 with alpha 1, beta 0.6, k 200 (MostPop: 0.252).
    assert ndcg_on(RP3beta(alpha=1.0, beta=0.6, k=200).fit(train), test) > 0.44
