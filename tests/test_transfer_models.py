import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from metarec_lib.data.dataset import Interactions, SourceDomain
from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.registry import MODELS
from metarec_lib.models.transfer import (
    EMCDR,
    FrozenFinetune,
    JointTraining,
    PretrainFinetune,
    SourceOnly,
    TargetOnly,
    clear_pretraining_cache,
    fit_mf,
)
from metarec_lib.testing import check_recommender, check_space_holds_defaults, checkerboard

METHODS = (TargetOnly, SourceOnly, PretrainFinetune, FrozenFinetune, JointTraining, EMCDR)
NEED_SOURCE = METHODS[1:]
# The checkerboard is rank 2: a wider model (W adds capacity) memorises the sampled negatives,
# among them the held-out item (measured: factors 8 puts it in the top 3 for 85-95% of users).
BOARD = dict(factors=4, reg=0.05, learning_rate=0.05, epochs=30)
FAST = dict(factors=8, epochs=20, batch_size=256, learning_rate=0.02)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- data


def _frame(pairs) -> pd.DataFrame:
    frame = pd.DataFrame(list(pairs), columns=["user", "item"])
    frame["rating"] = 5.0
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    return frame


def board_source(n_target_users: int = 20, n_target_items: int = 12) -> SourceDomain:
    """A second checkerboard (24 x 16, another held-out draw) whose first 20 users and 12 items
    are the target's, same parity; the last 4 of each are source-only."""
    source, _ = checkerboard(n_users=24, n_items=16, seed=1)
    users = np.r_[np.arange(n_target_users), np.full(24 - n_target_users, -1)]
    items = np.r_[np.arange(n_target_items), np.full(16 - n_target_items, -1)]
    return SourceDomain(source, users, items)


def with_board_source(train: Interactions) -> Interactions:
    return dataclasses.replace(train, source=board_source(train.n_users, train.n_items))


def partial_source(seed: int = 0) -> SourceDomain:
    """Random source (30 users x 16 items, density 0.4): source users 0-9 are target users
    (shuffled), items 0-5 target items (shuffled); the rest are source-only."""
    rng = np.random.default_rng(seed)
    dense = rng.random((30, 16)) < 0.4
    rows, cols = np.nonzero(dense)
    source = Interactions(_frame(zip(rows, cols, strict=True)), 30, 16)
    users = np.r_[rng.permutation(20)[:10], np.full(20, -1)]
    items = np.r_[rng.permutation(12)[:6], np.full(10, -1)]
    return SourceDomain(source, users, items)


