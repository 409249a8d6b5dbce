"""What `loo-temporal`'s lack of a global time cut-off lets a fit see (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/loo_temporal_leak.py \
        [--datasets ml-100k,ml-latest-small] [--seeds 42,43,44] \
        [--models MarkovChain,SASRec,Caser,EASE] [--blocks 10] [--per-user MarkovChain,EASE] \
        [--without-own-rows] [--early-stopping]

`loo-temporal` holds out each user's last interaction, as SASRec, BERT4Rec and RecBole's
leave-one-out do; every other user's rows stay in training whatever their time, so a fit has
seen ratings given after a test user's held-out one (Ji et al. 2023, "A critical study on data
leakage in recommender system offline evaluation", ACM TOIS 41(3)). For each data set and seed
this prints the share of training rows later than the test rating (mean over test users), the
test users whose test item has no training rating before their test time, and what the later
rows are worth to the simplest model that reads them: MostPop's NDCG@10 with its counts over
every training row (the study's MostPop) and over the rows before each user's test time only.
Both rank the full catalogue without the user's training items, ties by `topk_from_scores`.

`--models` adds the models of the `loo-temporal` boards (`HISTORY`), fitted with the committed
run's tuned hyperparameters (`results/30_deep/tables/hyperparameters.csv`; epochs fixed, or
with `--early-stopping` chosen per cut-off fit, see `cutoff_scores`), each as the study fits it
(every training row) and with a global cut-off: refitted once per block of test users
(`--blocks`, equal counts in test-time order) on the rows before the block's earliest test
time, and those of `--per-user` (MarkovChain unless told) also once per test user on the rows
before that user's test time: the two values side by side show what the blocks cost. A fit
also trains on its test users' own rows (`fit_rows`; `--without-own-rows`: not a block's), so
a block's fit sees a few rows later than some of its users' test times (printed: "later rows
left in the blocks") and loses the rows of its other users (all users, without own rows)
between its cut-off and each user's own test time, which are not a leak (printed: "rows lost
to the blocks"). A cut-off fit scores a user from the user's whole history (as a model reads
it at inference, without training on the later part) and ranks only items with a row in its
fit (an item first rated later did not exist for it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from metarec_lib.crossdomain import epochs_for
from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Interactions
from metarec_lib.metrics import ranking_metrics, topk_from_scores
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import get_model
from metarec_lib.protocols import split_factory
from metarec_lib.splits import _rank_from_end

TUNED = Path(__file__).resolve().parents[1] / "results/30_deep/tables/hyperparameters.csv"


def tuned_params(dataset: str, model: str) -> dict:
    """The committed run's hyperparameters of `model` on `dataset`'s loo-temporal boards."""
    table = pd.read_csv(TUNED)
    row = table[(table["dataset"] == dataset) & (table["protocol"] == "loo-temporal")
                & (table["model"] == model)]  # fmt: skip
    if len(row) != 1:
        raise ValueError(f"{TUNED}: expected one loo-temporal row for {dataset}/{model}")
    return json.loads(row["params"].iloc[0])


def last_rows(part: Interactions) -> np.ndarray:
    """Mask of each user's last row, for users with at least two rows: a leave-last-one-out
    validation part of `part`, ranked as `splits.leave_last_one_out` ranks (time, then
    `pair_hash` of the raw ids, the order `user_sequences` reads)."""
    users, items = part.raw_ids()
    raw = pd.DataFrame({"user_id": users, "item_id": items,
                        "timestamp": part.frame["timestamp"].to_numpy()})  # fmt: skip
    from_end, count = _rank_from_end(raw)
    return (from_end == 0) & (count >= 2)


# What each model reads of a user at scoring time, copied from the every-row fit into a
# cut-off fit so that it scores from the user's whole history: the sequence models' item
# sequences, MarkovChain's last item, EASE's and ItemKNN's user-item rows (x_[users] @ B).
# UserKNN is left out: its x_ holds the neighbours' rows, which a cut-off fit must not read.
HISTORY = {
    "MarkovChain": "last_item_",
    "SASRec": "sequences_",
    "Caser": "sequences_",
    "GRU4Rec": "sequences_",
    "CL4SRec": "sequences_",
    "EASE": "x_",
    "ItemKNN": "x_",
}


def fit_rows(
    train: Interactions, users: np.ndarray, cutoffs: np.ndarray, own: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in `users`, mask of the training rows) of each cut-off fit: one per distinct
    value of `cutoffs` (each user's cut-off), for the users that share it, its members. A fit
    trains on every row strictly before its cut-off and, with `own`, on all of its members'
    own rows (each before the member's test time, so no leak for that member, but some later
    than another member's). Without them a block's fit does not know most of its users: on
    ML-100K, whose users rated in one burst, 618 of the 943 test users have none of their rows
    before their block's cut-off at 40 blocks, and a model with user embeddings (Caser)
    scores them from untrained ones."""
    times = train.frame["timestamp"].to_numpy()
    row_users = train.frame["user"].to_numpy()
    for cut in np.unique(cutoffs):
        members = np.flatnonzero(cutoffs == cut)
        earlier = times < cut
        yield members, (earlier | np.isin(row_users, users[members]) if own else earlier)


