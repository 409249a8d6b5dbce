"""What a four times larger search would give the neural models (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/tuning_budget.py \
        [--stem 30_deep] [--dataset ml-100k] [--models NeuMF,CFGAN,...] [--budget 16] [--out DIR]
    .venv/bin/python benchmarks/tuning_budget.py --report [--stem 30_deep] [--dataset ml-100k] \
        [--out DIR]

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
metric, Holm-corrected over the family's models on the board). A chosen configuration whose
fit diverges on a board (FloatingPointError; a meta-learner that trains at k = 5 may not at
k = 20) gives way to the next best by validation score, and the table names the one passed
over; carried values that diverge are reported as "diverged". Each search is saved as it
finishes (`--out`, one pickle each), so the models can run in two processes and an
interrupted run resumes; `--report` prints the table from them.

`--dataset ml-latest-small` asks the other question: the study carries ML-100K's values to
ml-latest-small (recalibrating only the epoch count), where the baselines are tuned on
ml-latest-small itself. There the same nested draws are searched on ml-latest-small's own
validation data, and the carried values (the committed `hyperparameters.csv` of that data set)
are fitted beside the best of the first 4 and the best of all, for the same seeds and read
against the same data set's board.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from metarec_lib import plans
from metarec_lib.data import load_dataset
from metarec_lib.executors import TrialJob, run_trial
from metarec_lib.io import atomic_write_bytes
from metarec_lib.leaderboard import higher_is_better, outcomes, per_user_means
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.protocols import coldstart_name, split_factory, task_of
from metarec_lib.runner import evaluate_cell
from metarec_lib.stats import paired_test
from metarec_lib.study import TuneRequest, _validation_data, epoch_param, refit_params
from metarec_lib.tuning import choose, configurations

SEEDS = [42, 43, 44]
STUDY_BUDGET = 4  # the `budget` of 30_deep, 40_multitask and 60_meta's neural models


@dataclass(frozen=True)
class Case:
    """One search: `model` tuned under `tuned_on` on `dataset`, read on `boards` there."""

    stem: str
    tuned_on: str
    model: str
    boards: tuple[str, ...]
    dataset: str = "ml-100k"

    @property
    def results(self) -> Path:
        return Path("results") / self.stem


def cases(stem: str, models: list[str], dataset: str = "ml-100k") -> list[Case]:
    """30_deep: every deep model on the protocols it runs; 40_multitask: the multi-task models
    on `mtl-75-25`; 60_meta: the meta-learners, tuned at k = 5 and read on claim C3's boards
    (k = 10, 20)."""
    if stem == "40_multitask":
        return [Case(stem, "mtl-75-25", m, ("mtl-75-25",), dataset)
                for m in plans.MULTITASK if m in models]  # fmt: skip
    if stem == "60_meta":
        boards = (coldstart_name(10), coldstart_name(20))
        return [Case(stem, coldstart_name(5), m, boards, dataset)
                for m in plans.META if m in models]  # fmt: skip
    deep = (*plans.DEEP_TOPN, *plans.DEEP_SEQUENTIAL)
    return [Case(stem, plan.protocol, m, (plan.protocol,), dataset)
            for plan in plans.PLANS[stem] for m in plan.models
            if m in models and m in deep]  # fmt: skip


def committed_params(case: Case, protocol: str | None = None) -> dict:
    """The values the committed run fitted the case's cells with on `protocol` (default: its
    first board); on ml-latest-small, ML-100K's tuned values with the epochs recalibrated."""
    table = pd.read_csv(case.results / "tables" / "hyperparameters.csv")
    row = table[(table.dataset == case.dataset) & (table.protocol == (protocol or case.boards[0]))
                & (table.model == case.model)]  # fmt: skip
    return json.loads(row["params"].iloc[0])


class Fit(NamedTuple):
    """One configuration fitted on a case's boards: its index among the draws, the values it
    was refitted with, and `cell_values`'s result."""

    index: int
    params: dict
    values: dict[str, dict]


def cell_values(case: Case, params: dict | None, dataset,
                known: Iterable[Fit] = ()) -> dict[str, dict]:  # fmt: skip
    """Per board: each seed's cell metrics and per-user metrics of `params` (None: the values
    the committed run fitted on that board), as the study's cells compute them; a board whose
    values one of the `known` fits has already fitted takes that fit's. A training that
    diverges (FloatingPointError) leaves the board {"diverged": what it said}: the study's own
    cell would have stopped the run there."""
    out = {}
    for protocol in case.boards:
        values = committed_params(case, protocol) if params is None else params
        same = next((fit.values for fit in known if fit.params == values), None)
        if same is not None:
            out[protocol] = same[protocol]
            continue
        frames, cells = [], []
        for seed in SEEDS:
            split = split_factory(protocol, dataset)(seed)
            model = get_model(case.model, device="cpu", **values)
            try:
                cell = evaluate_cell(model, split, dataset.encoder(), seed=seed,
                                     task=task_of(protocol))  # fmt: skip
            except FloatingPointError as error:
                print(f"  {case.model} on {protocol}, seed {seed}: {error}", flush=True)
                out[protocol] = {"diverged": f"seed {seed}: {error}"}
                break
            frames.append(cell.per_user.assign(seed=seed))
            cells.append(cell.metrics)
        else:
            out[protocol] = {"per_user": pd.concat(frames, ignore_index=True), "cells": cells}
    return out


