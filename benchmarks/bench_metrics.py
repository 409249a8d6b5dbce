"""Time top-K selection and all ranking metrics on an ML-100K-sized score matrix (943 x 1682).

Usage: python benchmarks/bench_metrics.py [--k 10] [--repeats 7] [--seed 0]

With METAREC_DATA_DIR set, the seen items and the relevant items are ML-100K's canonical fold
`u1.base` / `u1.test` (read with pandas here, so the benchmark depends on nothing else) and the
scores are item popularity plus noise; otherwise both are random with ML-100K's density.
Prints the best of several repeats in milliseconds; it asserts nothing.

Then the top-K selection two ways, on one thread as in the study's workers: by `torch.topk`
(a heap per row, what `topk_from_scores` uses for k <= n_items / `metrics.HEAP_RATIO`) and by
NumPy's introselect (what it uses above), on these scores and on ml-latest-small-sized random
ones (610 x 9,742, 1.2% seen), and checks that both ways give the same lists.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from metarec_lib import metrics
from metarec_lib.metrics import evaluate_topk, ranking_metrics, topk_from_scores

N_USERS, N_ITEMS = 943, 1682


def _fold(path: Path) -> sp.csr_array:
    frame = pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    rows, cols = frame["user_id"].to_numpy() - 1, frame["item_id"].to_numpy() - 1
    return sp.csr_array((np.ones(len(frame)), (rows, cols)), shape=(N_USERS, N_ITEMS))


def load_inputs(seed: int) -> tuple[str, np.ndarray, sp.csr_array, sp.csr_array]:
    """(description, scores (943, 1682), seen (943, 1682) CSR, relevant (943, 1682) CSR)."""
    rng = np.random.default_rng(seed)
    data_dir = os.environ.get("METAREC_DATA_DIR")
    if data_dir and (Path(data_dir) / "ml-100k" / "u1.base").exists():
        seen = _fold(Path(data_dir) / "ml-100k" / "u1.base")
        relevant = _fold(Path(data_dir) / "ml-100k" / "u1.test")
        popularity = np.asarray(seen.sum(axis=0)).ravel()
        scores = popularity + rng.random((N_USERS, N_ITEMS))
        return "ML-100K u1.base / u1.test, popularity + noise scores", scores, seen, relevant
    seen = sp.random_array((N_USERS, N_ITEMS), density=0.05, rng=rng, format="csr")
    relevant = sp.random_array((N_USERS, N_ITEMS), density=0.0126, rng=rng, format="csr")
    return "random (METAREC_DATA_DIR not set)", rng.random((N_USERS, N_ITEMS)), seen, relevant


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls, in milliseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    what, scores, seen, relevant = load_inputs(args.seed)
    k = args.k
    topk, _ = topk_from_scores(scores, k, seen)
    popularity = np.asarray(seen.sum(axis=0)).ravel()

    print(f"inputs: {what}; scores {scores.shape}, {seen.nnz} seen, {relevant.nnz} relevant")
    t_topk = best_ms(lambda: topk_from_scores(scores, k, seen), args.repeats)
    t_metrics = best_ms(lambda: ranking_metrics(topk, relevant, ks=(k,)), args.repeats)
    print(f"topk_from_scores k={k}:                    {t_topk:8.2f} ms")
    print(f"ranking_metrics (6 metrics @{k}):          {t_metrics:8.2f} ms")

    def everything() -> dict[str, float]:
        items, _ = topk_from_scores(scores, k, seen)
        return evaluate_topk(items, relevant, ks=(k,), item_popularity=popularity, n_users=N_USERS)

    t_all = best_ms(everything, args.repeats)
    print(f"topk + evaluate_topk (+coverage, novelty): {t_all:8.2f} ms")
    for name, value in everything().items():
        print(f"  {name:14s} {value:.4f}")

    rng = np.random.default_rng(args.seed)
    small = (rng.random((610, 9742)) + np.arange(9742) % 7,  # popularity-like, some ties
             sp.random_array((610, 9742), density=0.012, rng=rng, format="csr"))  # fmt: skip
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for label, (s, ex) in (("943 x 1,682", (scores, seen)), ("610 x 9,742", small)):
            ways = {}
            for way, ratio in (("heap (torch.topk)", 1), ("introselect (NumPy)", 10**9)):
                metrics.HEAP_RATIO = ratio
                ways[way] = topk_from_scores(s, k, ex)
                ms = best_ms(lambda s=s, ex=ex: topk_from_scores(s, k, ex), args.repeats)
                print(f"topk_from_scores {label}, {way:20s} {ms:8.2f} ms")
            first, second = ways.values()
            same = all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
            print(f"  the same lists both ways: {same}")


if __name__ == "__main__":
    main()
