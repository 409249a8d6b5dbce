"""Time a multi-task model's full-catalogue scoring (what early stopping runs every epoch)
with and without `multitask.item_side_reused`, on one CPU thread.

    METAREC_DATA_DIR=... python benchmarks/bench_multitask_scoring.py [--dataset ml-latest-small]

Each model (defaults) is fitted for one epoch on the `mtl-75-25` tuning carve-out (seed 0);
then its validation users are scored against every item, best of 3 each way. Without the memo
every block of users recomputes the item half of every first layer; the scores must be equal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import numpy as np
import torch

from metarec_lib.data import load_dataset
from metarec_lib.models import multitask
from metarec_lib.models.registry import get_model
from metarec_lib.study import TuneRequest, _validation_data

MODELS = ("SingleTask", "SharedBottom", "MMoE", "PLE", "ESMM")


def best_of(runs: int, fn) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-latest-small")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    print("| model | users x items | without the memo | with it | speed-up | same scores |")
    print("|---|---:|---:|---:|---:|---|")
    for name in MODELS:
        train, valid, _ = _validation_data(TuneRequest(data, "mtl-75-25", name, 1), 0)
        model = get_model(name, epochs=1).fit(train, seed=0)
        users = np.unique(valid.frame["user"].to_numpy())
        real = multitask.item_side_reused
        multitask.item_side_reused = lambda module: contextlib.nullcontext()
        try:
            slow, before = best_of(3, functools.partial(model.score, users))
        finally:
            multitask.item_side_reused = real
        fast, after = best_of(3, functools.partial(model.score, users))
        print(f"| {name} | {len(users)} x {model.n_items_:,} | {slow:.2f} s | {fast:.2f} s | "
              f"{slow / fast:.1f}x | {np.array_equal(before, after)} |")  # fmt: skip


if __name__ == "__main__":
    main()
