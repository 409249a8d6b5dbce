"""Fold-in competitors (BiasedMFFoldIn, iALSFoldIn): the contract, the base model when no user is
cold, hand-solved cold users, an item side the supports never reach, and a sanity baseline."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from metarec_lib.data.dataset import Interactions
from metarec_lib.evaluate import ndcg_on, rmse_on
from metarec_lib.models import foldin
from metarec_lib.models.als import IALS
from metarec_lib.models.foldin import BiasedMFFoldIn, IALSFoldIn
from metarec_lib.models.registry import MODELS, get_model
from metarec_lib.models.svd import FREQUENCY_EXPONENT, BiasedMF
from metarec_lib.testing import check_recommender, check_space_holds_defaults, checkerboard

PAIRS = [(BiasedMFFoldIn, BiasedMF), (IALSFoldIn, IALS)]


def _frame(users, items, ratings) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": np.asarray(users, np.int64),
            "item": np.asarray(items, np.int64),
            "rating": np.asarray(ratings, np.float64),
            "timestamp": np.arange(len(users), dtype=np.int64),
        }
    )


def _cold_start(
    n_warm: int = 30, n_cold: int = 8, n_items: int = 25, k: int = 5, seed: int = 0
) -> tuple[Interactions, Interactions]:
    """(train, query): rank-2 ratings in 1..5; users n_warm.. are cold with k support ratings
    in train (train.cold_users) and the rest of their ratings in query."""
    rng = np.random.default_rng(seed)
    n_users = n_warm + n_cold
    p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    mask = rng.random((n_users, n_items)) < 0.6
    users, items = np.nonzero(mask)
    signal = 3 + (p[users] * q[items]).sum(1) + 0.2 * rng.normal(size=len(users))
    ratings = np.clip(np.round(signal), 1, 5)
    order = rng.permutation(len(users))  # support = each cold user's first k in random order
    users, items, ratings = users[order], items[order], ratings[order]
    rank = pd.Series(users).groupby(users).cumcount().to_numpy()
    in_query = (users >= n_warm) & (rank >= k)
    cold = np.arange(n_warm, n_users)
    train = Interactions(
        _frame(users[~in_query], items[~in_query], ratings[~in_query]), n_users, n_items,
        cold_users=cold,
    )  # fmt: skip
    query = Interactions(
        _frame(users[in_query], items[in_query], ratings[in_query]), n_users, n_items
    )
    return train, query


def _with_cold(train: Interactions, cold) -> Interactions:
    return Interactions(train.frame, train.n_users, train.n_items, cold_users=cold)


def _warm_only(train: Interactions) -> pd.DataFrame:
    frame = train.frame
    return frame[~np.isin(frame["user"].to_numpy(), train.cold_users)].reset_index(drop=True)


def _small(cls):
    if cls is BiasedMFFoldIn:
        return cls(factors=3, reg=0.3, reg_bias=2.0, epochs=6)
    return cls(factors=3, alpha=2.0, reg=0.05, iterations=4)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "make",
    [
        lambda: BiasedMFFoldIn(factors=4, reg=0.1, reg_bias=1.0, epochs=20),
        lambda: IALSFoldIn(factors=8, alpha=10.0),
    ],
    ids=["BiasedMFFoldIn", "iALSFoldIn"],
)
def test_passes_the_contract(make):
    check_recommender(make)


@pytest.mark.parametrize("cls, base", PAIRS)
def test_registered_with_the_base_models_settings(cls, base):
    check_space_holds_defaults(cls)
    assert MODELS[cls.name] is cls and isinstance(get_model(cls.name), cls)
    assert cls.family == base.family == "collaborative"
    # The same dicts: a value tuned for the base model is a valid setting here.
    assert cls.defaults is base.defaults and cls.space is base.space
    assert cls.predicts_ratings == base.predicts_ratings == (base is BiasedMF)


@pytest.mark.parametrize("cold", [None, np.empty(0, np.int64)], ids=["None", "empty"])
@pytest.mark.parametrize("cls, base", PAIRS)
def test_without_cold_users_it_is_the_base_model(cls, base, cold):
    train, _ = _cold_start(seed=4)
    plain = _with_cold(train, cold)
    model = _small(cls).fit(plain, seed=3)
    reference = base(**_small(cls).params).fit(plain, seed=3)
    users = np.arange(train.n_users)
    np.testing.assert_array_equal(model.score(users), reference.score(users))
    np.testing.assert_array_equal(model.item_factors_, reference.item_factors_)


# ----------------------------------------------------------------------------- fold-in by hand


def test_biasedmf_cold_users_get_the_ridge_solution_solved_by_hand():
    train, _ = _cold_start(n_warm=12, n_cold=2, n_items=10, k=6, seed=1)
    # Cold user 12 keeps one support rating (fewer ratings than unknowns), user 13 six.
    frame = train.frame
    first = frame.index[frame["user"] == 12][1:]
    train = _with_cold(
        Interactions(frame.drop(index=first).reset_index(drop=True), 14, 10), train.cold_users
    )
    reg, reg_bias, k = 0.7, 2.0, 3
    model = BiasedMFFoldIn(factors=k, reg=reg, reg_bias=reg_bias, epochs=5).fit(train, seed=0)
    warm = _warm_only(train)
    assert model.mu_ == pytest.approx(warm["rating"].mean(), abs=1e-12)
    frame = train.frame
    for user, size in ((12, 1), (13, 6)):
        rows = frame[frame["user"] == user]
        assert len(rows) == size
        items, ratings = rows["item"].to_numpy(), rows["rating"].to_numpy()
        # min (r - mu - b_i - b - q_i . p)^2 + reg_bias b^2 + reg n^e |p|^2: normal equations.
        design = np.hstack([np.ones((size, 1)), model.item_factors_[items]])
        target = ratings - model.mu_ - model.item_bias_[items]
        penalty = np.diag([reg_bias] + [reg * size**FREQUENCY_EXPONENT] * k)
        x = np.linalg.solve(design.T @ design + penalty, design.T @ target)
        assert model.user_bias_[user] == pytest.approx(x[0], abs=1e-9)
        np.testing.assert_allclose(model.user_factors_[user], x[1:], atol=1e-9)
        unseen = np.setdiff1d(np.arange(10), items)[:2]
        want = model.mu_ + x[0] + model.item_bias_[unseen] + model.item_factors_[unseen] @ x[1:]
        np.testing.assert_allclose(
            model.predict([user, user], unseen), np.clip(want, *model.rating_range_), atol=1e-9
        )


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_ials_cold_users_get_the_weighted_least_squares_solution_by_hand(solver):
    train, _ = _cold_start(n_warm=12, n_cold=3, n_items=10, k=4, seed=2)
    reg, alpha, exponent = 0.05, 2.0, 0.5
    model = IALSFoldIn(
        factors=3, reg=reg, alpha=alpha, reg_exponent=exponent, iterations=3, solver=solver
    ).fit(train, seed=0)
    y = model.item_factors_.astype(np.float64)
    # Total weight of a user over all 10 cells: unobserved cells weigh 1, observed 1 + alpha r.
    warm = _warm_only(train)
    extra = (alpha * warm["rating"]).groupby(warm["user"]).sum().reindex(range(12), fill_value=0)
    mean_weight = float((10 + extra).mean())
    assert model.mean_user_weight_ == pytest.approx(mean_weight, rel=1e-6)
    frame = train.frame
    for user in train.cold_users:
        rows = frame[frame["user"] == user]
        items, c = rows["item"].to_numpy(), 1 + alpha * rows["rating"].to_numpy()
        reg_u = reg * mean_weight * ((10 + (c - 1).sum()) / mean_weight) ** exponent
        a = y.T @ y + y[items].T @ ((c - 1)[:, None] * y[items]) + reg_u * np.eye(3)
        x = np.linalg.solve(a, y[items].T @ c)
        np.testing.assert_allclose(model.user_factors_[user], x, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [BiasedMFFoldIn, IALSFoldIn])
def test_fold_in_users_is_the_base_models_own_fold_in(cls):
    train, _ = _cold_start(seed=5)
    model = _small(cls).fit(train, seed=0)
    f = train.frame
    users = np.array([0, 7, 31])
    rows = f[np.isin(f["user"], users)].reset_index(drop=True)
    rows["user"] = np.searchsorted(users, rows["user"].to_numpy())
    batch = model.fold_in_users(Interactions(rows, len(users), train.n_items))
    for j, user in enumerate(users):
        mine = f[f["user"] == user]
        single = model.fold_in(mine["item"].to_numpy(), mine["rating"].to_numpy())
        if cls is BiasedMFFoldIn:
            assert batch[0][j] == pytest.approx(single[0], abs=1e-10)
            np.testing.assert_allclose(batch[1][j], single[1], atol=1e-10)
        else:  # float32 confidences here, float64 in IALS.fold_in
            np.testing.assert_allclose(batch[j], single, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="support has 3 items"):
        model.fold_in_users(Interactions(rows.iloc[:0], 1, 3))


def test_ials_exact_fold_in_of_a_warm_user_repeats_their_last_step():
    train, _ = _cold_start(seed=6)
    model = IALSFoldIn(factors=3, alpha=2.0, iterations=3, solver="exact").fit(train, seed=1)
    f = train.frame
    rows = f[f["user"] == 4].reset_index(drop=True)
    rows["user"] = 0
    vec = model.fold_in_users(Interactions(rows, 1, train.n_items))[0]
    np.testing.assert_allclose(vec, model.user_factors_[4], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- item side


@pytest.mark.parametrize("cls, base", PAIRS)
def test_supports_never_reach_the_item_side(cls, base):
    train, _ = _cold_start(seed=7)
    model = _small(cls).fit(train, seed=2)
    # Other supports for the same cold users: other items, other ratings.
    warm, n_warm = _warm_only(train), int(train.cold_users.min())
    rng = np.random.default_rng(1)
    cold = np.repeat(train.cold_users, 4)
    items = np.concatenate([rng.choice(train.n_items, 4, replace=False) for _ in train.cold_users])
    moved = pd.concat([warm, _frame(cold, items, rng.integers(1, 6, len(cold)))])
    other = Interactions(moved.reset_index(drop=True), train.n_users, train.n_items,
                         cold_users=train.cold_users)  # fmt: skip
    again = _small(cls).fit(other, seed=2)
    np.testing.assert_array_equal(again.item_factors_, model.item_factors_)
    cold_rows = train.cold_users
    assert not np.allclose(again.user_factors_[cold_rows], model.user_factors_[cold_rows])
    # Warm users are untouched too.
    np.testing.assert_array_equal(again.user_factors_[:n_warm], model.user_factors_[:n_warm])
    # ... and the item side is the base model's on the warm users alone (iALS counts every
    # user in its index space, so for it "alone" means re-indexed without the cold users).
    n_users = train.n_users if base is BiasedMF else n_warm
    reference = base(**model.params).fit(Interactions(warm, n_users, train.n_items), seed=2)
    np.testing.assert_array_equal(reference.item_factors_, model.item_factors_)
    if base is BiasedMF:
        np.testing.assert_array_equal(again.item_bias_, model.item_bias_)
        np.testing.assert_array_equal(reference.item_bias_, model.item_bias_)


@pytest.mark.parametrize("cls", [BiasedMFFoldIn, IALSFoldIn])
def test_all_cold_users_are_solved_in_one_batched_call(cls, monkeypatch):
    solver = "ridge_half_step" if cls is BiasedMFFoldIn else "solve_exact"
    original, calls = getattr(foldin, solver), []

    def counting(matrix, *args, **kwargs):
        calls.append(matrix.shape[0])
        return original(matrix, *args, **kwargs)

    monkeypatch.setattr(foldin, solver, counting)
    train, _ = _cold_start(n_cold=12, seed=8)
    _small(cls).fit(train, seed=0)
    assert calls == [12]  # one call, one row per cold user; the warm fit uses its own module


# ----------------------------------------------------------------------------- quality


def test_biasedmf_fold_in_beats_item_means_on_cold_queries():
    train, query = _cold_start(n_warm=60, n_cold=15, n_items=30, k=8, seed=9)
    model = BiasedMFFoldIn(factors=2, reg=0.3, reg_bias=2.0, epochs=10).fit(train, seed=0)
    f, truth = query.frame, query.frame["rating"].to_numpy()
    rmse = np.sqrt(np.mean((model.predict(f["user"], f["item"]) - truth) ** 2))
    means = train.frame.groupby("item")["rating"].mean()
    baseline = means.reindex(f["item"]).fillna(train.frame["rating"].mean()).to_numpy()
    baseline_rmse = np.sqrt(np.mean((baseline - truth) ** 2))
    assert rmse < 0.85 * baseline_rmse, (rmse, baseline_rmse)


@pytest.mark.parametrize("cls", [BiasedMFFoldIn, IALSFoldIn])
def test_cold_checkerboard_users_get_items_of_their_parity(cls):
    full, _ = checkerboard(n_users=24)
    f = full.frame
    cold = np.arange(4)
    # Cold users keep two liked items (rated 5) as their support.
    support = f[np.isin(f["user"], cold) & (f["rating"] == 5)].groupby("user").head(2)
    frame = pd.concat([f[~np.isin(f["user"], cold)], support]).reset_index(drop=True)
    train = Interactions(frame, full.n_users, full.n_items, cold_users=cold)
    model = (
        BiasedMFFoldIn(factors=4, reg=0.1, reg_bias=1.0, epochs=20)
        if cls is BiasedMFFoldIn
        else IALSFoldIn(factors=8, alpha=10.0)
    ).fit(train, seed=0)
    top, _ = model.recommend(cold, 3)
    for u in cold:
        assert (top[u] % 2 == u % 2).all(), (u, top[u])
        assert not set(top[u]) & set(support.loc[support["user"] == u, "item"])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score(cold), model.score(cold))


# ----------------------------------------------------------------------------- early stopping


def test_biasedmf_early_stopping_scores_folded_in_cold_users():
    train, query = _cold_start(seed=10)
    model = BiasedMFFoldIn(factors=10, reg=0.003, reg_bias=0.1, epochs=30, patience=2,
                           init_std=0.01)  # fmt: skip
    model.fit(train, valid=query)
    epochs, values = zip(*model.history_, strict=True)
    # The kept sweep's RMSE is what the served (folded-in) cold users score.
    assert rmse_on(model, query) == pytest.approx(min(values), abs=1e-12)
    assert model.best_epoch_ == epochs[int(np.argmin(values))]
    assert model._pending is None


def test_ials_early_stopping_scores_folded_in_cold_users():
    train, query = _cold_start(seed=11)
    relevant = Interactions(query.frame[query.frame["rating"] >= 4], query.n_users, query.n_items)
    model = IALSFoldIn(factors=3, alpha=2.0, iterations=6, patience=2).fit(train, valid=relevant)
    values = [v for _, v in model.history_]
    assert len(values) >= 3 and model.best_epoch_ is not None
    assert ndcg_on(model, relevant) == pytest.approx(max(values), abs=1e-12)
    assert model._pending is None and model.user_factors_.shape == (train.n_users, 3)


# ----------------------------------------------------------------------------- determinism, errors


@pytest.mark.parametrize("cls", [BiasedMFFoldIn, IALSFoldIn])
def test_same_seed_same_scores_other_seed_other_scores(cls):
    train, _ = _cold_start(seed=12)
    users = np.arange(train.n_users)
    a = _small(cls).fit(train, seed=1).score(users)
    b = _small(cls).fit(train, seed=1).score(users)
    c = _small(cls).fit(train, seed=2).score(users)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("cls", [BiasedMFFoldIn, IALSFoldIn])
def test_bad_cold_users_are_named(cls):
    train, _ = _cold_start(n_warm=5, n_cold=2, seed=13)
    for cold, message in [
        (np.array([3, 7]), r"indices 3\.\.7; expected dense user indices 0\.\.6"),
        (np.array([1.0, 2.0]), "integer user indices"),
        (np.arange(7), "needs warm users' ratings"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            _small(cls).fit(_with_cold(train, cold))
        assert cls.name in str(err.value)


def test_ials_users_without_any_row_never_enter_the_warm_fit():
    """Catalogue users with no row (meta-train users outside a smaller pool) change neither
    the item factors nor the mean user weight: the warm fit is iALS on the warm users alone."""
    train, _ = _cold_start()
    frame = train.frame.copy()
    n_extra = 40  # users 38..77: in the catalogue, no rows
    bigger = Interactions(frame, train.n_users + n_extra, train.n_items,
                          cold_users=train.cold_users)  # fmt: skip
    a = _small(IALSFoldIn).fit(train, seed=3)
    b = _small(IALSFoldIn).fit(bigger, seed=3)
    assert b.mean_user_weight_ == a.mean_user_weight_
    np.testing.assert_array_equal(b.item_factors_, a.item_factors_)
    np.testing.assert_array_equal(b.score(train.cold_users), a.score(train.cold_users))
    assert not b.user_factors_[train.n_users :].any()  # no rows: zero vectors
