"""The experiment runner: (data set, protocol, models, seeds) -> the results contract.

For each cell (data set, protocol, model configuration, seed) the runner fits the model on the
split's training part, evaluates it on the test part and records costs. It writes, under
`results/<stem>/`:

- `metrics.csv`  dataset,protocol,family,model,seed,metric,value (long format)
- `costs.csv`    dataset,protocol,family,model,seed,fit_seconds,predict_seconds,peak_memory_mb,
                 n_parameters,device
- `topk/<dataset>__<protocol>__<model>__seed<seed>.csv.gz`  user_id,rank,item_id (raw ids)
- `splits/<dataset>__<protocol>__seed<seed>__test.csv.gz`   user_id,item_id (relevant pairs)
- `per_user/<dataset>__<protocol>__<model>__seed<seed>.csv.gz` user_id and one column per metric,
  for paired tests across users.

Finished cells are cached in `results/.cache/cells/` under a key of configuration + data digest +
library version + a digest of the library's source (`code_fingerprint`; not the notebook), so an
interrupted run resumes, an unchanged cell is not recomputed, a baseline one notebook fitted is
reused by the next one that lists it, and a cell computed by other code is never reused. Every
file is written atomically (see `metarec_lib.io`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from metarec_lib import __version__, code_fingerprint
from metarec_lib.costs import measure
from metarec_lib.data.dataset import Dataset, Encoder, Interactions, encode_source
from metarec_lib.io import atomic_write_bytes, atomic_write_csv
from metarec_lib.metrics import (
    coverage,
    interest_metrics,
    logloss_per_user,
    novelty,
    query_ndcg_per_user,
    ranking_metrics,
    rating_metrics,
    rating_metrics_per_user,
)
from metarec_lib.models.base import FAMILIES, Recommender
from metarec_lib.splits import Split

METRIC_COLUMNS = ["dataset", "protocol", "family", "model", "seed", "metric", "value"]
COST_COLUMNS = [
    "dataset", "protocol", "family", "model", "seed", "fit_seconds", "predict_seconds",
    "peak_memory_mb", "n_parameters", "device",
]  # fmt: skip
# Families whose fits usually take longest (`longest_first` starts them first).
LONG_FAMILIES = frozenset({"deep", "multitask", "meta", "transfer"})


def longest_first(families: Sequence[str], sizes: Sequence[int]) -> list[int]:
    """Job indices, likely-long first (a neural family, then more training rows; ties keep
    their order), so a batch does not end with one worker on a long fit while the others
    idle. Results never depend on the order."""
    return sorted(range(len(sizes)), key=lambda i: (families[i] not in LONG_FAMILIES, -sizes[i]))


RANKING_NAMES = ("precision", "recall", "ndcg", "map", "hr", "mrr")
Task = Literal["topn", "rating", "multitask", "coldstart"]
QUERY_KS = (3, 10)  # query_ndcg@k of the cold-start task
EVAL_NEGATIVES = 1  # sampled unseen items per held-out positive for the interest task


@dataclass
class CellResult:
    """What one cell produced; pickled in the cache."""

    metrics: dict[str, float]
    costs: dict[str, Any]
    topk: pd.DataFrame | None = None
    per_user: pd.DataFrame | None = None
    # Model-specific tables, written to <stem>/<name>/<cell>.csv.gz (a gated multi-task
    # model's "gates": task, expert, weight).
    extras: dict[str, pd.DataFrame] | None = None


@dataclass(frozen=True)
class Run:
    """One board of cells: every model of `models` (column `model` -> unfitted model) on
    `split(seed)` for every seed, evaluated as `task` at cut-off `k` (`Experiment.run`)."""

    dataset: Dataset
    protocol: str
    split: Callable[[int], Split]
    models: Mapping[str, Recommender]
    seeds: Sequence[int]
    task: Task = "topn"
    k: int = 10


@dataclass
class Experiment:
    """Runs cells for one notebook (`stem`) and keeps its result files up to date.

    Each `run` call adds its cells to what this experiment has produced so far and rewrites
    `metrics.csv` and `costs.csv` with all of them, so the files always describe the current
    notebook run (and nothing stale from an earlier one).
    """

    stem: str
    results_dir: str | Path = "results"
    use_cache: bool = True
    progress: bool = True
    # Where uncached cells are computed (`metarec_lib.executors`); None: the process default
    # (METAREC_EXECUTOR / METAREC_WORKERS, else one cell after another in this process).
    executor: Any = None
    _metrics: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _costs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # Splits `prefetch` made, by (data set, protocol) and seed, for `run` to reuse.
    _splits: dict[tuple[str, str], dict[int, Split]] = field(default_factory=dict, repr=False)
    # Cells whose audit files (top-K, per-user) `prefetch` wrote as they came back.
    _audited: set[str] = field(default_factory=set, repr=False)
    # Inside `deferred_tables`: metrics.csv and costs.csv are written once, at its end.
    _deferred: bool = field(default=False, repr=False)

    @property
    def out(self) -> Path:
        return Path(self.results_dir) / self.stem

    @property
    def cache(self) -> Path:
        """Cell cache shared by every notebook writing under the same results folder."""
        return cache_dir(self.results_dir, "cells")

    def run(
        self,
        dataset: Dataset,
        protocol: str,
        split: Callable[[int], Split],
        models: Mapping[str, Recommender] | Sequence[Recommender],
        seeds: Iterable[int],
        *,
        task: Task = "topn",
        k: int = 10,
    ) -> pd.DataFrame:
        """Fit and evaluate every model on `split(seed)` for every seed; returns metric rows.

        `models` maps the `model` column to an unfitted model (a sequence uses each model's
        `name`). `task="topn"` ranks all items (seen ones excluded) for every test user;
        `task="rating"` predicts the held-out ratings (rmse, mae); `task="multitask"` ranks
        like "topn" and adds, for the models that can, rating (rmse, mae) and interest (auc,
        logloss) metrics: a top-N model there is a reference for the interest task, a rating
        model for both.
        """
        if isinstance(models, Mapping):
            named = dict(models)
        else:
            named = {m.name: m for m in models}
        seeds = list(seeds)
        self.prefetch([Run(dataset, protocol, split, named, seeds, task, k)])
        splits = self._splits.pop((dataset.name, protocol), {})
        encoder = dataset.encoder()
        rows: list[dict[str, Any]] = []
        bar = tqdm(
            total=len(seeds) * len(named),
            desc=f"{self.stem} {dataset.name} {protocol}",
            disable=not self.progress,
            leave=False,
        )
        for seed in seeds:
            the_split: Split | None = splits.get(seed)
            for label, model in named.items():
                key = self._key(dataset, protocol, label, model, seed, task, k)
                result = self._load(key)
                if result is None:
                    if the_split is None:
                        the_split = split(seed)
                    result = evaluate_cell(model, the_split, encoder, seed=seed, task=task, k=k)
                    self._save(key, result)
                base = _base(dataset.name, protocol, label, model, seed)
                if key not in self._audited:
                    self._write_audit(base, result)
                new = [{**base, "metric": m, "value": v} for m, v in result.metrics.items()]
                rows.extend(new)
                self._metrics = [r for r in self._metrics if _cell(r) != _cell(base)] + new
                self._costs = [c for c in self._costs if _cell(c) != _cell(base)]
                self._costs.append({**base, **result.costs})
                bar.update()
            if task in ("topn", "multitask", "coldstart"):
                self._write_split(dataset.name, protocol, seed, the_split, split)
        bar.close()
        self.write_tables()
        return pd.DataFrame(rows, columns=METRIC_COLUMNS)

    def prefetch(self, runs: Sequence[Run]) -> None:
        """With a parallel executor, compute every uncached cell of `runs` there, as one batch,
        and cache each as it is done (an interrupted run resumes); `run` then reads them back
        in its fixed order. One batch for a notebook's boards keeps every worker busy until the
        last cell, where a batch per board would leave workers idle at each board's end. The
        splits it makes are kept for `run`, and each cell's audit files (top-K, per-user) are
        written as it comes back, while the workers compute the others, not all after the last
        one in `run`. In process it only checks the models."""
        from metarec_lib.executors import CellJob, default_executor

        for r in runs:
            for label, model in r.models.items():
                if model.family not in FAMILIES:
                    raise ValueError(f"model {label}: unknown family {model.family!r}")
                if r.task == "rating" and not model.predicts_ratings:
                    raise ValueError(f"model {label} does not predict ratings; "
                                     f"task={r.task!r} needs it")  # fmt: skip
        executor = self.executor or default_executor()
        if executor.in_process:
            return  # one after another, inside `run`'s loop
        keys, jobs, bases = [], [], []
        for r in runs:
            encoder = r.dataset.encoder()
            splits = self._splits.setdefault((r.dataset.name, r.protocol), {})
            for seed in r.seeds:
                for label, model in r.models.items():
                    key = self._key(r.dataset, r.protocol, label, model, seed, r.task, r.k)
                    if self.use_cache and self._path(key).exists():
                        continue
                    if seed not in splits:
                        splits[seed] = r.split(seed)
                    keys.append(key)
                    bases.append(_base(r.dataset.name, r.protocol, label, model, seed))
                    group = model.training_group or label
                    jobs.append(CellJob(model, splits[seed], encoder, seed, r.task, r.k,
                                        affinity=f"{r.dataset.name}|{group}|{seed}"))  # fmt: skip
        if not jobs:
            return
        if not self.use_cache:
            raise ValueError("Experiment: a parallel executor needs use_cache=True (the cells "
                             "come back through the cell cache)")  # fmt: skip
        order = longest_first([j.model.family for j in jobs], [len(j.split.train) for j in jobs])
        keys, jobs, bases = ([keys[i] for i in order], [jobs[i] for i in order],
                             [bases[i] for i in order])  # fmt: skip
        boards = sorted({(r.dataset.name, r.protocol) for r in runs})
        desc = f"{self.stem} {' '.join(boards[0])}" if len(boards) == 1 else f"{self.stem} cells"
        for index, result in tqdm(
            executor.completed(jobs),
            total=len(jobs),
            disable=not self.progress,
            leave=False,
            desc=f"{desc} on {executor.name}",
        ):
            self._save(keys[index], result)
            self._write_audit(bases[index], result)
            self._audited.add(keys[index])

    def record(
        self,
        rows: pd.DataFrame,
        costs: pd.DataFrame | None = None,
        per_user: Mapping[tuple[str, str, str, int], pd.DataFrame] | None = None,
    ) -> None:
        """Add results computed outside `run` (a protocol that is not a per-model cell, such as
        algorithm selection): metric rows and cost rows in the contract's columns (replacing
        earlier rows of the same cells) and per-user frames keyed by (dataset, protocol, model,
        seed); then rewrite the tables. An Experiment that has run nothing itself first reads
        back the notebook's current metrics.csv and costs.csv, so they keep the other cells."""
        missing = [c for c in METRIC_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"Experiment.record: rows lack column(s) {missing}")
        if not self._metrics and (self.out / "metrics.csv").exists():
            # A fresh Experiment in a notebook that already ran cells through another one (run_plans
            # then algorithm selection): keep what that one wrote.
            self._metrics = pd.read_csv(self.out / "metrics.csv").to_dict("records")
            if (self.out / "costs.csv").exists():
                self._costs = pd.read_csv(self.out / "costs.csv").to_dict("records")
        cells = {_cell(r) for r in rows.to_dict("records")}
        self._metrics = [r for r in self._metrics if _cell(r) not in cells]
        self._metrics += rows[METRIC_COLUMNS].to_dict("records")
        if costs is not None and len(costs):
            done = {_cell(c) for c in costs.to_dict("records")}
            self._costs = [c for c in self._costs if _cell(c) not in done]
            self._costs += costs[COST_COLUMNS].to_dict("records")
        for (dataset, protocol, model, seed), frame in (per_user or {}).items():
            name = f"{dataset}__{protocol}__{model}__seed{seed}.csv.gz"
            atomic_write_csv(self.out / "per_user" / name, frame)
        self.write_tables()

    # -- files ----------------------------------------------------------------------------
    @contextmanager
    def deferred_tables(self) -> Iterator[None]:
        """Within: `run` and `record` keep their rows but leave metrics.csv and costs.csv as
        they were; both are written once at the end. A notebook running several boards wraps
        them in it, so a run interrupted at a later board leaves the previous complete tables
        (with the notebook and run.json they belong to), not the first boards' rows alone."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
        self.write_tables()  # not reached when the block raised

    def write_tables(self) -> None:
        """Rewrite metrics.csv and costs.csv from every cell this experiment has run (not
        inside `deferred_tables`, which writes them at its end)."""
        if self._deferred:
            return
        metrics = pd.DataFrame(self._metrics, columns=METRIC_COLUMNS)
        costs = pd.DataFrame(self._costs, columns=COST_COLUMNS)
        order = ["dataset", "protocol", "family", "model", "seed"]
        atomic_write_csv(self.out / "metrics.csv", metrics.sort_values(order + ["metric"]))
        atomic_write_csv(self.out / "costs.csv", costs.sort_values(order))

    def _write_audit(self, base: dict[str, Any], result: CellResult) -> None:
        name = f"{base['dataset']}__{base['protocol']}__{base['model']}__seed{base['seed']}.csv.gz"
        if result.topk is not None:
            atomic_write_csv(self.out / "topk" / name, result.topk)
        if result.per_user is not None:
            atomic_write_csv(self.out / "per_user" / name, result.per_user)
        for folder, table in (getattr(result, "extras", None) or {}).items():
            atomic_write_csv(self.out / folder / name, table)

    def _write_split(
        self, dataset: str, protocol: str, seed: int, computed: Split | None,
        make: Callable[[int], Split],
    ) -> None:  # fmt: skip
        """Save the test split; recomputed only when every cell was cached and the file is gone."""
        path = self.out / "splits" / f"{dataset}__{protocol}__seed{seed}__test.csv.gz"
        if computed is None and path.exists():
            return
        split = computed if computed is not None else make(seed)
        test = split.test[["user_id", "item_id"]].sort_values(["user_id", "item_id"])
        atomic_write_csv(path, test)

    # -- cache ----------------------------------------------------------------------------
    def _key(self, dataset: Dataset, protocol: str, label: str, model: Recommender,
             seed: int, task: str, k: int) -> str:  # fmt: skip
        config = {
            "dataset": dataset.name, "digest": dataset.digest, "protocol": protocol,
            "label": label, "family": model.family, "config": model.get_config(),
            "device": model.compute_device(), "seed": seed, "task": task, "k": k,
            "version": __version__, "code": code_fingerprint(),
        }  # fmt: skip
        blob = json.dumps(config, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.cache / f"{key}.pkl"

    def _load(self, key: str) -> CellResult | None:
        path = self._path(key)
        if not (self.use_cache and path.exists()):
            return None
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, AttributeError):
            path.unlink(missing_ok=True)  # an unreadable cache entry is recomputed
            return None

    def _save(self, key: str, result: CellResult) -> None:
        if self.use_cache:
            atomic_write_bytes(self._path(key), pickle.dumps(result))


def cache_dir(results_dir: str | Path, kind: str) -> Path:
    """`results/.cache/<kind>/`: caches shared across notebooks (never committed)."""
    return Path(results_dir) / ".cache" / kind


def _base(dataset: str, protocol: str, label: str, model: Recommender, seed: int,
          ) -> dict[str, Any]:  # fmt: skip
    """The contract's columns that name one cell: dataset, protocol, family, model, seed."""
    return {"dataset": dataset, "protocol": protocol, "family": model.family, "model": label,
            "seed": seed}  # fmt: skip


