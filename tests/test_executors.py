"""Executors: the same grid gives the same metrics in this process, on local workers and as
Ray tasks; bad settings are clear errors."""

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from metarec_lib.data import load_dataset
from metarec_lib.executors import LocalExecutor, RayExecutor, get_executor
from metarec_lib.models.registry import get_model
from metarec_lib.runner import Experiment
from metarec_lib.splits import holdout_per_user


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", n_users=80, n_items=40, density=0.25, seed=2)


def _split(data):
    return lambda seed: holdout_per_user(data.interactions, test_fraction=0.25, seed=seed)


def _grid(tmp, data, executor):
    exp = Experiment("x", tmp, progress=False, executor=executor)
    models = {"MostPop": get_model("MostPop"), "EASE": get_model("EASE", reg=50.0),
              "BPR": get_model("BPR", epochs=3, factors=8)}  # fmt: skip
    exp.run(data, "topn-75-25", _split(data), models, [1, 2])
    metrics = pd.read_csv(tmp / "x" / "metrics.csv")
    costs = pd.read_csv(tmp / "x" / "costs.csv")
    return metrics, costs


@pytest.mark.slow
def test_local_workers_and_ray_give_the_same_metrics(tiny, tmp_path):
    pytest.importorskip("ray")
    serial, _ = _grid(tmp_path / "serial", tiny, LocalExecutor(1))
    pool = LocalExecutor(2)
    try:
        local, costs = _grid(tmp_path / "local", tiny, pool)
    finally:
        pool.close()
    ray_ex = RayExecutor(2)
    try:
        remote, _ = _grid(tmp_path / "ray", tiny, ray_ex)
    finally:
        ray_ex.close()
    assert len(local) == 3 * 2 * len(set(local["metric"])) and len(costs) == 6
    pd.testing.assert_frame_equal(local, remote)  # bitwise: same function, same threads
    # In this process the models keep their own thread settings: equal to the last bits here.
    pd.testing.assert_frame_equal(serial, local, check_exact=False, rtol=1e-9)
    # The cells came back through the cell cache, one entry each.
    assert len(list((tmp_path / "local" / ".cache" / "cells").glob("*.pkl"))) == 6


