import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.registry import MODELS
from metarec_lib.models.sasrec import SASRec, SASRecModule, unseen_negatives
from metarec_lib.models.sequences import PAD
from metarec_lib.testing import check_recommender

SMALL = {"hidden": 16, "max_len": 10, "epochs": 40, "batch_size": 64, "learning_rate": 0.01}


def cyclic(n_users: int = 30, n_items: int = 12, seed: int = 0) -> tuple[Interactions, np.ndarray]:
    """Users walk the items in a cycle (i -> i + 1 mod n_items) from a random start for 4-9
    steps; the next item, (last + 1) mod n_items, is unseen. Returns (train, next item)."""
    rng = np.random.default_rng(seed)
    rows, nxt = [], np.empty(n_users, np.int64)
    for u in range(n_users):
        start, length = int(rng.integers(n_items)), int(rng.integers(4, 10))
        items = (start + np.arange(length)) % n_items
        rows += [(u, int(i), 5.0, t) for t, i in enumerate(items)]
        nxt[u] = (items[-1] + 1) % n_items
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return Interactions(frame, n_users, n_items), nxt


def module(n_items: int = 9, max_len: int = 8, dropout: float = 0.0, seed: int = 0):
    return SASRecModule(n_items + 1, n_items, max_len=max_len, hidden=16, blocks=2, heads=2,
                        dropout=dropout, generator=torch.Generator().manual_seed(seed))  # fmt: skip


