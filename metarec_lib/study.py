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

from metarec_lib import __version__
from metarec_lib.data.dataset import Dataset
from metarec_lib.evaluate import score_on
from metarec_lib.io import atomic_write_csv, atomic_write_json
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.notebook import NotebookConfig
from metarec_lib.protocols import carveout_how, seeds_for, split_factory, task_of
from metarec_lib.runner import Experiment, cache_dir
from metarec_lib.splits import Split, validation_carveout
from metarec_lib.tuning import random_search

VALID_FRACTION = 0.1
SMOKE_EPOCHS = 2  # smoke runs check the plumbing, not the models: iterative fits stop here
EPOCH_PARAMS = ("epochs", "iterations", "source_epochs")  # what SMOKE_EPOCHS caps


@dataclass(frozen=True)
class Plan:
    """Models to run under one protocol; `tune_on` reuses another protocol's tuned values
    (rating models ranking under a top-N protocol keep their RMSE-tuned hyperparameters),
    `tune_data` another data set's."""

    protocol: str
    models: Sequence[str]
    tune_on: dict[str, str] = field(default_factory=dict)
    # model -> data set whose tuned values every data set uses (when that data set is loaded):
    # for models too costly to tune on every data set; the hyperparameter table says so.
    tune_data: dict[str, str] = field(default_factory=dict)
    # Data sets this plan runs on (None: every loaded one).
    datasets: tuple[str, ...] | None = None


