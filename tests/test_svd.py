"""BiasedMF (ALS) and SVD++ (torch): the shared contract plus hand-worked and property checks."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.svd import FREQUENCY_EXPONENT as EXPONENT
from metarec_lib.models.svd import BiasedMF, SVDpp, SVDppNet, ridge_half_step
from metarec_lib.testing import check_recommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _interactions(users, items, ratings, n_users, n_items) -> Interactions:
    frame = pd.DataFrame(
        {
            "user": np.asarray(users, np.int64),
            "item": np.asarray(items, np.int64),
            "rating": np.asarray(ratings, np.float64),
            "timestamp": np.arange(len(users), dtype=np.int64),
        }
    )
    return Interactions(frame, n_users, n_items)


def _low_rank(n_users=30, n_items=25, density=0.5, seed=0, noise=0.2) -> Interactions:
    """Random ratings from a rank-2 model plus noise, rounded into 1..5."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    signal = 3 + (p[users] * q[items]).sum(1) + noise * rng.normal(size=len(users))
    ratings = np.clip(np.round(signal), 1, 5)
    return _interactions(users, items, ratings, n_users, n_items)


def _rmse(model, data: Interactions) -> float:
    f = data.frame
    pred = model.predict(f["user"].to_numpy(), f["item"].to_numpy())
    return float(np.sqrt(np.mean((pred - f["rating"].to_numpy()) ** 2)))


# ----------------------------------------------------------------------------- contract


def test_biasedmf_passes_the_contract():
    check_recommender(lambda: BiasedMF(factors=4, reg=0.1, reg_bias=1.0, epochs=20))


def test_svdpp_passes_the_contract():
    check_recommender(
        lambda: SVDpp(factors=4, reg=0.1, reg_bias=1.0, epochs=40, batch_size=256,
                      learning_rate=0.1)
    )  # fmt: skip


# ----------------------------------------------------------------------------- BiasedMF / ALS


def test_biases_only_matches_hand_worked_ridge_solution():
    # u0 rated i0=5, i1=3; u1 rated i0=4; mu = 4, residuals (1, -1, 0). With reg_bias = 1 the
    # normal equations  3 bu0 + bi0 + bi1 = 0,  2 bu1 + bi0 = 0,  3 bi0 + bu0 + bu1 = 1,
    # 2 bi1 + bu0 = -1  give bu0 = 1/21, bu1 = -4/21, bi0 = 8/21, bi1 = -11/21.
    train = _interactions([0, 0, 1], [0, 1, 0], [5.0, 3.0, 4.0], 2, 2)
    model = BiasedMF(factors=0, reg_bias=1.0, epochs=200).fit(train)
    np.testing.assert_allclose(model.user_bias_, [1 / 21, -4 / 21], atol=1e-9)
    np.testing.assert_allclose(model.item_bias_, [8 / 21, -11 / 21], atol=1e-9)
    assert model.mu_ == 4.0
    # The unrated pair (u1, i1): 4 - 4/21 - 11/21.
    assert model.predict([1], [1])[0] == pytest.approx(4 - 15 / 21)
    assert model.user_factors_.shape == (2, 0) and model.n_parameters == 5


