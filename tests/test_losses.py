import math

import pytest
import torch
import torch.nn.functional as F

from metarec_lib.models import losses
from metarec_lib.models.losses import full_softmax_cross_entropy


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
