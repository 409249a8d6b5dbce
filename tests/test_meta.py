import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.meta import (
    FOMAML,
    MAML,
    MAX_SUPPORT,
    Episodes,
    MeLU,
    PretrainAdapt,
    Reptile,
    UserRows,
    clear_training_cache,
    pad_rows,
)
from metarec_lib.models.registry import MODELS
from metarec_lib.testing import check_recommender, check_space_holds_defaults

MODELS_ = (MeLU, MAML, FOMAML, Reptile, PretrainAdapt)
EPISODIC = (MeLU, MAML, FOMAML, Reptile)
TINY = dict(embedding=4, hidden=8, epochs=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_training():
    """Every test trains its own networks (the process-wide reuse is tested on its own)."""
    clear_training_cache()
    yield
    clear_training_cache()


# ----------------------------------------------------------------------------- data


def tastes(
    n_warm: int = 48, n_new: int = 16, n_items: int = 24, n_rated: int = 16, seed: int = 0
) -> tuple[Interactions, pd.DataFrame]:
    """(rows, users' preferences): item i has genre i % 4; each user likes 2 of the 4 genres
    (rating 4.5 +- 0.5) and dislikes the others (1.5 +- 0.5) and rated `n_rated` random items.
    Users 0..n_warm-1 come first, then the n_new others; no user features, so a user's taste
    can only come from its own ratings (adaptation)."""
    rng = np.random.default_rng(seed)
    rows = []
    n_users = n_warm + n_new
    for u in range(n_users):
        liked = rng.choice(4, 2, replace=False)
        for i in rng.choice(n_items, n_rated, replace=False):
            base = 4.5 if i % 4 in liked else 1.5
            rows.append((u, int(i), float(np.clip(base + rng.uniform(-0.5, 0.5), 1, 5))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    items = pd.DataFrame({"genres": [f"g{i % 4}" for i in range(n_items)]})
    return Interactions(frame, n_users, n_items, None, items), frame


def cold_split(n_warm: int = 48, n_new: int = 16, k: int = 6, seed: int = 0):
    """(train, query): warm users' rows plus the first k rows of each new user (cold_users);
    the new users' other rows are the query."""
    data, frame = tastes(n_warm, n_new, seed=seed)
    new = frame["user"] >= n_warm
    rank = frame.groupby("user").cumcount()
    support = new & (rank < k)
    train = Interactions(frame[~new | support].reset_index(drop=True), data.n_users,
                         data.n_items, data.users, data.items,
                         cold_users=np.arange(n_warm, n_warm + n_new))  # fmt: skip
    query = Interactions(frame[new & ~support].reset_index(drop=True), data.n_users,
                         data.n_items, data.users, data.items)  # fmt: skip
    return train, query


def with_gender(train: Interactions) -> Interactions:
    """The same rows with one user variable (gender), so the encoder has user embeddings."""
    users = pd.DataFrame({"gender": np.where(np.arange(train.n_users) % 2, "F", "M")})
    return dataclasses.replace(train, users=users)


def episodes(rows: UserRows, users, k: int = 3, q: int = 4) -> Episodes:
    """Hand-made full episodes: each user's first k rows are its support, the next q its
    query (every task the same sizes, no padding)."""
    support = [rows.indptr[u] + np.arange(k) for u in users]
    query = [rows.indptr[u] + k + np.arange(q) for u in users]
    return Episodes(torch.tensor(users), *pad_rows(support, rows), *pad_rows(query, rows))


def mse(model, data: Interactions) -> float:
    f = data.frame
    pred = model.predict(f["user"].to_numpy(), f["item"].to_numpy())
    return float(np.mean((pred - f["rating"].to_numpy()) ** 2))


def flat(grads: dict, names) -> np.ndarray:
    return np.concatenate([grads[n].detach().double().reshape(-1).numpy() for n in names])


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_every_model_passes_the_contract(cls):
    """The checkerboard has no cold users: every user is warm, adapted on its own rows.
    Users are adapted in vmapped blocks, and the block's size changes the rounding of the
    batched products: a user's scores alone and in a block of 20 differ by up to 4e-6 after
    three SGD steps (Reptile's trained network here; 5e-7 for MAML's), hence 1e-5."""
    extra = dict(batch_size=16) if cls is PretrainAdapt else {}
    check_recommender(lambda: cls(embedding=8, hidden=16, epochs=20, learning_rate=0.01,
                                  inner_lr=0.1, **extra), batch_rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_registered_rating_model_with_a_space_containing_the_defaults(cls):
    assert MODELS[cls.name] is cls
    assert cls.predicts_ratings
    assert cls.family == ("transfer" if cls is PretrainAdapt else "meta")
    assert 2 <= len(cls.space) <= 3
    check_space_holds_defaults(cls)


def test_bad_hyperparameters_and_cold_users_are_errors_naming_them():
    train, _ = cold_split()
    with pytest.raises(ValueError, match="train_support"):
        MeLU(train_support="fixed").fit(train)
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(inner_steps=-1).fit(train)
    with pytest.raises(ValueError, match="cold_users"):
        MeLU().fit(dataclasses.replace(train, cold_users=np.array([0, train.n_users])))
    with pytest.raises(ValueError, match="warm"):
        MeLU().fit(dataclasses.replace(train, cold_users=np.arange(train.n_users)))


# ----------------------------------------------------------------------------- cold users


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_no_cold_row_is_used_before_adaptation(cls):
    """Changing every cold user's support (other items, other ratings) changes nothing in the
    global network, the mean and the range, nor any warm user's scores; it changes the cold
    users' scores (they are adapted on it)."""
    train, _ = cold_split()
    f = train.frame.copy()
    cold = f["user"].isin(train.cold_users)
    f.loc[cold, "rating"] = 6.0 - f.loc[cold, "rating"]
    f.loc[cold, "item"] = (f.loc[cold, "item"] + 1) % train.n_items
    changed = dataclasses.replace(train, frame=f.drop_duplicates(["user", "item"]))
    params = dict(embedding=4, hidden=8, epochs=2, inner_lr=0.1)
    a = cls(**params).fit(train, seed=3)
    clear_training_cache()  # b must train on its own, not reuse a's network
    b = cls(**params).fit(changed, seed=3)
    sa, sb = a.module_.state_dict(), b.module_.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert (a.mu_, a.rating_range_) == (b.mu_, b.rating_range_)
    assert a.train_log_["loss"].tolist() == b.train_log_["loss"].tolist()
    warm = np.setdiff1d(np.arange(train.n_users), train.cold_users)
    np.testing.assert_array_equal(a.score(warm), b.score(warm))
    assert np.abs(a.score(train.cold_users) - b.score(train.cold_users)).max() > 1e-3
    if cls is not PretrainAdapt:
        assert not np.isin(a.task_users_, train.cold_users).any()
        np.testing.assert_array_equal(a.task_users_, warm)


def test_sampled_episodes_are_disjoint_rows_of_the_users_own_warm_ratings():
    train, _ = cold_split()
    rows = UserRows.from_frame(train.frame, train.n_users)
    warm = np.setdiff1d(np.arange(train.n_users), train.cold_users)
    model = MAML(query_size=5)
    keep = np.zeros(train.n_users, bool)
    keep[warm] = True
    model.prepare(rows.only(keep))
    rng = np.random.default_rng(0)
    pairs = {(int(u), int(i)): r for u, i, r in train.frame[["user", "item", "rating"]].values}
    sizes = []
    for _ in range(20):
        e = model.sample_episodes(rng.choice(warm, 8, replace=False), rng)
        for t, u in enumerate(e.users.tolist()):
            s = e.support_items[t][e.support_mask[t] > 0].tolist()
            q = e.query_items[t][e.query_mask[t] > 0].tolist()
            assert 1 <= len(s) <= MAX_SUPPORT and 1 <= len(q) <= 5 and not set(s) & set(q)
            assert len(set(s)) == len(s) and len(set(q)) == len(q)
            got = e.support_ratings[t][e.support_mask[t] > 0].tolist()
            assert got == pytest.approx([pairs[(u, i)] for i in s])
            sizes.append(len(s))
    # 16 ratings each: k is uniform in 1..15 (at most the ratings minus one).
    assert min(sizes) == 1 and max(sizes) == 15
    model.params["train_support"] = 4
    e = model.sample_episodes(warm[:3], rng)
    assert (e.support_mask.sum(1) == 4).all() and (e.query_mask.sum(1) == 5).all()


# Enough outer steps (6 meta-batches an epoch) for the meta-learners to learn to adapt.
ADAPT = dict(embedding=4, hidden=16, epochs=30, learning_rate=0.01, inner_lr=0.1, inner_steps=3,
             item_ids=False)  # fmt: skip


def new_users() -> tuple[Interactions, Interactions, Interactions]:
    """(train, support, query): `tastes()`'s 48 warm users' rows; 16 new users (no rows at
    fit) with a support of 6 ratings each and a query of their 10 others."""
    data, frame = tastes()
    warm = frame["user"] < 48
    new = frame[~warm]
    rank = new.groupby("user").cumcount()
    part = lambda rows: dataclasses.replace(data, frame=rows.reset_index(drop=True))  # noqa: E731
    return part(frame[warm]), part(new[rank < 6]), part(new[rank >= 6])


def adapted_model(cls):
    extra = dict(batch_size=32) if cls is PretrainAdapt else dict(tasks_per_batch=8)
    return cls(**ADAPT, **extra).fit(new_users()[0], seed=0)


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_adapting_on_a_support_lowers_the_query_loss(cls):
    """New users (no rows at fit: the global parameters) adapted on 6 of their ratings predict
    their 10 others better: the taste is the user's own (no user features). A meta-learned
    network halves the error at least; a pretrained one (not trained to adapt) gains less."""
    _, support, query = new_users()
    model = adapted_model(cls)
    before = mse(model, query)
    model.adapt(support)
    after = mse(model, query)
    assert after < (before if cls is PretrainAdapt else 0.5 * before), (before, after)
    seen = model.seen_.toarray() > 0
    assert seen[support.frame["user"], support.frame["item"]].all()


def test_meta_training_makes_the_same_adaptation_work_better_than_pretraining():
    _, support, query = new_users()
    meta, plain = (adapted_model(cls).adapt(support) for cls in (MAML, PretrainAdapt))
    assert mse(meta, query) < 0.5 * mse(plain, query)


def test_cold_users_are_adapted_in_fit_and_kept():
    train, query = cold_split()
    model = MeLU(**{**TINY, "epochs": 3, "inner_lr": 0.5}).fit(train, seed=0)
    cold = train.cold_users
    assert (model.slot_[cold] >= 0).all()
    assert (np.delete(model.slot_, cold) == -1).all()
    n_local = sum(model.module_.get_parameter(n).numel() for n in model.local_names_)
    n_global = sum(w.numel() for w in model.module_.parameters())
    # MeLU adapts the decision layers: most kept values are the user's own (not those behind a
    # unit the user's support leaves inactive).
    assert 0.5 * len(cold) * n_local < model.n_parameters - n_global <= len(cold) * n_local
    kept = model.score(cold)
    model.slot_[:] = -1  # forget: adapted again on the fly from the same rows
    np.testing.assert_allclose(model.score(cold), kept, rtol=1e-5, atol=1e-5)
    assert np.isfinite(mse(model, query))


def test_parameters_count_the_adapted_values_that_differ_from_the_global_network():
    """MAML adapts every parameter, but a user's support touches its own items' rows of the
    item table only: the copies of the other rows are not the user's parameters."""
    train, _ = cold_split()
    model = MAML(**{**TINY, "epochs": 1, "inner_lr": 0.5}).fit(train, seed=0)
    cold = train.cold_users
    n_global = sum(w.numel() for w in model.module_.parameters())
    table = model.adapted_["encoder.item_ids.weight"]  # (users, n_items, embedding)
    base = model.module_.encoder.item_ids.weight.detach()
    support = train.frame[train.frame["user"].isin(cold)]
    for user, rows in support.groupby("user"):
        changed = (table[model.slot_[user]] != base).any(1).numpy()
        assert set(np.flatnonzero(changed)) == set(rows["item"])  # the support's rows only
    own = sum(int((w != model.module_.get_parameter(n).detach()).sum())
              for n, w in model.adapted_.items())  # fmt: skip
    assert model.n_parameters == n_global + own
    assert own < sum(w.numel() for w in model.adapted_.values())


def test_adapting_again_replaces_a_users_kept_parameters():
    """A second support for some users replaces theirs (no new slot); the result equals
    adapting a fresh copy on that support alone."""
    train, support, query = new_users()
    model = MAML(**{**TINY, "epochs": 2}).fit(train, seed=0)
    fresh = MAML(**{**TINY, "epochs": 2}).fit(train, seed=0)
    model.adapt(support)
    slots = len(model.adapted_["encoder.item_ids.weight"])
    again = dataclasses.replace(query, frame=query.frame[query.frame["user"] < 52])
    model.adapt(again)
    fresh.adapt(again)
    assert len(model.adapted_["encoder.item_ids.weight"]) == slots
    users = np.arange(48, 52)
    np.testing.assert_allclose(model.score(users), fresh.score(users), rtol=1e-6, atol=1e-6)
    assert not np.allclose(model.score(users), MAML(**{**TINY, "epochs": 2}).fit(train, seed=0)
                           .adapt(support).score(users))  # fmt: skip


@pytest.mark.parametrize("cls", (MeLU, MAML), ids=lambda c: c.name)
def test_melu_adapts_only_the_decision_layers(cls):
    train, _ = cold_split()
    model = cls(**{**TINY, "epochs": 2, "inner_lr": 0.5}).fit(with_gender(train), seed=0)
    cold = train.cold_users
    own = model.user_parameters(cold)
    names = [n for n, _ in model.module_.named_parameters()]
    assert set(own) == set(names)
    moved = {
        n: (own[n] - w.detach()).abs().flatten(1).amax(1)
        for n, w in model.module_.named_parameters()
    }
    decision = [n for n in names if n.startswith("decision.")]
    encoder = [n for n in names if n.startswith("encoder.")]
    assert "encoder.user_vars.weight" in encoder and "encoder.item_ids.weight" in encoder
    assert all((moved[n] > 0).all() for n in ("decision.out.weight", "decision.out.bias"))
    if cls is MeLU:
        assert model.local_names_ == tuple(decision)
        assert all((moved[n] == 0).all() for n in encoder)
    else:  # the contrast: MAML moves the embeddings too (the support items' rows)
        assert model.local_names_ == tuple(names)
        assert all((moved[n] > 0).all() for n in ("encoder.item_ids.weight",
                                                  "encoder.user_vars.weight"))  # fmt: skip


# ----------------------------------------------------------------------------- gradients


def test_with_zero_inner_steps_maml_fomaml_and_pretraining_share_the_gradient():
    """No local update: every method's meta-gradient is the gradient of the query MSE at the
    global parameters; d/d(output bias) of mean((f + b + mu - r)^2) is 2 mean(error)."""
    train = with_gender(cold_split()[0])
    rows = UserRows.from_frame(train.frame, train.n_users)
    made = [cls(**TINY, inner_steps=0).fit(train, seed=0) for cls in (MAML, FOMAML, MeLU)]
    pre = PretrainAdapt(**TINY, inner_steps=0).fit(train, seed=0)
    module = pre.module_
    state = module.state_dict()
    assert all(torch.equal(m.module_.state_dict()[n], state[n]) for m in made for n in state)
    e = episodes(rows, [0, 5, 9])
    names = [n for n, _ in module.named_parameters()]
    grads = [m.meta_gradient(module, e)[1] for m in made]
    loss = pre.regression_loss(module, e.users[:, None].expand_as(e.query_items),
                               e.query_items, e.query_ratings)  # fmt: skip
    plain = dict(zip(names, torch.autograd.grad(loss, list(module.parameters())), strict=True))
    for g in grads:
        np.testing.assert_allclose(flat(g, names), flat(plain, names), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        pred = module(e.users[:, None], e.query_items) + pre.mu_
    by_hand = 2 * (pred - e.query_ratings).mean().item()
    assert plain["decision.out.bias"].item() == pytest.approx(by_hand, rel=1e-5)
    # The contrast: one inner step separates MAML from FOMAML.
    one = [cls(**TINY, inner_steps=1, inner_lr=0.5).fit(train, seed=0) for cls in (MAML, FOMAML)]
    g2, g1 = (m.meta_gradient(module, e)[1] for m in one)
    assert np.abs(flat(g2, names) - flat(g1, names)).max() > 1e-4


@pytest.mark.parametrize("cls", (MAML, MeLU), ids=lambda c: c.name)
def test_second_order_meta_gradient_matches_finite_differences(cls):
    """float64, two inner steps: the meta-gradient is the derivative of the query loss after
    adaptation (checked coordinate by coordinate); FOMAML's is not."""
    train = with_gender(cold_split(n_warm=8, n_new=2)[0])
    model = cls(embedding=2, hidden=4, epochs=0, inner_steps=2, inner_lr=0.5).fit(train, seed=1)
    module = model.module_.double()
    rows = UserRows.from_frame(train.frame, train.n_users)
    e = episodes(rows, [0, 3], k=3, q=3).to("cpu", torch.float64)
    names = [n for n, _ in module.named_parameters()]
    _, grads = model.meta_gradient(module, e)
    params = list(module.parameters())
    numeric = []
    eps = 1e-6
    with torch.no_grad():
        for w in params:
            flat_w = w.view(-1)
            for j in range(flat_w.numel()):
                keep = flat_w[j].item()
                flat_w[j] = keep + eps
                up = model.outer_loss(module, e).item()
                flat_w[j] = keep - eps
                down = model.outer_loss(module, e).item()
                flat_w[j] = keep
                numeric.append((up - down) / (2 * eps))
    numeric = np.array(numeric)
    np.testing.assert_allclose(flat(grads, names), numeric, rtol=1e-5, atol=1e-8)
    first = FOMAML(embedding=2, hidden=4, epochs=0, inner_steps=2, inner_lr=0.5)
    first.mu_, first.local_names_ = model.mu_, model.local_names_
    _, approx = first.meta_gradient(module, e)
    assert np.abs(flat(approx, names) - numeric).max() > 1e-4


def test_one_step_reptile_moves_along_the_mean_task_gradient():
    """With one inner step phi = theta - lr g_t, so theta - mean(phi) = lr mean_t(g_t), g_t the
    gradient of task t's MSE over its support and query rows together."""
    train = with_gender(cold_split()[0])
    rows = UserRows.from_frame(train.frame, train.n_users)
    model = Reptile(**TINY, inner_steps=1, inner_lr=0.2).fit(train, seed=0)
    module = model.module_
    e = episodes(rows, [1, 2, 7], k=2, q=5)
    _, direction = model.meta_gradient(module, e)
    names = [n for n, _ in module.named_parameters()]
    total = {n: torch.zeros_like(w) for n, w in module.named_parameters()}
    for t, u in enumerate(e.users.tolist()):
        items = torch.cat([e.support_items[t], e.query_items[t]])
        ratings = torch.cat([e.support_ratings[t], e.query_ratings[t]])
        loss = ((module(torch.tensor([u]), items) + model.mu_ - ratings) ** 2).mean()
        for n, g in zip(names, torch.autograd.grad(loss, list(module.parameters())), strict=True):
            total[n] += g / len(e)
    expected = {n: 0.2 * g for n, g in total.items()}
    np.testing.assert_allclose(flat(direction, names), flat(expected, names), rtol=1e-4,
                               atol=1e-7)  # fmt: skip


def test_reptile_leaves_a_row_no_task_moves_at_exactly_zero():
    """Only the items (and user levels) of the meta-batch's tasks move; every other row of the
    outer gradient is exactly 0, not the rounding noise of theta - mean(phi), which Adam would
    turn into a step (the old computation gave 7 of 13 such item rows up to 4e-9 here)."""
    train = with_gender(cold_split()[0])
    rows = UserRows.from_frame(train.frame, train.n_users)
    model = Reptile(**{**TINY, "epochs": 2}, inner_steps=3, inner_lr=0.1).fit(train, seed=0)
    e = episodes(rows, [1, 2, 7], k=2, q=5)
    _, direction = model.meta_gradient(model.module_, e)
    table = direction["encoder.item_ids.weight"]
    held = torch.zeros(len(table), dtype=torch.bool)
    held[torch.cat([e.support_items, e.query_items], 1).flatten()] = True
    assert 0 < int((~held).sum()) and torch.equal(table[~held], torch.zeros_like(table[~held]))
    assert (table[held].abs().sum(1) > 0).all()


@pytest.mark.parametrize("cls", (MAML, Reptile), ids=lambda c: c.name)
def test_adapting_a_tasks_rows_equals_adapting_the_whole_item_table(cls):
    """`task_view` hands the inner loop the id table's rows of the user's items only: the
    adapted table equals the inner loop on the whole table (global indices), and every row
    the user did not rate keeps the global value exactly."""
    train = with_gender(cold_split()[0])
    model = cls(**{**TINY, "epochs": 2}, inner_steps=3, inner_lr=0.5).fit(train, seed=0)
    module, users = model.module_, np.array([3, 8, 11])
    with torch.no_grad():
        adapted = model._adapt_rows(module, users, model.rows_)
    local = model.local_params(module)
    table = local["encoder.item_ids.weight"].detach()
    for t, u in enumerate(users):
        items, ratings, mask = pad_rows([model.rows_.rows(u)], model.rows_)
        whole = model.inner_loop(module, local, torch.tensor(u), items[0], ratings[0], mask[0])
        for n, w in whole.items():
            np.testing.assert_allclose(adapted[n][t].numpy(), w.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)  # fmt: skip
        mine = adapted["encoder.item_ids.weight"][t]
        rated = torch.zeros(len(table), dtype=torch.bool)
        rated[items[0]] = True
        assert torch.equal(mine[~rated], table[~rated])
        assert (mine[rated] != table[rated]).any(1).all()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cls", (MAML, PretrainAdapt), ids=lambda c: c.name)
def test_early_stopping_on_meta_validation_keeps_the_best_epoch(cls):
    train, query = cold_split()
    model = cls(embedding=4, hidden=8, epochs=6, patience=2, learning_rate=0.01,
                inner_lr=0.3).fit(train, valid=query, seed=0)  # fmt: skip
    scores = dict(model.history_)
    assert model.best_epoch_ == min(scores, key=scores.get)
    assert model.valid_rmse(model.module_, query) == pytest.approx(scores[model.best_epoch_])
    assert np.sqrt(mse(model, query)) == pytest.approx(scores[model.best_epoch_], rel=1e-5)
    log = model.train_log_.dropna(subset=["valid_score"])
    assert log["valid_score"].tolist() == pytest.approx(list(scores.values()))


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_same_seed_same_predictions_and_another_seed_differs(cls):
    train, query = cold_split()
    make = lambda: cls(embedding=4, hidden=8, epochs=2, inner_lr=0.3)  # noqa: E731
    f = query.frame
    pred = [make().fit(train, seed=s).predict(f["user"], f["item"]) for s in (0, 0, 1)]
    np.testing.assert_array_equal(pred[0], pred[1])
    assert np.abs(pred[0] - pred[2]).max() > 1e-4
    lo, hi = train.frame["rating"].min(), train.frame["rating"].max()
    assert ((pred[0] >= lo) & (pred[0] <= hi)).all()


@pytest.mark.parametrize("cls", (MAML, PretrainAdapt), ids=lambda c: c.name)
def test_a_second_support_size_reuses_the_trained_network_with_identical_results(cls):
    """k = 3 after k = 6 on the same warm users: the network is not trained again, and every
    prediction equals that of a fit that trained from scratch."""
    params = dict(embedding=4, hidden=8, epochs=3, inner_lr=0.1)
    first = cls(**params).fit(cold_split(k=6)[0], seed=1)
    train3, query3 = cold_split(k=3)
    reused = cls(**params).fit(train3, seed=1)
    assert not first.meta_train_reused_ and reused.meta_train_reused_
    assert reused.meta_train_seconds_ == first.meta_train_seconds_
    assert first.reused_seconds_ == 0.0 and reused.reused_seconds_ == first.meta_train_seconds_
    clear_training_cache()
    fresh = cls(**params).fit(train3, seed=1)
    assert not fresh.meta_train_reused_
    f = query3.frame
    np.testing.assert_array_equal(reused.predict(f["user"], f["item"]),
                                  fresh.predict(f["user"], f["item"]))  # fmt: skip
    other = cls(**{**params, "inner_lr": 0.05}).fit(train3, seed=1)
    assert not other.meta_train_reused_  # other hyperparameters: trained again


def episodes_split(k: int, valid_support: int = 4):
    """(train, valid) as tuning sees a cold-start split: users 0..47 warm, 48..55 meta-valid
    (their first `valid_support` rows in train, the rest is `valid`), 56..63 meta-test (their
    first k rows in train); meta-valid and meta-test users are cold_users."""
    data, frame = tastes(48, 16)
    rank = frame.groupby("user").cumcount()
    is_valid, is_test = frame["user"].between(48, 55), frame["user"] >= 56
    keep = ~(is_valid | is_test) | (is_valid & (rank < valid_support)) | (is_test & (rank < k))
    train = dataclasses.replace(data, frame=frame[keep].reset_index(drop=True),
                                cold_users=np.arange(48, 64))  # fmt: skip
    valid = dataclasses.replace(data, frame=frame[is_valid & (rank >= 8)].reset_index(drop=True))
    return train, valid


def test_meta_validation_fits_reuse_across_k_but_not_when_the_meta_valid_supports_change():
    """With `valid`, k = 2 after k = 6 (the same meta-valid episodes) reuses the training and
    equals a fresh fit; other meta-valid supports (the same `valid` rows) train again."""
    params = dict(embedding=4, hidden=8, epochs=3, patience=1, inner_lr=0.1)
    train6, valid = episodes_split(6)
    MAML(**params).fit(train6, valid=valid, seed=2)
    train2, _ = episodes_split(2)
    reused = MAML(**params).fit(train2, valid=valid, seed=2)
    assert reused.meta_train_reused_
    shorter = MAML(**params).fit(episodes_split(2, valid_support=2)[0], valid=valid, seed=2)
    assert not shorter.meta_train_reused_
    assert shorter.history_ != reused.history_  # early stopping judged other adaptations
    clear_training_cache()
    fresh = MAML(**params).fit(train2, valid=valid, seed=2)
    assert not fresh.meta_train_reused_ and fresh.history_ == reused.history_
    users = np.arange(48, 64)
    np.testing.assert_array_equal(reused.score(users), fresh.score(users))


def test_the_training_memo_keeps_the_most_recently_used_networks(monkeypatch):
    from metarec_lib.models import meta

    monkeypatch.setattr(meta, "_TRAINED", meta.TrainingMemo(2))
    train, _ = cold_split()
    fit = lambda lr: MAML(embedding=4, hidden=8, epochs=1, inner_lr=lr).fit(train, seed=0)  # noqa: E731
    fit(0.1), fit(0.2)
    assert fit(0.1).meta_train_reused_  # 0.1 is now the most recent: 0.3 evicts 0.2
    fit(0.3)
    assert len(meta._TRAINED) == 2
    assert fit(0.1).meta_train_reused_ and not fit(0.2).meta_train_reused_


def test_a_diverging_adaptation_keeps_the_global_parameters():
    """An absurd inner learning rate makes the local update overflow: those users are scored
    with the global network (listed in diverged_users_), never with NaN."""
    train, query = cold_split()
    model = MAML(embedding=4, hidden=8, epochs=0, inner_lr=1e30, inner_steps=3).fit(train, seed=0)
    assert len(model.diverged_users_) > 0
    assert set(model.diverged_users_) <= set(train.cold_users)
    assert np.isfinite(model.score(train.cold_users)).all()
    f = query.frame
    assert np.isfinite(model.predict(f["user"], f["item"])).all()
    model.params["inner_lr"] = 0.01
    model.fit(train, seed=0)  # a sane refit of the same object lists no one
    assert not hasattr(model, "diverged_users_")


# ----------------------------------------------------------------------------- feature columns


def wide_features(train: Interactions) -> Interactions:
    """The same rows with 16 feature columns (genre g{i % 4} and h{i % 12} of item i), so that a
    task of a few items uses only a few of them (`feature_columns`)."""
    items = pd.DataFrame({"genres": [f"g{i % 4}|h{i % 12}" for i in range(train.n_items)]})
    return dataclasses.replace(train, items=items)


def few_rows(rows: UserRows, users, n: int) -> UserRows:
    """`rows` with only the first n rows of each of `users` (the others none)."""
    keep = np.concatenate([rows.indptr[u] + np.arange(n) for u in users])
    counts = np.zeros(len(rows.indptr) - 1, np.int64)
    counts[list(users)] = n
    return UserRows(np.concatenate([[0], np.cumsum(counts)]), rows.items[keep],
                    rows.ratings[keep])  # fmt: skip


def test_feature_columns_are_the_tasks_own_then_unused_ones():
    train = with_gender(wide_features(cold_split()[0]))
    model = MAML(**TINY).fit(train, seed=0)
    features = model.module_.encoder.item_features
    assert features.shape[1] == 16 and (features.sum(1) == 2).all()
    items = torch.tensor([[0, 12, 5], [3, 3, 0]])  # task 1: item 3 and a padding row
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    columns = model.feature_columns(model.module_, items, mask)
    assert columns.shape == (2, 4)  # task 0: items 0 and 12 share both columns, 5 has 2 more
    for t in range(2):
        real = items[t][mask[t] > 0]
        used = torch.nonzero(features[real].sum(0))[:, 0]
        assert torch.equal(columns[t, : len(used)], used)  # its own, in increasing order
        rest = columns[t, len(used) :]
        assert (features[real][:, rest] == 0).all()  # padding: columns its items do not use
        assert len(set(columns[t].tolist())) == columns.shape[1]  # distinct
    every = torch.arange(24)[None, :]  # one task using all 16 columns: the full width
    assert model.feature_columns(model.module_, every, torch.ones(1, 24)) is None
    plain = MAML(**TINY).fit(with_gender(cold_split()[0]), seed=0)  # 4 columns (genres)
    three = torch.tensor([[0, 1, 2]])  # 3 of them: over half, so the full width
    assert plain.feature_columns(plain.module_, three, torch.ones(1, 3)) is None
    assert plain.feature_columns(plain.module_, three[:, :2], torch.ones(1, 2)).shape == (1, 2)


@pytest.mark.parametrize("cls", (MAML, MeLU, Reptile), ids=lambda c: c.name)
def test_a_tasks_feature_columns_give_the_full_width_gradients(cls, monkeypatch):
    """The meta-gradient with each task's feature columns (`task_view`) equals the one with
    every column; a column no task uses gets exactly 0 from Reptile."""
    train = with_gender(wide_features(cold_split()[0]))
    model = cls(**{**TINY, "epochs": 2}, inner_steps=3, inner_lr=0.3).fit(train, seed=0)
    module = model.module_
    rows = UserRows.from_frame(train.frame, train.n_users)
    e = episodes(rows, [1, 2], k=1, q=1)
    assert model.feature_columns(module, e.support_items, e.support_mask) is not None
    loss, narrow = model.meta_gradient(module, e)
    monkeypatch.setattr(model, "feature_columns", lambda *args: None)
    full_loss, full = model.meta_gradient(module, e)
    names = [n for n, _ in module.named_parameters()]
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    np.testing.assert_allclose(flat(narrow, names), flat(full, names), rtol=1e-4, atol=1e-7)
    if cls is Reptile:
        proj = narrow["encoder.item_proj.weight"]
        held = torch.cat([e.support_items, e.query_items], 1).flatten()
        unused = module.encoder.item_features[held].sum(0) == 0
        assert unused.any() and torch.equal(proj[:, unused], torch.zeros_like(proj[:, unused]))


def test_adapting_on_a_tasks_feature_columns_equals_the_full_width():
    """Adapted with each user's feature columns, the stored projection equals the full-width
    inner loop's, and every column the user's items do not use keeps the global value."""
    train = with_gender(wide_features(cold_split()[0]))
    model = MAML(**{**TINY, "epochs": 2}, inner_steps=3, inner_lr=0.5).fit(train, seed=0)
    module, users = model.module_, np.array([3, 8])
    rows = few_rows(model.rows_, users, 2)
    with torch.no_grad():
        adapted = model._adapt_rows(module, users, rows)
    local = model.local_params(module)
    global_proj = local["encoder.item_proj.weight"].detach()
    for t, u in enumerate(users):
        items, ratings, mask = pad_rows([rows.rows(u)], rows)
        assert model.feature_columns(module, items, mask) is not None
        whole = model.inner_loop(module, local, torch.tensor(u), items[0], ratings[0], mask[0])
        for n, w in whole.items():
            np.testing.assert_allclose(adapted[n][t].numpy(), w.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)  # fmt: skip
        unused = module.encoder.item_features[items[0]].sum(0) == 0
        mine = adapted["encoder.item_proj.weight"][t]
        assert torch.equal(mine[:, unused], global_proj[:, unused])
        assert (mine[:, ~unused] != global_proj[:, ~unused]).any(0).all()


@pytest.mark.parametrize("cls", (MAML, MeLU), ids=lambda c: c.name)
def test_scores_equal_each_users_network_on_every_item(cls):
    """`score` (the items' projected features from one sparse product when each user has its
    own projection) equals each user's adapted network applied to every item; a second fit on
    other items' features does not reuse the first one's."""
    from torch.func import functional_call

    model = cls(**{**TINY, "epochs": 2}, inner_steps=3, inner_lr=0.5)
    for train in (with_gender(cold_split()[0]), with_gender(wide_features(cold_split()[0]))):
        model.fit(train, seed=0)
        users = np.array([50, 3, 60])
        scores = model.score(users)
        params = model._user_params(users)
        items = torch.arange(train.n_items)
        for t, u in enumerate(users):
            mine = {n: w[t] for n, w in params.items()}
            with torch.no_grad():
                want = functional_call(model.module_, mine, (torch.tensor([u]), items))
            np.testing.assert_allclose(scores[t], want.numpy() + model.mu_, rtol=1e-5, atol=1e-5)