def test_get_executor_reads_the_environment(monkeypatch):
    monkeypatch.delenv("METAREC_EXECUTOR", raising=False)
    monkeypatch.delenv("METAREC_WORKERS", raising=False)
    ex = get_executor()
    assert (ex.name, ex.workers) == ("local", 1)
    monkeypatch.setenv("METAREC_EXECUTOR", "ray")
    assert (get_executor().name, get_executor().workers) == ("ray", 2)
    monkeypatch.setenv("METAREC_WORKERS", "3")
    assert get_executor().workers == 3
    monkeypatch.setenv("METAREC_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="executor 'dask': expected one of"):
        get_executor()
    monkeypatch.setenv("METAREC_EXECUTOR", "local")
    monkeypatch.setenv("METAREC_WORKERS", "two")
    with pytest.raises(ValueError, match="METAREC_WORKERS='two'"):
        get_executor()
    with pytest.raises(ValueError, match="workers=0"):
        LocalExecutor(0)


def test_parallel_executor_needs_the_cache(tiny, tmp_path):
    exp = Experiment("x", tmp_path, progress=False, use_cache=False, executor=LocalExecutor(2))
    with pytest.raises(ValueError, match="needs use_cache=True"):
        models = {"MostPop": get_model("MostPop"), "EASE": get_model("EASE")}
        exp.run(tiny, "topn-75-25", _split(tiny), models, [1])


@pytest.mark.slow
def test_tuning_on_workers_chooses_what_tuning_here_chooses(tiny, tmp_path, monkeypatch):
    """The configurations go to the executor as TrialJobs; scores and the choice are the same
    as when they are fitted one by one in this process."""
    from metarec_lib import executors
    from metarec_lib.study import tune

    def run(executor, folder):
        monkeypatch.setattr(executors, "_DEFAULT", executor)
        return tune(tiny, "topn-75-25", "BPR", budget=3, seed=4, device="cpu",
                    cache_dir=tmp_path / folder, progress=False, fixed={"epochs": 4})  # fmt: skip

    here = run(LocalExecutor(1), "here")
    pool = LocalExecutor(2)
    try:
        there = run(pool, "there")
    finally:
        pool.close()
    assert there.params == here.params and there.score == here.score
    pd.testing.assert_series_equal(there.trials["score"], here.trials["score"])
    assert len(there.trials) == 3 and (there.trials["fit_seconds"] > 0).all()


def _square_job(job, *, single_thread=True):
    import os

    return job.value * job.value, os.getpid()


def test_a_free_worker_takes_its_own_affinity_then_a_new_one_then_steals():
    pool = LocalExecutor(2)
    aff = ["a", "a", "b", "", "c", "a"]
    assert pool._pick(0, [0, 1, 2], aff) == 0 and pool._home == {"a": 0}
    assert pool._pick(1, [1, 2], aff) == 2 and pool._home == {"a": 0, "b": 1}
    assert pool._pick(1, [1, 3, 4], aff) == 3  # no affinity: anyone's
    assert pool._pick(1, [1, 4], aff) == 4 and pool._home["c"] == 1
    assert pool._pick(1, [1], aff) is None  # worker 0 has one waiting: wait for it
    assert pool._pick(1, [1, 5], aff) == 5  # two waiting there: take the last
    assert pool._pick(0, [1, 5], aff) == 1


def test_completed_returns_every_cell_once_from_the_workers(monkeypatch):
    import metarec_lib.executors as ex

    monkeypatch.setattr(ex, "run_job", _square_job)
    jobs = [SimpleNamespace(affinity=a, value=v) for v, a in enumerate("aabbab")]
    pool = LocalExecutor(2)
    try:
        got = dict(pool.completed(jobs))
    finally:
        pool.close()
    assert sorted(got) == list(range(6))
    assert [got[i][0] for i in range(6)] == [0, 1, 4, 9, 16, 25]
    assert len({pid for _, pid in got.values()}) <= 2 and set(pool._home) == {"a", "b"}


def test_start_spawns_warm_workers_once_and_the_first_batch_uses_them(monkeypatch):
    import metarec_lib.executors as ex

    here = LocalExecutor(1)
    here.start()
    assert here._pools == []  # in process: nothing to start
    monkeypatch.setattr(ex, "run_job", _square_job)
    pool = LocalExecutor(2)
    try:
        pool.start()
        pools = list(pool._pools)
        assert len(pools) == 2
        pool.start()  # already started: the same processes
        assert pool._pools == pools
        # The warm-up ran first on each worker (a builtin asks, so this module is not imported
        # there): the runner, the model modules and torch are loaded.
        asked = "all(m in __import__('sys').modules for m in " \
                "('metarec_lib.runner', 'metarec_lib.models.sasrec', 'torch'))"  # fmt: skip
        assert [p.submit(eval, asked).result() for p in pools] == [True, True]
        # ... and each fitted a PyTorch model once, so torch's start-up is paid there.
        assert [f.result() for f in pool._warming] == [ex.WARM_UP_MODELS] * 2
        got = dict(pool.completed([SimpleNamespace(affinity="", value=v) for v in range(4)]))
        assert pool._pools == pools and [got[i][0] for i in range(4)] == [0, 1, 4, 9]
    finally:
        pool.close()


def test_a_trace_has_a_line_per_job_and_a_worker_runs_one_at_a_time(monkeypatch, tmp_path):
    import json

    import metarec_lib.executors as ex

    monkeypatch.setattr(ex, "run_job", _square_job)
    monkeypatch.setenv("METAREC_TRACE", str(tmp_path / "trace.jsonl"))
    pool = get_executor("local", 2)
    try:
        got = dict(pool.completed([SimpleNamespace(affinity="", value=v) for v in range(5)]))
    finally:
        pool.close()
    assert sorted(got) == list(range(5))
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {x["kind"] for x in lines} == {"job"}
    assert {x["worker"] for x in lines} <= {0, 1}
    for w in (0, 1):
        spans = sorted((x["start"], x["end"]) for x in lines if x["worker"] == w)
        assert all(a <= b for a, b in spans)
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))


def trace_file(path, rows):
    """A `METAREC_TRACE` file at `path` with one job per (kind, worker, start, end) row, the
    times in seconds after an arbitrary epoch of 100."""
    import json

    path.write_text("".join(json.dumps({"kind": k, "label": "x", "worker": w,
                                        "start": 100 + a, "end": 100 + b}) + "\n"
                            for k, w, a, b in rows))  # fmt: skip
    return path


