"""Hyperparameter search with the same budget for every model, on validation data only.

A model class declares its search space in `space` (name -> distribution). `random_search`
draws `budget` configurations (a grid when the space is small and discrete), fits each on the
training part of a validation carve-out, scores it on the validation part, and returns the best
configuration. The test split is never seen here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from metarec_lib.data.dataset import Interactions


@dataclass(frozen=True)
class Choice:
    """One of a list of values."""

    values: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform between low and high (both > 0); `integer` rounds to an int."""

    low: float
    high: float
    integer: bool = False

    def sample(self, rng: np.random.Generator) -> float | int:
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return int(round(value)) if self.integer else float(value)


Distribution = Choice | Uniform | LogUniform


def configurations(space: Mapping[str, Distribution], budget: int, seed: int) -> list[dict]:
    """`budget` distinct configurations: the full grid when the space is all `Choice` and small
    enough, else seeded random draws (the first always the midpoint/first-choice default)."""
    if not space:
        return [{}]
    if all(isinstance(d, Choice) for d in space.values()):
        grid = [dict(zip(space, values, strict=True))
                for values in itertools.product(*(d.values for d in space.values()))]  # fmt: skip
        if len(grid) <= budget:
            return grid
    rng = np.random.default_rng(seed)
    seen: set[tuple] = set()
    out: list[dict] = []
    attempts = 0
    while len(out) < budget and attempts < 50 * budget:
        attempts += 1
        config = {name: dist.sample(rng) for name, dist in space.items()}
        key = tuple(sorted((k, repr(v)) for k, v in config.items()))
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out


@dataclass
class SearchResult:
    best: dict
    best_score: float
    trials: pd.DataFrame  # one row per configuration: its values, score, fit seconds
    # What `describe` said of the best configuration's fitted model (empty without it).
    best_info: dict = field(default_factory=dict)


Outcome = tuple[float, float, dict]  # (validation score, fit seconds, what `describe` said)


def timed_trial(fit: Callable[[], Any], score: Callable[[Any], float],
                describe: Callable[[Any], dict] | None = None) -> Outcome:  # fmt: skip
    """(score, seconds, info) of one configuration: `fit()` gives the fitted model, `score`
    validates it, `describe` (optional) summarises it (its best epoch, its validation curve),
    so the chosen configuration need not be fitted again. A configuration whose training
    diverges (the model raises FloatingPointError) scores NaN: a failed trial."""
    import time

    start = time.perf_counter()
    try:
        model = fit()
        value = float(score(model))
        info = describe(model) if describe is not None else {}
    except FloatingPointError:
        value, info = float("nan"), {}
    return value, time.perf_counter() - start, info


def random_search(
    make: Callable[..., Any],
    space: Mapping[str, Distribution],
    train: Interactions,
    valid: Interactions,
    score: Callable[[Any, Interactions], float],
    *,
    budget: int = 20,
    seed: int = 0,
    higher_is_better: bool = True,
    progress: bool = True,
    desc: str = "",
    describe: Callable[[Any], dict] | None = None,
) -> SearchResult:
    """Fit `make(**config)` on `train` for each configuration and keep the best on `valid`.

    A configuration whose training diverges (the model raises FloatingPointError) scores NaN
    and is never chosen; only when every one does is the search an error (`choose`; the
    study's own searches send their configurations to workers through `study.tune_many`).
    `describe(model)` summarises each fitted model; the best one's is `best_info`.
    """
    configs = configurations(space, budget, seed)
    done = [
        timed_trial(
            lambda c=c: make(**c).fit(train, valid=valid, seed=seed),
            lambda model: score(model, valid),
            describe,
        )  # fmt: skip
        for c in tqdm(configs, desc=desc or "tuning", disable=not progress, leave=False)
    ]
    return choose(configs, done, space, higher_is_better=higher_is_better, desc=desc)


def choose(
    configs: list[dict],
    outcomes: list[Outcome],
    space: Mapping[str, Distribution],
    *,
    higher_is_better: bool = True,
    desc: str = "",
) -> SearchResult:
    """The search's result from each configuration's `Outcome`: the best finite score wins
    (the first of equal ones); an error when every configuration scored NaN."""
    rows = [{**c, "score": v, "fit_seconds": t}
            for c, (v, t, _) in zip(configs, outcomes, strict=True)]  # fmt: skip
    trials = pd.DataFrame(rows)
    finite = trials[np.isfinite(trials["score"])]
    if finite.empty:
        raise RuntimeError(f"{desc or 'tuning'}: every configuration scored NaN on validation")
    idx = finite["score"].idxmax() if higher_is_better else finite["score"].idxmin()
    best = {k: _plain(trials.loc[idx, k]) for k in space}
    return SearchResult(best=best, best_score=float(trials.loc[idx, "score"]), trials=trials,
                        best_info=outcomes[int(idx)][2])  # fmt: skip


def _plain(value: Any) -> Any:
    """NumPy scalars from the trials frame back to plain Python (JSON, cache keys)."""
    return value.item() if hasattr(value, "item") else value
