"""Time a multi-task model's full-catalogue scoring (what early stopping runs every epoch)
three ways, on one CPU thread: without `multitask.item_side_reused`, with it but every
activation a new tensor (`nn.ReLU`, the experts' mixture as sums of new products), and as the
library scores (`layers.ReLU` and the mixture in place when no gradient is recorded).

    METAREC_DATA_DIR=... python benchmarks/bench_multitask_scoring.py [--dataset ml-latest-small]

Each model (defaults) is fitted for one epoch on the `mtl-75-25` tuning carve-out (seed 0);
then its validation users are scored against every item, best of 3 each way, the three ways
taking turns. NeuMF (deep, the same split) has no memo; its scores go the last two ways. The
scores must be bitwise equal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import numpy as np
import torch

from metarec_lib.data import load_dataset
from metarec_lib.models import layers, multitask
from metarec_lib.models.registry import get_model
from metarec_lib.study import TuneRequest, _validation_data

MODELS = ("SingleTask", "SharedBottom", "MMoE", "PLE", "ESMM", "NeuMF")
IN_PLACE = (layers.ReLU.forward, multitask._mix)
WAYS = ("no memo", "new tensors", "in place")


def new_tensors_mix(gate_logits: torch.Tensor, experts) -> tuple[torch.Tensor, torch.Tensor]:
    """`multitask._mix` as it scored before: each product and partial sum a new tensor."""
    weights = (gate_logits - gate_logits.amax(-1, keepdim=True)).exp_()
    weights = weights.div_(weights.sum(-1, keepdim=True))
    mixed = weights[..., :1] * experts[0]
    for k in range(1, len(experts)):
        mixed = mixed + weights[..., k : k + 1] * experts[k]
    return weights, mixed


@contextlib.contextmanager
def scoring(way: str):
    """Within: "no memo" (item halves recomputed per block, new tensors), "new tensors" (the
    memo, every activation a new tensor) or "in place" (the library as it is)."""
    real_memo = multitask.item_side_reused
    if way != "in place":
        layers.ReLU.forward, multitask._mix = torch.nn.ReLU.forward, new_tensors_mix
    if way == "no memo":
        multitask.item_side_reused = lambda module: contextlib.nullcontext()
    try:
        yield
    finally:
        layers.ReLU.forward, multitask._mix = IN_PLACE
        multitask.item_side_reused = real_memo


def timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-latest-small")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    print("| model | users x items | no memo | memo, new tensors | memo, in place | "
          "in place vs new tensors | same scores |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in MODELS:
        protocol = "topn-75-25" if name == "NeuMF" else "mtl-75-25"
        train, valid, _ = _validation_data(TuneRequest(data, protocol, name, 1), 0)
        model = get_model(name, epochs=1).fit(train, seed=0)
        users = np.unique(valid.frame["user"].to_numpy())
        ways = ("new tensors", "in place") if name == "NeuMF" else WAYS
        best = dict.fromkeys(ways, float("inf"))
        scores = {}
        for _ in range(3):
            for way in ways:
                with scoring(way):
                    seconds, scores[way] = timed(functools.partial(model.score, users))
                best[way] = min(best[way], seconds)
        same = all(np.array_equal(scores["in place"], s) for s in scores.values())
        cells = " | ".join(f"{best[w]:.2f} s" if w in best else "" for w in WAYS)
        print(f"| {name} | {len(users)} x {model.n_items_:,} | {cells} | "
              f"{best['new tensors'] / best['in place']:.2f}x | {same} |")  # fmt: skip


if __name__ == "__main__":
    main()
