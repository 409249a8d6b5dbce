"""Fit time with glibc's default allocator settings against `costs.keep_freed_memory`: a
markdown table (prints only).

    METAREC_DATA_DIR=... .venv/bin/python benchmarks/bench_malloc.py [--epochs 3]

Each fit runs in a fresh process (the allocator's settings are per process and cannot be taken
back), one CPU thread, with the model's defaults (passes capped at `--epochs`), seed 0, on the
data set and protocol it runs on in the notebooks (`workloads.py`). The sizes matter: the cost
is in the buffers larger than glibc's thresholds, and on the small synthetic set of
`bench_torch_models.py` there is no difference. One untimed 1-epoch fit in the process first;
best of `--repeats` processes. The "kept" process called `keep_freed_memory()` first, as every
worker of the study does. The scores of the first 50 users must be equal (the setting moves no
number); the last column is the time `release_freed_memory()` (what `costs.measure` calls
first) took after the fit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np


def fit_in_fresh_process(name: str, epochs: int, keep: bool) -> tuple[float, float, np.ndarray]:
    """(fit seconds, release seconds, scores of users 0-49), computed in a new process."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_fit, (name, epochs, keep))


def _fit(name: str, epochs: int, keep: bool) -> tuple[float, float, np.ndarray]:
    import torch
    from bench_torch_models import make
    from workloads import training_set

    from metarec_lib.costs import keep_freed_memory, release_freed_memory

    torch.set_num_threads(1)
    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory: this C library is not glibc; nothing to compare")
    train = training_set(name)
    make(name, "cpu", 1).fit(train, seed=0)  # warm-up
    model = make(name, "cpu", epochs)
    start = time.perf_counter()
    model.fit(train, seed=0)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    release_freed_memory()
    return seconds, time.perf_counter() - start, model.score(np.arange(50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="MMoE,CFGAN,GRU4Rec,BPR,NeuMF,SASRec")
    args = parser.parse_args()
    print("| model | default | kept | speed-up | same scores | release after the fit |")
    print("|---|---:|---:|---:|---|---:|")
    for name in args.models.split(","):
        runs = {keep: [fit_in_fresh_process(name, args.epochs, keep) for _ in range(args.repeats)]
                for keep in (False, True)}  # fmt: skip
        default = min(r[0] for r in runs[False])
        kept = min(r[0] for r in runs[True])
        same = all(np.array_equal(r[2], runs[False][0][2]) for r in runs[False] + runs[True])
        release = max(r[1] for r in runs[True])
        print(f"| {name} | {default:.2f} s | {kept:.2f} s | {default / kept:.2f}x | "
              f"{'yes' if same else 'NO'} | {1000 * release:.1f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