def _direct_ridge(matrix, fixed, fixed_bias, mu, reg, reg_bias, alpha):
    """Row by row: build the design matrix and solve the ridge normal equations directly."""
    k = fixed.shape[1]
    bias, factors = np.zeros(matrix.shape[0]), np.zeros((matrix.shape[0], k))
    for u in range(matrix.shape[0]):
        row = matrix.getrow(u)
        if row.nnz == 0:
            continue
        design = np.hstack([np.ones((row.nnz, 1)), fixed[row.indices]])
        target = row.data - mu - fixed_bias[row.indices]
        penalty = np.diag([reg_bias] + [reg * row.nnz**alpha] * k)
        x = np.linalg.solve(design.T @ design + penalty, design.T @ target)
        bias[u], factors[u] = x[0], x[1:]
    return bias, factors


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(0, 4),
    reg=st.floats(0.01, 5.0),
    reg_bias=st.floats(0.01, 20.0),
)
def test_one_als_half_step_equals_a_direct_ridge_solve(seed, k, reg, reg_bias):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((9, 7)) < 0.4, rng.integers(1, 6, (9, 7)), 0).astype(float)
    dense[3] = 0.0  # a row without ratings keeps zeros
    matrix = sp.csr_matrix(dense)
    fixed, fixed_bias = rng.normal(size=(7, k)), rng.normal(size=7)
    bias, factors = ridge_half_step(matrix, fixed, fixed_bias, 3.2, reg, reg_bias)
    want_bias, want_factors = _direct_ridge(matrix, fixed, fixed_bias, 3.2, reg, reg_bias, EXPONENT)
    np.testing.assert_allclose(bias, want_bias, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(factors, want_factors, rtol=1e-7, atol=1e-9)
    assert bias[3] == 0.0 and (factors[3] == 0.0).all()


def test_als_training_rmse_decreases_and_beats_biases_only():
    train = _low_rank()
    errors = [_rmse(BiasedMF(factors=3, reg=0.05, reg_bias=1.0, epochs=e).fit(train), train)
              for e in (1, 2, 5, 20)]  # fmt: skip
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    biases_only = _rmse(BiasedMF(factors=0, reg_bias=1.0, epochs=20).fit(train), train)
    assert errors[-1] < 0.6 * biases_only


def test_early_stopping_keeps_the_best_sweep_and_records_history():
    data = _low_rank(seed=1)
    f = data.frame
    rng = np.random.default_rng(0)
    held = rng.random(len(f)) < 0.2
    train = Interactions(f[~held].reset_index(drop=True), data.n_users, data.n_items)
    valid = Interactions(f[held].reset_index(drop=True), data.n_users, data.n_items)
    # Nearly unregularised with 10 factors on 30 x 25 ratings: validation RMSE turns up.
    model = BiasedMF(factors=10, reg=0.003, reg_bias=0.1, epochs=30, patience=2, init_std=0.01)
    model.fit(train, valid=valid)
    epochs, values = zip(*model.history_, strict=True)
    assert list(epochs) == list(range(1, len(epochs) + 1))
    assert _rmse(model, valid) == pytest.approx(min(values))
    assert model.best_epoch_ == epochs[int(np.argmin(values))]
    # Stopped after `patience` sweeps without improvement, before the maximum.
    assert len(epochs) == model.best_epoch_ + 2 < 30
    assert values[-1] > min(values)
    # Without valid: exactly `epochs` sweeps, nothing recorded.
    plain = BiasedMF(factors=10, reg=0.003, reg_bias=0.1, epochs=4, init_std=0.01).fit(train)
    assert plain.history_ == [] and plain.best_epoch_ == 4


def test_fold_in_of_a_training_user_reproduces_the_converged_fit():
    train = _low_rank(seed=2)
    model = BiasedMF(factors=2, reg=0.3, reg_bias=2.0, epochs=300).fit(train)
    f = train.frame
    user = 5
    rows = f[f["user"] == user]
    b_u, p_u = model.fold_in(rows["item"].to_numpy(), rows["rating"].to_numpy())
    # At convergence the user half-step is a fixed point.
    assert b_u == pytest.approx(model.user_bias_[user], abs=1e-5)
    np.testing.assert_allclose(p_u, model.user_factors_[user], atol=1e-5)
    items = np.arange(train.n_items)
    np.testing.assert_allclose(
        model.predict_vector(b_u, p_u, items), model.score([user])[0], atol=1e-4
    )
    # A new user with no ratings gets the item-bias baseline.
    b0, p0 = model.fold_in([], [])
    assert b0 == 0.0 and (p0 == 0.0).all()
    np.testing.assert_allclose(
        model.predict_vector(b0, p0, items),
        np.clip(model.mu_ + model.item_bias_, *model.rating_range_),
    )
    with pytest.raises(ValueError, match="aligned"):
        model.fold_in([1, 2], [4.0])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), half_stars=st.booleans())
