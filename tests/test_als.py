import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import Interactions
from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.als import (
    IALS,
    confidence,
    objective,
    row_regularisation,
    sampled_dots,
    solve_cg,
    solve_exact,
)
from metarec_lib.models.registry import get_model
from metarec_lib.testing import check_recommender, checkerboard, other_parity_valid


def _direct_wls(conf: sp.csr_matrix, fixed: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Row by row: argmin_x sum_i c_i (p_i - x . y_i)^2 + reg |x|^2 over ALL items, dense."""
    dense_c = np.ones(conf.shape)
    pref = np.zeros(conf.shape)
    coo = conf.tocoo()
    dense_c[coo.row, coo.col] = coo.data
    pref[coo.row, coo.col] = 1.0
    out = []
    for u in range(conf.shape[0]):
        w = dense_c[u]
        a = fixed.T @ (w[:, None] * fixed) + reg[u] * np.eye(fixed.shape[1])
        out.append(np.linalg.solve(a, fixed.T @ (w * pref[u])))
    return np.array(out)


def _random_problem(seed: int, n: int = 6, m: int = 9, f: int = 3):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < 0.4
    mask[0] = False  # a row without observations
    values = np.where(mask, 1.0 + 4.0 * rng.random((n, m)), 0.0)
    conf = sp.csr_matrix(values)
    fixed = rng.normal(size=(m, f))
    reg = 0.1 + rng.random(n)
    return conf, fixed, reg


@pytest.mark.parametrize(
    "make",
    [lambda: IALS(factors=8, alpha=10.0), lambda: IALS(factors=8, alpha=10.0, solver="exact")],
    ids=["cg", "exact"],
)
def test_ials_passes_the_contract(make):
    check_recommender(make)


def test_one_user_step_by_hand():
    # f = 1, item factors y = (1, 2); the user saw item 0 with confidence 3, reg 1:
    # (3 * 1^2 + 1 * 2^2 + 1) x = 3 * 1 * 1  ->  x = 3 / 8.
    conf = sp.csr_matrix(np.array([[3.0, 0.0]]))
    x = solve_exact(conf, np.array([[1.0], [2.0]]), np.array([1.0]))
    assert x[0, 0] == pytest.approx(3.0 / 8.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_exact_step_equals_direct_weighted_least_squares(seed):
    conf, fixed, reg = _random_problem(seed)
    expected = _direct_wls(conf, fixed, reg)
    np.testing.assert_allclose(solve_exact(conf, fixed, reg), expected, rtol=1e-9, atol=1e-10)
    # f conjugate-gradient steps solve an f x f system exactly (up to rounding).
    start = np.random.default_rng(seed).normal(size=expected.shape)
    cg = solve_cg(conf, fixed, reg, start, steps=fixed.shape[1])
    np.testing.assert_allclose(cg, expected, rtol=1e-6, atol=1e-8)


def test_exact_solver_batches_agree_with_one_batch(monkeypatch):
    import metarec_lib.models.als as als

    conf, fixed, reg = _random_problem(3, n=40, m=30, f=4)
    whole = solve_exact(conf, fixed, reg)
    monkeypatch.setattr(als, "_EXACT_BATCH_NUMBERS", 4 * 4 * 3)  # a few rows per batch
    np.testing.assert_allclose(solve_exact(conf, fixed, reg), whole, rtol=1e-10)


def test_the_batched_solve_runs_on_one_torch_thread_and_restores_the_count(monkeypatch):
    """MKL's threaded LU inside torch's parallel loop over a batch livelocked on an Intel Xeon
    (two threads spinning in sgetrf, `make smoke` in process): each batch solves on one thread,
    and the caller's thread count comes back."""
    import torch

    import metarec_lib.models.als as als

    seen, solve = [], torch.linalg.solve

    def recording(a, b):
        seen.append(torch.get_num_threads())
        return solve(a, b)

    monkeypatch.setattr(als.torch.linalg, "solve", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        conf, fixed, reg = _random_problem(3, n=40, m=30, f=4)
        x = solve_exact(conf, fixed, reg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    np.testing.assert_allclose(x, _direct_wls(conf, fixed, reg), rtol=1e-9, atol=1e-10)


def test_cg_steps_approach_the_exact_solution():
    conf, fixed, reg = _random_problem(7)
    target = _direct_wls(conf, fixed, reg)
    x = np.zeros_like(target)
    errors = []
    for _ in range(3):
        x = solve_cg(conf, fixed, reg, x, steps=1)
        errors.append(np.linalg.norm(x - target))
    assert errors[-1] < errors[0]


def test_sampled_dots_dense_and_gather_paths_agree(monkeypatch):
    import metarec_lib.models.als as als

    conf, fixed, _ = _random_problem(1)
    left = np.random.default_rng(1).normal(size=(conf.shape[0], fixed.shape[1]))
    coo = conf.tocoo()
    expected = np.einsum("ij,ij->i", left[coo.row], fixed[coo.col])
    monkeypatch.setattr(als, "_DENSE_DENSITY", 0.0)
    np.testing.assert_allclose(sampled_dots(conf, left, fixed), expected)
    monkeypatch.setattr(als, "_DENSE_DENSITY", 2.0)
    np.testing.assert_allclose(sampled_dots(conf, left, fixed), expected)
    monkeypatch.setattr(als, "_DENSE_BLOCK_NUMBERS", 2 * conf.shape[1])  # two rows a block
    np.testing.assert_allclose(sampled_dots(conf, left, fixed), expected)


def test_objective_equals_the_dense_formula():
    conf, items, reg_u = _random_problem(5)
    rng = np.random.default_rng(5)
    users = rng.normal(size=(conf.shape[0], items.shape[1]))
    reg_i = rng.random(conf.shape[1])
    c = np.where(conf.toarray() > 0, conf.toarray(), 1.0)
    p = (conf.toarray() > 0).astype(float)
    s = users @ items.T
    expected = (c * (p - s) ** 2).sum()
    expected += reg_u @ (users**2).sum(1) + reg_i @ (items**2).sum(1)
    assert objective(conf, users, items, reg_u, reg_i) == pytest.approx(expected, rel=1e-12)


def test_confidence_and_regularisation_by_hand():
    r = np.array([1.0, 4.0])
    np.testing.assert_allclose(confidence(r, "linear", 2.0), [3.0, 9.0])
    np.testing.assert_allclose(confidence(r, "log", 2.0, 1.0), 1 + 2 * np.log([2.0, 5.0]))
    np.testing.assert_allclose(confidence(r, "binary", 2.0), [3.0, 3.0])
    with pytest.raises(ValueError, match="cubic"):
        confidence(r, "cubic", 2.0)
    w = np.array([10.0, 40.0])  # mean 25
    np.testing.assert_allclose(row_regularisation(w, 0.1, 0.0, 25.0), [2.5, 2.5])
    np.testing.assert_allclose(row_regularisation(w, 0.1, 1.0, 25.0), [1.0, 4.0])
    np.testing.assert_allclose(row_regularisation(w, 0.1, 0.5, 25.0), 2.5 * np.sqrt(w / 25.0))


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_training_objective_decreases(solver):
    train, _ = checkerboard()
    model = IALS(factors=6, alpha=5.0, iterations=8, solver=solver).fit(train, seed=1)
    losses = np.array([loss for _, loss in model.loss_history_])
    assert len(losses) == 8
    # Block coordinate descent: every half-step lowers L (float32 factors: tiny tolerance).
    assert (np.diff(losses) <= 1e-5 * losses[:-1]).all(), losses
    assert losses[-1] < 0.8 * losses[0]


def test_fold_in_reproduces_the_last_user_update():
    train, _ = checkerboard()
    model = IALS(factors=6, alpha=5.0, iterations=6, solver="exact").fit(train, seed=2)
    f = train.frame
    for u in (0, 7, 13):
        rows = f[f["user"] == u]
        vec = model.fold_in(rows["item"].to_numpy(), rows["rating"].to_numpy())
        np.testing.assert_allclose(vec, model.user_factors_[u], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            model.score_vector(vec), model.score(np.array([u]))[0], rtol=1e-4, atol=1e-5
        )
    # With conjugate gradient the last user step is approximate, but close.
    cg = IALS(factors=6, alpha=5.0, iterations=6).fit(train, seed=2)
    rows = f[f["user"] == 3]
    vec = cg.fold_in(rows["item"].to_numpy(), rows["rating"].to_numpy())
    assert np.linalg.norm(vec - cg.user_factors_[3]) < 0.05 * np.linalg.norm(vec)


def test_fold_in_of_nothing_is_zero_and_bad_items_are_named():
    train, _ = checkerboard()
    model = IALS(factors=4, alpha=5.0, iterations=2).fit(train, seed=0)
    np.testing.assert_array_equal(model.fold_in([]), np.zeros(4))
    with pytest.raises(ValueError, match="item indices"):
        model.fold_in([0, 99])
    with pytest.raises(ValueError, match="2 weights for 1 items"):
        model.fold_in([0], [1.0, 2.0])
    with pytest.raises(RuntimeError, match="before fit"):
        IALS().fold_in([0])


def test_user_without_training_data_scores_zero():
    train, _ = checkerboard(n_users=6)
    frame = train.frame[train.frame["user"] != 2]
    sparse = Interactions(frame, train.n_users, train.n_items)
    model = IALS(factors=4, alpha=5.0, iterations=3, solver="exact").fit(sparse, seed=0)
    np.testing.assert_allclose(model.score(np.array([2])), 0.0, atol=1e-7)
    assert model.n_parameters == (6 + train.n_items) * 4


def test_seeds_change_the_factors_and_rerun_reproduces_them():
    train, _ = checkerboard()
    a = IALS(factors=4, iterations=2).fit(train, seed=0)
    b = IALS(factors=4, iterations=2).fit(train, seed=0)
    c = IALS(factors=4, iterations=2).fit(train, seed=1)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    assert not np.allclose(a.user_factors_, c.user_factors_)


def test_early_stopping_keeps_the_best_iteration():
    train, _ = checkerboard()
    valid = other_parity_valid(train)
    model = IALS(factors=4, alpha=5.0, iterations=12, patience=2).fit(train, valid=valid)
    values = [v for _, v in model.history_]
    assert [e for e, _ in model.history_] == list(range(1, len(values) + 1))
    # Validation gets worse as the checkerboard is learnt: stop after `patience` more.
    assert len(values) < 12
    assert model.best_epoch_ == int(np.argmax(values)) + 1 == len(values) - 2
    assert ndcg_on(model, valid) == pytest.approx(max(values))
    assert IALS(factors=4, iterations=2).fit(train).best_epoch_ is None


def test_bad_settings_are_named():
    train, _ = checkerboard()
    for key, value in [("solver", "lu"), ("confidence", "square"), ("reg", 0.0)]:
        with pytest.raises(ValueError, match=key):
            IALS(**{key: value}).fit(train)


def test_registered_with_a_space_containing_the_defaults():
    model = get_model("iALS")
    assert isinstance(model, IALS) and model.family == "collaborative"
    space = IALS.space
    assert IALS.defaults["factors"] in space["factors"].values
    for key in ("reg", "alpha"):
        assert space[key].low <= IALS.defaults[key] <= space[key].high


@pytest.mark.skipif(
    not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set (MovieLens)"
)
def test_beats_most_popular_on_ml100k(ml100k_holdout):
    from metarec_lib.models.popularity import MostPop

    train, test = ml100k_holdout
    pop = ndcg_on(MostPop().fit(train), test)
    als = ndcg_on(IALS(iterations=8).fit(train, seed=0), test)
    assert pop == pytest.approx(0.252, abs=0.01)
    assert als > pop + 0.15, (als, pop)