def _cell(row: Mapping[str, Any]) -> tuple:
    return (row["dataset"], row["protocol"], row["model"], row["seed"])


def evaluate_cell(
    model: Recommender,
    split: Split,
    encoder: Encoder,
    *,
    seed: int,
    task: Task = "topn",
    k: int = 10,
) -> CellResult:
    """Fit one (fresh copy of a) model on `split.train` and evaluate it on `split.test`."""
    model = model.clone()
    device = model.compute_device()
    model.device = device
    # A split's valid part (leave-last-one-out) served tuning; the final fit sees it as
    # history, as the test item's predecessor, exactly like a deployed model would (a
    # cold-start pool variant: the pooled share of it, `Split.refit_valid`).
    history = split.history()
    train = encoder.encode(history, tags_until=split.time_cutoff)
    if split.source is not None:  # a transfer protocol: the model sees the source domain too
        train = dataclasses.replace(train, source=encode_source(split.source, encoder))
    if split.cold_users is not None:  # cold start: these users' rows are supports only
        train = dataclasses.replace(train, cold_users=encoder.user_index(split.cold_users))
    test = encoder.encode(split.test)
    with measure(device) as fit_cost:
        model.fit(train, seed=seed)
    metrics: dict[str, float] = {}
    topk_frame = per_user = None
    extras: dict[str, pd.DataFrame] | None = None
    if task == "rating":
        with measure(device) as predict_cost:
            pred = model.predict(test.frame["user"].to_numpy(), test.frame["item"].to_numpy())
        truth, users = test.frame["rating"].to_numpy(), test.frame["user"].to_numpy()
        metrics.update(rating_metrics(truth, pred))
        per = rating_metrics_per_user(truth, pred, users, encoder.n_users)
        present = np.unique(users)
        per_user = pd.DataFrame(
            {"user_id": encoder.user_ids[present], **{m: v[present] for m, v in per.items()}}
        )
    else:
        relevant = test.matrix(binary=True)
        users = np.unique(test.frame["user"].to_numpy())
        with measure(device) as predict_cost:
            top, _ = model.recommend(users, k)
        full = np.full((encoder.n_users, k), -1, dtype=np.int64)
        full[users] = top
        per = ranking_metrics(full[users], relevant[users], ks=(k,), names=RANKING_NAMES)
        for name, values in per.items():
            metrics[name] = float(np.nanmean(values))
        pop = np.bincount(train.frame["item"].to_numpy(), minlength=encoder.n_items)
        metrics[f"coverage@{k}"] = float(coverage(top, encoder.n_items))
        metrics[f"novelty@{k}"] = float(novelty(top, pop, max(train.n_users, 1)))
        rows, ranks = np.nonzero(top >= 0)
        topk_frame = pd.DataFrame(
            {
                "user_id": encoder.user_ids[users[rows]],
                "rank": ranks + 1,
                "item_id": encoder.item_ids[top[rows, ranks]],
            }
        )
        per_user = pd.DataFrame({"user_id": encoder.user_ids[users], **per})
        if task == "coldstart":
            _add_query_metrics(model, test, metrics, per_user, users)
        if task == "multitask":
            _add_multitask_metrics(model, train, test, seed, metrics, per_user, users)
            if hasattr(model, "gate_usage"):
                extras = {"gates": gate_table(model, test)}
    costs = {
        # A model that reused a training remembered in this process (a source pretraining, a
        # meta-training shared by the support sizes) is charged what that training cost.
        "fit_seconds": fit_cost.seconds + float(getattr(model, "reused_seconds_", 0.0)),
        "predict_seconds": predict_cost.seconds,
        "peak_memory_mb": max(fit_cost.peak_memory_mb, predict_cost.peak_memory_mb),
        "n_parameters": int(model.n_parameters),
        "device": device,
    }
    return CellResult(metrics=metrics, costs=costs, topk=topk_frame, per_user=per_user,
                      extras=extras)  # fmt: skip


