import functools

import numpy as np
import pandas as pd
import pytest
import torch

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.multitask import (
    ESMM,
    PLE,
    MMoE,
    SharedBottom,
    SingleTask,
    _mix,
    combine_losses,
    encode_features,
)
from metarec_lib.models.registry import MODELS
from metarec_lib.testing import check_recommender, check_space_holds_defaults, checkerboard

MODELS_ = (SingleTask, SharedBottom, MMoE, PLE, ESMM)
SMALL = dict(embedding=8, hidden=32, batch_size=64, learning_rate=0.01, epochs=15)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shared_signal(n_users: int = 40, n_items: int = 30, seed: int = 0) -> Interactions:
    """Users of group u % 2 rate half the items of their parity 4-5 stars and two items of the
    other parity 1-2 stars: what a user rates and how high share one signal (the group).
    Side information has gaps: one user's gender and two items' years are missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        mine = np.arange(u % 2, n_items, 2)
        other = np.arange(1 - u % 2, n_items, 2)
        rows += [(u, int(i), float(rng.integers(4, 6)))
                 for i in rng.choice(mine, len(mine) // 2, replace=False)]  # fmt: skip
        rows += [(u, int(i), float(rng.integers(1, 3))) for i in rng.choice(other, 2, False)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    gender = np.where(np.arange(n_users) % 2 == 0, "F", "M").astype(object)
    gender[3] = None
    users = pd.DataFrame({"gender": gender})
    year = pd.array(1990 + (np.arange(n_items) % 3) * 10, dtype="Int64")
    year[[0, 5]] = pd.NA
    items = pd.DataFrame({"year": year, "genres": ["even" if i % 2 == 0 else "odd|drama"
                                                   for i in range(n_items)]})  # fmt: skip
    return Interactions(frame, n_users, n_items, users, items)


@functools.cache
def fitted(cls):
    """One SMALL fit per model on `shared_signal()` (seed 0), shared by tests that only read."""
    return cls(**SMALL).fit(shared_signal(), seed=0)


def _rating_tower_bias(module: torch.nn.Module) -> torch.nn.Parameter:
    [tower] = [m for name, m in module.named_modules() if name.endswith("towers.rating")]
    return tower.net[-1].bias


def _epoch(model, seed: int = 1) -> tuple[torch.Tensor, ...]:
    parts = list(model.batches(torch.Generator().manual_seed(seed)))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_every_model_passes_the_contract(cls):
    check_recommender(lambda: cls(**SMALL))


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_registered_multitask_model_with_a_space_containing_the_defaults(cls):
    assert MODELS[cls.name] is cls
    assert cls.family == "multitask" and cls.predicts_ratings
    assert 2 <= len(cls.space) <= 3
    check_space_holds_defaults(cls)
    if cls is not SingleTask:  # SingleTask: the weighting only rescales disjoint networks
        assert "weighting" in cls.space


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_heads_have_the_right_shape_and_range_and_scores_match_pairs(cls):
    train = shared_signal()
    model = fitted(cls)
    users = np.repeat(np.arange(train.n_users), train.n_items)
    items = np.tile(np.arange(train.n_items), train.n_users)
    interest = model.predict_interest(users, items)
    rating = model.predict(users, items)
    assert interest.shape == rating.shape == (len(users),)
    assert ((interest > 0) & (interest < 1)).all()
    lo, hi = train.frame["rating"].min(), train.frame["rating"].max()
    assert ((rating >= lo) & (rating <= hi)).all()
    # The vectorised all-items ranking path gives the logit of the pairwise p(rate).
    scores = model.score(np.arange(train.n_users)).ravel()
    np.testing.assert_allclose(1 / (1 + np.exp(-scores)), interest, rtol=1e-5, atol=1e-6)
    # Both heads learned the shared signal: own-parity items above other-parity ones.
    own = (users % 2) == (items % 2)
    assert interest[own].mean() > interest[~own].mean() + 0.2
    assert rating[own].mean() > rating[~own].mean() + 1.0


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_predict_is_clipped_to_the_training_range(cls):
    train = shared_signal()
    model = cls(**{**SMALL, "epochs": 1}).fit(train, seed=0)
    users, items = np.arange(10), np.arange(10)
    with torch.no_grad():
        _rating_tower_bias(model.module_).fill_(100.0)
    np.testing.assert_array_equal(model.predict(users, items), 5.0)
    with torch.no_grad():
        _rating_tower_bias(model.module_).fill_(-100.0)
    np.testing.assert_array_equal(model.predict(users, items), 1.0)


# ----------------------------------------------------------------------------- ESMM


def test_esmm_chain_rule_holds_and_joint_probability_is_below_p_rate():
    train = shared_signal()
    model = fitted(ESMM)
    users = np.repeat(np.arange(train.n_users), train.n_items)
    items = np.tile(np.arange(train.n_items), train.n_users)
    f = model.predict_funnel(users, items)
    np.testing.assert_allclose(f["like_and_rate"], f["rate"] * f["like_given_rate"], rtol=1e-12)
    assert (f["like_and_rate"] <= f["rate"]).all()
    assert all(((p > 0) & (p < 1)).all() for p in f.values())
    np.testing.assert_allclose(f["rate"], model.predict_interest(users, items), rtol=1e-12)


def test_esmm_loss_is_the_entire_space_objective():
    """Hand-computed from the towers' outputs: BCE(p_rate, rated) + BCE(p_rate * p_like|rate,
    rated and liked) over ALL samples (unrated ones count as not liked) + MSE on rated pairs."""
    train = shared_signal()
    model = ESMM(**{**SMALL, "epochs": 1, "like_threshold": 4.0}).fit(train, seed=0)
    module = model.module_
    users = torch.tensor([0, 0, 1, 2, 3])
    items = torch.tensor([0, 1, 1, 2, 3])
    rated = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    rating = torch.tensor([5.0, 3.0, 0.0, 4.0, 0.0])
    with torch.no_grad():
        out = module(users, items)
        loss = model.loss(module, (users, items, rated, rating)).item()
    p = torch.sigmoid(out["interest"]).double().numpy()
    q = torch.sigmoid(out["like"]).double().numpy()
    y, liked = rated.double().numpy(), np.array([1.0, 0.0, 0.0, 1.0, 0.0])

    def bce(prob, target):
        return -np.mean(target * np.log(prob) + (1 - target) * np.log(1 - prob))

    r = out["rating"].double().numpy() + model.mu_
    mse = np.sum(y * (r - rating.double().numpy()) ** 2) / y.sum()
    assert loss == pytest.approx(bce(p, y) + bce(p * q, liked) + mse, rel=1e-4)


# ----------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    "make", [lambda: fitted(MMoE), lambda: fitted(PLE),
             lambda: PLE(levels=1, shared_experts=1, task_experts=2, **SMALL)],
    ids=["MMoE", "PLE-2", "PLE-1"],
)  # fmt: skip
def test_gates_sum_to_one_per_sample_and_usage_sums_to_one(make):
    train = shared_signal()
    model = make()
    if not hasattr(model, "module_"):
        model.fit(train, seed=0)
    users, items = np.arange(train.n_users), np.arange(train.n_users) % train.n_items
    gates = model.outputs(users, items, ("interest", "rating"), gates=True)["gates"]
    for g in gates.values():
        assert (g >= 0).all()
        np.testing.assert_allclose(g.sum(1), 1.0, rtol=1e-6)
    usage = model.gate_usage(users, items)
    names = model.expert_names
    assert set(usage) == {"interest", "rating"}
    for task, u in usage.items():
        assert u.shape == (len(names),) and u.sum() == pytest.approx(1.0)
        if isinstance(model, PLE):  # a task's gate never sees the other task's own experts
            other = "rating" if task == "interest" else "interest"
            assert all(u[k] == 0 for k, n in enumerate(names) if n.startswith(other))
            assert all(u[k] > 0 for k, n in enumerate(names) if not n.startswith(other))
    if isinstance(model, MMoE):
        assert names == ("expert 0", "expert 1", "expert 2", "expert 3")
    else:
        n_task = model.params["task_experts"]
        assert len(names) == model.params["shared_experts"] + 2 * n_task


# ----------------------------------------------------------------------------- samples


def test_an_epoch_holds_every_rated_pair_with_its_rating_and_only_unseen_negatives():
    train, _ = checkerboard()
    model = SharedBottom(negatives=3, batch_size=50)
    model.seen_ = train.matrix(binary=True)
    model.n_items_ = train.n_items
    model.build(train, torch.Generator().manual_seed(0))
    batches = list(model.batches(torch.Generator().manual_seed(1)))
    assert len(batches[0][0]) == 50
    u, i, rated, rating = (t.numpy() for t in _epoch(model))
    pos = rated == 1
    got = sorted(zip(u[pos].tolist(), i[pos].tolist(), rating[pos].tolist(), strict=True))
    f = train.frame
    expected = sorted(zip(f["user"], f["item"], f["rating"], strict=True))
    assert got == expected
    dense = train.matrix(binary=True).toarray() > 0
    assert not dense[u[~pos], i[~pos]].any(), "a negative was an item the user has seen"
    assert (~pos).sum() == 3 * pos.sum() and (rating[~pos] == 0).all()
    again = _epoch(model)
    assert all(torch.equal(a, torch.from_numpy(b)) for a, b in zip(again, (u, i, rated, rating),
                                                                    strict=True))  # fmt: skip


# ----------------------------------------------------------------------------- weighting


def test_combine_losses_by_hand():
    losses = {"interest": torch.tensor(2.0), "rating": torch.tensor(3.0)}
    kinds = {"interest": "bce", "rating": "mse"}
    assert combine_losses(losses, kinds, None).item() == pytest.approx(5.0)
    s = torch.tensor([0.5, -1.0])
    expected = np.exp(-0.5) * 2 + 0.25 + 0.5 * np.exp(1.0) * 3 - 0.5
    assert combine_losses(losses, kinds, s).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_uncertainty_log_variances_are_learned_and_equal_has_none(cls):
    train = shared_signal()
    n_terms = 3 if cls is ESMM else 2
    learned = cls(**{**SMALL, "epochs": 3, "weighting": "uncertainty"}).fit(train, seed=0)
    log_vars = learned.module_.log_vars.detach().numpy()
    assert log_vars.shape == (n_terms,) and (np.abs(log_vars) > 1e-3).all()
    equal = cls(**{**SMALL, "epochs": 1}).fit(train, seed=0)
    assert equal.module_.log_vars is None
    assert not any("log_vars" in name for name, _ in equal.module_.named_parameters())
    assert learned.n_parameters == equal.n_parameters + n_terms
    with pytest.raises(ValueError, match="weighting"):
        cls(weighting="max").fit(train)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_training_reduces_the_joint_loss_on_a_fixed_epoch(cls):
    train = shared_signal()
    untrained = cls(**{**SMALL, "epochs": 0}).fit(train, seed=0)  # same init as below
    trained = fitted(cls)
    batch = _epoch(untrained, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(batch, _epoch(trained, seed=7), strict=True))
    with torch.no_grad():
        before = untrained.loss(untrained.module_, batch).item()
        after = trained.loss(trained.module_, batch).item()
    assert after < 0.5 * before, (before, after)


def test_single_task_networks_share_no_parameter():
    train = shared_signal()
    model = SingleTask(**{**SMALL, "epochs": 1}).fit(train, seed=0)
    nets = model.module_.nets
    ids = {t: {id(w) for w in nets[t].parameters()} for t in ("interest", "rating")}
    assert ids["interest"] and ids["rating"] and not ids["interest"] & ids["rating"]
    batch = _epoch(model)
    for task, other in (("rating", "interest"), ("interest", "rating")):
        model.module_.zero_grad(set_to_none=True)
        model.task_losses(model.module_, batch)[task].backward()
        assert all(w.grad is None or not w.grad.any() for w in nets[other].parameters())
        assert any(w.grad is not None and w.grad.any() for w in nets[task].parameters())
    # The contrast that makes this a test: in SharedBottom the rating loss moves the bottom.
    shared = SharedBottom(**{**SMALL, "epochs": 1}).fit(train, seed=0)
    shared.module_.zero_grad(set_to_none=True)
    shared.task_losses(shared.module_, _epoch(shared))["rating"].backward()
    assert shared.module_.bottom.first.layer.weight.grad.abs().sum() > 0
    assert shared.module_.towers["interest"].net[0].weight.grad is None


# ----------------------------------------------------------------------------- features


def test_features_use_what_exists_and_give_missing_values_their_own_index():
    train = shared_signal()
    feats = encode_features(train)
    # gender: levels F, M and the missing level (user 3).
    assert feats.user_levels == (3,)
    assert feats.user_codes[:3, 0].tolist() == [0, 1, 0] and feats.user_codes[3, 0] == 2
    # items: genres drama / even / odd + decades 1990 / 2000 / 2010; items 0 and 5 lack a year.
    assert feats.item_features.shape == (train.n_items, 6)
    assert feats.item_features[0].sum() == 1 and feats.item_features[1].sum() == 3
    none = encode_features(train, use=False)
    assert none.user_codes.shape == (train.n_users, 0) and none.item_features.shape[1] == 0


def test_no_user_features_and_tags_on_two_items_or_more():
    """ml-latest-small's shape: an empty users frame and '|'-joined tags."""
    base = shared_signal()
    tags = [
        "funny|dark" if i < 3 else {3: "dark", 4: "rare"}.get(i, "") for i in range(base.n_items)
    ]
    items = pd.DataFrame({"title": "x", "genres": "(no genres listed)", "tags": tags})
    train = Interactions(base.frame, base.n_users, base.n_items, pd.DataFrame(index=range(40)),
                         items)  # fmt: skip
    feats = encode_features(train)
    assert feats.user_codes.shape == (train.n_users, 0)
    assert feats.item_features.shape == (train.n_items, 2)  # "dark" (4), "funny" (3); no "rare"
    assert feats.item_features[:, 0].sum() == 4 and feats.item_features[:, 1].sum() == 3
    model = MMoE(**{**SMALL, "epochs": 2}).fit(train, seed=0)
    assert model.module_.encoder.user_dim == 8 and model.module_.encoder.item_dim == 16
    assert np.isfinite(model.score(np.arange(5))).all()


