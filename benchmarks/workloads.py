"""The data a benchmark fits a model on when its sizes matter: the training part of the
study's first split (seed 42; fold 1 of rating-5fold) of the data set and protocol the model
runs on in the notebooks. Needs MovieLens (`METAREC_DATA_DIR` or the cache, see
`metarec_lib.data`)."""

from __future__ import annotations

from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Interactions
from metarec_lib.protocols import seeds_for, split_factory

# model -> (data set, protocol) it is fitted on in the notebooks.
WORKLOADS = {
    "CFGAN": ("ml-latest-small", "topn-75-25"),
    "Caser": ("ml-100k", "loo-temporal"),
    "NeuMF": ("ml-latest-small", "topn-75-25"),
    "SVDpp": ("ml-latest-small", "rating-5fold"),
    "SASRec": ("ml-latest-small", "loo-temporal"),
}


def training_set(name: str, seed: int = 42) -> Interactions:
    """The encoded training part of `name`'s workload (`WORKLOADS`)."""
    dataset, protocol = WORKLOADS[name]
    ds = load_dataset(dataset)
    first = seeds_for(protocol, [seed])[0]  # rating-5fold: fold 1
    return ds.encoder().encode(split_factory(protocol, ds)(first).train)
