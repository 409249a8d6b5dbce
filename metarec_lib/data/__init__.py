"""Data sets: MovieLens (verified, from several sources) and a synthetic generator."""

from __future__ import annotations

from metarec_lib.data.dataset import DataError, Dataset, Encoder, Interactions
from metarec_lib.data.download import DataUnavailable

DATASETS = ("ml-100k", "ml-latest-small", "synthetic")

__all__ = [
    "DATASETS", "DataError", "DataUnavailable", "Dataset", "Encoder", "Interactions",
    "load_dataset",
]  # fmt: skip


def load_dataset(name: str, **options) -> Dataset:
    """Load a data set by name: "ml-100k", "ml-latest-small" or "synthetic".

    MovieLens options go to `movielens.load_movielens` (data_dir, cache_dir, ...);
    synthetic options go to `synthetic.generate_synthetic` (n_users, seed, ...).
    """
    if name == "synthetic":
        from metarec_lib.data.synthetic import generate_synthetic

        return generate_synthetic(**options)
    if name in ("ml-100k", "ml-latest-small"):
        from metarec_lib.data.movielens import load_movielens

        return load_movielens(name, **options)
    raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")
