"""Training throughput of every gradient-trained PyTorch model: a markdown table (prints only).

    .venv/bin/python benchmarks/bench_torch_models.py [--device cpu|cuda|auto|both] [--epochs 3]
        [--models SASRec,BPR,...] [--repeat]

The models: every registered subclass of `TorchRecommender` (deep, multi-task and transfer
models), plus the other models trained by gradient steps in PyTorch: `BPR`, `SVDpp` and the
meta-learners (`MeLU`, `MAML`, `FOMAML`, `Reptile`, `PretrainAdapt`). Each is fitted once with
its default hyperparameters except the passes (`--epochs` caps `epochs` and `source_epochs`),
without validation (no early stopping), seed 0, after one untimed 1-epoch warm-up fit on a
slice of the data (`warm_up`), on fixed synthetic data that needs no download:

- an ML-100K-sized synthetic data set (943 users, 1,682 items, density 0.063, seed 0), per-user
  75/25 holdout (seed 42): its training part for every model but the cross-domain ones
  (sequence models read it in time order);
- the cross-domain models (those that need `train.source`) train on the 50_transfer synthetic
  setting (relatedness 0.5: source domain 0, target domain 1), all the target training rows.

Columns: model, device, samples/s and the wall seconds of the whole fit (data preparation
included). Samples per second come from the model's `train_log_` (samples over the seconds of
the logged epochs: the training loop only) where it keeps one; otherwise (BPR, SVDpp) they are
the training rows of all epochs over the fit's wall time (which then includes the sampling of
negatives). "Samples" are each model's training rows: (user, item) pairs or triples, windows or
sequence chunks, users (CFGAN) or tasks (the meta-learners), so samples per second compare a
model with itself across devices, not models with each other. With `--device auto` or `cuda`
the table is measured on CUDA when `torch.cuda.is_available()`; `--device both` fits each
model on the CPU and then on CUDA from the same seed and adds how far the two fits agree: the
NDCG@10 of each on the held-out part (25% of each user's rows), the share of top-10 items they
have in common over all users, and the largest score difference relative to the CPU scores'
largest magnitude. `--repeat` fits each model a second time on each device, same seed, and
adds whether the two fits score every (user, item) pair with the same bits (on CUDA that is
what `training.cuda_determinism` promises). A model that fails is reported as failed, with its
traceback, and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import traceback
from typing import Any

import numpy as np
import torch

from metarec_lib.data.dataset import Interactions
from metarec_lib.evaluate import ndcg_on
from metarec_lib.metrics import topk_overlap
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.registry import model_class, torch_model_names
from metarec_lib.testing import capped_model, gpu_training_sets, score_gap, training_set_for

SYNTHETIC_100K = {"n_users": 943, "n_items": 1682, "density": 0.063}
WARM_UP_USERS = 100


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"CUDA ({torch.cuda.get_device_name(torch.device(device))})"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def warm_up(name: str, train: Interactions, device: str) -> None:
    """One untimed 1-epoch fit on the first WARM_UP_USERS users' rows: a model's first fit in a
    process pays one-time costs (kernel selection, allocator pools; about 10 s for SASRec on
    CPU) that are not training throughput."""
    small = train.frame[train.frame["user"] < WARM_UP_USERS]
    capped_model(name, device, 1).fit(dataclasses.replace(train, frame=small), seed=0)


def bench(name: str, train: Interactions, device: str, epochs: int) -> tuple[dict, Recommender]:
    """Fit one model; returns its table row (model, device, samples/s, seconds, how) and the
    fitted model."""
    model = capped_model(name, device, epochs)
    params = model.params
    start = time.perf_counter()
    model.fit(train, seed=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    log = getattr(model, "train_log_", None)
    if log is not None and len(log) and log["seconds"].sum() > 0:
        rate, how = log["samples"].sum() / log["seconds"].sum(), "train_log_"
    else:
        rows = len(train.frame) * int(params.get("epochs", 1))
        rate, how = rows / seconds, "rows x epochs / fit"
    row = {"model": name, "device": device_name(device), "samples/s": rate,
           "seconds": seconds, "how": how}  # fmt: skip
    return row, model


def agreement(cpu: Recommender, gpu: Recommender, n_users: int) -> dict[str, float]:
    """How far two fits of one model agree over all users: the mean share of top-10 items
    they have in common, and max |score difference| / max |CPU score|."""
    users = np.arange(n_users)
    top_cpu, _ = cpu.recommend(users, 10)
    top_gpu, _ = gpu.recommend(users, 10)
    common = topk_overlap(top_cpu, top_gpu)
    gap = score_gap(cpu.score(users), gpu.score(users))
    return {"top-10 common": float(common), "score gap": gap}


def same_bits(first: Recommender, second: Recommender, n_users: int) -> bool:
    """Whether two fits score every (user, item) pair of the training set with the same bits."""
    users = np.arange(n_users)
    return bool(np.array_equal(np.asarray(first.score(users)), np.asarray(second.score(users))))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The throughput table, plus the agreement columns when any row has them and the refit
    column when any row has it."""
    parity = any("top-10 common" in r for r in rows)
    refit = any("same bits" in r for r in rows)
    head = "| model | device | samples/s | seconds | samples/s from |"
    rule = "|---|---|---:|---:|---|"
    if parity:
        head += " NDCG@10 | top-10 common with CPU | max score gap |"
        rule += "---:|---:|---:|"
    if refit:
        head += " refit: same bits |"
        rule += "---|"
    lines = [head, rule]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['device']} | failed: {r['error']} | | |"
                         + (" | | |" if parity else "") + (" |" if refit else ""))  # fmt: skip
            continue
        line = (f"| {r['model']} | {r['device']} | {r['samples/s']:,.0f} | "
                f"{r['seconds']:.2f} | {r['how']} |")  # fmt: skip
        if parity and "top-10 common" in r:
            line += f" {r['ndcg']:.4f} | {r['top-10 common']:.3f} | {r['score gap']:.1e} |"
        elif parity:
            line += f" {r['ndcg']:.4f} | | |"
        if refit:
            line += f" {'yes' if r.get('same bits') else 'no'} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:1, auto (CUDA when available) or both")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="passes per fit (at most)")
    parser.add_argument("--models", default=None,
                        help="comma-separated registered names (default: every gradient-trained "
                             "PyTorch model, see the module docstring)")  # fmt: skip
    parser.add_argument("--repeat", action="store_true",
                        help="fit each model twice per device and say whether the scores are "
                             "bitwise equal")  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: expected an integer >= 1")
    names = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models
             else torch_model_names())  # fmt: skip
    for n in names:
        model_class(n)  # an unknown name fails here, listing the known ones
    if args.device == "both":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [resolve_device(args.device)]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    # The first optimiser of a process costs seconds of imports; pay it before any timing.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    data = gpu_training_sets(**SYNTHETIC_100K)
    print(f"torch {torch.__version__}, {args.epochs} epoch(s) per fit, no validation; "
          f"train: {', '.join(f'{k} {len(v[0]):,} rows' for k, v in data.items())}\n")  # fmt: skip
    rows, failed = [], False
    for name in names:
        train, test = data[training_set_for(name)]
        fitted: dict[str, Recommender] = {}
        for device in devices:
            try:
                warm_up(name, train, device)
                row, fitted[device] = bench(name, train, device, args.epochs)
                if args.repeat:
                    again = capped_model(name, device, args.epochs).fit(train, seed=0)
                    row["same bits"] = same_bits(fitted[device], again, train.n_users)
            except Exception as err:  # report it and go on with the other models
                traceback.print_exc()
                failed = True
                rows.append({"model": name, "device": device_name(device),
                             "error": type(err).__name__})  # fmt: skip
                continue
            if len(devices) > 1:
                row["ndcg"] = ndcg_on(fitted[device], test)
            if device != "cpu" and "cpu" in fitted:
                row.update(agreement(fitted["cpu"], fitted[device], train.n_users))
            rows.append(row)
            print(f"  {name} on {device}: {row['seconds']:.2f} s", flush=True)
    print()
    print(markdown(rows))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
