"""Forward plus backward of `nn.Dropout` against `models.layers.Dropout` at SASRec's activation
shape (256 windows x 50 positions x 64), one CPU thread: a markdown table (prints only).

    .venv/bin/python benchmarks/bench_dropout.py [--p 0.25]

Milliseconds per call, best of 5 rounds of 30 calls each; the share of zeros shows both drop
about p.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metarec_lib.models.layers import Dropout


def per_call(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> float:
    """Best seconds of one forward and backward through `layer`."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(30):
            torch.autograd.grad(layer(x), x, upstream)
        best = min(best, (time.perf_counter() - start) / 30)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, default=0.25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(256, 50, 64, requires_grad=True)
    upstream = torch.randn(256, 50, 64)
    print("| layer | forward + backward | zeros |")
    print("|---|---:|---:|")
    for name, layer in (("nn.Dropout", nn.Dropout(args.p)), ("layers.Dropout", Dropout(args.p))):
        seconds = per_call(layer, x, upstream)
        zeros = float((layer(x) == 0).float().mean())
        print(f"| {name} | {1000 * seconds:.2f} ms | {zeros:.3f} |")


if __name__ == "__main__":
    main()
