"""Fit time with Adam's per-parameter loop against its fused kernel (`training.adam`): a
markdown table (prints only).

    METAREC_DATA_DIR=... .venv/bin/python benchmarks/bench_adam.py [--epochs 3]

Each model is fitted with its defaults (passes capped at `--epochs`), seed 0, one CPU thread,
on the data set and protocol it runs on in the notebooks (`workloads.py`: the optimiser's cost
grows with the parameter tables, so with the catalogue), after one untimed 1-epoch fit: once
with every Adam the library builds forced to torch's single-tensor loop (`fused=None,
foreach=False`, what `torch.optim.Adam` does on CPU by default) and once as the library builds
it (fused), best of `--repeats` fits each. The last column is the largest difference of the
two fits' scores for the first 50 users: the kernels round differently, so the fits are not
bitwise equal, but each is deterministic.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from bench_torch_models import make
from workloads import WORKLOADS, training_set


@contextmanager
def adam_loop() -> Any:
    """Within: every `torch.optim.Adam` built is the single-tensor loop, whatever it asks."""
    original = torch.optim.Adam

    class LoopAdam(original):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, **kwargs: Any) -> None:
            super().__init__(params, **{**kwargs, "fused": None, "foreach": False})

    torch.optim.Adam = LoopAdam
    try:
        yield
    finally:
        torch.optim.Adam = original


def fit(name: str, train: Any, epochs: int, repeats: int) -> tuple[float, np.ndarray]:
    """(best fit seconds, scores of the first 50 users) of `repeats` fits."""
    best, scores = float("inf"), np.empty(0)
    for _ in range(repeats):
        model = make(name, "cpu", epochs)
        start = time.perf_counter()
        model.fit(train, seed=0)
        best = min(best, time.perf_counter() - start)
        scores = model.score(np.arange(50))
    return best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=",".join(WORKLOADS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | loop | fused | speed-up | largest score difference |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        train = training_set(name)
        make(name, "cpu", 1).fit(train, seed=0)  # warm-up
        with adam_loop():
            loop, loop_scores = fit(name, train, args.epochs, args.repeats)
        fused, fused_scores = fit(name, train, args.epochs, args.repeats)
        diff = float(np.abs(loop_scores - fused_scores).max())
        print(f"| {name} | {loop:.2f} s | {fused:.2f} s | {loop / fused:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
