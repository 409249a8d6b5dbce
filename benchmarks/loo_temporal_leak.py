"""What `loo-temporal`'s lack of a global time cut-off lets a fit see (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/loo_temporal_leak.py \
        [--datasets ml-100k,ml-latest-small] [--seeds 42,43,44]

`loo-temporal` holds out each user's last interaction, as SASRec, BERT4Rec and RecBole's
leave-one-out do; every other user's rows stay in training whatever their time, so a fit has
seen ratings given after a test user's held-out one (Ji et al. 2023, "A critical study on data
leakage in recommender system offline evaluation", ACM TOIS 41(3)). For each data set and seed
this prints the share of training rows later than the test rating (mean over test users), the
test users whose test item has no training rating before their test time, and what the later
rows are worth to the simplest model that reads them: MostPop's NDCG@10 with its counts over
every training row (the study's MostPop) and over the rows before each user's test time only.
Both rank the full catalogue without the user's training items, ties by `topk_from_scores`.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp

from metarec_lib.data import load_dataset
from metarec_lib.metrics import ranking_metrics, topk_from_scores
from metarec_lib.protocols import split_factory


def measure(name: str, seed: int) -> dict[str, float]:
    """The shares and the two MostPop NDCG@10 values of one data set and seed."""
    ds = load_dataset(name)
    split = split_factory("loo-temporal", ds)(seed)
    encoder = ds.encoder()
    train = encoder.encode(split.history())
    test = encoder.encode(split.test).frame
    frame = train.frame
    times = frame["timestamp"].to_numpy()
    items = frame["item"].to_numpy()
    order = np.argsort(times, kind="stable")
    sorted_times, sorted_items = times[order], items[order]
    seen = train.matrix().tocsr()
    users = test["user"].to_numpy()
    targets = test["item"].to_numpy()
    test_times = test["timestamp"].to_numpy()
    every = np.bincount(items, minlength=train.n_items).astype(np.float64)
    before = np.empty((len(users), train.n_items))
    for row, t in enumerate(test_times):
        cut = np.searchsorted(sorted_times, t, side="left")  # rows strictly earlier than t
        before[row] = np.bincount(sorted_items[:cut], minlength=train.n_items)
    later = 1.0 - np.searchsorted(sorted_times, test_times, side="right") / len(times)
    unseen_before = before[np.arange(len(users)), targets] == 0

    relevant = sp.csr_matrix(
        (np.ones(len(users)), (np.arange(len(users)), targets)), shape=(len(users), train.n_items)
    )

    def ndcg(scores: np.ndarray) -> float:
        top, _ = topk_from_scores(scores, 10, seen[users], users=users)
        return float(np.nanmean(ranking_metrics(top, relevant, names=("ndcg",))["ndcg@10"]))

    return {
        "test users": len(users),
        "later rows": float(later.mean()),
        "no earlier rating": int(unseen_before.sum()),
        "MostPop, every row": ndcg(np.broadcast_to(every, before.shape)),
        "MostPop, earlier rows": ndcg(before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--seeds", default="42")
    args = parser.parse_args()
    print("| data set | seed | test users | training rows later than the test rating (mean) "
          "| test items without an earlier rating | MostPop NDCG@10, every row "
          "| MostPop NDCG@10, earlier rows |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            m = measure(name, seed)
            print(f"| {name} | {seed} | {m['test users']:,} | {m['later rows']:.1%} "
                  f"| {m['no earlier rating']} | {m['MostPop, every row']:.4f} "
                  f"| {m['MostPop, earlier rows']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