# ----------------------------------------------------------------------------- selection


def test_joint_score_by_hand():
    from metarec_lib.models.multitask import joint_score

    assert joint_score(0.2, 0.9, 0.1, 1.08) == pytest.approx(0.5 * (2.0 + 1.2))
    assert joint_score(0.1, 1.0, 0.1, 1.0) == pytest.approx(1.0)  # as good as trivial
    assert joint_score(0.05, 1.0, 0.0, 1.0) == pytest.approx(0.5 * (5.0 + 1.0))  # floored


def test_early_stopping_keeps_the_epoch_with_the_best_joint_score():
    from metarec_lib.models.multitask import NDCG_FLOOR

    data = shared_signal(n_users=60)
    frame = data.frame.sample(frac=1.0, random_state=0)
    cut = int(0.8 * len(frame))
    part = functools.partial(Interactions, n_users=data.n_users, n_items=data.n_items,
                             users=data.users, items=data.items)  # fmt: skip
    train, valid = part(frame.iloc[:cut]), part(frame.iloc[cut:])
    model = SharedBottom(**{**SMALL, "epochs": 6, "patience": 2}).fit(train, valid=valid, seed=0)
    scores = dict(model.history_)
    assert model.best_epoch_ == max(scores, key=scores.get)
    assert model.validation_score(valid) == pytest.approx(scores[model.best_epoch_], rel=1e-6)
    log = model.train_log_.dropna(subset=["valid_score"])
    assert log["valid_score"].tolist() == pytest.approx(list(scores.values()))
    assert NDCG_FLOOR > 0 and all(s > 0 for s in scores.values())


