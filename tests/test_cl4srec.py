import math

import numpy as np
import pytest
import torch

from metarec_lib.models.cl4srec import (
    CL4SRec,
    augment,
    crop_view,
    info_nce,
    mask_view,
    reorder_view,
)
from metarec_lib.models.registry import MODELS
from metarec_lib.models.sasrec import SASRec
from metarec_lib.models.sequences import PAD
from metarec_lib.testing import check_recommender
from tests.test_sasrec import SMALL, cyclic

MASK = 99


def padded_batch(seed: int = 0, rows: int = 200, length: int = 12) -> torch.Tensor:
    """Left-padded rows of 1..length distinct items (ids 1..50), at least one row per length."""
    rng = np.random.default_rng(seed)
    out = torch.zeros((rows, length), dtype=torch.int64)
    for r in range(rows):
        n = r % length + 1
        out[r, length - n :] = torch.from_numpy(rng.choice(50, n, replace=False) + 1)
    return out


def items_of(row: torch.Tensor) -> list[int]:
    return [int(x) for x in row if x != PAD]


def is_subsequence(short: list[int], long: list[int]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def assert_left_padded(view: torch.Tensor) -> None:
    real = view != PAD
    assert (real[:, 1:] >= real[:, :-1]).all(), "padding must stay on the left"


@pytest.mark.parametrize("ratio", [0.2, 0.6, 1.0])
def test_crop_keeps_a_contiguous_run_of_the_right_length(ratio):
    seqs = padded_batch()
    view = crop_view(seqs, ratio, torch.Generator().manual_seed(1))
    assert_left_padded(view)
    for row, new in zip(seqs, view, strict=True):
        old, kept = items_of(row), items_of(new)
        assert len(kept) == max(1, math.floor(ratio * len(old)))
        starts = [i for i in range(len(old)) if old[i : i + len(kept)] == kept]
        assert starts, (old, kept)  # a contiguous run, in the original order


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_mask_hides_items_in_place_with_a_dedicated_token(ratio):
    seqs = padded_batch()
    view = mask_view(seqs, ratio, MASK, torch.Generator().manual_seed(2))
    assert view.shape == seqs.shape
    changed = view != seqs
    assert (view[changed] == MASK).all() and (seqs[changed] != PAD).all()
    n = (seqs != PAD).sum(1)
    expected = torch.minimum((ratio * n).floor().long(), n - 1)
    assert torch.equal(changed.sum(1), expected)
    assert ((view != PAD) & (view != MASK)).sum(1).min() >= 1  # one real item always stays


@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_reorder_shuffles_one_run_and_nothing_else(ratio):
    seqs = padded_batch()
    view = reorder_view(seqs, ratio, torch.Generator().manual_seed(3))
    assert_left_padded(view)
    moved_any = False
    for row, new in zip(seqs, view, strict=True):
        old, out = items_of(row), items_of(new)
        assert sorted(out) == sorted(old)
        diff = [i for i in range(len(old)) if old[i] != out[i]]
        if diff:
            moved_any = True
            assert diff[-1] - diff[0] + 1 <= math.floor(ratio * len(old))
    assert moved_any


def test_augment_keeps_original_items_is_never_empty_and_is_seeded():
    seqs = padded_batch()
    kwargs = {"crop": 0.2, "mask": 0.5, "reorder": 0.5, "mask_token": MASK}
    view = augment(seqs, torch.Generator().manual_seed(4), **kwargs)
    again = augment(seqs, torch.Generator().manual_seed(4), **kwargs)
    other = augment(seqs, torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(view, again) and not torch.equal(view, other)
    assert_left_padded(view)
    for row, new in zip(seqs, view, strict=True):
        kept = [x for x in items_of(new) if x != MASK]
        assert kept and set(kept) <= set(items_of(row))
    # All three augmentations occur: shorter rows (crop), masks, and same-length reorders.
    assert ((view != PAD).sum(1) < (seqs != PAD).sum(1)).any()
    assert (view == MASK).any()
    pairs = zip(seqs, view, strict=True)
    assert any(not is_subsequence(items_of(new), items_of(old)) for old, new in pairs)


def test_info_nce_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])  # cosine ignores the length
    z = torch.stack([e1, e2])
    tau = 0.5
    # Anchor e1: positive e1 (cos 1), negatives e2 and e2 (cos 0): the same for every anchor.
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    assert info_nce(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)
    assert info_nce(z, z.flip(0), tau).item() > expected  # swapped partners cost more


def test_contract():
    # learns=False as for SASRec (tests/test_sasrec.py): the checkerboard has no next-item signal.
    check_recommender(lambda: CL4SRec(**{**SMALL, "epochs": 3}), learns=False)


def test_learns_a_deterministic_cycle():
    train, nxt = cyclic()
    model = CL4SRec(**SMALL).fit(train, seed=1)
    top, _ = model.recommend(np.arange(train.n_users), 1)
    assert (top[:, 0] == nxt).mean() >= 0.9, (top[:, 0], nxt)


def ready(**params) -> CL4SRec:
    train, _ = cyclic()
    model = CL4SRec(**{**SMALL, "dropout": 0.0, **params})
    model.seen_, model.n_items_ = train.matrix(binary=True), train.n_items
    model.module_ = model.build(train, torch.Generator().manual_seed(0))
    return model


def test_only_the_contrastive_term_differs_from_sasrec():
    model = ready(cl_weight=0.0)
    batch = next(iter(model.batches(torch.Generator().manual_seed(0))))
    assert len(batch) == 4 and batch[2].shape == batch[3].shape == batch[0].shape
    assert (batch[2] == model.n_items_ + 1).any() or (batch[3] == model.n_items_ + 1).any()
    net = model.module_.eval()
    plain = SASRec(**{**SMALL, "dropout": 0.0})
    torch.testing.assert_close(model.loss(net, batch), plain.loss(net, batch[:2]))
    weighted = ready(cl_weight=0.5)
    assert weighted.loss(net, batch).item() > plain.loss(net, batch[:2]).item()
    assert net.items.num_embeddings == model.n_items_ + 2  # items, PAD and the mask token


def test_a_training_step_reduces_the_loss_on_a_tiny_batch():
    model = ready(cl_weight=0.5)
    net = model.module_
    batch = next(iter(model.batches(torch.Generator().manual_seed(0))))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = [model.step(net, batch, optimiser).item() for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_hyperparameters_are_checked_and_registered():
    for bad, pattern in (({"crop": 0.0}, r"crop=0\.0; expected in \(0, 1\]"),
                         ({"mask": 1.0}, r"mask=1\.0; expected in \[0, 1\)"),
                         ({"reorder": -0.1}, r"reorder=-0\.1; expected in \[0, 1\]")):  # fmt: skip
        with pytest.raises(ValueError, match=r"^CL4SRec: " + pattern):
            CL4SRec(**bad)
    assert MODELS["CL4SRec"] is CL4SRec and CL4SRec.family == "deep"
    for key, dist in CL4SRec.space.items():
        assert dist.low <= CL4SRec.defaults[key] <= dist.high
