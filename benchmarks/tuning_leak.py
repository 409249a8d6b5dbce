"""What reusing the first seed's tuning is worth on the other seeds (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/tuning_leak.py \
        [--datasets ml-100k,ml-latest-small] [--topn EASE,ItemKNN,RP3beta,iALS] \
        [--rating BiasedMF] [--budget 20] \
        [--transfer TargetOnly,EASE] [--fractions 1,0.1] [--coldstart EASE,ItemKNN,...]

The study tunes a model once per data set and protocol, on a validation carve-out of the first
seed's (fold's) training data, and uses the chosen values for every seed. Under the protocols
that resample (topn-75-25 per seed, rating-5fold per fold, the transfer protocols' target
holdouts, cold start's user partitions) that carve-out holds some of the other seeds' (folds')
test pairs: a choice made on it may suit their test parts better than a choice made without
them. Here, for each later seed (fold) s, the study's configurations (`tuning.configurations`
with the first seed) are chosen among twice: on the first seed's validation part, as the study
does, and on seed s's own, which holds none of s's test pairs. Each choice (with its
early-stopped epoch count, as `study.tune_many` keeps it) is fitted on s's training data with
seed s and scored on s's test part as the study scores a cell (`runner.evaluate_cell`): NDCG@10
for top-N, RMSE for ratings (a cold-start rating model: on its query items). `gain` is the
score of the study's choice minus that of the leak-free one, in the metric's better direction
(positive: reusing flattered seed s); it is 0 where both choose the same configuration.

`--transfer` measures the transfer protocols on ML-100K's two settings (`xdata-latest-to-100k`,
`xdomain-genre`) at `--fractions`: TargetOnly, whose values every transfer method takes, with
50_transfer's budget and epoch cap, and its reference EASE. `--coldstart` measures the models of
60_meta's cold-start boards where the study tunes them: ML-100K, `coldstart-users@k=5`, with
60_meta's budgets (4 for the meta-learners and PretrainAdapt, 10 for the others).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metarec_lib import plans
from metarec_lib.crossdomain import BASELINE, epochs_for
from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Dataset
from metarec_lib.evaluate import score_on
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.protocols import carveout_how, seeds_for, split_factory
from metarec_lib.runner import evaluate_cell
from metarec_lib.splits import Split, validation_carveout
from metarec_lib.study import (
    VALID_FRACTION,
    TuneRequest,
    _validation_data,
    describe_fit,
    refit_params,
)
from metarec_lib.transfer import (
    GENRE,
    XDATA,
    genre_setting,
    protocol_name,
    target_fraction_split,
    xdata_setting,
)
from metarec_lib.tuning import configurations, random_search

SEEDS = [42, 43, 44]
COLDSTART = "coldstart-users@k=5"  # where 60_meta tunes every cold-start model


@dataclass(frozen=True)
class Case:
    """One model's search on one board, as the study runs it."""

    dataset: Dataset
    protocol: str
    name: str
    budget: int
    task: str = "topn"  # `runner.evaluate_cell`'s: topn, rating or coldstart
    fixed: dict[str, Any] = field(default_factory=dict)
    split: Callable[[int], Split] | None = None  # None: the protocol's registered split

    def split_of(self, seed: int) -> Split:
        return (self.split or split_factory(self.protocol, self.dataset))(seed)


def validation_parts(case: Case, seed: int) -> tuple[Any, Any, str]:
    """(fit, valid, metric kind) of seed `seed`: `study`'s own validation data, except that a
    fold of rating-5fold is carved out with its own number (the study's helper always takes
    the first fold)."""
    if case.protocol != "rating-5fold":
        request = TuneRequest(case.dataset, case.protocol, case.name, case.budget,
                              dict(case.fixed), case.split)  # fmt: skip
        return _validation_data(request, seed)
    fit, valid = validation_carveout(case.split_of(seed).train, fraction=VALID_FRACTION,
                                     seed=seed, how=carveout_how(case.protocol))  # fmt: skip
    encoder = case.dataset.encoder()
    return encoder.encode(fit), encoder.encode(valid), "rmse"


def choose(case: Case, configs: list[dict], seed: int) -> tuple[int, dict, str]:
    """(index in `configs`, values to refit with, metric) of the best of the study's
    configurations on seed `seed`'s validation part: `tuning.random_search` with the study's
    seed, which draws `configs` again, and `study.refit_params`, as `study.tune_many` keeps a
    search's winner."""
    fit, valid, kind = validation_parts(case, seed)
    higher = kind != "rmse"
    cls = model_class(case.name)
    result = random_search(
        lambda **c: get_model(case.name, device="cpu", **{**c, **case.fixed}), cls.space, fit,
        valid, lambda model, part: score_on(model, part, kind), budget=len(configs),
        seed=SEEDS[0], higher_is_better=higher, progress=False,
        describe=lambda model: describe_fit(model, higher_is_better=higher),
    )  # fmt: skip
    return configs.index(result.best), refit_params(cls, result, case.fixed), kind


