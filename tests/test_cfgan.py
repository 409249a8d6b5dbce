import os

import numpy as np
import pytest
import torch
from torch import nn

from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.cfgan import CFGAN, CFGANModule, sample_unpurchased
from metarec_lib.models.registry import MODELS
from metarec_lib.testing import check_recommender, checkerboard

# Small networks, small batches: 100 epochs of 4 D and 4 G steps (1.5 s). Measured on seeds
# 0-7: 20 of 20 checkerboard users hit in 7 seeds, 18 in the other (seed 6).
SMALL = dict(hidden=16, d_hidden=8, batch_size=5, learning_rate=0.005, epochs=100)


def _purchases(n_users=6, n_items=10, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.4).astype(np.float32)
    dense[0] = 1.0  # bought everything: nothing to sample
    dense[1] = 0.0  # bought nothing
    return torch.from_numpy(dense)


class _Fixed(nn.Module):
    """A 'generator' whose output is one trainable matrix, whatever the condition."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = nn.Parameter(out.clone())

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.out


def _module_with_fixed_output(out: torch.Tensor, d_bias: float | None = None) -> CFGANModule:
    module = CFGANModule(out.shape[1], 4, 3, 1, torch.Generator().manual_seed(0))
    module.generator = _Fixed(out)
    if d_bias is not None:  # D says sigmoid(d_bias) to every input
        with torch.no_grad():
            for w in module.discriminator.parameters():
                w.zero_()
            module.discriminator[-1].bias.fill_(d_bias)
    return module


def test_cfgan_passes_the_contract():
    check_recommender(lambda: CFGAN(**SMALL))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 1.0, 1.5])
def test_samples_take_the_share_of_unpurchased_items_and_never_a_purchased_one(ratio):
    purchases = _purchases()
    mask = sample_unpurchased(purchases, ratio, torch.Generator().manual_seed(0))
    bought = purchases > 0
    assert mask.dtype == torch.bool and mask.shape == purchases.shape
    assert not (mask & bought).any(), "a ZR/PM sample marked a purchased item"
    unbought = (~bought).sum(1)
    expected = torch.minimum(torch.round(ratio * unbought).long(), unbought)
    assert torch.equal(mask.sum(1), expected)
    if ratio >= 1.0:
        assert torch.equal(mask, ~bought)


def test_samples_are_seeded():
    purchases = _purchases(n_users=20, n_items=50)
    a = sample_unpurchased(purchases, 0.5, torch.Generator().manual_seed(1))
    b = sample_unpurchased(purchases, 0.5, torch.Generator().manual_seed(1))
    c = sample_unpurchased(purchases, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_epoch_holds_every_user_once_with_masks_on_unpurchased_items_only():
    train, _ = checkerboard()
    model = CFGAN(batch_size=6, zr_ratio=0.5, pm_ratio=0.8)
    model.seen_, model.device_ = train.matrix(binary=True), "cpu"  # as `fit` sets them
    model.build(train, torch.Generator().manual_seed(0))
    batches = list(model.batches(torch.Generator().manual_seed(1)))
    assert [len(b[0]) for b in batches] == [6, 6, 6, 2]
    # On CUDA the same users and masks, without the CSR parts (cuSPARSE is not repeatable).
    model.device_ = "cuda"
    on_cuda = list(model.batches(torch.Generator().manual_seed(1)))
    assert all(len(b) == 3 for b in on_cuda) and len(on_cuda) == len(batches)
    for b, c in zip(batches, on_cuda, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(b[:3], c, strict=True))
    real, zr, pm = (torch.cat(parts) for parts in zip(*(b[:3] for b in batches), strict=True))
    for b in batches:  # the CSR rows (and their transpose) are the dense purchases
        assert torch.equal(b[3].to_dense(), b[0]) and torch.equal(b[4].to_dense(), b[0].T)
    dense = torch.from_numpy(model.seen_.toarray().astype(np.float32))
    assert sorted(map(tuple, real.tolist())) == sorted(map(tuple, dense.tolist()))
    assert not (zr & (real > 0)).any() and not (pm & (real > 0)).any()
    assert (zr.sum(1) == 3).all() and (pm.sum(1) == 5).all()  # 6 unpurchased items per user


def test_generator_loss_reaches_only_purchased_and_sampled_items():
    real = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]])
    zr = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    pm = torch.tensor([[0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = torch.full((2, 6), 0.5)
    # Adversarial term only (alpha = 0): G's output matters on purchased and PM items alone.
    module = _module_with_fixed_output(out)
    CFGAN(alpha=0.0).loss(module, (real, zr, pm)).backward()
    grad = module.generator.out.grad
    assert (grad[(real > 0) | pm] != 0).all() and (grad[(real == 0) & ~pm] == 0).all()
    # ZR term only (D constant): gradient 2 * alpha * output / batch on the ZR items alone.
    module = _module_with_fixed_output(out, d_bias=0.3)
    CFGAN(alpha=0.1).loss(module, (real, zr, pm)).backward()
    expected = torch.where(zr, 2 * 0.1 * 0.5 / 2, 0.0)
    torch.testing.assert_close(module.generator.out.grad, expected)


def test_losses_by_hand_with_a_constant_discriminator():
    real = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    zr = torch.tensor([[0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    pm = torch.zeros(2, 3, dtype=torch.bool)
    out = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.7, -0.3]])
    module = _module_with_fixed_output(out, d_bias=0.5)
    d = 1 / (1 + np.exp(-0.5))
    zr_term = 0.1 * (0.2**2 + 0.3**2) / 2  # mean over users of the sum over ZR items
    batch = (real, zr, pm)
    nonsat = CFGAN(alpha=0.1).loss(module, batch).item()
    minimax = CFGAN(alpha=0.1, generator_loss="minimax").loss(module, batch).item()
    assert nonsat == pytest.approx(-np.log(d) + zr_term, rel=1e-5)
    assert minimax == pytest.approx(np.log(1 - d) + zr_term, rel=1e-5)
    d_loss = CFGAN().discriminator_loss(module, batch).item()
    assert d_loss == pytest.approx(-np.log(d) - np.log(1 - d), rel=1e-5)
    with pytest.raises(ValueError, match="generator_loss"):
        CFGAN(generator_loss="wasserstein").loss(module, batch)


def test_each_training_step_reduces_its_loss_on_a_tiny_batch():
    real = _purchases(n_users=4, n_items=8, seed=3)[2:]
    generator = torch.Generator().manual_seed(0)
    batch = (real, sample_unpurchased(real, 0.5, generator),
             sample_unpurchased(real, 0.5, generator))  # fmt: skip
    model = CFGAN(learning_rate=0.01)
    module = CFGANModule(8, 16, 8, 1, generator)
    opt_g, opt_d = model.optimiser(module)
    for _ in range(3):
        before = model.discriminator_loss(module, batch)
        opt_d.zero_grad()
        before.backward()
        opt_d.step()
        assert model.discriminator_loss(module, batch).item() < before.item()
        before = model.loss(module, batch)
        opt_g.zero_grad()
        before.backward()
        opt_g.step()
        assert model.loss(module, batch).item() < before.item()
    d_before = [w.detach().clone() for w in module.discriminator.parameters()]
    logged = model.step(module, batch, (opt_g, opt_d))
    assert logged.requires_grad is False and torch.isfinite(logged)
    assert all(w.requires_grad for w in module.discriminator.parameters())  # unfrozen again
    changed = [not torch.equal(a, b) for a, b in zip(d_before, module.discriminator.parameters(),
                                                     strict=True)]  # fmt: skip
    assert all(changed)


def test_seeds_change_the_model_and_parameters_are_counted():
    train, _ = checkerboard()
    a = CFGAN(hidden=8, d_hidden=4, epochs=2).fit(train, seed=0)
    b = CFGAN(hidden=8, d_hidden=4, epochs=2).fit(train, seed=1)
    assert not np.allclose(a.score([0, 1]), b.score([0, 1]))
    m = train.n_items  # G: m -> 8 -> m; D: 2m -> 4 -> 1
    assert a.n_parameters == (m * 8 + 8) + (8 * m + m) + (2 * m * 4 + 4) + (4 + 1)


def test_registered_deep_model_with_a_space_containing_the_defaults():
    assert MODELS["CFGAN"] is CFGAN and CFGAN.family == "deep"
    for key, dist in CFGAN.space.items():
        assert dist.low <= CFGAN.defaults[key] <= dist.high


@pytest.mark.skipif(
    not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set (MovieLens)"
)
def test_beats_most_popular_on_ml100k(ml100k_holdout):
    from metarec_lib.models.popularity import MostPop

    train, test = ml100k_holdout
    pop = ndcg_on(MostPop().fit(train), test)
    cfgan = ndcg_on(CFGAN(epochs=25).fit(train, seed=0), test)  # 0.349 vs 0.252 measured
    assert cfgan > pop + 0.05, (cfgan, pop)


def test_masks_match_the_sorted_definition():
    """The selected threshold marks exactly the count smallest noise values per row."""
    purchases = _purchases(n_users=30, n_items=40, seed=5)
    for ratio in (0.1, 0.5, 0.9):
        mask = sample_unpurchased(purchases, ratio, torch.Generator().manual_seed(3))
        noise = torch.rand(purchases.shape, generator=torch.Generator().manual_seed(3))
        for row, bought, m in zip(noise, purchases > 0, mask, strict=True):
            count = round(ratio * int((~bought).sum()))
            free = torch.nonzero(~bought)[:, 0]
            chosen = free[row[free].argsort()[:count]]
            assert torch.equal(torch.nonzero(m)[:, 0], chosen.sort().values)


def test_step_equals_a_discriminator_then_a_generator_update_by_hand():
    """`step` reuses G's output across D's update and G's: the same numbers as recomputing."""
    real = _purchases(n_users=5, n_items=8, seed=2)
    generator = torch.Generator().manual_seed(0)
    batch = (real, sample_unpurchased(real, 0.5, generator),
             sample_unpurchased(real, 0.5, generator))  # fmt: skip
    model = CFGAN(learning_rate=0.01)
    a = CFGANModule(8, 16, 8, 1, torch.Generator().manual_seed(1))
    b = CFGANModule(8, 16, 8, 1, torch.Generator().manual_seed(1))
    opt_a, opt_b = model.optimiser(a), model.optimiser(b)
    for _ in range(2):
        logged = model.step(a, batch, opt_a)
        d_loss = model.discriminator_loss(b, batch)
        opt_b[1].zero_grad()
        d_loss.backward()
        opt_b[1].step()
        b.discriminator.requires_grad_(False)
        g_loss = model.loss(b, batch)
        opt_b[0].zero_grad()
        g_loss.backward()
        opt_b[0].step()
        b.discriminator.requires_grad_(True)
        assert torch.equal(logged, g_loss.detach())
    for wa, wb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(wa, wb)


