import pytest
import torch

from metarec_lib.models.layers import Dropout


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
