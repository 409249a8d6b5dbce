"""What breaking neighbour ties by `pair_hash` instead of the lower index changes (prints only).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/knn_ties.py \
        [--datasets ml-100k,ml-latest-small] [--models ItemKNN,RP3beta,UserKNN] [--seeds 42,43,44]

The item-item models keep each item's k most similar items (`knn.keep_topk`). Where the k-th
similarity ties, the kept ones were, up to 1c707b3, those of the lowest column index: the lowest
item ids, in MovieLens the older, more-rated films. They are now those of the lowest
`hashing.pair_hash(item, neighbour)`. For each model, with the committed run's tuned values
(`results/20_collaborative/tables/hyperparameters.csv`), on `topn-75-25` (each seed) and
`topn-temporal` (one split), this fits the model both ways and prints: the share of rows whose
k-th value ties (and how many tied entries fall out), how many kept entries the hash replaces, how
many test users' top-10 lists differ, and test NDCG@10 both ways.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from metarec_lib.data import load_dataset
from metarec_lib.metrics import ranking_metrics
from metarec_lib.models import knn
from metarec_lib.models.registry import get_model
from metarec_lib.protocols import split_factory

TUNED = Path(__file__).resolve().parents[1] / "results/20_collaborative/tables/hyperparameters.csv"
HASHED = knn.keep_topk


def lower_index_topk(block: np.ndarray, k: int, rows=None, cols=None) -> sp.csr_matrix:
    """`keep_topk` as it was up to 1c707b3: ties at the k-th value keep the lower column."""
    keep = block > 0
    if k < block.shape[1]:
        kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
        keep &= block >= kth
        above, equal = block > kth, block == kth
        need = k - above.sum(axis=1, keepdims=True)
        keep &= above | (equal & (np.cumsum(equal, axis=1) <= need))
    return sp.csr_matrix(np.where(keep, block, 0.0).astype(np.float64))


def tie_counts(block: npt.NDArray[np.floating], k: int, counts: dict) -> None:
    """Adds to `counts` the block's rows, those tied at their positive k-th value, and the tied
    entries that fall out."""
    counts["rows"] += len(block)
    if k >= block.shape[1]:
        return
    kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
    candidates = ((block > 0) & (block >= kth)).sum(axis=1)
    tied = (candidates > k) & (kth[:, 0] > 0)
    counts["tied_rows"] += int(tied.sum())
    counts["dropped"] += int((candidates[tied] - k).sum())


def fit(name: str, params: dict, train, seed: int, keep) -> object:
    knn.keep_topk = keep
    try:
        return get_model(name, device="cpu", **params).fit(train, seed=seed)
    finally:
        knn.keep_topk = HASHED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--models", default="ItemKNN,RP3beta,UserKNN")
    parser.add_argument("--seeds", default="42,43,44")
    args = parser.parse_args()
    tuned = pd.read_csv(TUNED)
    print(
        "data set | protocol | seed | model | k | rows tied at k-th | tied entries dropped | "
        "kept entries replaced | top-10 lists changed | NDCG@10 lower index | NDCG@10 hash"
    )
    for dataset in args.datasets.split(","):
        ds = load_dataset(dataset)
        enc = ds.encoder()
        for protocol in ("topn-75-25", "topn-temporal"):
            seeds = [int(s) for s in args.seeds.split(",")]
            for seed in seeds if protocol == "topn-75-25" else seeds[:1]:
                split = split_factory(protocol, ds)(seed)
                train, test = enc.encode(split.train), enc.encode(split.test)
                users = np.unique(test.frame["user"].to_numpy())
                relevant = test.matrix(binary=True)[users]
                for name in args.models.split(","):
                    row = tuned[(tuned["dataset"] == dataset) & (tuned["protocol"] == protocol)
                                & (tuned["model"] == name)].iloc[0]  # fmt: skip
                    params = json.loads(row["params"])
                    counts = {"rows": 0, "tied_rows": 0, "dropped": 0}

                    def counting(block, k, rows=None, cols=None, counts=counts):
                        tie_counts(block, k, counts)
                        return HASHED(block, k, rows, cols)

                    models = [fit(name, params, train, seed, keep)
                              for keep in (lower_index_topk, counting)]  # fmt: skip
                    weights = [m.w_ if hasattr(m, "w_") else m.sim_ for m in models]
                    kept = [(w != 0).astype(np.int8) for w in weights]
                    replaced = int(((kept[1] - kept[0]).data > 0).sum())  # kept now, not before
                    tops = [m.recommend(users, 10)[0] for m in models]
                    ndcg = [float(np.nanmean(ranking_metrics(t, relevant, ks=(10,))["ndcg@10"]))
                            for t in tops]  # fmt: skip
                    print(
                        f"{dataset} | {protocol} | {seed} | {name} | {params['k']} | "
                        f"{counts['tied_rows']:,} of {counts['rows']:,} "
                        f"({counts['tied_rows'] / max(counts['rows'], 1):.1%}) | "
                        f"{counts['dropped']:,} | {replaced:,} of {weights[1].nnz:,} | "
                        f"{int((tops[0] != tops[1]).any(axis=1).sum())} of {len(users)} | "
                        f"{ndcg[0]:.6f} | {ndcg[1]:.6f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
