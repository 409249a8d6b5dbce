"""Training throughput of every gradient-trained PyTorch model: a markdown table (prints only).

    .venv/bin/python benchmarks/bench_torch_models.py [--device cpu|cuda|auto|both] [--epochs 3]
        [--models SASRec,BPR,...]

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
the table is measured on CUDA when `torch.cuda.is_available()`; `--device both` measures CPU
and then CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from typing import Any

import torch

from metarec_lib.data.dataset import Interactions, encode_source
from metarec_lib.data.synthetic import generate_synthetic
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.registry import model_class, model_names
from metarec_lib.models.torch_base import TorchRecommender
from metarec_lib.splits import holdout_per_user
from metarec_lib.transfer import synthetic_setting, target_fraction_split

# Gradient-trained PyTorch models that do not derive from TorchRecommender.
OTHER_TORCH = ("BPR", "SVDpp", "MeLU", "MAML", "FOMAML", "Reptile", "PretrainAdapt")
# Passes a fit makes; --epochs caps each one the model has.
EPOCH_KEYS = ("epochs", "source_epochs")
SYNTHETIC_100K = {"n_users": 943, "n_items": 1682, "density": 0.063}
WARM_UP_USERS = 100


def default_models() -> list[str]:
    """Every registered TorchRecommender subclass, then OTHER_TORCH, in name order."""
    torch_models = [n for n in model_names() if issubclass(model_class(n), TorchRecommender)]
    return torch_models + [n for n in OTHER_TORCH if n not in torch_models]


def needs_source(cls: type[Recommender]) -> bool:
    """Cross-domain models read `train.source` (all of family "transfer" but TargetOnly and
    the cold-start baseline PretrainAdapt)."""
    return cls.family == "transfer" and cls.name not in ("TargetOnly", "PretrainAdapt")


def training_data(seed: int = 42) -> dict[str, Interactions]:
    """The two fixed training sets: "single" (ML-100K-sized synthetic, 75/25 train part) and
    "cross-domain" (the synthetic transfer setting's target train part, with its source)."""
    ds = generate_synthetic(**SYNTHETIC_100K, seed=0)
    encoder = ds.encoder()
    single = encoder.encode(holdout_per_user(ds.interactions, test_fraction=0.25, seed=seed).train)
    setting = synthetic_setting(0.5, seed=0)
    split = target_fraction_split(setting, 1.0, seed)
    target = setting.target.encoder()
    cross = target.encode(split.train)
    cross = dataclasses.replace(cross, source=encode_source(split.source, target))
    return {"single": single, "cross-domain": cross}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"CUDA ({torch.cuda.get_device_name(torch.device(device))})"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def make(name: str, device: str, epochs: int) -> Recommender:
    """The model with its defaults, every pass count in EPOCH_KEYS capped at `epochs`."""
    cls = model_class(name)
    params = {k: min(epochs, int(cls.defaults[k])) for k in EPOCH_KEYS if k in cls.defaults}
    model = cls(device=device, **params)
    if hasattr(model, "progress"):
        model.progress = False
    return model


def warm_up(name: str, train: Interactions, device: str) -> None:
    """One untimed 1-epoch fit on the first WARM_UP_USERS users' rows: a model's first fit in a
    process pays one-time costs (kernel selection, allocator pools; about 10 s for SASRec on
    CPU) that are not training throughput."""
    small = train.frame[train.frame["user"] < WARM_UP_USERS]
    make(name, device, 1).fit(dataclasses.replace(train, frame=small), seed=0)


def bench(name: str, train: Interactions, device: str, epochs: int) -> dict[str, Any]:
    """Fit one model; returns its table row (model, device, samples/s, seconds, how)."""
    model = make(name, device, epochs)
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
    return {"model": name, "device": device_name(device), "samples/s": rate,
            "seconds": seconds, "how": how}  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | device | samples/s | seconds | samples/s from |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['samples/s']:,.0f} | "
                     f"{r['seconds']:.2f} | {r['how']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:1, auto (CUDA when available) or both")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="passes per fit (at most)")
    parser.add_argument("--models", default=None,
                        help="comma-separated registered names (default: every gradient-trained "
                             "PyTorch model, see the module docstring)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: expected an integer >= 1")
    names = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models
             else default_models())  # fmt: skip
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
    data = training_data()
    print(f"torch {torch.__version__}, {args.epochs} epoch(s) per fit, no validation; "
          f"train: {', '.join(f'{k} {len(v):,} rows' for k, v in data.items())}\n")  # fmt: skip
    rows = []
    for device in devices:
        for name in names:
            which = "cross-domain" if needs_source(model_class(name)) else "single"
            warm_up(name, data[which], device)
            rows.append(bench(name, data[which], device, args.epochs))
            print(f"  {name} on {device}: {rows[-1]['seconds']:.2f} s", flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
