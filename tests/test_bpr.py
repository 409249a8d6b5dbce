import os

import numpy as np
import pytest
import torch

from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.bpr import BPR, BPRModule, sample_triples
from metarec_lib.models.registry import get_model
from metarec_lib.testing import (
    check_recommender,
    checkerboard,
    other_parity_valid,
    seen_with_edge_users,
)


def _module(n_users=3, n_items=4, factors=2, reg=0.0, seed=0):
    return BPRModule(n_users, n_items, factors, reg=reg, item_bias=True, init_std=0.1,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip


def test_bpr_passes_the_contract():
    check_recommender(lambda: BPR(factors=8, learning_rate=0.01, epochs=100))


def test_default_bpr_learns_the_checkerboard():
    check_recommender(BPR)


def test_loss_by_hand():
    module = _module(n_users=1, n_items=2, factors=2, reg=0.1)
    with torch.no_grad():
        module.users.copy_(torch.tensor([[1.0, 0.0]]))
        module.items.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        module.bias.copy_(torch.tensor([0.5, 0.0]))
    loss = module(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    # x_ui - x_uj = (1 + 0.5) - (0 + 0) = 1.5; penalty 1 + 2 + 1 + 0.25 + 0 = 4.25.
    assert loss.item() == pytest.approx(np.log1p(np.exp(-1.5)) + 0.1 * 4.25, rel=1e-6)


def test_a_training_step_reduces_the_loss_on_a_tiny_batch():
    module = _module(reg=0.01)
    u, i, j = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 2])
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    before = module(u, i, j).item()
    for _ in range(3):
        optimiser.zero_grad()
        module(u, i, j).backward()
        optimiser.step()
        after = module(u, i, j).item()
        assert after < before
        before = after


def test_triples_cover_each_training_pair_once_with_unseen_negatives():
    seen = seen_with_edge_users()
    u, i, j = (t.numpy() for t in sample_triples(seen, torch.Generator().manual_seed(3)))
    dense = seen.toarray() > 0
    assert not dense[u, j].any(), "a negative was an item the user has seen"
    assert (i != j).all()
    # Every pair appears once, except user 0's (no negative exists) and a few of user 1's.
    pairs = set(zip(u.tolist(), i.tolist(), strict=True))
    assert len(pairs) == len(u)
    coo = seen.tocoo()
    expected = {(a, b) for a, b in zip(coo.row.tolist(), coo.col.tolist(), strict=True) if a > 1}
    assert expected <= pairs and 0 not in set(u.tolist())
    assert (j[u == 1] == 5).all() and (u == 1).sum() >= 8  # 11 pairs, each kept w.p. 0.99


def test_triples_are_deterministic_for_a_seed():
    seen = seen_with_edge_users()
    a = sample_triples(seen, torch.Generator().manual_seed(5))
    b = sample_triples(seen, torch.Generator().manual_seed(5))
    c = sample_triples(seen, torch.Generator().manual_seed(6))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


def test_seeds_change_the_model_and_rerun_reproduces_it():
    train, _ = checkerboard()
    a = BPR(factors=4, epochs=3).fit(train, seed=0)
    b = BPR(factors=4, epochs=3).fit(train, seed=0)
    c = BPR(factors=4, epochs=3).fit(train, seed=1)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert not np.allclose(a.item_factors_, c.item_factors_)
    assert a.n_parameters == (train.n_users + train.n_items) * 4 + train.n_items


def test_training_loss_falls_and_bias_can_be_switched_off():
    train, _ = checkerboard()
    model = BPR(factors=8, learning_rate=0.02, epochs=30, item_bias=False).fit(train)
    losses = [loss for _, loss in model.loss_history_]
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]
    np.testing.assert_array_equal(model.item_bias_, 0.0)
    assert model.n_parameters == (train.n_users + train.n_items) * 8


def test_early_stopping_keeps_the_best_epoch():
    train, _ = checkerboard()
    valid = other_parity_valid(train)
    model = BPR(factors=8, learning_rate=0.05, epochs=40, eval_every=2, patience=3)
    model.fit(train, valid=valid, seed=0)
    epochs = [e for e, _ in model.history_]
    values = [v for _, v in model.history_]
    assert epochs == list(range(2, 2 * len(epochs) + 1, 2))
    # Validation gets worse as the checkerboard is learnt: stop after `patience` more.
    assert epochs[-1] < 40
    assert model.best_epoch_ == epochs[int(np.argmax(values))] == epochs[-4]
    assert ndcg_on(model, valid) == pytest.approx(max(values))
    assert BPR(factors=4, epochs=2).fit(train).best_epoch_ is None


def test_registered_with_a_space_containing_the_defaults():
    model = get_model("BPR")
    assert isinstance(model, BPR) and model.family == "collaborative"
    assert BPR.defaults["factors"] in BPR.space["factors"].values
    for key in ("learning_rate", "reg"):
        assert BPR.space[key].low <= BPR.defaults[key] <= BPR.space[key].high


@pytest.mark.skipif(
    not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set (MovieLens)"
)
def test_beats_most_popular_on_ml100k(ml100k_holdout):
    from metarec_lib.models.popularity import MostPop

    train, test = ml100k_holdout
    pop = ndcg_on(MostPop().fit(train), test)
    bpr = ndcg_on(BPR(epochs=8, learning_rate=0.01).fit(train, seed=0), test)
    assert bpr > pop + 0.1, (bpr, pop)
