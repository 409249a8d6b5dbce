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
(`TrialJob`, `run_trial`) go to the same executor, so a parallel one tunes in parallel too, and
so do other independent pieces of a notebook's work (`CallJob`, `run_call`: algorithm
selection's per-seed fits).
`METAREC_EXECUTOR` (local, ray) and `METAREC_WORKERS` choose the default executor.

With `METAREC_TRACE=<file>` a local executor appends one JSON line per job to that file (what
ran, on which worker, from when to when, in seconds since the epoch), so that a run's idle
workers show up: `trace_summary` reads it back and `simulated_span` replays it on more or fewer
workers (`benchmarks/utilization.py` prints both).
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

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
    # Cells with the same affinity run on the same local worker when it can (see
    # `LocalExecutor`): a training one of them remembered in that worker serves the others.
    affinity: str = ""


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


@contextmanager
def _threads_restored() -> Iterator[None]:
    """Put torch's and BLAS/OpenMP's thread counts back afterwards: a job that runs in the
    notebook's own process one-threaded (a batch of one) must not leave that process so."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(None):  # restores the limits found here on exit
        try:
            yield
        finally:
            torch.set_num_threads(before)


@dataclass(frozen=True)
class TrialJob:
    """One tuning configuration: fit model `name` with `params` on `train` (early stopping on
    `valid`) and score it on `valid` by `metric` ("rmse", "ndcg@10", or "joint": the model's
    own `validation_score`); `higher_is_better` says which way that score and the model's
    early-stopping curve point."""

    name: str
    params: dict
    device: str
    train: Any
    valid: Any
    metric: str
    seed: int
    higher_is_better: bool = True


def run_trial(job: TrialJob, *, single_thread: bool = True) -> tuple[float, float, dict]:
    """(validation score, fit seconds, summary) of one configuration, as `study.tune` computes
    it in process (`tuning.timed_trial`, `evaluate.score_on`, `study.describe_fit`)."""
    from metarec_lib.evaluate import score_on
    from metarec_lib.models.registry import get_model
    from metarec_lib.study import describe_fit
    from metarec_lib.tuning import timed_trial

    if single_thread:
        _one_thread()
    return timed_trial(
        lambda: get_model(job.name, device=job.device, **job.params).fit(
            job.train, valid=job.valid, seed=job.seed),
        lambda model: score_on(model, job.valid, job.metric),
        lambda model: describe_fit(model, higher_is_better=job.higher_is_better),
    )  # fmt: skip


@dataclass(frozen=True)
class CallJob:
    """Any other independent piece of a notebook's work: `fn(*args)`, with `fn` a module-level
    function (so that it pickles) and `label` naming it in a trace."""

    fn: Callable[..., Any]
    args: tuple = ()
    label: str = ""


def run_call(job: CallJob, *, single_thread: bool = True) -> Any:
    """`job.fn(*job.args)`; in a worker, torch and BLAS first get one thread each."""
    if single_thread:
        _one_thread()
    return job.fn(*job.args)


class Executor(Protocol):
    """Runs jobs and returns their results in the order given."""

    name: str
    workers: int

    @property
    def in_process(self) -> bool:
        """True when jobs run here, one after another (callers then run them inline)."""
        ...

    def map(self, jobs: Sequence[CellJob]) -> list[Any]: ...

    def completed(self, jobs: Sequence[CellJob]) -> Iterator[tuple[int, Any]]:
        """(index in `jobs`, result) of each cell as soon as it is done, in any order."""
        ...

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float, dict]]: ...

    def map_calls(self, jobs: Sequence[CallJob]) -> list[Any]: ...

    def start(self) -> None:
        """Get the workers ready ahead of the first batch, without waiting (may do nothing)."""
        ...


@dataclass
class LocalExecutor:
    """`workers` = 1: in this process, one cell after another; more: that many spawned worker
    processes (kept for the life of the executor), each fed one job at a time.

    Cells go to whichever worker is free, except that cells sharing an `affinity` prefer the
    worker that ran the first of them (a meta-learner's training for one seed serves every
    support size, a source pretraining every transfer method of a fraction and seed: both are
    remembered in the worker's process). A free worker takes, in order: a waiting cell of its
    own affinities, a cell of an affinity not yet placed (which becomes its own), and only then
    one whose worker still has more than one waiting (then the training is repeated there; the
    numbers are the same either way). Tuning trials have no affinity."""

    workers: int = 1
    name: str = "local"
    trace: str | None = None  # a file to append one JSON line per job to (`trace_summary`)

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or int(self.workers) < 1:
            raise ValueError(f"LocalExecutor: workers={self.workers!r}; expected an integer >= 1")
        self.workers = int(self.workers)
        self._pools: list[ProcessPoolExecutor] = []
        self._home: dict[str, int] = {}  # affinity -> worker, for the executor's life
        self._warming: list = []  # each worker's warm-up (`_warm_worker`), for tests

    @property
    def in_process(self) -> bool:
        return self.workers == 1

    def map(self, jobs: Sequence[CellJob]) -> list[Any]:
        return _in_order(self.completed(jobs), len(jobs))

    def completed(self, jobs: Sequence[CellJob]) -> Iterator[tuple[int, Any]]:
        return self._run(run_job, jobs, [j.affinity for j in jobs])

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float, dict]]:
        return _in_order(self._run(run_trial, jobs, [""] * len(jobs)), len(jobs))

    def map_calls(self, jobs: Sequence[CallJob]) -> list[Any]:
        return _in_order(self._run(run_call, jobs, [""] * len(jobs)), len(jobs))

    def _run(self, fn: Any, jobs: Sequence[Any], affinities: Sequence[str]
             ) -> Iterator[tuple[int, Any]]:  # fmt: skip
        if self.in_process or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                start = time.time()
                if self.in_process:
                    result = fn(job, single_thread=False)
                else:
                    with _threads_restored():
                        result = fn(job, single_thread=True)
                self._log(job, 0, start)
                yield i, result
            return
        self.start()
        waiting = list(range(len(jobs)))
        running: dict[Future, tuple[int, int, float]] = {}  # future -> (job, worker, start)
        while waiting or running:
            busy = {w for _, w, _ in running.values()}
            for worker in range(self.workers):
                if worker in busy or not waiting:
                    continue
                pick = self._pick(worker, waiting, affinities)
                if pick is None:
                    continue
                waiting.remove(pick)
                start = time.time()
                future = self._pools[worker].submit(fn, jobs[pick])
                running[future] = (pick, worker, start)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, worker, start = running.pop(future)
                result = future.result()
                self._log(jobs[index], worker, start)
                yield index, result

    def start(self) -> None:
        """Spawn the worker processes now (else the first batch does) and have each import
        the library and torch, without waiting: a notebook starts them first thing
        (`notebook.validate_parameters`), so they are ready by its first batch instead of
        spending its first seconds starting up. In process (one worker) it does nothing."""
        if self.in_process or self._pools:
            return
        import multiprocessing as mp

        context = mp.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, mp_context=context, initializer=_quiet_worker)
                       for _ in range(self.workers)]  # fmt: skip
        self._warming = [pool.submit(_warm_worker) for pool in self._pools]

    def _log(self, job: Any, worker: int, start: float) -> None:
        """Append the job's line to `trace` (when set): kind, label, worker, start, end."""
        if not self.trace:
            return
        if isinstance(job, CellJob):
            kind, label = "cell", f"{job.model.name} seed={job.seed} n={len(job.split.train)}"
        elif isinstance(job, TrialJob):
            kind, label = "trial", f"{job.name} n={len(job.train)}"
        elif isinstance(job, CallJob):
            kind, label = "call", job.label or getattr(job.fn, "__name__", "call")
        else:
            kind, label = "job", type(job).__name__
        line = {"kind": kind, "label": label, "worker": worker, "start": start,
                "end": time.time()}  # fmt: skip
        with open(self.trace, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def _pick(self, worker: int, waiting: list[int], affinities: Sequence[str]) -> int | None:
        """The job `worker` takes next (see the class docstring), or None: leave it idle."""
        for i in waiting:
            if affinities[i] and self._home.get(affinities[i]) == worker:
                return i
        for i in waiting:
            if not affinities[i] or affinities[i] not in self._home:
                if affinities[i]:
                    self._home[affinities[i]] = worker
                return i
        load = Counter(self._home[affinities[i]] for i in waiting)
        fullest, count = max(load.items(), key=lambda kv: (kv[1], -kv[0]))
        if count <= 1:
            return None
        return next(i for i in reversed(waiting) if self._home[affinities[i]] == fullest)

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown()
        self._pools, self._warming = [], []


def _quiet_worker() -> None:
    """A worker ignores Ctrl-C (a notebook kernel's shutdown interrupts its process group):
    the pool stops it when the parent goes, without a traceback per worker. And it exits as
    soon as its parent process is gone: a kernel that dies without shutting the pool down
    (`make reproduce` stopped by SIGTERM) would otherwise leave its workers blocked for good
    on their job queue, whose write end each of them holds too (measured: two orphans of
    about 500 MB each)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def _exit_with_parent() -> None:
    """Wait (no polling: on the parent's sentinel) until the parent process ends, then end
    this one at once, whatever job it is in: its result has no one to go to."""
    import multiprocessing as mp

    parent = mp.parent_process()
    if parent is None:
        return
    parent.join()
    os._exit(1)


WARM_UP_MODELS = ("BPR",)


def _warm_worker() -> tuple[str, ...]:
    """Import what the jobs need (every model module, torch with them, the runner) ahead, and
    fit `WARM_UP_MODELS` once on a tiny data set: PyTorch's one-time start-up (its first
    optimiser step and autograd pass) is then not billed to the worker's first cell. Without
    it a worker's first BPR fit on ML-100K cost 1.06 s and 106 MB, the next 0.12 s and 33 MB;
    NeuMF, SASRec and MMoE cost the same first and later once BPR had run. Returns the names."""
    import metarec_lib.runner  # noqa: F401
    from metarec_lib.models.registry import model_names
    from metarec_lib.scale import warm_up

    model_names()
    warm_up(WARM_UP_MODELS)
    return WARM_UP_MODELS


def _in_order(pairs: Iterator[tuple[int, Any]], n: int) -> list[Any]:
    out: list[Any] = [None] * n
    for i, result in pairs:
        out[i] = result
    return out


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

    def start(self) -> None:
        """Nothing ahead of time: Ray starts (or connects) on the first batch."""

    def map(self, jobs: Sequence[CellJob]) -> list[Any]:
        return _in_order(self.completed(jobs), len(jobs))

    def completed(self, jobs: Sequence[CellJob]) -> Iterator[tuple[int, Any]]:
        return self._run(run_job, jobs)

    def map_trials(self, jobs: Sequence[TrialJob]) -> list[tuple[float, float, dict]]:
        return _in_order(self._run(run_trial, jobs), len(jobs))

    def map_calls(self, jobs: Sequence[CallJob]) -> list[Any]:
        return _in_order(self._run(run_call, jobs), len(jobs))

    def _run(self, fn: Any, jobs: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        ray = self._ray()
        task = ray.remote(num_cpus=1)(fn)
        pending = {task.remote(job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)

    def _ray(self) -> Any:
        """The ray module, connected (to `address`, `RAY_ADDRESS`, or a local instance)."""
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
        return ray

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
    if name == "local":
        return LocalExecutor(n, trace=os.environ.get("METAREC_TRACE") or None)
    return RayExecutor(n)


def read_trace(path: str | Path) -> pd.DataFrame:
    """The jobs of a `METAREC_TRACE` file, one row each, with their `seconds` (end - start)."""
    lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x]
    if not lines:
        raise ValueError(f"{path}: the trace holds no job")
    jobs = pd.DataFrame(lines)
    jobs["seconds"] = jobs["end"] - jobs["start"]
    return jobs


def trace_summary(path: str | Path, workers: int | None = None) -> pd.DataFrame:
    """Per worker of a `METAREC_TRACE` file: jobs, busy seconds, and the share of the span
    (first start to last end over all workers) it was busy; `workers` counts workers that
    never ran a job too. A share below 1 is time a worker waited (for the notebook between
    its batches, or for the other workers' last jobs)."""
    jobs = read_trace(path)
    span = float(jobs["end"].max() - jobs["start"].min())
    out = jobs.groupby("worker").agg(jobs=("seconds", "size"), busy_seconds=("seconds", "sum"))
    if workers is not None:
        out = out.reindex(range(workers), fill_value=0)
    out["busy_share"] = out["busy_seconds"] / span if span > 0 else 1.0
    return out.reset_index()


def simulated_span(
    path: str | Path, workers: int, *, pause: float = 0.3, drop: Collection[str] = ()
) -> float:
    """Seconds a `METAREC_TRACE` run's jobs would span on `workers` workers, if each job took
    as long as it did: what more cores would buy, with the protocol unchanged.

    A batch ends where no job starts within `pause` seconds of the last one's end (the
    notebook then works alone, or the next notebook starts); the time between batches is kept
    as it was. Within a batch each job goes, in the order it started, to the worker free
    first, as the executor hands out a batch. Jobs slowed by their neighbours (memory
    bandwidth) would be faster with fewer of them, so more workers may do a little better.

    `drop` leaves out the jobs of those kinds ("trial": a run without any tuning), after the
    batches are found, so a batch of only such jobs takes no time and the notebook's own work
    around it is kept."""
    if workers < 1:
        raise ValueError(f"simulated_span: workers={workers!r}; expected >= 1")
    jobs = read_trace(path).sort_values("start", kind="stable")
    total, batch, busy_until = 0.0, [], None
    for kind, start, end, seconds in jobs[["kind", "start", "end", "seconds"]].itertuples(
        index=False
    ):
        if busy_until is not None and start > busy_until + pause:
            total += _makespan(batch, workers) + (start - busy_until)
            batch = []
        if kind not in drop:
            batch.append(seconds)
        busy_until = end if busy_until is None else max(busy_until, end)
    return total + _makespan(batch, workers)


def _makespan(seconds: list[float], workers: int) -> float:
    """When the last of `seconds` ends, each job going in order to the worker free first."""
    free = [0.0] * workers
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


_DEFAULT: LocalExecutor | RayExecutor | None = None


def default_executor() -> LocalExecutor | RayExecutor:
    """The process-wide executor from the environment, made once (its worker pool is reused)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = get_executor()
    return _DEFAULT