@dataclass
class Tuned:
    params: dict[str, Any]
    score: float
    metric: str
    trials: pd.DataFrame
    # The chosen configuration's validation curve: epoch, loss, valid (empty: not iterative).
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)


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
    built outside `protocols` (the transfer settings' target fractions); `protocol` must then
    name it uniquely for `dataset`, since it keys the cache.
    """
    cls = model_class(name)
    task = task_of(protocol)
    fixed = dict(fixed or {})
    key = _key(dataset.digest, protocol, name, cls, budget, seed, fixed)
    path = cache_dir / f"tune-{key}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        curve = pd.DataFrame(cached.get("curve", {}))
        return Tuned(cached["params"], cached["score"], cached["metric"],
                     pd.DataFrame(cached["trials"]), curve)  # fmt: skip
    first = seeds_for(protocol, [seed])[0]
    split = (split or split_factory(protocol, dataset))(first)
    if split.valid is not None:  # the protocol's own validation part (leave-last-one-out)
        fit_part, valid_part = split.train, split.valid
    else:
        fit_part, valid_part = validation_carveout(
            split.train, fraction=VALID_FRACTION, seed=first, how=carveout_how(protocol)
        )
    encoder = dataset.encoder()
    train, valid = encoder.encode(fit_part), encoder.encode(valid_part)
    if split.cold_users is not None:  # cold start: meta-valid and meta-test rows are supports
        new = np.concatenate([split.cold_users, split.valid_users])
        train = dataclasses.replace(train, cold_users=np.sort(encoder.user_index(new)))
    # Rating models are tuned on RMSE (a cold-start rating model on its query RMSE).
    rating = task == "rating" or (task == "coldstart" and cls.predicts_ratings)
    kind = "rmse" if rating else "ndcg@10"
    if task == "multitask" and hasattr(cls, "validation_score"):  # both tasks at once
        kind = "joint"
    metric = cls.validation_metric if kind == "joint" else kind
    result = random_search(
        lambda **config: get_model(name, device=device, **{**config, **fixed}),
        cls.space, train, valid, lambda model, part: score_on(model, part, kind),
        budget=budget, seed=seed, higher_is_better=not rating, progress=progress,
        desc=f"tune {name} {dataset.name} {protocol}",
        map_trials=_parallel_trials(name, device, fixed, train, valid, kind, seed),
        describe=lambda model: describe_fit(model, higher_is_better=not rating),
    )  # fmt: skip
    params = {**result.best, **fixed}
    param = epoch_param(cls)
    best_epoch = result.best_info["best_epoch"]
    if best_epoch is not None and param is not None:
        params[param] = int(best_epoch)
    tuned = Tuned(params, result.best_score, metric, result.trials, result.best_info["curve"])
    atomic_write_json(path, {"params": params, "score": tuned.score, "metric": tuned.metric,
                             "trials": result.trials.to_dict(orient="list"),
                             "curve": tuned.curve.to_dict(orient="list")})  # fmt: skip
    return tuned


def _parallel_trials(name, device, fixed, train, valid, kind, seed):
    """`random_search`'s map_trials on a parallel executor (None: tune here, one by one)."""
    from metarec_lib.executors import TrialJob, default_executor

    executor = default_executor()
    if executor.in_process:
        return None
    return lambda configs: executor.map_trials(
        [TrialJob(name, {**c, **fixed}, device, train, valid, kind, seed) for c in configs]
    )


def tune_for(config: NotebookConfig, dataset: Dataset, protocol: str, name: str,
             budget: int, *, fixed: dict[str, Any] | None = None,
             split: Callable[[int], Split] | None = None) -> Tuned:  # fmt: skip
    """`tune` as a notebook runs it: the first seed, the notebook's device, the shared tuning
    cache, and in smoke runs every epoch parameter (EPOCH_PARAMS) capped at SMOKE_EPOCHS
    (over `fixed`, which `tune` passes on, as it does `split`)."""
    cls = model_class(name)
    fixed = dict(fixed or {})
    if config.smoke:
        fixed.update({p: SMOKE_EPOCHS for p in EPOCH_PARAMS if p in cls.defaults})
    return tune(dataset, protocol, name, budget=budget, seed=config.seeds[0],
                device=config.device, cache_dir=cache_dir(config.results_dir, "tuning"),
                progress=not config.smoke, fixed=fixed, split=split)  # fmt: skip


def epoch_param(cls: type[Recommender]) -> str | None:
    """The hyperparameter that counts an iterative model's passes (None: not iterative)."""
    return next((p for p in ("epochs", "iterations") if p in cls.defaults), None)


def tune_for_data(config: NotebookConfig, dataset: Dataset, tune_ds: Dataset, protocol: str,
                  name: str, budget: int) -> tuple[Tuned, Tuned | None]:  # fmt: skip
    """`tune_for` on `tune_ds` for use on `dataset`, and, when those differ and the model is
    iterative, its own epochs: the carried values fixed, one configuration trained on
    `dataset`'s own validation data with early stopping, whose best epoch is the count the
    cells train (returned second; None when not recalibrated). The number of passes depends
    on the data (SASRec's validation on ml-latest-small peaks near epoch 7 where ML-100K's
    took 27), so it is never carried from another data set."""
    tuned = tune_for(config, tune_ds, protocol, name, budget)
    param = epoch_param(model_class(name))
    if tune_ds is dataset or param is None:
        return tuned, None
    carried = {k: v for k, v in tuned.params.items() if k != param}
    own = tune_for(config, dataset, protocol, name, 1, fixed=carried)
    return tuned, own if param in own.params else None


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


def _key(digest: str, protocol: str, name: str, cls: type[Recommender], budget: int,
         seed: int, fixed: dict[str, Any]) -> str:  # fmt: skip
    config = {"digest": digest, "protocol": protocol, "model": name, "defaults": cls.defaults,
              "space": repr(cls.space), "budget": budget, "seed": seed, "version": __version__,
              "valid": VALID_FRACTION}  # fmt: skip
    if fixed:  # absent when empty, so existing cache keys stay valid
        config["fixed"] = fixed
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
    tuned_rows, trial_frames, metric_frames, curves = [], [], [], []
    for ds in data.values():
        for plan in plans:
            if plan.datasets is not None and ds.name not in plan.datasets:
                continue
            models: dict[str, Recommender] = {}
            for name in plan.models:
                source = plan.tune_on.get(name, plan.protocol)
                n_configs = (budgets or {}).get(name, budget)
                tune_ds = data.get(plan.tune_data.get(name, ds.name), ds)
                cls = model_class(name)
                t, own = tune_for_data(config, ds, tune_ds, source, name, n_configs)
                params = (own or t).params
                models[name] = get_model(name, device=config.device, **params)
                tuned_rows.append({
                    "dataset": ds.name, "protocol": plan.protocol, "model": name,
                    "family": cls.family, "tuned_on": source,
                    "tuned_on_data": tune_ds.name,
                    "validation_metric": t.metric, "validation_score": t.score,
                    "configurations": len(t.trials), "params": json.dumps(params, sort_keys=True),
                    "epochs_on_data": ds.name if own else tune_ds.name,
                    "epochs_validation_score": (own or t).score,
                })  # fmt: skip
                if own is not None and source == plan.protocol and len(own.curve):
                    curves.append(own.curve.assign(dataset=ds.name, protocol=source,
                                                   model=name))  # fmt: skip
                if source == plan.protocol and tune_ds is ds:
                    trial_frames.append(t.trials.assign(dataset=ds.name, protocol=source,
                                                        model=name))  # fmt: skip
                    if len(t.curve):
                        curves.append(t.curve.assign(dataset=ds.name, protocol=source,
                                                     model=name))  # fmt: skip
            split = split_factory(plan.protocol, ds)
            seeds = seeds_for(plan.protocol, config.seeds)
            metric_frames.append(exp.run(ds, plan.protocol, split, models, seeds,
                                         task=task_of(plan.protocol)))  # fmt: skip
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