def fitted(**params) -> SASRec:
    """A SASRec with `build` run on the cyclic data and its module, ready for `loss`."""
    train, _ = cyclic()
    model = SASRec(**{**SMALL, **params})
    model.seen_, model.n_items_ = train.matrix(binary=True), train.n_items
    model.module_ = model.build(train, torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_contract(loss):
    # learns=False: the checkerboard's sequences end with the one disliked item, and what
    # follows a disliked item is never observed, so a next-item model has nothing to go on;
    # `test_learns_a_deterministic_cycle` is the learning check.
    check_recommender(lambda: SASRec(**{**SMALL, "epochs": 3}, loss=loss), learns=False)


@pytest.mark.parametrize(("loss", "precision"),
                         [("ce", "float32"), ("ce", "bfloat16"), ("bce", "auto")])  # fmt: skip
def test_learns_a_deterministic_cycle(loss, precision):
    train, nxt = cyclic()
    model = SASRec(**SMALL, loss=loss, loss_precision=precision).fit(train, seed=1)
    top, _ = model.recommend(np.arange(train.n_users), 1)
    assert (top[:, 0] == nxt).mean() >= 0.9, (top[:, 0], nxt)


def test_hidden_state_at_t_ignores_later_items():
    net = module().eval()
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
    h = net(seqs)
    for t in (2, 4, 6):
        changed = seqs.clone()
        changed[:, t + 1 :] = torch.tensor([9, 1, 2, 5, 4, 3, 2])[: 7 - t]
        h2 = net(changed)
        torch.testing.assert_close(h2[:, : t + 1], h[:, : t + 1])
        assert not torch.allclose(h2[:, t + 1 :], h[:, t + 1 :])


def test_padding_changes_nothing_and_gets_no_gradient():
    model = fitted(dropout=0.0, loss_precision="float32")  # float32: the by-hand loss's
    net = model.module_.eval()
    inputs = torch.tensor([[3, 4, 5], [0, 7, 8]])
    targets = torch.tensor([[4, 5, 6], [0, 8, 9]])
    pad = torch.zeros((2, 4), dtype=torch.int64)
    short = model.loss(net, (inputs, targets))
    long = model.loss(net, (torch.cat([pad, inputs], 1), torch.cat([pad, targets], 1)))
    torch.testing.assert_close(long, short)
    # The loss is the mean cross-entropy over the 5 real positions only.
    h = net(inputs)
    logits = h @ net.item_weights().T
    real = targets != PAD
    by_hand = -torch.log_softmax(logits, -1)[real].gather(1, targets[real][:, None] - 1).mean()
    torch.testing.assert_close(short, by_hand)
    long.backward()
    assert net.items.weight.grad[PAD].abs().max() == 0


def test_an_unknown_loss_precision_is_rejected():
    with pytest.raises(ValueError, match="loss_precision='fp16'"):
        SASRec(loss_precision="fp16")


def test_scores_read_only_the_last_max_len_items():
    histories = [[1, 2, 3, 4, 5, 6], [7, 0, 8, 4, 5, 6], [1, 2, 3, 7, 5, 6]]
    rows = [(u, i, 5.0, t) for u, h in enumerate(histories) for t, i in enumerate(h)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    model = SASRec(hidden=8, max_len=3, epochs=2).fit(Interactions(frame, 4, 10), seed=0)
    scores = model.score([0, 1, 2, 3])
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)  # same last 3 items
    assert not np.allclose(scores[0], scores[2])  # the third-last item differs
    assert np.isfinite(scores[3]).all()  # a user without history still gets finite scores


def test_a_training_step_reduces_the_loss_on_a_tiny_batch():
    for loss in ("ce", "bce"):
        model = fitted(loss=loss, dropout=0.0)
        net = model.module_
        batch = next(iter(model.batches(torch.Generator().manual_seed(0))))
        optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
        before = model.loss(net, batch).item()
        for _ in range(3):
            after = model.step(net, batch, optimiser).item()  # loss before this step
            assert after <= before + 1e-6
            before = after
        assert model.loss(net, batch).item() < before


def test_batches_cover_every_transition_once():
    model = fitted()
    train, _ = cyclic()
    batches = list(model.batches(torch.Generator().manual_seed(0)))
    targets = torch.cat([b[1].flatten() for b in batches])
    assert int((targets != PAD).sum()) == len(train.frame) - train.n_users
    assert all(len(b) == 2 for b in batches)  # no negatives for "ce"
    bce = list(fitted(loss="bce").batches(torch.Generator().manual_seed(0)))
    assert all(len(b) == 3 and b[2].shape == b[1].shape for b in bce)


def test_negatives_avoid_each_users_history():
    rng = np.random.default_rng(0)
    dense = rng.random((6, 10)) < 0.5
    dense[0] = True  # a user who has seen everything keeps seen negatives
    dense[1] = False
    dense[1, [2, 5]] = True
    seen = sp.csr_matrix(dense.astype(float))
    users = torch.tensor([1, 2, 3, 4, 5, 1])
    neg = unseen_negatives(users, (6, 50), seen, torch.Generator().manual_seed(0))
    assert neg.shape == (6, 50) and neg.min() >= 1 and neg.max() <= 10
    hit = dense[users.numpy()[:, None], neg.numpy() - 1]
    assert not hit.any()


def test_same_seed_reproduces_and_seeds_differ():
    train, _ = cyclic()
    a = SASRec(**{**SMALL, "epochs": 3}).fit(train, seed=0).score([0, 1])
    b = SASRec(**{**SMALL, "epochs": 3}).fit(train, seed=0).score([0, 1])
    c = SASRec(**{**SMALL, "epochs": 3}).fit(train, seed=1).score([0, 1])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_hyperparameters_are_checked_and_registered():
    with pytest.raises(ValueError, match="loss"):
        SASRec(loss="hinge")
    with pytest.raises(ValueError, match="heads"):
        SASRecModule(4, 3, max_len=4, hidden=10, blocks=1, heads=3, dropout=0.0,
                     generator=torch.Generator())  # fmt: skip
    assert MODELS["SASRec"] is SASRec and SASRec.family == "deep"
    for key, dist in SASRec.space.items():
        assert dist.low <= SASRec.defaults[key] <= dist.high


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_last_only_forward_is_the_full_forwards_last_position(blocks):
    """`last=True` computes one query in the last block: the same last hidden state as the
    full forward, for rows with padding, an empty row, and gradients that match too."""
    net = SASRecModule(10, 9, max_len=6, hidden=16, blocks=blocks, heads=2, dropout=0.0,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    seqs = torch.tensor([[1, 2, 3, 4, 5, 6], [PAD, PAD, 7, 8, 9, 1], [PAD] * 5 + [4], [PAD] * 6])
    full = net(seqs)[:, -1]
    last = net(seqs, last=True)
    assert last.shape == (4, 16)
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)
    (g_full,) = torch.autograd.grad(full.square().sum(), net.items.weight)
    (g_last,) = torch.autograd.grad(last.square().sum(), net.items.weight)
    torch.testing.assert_close(g_last, g_full, rtol=1e-4, atol=1e-5)
