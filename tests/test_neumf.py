import os

import numpy as np
import pytest
import torch

from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.neumf import NeuMF, NeuMFModule, sample_negatives
from metarec_lib.models.registry import MODELS
from metarec_lib.testing import (
    check_recommender,
    check_space_holds_defaults,
    checkerboard,
    seen_with_edge_users,
)

# Few epochs: longer runs memorise the sampled negatives, which on the checkerboard include the
# held-out liked item (one in six draws), and push it down (measured: 14-17 of 20 users hit).
SMALL = dict(factors=8, mlp_layers=2, batch_size=64, learning_rate=0.01, epochs=10)


def _module(n_users=3, n_items=5, factors=4, mlp_layers=2, seed=0) -> NeuMFModule:
    return NeuMFModule(n_users, n_items, factors, mlp_layers, 0.0,
                       torch.Generator().manual_seed(seed))  # fmt: skip


def test_neumf_passes_the_contract():
    check_recommender(lambda: NeuMF(**SMALL))


def test_scoring_all_items_equals_scoring_each_pair():
    module = _module(n_users=3, n_items=5, factors=4, mlp_layers=3)
    with torch.no_grad():
        for w in module.parameters():  # move the biases off zero, so they are checked too
            w.add_(0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
        users = torch.tensor([2, 0])
        full = module.score_all(users)
        pairs = module(users.repeat_interleave(5), torch.arange(5).repeat(2)).reshape(2, 5)
    assert full.shape == (2, 5)
    torch.testing.assert_close(full, pairs, rtol=1e-5, atol=1e-6)


def test_mlp_tower_halves_down_to_the_predictive_factors():
    module = _module(factors=4, mlp_layers=3)
    assert module.mlp_users.embedding_dim == 16 and module.gmf_users.embedding_dim == 4
    widths = [layer.out_features for layer in module.tower if isinstance(layer, torch.nn.Linear)]
    assert module.first.in_features == 32 and module.first.out_features == 16
    assert widths == [8, 4] and module.out.in_features == 8


def test_a_training_step_reduces_the_loss_on_a_tiny_batch():
    module = _module()
    model = NeuMF()
    batch = (torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2, 3, 4]),
             torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))  # fmt: skip
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    before = model.loss(module, batch).item()
    assert before == pytest.approx(np.log(2), abs=0.05)  # near-zero logits at initialisation
    for _ in range(3):
        model.step(module, batch, optimiser)
        after = model.loss(module, batch).item()
        assert after < before
        before = after


def test_negatives_are_never_seen_items():
    seen = seen_with_edge_users()
    users = torch.from_numpy(np.repeat(np.arange(30), 20))
    u, j = (t.numpy() for t in sample_negatives(seen, users, torch.Generator().manual_seed(3)))
    assert not (seen.toarray()[u, j] > 0).any(), "a negative was an item the user has seen"
    assert 0 not in set(u.tolist())  # nothing to draw for the user who saw everything
    assert (j[u == 1] == 5).all() and (u == 1).sum() >= 15  # 20 draws, each kept w.p. 0.99
    assert ((u >= 2).sum()) == 28 * 20  # nobody else loses a draw


def test_an_epoch_holds_every_pair_once_and_the_asked_number_of_unseen_negatives():
    train, _ = checkerboard()
    model = NeuMF(negatives=3, batch_size=50)
    model.seen_ = train.matrix(binary=True)
    model.build(train, torch.Generator().manual_seed(0))
    batches = list(model.batches(torch.Generator().manual_seed(1)))
    assert len(batches[0][0]) == 50
    u, i, y = (torch.cat(parts).numpy() for parts in zip(*batches, strict=True))
    dense = train.matrix(binary=True).toarray() > 0
    pos = y == 1
    rows, cols = np.nonzero(dense)
    expected = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert sorted(zip(u[pos].tolist(), i[pos].tolist(), strict=True)) == expected
    assert not dense[u[~pos], i[~pos]].any()
    assert (~pos).sum() == 3 * pos.sum()  # every user has unseen items: nothing dropped
    again = list(model.batches(torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for x, z in zip(batches, again, strict=True)
               for a, b in zip(x, z, strict=True))  # fmt: skip


def test_seeds_change_the_model_and_parameters_are_counted():
    train, _ = checkerboard()
    a = NeuMF(factors=4, epochs=2).fit(train, seed=0)
    b = NeuMF(factors=4, epochs=2).fit(train, seed=1)
    assert not np.allclose(a.score([0, 1]), b.score([0, 1]))
    # GMF 4 + MLP 8 per user and item; first layer 16 -> 8, tower 8 -> 4, output 8 -> 1.
    n, m = train.n_users, train.n_items
    assert a.n_parameters == (n + m) * 12 + (16 * 8 + 8) + (8 * 4 + 4) + (8 + 1)


def test_registered_deep_model_with_a_space_containing_the_defaults():
    assert MODELS["NeuMF"] is NeuMF and NeuMF.family == "deep"
    check_space_holds_defaults(NeuMF)


@pytest.mark.skipif(
    not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set (MovieLens)"
)
def test_beats_most_popular_on_ml100k(ml100k_holdout):
    from metarec_lib.models.popularity import MostPop

    train, test = ml100k_holdout
    pop = ndcg_on(MostPop().fit(train), test)
    neumf = ndcg_on(NeuMF(epochs=4).fit(train, seed=0), test)
    assert neumf > pop + 0.1, (neumf, pop)