def fitted_choice(case: Case, configs: list[dict], outcomes: list, n: int, dataset,
                  higher: bool, fitted: dict[int, Fit]) -> tuple[Fit, list[int]]:  # fmt: skip
    """(fit, indices skipped) of the best of the first `n` configurations by validation score
    whose cells train on every board: one that diverges there (a validation fit at k = 5 can
    train where a board's fit does not) gives way to the next best, as a practitioner would
    take it. `fitted` remembers each index's fit."""
    cls = model_class(case.model)
    skipped: list[int] = []
    while True:
        pool = [i for i in range(n) if i not in skipped]
        result = choose([configs[i] for i in pool], [outcomes[i] for i in pool], cls.space,
                        higher_is_better=higher)  # fmt: skip
        index = configs.index(result.best)
        if index not in fitted:
            params = refit_params(cls, result)
            fitted[index] = Fit(index, params, cell_values(case, params, dataset))
        fit = fitted[index]
        if not any("diverged" in v for v in fit.values.values()):
            return fit, skipped
        skipped.append(index)


def measure(case: Case, budget: int, out: Path) -> None:
    path = out / f"{case.stem}__{case.dataset}__{case.tuned_on}__{case.model}.pkl"
    if path.exists():
        return
    start = time.perf_counter()
    dataset = load_dataset(case.dataset)
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
        score, seconds = outcomes[-1][:2]
        print(f"  {case.dataset} {case.tuned_on} {case.model} trial {i}: {kind} {score:.4f} "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip
    fitted: dict[int, Fit] = {}
    study, study_skipped = fitted_choice(case, configs, outcomes, STUDY_BUDGET, dataset, higher,
                                         fitted)  # fmt: skip
    larger, larger_skipped = fitted_choice(case, configs, outcomes, len(configs), dataset,
                                           higher, fitted)  # fmt: skip
    record = {
        "case": case, "budget": budget, "kind": kind,
        "scores": [o[0] for o in outcomes], "trial_seconds": [o[1] for o in outcomes],
        "study_index": study.index, "larger_index": larger.index,
        "study_params": study.params, "larger_params": larger.params,
        "study_test": study.values, "study_skipped": study_skipped,
        "larger_skipped": larger_skipped,
    }  # fmt: skip
    if larger.params != study.params:
        record["larger_test"] = larger.values
    if case.dataset != "ml-100k":  # the study carried ML-100K's values here; fit them too
        record["transferred_test"] = cell_values(case, None, dataset, fitted.values())
    record["seconds"] = time.perf_counter() - start
    atomic_write_bytes(path, pickle.dumps(record))
    print(
        f"{case.dataset} {case.tuned_on} {case.model}: done in {record['seconds']:.0f} s",
        flush=True,
    )


def reference(metrics: pd.DataFrame, case: Case, protocol: str,
              metric: str) -> tuple[str, float, pd.Series]:  # fmt: skip
    """The best model of the other families on the case's committed board (`metrics`: the
    committed `metrics.csv` of the case's notebook)."""
    family = model_class(case.model).family
    board = metrics[(metrics.dataset == case.dataset) & (metrics.protocol == protocol)
                    & (metrics.metric == metric) & (metrics.family != family)]  # fmt: skip
    means = board.groupby("model")["value"].mean()
    means = means.sort_values(ascending=not higher_is_better(metric))
    best = str(means.index[0])
    user = per_user_means(case.results, case.dataset, protocol, best, metric)
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


def skipped_note(skipped: list[int]) -> str:
    """What `fitted_choice` passed over: the better configurations whose cells diverged."""
    if not skipped:
        return ""
    return f" ({', '.join(map(str, skipped))} diverged on the boards)"


def seed_mean(values: dict, metric: str) -> str:
    """The mean over seeds of a board's cell metric (`metrics.csv`'s value), or "diverged"."""
    if "diverged" in values:
        return "diverged"
    return f"{np.mean([cell[metric] for cell in values['cells']]):.4f}"


def outcome_words(rows: list[dict], which: str, protocol: str, metric: str,
                  ref_user: pd.Series) -> dict[str, str]:  # fmt: skip
    """{model: "wins / tie / loses (p = Holm-adjusted p)"} of the `which` fits of `rows`
    against the reference's per-user values (Wilcoxon, Holm over the family's models)."""
    tests, fitted = [], []
    words = {}
    for r in rows:
        values = r.get(which, r["study_test"])[protocol]
        if "diverged" in values:  # no fit to test; Holm runs over the others
            words[r["case"].model] = "diverged"
            continue
        user = values["per_user"].groupby("user_id")[metric].mean()
        users = sorted(set(user.index) & set(ref_user.index))
        tests.append(paired_test(user.reindex(users).to_numpy(),
                                 ref_user.reindex(users).to_numpy()))  # fmt: skip
        fitted.append(r)
    adjusted, outcome = outcomes([t["mean_diff"] for t in tests], [t["wilcoxon_p"] for t in tests],
                                 metric)  # fmt: skip
    for r, p, word in zip(fitted, adjusted, outcome, strict=True):
        words[r["case"].model] = f"{word} (p = {p:.2g})"
    return words


def report(out: Path, stem: str, dataset: str = "ml-100k") -> None:
    records = [pickle.loads(p.read_bytes())
               for p in sorted(out.glob(f"{stem}__{dataset}__*.pkl"))]  # fmt: skip
    if not records:
        raise SystemExit(f"no {stem} searches on {dataset} under {out}")
    results = records[0]["case"].results
    committed = pd.read_csv(results / "metrics.csv")
    metrics = ["ndcg@10"] if stem == "30_deep" else ["ndcg@10", "rmse"]
    # On ML-100K the study searched (its choice is the first 4's best); elsewhere it carried
    # ML-100K's values over, and the search here is one it did not make.
    carried = dataset != "ml-100k"
    whiches = (
        ("transferred_test", "study_test", "larger_test")
        if carried
        else ("study_test", "larger_test")
    )
    notes = ["" if carried else committed_note(r) for r in records]  # one read per search
    print(f"{dataset}:\n")
    print("| board | metric | model | "
          + ("carried from ML-100K (committed) | " if carried else "")
          + "best of first 4: index, validation | best of 16: index, validation | test, best of 4"
          + ("" if carried else " (committed)") + " | test, best of 16 | reference | outcome, "
          + ("carried / " if carried else "") + "of 4 / of 16 |")  # fmt: skip
    print("|---|---|---|" + ("---:|" if carried else "") + "---|---|---:|---:|---|---|")
    boards = dict.fromkeys(p for r in records for p in r["case"].boards)
    for protocol, metric in itertools.product(boards, metrics):
        rows = [r for r in records if protocol in r["case"].boards]
        ref_name, ref_mean, ref_user = reference(committed, rows[0]["case"], protocol, metric)
        outcomes = {w: outcome_words(rows, w, protocol, metric, ref_user) for w in whiches}
        for r, note in zip(records, notes, strict=True):
            if protocol not in r["case"].boards:
                continue
            model, scores = r["case"].model, r["scores"]
            s, big = r["study_index"], r["larger_index"]
            kept = committed[(committed.dataset == dataset) & (committed.protocol == protocol)
                             & (committed.model == model)
                             & (committed.metric == metric)]["value"].mean()  # fmt: skip
            larger = r.get("larger_test")
            larger_text = "same" if larger is None else seed_mean(larger[protocol], metric)
            study_text = seed_mean(r["study_test"][protocol], metric)
            cells = [protocol, metric, model]
            if carried:
                cells.append(f"{seed_mean(r['transferred_test'][protocol], metric)} "
                             f"({kept:.4f})")  # fmt: skip
            else:
                study_text += f" ({kept:.4f})"
            # (a search saved before `fitted_choice` passed over nothing)
            passed = [skipped_note(r.get(f"{w}_skipped", [])) for w in ("study", "larger")]
            cells += [f"{s}, {scores[s]:.4f}{note}{passed[0]}",
                      f"{big}, {scores[big]:.4f}{passed[1]}", study_text,
                      larger_text, f"{ref_name} {ref_mean:.4f}",
                      " / ".join(outcomes[w][model] for w in whiches)]  # fmt: skip
            print("| " + " | ".join(cells) + " |")
    seconds = sum(r["seconds"] for r in records)
    trials = sum(sum(r["trial_seconds"]) for r in records)
    print(f"\n{len(records)} searches: {seconds:.0f} s in all, {trials:.0f} s of trials")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stem", choices=["30_deep", "40_multitask", "60_meta"], default="30_deep")
    parser.add_argument("--models", default=",".join((*plans.DEEP_TOPN, *plans.DEEP_SEQUENTIAL,
                                                      *plans.MULTITASK, *plans.META)))  # fmt: skip
    parser.add_argument("--dataset", choices=["ml-100k", "ml-latest-small"], default="ml-100k")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuning_budget"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(args.out, args.stem, args.dataset)
        return
    torch.set_num_threads(1)  # as the study's workers
    args.out.mkdir(parents=True, exist_ok=True)
    for case in cases(args.stem, [m for m in args.models.split(",") if m], args.dataset):
        measure(case, args.budget, args.out)


if __name__ == "__main__":
    main()