def test_score(case: Case, params: dict, seed: int, kind: str) -> float:
    """Seed `seed`'s test value of `params`, the cell the study would run."""
    model = get_model(case.name, device="cpu", **params)
    split = case.split_of(seed)
    cell = evaluate_cell(model, split, case.dataset.encoder(), seed=seed, task=case.task)
    return cell.metrics[kind]


def measure(case: Case, label: str) -> list[float]:
    """Print one row per later seed (fold) of `case`; returns the gains."""
    start = time.perf_counter()
    configs = configurations(model_class(case.name).space, case.budget, SEEDS[0])
    seeds = seeds_for(case.protocol, SEEDS)
    study_idx, study_params, kind = choose(case, configs, seeds[0])
    sign = -1.0 if kind == "rmse" else 1.0
    gains = []
    for seed in seeds[1:]:
        own_idx, own_params, _ = choose(case, configs, seed)
        if own_params == study_params:
            ours = theirs = test_score(case, own_params, seed, kind)
        else:
            ours = test_score(case, study_params, seed, kind)
            theirs = test_score(case, own_params, seed, kind)
        gains.append(sign * (ours - theirs) + 0.0)  # + 0.0: no "-0.0000" for a tie
        print(f"| {label} | {case.protocol} | {case.name} | {seed} | {study_idx} | {own_idx} | "
              f"{ours:.4f} | {theirs:.4f} | {gains[-1]:+.4f} |", flush=True)  # fmt: skip
    print(f"<!-- {label} {case.protocol} {case.name}: {time.perf_counter() - start:.0f} s -->",
          flush=True)  # fmt: skip
    return gains


def transfer_cases(names: list[str], fractions: list[float]) -> list[Case]:
    """50_transfer's searches on ML-100K's two settings: TargetOnly with budget 8 and its
    fraction's epoch cap, the references with 20."""
    ml100k = load_dataset("ml-100k")
    settings = [xdata_setting(ml100k, load_dataset("ml-latest-small")), genre_setting(ml100k)]
    assert [s.name for s in settings] == [XDATA, GENRE]
    cases = []
    for setting in settings:
        for fraction in fractions:
            split = lambda seed, s=setting, f=fraction: target_fraction_split(s, f, seed)  # noqa: E731
            protocol = protocol_name(setting.name, fraction, setting.relatedness)
            for name in names:
                baseline = name == BASELINE
                epochs = int(model_class(name).defaults.get("epochs", 0))
                fixed = {"epochs": epochs_for(epochs, fraction)} if baseline else {}
                cases.append(Case(setting.target, protocol, name, 8 if baseline else 20,
                                  fixed=fixed, split=split))  # fmt: skip
    return cases


def coldstart_cases(names: list[str]) -> list[Case]:
    """60_meta's searches: ML-100K at k = 5, 4 configurations for the neural methods."""
    ml100k = load_dataset("ml-100k")
    neural = {*plans.META, "PretrainAdapt"}
    return [Case(ml100k, COLDSTART, n, 4 if n in neural else 10, task="coldstart") for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--topn", default="EASE,ItemKNN,RP3beta,iALS")
    parser.add_argument("--rating", default="BiasedMF")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--transfer", default="", help="e.g. TargetOnly,EASE")
    parser.add_argument("--fractions", default="1,0.1")
    parser.add_argument("--coldstart", default="", help="e.g. EASE,ItemKNN,BiasedMFFoldIn,MeLU")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the study's workers, so a cell is the committed one
    split_names = lambda text: [m for m in text.split(",") if m]  # noqa: E731
    cases: list[tuple[str, Case]] = []
    for dataset in split_names(args.datasets):
        ds = load_dataset(dataset)
        cases += [(dataset, Case(ds, "topn-75-25", m, args.budget))
                  for m in split_names(args.topn)]  # fmt: skip
        cases += [(dataset, Case(ds, "rating-5fold", m, args.budget, task="rating"))
                  for m in split_names(args.rating)]  # fmt: skip
    if args.transfer:
        fractions = [float(f) for f in split_names(args.fractions)]
        cases += [("ml-100k", c) for c in transfer_cases(split_names(args.transfer), fractions)]
    if args.coldstart:
        cases += [("ml-100k", c) for c in coldstart_cases(split_names(args.coldstart))]
    print("| data set | protocol | model | seed | study's choice | own choice | "
          "test, study's | test, own | gain |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    g = np.asarray([gain for label, case in cases for gain in measure(case, label)])
    print(f"\n{len(g)} later seeds/folds: gain mean {g.mean():+.4f}, min {g.min():+.4f}, "
          f"max {g.max():+.4f}; the same choice on {int((g == 0).sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
