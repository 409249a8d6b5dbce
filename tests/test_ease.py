import os

import numpy as np
import pytest
import scipy.sparse as sp

from metarec_lib.models import ease
from metarec_lib.models.ease import EASE
from metarec_lib.testing import check_recommender, checkerboard
from tests.test_knn import interactions, random_interactions


def constrained_least_squares(x: np.ndarray, reg: float) -> np.ndarray:
    """B minimising ||X - X B||^2 + reg ||B||^2 with diag(B) = 0, solved column by column:
    with B_jj = 0, column j is a ridge regression of X_j on the other columns."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        others = np.delete(np.arange(n), j)
        a = x[:, others]
        b[others, j] = np.linalg.solve(a.T @ a + reg * np.eye(n - 1), a.T @ x[:, j])
    return b


@pytest.mark.parametrize("make", [EASE, lambda: EASE(reg=10.0)])
def test_contract(make):
    check_recommender(make)


@pytest.mark.parametrize(
    "n_users, n_items, reg",
    [(40, 9, 3.0), (30, 12, 50.0),   # more users than items: primal (Cholesky) route
     (5, 14, 3.0), (4, 20, 0.5)],    # far fewer users than items: dual (Woodbury) route
)  # fmt: skip
def test_closed_form_solves_the_constrained_least_squares(n_users, n_items, reg):
    train = random_interactions(n_users * 100 + n_items, n_users, n_items)
    x = train.matrix(binary=True).toarray()
    model = EASE(reg=reg).fit(train)
    assert model.b_.dtype == np.float64
    np.testing.assert_array_equal(np.diag(model.b_), 0.0)
    np.testing.assert_allclose(model.b_, constrained_least_squares(x, reg), atol=1e-9)
    np.testing.assert_allclose(model.score(np.arange(n_users)), x @ model.b_, atol=1e-12)


def test_primal_and_dual_routes_agree(monkeypatch):
    train = random_interactions(7, 12, 16, density=0.3)
    primal = EASE(reg=2.0).fit(train).b_  # 12 users > 0.5 x 16 items: primal
    monkeypatch.setattr(ease, "DUAL_RATIO", 1.0)
    dual = EASE(reg=2.0).fit(train).b_
    np.testing.assert_allclose(dual, primal, atol=1e-10)


def test_items_never_seen_have_zero_weights_and_the_rest_is_unchanged():
    # Item 3 has no training interactions: its row and column of B are 0, and the other
    # weights equal those of the model fitted without that item.
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2), (3, 0), (3, 1), (3, 2), (4, 4)]
    b = EASE(reg=1.0).fit(interactions(pairs, 5, 5)).b_
    assert (b[3] == 0).all() and (b[:, 3] == 0).all()
    x = interactions(pairs, 5, 5).matrix(binary=True).toarray()
    keep = [0, 1, 2, 4]
    np.testing.assert_allclose(b[np.ix_(keep, keep)],
                               constrained_least_squares(x[:, keep], 1.0), atol=1e-12)  # fmt: skip


def test_float32_above_the_float64_limit(monkeypatch):
    train = random_interactions(11, 30, 10)
    exact = EASE(reg=5.0).fit(train).b_
    monkeypatch.setattr(ease, "FLOAT64_MAX_ITEMS", 5)
    for ratio in (0.5, 10.0):  # primal, then dual
        monkeypatch.setattr(ease, "DUAL_RATIO", ratio)
        b = EASE(reg=5.0).fit(train).b_
        assert b.dtype == np.float32
        np.testing.assert_array_equal(np.diag(b), 0.0)
        np.testing.assert_allclose(b, exact, atol=2e-5)


@pytest.mark.parametrize("columns", [1, 16, 128, 1000])
def test_times_b_by_column_blocks_is_the_whole_product_bit_for_bit(columns):
    rng = np.random.default_rng(columns)
    rows = sp.random(40, 301, density=0.1, format="csr", random_state=columns)
    rows.data = rng.integers(1, 4, rows.nnz).astype(np.float64)
    b32 = rng.standard_normal((301, 301)).astype(np.float32)
    whole = np.asarray(rows @ b32.astype(np.float64))
    got = ease.times_b(rows, b32, columns=columns)
    assert got.dtype == np.float64 and np.array_equal(got, whole)
    b64 = b32.astype(np.float64)
    assert np.array_equal(ease.times_b(rows, b64, columns=columns), whole)


def test_symmetrise_from_lower_over_several_blocks():
    rng = np.random.default_rng(0)
    full = rng.random((8, 8))
    full = full + full.T
    a = np.tril(full) + np.triu(rng.random((8, 8)), 1)  # garbage above the diagonal
    ease._symmetrise_from_lower(a, block=3)
    np.testing.assert_array_equal(a, full)


def test_memory_check_refuses_before_allocating(monkeypatch):
    monkeypatch.setattr(ease, "MEMORY_FRACTION", 1e-12)
    train, _ = checkerboard()
    with pytest.raises(MemoryError, match=r"EASE: fitting needs .* GiB is available"):
        EASE().fit(train)


def test_score_items_equals_score_of_a_user_with_those_items():
    train = random_interactions(2, 10, 8)
    model = EASE(reg=4.0).fit(train)
    x = train.matrix(binary=True)
    for u in range(train.n_users):
        np.testing.assert_allclose(model.score_items(x[u].indices), model.score([u])[0],
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="EASE.score_items: support item 8 out of range"):
        model.score_items([8])


def test_bad_reg_is_named():
    with pytest.raises(ValueError, match=r"EASE: hyperparameter reg=0; expected a number > 0"):
        EASE(reg=0).fit(checkerboard()[0])


@pytest.mark.skipif("METAREC_DATA_DIR" not in os.environ,
                    reason="METAREC_DATA_DIR is not set (MovieLens files)")  # fmt: skip
def test_ml100k_quality(ml100k_holdout):
    from metarec_lib.evaluate import ndcg_on

    train, test = ml100k_holdout
    model = EASE(reg=300.0).fit(train)
    # Measured NDCG@10 0.484 (fit time: benchmarks/bench_collaborative.py).
    assert ndcg_on(model, test) > 0.475