def cutoff_scores(
    model: str,
    params: dict,
    train: Interactions,
    full: Recommender,
    users: np.ndarray,
    cutoffs: np.ndarray,
    seed: int,
    early_stopping: bool = False,
    own_rows: bool = True,
) -> np.ndarray:
    """Scores of `users` (len(users), n_items) from the fits of `model` that `fit_rows`
    describes (`own_rows` is its `own`); items without such a row
    score -inf. `full` is the every-row fit, whose `HISTORY` attribute each cut-off fit
    scores from.

    With `early_stopping`, an iterative model does not take the every-row fit's epochs, which
    are few gradient steps on a small early share: it holds out each user's last row of
    its fit (`last_rows`) and stops on it as the study's tuning does (patience from the
    model's defaults), within `crossdomain.epochs_for` of its epochs (the transfer protocols'
    cap: about as many samples as the every-row fit). The held-out rows are not trained on.
    Which way scores higher depends on the data (benchmarks/README.md)."""
    history = HISTORY[model]
    out = np.empty((len(users), train.n_items), np.float64)
    fits = fit_rows(train, users, cutoffs, own_rows)
    total = len(np.unique(cutoffs))
    for rows, kept in tqdm(fits, total=total, desc=f"{model} cut-off fits", leave=False):
        earlier = dataclasses.replace(train, frame=train.frame[kept])
        if early_stopping and "epochs" in params:
            share = max(len(earlier), 1) / len(train)
            capped = {**params, "epochs": epochs_for(int(params["epochs"]), share)}
            held = last_rows(earlier)
            fit_part = dataclasses.replace(earlier, frame=earlier.frame[~held])
            valid = dataclasses.replace(earlier, frame=earlier.frame[held])
            fitted = get_model(model, **capped).fit(fit_part, valid=valid, seed=seed)
        else:
            fitted = get_model(model, **params).fit(earlier, seed=seed)
        setattr(fitted, history, getattr(full, history))
        scores = np.asarray(fitted.score(users[rows]), np.float64)
        unknown = np.bincount(earlier.frame["item"].to_numpy(), minlength=train.n_items) == 0
        scores[:, unknown] = -np.inf
        out[rows] = scores
    return out


