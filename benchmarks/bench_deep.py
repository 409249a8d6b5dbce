"""Training speed of the deep models on ML-100K: a markdown table (prints; asserts nothing).

    METAREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_deep.py [--device cuda]

Each model is fitted once with its default hyperparameters except `epochs` (--epochs), without
validation (so no early stopping): sequence models on the leave-last-one-out train part,
the others on the per-user 75/25 holdout train part (seed 42). Columns: device, torch intra-op
threads during the fit, learned parameters, mean seconds per epoch and samples per second (from
`train_log_`), and the wall time of the whole fit (data preparation included).

--models takes registered names or `module:Class` import paths (e.g.
`tests.test_torch_base:TinyMF`), so a model under development can be timed before it is
registered. "samples" are each model's training rows: (user, item) pairs with their sampled
negatives for NeuMF, users for CFGAN, windows for Caser, sequence chunks for GRU4Rec, SASRec
and CL4SRec, so samples per second compare a model with itself across devices, not models.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time

import torch

from metarec_lib import splits
from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.registry import model_class, model_names
from metarec_lib.models.torch_base import TorchRecommender

# Models trained on time-ordered histories (leave-last-one-out); extend with --sequential.
SEQUENTIAL = {"Caser", "GRU4Rec", "SASRec", "CL4SRec"}


def resolve_model(spec: str) -> type[Recommender]:
    """A registered model name, or `package.module:Class`."""
    if ":" in spec:
        module, cls = spec.split(":", 1)
        return getattr(importlib.import_module(module), cls)
    return model_class(spec)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def fit_threads(model: Recommender, device: str) -> str:
    """The torch intra-op threads a TorchRecommender's fit runs on ("-" for other models,
    which set their own)."""
    if not isinstance(model, TorchRecommender):
        return "-"
    pinned = model.cpu_threads if device == "cpu" else None
    return str(pinned if pinned is not None else torch.get_num_threads())


def bench(cls: type[Recommender], train: Interactions, args: argparse.Namespace) -> list[str]:
    params = {"epochs": args.epochs} if "epochs" in cls.defaults else {}
    model = cls(device=args.device, **params)
    start = time.perf_counter()
    model.fit(train, seed=args.seed)
    fit_s = time.perf_counter() - start
    device = getattr(model, "device_", resolve_device(args.device))
    log = getattr(model, "train_log_", None)
    if log is not None and len(log):
        epoch_s = f"{log['seconds'].mean():.2f}"
        rate = f"{log['samples'].sum() / log['seconds'].sum():,.0f}"
    else:
        epoch_s = rate = "-"
    return [cls.name, device_name(device), fit_threads(model, device),
            f"{model.n_parameters:,}", epoch_s, rate, f"{fit_s:.2f}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=None,
                        help="comma-separated names or module:Class (default: every registered "
                             "model of family 'deep')")  # fmt: skip
    parser.add_argument("--sequential", default="",
                        help=f"more sequence model names besides {sorted(SEQUENTIAL)}")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # The first torch.optim optimiser of a process costs ~2 s of imports (measured: 2.2 s for
    # Adam on one parameter); pay it here so it is not billed to the first model's fit.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    if args.models:
        classes = [resolve_model(spec.strip()) for spec in args.models.split(",") if spec.strip()]
    else:
        classes = [c for c in map(model_class, model_names()) if c.family == "deep"]
    if not classes:
        print("no deep models registered yet; pass --models NAME or module:Class")
        return
    sequential = SEQUENTIAL | {s.strip() for s in args.sequential.split(",") if s.strip()}

    ds = load_dataset(args.dataset)
    enc = ds.encoder()
    trains = {
        "loo-temporal": enc.encode(splits.leave_last_one_out(ds.interactions).train),
        "topn-75-25": enc.encode(
            splits.holdout_per_user(ds.interactions, test_fraction=0.25, seed=42).train
        ),
    }
    print(f"{args.dataset}: train {', '.join(f'{k} {len(v):,}' for k, v in trains.items())}; "
          f"torch {torch.__version__}, {args.epochs} epoch(s), no validation\n")  # fmt: skip
    header = ["model", "split", "device", "torch threads", "parameters", "s / epoch",
              "samples / s", "fit s"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    for cls in classes:
        split = "loo-temporal" if cls.name in sequential else "topn-75-25"
        row = bench(cls, trains[split], args)
        row.insert(1, split)
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
