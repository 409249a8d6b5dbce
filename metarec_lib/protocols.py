"""Protocol names (the `protocol` column) and the split each one means.

`split_factory(protocol, dataset)` returns `seed -> Split`, so the runner can make the split of
every seed lazily and every notebook uses the same definition of a protocol name.
"""

from __future__ import annotations

from collections.abc import Callable

from metarec_lib import splits
from metarec_lib.data.dataset import Dataset

PROTOCOLS: dict[str, str] = {
    "topn-75-25": "per-user stratified random 75/25 holdout; top-10 over all items, seen removed",
    "topn-temporal": "global time cut-off, last 20% of interactions are test (known users/items)",
    "loo-temporal": "leave the last interaction out (the one before it is validation)",
}


def split_factory(protocol: str, dataset: Dataset) -> Callable[[int], splits.Split]:
    """`seed -> Split` for a named protocol on a data set."""
    frame = dataset.interactions
    if protocol == "topn-75-25":
        return lambda seed: splits.holdout_per_user(frame, test_fraction=0.25, seed=seed)
    if protocol == "topn-temporal":
        # Deterministic: every seed gets the same split (seeds then vary the models only).
        return lambda seed: splits.temporal_global(frame, test_fraction=0.2)
    if protocol == "loo-temporal":
        return lambda seed: splits.leave_last_one_out(frame)
    raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
