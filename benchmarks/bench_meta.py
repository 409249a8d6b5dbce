"""Time the cold-start models' fits (meta-training plus adapting the cold users) on one CPU
thread, with the study's tuned hyperparameters and a fixed number of epochs.

    METAREC_DATA_DIR=... python benchmarks/bench_meta.py [--dataset ml-latest-small] [--epochs 3]

Reads each model's hyperparameters for `coldstart-users@k=5` from
`results/60_meta/tables/hyperparameters.csv`, replaces the epoch count with `--epochs` (no early
stopping: no validation), fits on the split of seed 42 and evaluates on its cold users' queries,
as a 60_meta cell does, after one untimed one-epoch cell (the process's warm-up). Prints the
seconds of the whole cell and its RMSE (so a change that should keep the numbers can be checked
to keep them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from metarec_lib.data import load_dataset
from metarec_lib.models.registry import get_model
from metarec_lib.runner import evaluate_cell
from metarec_lib.study import split_factory

MODELS = ("MeLU", "MAML", "FOMAML", "Reptile", "PretrainAdapt")
PROTOCOL = "coldstart-users@k=5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    tuned = pd.read_csv(args.results / "60_meta" / "tables" / "hyperparameters.csv")
    split = split_factory(PROTOCOL, data)(42)
    encoder = data.encoder()
    names = args.models.split(",")

    def cell(name: str, epochs: int) -> tuple[float, float]:
        row = tuned[(tuned["dataset"] == args.dataset) & (tuned["model"] == name)
                    & (tuned["protocol"] == PROTOCOL)].iloc[0]  # fmt: skip
        params = {**json.loads(row["params"]), "epochs": epochs}
        start = time.perf_counter()
        out = evaluate_cell(get_model(name, device="cpu", **params), split, encoder, seed=42,
                            task="rating")  # fmt: skip
        return time.perf_counter() - start, out.metrics["rmse"]

    cell(names[0], 1)  # warm-up
    print(f"{args.dataset}, {PROTOCOL}, seed 42, {args.epochs} epochs, one thread")
    print("| model | seconds | rmse |\n|---|---:|---:|")
    for name in names:
        seconds, rmse = cell(name, args.epochs)
        print(f"| {name} | {seconds:.2f} | {rmse:.6f} |")


if __name__ == "__main__":
    main()