def test_trace_summary_by_hand(tmp_path):
    """Worker 0 busy 0-4 and 5-6, worker 1 busy 0-2: a span of 6 s; busy 5 s and 2 s."""
    from metarec_lib.executors import trace_summary

    rows = [(0, 0.0, 4.0), (1, 0.0, 2.0), (0, 5.0, 6.0)]
    path = trace_file(tmp_path / "t.jsonl", [("cell", w, a, b) for w, a, b in rows])
    out = trace_summary(path, workers=3)
    assert out["worker"].tolist() == [0, 1, 2]
    assert out["jobs"].tolist() == [2, 1, 0]
    assert out["busy_seconds"].tolist() == pytest.approx([5.0, 2.0, 0.0])
    assert out["busy_share"].tolist() == pytest.approx([5 / 6, 2 / 6, 0.0])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the trace holds no job"):
        trace_summary(tmp_path / "empty.jsonl")


def test_simulated_span_by_hand(tmp_path):
    """Batch A (3, 2, 2, 1 s) ran on two workers from 0 to 4, batch B (1, 1 s) from 6 to 7:
    the notebook worked alone for 2 s between them. One worker: 8 + 2 + 2; two: the recorded
    span, 4 + 2 + 1; four: 3 + 2 + 1. With a pause longer than 2 s the two are one batch:
    3, 2, 2, 1, 1, 1 on two workers end at 5."""
    from metarec_lib.executors import simulated_span

    rows = [(0, 0.0, 3.0), (1, 0.0, 2.0), (1, 2.0, 4.0), (0, 3.0, 4.0), (0, 6.0, 7.0),
            (1, 6.0, 7.0)]  # fmt: skip
    path = trace_file(tmp_path / "t.jsonl", [("cell", w, a, b) for w, a, b in rows])
    assert simulated_span(path, 1) == pytest.approx(12.0)
    assert simulated_span(path, 2) == pytest.approx(7.0)
    assert simulated_span(path, 4) == pytest.approx(6.0)
    assert simulated_span(path, 2, pause=5.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="workers=0"):
        simulated_span(path, 0)


def test_simulated_span_drops_kinds_after_finding_batches(tmp_path):
    """The trace above with batch B's two jobs as tuning trials: without trials, batch A on
    two workers still ends at 4 and the notebook's 2 s alone after it stay (6 s in all); one
    worker: 8 + 2. Dropping batch A's 1 s call too leaves 3, 2, 2: on two workers 4 + 2, on one
    7 + 2."""
    from metarec_lib.executors import simulated_span

    rows = [("cell", 0.0, 3.0), ("cell", 0.0, 2.0), ("cell", 2.0, 4.0), ("call", 3.0, 4.0),
            ("trial", 6.0, 7.0), ("trial", 6.0, 7.0)]  # fmt: skip
    path = trace_file(tmp_path / "t.jsonl", [(k, 0, a, b) for k, a, b in rows])
    assert simulated_span(path, 2) == pytest.approx(7.0)
    assert simulated_span(path, 2, drop={"trial"}) == pytest.approx(6.0)
    assert simulated_span(path, 1, drop={"trial"}) == pytest.approx(10.0)
    assert simulated_span(path, 2, drop={"trial", "call"}) == pytest.approx(6.0)
    assert simulated_span(path, 1, drop={"trial", "call"}) == pytest.approx(9.0)


class _Recording:
    """A parallel executor in name that runs its jobs here and records each batch's size."""

    name, workers, in_process = "recording", 2, False

    def __init__(self):
        self.cell_batches, self.trial_batches = [], []

    def completed(self, jobs):
        from metarec_lib.executors import run_job

        self.cell_batches.append(len(jobs))
        return ((i, run_job(job, single_thread=False)) for i, job in enumerate(jobs))

    def map_trials(self, jobs):
        from metarec_lib.executors import run_trial

        self.trial_batches.append(len(jobs))
        return [run_trial(job, single_thread=False) for job in jobs]


def test_prefetch_sends_every_board_as_one_batch_and_run_reads_them_back(tiny, tmp_path):
    from metarec_lib.runner import Run

    recording = _Recording()
    exp = Experiment("x", tmp_path / "p", progress=False, executor=recording)
    models = {"MostPop": get_model("MostPop"), "EASE": get_model("EASE", reg=50.0),
              "NeuMF": get_model("NeuMF", epochs=1)}  # deep: computed first  # fmt: skip
    runs = [Run(tiny, "topn-75-25", _split(tiny), models, [1, 2]),
            Run(tiny, "other", _split(tiny), {"MostPop": get_model("MostPop")}, [3])]  # fmt: skip
    exp.prefetch(runs)
    assert recording.cell_batches == [3 * 2 + 1]
    # Each cell's audit files were written as it came back, not left for `run`.
    audit = sorted(p.relative_to(tmp_path / "p" / "x")
                   for p in (tmp_path / "p" / "x").rglob("*.csv.gz"))  # fmt: skip
    assert len([a for a in audit if a.parts[0] == "topk"]) == 7
    assert len([a for a in audit if a.parts[0] == "per_user"]) == 7
    written = {a: (tmp_path / "p" / "x" / a).stat().st_mtime_ns for a in audit}
    rows = [exp.run(r.dataset, r.protocol, r.split, r.models, r.seeds) for r in runs]
    assert recording.cell_batches == [7]  # run found every cell cached
    assert all((tmp_path / "p" / "x" / a).stat().st_mtime_ns == t for a, t in written.items())
    serial = Experiment("x", tmp_path / "s", progress=False, executor=LocalExecutor(1))
    for r, got in zip(runs, rows, strict=True):
        want = serial.run(r.dataset, r.protocol, r.split, r.models, r.seeds)
        pd.testing.assert_frame_equal(got, want)
    for a in audit:  # the same files as one cell after another in this process
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p" / "x" / a),
                                      pd.read_csv(tmp_path / "s" / "x" / a))  # fmt: skip


