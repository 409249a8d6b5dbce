"""One family notebook's experiments: tune every model with the same budget, then run the grid.

Tuning happens once per (data set, protocol, model) on a validation carve-out of the first
seed's (or fold's) training data; the test part is never seen. The chosen hyperparameters are
then used for every seed. Iterative models that early-stopped during tuning are refitted on the
full training data for the number of epochs that was best on validation (`best_epoch_`).
Tuning results are cached like runner cells (`results/.cache/tuning/`, shared by notebooks), so
a rerun, a resumed run or a later notebook with the same model and protocol does not tune again.
A protocol with its own validation part (leave-last-one-out) tunes on that part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from metarec_lib import __version__, code_fingerprint
from metarec_lib.data.dataset import Dataset, Interactions
from metarec_lib.io import atomic_write_csv, atomic_write_json
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.notebook import NotebookConfig
from metarec_lib.protocols import carveout_how, seeds_for, split_factory, task_of
from metarec_lib.runner import Experiment, Run, cache_dir, longest_first
from metarec_lib.splits import Split, validation_carveout
from metarec_lib.tuning import SearchResult, choose, configurations

VALID_FRACTION = 0.1
SMOKE_EPOCHS = 2  # smoke runs check the plumbing, not the models: iterative fits stop here
EPOCH_PARAMS = ("epochs", "iterations", "source_epochs")  # what SMOKE_EPOCHS caps


@dataclass(frozen=True)
class Plan:
    """Models to run under one protocol; `tune_on` reuses another protocol's tuned values
    (only one with the same split: its training data must not hold this protocol's test
    pairs), `tune_data` another data set's, `tune_metric` names a search's validation metric."""

    protocol: str
    models: Sequence[str]
    tune_on: dict[str, str] = field(default_factory=dict)
    # model -> data set whose tuned values every data set uses (when that data set is loaded):
    # for models too costly to tune on every data set; the hyperparameter table says so.
    tune_data: dict[str, str] = field(default_factory=dict)
    # Data sets this plan runs on (None: every loaded one).
    datasets: tuple[str, ...] | None = None
    # model -> validation metric its search reads instead of the protocol's ("rmse": a rating
    # model on a top-N protocol is tuned for its ratings on that protocol's own carve-out).
    tune_metric: dict[str, str] = field(default_factory=dict)
    # The plan trains on other data than the protocol it is tuned on (a cold-start pool
    # variant: fewer meta-train users), so an iterative model's pass count is recalibrated on
    # this protocol's own validation data, as on another data set (`tune_for_data`).
    recalibrate: bool = False


@dataclass
class Tuned:
    params: dict[str, Any]
    score: float
    metric: str
    trials: pd.DataFrame
    # The chosen configuration's validation curve: epoch, loss, valid (empty: not iterative).
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class TuneRequest:
    """One search: `budget` configurations of model `name` on `dataset` under `protocol`,
    with `fixed` values over every configuration and `split` (seed -> Split) standing in for
    the protocol's registered split factory (see `tune`); `metric` ("rmse" or "ndcg@10")
    overrides the validation metric the protocol's task implies."""

    dataset: Dataset
    protocol: str
    name: str
    budget: int
    fixed: dict[str, Any] = field(default_factory=dict)
    split: Callable[[int], Split] | None = None
    metric: str | None = None


def tune(
    dataset: Dataset,
    protocol: str,
    name: str,
    *,
    budget: int,
    seed: int,
    device: str,
    cache_dir: Path,
    progress: bool = True,
    fixed: dict[str, Any] | None = None,
    split: Callable[[int], Split] | None = None,
) -> Tuned:
    """Random search for one model on validation data of the protocol's first split.

    `fixed` hyperparameters override every configuration (smoke runs cap epochs with it).
    `split` (seed -> Split) stands in for the protocol's registered split factory, for protocols
    built outside `protocols` (the transfer settings' target fractions); the cache key then
    also holds a digest of the validation data it gives, so two splits under one `protocol`
    name never share a result.
    """
    request = TuneRequest(dataset, protocol, name, budget, dict(fixed or {}), split)
    [tuned] = tune_many([request], seed=seed, device=device, cache_dir=cache_dir,
                        progress=progress)  # fmt: skip
    return tuned


