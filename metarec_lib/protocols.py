"""Protocol names (the `protocol` column) and the split each one means.

`split_factory(protocol, dataset)` returns `seed -> Split`, so the runner can make the split of
every seed lazily and every notebook uses the same definition of a protocol name. For
`rating-5fold` the "seed" is the fold number 1..5 (the `seed` column then holds the fold).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

from metarec_lib import splits
from metarec_lib.data.dataset import Dataset

PROTOCOLS: dict[str, str] = {
    "rating-5fold": "ML-100K: the canonical folds u1..u5; other data: seeded random 5-fold",
    "topn-75-25": "per-user stratified random 75/25 holdout; top-10 over all items, seen removed",
    "topn-temporal": "global time cut-off, last 20% of interactions are test (known users/items)",
    "loo-temporal": "leave the last interaction out (the one before it is validation)",
    "mtl-75-25": "topn-75-25's split, scored for interest (ranking, AUC) and rating (RMSE)",
    "coldstart-users": "new users (20%, seeded) given k support ratings (@k=K[,pool=P]); their "
    "other ratings are the query",
}
COLDSTART = "coldstart-users"
FOLDS = (1, 2, 3, 4, 5)
KFOLD_SEED = 0  # the random 5-fold split of data sets without published folds


def task_of(protocol: str) -> Literal["topn", "rating", "multitask", "coldstart"]:
    if protocol.startswith("rating"):
        return "rating"
    if protocol.startswith(COLDSTART):
        return "coldstart"
    return "multitask" if protocol.startswith("mtl") else "topn"


def coldstart_variant(protocol: str) -> tuple[int, float]:
    """(k, pool fraction) of "coldstart-users@k=K" or "coldstart-users@k=K,pool=P"."""
    head, _, variant = protocol.partition("@")
    fields = dict(part.split("=", 1) for part in variant.split(",") if "=" in part)
    try:
        if head != COLDSTART or set(fields) - {"k", "pool"} or "k" not in fields:
            raise ValueError
        return int(fields["k"]), float(fields.get("pool", 1.0))
    except ValueError:
        raise ValueError(
            f"cold-start protocol {protocol!r}: expected {COLDSTART}@k=K or {COLDSTART}@k=K,pool=P"
        ) from None


def coldstart_name(k: int, pool: float = 1.0) -> str:
    """The protocol name of k-shot cold start with a share `pool` of the warm users
    (meta-train, and meta-valid once tuning is done; `splits.coldstart_users`)."""
    return f"{COLDSTART}@k={k}" + ("" if pool == 1.0 else f",pool={pool:g}")


def seeds_for(protocol: str, seeds: list[int]) -> list[int]:
    """The `seed` column values of a protocol: folds 1..5 for rating-5fold, else `seeds`."""
    return list(FOLDS) if protocol == "rating-5fold" else list(seeds)


def carveout_how(protocol: str) -> Literal["per_user", "temporal", "global"]:
    """How validation is carved out of a protocol's training data, the way the protocol
    splits: topn-temporal's global time cut-off by another cut-off before it (so no row the
    fit holds is later than a validation row), another temporal protocol by each user's latest
    ratings, the rest per user at random."""
    if protocol == "topn-temporal":
        return "global"
    return "temporal" if "temporal" in protocol else "per_user"


def split_factory(protocol: str, dataset: Dataset) -> Callable[[int], splits.Split]:
    """`seed -> Split` for a named protocol on a data set."""
    frame = dataset.interactions
    if protocol in ("topn-75-25", "mtl-75-25"):
        return lambda seed: splits.holdout_per_user(frame, test_fraction=0.25, seed=seed)
    if protocol == "topn-temporal":
        # One time cut-off: every seed gets the same split (seeds then vary the models only).
        return lambda seed: splits.temporal_global(frame, test_fraction=0.2)
    if protocol == "loo-temporal":
        return lambda seed: splits.leave_last_one_out(frame)
    if protocol == "rating-5fold":
        return _folds(dataset)
    if protocol.startswith(COLDSTART):
        k, pool = coldstart_variant(protocol)
        return lambda seed: splits.episode_split(
            splits.coldstart_users(frame, seed=seed, pool_fraction=pool), k
        )
    raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")


def _folds(dataset: Dataset) -> Callable[[int], splits.Split]:
    frame = dataset.interactions

    @lru_cache(maxsize=1)
    def all_folds() -> tuple[splits.Split, ...]:
        if dataset.canonical_folds is not None:
            return tuple(splits.canonical_folds(frame, dataset.canonical_folds))
        return tuple(splits.kfold_ratings(frame, k=len(FOLDS), seed=KFOLD_SEED))

    def fold(number: int) -> splits.Split:
        if number not in FOLDS:
            raise ValueError(f"rating-5fold: fold must be one of {FOLDS}, got {number}")
        return all_folds()[number - 1]

    return fold
