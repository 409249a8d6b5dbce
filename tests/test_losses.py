import math

import pytest
import torch
import torch.nn.functional as F

from metarec_lib.models import losses
from metarec_lib.models.losses import full_softmax_cross_entropy
from metarec_lib.testing import bpr_loss_by_autograd


def test_hand_worked_value_and_gradient():
    """Two items, logits (0, ln 3): p = (1/4, 3/4); target 1 gives -ln(3/4), and the logit
    gradient p - onehot = (1/4, -1/4) reaches h through W."""
    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    loss = full_softmax_cross_entropy(h, w, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.75))
    loss.backward()
    assert h.grad.item() == pytest.approx(0.25 * 0.0 - 0.25 * math.log(3.0))
    assert w.grad[:, 0].tolist() == pytest.approx([0.25, -0.25])


@pytest.mark.parametrize("per_row", [1, 3])
def test_matches_the_unfused_loss_and_gradients(per_row):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(40, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(25, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(25, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(25, (40, per_row), generator=gen)
    targets[0] = 7  # a row whose targets repeat one item
    reference = -F.log_softmax(h @ w.T + b, dim=1).gather(1, targets).mean()
    expected = torch.autograd.grad(3.0 * reference, (h, w, b))
    loss = full_softmax_cross_entropy(h, w, targets if per_row > 1 else targets[:, 0], b)
    if per_row == 1:
        assert loss.item() == pytest.approx(F.cross_entropy(h @ w.T + b, targets[:, 0]).item())
    assert loss.item() == pytest.approx(reference.item())
    for got, want in zip(torch.autograd.grad(3.0 * loss, (h, w, b)), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(5, (6, 2), generator=gen)
    assert torch.autograd.gradcheck(
        lambda h, w, b: full_softmax_cross_entropy(h, w, targets, b), (h, w, b)
    )


@pytest.mark.parametrize("per_row", [1, 3])
def test_chunks_give_the_same_loss_and_gradients(monkeypatch, per_row):
    """With 25 items and a 75-element budget a chunk holds 3 rows: 40 rows are 14 chunks, the
    last one partial; loss and gradients equal one chunk's."""
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(40, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(25, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(25, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(25, (40, per_row), generator=gen)
    whole = full_softmax_cross_entropy(h, w, targets, b)
    expected = torch.autograd.grad(whole, (h, w, b))
    monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", 75)
    assert losses.chunk_rows(25, h.device) == 3
    chunked = full_softmax_cross_entropy(h, w, targets, b)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-12)
    for got, want in zip(torch.autograd.grad(chunked, (h, w, b)), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_a_target_whose_probability_underflows_keeps_a_finite_loss():
    """Logits (0, 200): p(item 0) = e^-200 is 0 in float32, yet -log p = 200 + log(1 + e^-200)
    = 200; the gradient is still p - onehot = (-1, 1)."""
    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [200.0]], requires_grad=True)
    loss = full_softmax_cross_entropy(h, w, torch.tensor([0]))
    assert loss.item() == pytest.approx(200.0)
    loss.backward()
    assert w.grad[:, 0].tolist() == pytest.approx([-1.0, 1.0])
    assert h.grad.item() == pytest.approx(200.0)


def test_without_gradients_only_the_loss():
    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    with torch.no_grad():
        loss = full_softmax_cross_entropy(h, w, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.75))
    assert not loss.requires_grad


@pytest.mark.parametrize(("per_row", "with_bias"), [(1, False), (3, True)])
def test_bfloat16_products_stay_within_their_rounding(monkeypatch, per_row, with_bias):
    """bfloat16 products round the inputs to 8 significant bits: the loss and every gradient
    stay within 2% of float64's, whether in one chunk or in chunks of 3 rows and weight
    gradient groups of 6 rows (the last of each partial)."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(40, 8, generator=gen, requires_grad=True)
    w = torch.randn(25, 8, generator=gen, requires_grad=True)
    b = torch.randn(25, generator=gen, requires_grad=True) if with_bias else None
    targets = torch.randint(25, (40, per_row), generator=gen)
    inputs = (h, w) if b is None else (h, w, b)
    wide = [x.detach().double().requires_grad_() for x in inputs]
    reference = full_softmax_cross_entropy(wide[0], wide[1], targets, *wide[2:])
    expected = torch.autograd.grad(reference, wide)
    for chunk, group in ((25 * 40, 25 * 40), (75, 150)):
        monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", chunk)
        monkeypatch.setattr(losses, "GROUP_ELEMENTS", group)
        loss = full_softmax_cross_entropy(h, w, targets, b, products=torch.bfloat16)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
        for got, want in zip(torch.autograd.grad(loss, inputs), expected, strict=True):
            assert got.dtype == torch.float32
            assert float((got.double() - want).abs().max()) < 2e-2 * float(want.abs().max())


def test_bfloat16_products_keep_the_underflow_fallback():
    """Logits (0, 200) are exact in bfloat16: the loss is still 200, the gradient (-1, 1)."""
    h = torch.tensor([[1.0]], requires_grad=True)
    w = torch.tensor([[0.0], [200.0]], requires_grad=True)
    loss = full_softmax_cross_entropy(h, w, torch.tensor([0]), products=torch.bfloat16)
    assert loss.item() == pytest.approx(200.0)
    loss.backward()
    assert w.grad[:, 0].tolist() == pytest.approx([-1.0, 1.0])


def test_bfloat16_flags_are_read_from_the_cpu_flags_line():
    assert losses.has_bfloat16_flag("model name\t: EPYC\nflags\t\t: fpu avx512f avx512_bf16 vaes\n")
    assert losses.has_bfloat16_flag("flags : sse amx_bf16")
    assert not losses.has_bfloat16_flag("flags\t\t: fpu avx512f avx512bw\n")
    assert not losses.has_bfloat16_flag("model name : avx512_bf16 lookalike\nflags : sse2\n")
    assert not losses.has_bfloat16_flag("flags : avx512_bf16x\n")
    from metarec_lib.pipeline import environment

    assert environment()["hardware"]["bfloat16_products"] == losses.native_bfloat16()


def test_product_dtype_follows_the_precision_and_the_hardware(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert losses.product_dtype("float32", cpu) is None
    assert losses.product_dtype("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr(losses, "native_bfloat16", lambda: True)
    assert losses.product_dtype("auto", cpu) is torch.bfloat16
    assert losses.product_dtype("auto", cuda) is None  # GPUs keep float32
    monkeypatch.setattr(losses, "native_bfloat16", lambda: False)
    assert losses.product_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="loss_precision='half'"):
        losses.product_dtype("half", cpu)


# ----------------------------------------------------------------------------- BPR triples


def test_bpr_hand_worked_value_and_gradient():
    """One triple, p = 1, q_i = 2, q_j = 0, no biases, reg 0.1: x_ui - x_uj = 2, loss =
    log(1 + e^-2) + 0.1 * (1 + 4) and d loss / d p = -sigmoid(-2) * 2 + 0.2 * 1."""
    users = torch.tensor([[1.0]], requires_grad=True)
    items = torch.tensor([[2.0], [0.0]], requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    idx = torch.tensor([0]), torch.tensor([0]), torch.tensor([1])
    loss = losses.bpr_triple_loss(users, items, bias, *idx, reg=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)) + 0.5)
    loss.backward()
    sig = 1.0 / (1.0 + math.exp(2.0))
    assert users.grad.item() == pytest.approx(-sig * 2.0 + 0.2)
    assert items.grad[:, 0].tolist() == pytest.approx([-sig + 0.4, sig])
    assert bias.grad.tolist() == pytest.approx([-sig, sig])


@pytest.mark.parametrize("transfer", [False, True])
def test_bpr_triples_match_autograd(transfer):
    """Repeated rows, a top matrix, weights and frozen rows (whose gradient is 0 while they
    still count in the loss): the same loss and gradients as autograd, scaled by upstream."""
    gen = torch.Generator().manual_seed(3)
    dt = torch.float64
    users = torch.randn(7, 4, generator=gen, dtype=dt, requires_grad=True)
    items = torch.randn(9, 4, generator=gen, dtype=dt, requires_grad=True)
    bias = torch.randn(9, generator=gen, dtype=dt, requires_grad=True)
    u, i, j = (torch.randint(n, (30,), generator=gen) for n in (7, 9, 9))
    tensors, extra, ours = [users, items, bias], {}, {}
    if transfer:
        top = torch.randn(4, 4, generator=gen, dtype=dt, requires_grad=True)
        weight = torch.rand(30, generator=gen, dtype=dt)
        frozen_u = torch.zeros(7, dtype=torch.bool)
        frozen_i = torch.zeros(9, dtype=torch.bool)
        frozen_u[int(u[0])], frozen_i[int(i[0])] = True, True
        tensors.append(top)
        extra = {"top": top, "weight": weight}
        ours = dict(extra, frozen_users=frozen_u, frozen_items=frozen_i)
        extra["frozen"] = (frozen_u, frozen_i)
    want = bpr_loss_by_autograd(users, items, bias, u, i, j, 0.03, **extra)
    got = losses.bpr_triple_loss(users, items, bias, u, i, j, reg=0.03, **ours)
    assert got.item() == pytest.approx(want.item())
    expected = torch.autograd.grad(2.5 * want, tensors)
    for g, e in zip(torch.autograd.grad(2.5 * got, tensors), expected, strict=True):
        torch.testing.assert_close(g, e)
    if transfer:
        grads = torch.autograd.grad(
            losses.bpr_triple_loss(users, items, bias, u, i, j, reg=0.03, **ours), tensors
        )
        assert not grads[0][int(u[0])].any() and not grads[1][int(i[0])].any()


def test_bpr_triples_gradcheck():
    gen = torch.Generator().manual_seed(4)
    dt = torch.float64
    tables = [torch.randn(n, 3, generator=gen, dtype=dt, requires_grad=True) for n in (4, 5)]
    bias = torch.randn(5, generator=gen, dtype=dt, requires_grad=True)
    top = torch.randn(3, 3, generator=gen, dtype=dt, requires_grad=True)
    u, i, j = (torch.randint(n, (8,), generator=gen) for n in (4, 5, 5))
    weight = torch.rand(8, generator=gen, dtype=dt)
    assert torch.autograd.gradcheck(
        lambda p, q, b, w: losses.bpr_triple_loss(p, q, b, u, i, j, reg=0.1, top=w, weight=weight),
        (*tables, bias, top),
    )


def test_bpr_triples_without_gradients():
    """Under no_grad (or with no table requiring one) only the loss is computed."""
    users, items, bias = torch.ones(2, 2), torch.ones(3, 2), torch.zeros(3)
    idx = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 2])
    loss = losses.bpr_triple_loss(users, items, bias, *idx, reg=0.0)
    assert loss.item() == pytest.approx(math.log(2.0)) and not loss.requires_grad
    users.requires_grad_()
    with torch.no_grad():
        assert losses.bpr_triple_loss(users, items, bias, *idx, reg=0.0).item() == pytest.approx(
            math.log(2.0)
        )


def _bpr_max_by_autograd(scores, positive, ok, valid, reg):
    """BPR-max as GRU4Rec wrote it before `losses.bpr_max`: every step an autograd op."""
    masked = scores.masked_fill(~ok, -1e9)
    e = torch.exp(masked - masked.amax(dim=2, keepdim=True).detach()) * ok
    weights = e / e.sum(dim=2, keepdim=True).clamp_min(1e-30)
    gain = (weights * torch.sigmoid(positive[..., None] - scores)).sum(dim=2)
    terms = -torch.log(gain + 1e-24) + reg * (weights * scores**2).sum(dim=2)
    return terms[valid].mean()


@pytest.mark.parametrize("reg", [0.0, 1.0])
def test_bpr_max_matches_autograd_with_masked_entries_and_empty_positions(reg):
    gen = torch.Generator().manual_seed(0)
    n, length, k = 6, 4, 9
    scores = (3 * torch.randn(n, length, k, generator=gen, dtype=torch.float64)).requires_grad_()
    positive = torch.randn(n, length, generator=gen, dtype=torch.float64, requires_grad=True)
    ok = torch.rand(n, length, k, generator=gen) < 0.7
    ok[0, 1] = False  # a position without any negative: weight 0, no gradient
    ok[2, 3, :-1] = False  # a single negative
    valid = torch.rand(n, length, generator=gen) < 0.8
    valid[0, 1] = valid[2, 3] = True
    valid[1] = False  # an all-padding row
    expected = _bpr_max_by_autograd(scores, positive, ok, valid, reg)
    want = torch.autograd.grad(expected, (scores, positive))
    got = losses.bpr_max(scores, positive, ok, valid, reg)
    grads = torch.autograd.grad(3.0 * got, (scores, positive))  # the upstream scales them
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, 3.0 * w, rtol=1e-10, atol=1e-12)
    assert not grads[0][~ok].any() and not grads[0][~valid].any()
    assert not grads[1][~valid].any() and not grads[0][0, 1].any()


def test_bpr_max_hand_worked_value_and_gradient():
    """One position, negatives s = (0, ln 3) so w = (1/4, 3/4), target score r = 0, reg 0:
    gain = 1/4 * 1/2 + 3/4 * sigmoid(-ln 3) = 1/8 + 3/16 = 5/16 and the loss is -ln(5/16).
    d loss / d r = -(gain - sum_j w_j sigma_j^2) / gain = -(5/16 - 7/64) / (5/16) = -13/20."""
    scores = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64, requires_grad=True)
    positive = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    ok, valid = torch.ones(1, 1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    loss = losses.bpr_max(scores, positive, ok, valid, 0.0)
    assert loss.item() == pytest.approx(-math.log(5 / 16))
    loss.backward()
    assert positive.grad.item() == pytest.approx(-13 / 20)
    # d / d s_i = w_i (gain - sigma_i^2) / gain:
    # (1/4)(5/16 - 1/4) / (5/16) = 1/20 and (3/4)(5/16 - 1/16) / (5/16) = 3/5
    assert scores.grad[0, 0].tolist() == pytest.approx([0.05, 0.6])


def test_bpr_max_without_gradients_gives_the_loss_only():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 2, 5, generator=gen)
    positive = torch.randn(3, 2, generator=gen)
    ok, valid = torch.ones(3, 2, 5, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool)
    with torch.no_grad():
        got = losses.bpr_max(scores, positive, ok, valid, 0.5)
    torch.testing.assert_close(got, _bpr_max_by_autograd(scores, positive, ok, valid, 0.5))
