import pytest
import torch

from metarec_lib.models.layers import Dropout, ReLU


def test_dropout_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p():
    torch.manual_seed(0)
    x = torch.full((200, 500), 2.0)
    out = Dropout(0.3)(x)
    zero = out == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.005  # 100,000 draws: sd 0.0014
    assert torch.allclose(out[~zero], torch.tensor(2.0 / 0.7))
    assert abs(out.mean().item() - 2.0) < 0.02  # unbiased


def test_dropout_gradient_is_the_mask_and_a_seed_fixes_the_mask():
    x = torch.randn(30, 40, requires_grad=True)
    torch.manual_seed(5)
    out = Dropout(0.5)(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.where(out == 0, 0.0, 2.0))
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.5)(x), out)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(8, 8)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0)(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros(8, 8))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_a_probability_outside_0_1(p):
    with pytest.raises(ValueError, match=f"Dropout: p={p}"):
        Dropout(p)


def test_relu_works_in_place_only_without_gradients():
    x = torch.tensor([[-1.5, 0.0, 2.0], [3.0, -0.5, 1.0]])
    want = torch.relu(x)
    with torch.no_grad():
        y = x.clone()
        assert ReLU()(y) is y and torch.equal(y, want)  # in place: no new tensor
    w = x.clone().requires_grad_()
    out = ReLU()(w)
    assert out is not w and torch.equal(out, want) and torch.equal(w.detach(), x)
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(grad, (x > 0).float())


def test_relu_with_gradients_takes_a_view_of_a_split_output():
    """A fused first layer hands out split views; autograd forbids changing those in place."""
    w = torch.randn(4, 6, requires_grad=True)
    left, right = torch.split(w * 2.0, (3, 3), dim=1)
    out = ReLU()(left) + right
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(grad[:, 3:], torch.full((4, 3), 2.0))
    assert torch.equal(grad[:, :3], torch.where(w[:, :3] > 0, 2.0, 0.0))