def tune_many(
    requests: Sequence[TuneRequest],
    *,
    seed: int,
    device: str,
    cache_dir: Path,
    progress: bool = True,
) -> list[Tuned]:
    """`tune` for every request, in order. The trials of all the requests the cache does not
    hold run as one batch on the parallel executor (`executors.default_executor`), so no worker
    waits for one model's slowest trial before the next model's first."""
    from metarec_lib.executors import TrialJob, default_executor, run_trial

    out: list[Tuned | None] = [None] * len(requests)
    searches = []  # (index, request, cache path, configurations, first job, metric kind)
    jobs: list[TrialJob] = []
    same: dict[int, int] = {}  # a request asked again -> the first one that asked it
    first_of: dict[str, int] = {}
    for i, req in enumerate(requests):
        cls = model_class(req.name)
        compute = get_model(req.name, device=device).compute_device()
        # A split from outside `protocols` is known by its data: it is computed now, for the key.
        data = _validation_data(req, seed) if req.split is not None else None
        key = _key(req.dataset.digest, req.protocol, req.name, cls, req.budget, seed, req.fixed,
                   req.metric, compute,
                   split=validation_digest(*data[:2]) if data is not None else None)  # fmt: skip
        if key in first_of:
            same[i] = first_of[key]
            continue
        first_of[key] = i
        path = cache_dir / f"tune-{key}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            out[i] = Tuned(cached["params"], cached["score"], cached["metric"],
                           pd.DataFrame(cached["trials"]),
                           pd.DataFrame(cached.get("curve", {})))  # fmt: skip
            continue
        train, valid, kind = data or _validation_data(req, seed)
        configs = configurations(cls.space, req.budget, seed)
        searches.append((i, req, path, configs, len(jobs), kind))
        jobs += [TrialJob(req.name, {**c, **req.fixed}, device, train, valid, kind, seed,
                          higher_is_better=kind != "rmse") for c in configs]  # fmt: skip
    executor = default_executor()
    if executor.in_process or not jobs:
        first = searches[0][1] if searches else None
        desc = f"tune {first.name} {first.dataset.name} {first.protocol}" if first else "tune"
        bar = tqdm(jobs, desc=desc, disable=not progress, leave=False)
        outcomes = [run_trial(job, single_thread=False) for job in bar]
    else:
        order = longest_first([model_class(j.name).family for j in jobs],
                              [len(j.train) for j in jobs])  # fmt: skip
        done = executor.map_trials([jobs[i] for i in order])
        outcomes = [None] * len(jobs)
        for position, i in enumerate(order):
            outcomes[i] = done[position]
    for i, req, path, configs, first_job, kind in searches:
        cls = model_class(req.name)
        result = choose(configs, outcomes[first_job : first_job + len(configs)], cls.space,
                        higher_is_better=kind != "rmse",
                        desc=f"tune {req.name} {req.dataset.name} {req.protocol}")  # fmt: skip
        params = refit_params(cls, result, req.fixed)
        metric = cls.validation_metric if kind == "joint" else kind
        tuned = Tuned(params, result.best_score, metric, result.trials, result.best_info["curve"])
        atomic_write_json(path, {"params": params, "score": tuned.score, "metric": tuned.metric,
                                 "trials": result.trials.to_dict(orient="list"),
                                 "curve": tuned.curve.to_dict(orient="list")})  # fmt: skip
        out[i] = tuned
    for i, j in same.items():
        out[i] = out[j]
    return out  # type: ignore[return-value]


def _validation_data(req: TuneRequest, seed: int) -> tuple[Any, Any, str]:
    """(train, valid, metric kind) of a request: the protocol's own validation part when it
    has one (leave-last-one-out, cold start's meta-valid queries), else a carve-out of the first
    split's training data (`carveout_how`). Cold start fits on the meta-train users and the
    meta-valid users' supports: the meta-test users' rows are left out, since their supports
    at one k hold query items of a smaller k. Rating models are tuned on RMSE (a cold-start
    rating model on its query RMSE), multi-task models on their joint score of both tasks
    ("joint"), the others on NDCG@10, unless the request names its `metric`."""
    cls = model_class(req.name)
    task = task_of(req.protocol)
    first = seeds_for(req.protocol, [seed])[0]
    split = (req.split or split_factory(req.protocol, req.dataset))(first)
    how = carveout_how(req.protocol)
    if split.valid is not None:
        fit_part, valid_part = split.train, split.valid
    else:
        fit_part, valid_part = validation_carveout(
            split.train, fraction=VALID_FRACTION, seed=first, how=how
        )
    tags_until = None  # a time split's fit knows only what was known by its latest rating
    if split.time_cutoff is not None or how == "global":
        tags_until = fit_part["timestamp"].max().item()
    encoder = req.dataset.encoder()
    if split.cold_users is not None:
        fit_part = fit_part[~fit_part["user_id"].isin(split.cold_users)]
    train = encoder.encode(fit_part, tags_until=tags_until)
    valid = encoder.encode(valid_part)
    if split.valid_users is not None:
        new = np.asarray(split.valid_users)
        train = dataclasses.replace(train, cold_users=np.sort(encoder.user_index(new)))
    rating = task == "rating" or (task == "coldstart" and cls.predicts_ratings)
    kind = "rmse" if rating else "ndcg@10"
    if task == "multitask" and hasattr(cls, "validation_score"):
        kind = "joint"
    if req.metric is not None:
        if req.metric not in ("rmse", "ndcg@10"):
            raise ValueError(f"tune {req.name}: metric={req.metric!r}; expected 'rmse' or "
                             f"'ndcg@10'")  # fmt: skip
        kind = req.metric
    return train, valid, kind