def test_csr_rows_give_the_dense_products_and_gradients():
    """`SparseInputLinear` on CSR rows (and their transpose) equals the dense product, with
    the same weight and bias gradients; G and D give the same outputs either way."""
    import scipy.sparse as sp

    from metarec_lib.models.cfgan import SparseInputLinear, purchase_rows

    dense = _purchases(n_users=7, n_items=12, seed=4)
    rows = purchase_rows(sp.csr_matrix(dense.numpy()))
    assert torch.equal(rows[0].to_dense(), dense) and torch.equal(rows[1].to_dense(), dense.T)
    weight = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    grads = []
    for x in (dense, rows):
        layer = SparseInputLinear(weight.clone(), bias=True)
        out = layer(x)
        (out * torch.arange(5.0)).sum().backward()  # a non-uniform upstream gradient
        grads.append((out.detach(), layer.weight.grad, layer.bias.grad))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)
    module = CFGANModule(12, 6, 4, 2, torch.Generator().manual_seed(2))
    torch.testing.assert_close(module.generate(rows), module.generate(dense))
    fake = torch.rand(7, 12, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(module.judge(rows, rows), module.judge(dense, dense))
    torch.testing.assert_close(module.judge(fake, rows), module.judge(fake, dense))


def test_a_step_on_csr_batches_equals_one_on_dense_batches():
    import scipy.sparse as sp

    from metarec_lib.models.cfgan import purchase_rows

    real = _purchases(n_users=5, n_items=8, seed=2)
    generator = torch.Generator().manual_seed(0)
    dense_batch = (real, sample_unpurchased(real, 0.5, generator),
                   sample_unpurchased(real, 0.5, generator))  # fmt: skip
    csr_batch = (*dense_batch, *purchase_rows(sp.csr_matrix(real.numpy())))
    model = CFGAN(learning_rate=0.01)
    a = CFGANModule(8, 16, 8, 1, torch.Generator().manual_seed(1))
    b = CFGANModule(8, 16, 8, 1, torch.Generator().manual_seed(1))
    opt_a, opt_b = model.optimiser(a), model.optimiser(b)
    for _ in range(3):
        torch.testing.assert_close(model.step(a, csr_batch, opt_a),
                                   model.step(b, dense_batch, opt_b))  # fmt: skip
    for wa, wb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(wa, wb)


def test_row_thresholds_select_the_count_th_smallest_inside_and_outside_the_band():
    """The band around count / unpurchased finds the same value as a whole-row partition,
    also where the noise is not uniform and the value lies outside the band (the fallback)."""
    from metarec_lib.models.cfgan import row_thresholds

    rng = np.random.default_rng(0)
    values = rng.random((40, 300), dtype=np.float32)
    values[:10] *= 1e-3  # far below any band: every count-th smallest is outside it
    values[10:20] = 1.0 - values[10:20] * 1e-3  # far above
    bought = rng.random((40, 300)) < 0.2
    bought[20] = True  # nothing to draw
    values[bought] = 2.0
    unbought = (~bought).sum(1)
    for ratio in (0.0, 0.05, 0.5, 0.9, 1.0):
        counts = np.minimum(np.round(ratio * unbought).astype(np.int64), unbought)
        got = row_thresholds(values, counts, unbought)
        for r in range(40):
            want = -1.0 if counts[r] == 0 else np.sort(values[r])[counts[r] - 1]
            assert got[r] == want, (ratio, r)