def low_rank(cold_from: int | None = None, warm_rows: int = 2, seed: int = 0):
    """(target train with an identical source attached, target test) over 200 users x 100
    items: each user likes the top 30 items of a rank-3 score; 12 of them (random) are source
    rows, `warm_rows` target train rows (users >= `cold_from`: one) and the rest held out (only
    the cold users' rows when `cold_from` is given). Users and items are shared one-to-one; no
    pair is in two parts."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 200, 100
    liked = np.argsort(-(rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))), 1)
    source, train, test = [], [], []
    for u in range(n_users):
        order = rng.permutation(liked[u, :30])
        cold = cold_from is not None and u >= cold_from
        k = 12 + (1 if cold else warm_rows)
        source += [(u, i) for i in order[:12]]
        train += [(u, i) for i in order[12:k]]
        if cold_from is None or cold:
            test += [(u, i) for i in order[k:]]
    domain = SourceDomain(Interactions(_frame(source), n_users, n_items),
                          np.arange(n_users), np.arange(n_items))  # fmt: skip
    return (Interactions(_frame(train), n_users, n_items, source=domain),
            Interactions(_frame(test), n_users, n_items))  # fmt: skip


def board_with_partial_source() -> Interactions:
    train, _ = checkerboard()
    return dataclasses.replace(train, source=partial_source())


# ----------------------------------------------------------------------------- contract


class _OnBoardSource:
    """`fit` attaches `board_source` when the data has none, so `check_recommender` (whose
    checkerboard carries no source) runs a transfer model with a source."""

    def fit(self, train, *, valid=None, seed=0):
        if train.source is None:
            train = with_board_source(train)
        return super().fit(train, valid=valid, seed=seed)


class SourceOnlyOnBoard(_OnBoardSource, SourceOnly):
    pass


class PretrainFinetuneOnBoard(_OnBoardSource, PretrainFinetune):
    pass


class FrozenFinetuneOnBoard(_OnBoardSource, FrozenFinetune):
    pass


class JointTrainingOnBoard(_OnBoardSource, JointTraining):
    pass


class EMCDROnBoard(_OnBoardSource, EMCDR):
    pass


ON_BOARD = (TargetOnly, SourceOnlyOnBoard, PretrainFinetuneOnBoard, FrozenFinetuneOnBoard,
            JointTrainingOnBoard, EMCDROnBoard)  # fmt: skip


@pytest.mark.parametrize("cls", ON_BOARD, ids=lambda c: c.name)
def test_every_method_passes_the_contract_with_a_source(cls):
    check_recommender(lambda: cls(**BOARD))


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_registered_transfer_model_with_a_space_containing_the_defaults(cls):
    assert MODELS[cls.name] is cls and cls.family == "transfer"
    assert 2 <= len(cls.space) <= 3
    check_space_holds_defaults(cls)


@pytest.mark.parametrize("cls", NEED_SOURCE, ids=lambda c: c.name)
def test_every_method_but_target_only_needs_a_source(cls):
    train, _ = checkerboard()
    with pytest.raises(ValueError, match=rf"{cls.name}: train\.source is None"):
        cls(**BOARD).fit(train)


def test_target_only_ignores_the_source_and_seeds_matter():
    train, _ = checkerboard()
    plain = TargetOnly(**BOARD).fit(train, seed=0).score(np.arange(20))
    sourced = TargetOnly(**BOARD).fit(with_board_source(train), seed=0).score(np.arange(20))
    np.testing.assert_array_equal(plain, sourced)
    other = TargetOnly(**BOARD).fit(train, seed=1).score(np.arange(20))
    assert not np.allclose(plain, other)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("user_to_target", np.arange(23), r"shape \(23,\)"),
        ("item_to_target", np.r_[np.arange(15), 12], r"outside \[-1, 12\)"),
        ("user_to_target", np.r_[np.arange(20), 3, -1, -1, -1], "two source users"),
        ("item_to_target", np.arange(16) / 2, "float64"),
    ],
)
def test_inconsistent_entity_maps_are_rejected(field, value, problem):
    train, _ = checkerboard()
    source = dataclasses.replace(board_source(), **{field: value})
    with pytest.raises(ValueError, match=rf"PretrainFinetune: source\.{field}.*{problem}"):
        PretrainFinetune(**BOARD).fit(dataclasses.replace(train, source=source))


# ----------------------------------------------------------------------------- transfer


def test_pretraining_on_an_identical_source_beats_target_only_on_two_rows_per_user():
    """2 target rows per user (400 of 6000 liked pairs): the source's 12 per user carry the
    structure. Measured NDCG@10 on the held-out rows, seeds 0/1/2: TargetOnly 0.22/0.19/0.22,
    PretrainFinetune 0.46/0.46/0.45."""
    train, test = low_rank(seed=0)
    target = ndcg_on(TargetOnly(**FAST).fit(train, seed=0), test)
    pretrained = ndcg_on(PretrainFinetune(**FAST).fit(train, seed=0), test)
    assert pretrained > target + 0.15, (pretrained, target)


def test_pretrain_finetune_starts_from_the_source_model():
    """With no target epoch, the model is its start: the source model's rows (and bias, W) for
    shared entities, the usual random init (TargetOnly's, same seed) elsewhere."""
    train = board_with_partial_source()
    source = train.source
    model = PretrainFinetune(**{**BOARD, "epochs": 0}).fit(train, seed=3)
    pretrained = fit_mf(
        source.interactions, model.params, seed=3, epochs=model.params["source_epochs"]
    )
    fresh = TargetOnly(**{**BOARD, "epochs": 0}).fit(train, seed=3).module_
    start, src = model.module_, pretrained.module_
    np.testing.assert_array_equal(model.source_model_.score(np.arange(30)),
                                  pretrained.score(np.arange(30)))  # fmt: skip
    su, tu = np.flatnonzero(source.user_to_target >= 0), source.user_to_target[:10]
    si, ti = np.flatnonzero(source.item_to_target >= 0), source.item_to_target[:6]
    torch.testing.assert_close(start.users[tu], src.users[su], rtol=0, atol=0)
    torch.testing.assert_close(start.items[ti], src.items[si], rtol=0, atol=0)
    torch.testing.assert_close(start.bias[ti], src.bias[si], rtol=0, atol=0)
    torch.testing.assert_close(start.top, src.top, rtol=0, atol=0)
    assert not torch.equal(src.top, torch.eye(4))  # W was trained on the source
    other_users = np.setdiff1d(np.arange(20), tu)
    other_items = np.setdiff1d(np.arange(12), ti)
    torch.testing.assert_close(start.users[other_users], fresh.users[other_users])
    torch.testing.assert_close(start.items[other_items], fresh.items[other_items])
    assert (start.bias[other_items] == 0).all()


def test_frozen_finetune_keeps_the_transferred_rows_and_trains_the_rest():
    train = board_with_partial_source()
    source = train.source
    su, tu = np.flatnonzero(source.user_to_target >= 0), source.user_to_target[:10]
    si, ti = np.flatnonzero(source.item_to_target >= 0), source.item_to_target[:6]
    frozen = FrozenFinetune(**BOARD).fit(train, seed=0)
    free = PretrainFinetune(**BOARD).fit(train, seed=0)
    for model, kept in ((frozen, True), (free, False)):
        src, out = model.source_model_.module_, model.module_
        assert torch.equal(out.users[tu], src.users[su]) is kept
        assert torch.equal(out.items[ti], src.items[si]) is kept
        assert not torch.equal(out.top, src.top)  # W trains
        assert not torch.equal(out.bias[ti], src.bias[si])  # biases train
    start = PretrainFinetune(**{**BOARD, "epochs": 0}).fit(train, seed=0).module_
    other = np.setdiff1d(np.arange(20), tu)
    assert not torch.equal(frozen.module_.users[other], start.users[other])  # the rest trains


def test_source_only_uses_no_target_row_but_masks_the_seen_items():
    train_a, _ = checkerboard(seed=0)
    train_b, _ = checkerboard(seed=2)  # other held-out items: other training rows
    a = SourceOnly(**BOARD).fit(with_board_source(train_a), seed=0)
    b = SourceOnly(**BOARD).fit(with_board_source(train_b), seed=0)
    users = np.arange(20)
    np.testing.assert_array_equal(a.score(users), b.score(users))
    for model, train in ((a, train_a), (b, train_b)):
        top, _ = model.recommend(users, 3)
        seen = train.matrix(binary=True)
        assert not any(set(top[u]) & set(seen[u].indices) for u in users)


def test_source_only_gives_unshared_entities_zero_parameters():
    """Shared items only: every user scores every item by its source bias (0 if unshared).
    Shared users only: no target item has a parameter, every score is 0."""
    train, _ = checkerboard()
    source = board_source()
    items_only = dataclasses.replace(source, user_to_target=np.full(24, -1))
    model = SourceOnly(**BOARD).fit(dataclasses.replace(train, source=items_only), seed=0)
    bias = model.source_model_.module_.bias.detach().numpy()
    expected = bias[:12]  # source items 0-11 are target items 0-11
    np.testing.assert_allclose(model.score(np.arange(20)), np.tile(expected, (20, 1)), atol=1e-7)
    users_only = dataclasses.replace(source, item_to_target=np.full(16, -1))
    model = SourceOnly(**BOARD).fit(dataclasses.replace(train, source=users_only), seed=0)
    np.testing.assert_array_equal(model.score(np.arange(20)), 0.0)


def test_joint_training_has_one_row_per_entity_of_the_union():
    train = board_with_partial_source()  # 20 + 20 source-only users, 12 + 10 items
    model = JointTraining(**{**BOARD, "epochs": 1}).fit(train, seed=0)
    n_users, n_items, f = 40, 22, BOARD["factors"]
    assert model.module_.users.shape == (n_users, f) and model.module_.items.shape == (n_items, f)
    assert model.n_parameters == (n_users + n_items) * f + n_items + f * f
    assert model.score(np.arange(20)).shape == (20, 12)


def test_joint_training_draws_each_negative_from_its_own_domain():
    train = board_with_partial_source()
    source = train.source
    model = JointTraining(**{**BOARD, "epochs": 0, "source_weight": 0.5}).fit(train, seed=0)
    u, i, j, w = (torch.cat(p).numpy() for p in
                  zip(*model.batches(torch.Generator().manual_seed(1)), strict=True))  # fmt: skip
    rows_u = np.r_[source.user_to_target[:10], np.arange(20, 40)]  # union row of source users
    rows_i = np.r_[source.item_to_target[:6], np.arange(12, 22)]
    src_seen = np.zeros((40, 22), bool)
    dense = source.interactions.matrix(binary=True).toarray() > 0
    src_seen[np.ix_(rows_u, rows_i)] = dense
    tgt_seen = train.matrix(binary=True).toarray() > 0
    s, t = w == 0.5, w == 1.0
    assert s.sum() == dense.sum() and t.sum() == tgt_seen.sum() and (s | t).all()
    assert src_seen[u[s], i[s]].all() and not src_seen[u[s], j[s]].any()
    assert np.isin(j[s], rows_i).all()  # a source negative is a source item
    assert (u[t] < 20).all() and (j[t] < 12).all() and tgt_seen[u[t], i[t]].all()
    assert not tgt_seen[u[t], j[t]].any()


# ----------------------------------------------------------------------------- EMCDR


def test_emcdr_maps_source_to_target_and_helps_cold_users():
    """Users 0-99 have 10 target rows (warm), 100-199 one (cold); the held-out rows are the
    cold users'. Measured NDCG@10 (seeds 0/1/2): TargetOnly 0.34/0.38/0.34, EMCDR
    0.53/0.54/0.47; user-mapping MSE 0.59 -> 0.10 on the warm pairs."""
    train, test = low_rank(cold_from=100, warm_rows=10, seed=0)
    model = EMCDR(**FAST).fit(train, seed=0)
    warm, cold = np.arange(100), np.arange(100, 200)
    np.testing.assert_array_equal(model.replaced_["users"], cold)
    f = model.mappings_["users"]
    with torch.no_grad():
        x = model.source_model_.module_.users
        y = model.module_.users[warm]
        fitted = torch.nn.functional.mse_loss(f(x[warm]), y).item()
        torch.testing.assert_close(model.module_.users[cold], f(x[cold]))
    before, after = model.mapping_mse_["users"]
    assert after == pytest.approx(fitted, rel=1e-5)
    assert after < 0.5 * before
    assert after < 0.5 * ((y - y.mean(0)) ** 2).mean().item()  # beats the mean vector
    target = ndcg_on(TargetOnly(**FAST).fit(train, seed=0), test)
    assert ndcg_on(model, test) > target + 0.1


@pytest.mark.parametrize("case", ["nothing shared", "every shared entity cold"])
def test_emcdr_without_warm_shared_entities_is_target_only(case):
    train, _ = checkerboard()
    params = dict(BOARD)
    if case == "nothing shared":
        source = dataclasses.replace(board_source(), user_to_target=np.full(24, -1),
                                     item_to_target=np.full(16, -1))  # fmt: skip
    else:
        source, params["min_target"] = board_source(), 1000
    model = EMCDR(**params).fit(dataclasses.replace(train, source=source), seed=4)
    assert model.mappings_ == {} and model.replaced_ == {}
    target = TargetOnly(**BOARD).fit(train, seed=4)
    np.testing.assert_array_equal(model.score(np.arange(20)), target.score(np.arange(20)))


def test_an_emcdr_fit_does_not_change_the_remembered_target_network_others_start_from():
    train, _ = low_rank(cold_from=100, warm_rows=10, seed=0)
    clear_pretraining_cache()
    users = np.arange(train.n_users)
    fresh = EMCDR(**FAST, min_target=2).fit(train, seed=0).score(users)
    clear_pretraining_cache()
    first = EMCDR(**FAST, min_target=10, mapping="linear").fit(train, seed=0)
    before = first.score(users)
    again = EMCDR(**FAST, min_target=2).fit(train, seed=0)  # reuses the remembered target
    np.testing.assert_array_equal(again.score(users), fresh)
    np.testing.assert_array_equal(first.score(users), before)  # and left the first one alone
    target = fit_mf(train, EMCDR(**FAST).params, seed=0)  # remembered: as TargetOnly fits it
    np.testing.assert_array_equal(target.score(users),
                                  TargetOnly(**FAST).fit(train, seed=0).score(users))  # fmt: skip


def test_emcdr_rejects_an_unknown_mapping():
    with pytest.raises(ValueError, match="EMCDR: mapping='cubic'"):
        EMCDR(**{**BOARD, "mapping": "cubic"}).fit(with_board_source(checkerboard()[0]))


def test_methods_at_one_fraction_and_seed_pretrain_on_the_source_once():
    """FrozenFinetune and EMCDR after PretrainFinetune (same base hyperparameters and seed)
    reuse its source model, are charged its time, and end exactly where a fresh pretraining
    leads; another seed pretrains again."""
    train = board_with_partial_source()
    clear_pretraining_cache()
    first = PretrainFinetune(**BOARD).fit(train, seed=3)
    frozen = FrozenFinetune(**BOARD).fit(train, seed=3)
    emcdr = EMCDR(**BOARD).fit(train, seed=3)
    assert first.reused_seconds_ == 0.0
    assert frozen.reused_seconds_ > 0 and emcdr.reused_seconds_ == frozen.reused_seconds_
    assert frozen.source_model_.module_ is first.source_model_.module_
    other = FrozenFinetune(**BOARD).fit(train, seed=4)
    assert other.reused_seconds_ == 0.0
    clear_pretraining_cache()
    alone = FrozenFinetune(**BOARD).fit(train, seed=3)
    assert alone.reused_seconds_ == 0.0
    np.testing.assert_array_equal(alone.score(np.arange(20)), frozen.score(np.arange(20)))
