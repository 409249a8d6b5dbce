"""Where the runner's cells run: in this process, on local worker processes, or as Ray tasks.

A cell (one model, one split, one seed) is an independent run specification, `CellJob`, and
`run_job` computes it; `Experiment.run` hands the cells it has not cached to an executor, saves
what comes back in the cell cache, and then assembles the result files from the cache in a fixed
order. So the files do not depend on the executor or on the order in which cells finish.

- `local` with one worker (the default) computes the cells one after another in this process,
  with each model's own thread setting, as the canonical run did.
- `local` with N > 1 workers runs them on N worker processes (spawned, so no forked torch or BLAS
  state), each pinned to one thread of torch and BLAS.
- `ray` submits them as Ray tasks (one CPU each, the same one-thread pinning) to the cluster at
  `RAY_ADDRESS`, or to a local Ray instance it starts when none is given. Ray is an optional
  extra: `pip install .[ray]`.

Local workers and Ray tasks run the same function with the same thread setting, so the same grid
gives the same metrics under both; timings in `costs.csv` naturally differ. Tuning configurations
(`TrialJob`, `run_trial`) go to the same executor, so a parallel one tunes in parallel too.
`METAREC_EXECUTOR` (local, ray) and `METAREC_WORKERS` choose the default executor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from metarec_lib.data.dataset import Encoder
from metarec_lib.models.base import Recommender
from metarec_lib.splits import Split

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class CellJob:
    """One run specification: fit `model` on `split` and evaluate it (see `evaluate_cell`)."""

    model: Recommender
    split: Split
    encoder: Encoder
    seed: int
    task: str = "topn"
    k: int = 10


def run_job(job: CellJob, *, single_thread: bool = True) -> Any:
    """Compute one cell; in a worker, torch and BLAS first get one thread each."""
    from metarec_lib.runner import evaluate_cell

    if single_thread:
        _one_thread()
    return evaluate_cell(job.model, job.split, job.encoder, seed=job.seed, task=job.task,
                         k=job.k)  # fmt: skip


def _one_thread() -> None:
    """Pin this process to one torch intra-op thread and one BLAS/OpenMP thread: a worker
    shares the machine with the others, and every worker computes alike."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


@dataclass(frozen=True)
class TrialJob:
    """One tuning configuration: fit model `name` with `params` on `train` (early stopping on
    `valid`) and score it on `valid` by `metric` ("rmse", "ndcg@10", or "joint": the model's
    own `validation_score`)."""

    name: str
    params: dict
    device: str
    train: Any
    valid: Any
    metric: str
    seed: int


def run_trial(job: TrialJob, *, single_thread: bool = True) -> tuple[float, float]:
    """(validation score, fit seconds) of one configuration, as `tuning.random_search` computes
    it in process (`tuning.timed_trial`, `evaluate.score_on`)."""
    from metarec_lib.evaluate import score_on
    from metarec_lib.models.registry import get_model
    from metarec_lib.tuning import timed_trial

    if single_thread:
        _one_thread()

    def fit_and_score() -> float:
        model = get_model(job.name, device=job.device, **job.params)
        return score_on(model.fit(job.train, valid=job.valid, seed=job.seed), job.valid,
                        job.metric)  # fmt: skip

    return timed_trial(fit_and_score)


class Executor(Protocol):
    """Runs jobs and returns their results in the order given."""

    name: str
    workers: int

    @property
    def in_process(self) -> bool:
        """True when jobs run here, one after another (callers then run them inline)."""
        ...

    def map(self, jobs: Sequence[CellJob]) -> list[Any]: ...

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float]]: ...


@dataclass
class LocalExecutor:
    """`workers` = 1: in this process, one cell after another; more: a pool of spawned worker
    processes (kept for the life of the executor)."""

    workers: int = 1
    name: str = "local"

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or int(self.workers) < 1:
            raise ValueError(f"LocalExecutor: workers={self.workers!r}; expected an integer >= 1")
        self.workers = int(self.workers)
        self._pool: ProcessPoolExecutor | None = None

    @property
    def in_process(self) -> bool:
        return self.workers == 1

    def map(self, jobs: Sequence[CellJob]) -> list[Any]:
        return self._map(run_job, jobs)

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float]]:
        return self._map(run_trial, jobs)

    def _map(self, fn: Any, jobs: Sequence[Any]) -> list[Any]:
        if self.in_process or len(jobs) <= 1:
            return [fn(job, single_thread=not self.in_process) for job in jobs]
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return list(self._pool.map(fn, jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@dataclass
class RayExecutor:
    """Ray tasks, one CPU each: on the cluster at `address` (default: `RAY_ADDRESS`), else on a
    local Ray instance with `workers` CPUs started on first use."""

    workers: int = 2
    address: str | None = None
    name: str = "ray"

    @property
    def in_process(self) -> bool:
        return False

    def map(self, jobs: Sequence[CellJob]) -> list[Any]:
        return self._map(run_job, jobs)

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float]]:
        return self._map(run_trial, jobs)

    def _map(self, fn: Any, jobs: Sequence[Any]) -> list[Any]:
        try:
            import ray
        except ImportError as err:
            raise ImportError(
                "executor 'ray' needs Ray: pip install '.[ray]' (or choose executor 'local')"
            ) from err
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=1)(fn)
        return ray.get([task.remote(job) for job in jobs])

    def close(self) -> None:
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            ray.shutdown()


def get_executor(
    name: str | None = None, workers: int | None = None
) -> LocalExecutor | RayExecutor:
    """The executor named (default `METAREC_EXECUTOR`, else "local") with `workers` (default
    `METAREC_WORKERS`, else 1 for local and 2 for ray)."""
    name = (name or os.environ.get("METAREC_EXECUTOR") or "local").lower()
    if name not in EXECUTORS:
        raise ValueError(f"executor {name!r}: expected one of {EXECUTORS} (METAREC_EXECUTOR)")
    raw = workers if workers is not None else os.environ.get("METAREC_WORKERS")
    try:
        n = int(raw) if raw not in (None, "") else (1 if name == "local" else 2)
    except ValueError:
        raise ValueError(f"METAREC_WORKERS={raw!r}: expected an integer >= 1") from None
    if n < 1:
        raise ValueError(f"workers={n}: expected an integer >= 1 (METAREC_WORKERS)")
    return LocalExecutor(n) if name == "local" else RayExecutor(n)


_DEFAULT: LocalExecutor | RayExecutor | None = None


def default_executor() -> LocalExecutor | RayExecutor:
    """The process-wide executor from the environment, made once (its worker pool is reused)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = get_executor()
    return _DEFAULT
