"""Does keeping freed memory (glibc `mallopt`) speed up a long-lived worker? A same-time A/B.

    python benchmarks/bench_malloc.py            # needs MovieLens (METAREC_DATA_DIR)

Starts two worker-like processes at once, one per core, so that both see the same host: one
with glibc's defaults, one with a 1 GiB mmap threshold and no trimming (`malloc_trim` before
each job, as a cost measurement would need). Each fits the same list of models (a few epochs,
on the data each one meets in the notebooks, one thread) twice in a row and prints, per model,
the seconds of the first pass (a fresh process) and of the second (a worker that has run jobs
before, as the study's workers are for all but their first job).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import subprocess
import sys
import time

# model, data set, protocol, capped hyperparameters: models whose steps allocate large buffers
JOBS = [
    ("MMoE", "ml-100k", "mtl-75-25", {"epochs": 2, "n_experts": 8}),
    ("PLE", "ml-latest-small", "mtl-75-25", {"epochs": 1}),
    ("CFGAN", "ml-latest-small", "topn-75-25", {"epochs": 8}),
    ("GRU4Rec", "ml-100k", "loo-temporal", {"epochs": 2}),
    ("SASRec", "ml-latest-small", "loo-temporal", {"epochs": 1}),
    ("NeuMF", "ml-latest-small", "topn-75-25", {"epochs": 2}),
    ("EASE", "ml-latest-small", "topn-75-25", {}),
    ("MAML", "ml-100k", "coldstart-users@k=5", {"epochs": 3}),
]
VALIDATED = ("MMoE", "PLE")  # early stopping's validation is part of their trials


def worker(keep: bool) -> dict[str, list[float]]:
    """Both passes over `JOBS` in this process: {model: [first, second] seconds}."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from metarec_lib.costs import release_freed_memory
    from metarec_lib.data import load_dataset
    from metarec_lib.models.meta import clear_training_cache
    from metarec_lib.models.registry import get_model
    from metarec_lib.study import TuneRequest, _validation_data

    torch.set_num_threads(1)
    threadpool_limits(1)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if keep and not (libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1):
        raise RuntimeError("bench_malloc: mallopt refused the settings (not glibc?)")
    data = {(name, ds, proto): _validation_data(TuneRequest(load_dataset(ds), proto, name, 1), 42)
            for name, ds, proto, _ in JOBS}  # fmt: skip
    out: dict[str, list[float]] = {}
    for _ in range(2):
        for name, ds, proto, params in JOBS:
            train, valid, _ = data[(name, ds, proto)]
            clear_training_cache()  # a meta-learner must train, not reuse the first pass
            if keep:
                release_freed_memory()  # what `costs.measure` does before a block
            model = get_model(name, **params)
            start = time.perf_counter()
            model.fit(train, valid=valid if name in VALIDATED else None, seed=42)
            model.score(np.arange(min(200, train.n_users)))
            out.setdefault(name, []).append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # one side of the A/B, started by the parent below
        print(json.dumps(worker(args.mode == "keep")))
        return
    procs = {mode: subprocess.Popen([sys.executable, __file__, "--mode", mode],
                                    stdout=subprocess.PIPE, text=True)
             for mode in ("default", "keep")}  # fmt: skip
    times = {mode: json.loads(p.communicate()[0].strip().splitlines()[-1])
             for mode, p in procs.items()}  # fmt: skip
    print("| model | default, 1st | keep, 1st | default, 2nd | keep, 2nd |")
    print("|---|---:|---:|---:|---:|")
    for name in times["default"]:
        d, k = times["default"][name], times["keep"][name]
        print(f"| {name} | {d[0]:.2f} | {k[0]:.2f} | {d[1]:.2f} | {k[1]:.2f} |")
    second = {mode: sum(v[1] for v in t.values()) for mode, t in times.items()}
    print(f"| all, 2nd pass | | | {second['default']:.1f} | {second['keep']:.1f} |")


if __name__ == "__main__":
    main()