def test_tune_many_batches_every_trial_and_asks_a_repeated_search_once(tiny, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    from metarec_lib import executors
    from metarec_lib.study import TuneRequest, tune, tune_many

    recording = _Recording()
    monkeypatch.setattr(executors, "_DEFAULT", recording)
    bpr = TuneRequest(tiny, "topn-75-25", "BPR", 2, {"epochs": 2})
    knn = TuneRequest(tiny, "topn-75-25", "ItemKNN", 3)
    neumf = TuneRequest(tiny, "topn-75-25", "NeuMF", 2, {"epochs": 1})  # deep: sent first
    got = tune_many([bpr, knn, bpr, neumf], seed=4, device="cpu", cache_dir=tmp_path / "many",
                    progress=False)  # fmt: skip
    assert recording.trial_batches == [2 + 3 + 2]  # one batch; the repeated search not again
    assert got[2] is got[0]
    monkeypatch.setattr(executors, "_DEFAULT", LocalExecutor(1))
    for request, tuned in zip([bpr, knn, neumf], [got[0], got[1], got[3]], strict=True):
        alone = tune(tiny, request.protocol, request.name, budget=request.budget, seed=4,
                     device="cpu", cache_dir=tmp_path / "alone", progress=False,
                     fixed=request.fixed)  # fmt: skip
        assert alone.params == tuned.params and alone.score == tuned.score
        pd.testing.assert_series_equal(alone.trials["score"], tuned.trials["score"])


def test_map_calls_runs_each_call_on_the_workers_in_order_and_traces_it(monkeypatch, tmp_path):
    import json
    import operator

    from metarec_lib.executors import CallJob

    monkeypatch.setenv("METAREC_TRACE", str(tmp_path / "trace.jsonl"))
    jobs = [CallJob(operator.mul, (v, v + 1), label=f"mul {v}") for v in range(4)]
    pool = get_executor("local", 2)
    try:
        assert pool.map_calls(jobs) == [0, 2, 6, 12]
    finally:
        pool.close()
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert sorted(x["label"] for x in lines) == ["mul 0", "mul 1", "mul 2", "mul 3"]
    assert {x["kind"] for x in lines} == {"call"}
    assert LocalExecutor(1).map_calls(jobs[:2]) == [0, 2]  # in this process


def test_a_batch_of_one_in_the_notebooks_process_leaves_its_thread_counts_as_they_were():
    import torch
    from threadpoolctl import threadpool_info

    import metarec_lib.executors as ex

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info())

    before_torch, before_blas = torch.get_num_threads(), blas_threads()
    seen = []
    job = SimpleNamespace(affinity="", fn=lambda: seen.append(torch.get_num_threads()), args=(),
                          label="")  # fmt: skip
    pool = LocalExecutor(2)  # a batch of one runs here, one-threaded like a worker
    try:
        list(pool._run(ex.run_call, [job], [""]))
    finally:
        pool.close()
    assert seen == [1]
    assert torch.get_num_threads() == before_torch and blas_threads() == before_blas


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_the_process_that_started_them_is_killed(tmp_path):
    """A parent killed outright (SIGKILL: no pool shutdown runs) leaves no worker behind;
    before, each blocked for good on its job queue."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from metarec_lib.executors import LocalExecutor\n"
        "if __name__ == '__main__':  # spawned workers import this module\n"
        "    ex = LocalExecutor(workers=2)\n"
        "    ex.start()\n"
        "    print(*[pool.submit(os.getpid).result() for pool in ex._pools], flush=True)\n"
        "    time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers), "a worker outlived its parent"
    finally:
        parent.kill()
        parent.stdout.close()
