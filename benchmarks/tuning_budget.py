"""What a four times larger search would give the neural models (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/tuning_budget.py \
        [--stem 30_deep] [--models NeuMF,CFGAN,...] [--budget 16] [--out DIR]
    .venv/bin/python benchmarks/tuning_budget.py --report [--stem 30_deep] [--out DIR]

`30_deep` searches each deep model, `40_multitask` each multi-task model and `60_meta` each
meta-learner with 4 random configurations (their `budget`), on ML-100K only, where most models
they are read against get 10-20. Does that budget decide their families' losses (claims C2 and
C3)? For each deep model and ML-100K protocol of `30_deep` (`--stem 30_deep`), each multi-task
model on `mtl-75-25` (`--stem 40_multitask`), and each meta-learner at k = 5, where `60_meta`
tunes them (`--stem 60_meta`), the study's configurations are drawn again with `--budget` (the
draws are nested: `tuning.configurations` with the first seed gives the study's 4 first) and
each is tried as the study tries one (`executors.run_trial`: early stopping on the protocol's
validation data, seed 42, one thread). The best of the first 4 is the study's choice (checked
against the committed `tables/hyperparameters.csv`: another CPU can round a training to
another early-stopped epoch count); the best of all is the larger search's. Both are fitted
for seeds 42-44 as the study fits a cell (`runner.evaluate_cell`), on the search's own board
(30_deep, 40_multitask) or on C3's boards, k = 10 and 20 (60_meta), and read against the
board's best model of the other families, from the committed per-user values of
`results/<stem>` (`leaderboard.versus_reference`'s test: Wilcoxon over users of the seed-mean
metric, Holm-corrected over the family's models on the board). Each search is saved as it
finishes (`--out`, one pickle each), so the models can run in two processes and an
interrupted run resumes; `--report` prints the table from them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metarec_lib import plans
from metarec_lib.data import load_dataset
from metarec_lib.executors import TrialJob, run_trial
from metarec_lib.io import atomic_write_bytes
from metarec_lib.leaderboard import higher_is_better, per_user_means
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.protocols import coldstart_name, split_factory, task_of
from metarec_lib.runner import evaluate_cell
from metarec_lib.stats import holm, paired_test
from metarec_lib.study import TuneRequest, _validation_data, epoch_param, refit_params
from metarec_lib.tuning import choose, configurations

SEEDS = [42, 43, 44]
STUDY_BUDGET = 4  # the `budget` of 30_deep, 40_multitask and 60_meta's neural models


@dataclass(frozen=True)
class Case:
    """One search of the study: `model` tuned under `tuned_on` (ML-100K), read on `boards`."""

    stem: str
    tuned_on: str
    model: str
    boards: tuple[str, ...]

    @property
    def results(self) -> Path:
        return Path("results") / self.stem


def cases(stem: str, models: list[str]) -> list[Case]:
    """30_deep: every deep model on the protocols it runs; 40_multitask: the multi-task models
    on `mtl-75-25`; 60_meta: the meta-learners, tuned at k = 5 and read on claim C3's boards
    (k = 10, 20)."""
    if stem == "40_multitask":
        return [Case(stem, "mtl-75-25", m, ("mtl-75-25",)) for m in plans.MULTITASK if m in models]
    if stem == "60_meta":
        boards = (coldstart_name(10), coldstart_name(20))
        return [Case(stem, coldstart_name(5), m, boards) for m in plans.META if m in models]
    deep = (*plans.DEEP_TOPN, *plans.DEEP_SEQUENTIAL)
    return [Case(stem, plan.protocol, m, (plan.protocol,))
            for plan in plans.PLANS[stem] for m in plan.models
            if m in models and m in deep]  # fmt: skip


def committed_params(case: Case) -> dict:
    table = pd.read_csv(case.results / "tables" / "hyperparameters.csv")
    row = table[(table.dataset == "ml-100k") & (table.protocol == case.boards[0])
                & (table.model == case.model)]  # fmt: skip
    return json.loads(row["params"].iloc[0])


def cell_values(case: Case, params: dict, dataset) -> dict[str, dict]:
    """Per board: each seed's cell metrics and per-user metrics of `params`, as the study's
    cells compute them."""
    out = {}
    for protocol in case.boards:
        frames, cells = [], []
        for seed in SEEDS:
            split = split_factory(protocol, dataset)(seed)
            model = get_model(case.model, device="cpu", **params)
            cell = evaluate_cell(model, split, dataset.encoder(), seed=seed,
                                 task=task_of(protocol))  # fmt: skip
            frames.append(cell.per_user.assign(seed=seed))
            cells.append(cell.metrics)
        out[protocol] = {"per_user": pd.concat(frames, ignore_index=True), "cells": cells}
    return out


def measure(case: Case, budget: int, out: Path) -> None:
    path = out / f"{case.stem}__{case.tuned_on}__{case.model}.pkl"
    if path.exists():
        return
    start = time.perf_counter()
    dataset = load_dataset("ml-100k")
    cls = model_class(case.model)
    request = TuneRequest(dataset, case.tuned_on, case.model, budget)
    train, valid, kind = _validation_data(request, SEEDS[0])
    higher = kind != "rmse"
    configs = configurations(cls.space, budget, SEEDS[0])
    assert configs[:STUDY_BUDGET] == configurations(cls.space, STUDY_BUDGET, SEEDS[0])
    outcomes = []
    for i, config in enumerate(configs):
        job = TrialJob(case.model, config, "cpu", train, valid, kind, SEEDS[0], higher)
        outcomes.append(run_trial(job))
        print(f"  {case.tuned_on} {case.model} trial {i}: {kind} {outcomes[-1][0]:.4f} "
              f"({outcomes[-1][1]:.0f} s)", flush=True)  # fmt: skip
    study = choose(configs[:STUDY_BUDGET], outcomes[:STUDY_BUDGET], cls.space,
                   higher_is_better=higher)  # fmt: skip
    larger = choose(configs, outcomes, cls.space, higher_is_better=higher)
    study_params, larger_params = refit_params(cls, study), refit_params(cls, larger)
    record = {
        "case": case, "budget": budget, "kind": kind,
        "scores": [o[0] for o in outcomes], "trial_seconds": [o[1] for o in outcomes],
        "study_index": configs.index(study.best), "larger_index": configs.index(larger.best),
        "study_params": study_params, "larger_params": larger_params,
        "study_test": cell_values(case, study_params, dataset),
    }  # fmt: skip
    if larger_params != study_params:
        record["larger_test"] = cell_values(case, larger_params, dataset)
    record["seconds"] = time.perf_counter() - start
    atomic_write_bytes(path, pickle.dumps(record))
    print(f"{case.tuned_on} {case.model}: done in {record['seconds']:.0f} s", flush=True)


def reference(metrics: pd.DataFrame, case: Case, protocol: str,
              metric: str) -> tuple[str, float, pd.Series]:  # fmt: skip
    """The best model of the other families on the committed ML-100K board (`metrics`: the
    committed `metrics.csv` of the case's notebook)."""
    family = model_class(case.model).family
    board = metrics[(metrics.dataset == "ml-100k") & (metrics.protocol == protocol)
                    & (metrics.metric == metric) & (metrics.family != family)]  # fmt: skip
    means = board.groupby("model")["value"].mean()
    means = means.sort_values(ascending=not higher_is_better(metric))
    best = str(means.index[0])
    user = per_user_means(case.results, "ml-100k", protocol, best, metric)
    return best, float(means.iloc[0]), user


def committed_note(record: dict) -> str:
    """How the study's choice made here differs from the committed run's: nothing, only in the
    early-stopped epoch count (another CPU rounds the training differently), or in more."""
    here = dict(record["study_params"])
    committed = committed_params(record["case"])
    if here == committed:
        return ""
    param = epoch_param(model_class(record["case"].model))
    if param and {**here, param: committed.get(param)} == committed:
        return f" ({here[param]} epochs; committed run {committed[param]})"
    return " (not the committed configuration)"


def seed_mean(values: dict, metric: str) -> float:
    """The mean over seeds of a board's cell metric (`metrics.csv`'s value)."""
    return float(np.mean([cell[metric] for cell in values["cells"]]))


def report(out: Path, stem: str) -> None:
    records = [pickle.loads(p.read_bytes()) for p in sorted(out.glob(f"{stem}__*.pkl"))]
    if not records:
        raise SystemExit(f"no {stem} searches under {out}")
    results = records[0]["case"].results
    committed = pd.read_csv(results / "metrics.csv")
    metrics = ["ndcg@10"] if stem == "30_deep" else ["ndcg@10", "rmse"]
    notes = [committed_note(r) for r in records]  # one hyperparameters.csv read per search
    print("| board | metric | model | study's choice (of 4): index, validation | larger search's "
          "(of 16) | test, study's choice (committed) | larger search's | reference | "
          "outcome, study's / larger |")  # fmt: skip
    print("|---|---|---|---|---|---:|---:|---|---|")
    boards = dict.fromkeys(p for r in records for p in r["case"].boards)
    for protocol, metric in itertools.product(boards, metrics):
        rows = [r for r in records if protocol in r["case"].boards]
        ref_name, ref_mean, ref_user = reference(committed, rows[0]["case"], protocol, metric)
        better = higher_is_better(metric)
        outcomes = {}
        for which in ("study_test", "larger_test"):
            tests = []
            for r in rows:
                frame = r.get(which, r["study_test"])[protocol]["per_user"]
                user = frame.groupby("user_id")[metric].mean()
                users = sorted(set(user.index) & set(ref_user.index))
                tests.append(paired_test(user.reindex(users).to_numpy(),
                                         ref_user.reindex(users).to_numpy()))  # fmt: skip
            adjusted = holm(np.array([t["wilcoxon_p"] for t in tests]))
            for r, t, p in zip(rows, tests, adjusted, strict=True):
                sign = np.sign(t["mean_diff"]) * (1 if better else -1)
                word = "tie" if p >= 0.05 or sign == 0 else ("wins" if sign > 0 else "loses")
                outcomes[(r["case"].model, which)] = f"{word} (p = {p:.2g})"
        for r, note in zip(records, notes, strict=True):
            if protocol not in r["case"].boards:
                continue
            model, scores = r["case"].model, r["scores"]
            s, big = r["study_index"], r["larger_index"]
            kept = committed[(committed.dataset == "ml-100k") & (committed.protocol == protocol)
                             & (committed.model == model)
                             & (committed.metric == metric)]  # fmt: skip
            larger = r.get("larger_test")
            larger_text = "same" if larger is None else f"{seed_mean(larger[protocol], metric):.4f}"
            print(f"| {protocol} | {metric} | {model} | {s}, {scores[s]:.4f}{note} "
                  f"| {big}, {scores[big]:.4f} | "
                  f"{seed_mean(r['study_test'][protocol], metric):.4f} "
                  f"({kept['value'].mean():.4f}) | {larger_text} | {ref_name} {ref_mean:.4f} | "
                  f"{outcomes[(model, 'study_test')]} / "
                  f"{outcomes[(model, 'larger_test')]} |")  # fmt: skip
    seconds = sum(r["seconds"] for r in records)
    trials = sum(sum(r["trial_seconds"]) for r in records)
    print(f"\n{len(records)} searches: {seconds:.0f} s in all, {trials:.0f} s of trials")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stem", choices=["30_deep", "40_multitask", "60_meta"], default="30_deep")
    parser.add_argument("--models", default=",".join((*plans.DEEP_TOPN, *plans.DEEP_SEQUENTIAL,
                                                      *plans.MULTITASK, *plans.META)))  # fmt: skip
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuning_budget"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(args.out, args.stem)
        return
    torch.set_num_threads(1)  # as the study's workers
    args.out.mkdir(parents=True, exist_ok=True)
    for case in cases(args.stem, [m for m in args.models.split(",") if m]):
        measure(case, args.budget, args.out)


if __name__ == "__main__":
    main()