def test_predictions_stay_in_the_training_rating_range(seed, half_stars):
    rng = np.random.default_rng(seed)
    n = 120
    users, items = rng.integers(0, 12, n), rng.integers(0, 15, n)
    keep = ~pd.DataFrame({"u": users, "i": items}).duplicated().to_numpy()
    step = 0.5 if half_stars else 1.0
    ratings = rng.choice(np.arange(1.0, 5.0 + step / 2, step), n)
    train = _interactions(users[keep], items[keep], ratings[keep], 14, 16)  # unseen rows too
    lo, hi = ratings[keep].min(), ratings[keep].max()
    for model in (BiasedMF(factors=3, reg=0.001, reg_bias=0.01, epochs=5),
                  SVDpp(factors=3, reg=0.001, reg_bias=0.01, epochs=3, batch_size=16)):  # fmt: skip
        model.fit(train, seed=seed)
        u, i = np.meshgrid(np.arange(14), np.arange(16), indexing="ij")
        predicted = model.predict(u.ravel(), i.ravel()).reshape(14, 16)
        assert np.isfinite(predicted).all() and predicted.min() >= lo and predicted.max() <= hi
        assert model.rating_range_ == (lo, hi)
        # Ranking reads the unclipped values: clipping them gives the predictions.
        scores = model.score(np.arange(14))
        np.testing.assert_allclose(np.clip(scores, lo, hi), predicted, atol=1e-5)


def test_ranking_scores_are_not_clipped_so_items_above_the_top_rating_do_not_tie():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 12, 120), rng.integers(0, 15, 120)
    keep = ~pd.DataFrame({"u": users, "i": items}).duplicated().to_numpy()
    ratings = rng.choice(np.arange(1.0, 6.0), 120)
    train = _interactions(users[keep], items[keep], ratings[keep], 14, 16)
    model = BiasedMF(factors=3, reg=0.001, reg_bias=0.01, epochs=5).fit(train, seed=0)
    scores = model.score(np.arange(14))
    above = scores > 5.0
    assert above.sum() >= 10  # with clipping, every one of them would read 5.0
    assert len(np.unique(scores[above])) == above.sum()
    user, item = np.argwhere(above)[0]
    assert model.predict([user], [item])[0] == 5.0