def request_for(config: NotebookConfig, dataset: Dataset, protocol: str, name: str, budget: int,
                fixed: dict[str, Any] | None = None,
                split: Callable[[int], Split] | None = None,
                metric: str | None = None) -> TuneRequest:  # fmt: skip
    """A `TuneRequest` as the notebook asks it (`tune_all` runs it with the notebook's first
    seed, device and shared tuning cache): in smoke runs every epoch parameter (EPOCH_PARAMS)
    is capped at SMOKE_EPOCHS, over `fixed`."""
    fixed = dict(fixed or {})
    if config.smoke:
        cls = model_class(name)
        fixed.update({p: SMOKE_EPOCHS for p in EPOCH_PARAMS if p in cls.defaults})
    return TuneRequest(dataset, protocol, name, budget, fixed, split, metric)


def tune_all(config: NotebookConfig, requests: Sequence[TuneRequest]) -> list[Tuned]:
    """`tune_many` with the notebook's first seed, device and shared tuning cache."""
    return tune_many(requests, seed=config.seeds[0], device=config.device,
                     cache_dir=cache_dir(config.results_dir, "tuning"),
                     progress=not config.smoke)  # fmt: skip


def refit_params(cls: type[Recommender], result: SearchResult,
                 fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The values a search's winner is refitted with: its configuration, `fixed` over it, and
    for an iterative model the epoch count it did best at on validation (`best_epoch` of its
    `describe_fit`)."""
    params = {**result.best, **(fixed or {})}
    param, best_epoch = epoch_param(cls), result.best_info.get("best_epoch")
    if best_epoch is not None and param is not None:
        params[param] = int(best_epoch)
    return params


def epoch_param(cls: type[Recommender]) -> str | None:
    """The hyperparameter that counts an iterative model's passes (None: not iterative)."""
    return next((p for p in ("epochs", "iterations") if p in cls.defaults), None)


def tune_for_data(config: NotebookConfig, wanted: Sequence[tuple[Dataset, Dataset, str, str, int]],
                  metrics: Sequence[str | None] | None = None,
                  recalibrate_on: Sequence[str | None] | None = None,
                  ) -> list[tuple[Tuned, Tuned | None, Tuned | None]]:  # fmt: skip
    """For each (dataset, tune_ds, protocol, name, budget): (the values tuned on `tune_ds`,
    the recalibration, the recalibration when it is used). When `tune_ds` is another data set,
    or `recalibrate_on` (one per wanted search, None: no) names a protocol whose training data
    differ from `protocol`'s, and the model is iterative, the recalibration keeps the carried
    values and trains one configuration on `dataset`'s own validation data (of that protocol)
    with early stopping; its best epoch is the count the cells train (the third is then the
    recalibration, else None). The number of
    passes depends on the data (CL4SRec's best on ml-latest-small is 21 epochs where
    ML-100K's was 7), so it is not carried from another data set, unless the recalibration
    found no count (`informative`). All searches run as one batch (`tune_many`), then all
    recalibrations as another. `metrics` (one per wanted search, None: the protocol's) are
    the `TuneRequest.metric`s."""
    metrics = list(metrics) if metrics is not None else [None] * len(wanted)
    own_protocol = list(recalibrate_on) if recalibrate_on is not None else [None] * len(wanted)
    tuned = tune_all(config, [request_for(config, tune_ds, protocol, name, budget, metric=m)
                              for (_, tune_ds, protocol, name, budget), m
                              in zip(wanted, metrics, strict=True)])  # fmt: skip
    recalibrate, params = {}, {}
    for i, ((dataset, tune_ds, protocol, name, _), t) in enumerate(zip(wanted, tuned, strict=True)):
        param = epoch_param(model_class(name))
        if (tune_ds is not dataset or own_protocol[i] is not None) and param is not None:
            carried = {k: v for k, v in t.params.items() if k != param}
            recalibrate[i] = request_for(config, dataset, own_protocol[i] or protocol, name, 1,
                                         carried, metric=metrics[i])  # fmt: skip
            params[i] = param
    own = dict(zip(recalibrate, tune_all(config, list(recalibrate.values())), strict=True))
    return [(t, own.get(i),
             own[i] if i in own and informative(own[i], params[i], t.params.get(params[i]))
             else None)
            for i, t in enumerate(tuned)]  # fmt: skip


def informative(own: Tuned, param: str | None, carried: int | None = None) -> bool:
    """Whether an epoch recalibration chose a count: its validation improved after the first
    evaluation, or its curve reached the `carried` count (the one tuned elsewhere) and that
    count did worse than the first evaluation (the model overfits this data from the start:
    PretrainAdapt on ml-latest-small, validation RMSE 0.895 after 1 epoch, 0.907 after 3).
    When early stopping keeps the first evaluation and stops before the carried count, the
    model may still be on a plateau (SASRec's validation on ml-latest-small stays near
    MostPop's for about 7 epochs, then climbs), which says nothing about how long it should
    train, so the carried count stays."""
    if param is None or param not in own.params or own.curve.empty:
        return False
    evaluated = own.curve.dropna(subset=["valid"])
    if not len(evaluated):
        return False
    first, last = int(evaluated["epoch"].min()), int(evaluated["epoch"].max())
    if int(own.params[param]) > first:
        return True
    return carried is not None and first < int(carried) <= last


def describe_fit(model: Recommender, *, higher_is_better: bool) -> dict[str, Any]:
    """What tuning keeps of a trial's fitted model: its best epoch (`best_epoch_of`) and its
    validation curve (`training_curve`), so the chosen configuration is not fitted again."""
    return {"best_epoch": best_epoch_of(model, higher_is_better=higher_is_better),
            "curve": training_curve(model)}  # fmt: skip


def training_curve(model: Recommender) -> pd.DataFrame:
    """Per-epoch training loss and validation value of a model fitted with `valid`:
    columns epoch, loss, valid (NaN where not measured); empty for non-iterative models."""
    log = getattr(model, "train_log_", None)
    if log is not None:
        return pd.DataFrame({"epoch": log["epoch"], "loss": log["loss"],
                             "valid": log["valid_score"]})  # fmt: skip
    losses = dict(getattr(model, "loss_history_", None) or [])
    valid = dict(getattr(model, "history_", None) or [])
    epochs = sorted(set(losses) | set(valid))
    return pd.DataFrame({"epoch": epochs, "loss": [losses.get(e, np.nan) for e in epochs],
                         "valid": [valid.get(e, np.nan) for e in epochs]})  # fmt: skip


def best_epoch_of(model: Recommender, *, higher_is_better: bool) -> int | None:
    """The epoch an early-stopped model did best on validation (`best_epoch_`, else from its
    `history_` of (epoch, validation value)); None for models that do not iterate."""
    if getattr(model, "best_epoch_", None) is not None:
        return int(model.best_epoch_)
    history = getattr(model, "history_", None)
    if not history:
        return None
    pick = max if higher_is_better else min
    return int(pick(history, key=lambda h: h[1])[0])


def validation_digest(train: Interactions, valid: Interactions) -> str:
    """SHA-256 of the (user, item, rating, timestamp) rows of a search's training and
    validation data, in order: what keys a search on a split from outside `protocols`. Not
    `interactions_digest`, which sorts the rows: a fit can depend on their order."""
    h = hashlib.sha256()
    for part in (train, valid):
        frame = part.frame[["user", "item", "rating", "timestamp"]]
        h.update(str(len(frame)).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _key(digest: str, protocol: str, name: str, cls: type[Recommender], budget: int,
         seed: int, fixed: dict[str, Any], metric: str | None = None,
         device: str = "cpu", split: str | None = None) -> str:  # fmt: skip
    """The tuning cache key: everything a search's result depends on, the device the model
    computes on included (a CPU search is not a CUDA one: 11 models fit otherwise there), and
    for a split from outside `protocols` the digest of its validation data (`split`)."""
    config = {"digest": digest, "protocol": protocol, "model": name, "defaults": cls.defaults,
              "space": repr(cls.space), "budget": budget, "seed": seed, "version": __version__,
              "code": code_fingerprint(),
              "valid": VALID_FRACTION, "device": device}  # fmt: skip
    if fixed:  # absent when empty, so existing cache keys stay valid
        config["fixed"] = fixed
    if metric is not None:
        config["metric"] = metric
    if split is not None:
        config["split"] = split
    blob = json.dumps(
        config,
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_plans(
    config: NotebookConfig,
    data: dict[str, Dataset],
    plans: Sequence[Plan],
    *,
    budget: int = 20,
    budgets: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tune and run every plan on every data set; returns (metric rows, chosen hyperparameters).

    `budget` configurations per model, except the models named in `budgets` (a notebook that
    reuses baselines tuned elsewhere gives them their original budget, which hits the shared
    tuning cache). Writes `tables/hyperparameters.csv`, `tables/tuning_trials.csv` and
    `tables/training_curves.csv` under the notebook's results folder, and the results contract
    through `Experiment`.
    """
    exp = Experiment(config.stem, config.results_dir, progress=not config.smoke)
    tuned_rows, trial_frames, curves = [], [], []
    boards = [(ds, plan) for ds in data.values() for plan in plans
              if plan.datasets is None or ds.name in plan.datasets]  # fmt: skip
    wanted = [(ds, data.get(plan.tune_data.get(name, ds.name), ds),
               plan.tune_on.get(name, plan.protocol), name, (budgets or {}).get(name, budget))
              for ds, plan in boards for name in plan.models]  # fmt: skip
    metrics = [plan.tune_metric.get(name) for _, plan in boards for name in plan.models]
    recalibrate_on = [plan.protocol if plan.recalibrate else None for _, plan in boards
                      for _ in plan.models]  # fmt: skip
    # every search first, as one batch
    searches = iter(zip(wanted, tune_for_data(config, wanted, metrics, recalibrate_on),
                        strict=True))  # fmt: skip
    runs = []
    for ds, plan in boards:
        models: dict[str, Recommender] = {}
        for name in plan.models:
            (_, tune_ds, source, _, _), (t, recalibration, own) = next(searches)
            params = (own or t).params
            models[name] = get_model(name, device=config.device, **params)
            tuned_rows.append({
                "dataset": ds.name, "protocol": plan.protocol, "model": name,
                "family": model_class(name).family, "tuned_on": source,
                "tuned_on_data": tune_ds.name,
                "validation_metric": t.metric, "validation_score": t.score,
                "configurations": len(t.trials), "params": json.dumps(params, sort_keys=True),
                "epochs_on_data": ds.name if own else tune_ds.name,
                "epochs_on_protocol": plan.protocol if own and plan.recalibrate else source,
                "epochs_validation_score": (own or t).score,
            })  # fmt: skip
            if (
                recalibration is not None
                and len(recalibration.curve)
                and (source == plan.protocol or plan.recalibrate)
            ):
                curves.append(recalibration.curve.assign(dataset=ds.name, protocol=plan.protocol,
                                                         model=name))  # fmt: skip
            if source == plan.protocol and tune_ds is ds:
                trial_frames.append(t.trials.assign(dataset=ds.name, protocol=source,
                                                    model=name))  # fmt: skip
                if len(t.curve):
                    curves.append(t.curve.assign(dataset=ds.name, protocol=source, model=name))
        protocol = plan.protocol
        runs.append(Run(ds, protocol, split_factory(protocol, ds), models,
                        seeds_for(protocol, config.seeds), task_of(protocol)))  # fmt: skip
    exp.prefetch(runs)  # every cell of every board as one batch on a parallel executor
    with exp.deferred_tables():  # the tables once, complete (an interruption leaves the old)
        metric_frames = [exp.run(r.dataset, r.protocol, r.split, r.models, r.seeds, task=r.task)
                         for r in runs]  # fmt: skip
    tuned = pd.DataFrame(tuned_rows)
    atomic_write_csv(config.out / "tables" / "hyperparameters.csv", tuned)
    if trial_frames:
        trials = pd.concat(trial_frames, ignore_index=True)
        atomic_write_csv(config.out / "tables" / "tuning_trials.csv", trials)
    if curves:
        columns = ["dataset", "protocol", "model", "epoch", "loss", "valid"]
        curve_table = pd.concat(curves, ignore_index=True)[columns]
        atomic_write_csv(config.out / "tables" / "training_curves.csv", curve_table)
    return pd.concat(metric_frames, ignore_index=True), tuned
