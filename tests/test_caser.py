import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from metarec_lib.models.caser import Caser, sample_unseen
from metarec_lib.models.registry import MODELS
from metarec_lib.models.sequences import PAD
from metarec_lib.testing import check_recommender, check_space_holds_defaults
from metarec_lib.testing import cyclic_sequences as cyclic

SMALL = {"dim": 16, "n_h": 4, "n_v": 2, "batch_size": 64}


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_caser_passes_the_contract(loss):
    # A next-item model cannot solve the checkerboard: each user's sequence ends with an item
    # of the other parity, whose successors in training are all of that other parity.
    check_recommender(lambda: Caser(**SMALL, loss=loss, epochs=3), learns=False)


@pytest.mark.parametrize(("loss", "precision"),
                         [("ce", "float32"), ("ce", "bfloat16"), ("bce", "auto")])  # fmt: skip
def test_learns_a_cyclic_next_item(loss, precision):
    train, next_item = cyclic()
    model = Caser(**SMALL, max_len=3, loss=loss, loss_precision=precision, n_negatives=4,
                  learning_rate=0.01, epochs=60)  # fmt: skip
    top, _ = model.fit(train, seed=0).recommend(np.arange(train.n_users), 1)
    np.testing.assert_array_equal(top[:, 0], next_item)


def _fitted(targets: int = 2, loss: str = "ce", **params) -> Caser:
    train, _ = cyclic(n_users=6, length=8)
    return Caser(**{**SMALL, "max_len": 3, "targets": targets, "loss": loss, "epochs": 1,
                    **params}).fit(train, seed=0)  # fmt: skip


def test_windows_hold_only_earlier_items_and_never_their_targets():
    model = _fitted(targets=2)
    sequences = model.sequences_
    rows = 0
    for users, windows, targets in model.batches(torch.Generator().manual_seed(1)):
        for u, w, t in zip(users.tolist(), windows.tolist(), targets.tolist(), strict=True):
            assert not set(t) & set(w), "a target is in its own input window"
            assert PAD not in t, "a padded target"
            history = [i for i in w if i != PAD]
            assert all(i == PAD for i in w[: len(w) - len(history)]), "padding not on the left"
            # window + targets is a contiguous run of the user's time-ordered sequence
            seq = sequences[u].tolist()
            start = seq.index(t[0]) - len(history)
            assert seq[start : start + len(history) + 2] == history + t
            rows += 1
    assert rows == 6 * (8 - 2)  # positions t = 1..6 of every 8-item sequence


def test_ce_loss_is_the_mean_cross_entropy_of_the_scores():
    model = _fitted(targets=2, dropout=0.0, loss_precision="float32")
    users, windows, targets = next(model.batches(torch.Generator().manual_seed(0)))
    module = model.module_
    logp = F.log_softmax(module(users, windows), dim=1)
    expected = -np.mean([logp[r, t - 1].item() for r in range(len(users)) for t in targets[r]])
    assert model.loss(module, (users, windows, targets)).item() == pytest.approx(expected, 1e-5)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_a_training_step_reduces_the_loss_on_a_tiny_batch(loss):
    model = _fitted(loss=loss, dropout=0.0)
    module = model.module_.train()
    batch = next(model.batches(torch.Generator().manual_seed(0)))
    optimiser = torch.optim.Adam(module.parameters(), lr=0.01)
    losses = [model.step(module, batch, optimiser).item() for _ in range(4)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]


def test_padding_gets_no_gradient_and_stays_zero():
    model = _fitted(epochs=5)
    module = model.module_.train()
    np.testing.assert_array_equal(module.items.weight[PAD].detach().numpy(), 0.0)
    batch = next(model.batches(torch.Generator().manual_seed(0)))
    assert (batch[1] == PAD).any(), "the batch should hold left-padded windows"
    module.zero_grad()
    model.loss(module, batch).backward()
    grad = module.items.weight.grad
    assert grad[1:].abs().sum() > 0
    np.testing.assert_array_equal(grad[PAD].numpy(), 0.0)


def test_negatives_are_never_items_of_the_user():
    train, _ = cyclic(n_users=5, n_items=8, length=6)
    f = train.frame
    keys = torch.from_numpy(np.unique(f["user"].to_numpy() * 8 + f["item"].to_numpy()))
    users = torch.arange(5).repeat_interleave(40)
    negatives = sample_unseen(keys, users, 8, 3, torch.Generator().manual_seed(0))
    seen = train.matrix(binary=True).toarray() > 0
    assert negatives.shape == (200, 3)
    assert not seen[users[:, None].numpy(), negatives.numpy()].any()


def test_unknown_loss_is_rejected_and_registered_space_holds_the_defaults():
    train, _ = cyclic()
    with pytest.raises(ValueError, match="loss"):
        Caser(loss="hinge").fit(train)
    with pytest.raises(ValueError, match="loss_precision='fp16'"):
        Caser(loss_precision="fp16").fit(train)
    assert MODELS["Caser"] is Caser and Caser.family == "deep"
    check_space_holds_defaults(Caser)


def test_pickle_leaves_out_the_training_windows():
    model = _fitted()
    restored = pickle.loads(pickle.dumps(model))
    assert not hasattr(restored, "_inputs") and hasattr(model, "_inputs")
    np.testing.assert_array_equal(restored.score([0, 1]), model.score([0, 1]))


def test_features_are_bitwise_those_of_the_transposed_view_with_nn_linear():
    """`features` gives the convolutions one contiguous copy of the image and writes the
    vertical map as product plus bias; outputs and every gradient must be the bits of the plain
    layers on the transposed view (nn.Linear there adds its bias apart from the product)."""
    from metarec_lib.models.caser import CaserModule

    module = CaserModule(30, 40, length=5, dim=8, n_h=3, n_v=2, dropout=0.0,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    users, windows = (
        torch.randint(30, (57,), generator=gen),
        torch.randint(41, (57, 5), generator=gen),
    )

    def reference(m):
        image = m.items(windows).transpose(1, 2)
        pooled = [F.relu(conv(image)).amax(dim=2) for conv in m.horizontal]
        z = F.relu(m.fc(m.dropout(torch.cat([*pooled, m.vertical(image).flatten(1)], dim=1))))
        return torch.cat([z, m.users(users)], dim=1)

    runs = []
    for features in (lambda m: m.features(users, windows), reference):
        module.zero_grad(set_to_none=True)
        out = features(module)
        (out.square() * torch.linspace(0.5, 2.0, out.shape[1])).sum().backward()
        runs.append((out.detach(), {k: p.grad.clone() for k, p in module.named_parameters()
                                    if p.grad is not None}))  # fmt: skip
    (out, grads), (ref_out, ref_grads) = runs
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads), [
        k for k in grads if not torch.equal(grads[k], ref_grads[k])
    ]