def gate_table(model: Any, test: Interactions) -> pd.DataFrame:
    """Mean gate weight of each expert per task over the held-out rated pairs: columns task,
    expert, weight (each task's weights sum to 1)."""
    usage = model.gate_usage(test.frame["user"].to_numpy(), test.frame["item"].to_numpy())
    return pd.DataFrame(
        [{"task": task, "expert": name, "weight": float(w)}
         for task, weights in usage.items()
         for name, w in zip(model.expert_names, weights, strict=True)]
    )  # fmt: skip


def eval_negatives(
    seen: sp.csr_matrix, users: np.ndarray, per_positive: int, seed: int, tries: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` uniformly drawn items per entry of `users` that the user has not seen
    (`seen`: train and test pairs), fixed by `seed`; draws that keep colliding after `tries`
    rounds are dropped. Returns (users, items) of the negatives."""
    rng = np.random.default_rng([int(seed), 7919])  # the interest task's own stream
    n_items = seen.shape[1]
    users = np.repeat(np.asarray(users, np.int64), per_positive)
    items = rng.integers(n_items, size=len(users))
    bad = np.arange(len(users))
    for _ in range(tries + 1):
        bad = bad[np.asarray(seen[users[bad], items[bad]]).ravel() > 0]
        if len(bad) == 0:
            break
        items[bad] = rng.integers(n_items, size=len(bad))
    keep = np.ones(len(users), dtype=bool)
    keep[bad] = False
    return users[keep], items[keep]


def _add_query_metrics(
    model: Recommender, test: Interactions, metrics: dict[str, float], per_user: pd.DataFrame,
    users: np.ndarray,
) -> None:  # fmt: skip
    """In place: the cold-start query metrics. query_ndcg@3 and @10 rank each user's query
    items by `predict_raw` (unclipped ratings, or scores for a ranking model: clipping would
    tie the items predicted past an end of the rating scale) with graded relevance; a model
    that predicts ratings also gets rmse and mae of its (clipped) `predict` on the query.
    Per-user values go to `per_user` (rows `users`)."""
    f = test.frame
    test_users, test_items = f["user"].to_numpy(), f["item"].to_numpy()
    truth = f["rating"].to_numpy()
    order = np.asarray(model.predict_raw(test_users, test_items), np.float64)
    for k in QUERY_KS:
        values = query_ndcg_per_user(test_users, truth, order, k, test.n_users)[users]
        per_user[f"query_ndcg@{k}"] = values
        metrics[f"query_ndcg@{k}"] = float(np.nanmean(values))
    if model.predicts_ratings:
        pred = np.asarray(model.clip_ratings(order), np.float64)  # what `predict` gives
        metrics.update(rating_metrics(truth, pred))
        per = rating_metrics_per_user(truth, pred, test_users, test.n_users)
        for name, values in per.items():
            per_user[name] = values[users]


def _add_multitask_metrics(
    model: Recommender, train: Interactions, test: Interactions, seed: int,
    metrics: dict[str, float], per_user: pd.DataFrame, users: np.ndarray,
) -> None:  # fmt: skip
    """In place: rating metrics (rmse, mae on held-out ratings) of a model that predicts
    ratings, and interest metrics (auc, logloss on held-out positives plus EVAL_NEGATIVES
    sampled unseen items each) of a model with `predict_interest`; per-user rmse, mae and
    logloss go to `per_user` (rows `users`) for paired tests."""
    f = test.frame
    test_users, test_items = f["user"].to_numpy(), f["item"].to_numpy()
    if model.predicts_ratings:
        truth = f["rating"].to_numpy()
        pred = model.predict(test_users, test_items)
        metrics.update(rating_metrics(truth, pred))
        per = rating_metrics_per_user(truth, pred, test_users, train.n_users)
        for name, values in per.items():
            per_user[name] = values[users]
    if hasattr(model, "predict_interest"):
        seen = train.matrix(binary=True) + test.matrix(binary=True)
        neg_users, neg_items = eval_negatives(seen, test_users, EVAL_NEGATIVES, seed)
        pair_users = np.r_[test_users, neg_users]
        labels = np.r_[np.ones(len(test_users)), np.zeros(len(neg_users))]
        probs = model.predict_interest(pair_users, np.r_[test_items, neg_items])
        metrics.update(interest_metrics(labels, probs))
        per_user["logloss"] = logloss_per_user(labels, probs, pair_users, train.n_users)[users]


def load_metrics(results_dir: str | Path, stems: Iterable[str] | None = None) -> pd.DataFrame:
    """All `metrics.csv` under `results_dir` (or the named stems), concatenated."""
    root = Path(results_dir)
    paths = (
        [root / s / "metrics.csv" for s in stems] if stems else sorted(root.glob("*/metrics.csv"))
    )
    frames = [pd.read_csv(p) for p in paths if p.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