def measure(
    name: str,
    seed: int,
    models: tuple[str, ...] = (),
    blocks: int = 10,
    early_stopping: bool = False,
    per_user: tuple[str, ...] = ("MarkovChain",),
    own_rows: bool = True,
) -> dict:
    """The shares and the MostPop NDCG@10 values of one data set and seed; with `models`,
    their NDCG@10 with every training row and with the cut-offs (see the module doc)."""
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
    users = test["user"].to_numpy(np.int64).copy()  # writable: torch.from_numpy warns otherwise
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

    out = {
        "test users": len(users),
        "later rows": float(later.mean()),
        "no earlier rating": int(unseen_before.sum()),
        "MostPop, every row": ndcg(np.broadcast_to(every, before.shape)),
        "MostPop, earlier rows": ndcg(before),
    }
    # Blocks of test users in test-time order; a block's cut-off is its earliest test time.
    by_time = np.argsort(test_times, kind="stable")
    block_cut = np.empty(len(users), test_times.dtype)
    for part in np.array_split(by_time, blocks):
        block_cut[part] = test_times[part].min()
    for model in models:
        params = tuned_params(name, model)
        full = get_model(model, **params).fit(train, seed=seed)
        scores = np.asarray(full.score(users), np.float64)
        scores[:, every == 0] = -np.inf  # as the cut-off fits: only items it trained on
        out[f"{model}, every row"] = ndcg(scores)
        if model in per_user:
            own = cutoff_scores(model, params, train, full, users, test_times, seed)
            out[f"{model}, earlier rows"] = ndcg(own)
        cut = cutoff_scores(
            model, params, train, full, users, block_cut, seed, early_stopping, own_rows
        )
        out[f"{model}, earlier rows ({blocks} blocks)"] = ndcg(cut)
    # What the blocks cost and leave, per test user, as shares of the training rows: rows
    # before the user's test time that the block's fit does not train on (those after the
    # block's cut-off, except the own rows it keeps), and rows after it that it does (other
    # members' own rows).
    lost, left = np.empty(len(users)), np.empty(len(users))
    for rows, mask in fit_rows(train, users, block_cut, own_rows):
        kept = np.sort(times[mask])
        t = test_times[rows]
        lost[rows] = np.searchsorted(sorted_times, t, "left") - np.searchsorted(kept, t, "left")
        left[rows] = len(kept) - np.searchsorted(kept, t, "right")
    out["rows lost to the blocks"] = float(lost.mean() / len(times))
    out["later rows left in the blocks"] = float(left.mean() / len(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--seeds", default="42")
    parser.add_argument(
        "--models",
        default="",
        help=f"comma-separated, from {','.join(HISTORY)} (empty: MostPop only)",
    )
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument(
        "--per-user",
        default="MarkovChain",
        help="comma-separated models of --models also refitted once per test user (one fit "
        "per distinct test time: cheap only for MarkovChain, EASE, ItemKNN)",
    )
    parser.add_argument(
        "--without-own-rows",
        action="store_true",
        help="a block's fit does not train on its test users' rows after its cut-off "
        "(see fit_rows; per-user fits always do)",
    )
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="a cut-off fit stops on its users' last earlier rows (see cutoff_scores)",
    )
    args = parser.parse_args()
    models = tuple(m for m in args.models.split(",") if m)
    per_user = tuple(m for m in args.per_user.split(",") if m)
    unknown = sorted((set(models) | set(per_user)) - set(HISTORY))
    if unknown:
        parser.error(f"--models/--per-user: {', '.join(unknown)} not among {', '.join(HISTORY)}")
    torch.set_num_threads(1)  # as the study's workers: the every-row fit is the committed cell
    print("| data set | seed | test users | training rows later than the test rating (mean) "
          "| test items without an earlier rating | MostPop NDCG@10, every row "
          "| MostPop NDCG@10, earlier rows |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    measured = []
    for name in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            m = measure(
                name, seed, models, args.blocks, args.early_stopping, per_user,
                not args.without_own_rows,
            )  # fmt: skip
            measured.append((name, seed, m))
            print(f"| {name} | {seed} | {m['test users']:,} | {m['later rows']:.1%} "
                  f"| {m['no earlier rating']} | {m['MostPop, every row']:.4f} "
                  f"| {m['MostPop, earlier rows']:.4f} |", flush=True)  # fmt: skip
    if not models:
        return
    print(
        f"\n| data set | seed | model | NDCG@10, every row | earlier rows, per user "
        f"| earlier rows, {args.blocks} blocks"
        f"{', without own rows' if args.without_own_rows else ''}"
        f"{', early-stopped' if args.early_stopping else ''} "
        f"| rows lost to the blocks (mean) | later rows left in the blocks (mean) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, seed, m in measured:
        for model in models:
            own = m.get(f"{model}, earlier rows")
            print(f"| {name} | {seed} | {model} | {m[f'{model}, every row']:.4f} "
                  f"| {'' if own is None else f'{own:.4f}'} "
                  f"| {m[f'{model}, earlier rows ({args.blocks} blocks)']:.4f} "
                  f"| {m['rows lost to the blocks']:.1%} "
                  f"| {m['later rows left in the blocks']:.2%} |")  # fmt: skip


if __name__ == "__main__":
    main()