@pytest.mark.parametrize("cls", (SharedBottom, MMoE, PLE, ESMM), ids=lambda c: c.name)
def test_whole_table_sides_give_the_per_row_outputs(cls):
    """A batch longer than the catalogue takes the gathered-table path of `PairEncoder.sides`;
    the same pairs scored in short batches (per row) agree, and asking for one task of the
    fused first layers gives that task's full-network output."""
    train = shared_signal()
    model = fitted(cls)
    users = np.repeat(np.arange(train.n_users), train.n_items)
    items = np.tile(np.arange(train.n_items), train.n_users)
    module = model.module_
    with torch.no_grad():
        u, i = torch.from_numpy(users), torch.from_numpy(items)
        whole = module(u, i)
        rows = [module(u[s : s + 8], i[s : s + 8]) for s in range(0, len(u), 8)]
        interest_only = module(u, i, ("interest",))
    for task in ("interest", "rating"):
        per_row = torch.cat([r[task] for r in rows])
        torch.testing.assert_close(whole[task], per_row, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(interest_only["interest"], whole["interest"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_scoring_blocks_reuse_the_item_side_and_give_the_same_scores(cls, monkeypatch):
    """`score` in blocks of one user computes each first layer's item half once (not once a
    block), and gives bitwise the scores of one block per user computed without the memo."""
    from metarec_lib.models import multitask

    train = shared_signal()
    model = fitted(cls)
    monkeypatch.setattr(model, "score_floats", 1)  # one user a block
    calls = []
    real_half = multitask.half
    monkeypatch.setattr(multitask, "half", lambda x, w: calls.append(x) or real_half(x, w))
    with torch.no_grad():
        items = torch.arange(train.n_items)[None, :]
        one_by_one = torch.cat([model.module_(torch.tensor([[u]]), items, ("interest",))["interest"]
                                for u in range(train.n_users)])  # fmt: skip

    def broadcast_halves() -> int:  # first-layer halves of a (1, n_items, d) input
        return sum(isinstance(x, torch.Tensor) and x.shape[:2] == (1, train.n_items) for x in calls)

    without = broadcast_halves()  # per block: the item side, and (PLE) upper layers' inputs
    calls.clear()
    scores = model.score(np.arange(train.n_users))
    np.testing.assert_array_equal(scores, one_by_one.numpy())
    saved, blocks = without - broadcast_halves(), train.n_users
    assert saved > 0 and saved % (blocks - 1) == 0  # the item halves, once instead of per block
    assert all(m.memo is None for m in model.module_.modules() if hasattr(m, "memo"))


def test_mix_without_gradients_matches_the_softmax_with_them():
    """Scoring mixes the experts with its own softmax (no gradients): the same weights as
    torch's to rounding, rows summing to 1, no overflow at logits of 1e4, the same mixture."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 3, generator=gen) * 5
    logits[0, 0] = torch.tensor([1e4, 1e4 - 1.0, -1e4])
    experts = [torch.randn(4, 6, 2, generator=gen) for _ in range(3)]
    want_w, want_mix = _mix(logits, experts)
    assert want_w.requires_grad is False and torch.is_grad_enabled()
    before = logits.clone()
    with torch.no_grad():
        got_w, got_mix = _mix(logits, experts)
    assert torch.equal(logits, before)  # the logits are not overwritten
    torch.testing.assert_close(got_w, want_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_mix, want_mix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w.sum(-1), torch.ones(4, 6))
    e = np.exp(np.array([0.0, -1.0]))
    np.testing.assert_allclose(got_w[0, 0].numpy(), [*(e / e.sum()), 0.0], rtol=1e-6)


def test_mix_without_gradients_sums_the_same_products_and_leaves_the_experts():
    """Scoring accumulates the mixture in place: bitwise the sum of w_k * expert_k taken in
    order, and the experts (which every task's gate reads) are not overwritten."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 4, generator=gen)
    experts = [torch.randn(3, 5, 6, generator=gen) for _ in range(4)]
    copies = [e.clone() for e in experts]
    with torch.no_grad():
        w, mixed = _mix(logits, experts)
    want = w[..., :1] * copies[0]
    for k in range(1, 4):
        want = want + w[..., k : k + 1] * copies[k]
    assert torch.equal(mixed, want)
    assert all(torch.equal(e, c) for e, c in zip(experts, copies, strict=True))


@pytest.mark.parametrize("cls", MODELS_, ids=lambda c: c.name)
def test_outputs_asked_together_equal_outputs_asked_one_at_a_time(cls):
    """Without gradients the activations work in place; no task's output may change another's
    (the experts and first-layer outputs are read by several gates and heads)."""
    model = fitted(cls)
    users, items = torch.tensor([[0], [3], [7]]), torch.arange(model.n_items_)[None, :]
    module = model.module_
    with torch.no_grad():
        together = module(users, items)
        alone = {t: module(users, items, (t,))[t] for t in together}
    for task, value in together.items():
        assert torch.equal(value, alone[task]), task
