"""Network layers the PyTorch models share where torch's own is slow on a CPU.

`Dropout` is inverted dropout, as `nn.Dropout`, with its mask drawn as uniform floats compared
with p instead of by `bernoulli_`: on one CPU thread torch draws a Bernoulli mask element by
element, which made the masks 17% of a SASRec epoch on ML-100K (5 masks of 256 x 50 x 64 per
step, 5.7 ms each); a uniform draw is vectorised (1.7 ms), and forward plus backward take 2.2 ms
instead of 6.5 ms. Same distribution, other draws: a seed gives other masks than `nn.Dropout`'s.

`ReLU` works in place when no gradient is recorded: scoring a catalogue pushes (users, items,
width) activations through the MLPs of NeuMF and the multi-task models, and a new tensor per
activation made a fifth of that time (`benchmarks/bench_multitask_scoring.py`). Same values.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Dropout(nn.Module):
    """In training, zero each element with probability p and scale the rest by 1 / (1 - p);
    in eval mode, the identity. The mask comes from torch's global generator (`torch.rand`),
    so `torch.manual_seed` fixes it."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p={p!r}; expected a probability in [0, 1]")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device)
        keep.ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 1 / (1 - p) where u >= p, else 0
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(nn.ReLU):
    """`nn.ReLU`, in place when no gradient is recorded (scoring, validation): the same values
    without a new tensor. With gradients it is out of place, as autograd needs for the views a
    fused layer hands out (`multitask.FirstLayers`). Its input must be one no one else reads:
    a layer's fresh output, or a view that only this layer reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x, inplace=not torch.is_grad_enabled())
