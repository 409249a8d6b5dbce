"""Speed of the collaborative baselines on ML-100K (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_collaborative.py

Prints: EASE fit seconds (target <= 0.3 s), top-10 with all ranking metrics for every test user
(target <= 0.05 s), and fit seconds with the NDCG@10 reached by every top-N model at its default
hyperparameters on the per-user 75/25 split (seed 42). Each timing is the best of `--repeat`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from metarec_lib.data import load_dataset
from metarec_lib.metrics import ranking_metrics
from metarec_lib.models.registry import get_model
from metarec_lib.splits import holdout_per_user


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="EASE,ItemKNN,UserKNN,RP3beta,iALS,BPR,MostPop")
    args = parser.parse_args()

    ds = load_dataset("ml-100k")
    split = holdout_per_user(ds.interactions, test_fraction=0.25, seed=42)
    enc = ds.encoder()
    train, test = enc.encode(split.train), enc.encode(split.test)
    users = np.unique(test.frame["user"].to_numpy())
    relevant = test.matrix(binary=True)[users]
    print(f"ML-100K topn-75-25 seed 42: {len(train)} train, {len(test)} test, {len(users)} users")

    for name in args.models.split(","):
        model = get_model(name, device="cpu")
        fit_s, fitted = best_of(lambda m=model: m.clone().fit(train, seed=42), args.repeat)

        def evaluate(m=fitted):
            top, _ = m.recommend(users, 10)
            return ranking_metrics(top, relevant, ks=(10,))

        eval_s, per_user = best_of(evaluate, args.repeat)
        ndcg = float(np.nanmean(per_user["ndcg@10"]))
        print(
            f"{name:10s} fit {fit_s:8.3f} s   top-10 + 6 metrics for {len(users)} users "
            f"{eval_s * 1000:7.1f} ms   ndcg@10 {ndcg:.4f} (default hyperparameters)"
        )


if __name__ == "__main__":
    main()
