"""Time one training step's full-softmax loss, forward and backward: `F.cross_entropy` over
`h @ W.T + b` against `models.losses.full_softmax_cross_entropy` in one chunk (the whole
batch's logits at once), in cache-sized chunks (what the models use) and chunked with bfloat16
products (`loss_precision="bfloat16"`), at SASRec's batch shape on ml-latest-small (256 windows
x 50 positions, 9,742 items, hidden 64) and on ML-100K (1,682 items), one CPU thread. Prints
the seconds per step (best of 5), the largest gradient difference of the chunked loss and the
bfloat16 one's relative to the largest gradient entry."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from metarec_lib.models import losses
from metarec_lib.models.losses import full_softmax_cross_entropy


def step(loss_fn, h, w, b, targets) -> tuple[float, tuple[torch.Tensor, ...]]:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        grads = torch.autograd.grad(loss_fn(h, w, b, targets), (h, w, b))
        best = min(best, time.perf_counter() - start)
    return best, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256 * 50)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| items | F.cross_entropy | fused, one chunk | fused, chunked | speed-up | "
          "max gradient difference | bfloat16 products | its relative difference |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    fused_loss = lambda h, w, b, t: full_softmax_cross_entropy(h, w, t, b)  # noqa: E731
    cpu_chunk = losses.CHUNK_ELEMENTS["cpu"]
    for n_items in (1_682, 9_742):
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(args.rows, args.hidden, generator=gen, requires_grad=True)
        w = (0.1 * torch.randn(n_items, args.hidden, generator=gen)).requires_grad_()
        b = torch.zeros(n_items, requires_grad=True)
        targets = torch.randint(n_items, (args.rows,), generator=gen)
        plain, want = step(lambda h, w, b, t: F.cross_entropy(h @ w.T + b, t), h, w, b, targets)
        losses.CHUNK_ELEMENTS["cpu"] = args.rows * n_items
        one, _ = step(fused_loss, h, w, b, targets)
        losses.CHUNK_ELEMENTS["cpu"] = cpu_chunk
        fused, got = step(fused_loss, h, w, b, targets)
        diff = max(float((g - x).abs().max()) for g, x in zip(got, want, strict=True))
        low, low_got = step(lambda h, w, b, t: full_softmax_cross_entropy(
            h, w, t, b, products=torch.bfloat16), h, w, b, targets)  # fmt: skip
        low_diff = max(float((g - x).abs().max() / x.abs().max())
                       for g, x in zip(low_got, want, strict=True))  # fmt: skip
        print(f"| {n_items:,} | {plain:.3f} s | {one:.3f} s | {fused:.3f} s | "
              f"{plain / fused:.2f}x | {diff:.1e} | {low:.3f} s | {low_diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