def test_biasedmf_is_deterministic_and_seed_dependent():
    train = _low_rank(seed=3)
    a = BiasedMF(factors=3, epochs=2).fit(train, seed=1).score(np.arange(5))
    b = BiasedMF(factors=3, epochs=2).fit(train, seed=1).score(np.arange(5))
    c = BiasedMF(factors=3, epochs=2).fit(train, seed=2).score(np.arange(5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# ----------------------------------------------------------------------------- SVD++


def _tiny_net(**kwargs) -> tuple[SVDppNet, Interactions]:
    # User 2 has no training items; user 0 rated items 0 and 2, user 1 rated item 1.
    train = _interactions([0, 0, 1], [0, 2, 1], [5.0, 2.0, 4.0], 3, 4)
    pattern = train.matrix(binary=True)
    net = SVDppNet(3, pattern.indptr, pattern.indices, 4, 3.5,
                   generator=torch.Generator().manual_seed(0), **kwargs)  # fmt: skip
    return net, train


def test_svdpp_implicit_term_by_hand_and_empty_user_reduces_to_biased_mf():
    net, _ = _tiny_net()
    with torch.no_grad():
        net.implicit_factors.copy_(torch.arange(12, dtype=torch.float32).reshape(4, 3))
        net.user_bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net.item_bias.copy_(torch.tensor([0.5, 0.0, -0.5, 0.25]))
    implicit = net.implicit(torch.tensor([0, 1, 2])).detach().numpy()
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(implicit[0], (y[0] + y[2]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(implicit[1], y[1], rtol=1e-6)
    np.testing.assert_array_equal(implicit[2], 0.0)
    # User 2 (no items): prediction is the biased-MF form mu + b_u + b_i + p_u . q_i.
    items = torch.arange(4)
    pred = net(torch.full((4,), 2), items).detach().numpy()
    p, q = net.user_factors.detach().numpy(), net.item_factors.detach().numpy()
    b_i = net.item_bias.detach().numpy()
    np.testing.assert_allclose(pred, 3.5 + 0.3 + b_i + q @ p[2], rtol=1e-6)
    # User 0: p_u gains the implicit term.
    pred0 = net(torch.zeros(4, dtype=torch.int64), items).detach().numpy()
    np.testing.assert_allclose(pred0, 3.5 + 0.1 + b_i + q @ (p[0] + implicit[0]), rtol=1e-5)


def test_svdpp_penalty_value_by_hand_and_gradients_those_of_autograd_bit_for_bit():
    net, _ = _tiny_net()
    with torch.no_grad():
        net.implicit_factors.copy_(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)))
        net.user_bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    reg, reg_bias, n_total = 0.7, 0.3, 11
    (net.penalty(reg, reg_bias) / n_total).backward()
    got = {name: w.grad.clone() for name, w in net.named_parameters()}
    p, q, y = net.user_factors, net.item_factors, net.implicit_factors
    by_hand = reg * (
        (net.user_weight * (p.detach() ** 2).sum(1)).sum()
        + (net.item_weight * ((q.detach() ** 2).sum(1) + (y.detach() ** 2).sum(1))).sum()
    ) + reg_bias * ((net.user_bias.detach() ** 2).sum() + (net.item_bias.detach() ** 2).sum())
    torch.testing.assert_close(net.penalty(reg, reg_bias).detach(), by_hand)
    net.zero_grad()
    written_out = reg * (
        (net.user_weight * p.square().sum(1)).sum()
        + (net.item_weight * (q.square().sum(1) + y.square().sum(1))).sum()
    ) + reg_bias * (net.user_bias.square().sum() + net.item_bias.square().sum())
    (written_out / n_total).backward()
    for name, w in net.named_parameters():
        assert torch.equal(got[name], w.grad), name


def test_svdpp_training_step_reduces_the_loss_on_a_tiny_batch():
    net, train = _tiny_net()
    f = train.frame
    u, i = torch.tensor(f["user"].to_numpy()), torch.tensor(f["item"].to_numpy())
    r = torch.tensor(f["rating"].to_numpy(), dtype=torch.float32)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before = net.loss(u, i, r, 0.01, 0.01, len(r))
    optimizer.zero_grad()
    before.backward()
    # y receives gradient only through users that rated the item.
    assert net.implicit_factors.grad[3].abs().sum() == 0
    assert net.implicit_factors.grad[0].abs().sum() > 0
    optimizer.step()
    after = net.loss(u, i, r, 0.01, 0.01, len(r))
    assert after.item() < before.item()


def test_svdpp_is_deterministic_and_learns_beyond_biases():
    train = _low_rank(seed=4)
    make = lambda seed: SVDpp(factors=3, reg=0.01, reg_bias=0.1, epochs=25, batch_size=128,  # noqa: E731
                              learning_rate=0.05).fit(train, seed=seed)  # fmt: skip
    a, b, c = make(0), make(0), make(1)
    np.testing.assert_array_equal(a.score(np.arange(5)), b.score(np.arange(5)))
    assert not np.allclose(a.score(np.arange(5)), c.score(np.arange(5)))
    biases_only = _rmse(BiasedMF(factors=0, reg_bias=0.1, epochs=20).fit(train), train)
    assert _rmse(a, train) < 0.6 * biases_only
    assert a.n_parameters == 30 + 25 + 30 * 3 + 2 * 25 * 3 + 1


def test_svdpp_early_stopping_keeps_the_best_epoch():
    data = _low_rank(seed=5)
    f = data.frame
    held = np.random.default_rng(1).random(len(f)) < 0.2
    train = Interactions(f[~held].reset_index(drop=True), data.n_users, data.n_items)
    valid = Interactions(f[held].reset_index(drop=True), data.n_users, data.n_items)
    model = SVDpp(factors=8, reg=0.0, reg_bias=0.0, epochs=40, batch_size=64,
                  learning_rate=0.05, lr_decay=1.0, patience=2).fit(train, valid=valid)  # fmt: skip
    epochs, values = zip(*model.history_, strict=True)
    assert _rmse(model, valid) == pytest.approx(min(values), abs=1e-9)
    assert model.best_epoch_ == epochs[int(np.argmin(values))]
    assert len(epochs) == model.best_epoch_ + 2 < 40


# ----------------------------------------------------------------------------- ML-100K


@pytest.mark.skipif(not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set")
def test_biasedmf_on_ml100k_u1_is_fast_and_beats_the_baseline():
    from metarec_lib.data import load_dataset
    from metarec_lib.splits import canonical_folds

    ds = load_dataset("ml-100k")
    split = canonical_folds(ds.interactions, ds.canonical_folds[:1])[0]
    encoder = ds.encoder()
    train, test = encoder.encode(split.train), encoder.encode(split.test)
    start = time.perf_counter()
    model = BiasedMF().fit(train)
    seconds = time.perf_counter() - start
    baseline = _rmse(BiasedMF(factors=0).fit(train), test)
    assert _rmse(model, test) < baseline - 0.015, (_rmse(model, test), baseline)
    assert seconds < 15.0
