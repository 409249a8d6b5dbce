"""Time one BPR training step's loss and gradients: autograd on gathered rows vs
`losses.bpr_triple_loss` (gradients written out, dense `index_add_`), on one CPU thread.

    python benchmarks/bench_bpr_loss.py

Shapes: BPR's (batch 4,096, 128 factors, the tables of ML-100K and ml-latest-small; 64
factors and the 200,000 x 63,096 tables of `95_scale`'s largest size) and the transfer models'
(batch 2,048, 32 factors, the top matrix W, per-triple weights and frozen rows). Prints the best of
seven rounds of 30 loss-and-gradient calls for each, of 10 whole training steps (backward into
`.grad`, fused Adam over the tables, as the models train), and the largest gradient difference.
"""

from __future__ import annotations

import time

import torch

from metarec_lib.models.losses import bpr_triple_loss
from metarec_lib.testing import bpr_loss_by_autograd


def case(name: str, n_users: int, n_items: int, factors: int, batch: int, transfer: bool):
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(n_users, factors, generator=gen).requires_grad_()
    items = torch.randn(n_items, factors, generator=gen).requires_grad_()
    bias = torch.zeros(n_items).requires_grad_()
    u, i, j = (torch.randint(n, (batch,), generator=gen) for n in (n_users, n_items, n_items))
    extra: dict = {}
    if transfer:
        frozen_u = torch.rand(n_users, generator=gen) < 0.3
        frozen_i = torch.rand(n_items, generator=gen) < 0.3
        extra = {"top": torch.eye(factors).requires_grad_(), "weight": torch.rand(batch)}
        ours = dict(extra, frozen_users=frozen_u, frozen_items=frozen_i)
        theirs = dict(extra, frozen=(frozen_u, frozen_i))
    else:
        ours = theirs = {}
    tensors = [users, items, bias] + ([extra["top"]] if transfer else [])
    runs = {
        "autograd": lambda: bpr_loss_by_autograd(users, items, bias, u, i, j, 0.01, **theirs),
        "bpr_triple_loss": lambda: bpr_triple_loss(users, items, bias, u, i, j, reg=0.01, **ours),
    }
    best = dict.fromkeys(runs, float("inf"))
    step = dict.fromkeys(runs, float("inf"))
    grads = {}
    optimiser = torch.optim.Adam(tensors, lr=1e-9, fused=True)  # a training step, as the models
    for _ in range(7):
        for label, loss_fn in runs.items():
            start = time.perf_counter()
            for _ in range(30):
                grads[label] = torch.autograd.grad(loss_fn(), tensors)
            best[label] = min(best[label], (time.perf_counter() - start) / 30)
            start = time.perf_counter()
            for _ in range(10):
                optimiser.zero_grad(set_to_none=True)
                loss_fn().backward()
                optimiser.step()
            step[label] = min(step[label], (time.perf_counter() - start) / 10)
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads.values(), strict=True))
    print(f"{name}: loss and gradients: "
          + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items())
          + "; training step (backward into .grad, fused Adam): "
          + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in step.items())
          + f"; largest gradient difference {diff:.1e}")  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    case("BPR (4,096 x 128, ML-100K)", 943, 1682, 128, 4096, transfer=False)
    case("BPR (4,096 x 128, ml-latest-small)", 610, 9742, 128, 4096, transfer=False)
    case("BPR (4,096 x 64, 95_scale's 10^7 tables)", 200_000, 63_096, 64, 4096, transfer=False)
    case("transfer MF (2,048 x 32, W, weights, frozen rows)", 2000, 3000, 32, 2048, transfer=True)


if __name__ == "__main__":
    main()
