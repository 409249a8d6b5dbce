import pickle

import numpy as np
import pytest
import torch

from metarec_lib.models.gru4rec import GRU4Rec, bpr_max_loss, cross_entropy_loss
from metarec_lib.models.registry import MODELS
from metarec_lib.models.sequences import PAD
from metarec_lib.testing import check_recommender, check_space_holds_defaults
from metarec_lib.testing import cyclic_sequences as cyclic

SMALL = {"dim": 16, "batch_size": 8}
LOSSES = ["ce", "bpr-max"]


def _fitted(loss: str = "ce", **params) -> GRU4Rec:
    train, _ = cyclic(n_users=6, length=8)
    params = {**SMALL, "max_len": 3, "loss": loss, "n_negatives": 4, "epochs": 1, **params}
    return GRU4Rec(**params).fit(train, seed=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_gru4rec_passes_the_contract(loss):
    # A next-item model cannot solve the checkerboard: each user's sequence ends with an item
    # of the other parity, whose successors in training are all of that other parity.
    check_recommender(lambda: GRU4Rec(**SMALL, loss=loss, n_negatives=4, epochs=2), learns=False)


@pytest.mark.parametrize("loss", LOSSES)
def test_learns_a_cyclic_next_item(loss):
    train, next_item = cyclic()
    model = GRU4Rec(**SMALL, loss=loss, n_negatives=4, dropout=0.0, learning_rate=0.02, epochs=40)
    top, _ = model.fit(train, seed=0).recommend(np.arange(train.n_users), 1)
    np.testing.assert_array_equal(top[:, 0], next_item)


def test_targets_are_the_next_items_and_never_in_their_own_input_prefix():
    model = _fitted(max_len=3)
    sequences = model.sequences_
    positions = 0
    for inputs, targets in model.batches(torch.Generator().manual_seed(1)):
        for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
            for t, target in enumerate(y):
                if target == PAD:
                    assert x[t] == PAD
                    continue
                assert target not in x[: t + 1], "a target is in the input it is predicted from"
                assert t + 1 == len(y) or y[t + 1] == PAD or x[t + 1] == target  # shifted by one
                positions += 1
    assert positions == sum(len(s) - 1 for s in sequences)  # every transition once


def test_a_position_reads_no_later_input():
    module = _fitted(dropout=0.0).module_.eval()
    inputs = torch.tensor([[3, 5, 7, 9]])
    changed = torch.tensor([[3, 5, 8, 2]])
    with torch.no_grad():
        a, b = module.hidden(inputs), module.hidden(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=0, atol=0)
    assert not torch.allclose(a[:, 2:], b[:, 2:])


@pytest.mark.parametrize("loss", LOSSES)
def test_padding_positions_contribute_no_loss(loss):
    model = _fitted(loss=loss, dropout=0.0)
    module = model.module_.train()
    inputs = torch.tensor([[PAD, 2, 3], [4, 5, 6]])
    targets = torch.tensor([[PAD, 3, 4], [5, 6, 7]])
    negatives = torch.tensor([0, 8, 9, 10])
    hidden = module.hidden(inputs).detach().requires_grad_()

    def value(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if loss == "ce":
            return cross_entropy_loss(module, h, y)
        return bpr_max_loss(module, h, y, negatives, reg=1.0)

    base = value(hidden, targets)
    base.backward()
    assert hidden.grad[0, 0].abs().sum() == 0 and hidden.grad[0, 1].abs().sum() > 0
    # An all-padding row adds no term, no negative and nothing to the mean.
    noise = torch.randn(1, 3, hidden.shape[2], generator=torch.Generator().manual_seed(0))
    padded_row = torch.cat([hidden, noise])
    padded_targets = torch.cat([targets, torch.full((1, 3), PAD)])
    torch.testing.assert_close(value(padded_row, padded_targets), base)


def test_bpr_max_matches_a_loop_by_hand():
    module = _fitted(loss="bpr-max").module_
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 2, module.out.weight.shape[1], generator=g)
    targets = torch.tensor([[PAD, 3], [2, 3], [5, 1]])  # row 1 shares target 3 with row 0
    negatives = torch.tensor([2, 6, 0])  # item index 2 = target 3 (item index + 1)
    reg = 0.5
    w, b = module.out.weight.detach(), module.bias.detach()
    terms = []
    for r in range(3):
        for t in range(2):
            if targets[r, t] == PAD:
                continue

            def score(item: int, h: torch.Tensor = hidden[r, t]) -> float:
                return float(h @ w[item - 1] + b[item - 1])

            pool = [int(targets[s, t]) for s in range(3)] + [int(i) + 1 for i in negatives]
            pool = [i for i in pool if i not in (PAD, int(targets[r, t]))]
            neg = np.array([score(i) for i in pool])
            s = np.exp(neg - neg.max())
            s /= s.sum()
            pos = score(int(targets[r, t]))
            gain = (s / (1 + np.exp(-(pos - neg)))).sum()
            terms.append(-np.log(gain) + reg * (s * neg**2).sum())
    with torch.no_grad():
        value = bpr_max_loss(module, hidden, targets, negatives, reg).item()
    assert value == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_a_training_step_reduces_the_loss_on_a_tiny_batch(loss):
    model = _fitted(loss=loss, dropout=0.0)
    module = model.module_.train()
    batch = next(model.batches(torch.Generator().manual_seed(0)))
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    losses = [model.step(module, batch, optimiser).item() for _ in range(4)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]


def test_unknown_loss_is_rejected_and_registered_space_holds_the_defaults():
    train, _ = cyclic()
    with pytest.raises(ValueError, match="loss"):
        GRU4Rec(loss="top1").fit(train)
    assert MODELS["GRU4Rec"] is GRU4Rec and GRU4Rec.family == "deep"
    check_space_holds_defaults(GRU4Rec)


def test_pickle_leaves_out_the_training_windows():
    model = _fitted()
    restored = pickle.loads(pickle.dumps(model))
    assert not hasattr(restored, "_inputs") and hasattr(model, "_inputs")
    np.testing.assert_array_equal(restored.score([0, 1]), model.score([0, 1]))
