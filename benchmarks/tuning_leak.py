"""What reusing the first seed's tuning is worth on the other seeds (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/tuning_leak.py \
        [--datasets ml-100k,ml-latest-small] [--topn EASE,ItemKNN,RP3beta,iALS] \
        [--rating BiasedMF] [--budget 20]

The study tunes a model once per data set and protocol, on a validation carve-out of the first
seed's (fold's) training data, and uses the chosen values for every seed. Under the protocols
that resample (topn-75-25 per seed, rating-5fold per fold) that carve-out holds some of the
other seeds' (folds') test pairs: a choice made on it may suit their test parts better than a
choice made without them. Here, for each later seed (fold) s, the study's configurations
(`tuning.configurations` with the first seed) are chosen among twice: on the first seed's
carve-out, as the study does, and on seed s's own carve-out, which holds none of s's test
pairs. Each choice (with its early-stopped epoch count, as `study.tune_many` keeps it) is fitted
on s's training data with seed s and scored on s's test part: NDCG@10 for top-N, RMSE for
ratings. `gain` is the score of the study's choice minus that of the leak-free one, in the
metric's better direction (positive: reusing flattered seed s); it is 0 where both carve-outs
choose the same configuration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Dataset
from metarec_lib.evaluate import score_on
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.protocols import carveout_how, seeds_for, split_factory
from metarec_lib.splits import validation_carveout
from metarec_lib.study import VALID_FRACTION, describe_fit, refit_params
from metarec_lib.tuning import configurations, random_search

SEEDS = [42, 43, 44]


def choose(name: str, configs: list[dict], ds: Dataset, protocol: str, seed: int,
           kind: str) -> tuple[int, dict]:  # fmt: skip
    """(index in `configs`, values to refit with) of the best of the study's configurations
    on seed `seed`'s carve-out: `tuning.random_search` with the study's seed, which draws
    `configs` again, and `study.refit_params`, as `study.tune_many` keeps a search's winner."""
    split = split_factory(protocol, ds)(seed)
    fit, valid = validation_carveout(split.train, fraction=VALID_FRACTION, seed=seed,
                                     how=carveout_how(protocol))  # fmt: skip
    encoder = ds.encoder()
    fit, valid = encoder.encode(fit), encoder.encode(valid)
    higher = kind != "rmse"
    cls = model_class(name)
    result = random_search(
        lambda **c: get_model(name, device="cpu", **c), cls.space, fit, valid,
        lambda model, part: score_on(model, part, kind), budget=len(configs), seed=SEEDS[0],
        higher_is_better=higher, progress=False,
        describe=lambda model: describe_fit(model, higher_is_better=higher),
    )  # fmt: skip
    return configs.index(result.best), refit_params(cls, result)


def test_score(name: str, params: dict, ds: Dataset, protocol: str, seed: int, kind: str) -> float:
    split = split_factory(protocol, ds)(seed)
    encoder = ds.encoder()
    model = get_model(name, device="cpu", **params).fit(encoder.encode(split.train), seed=seed)
    return score_on(model, encoder.encode(split.test), kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--topn", default="EASE,ItemKNN,RP3beta,iALS")
    parser.add_argument("--rating", default="BiasedMF")
    parser.add_argument("--budget", type=int, default=20)
    args = parser.parse_args()
    runs = [(m, "topn-75-25", "ndcg@10") for m in args.topn.split(",") if m]
    runs += [(m, "rating-5fold", "rmse") for m in args.rating.split(",") if m]
    print("| data set | protocol | model | seed | study's choice | own choice | "
          "test, study's | test, own | gain |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    gains: list[float] = []
    for dataset in args.datasets.split(","):
        ds = load_dataset(dataset)
        for name, protocol, kind in runs:
            start = time.perf_counter()
            configs = configurations(model_class(name).space, args.budget, SEEDS[0])
            seeds = seeds_for(protocol, SEEDS)
            study_idx, study_params = choose(name, configs, ds, protocol, seeds[0], kind)
            sign = -1.0 if kind == "rmse" else 1.0
            for seed in seeds[1:]:
                own_idx, own_params = choose(name, configs, ds, protocol, seed, kind)
                if (own_idx, own_params) == (study_idx, study_params):
                    ours = theirs = test_score(name, own_params, ds, protocol, seed, kind)
                else:
                    ours = test_score(name, study_params, ds, protocol, seed, kind)
                    theirs = test_score(name, own_params, ds, protocol, seed, kind)
                gain = sign * (ours - theirs)
                gains.append(gain)
                print(f"| {dataset} | {protocol} | {name} | {seed} | {study_idx} | {own_idx} | "
                      f"{ours:.4f} | {theirs:.4f} | {gain:+.4f} |", flush=True)  # fmt: skip
            print(f"<!-- {dataset} {name}: {time.perf_counter() - start:.0f} s -->", flush=True)
    g = np.asarray(gains)
    print(f"\n{len(g)} later seeds/folds: gain mean {g.mean():+.4f}, min {g.min():+.4f}, "
          f"max {g.max():+.4f}; the same choice on {int((g == 0).sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
