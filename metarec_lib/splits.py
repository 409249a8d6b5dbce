"""Evaluation protocols: how interactions are split into train / valid / test.

Every function takes a raw-id interactions frame (`user_id`, `item_id`, and `rating`,
`timestamp` where the protocol needs them; extra columns are kept) and returns a `Split` (or a
`ColdStartSplit`) whose `check()` has passed. Random protocols take `seed` (an int or a NumPy
Generator) and depend only on the data, not on its row order: rows are put in (user_id, item_id)
order before any random number is drawn, and every returned part is in that order with a fresh
0..n-1 index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from metarec_lib.data.dataset import DataError
from metarec_lib.hashing import pair_hash

Seed = int | np.random.Generator
_KEY = ["user_id", "item_id"]
_EPS = 1e-9  # so that floor((1 - 0.7) * 10) is 3, not 2, despite 0.3 being inexact


class SplitError(DataError):
    """A split breaks an invariant (a test pair in train, a cold-start user in train, ...).

    A `DataError` (hence a `ValueError`): a split built from supplied data (published folds,
    a frame with duplicate rows) can break an invariant without any bug in this module.
    """


# ----------------------------------------------------------------------------- split types


@dataclass(frozen=True, eq=False)
class Split:
    """One train / (valid) / test split of raw-id interactions.

    notes: what the protocol dropped or decided (e.g. test rows of users unseen in train).
    dropped: rows that are in no part (temporal protocols drop unseen users/items), or None.
    source: a transfer protocol's source-domain interactions (raw ids: an entity shared with
        the target carries the target's id, a source-only one an id outside the target's
        catalogue), or None; the runner hands it to the model as `train.source`.
    cold_users / valid_users: a cold-start protocol's meta-test and meta-validation user ids
        (raw): their rows in `train` are support sets only (their queries are `test` / `valid`).
        The runner marks `cold_users` as `train.cold_users`; tuning, which scores `valid`,
        marks `valid_users` (and leaves the meta-test users' rows out).
    refit_valid: the rows of `valid` that the final fit adds to its history after tuning
        (None: all of `valid`). A cold-start pool variant keeps the same share of the meta-valid
        users there as of the meta-train users, so its warm pool shrinks as its name says; the
        other meta-valid users leave the final fit altogether (their supports too).
    time_cutoff: a global time split's latest training timestamp (`temporal_global`), or
        None. The final fit (on `history()`) sees only what was known by then: the runner
        encodes its data with `tags_until=time_cutoff` (`Encoder.encode`); tuning, which fits
        on `train` alone, cuts at the latest timestamp of that.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    valid: pd.DataFrame | None = None
    name: str = ""
    seed: int | None = None
    notes: tuple[str, ...] = ()
    dropped: pd.DataFrame | None = None
    source: pd.DataFrame | None = None
    cold_users: np.ndarray | None = None
    valid_users: np.ndarray | None = None
    refit_valid: pd.DataFrame | None = None
    time_cutoff: float | None = None

    def history(self) -> pd.DataFrame:
        """What the final fit trains on: `train` plus `valid`, which served tuning and is
        history once the values are chosen; with `refit_valid`, only those rows of `valid`,
        and no row of the other `valid_users`."""
        if self.valid is None:
            return self.train
        if self.refit_valid is None:
            return pd.concat([self.train, self.valid])
        kept = self.refit_valid["user_id"].unique()
        left_out = np.setdiff1d(self.valid_users if self.valid_users is not None else [], kept)
        train = self.train[~self.train["user_id"].isin(left_out)]
        return pd.concat([train, self.refit_valid])

    def parts(self) -> dict[str, pd.DataFrame]:
        """The parts by name, in order: train, valid (where there is one), test."""
        out = {"train": self.train}
        if self.valid is not None:
            out["valid"] = self.valid
        out["test"] = self.test
        return out

    def check(self) -> Split:
        """Raise SplitError unless no (user, item) pair is in two parts or twice in one part."""
        parts = self.parts()
        for part, frame in parts.items():
            _require_columns(frame, f"split {self.name!r} part {part!r}", _KEY)
            _no_duplicate_pairs(frame, f"split {self.name!r} part {part!r}", SplitError)
        for a, b in (("test", "train"), ("test", "valid"), ("valid", "train")):
            if a in parts and b in parts:
                _disjoint_pairs(parts[a], parts[b], f"split {self.name!r}: {a}", b)
        if self.refit_valid is not None:
            valid = self.valid if self.valid is not None else self.refit_valid.iloc[:0]
            outside = ~np.isin(*_pair_keys(self.refit_valid, valid))
            if outside.any():
                at = _pair_at(self.refit_valid, outside)
                raise SplitError(f"split {self.name!r}: refit_valid has {int(outside.sum())} "
                                 f"pair(s) not in valid, {at}")  # fmt: skip
        return self


@dataclass(frozen=True, eq=False)
class ColdStartSplit:
    """Users partitioned into meta-train / meta-valid / meta-test, with k-shot episodes.

    train: every interaction of the meta-train users (of a `pool_fraction` subsample of them).
    valid_users, test_users: sorted raw ids of the meta-valid and meta-test users, shape (n,).
    refit_valid_users: the meta-valid users whose queries join the final fit once tuning is
        done (the same `pool_fraction` of them; None: all). Tuning still scores them all.
    support[k], query[k]: for each meta-test user with at least k + min_query ratings, k
        ratings drawn once per seed (support) and all the others (query). Supports are nested:
        support[k] of a user contains its support[j] for every j < k.
    valid_support[k], valid_query[k]: the same for meta-valid users, for tuning.
    """

    train: pd.DataFrame
    valid_users: npt.NDArray[np.int64]
    test_users: npt.NDArray[np.int64]
    support: dict[int, pd.DataFrame]
    query: dict[int, pd.DataFrame]
    valid_support: dict[int, pd.DataFrame]
    valid_query: dict[int, pd.DataFrame]
    ks: tuple[int, ...]
    min_query: int
    name: str = "coldstart-users"
    seed: int | None = None
    notes: tuple[str, ...] = ()
    refit_valid_users: npt.NDArray[np.int64] | None = None

    def check(self) -> ColdStartSplit:
        """Raise SplitError unless meta-valid/test users are unseen in train and episodes are
        well formed (support of exactly k rows, disjoint from a query of >= min_query rows)."""
        where = f"cold-start split {self.name!r}"
        _require_columns(self.train, f"{where} train", _KEY)
        _no_duplicate_pairs(self.train, f"{where} train", SplitError)
        train_users = self.train["user_id"].to_numpy()
        for label, users in (("meta-valid", self.valid_users), ("meta-test", self.test_users)):
            leaked = np.intersect1d(users, train_users)
            if leaked.size:
                raise SplitError(
                    f"{where}: {leaked.size} {label} user(s) also in train, e.g. user_id="
                    f"{leaked[0]}; expected no {label} user in any training data"
                )
        both = np.intersect1d(self.valid_users, self.test_users)
        if both.size:
            raise SplitError(
                f"{where}: {both.size} user(s) both meta-valid and meta-test, e.g. user_id="
                f"{both[0]}; expected disjoint user groups"
            )
        if self.refit_valid_users is not None:
            stray = np.setdiff1d(self.refit_valid_users, self.valid_users)
            if stray.size:
                raise SplitError(f"{where}: refit_valid_users has {stray.size} user(s) that are "
                                 f"not meta-valid, e.g. user_id={stray[0]}")  # fmt: skip
        for label, users, support, query in (
            ("support", self.test_users, self.support, self.query),
            ("valid_support", self.valid_users, self.valid_support, self.valid_query),
        ):
            for k in self.ks:
                _check_episode(
                    support[k], query[k], users, k, self.min_query, f"{where} {label}[{k}]"
                )
        return self


# ----------------------------------------------------------------------------- protocols


def holdout_per_user(df: pd.DataFrame, *, test_fraction: float = 0.25, seed: Seed) -> Split:
    """Per-user random holdout: each user's ratings in a seeded random order, the first
    max(1, floor((1 - test_fraction) * n_u)) to train and the rest to test.

    A user with one rating keeps it in train; no user is left without training data.
    """
    _check_fraction(test_fraction, "test_fraction")
    data = _canonical(df, "holdout_per_user input")
    rng, seed_value = _rng(seed)
    user = _codes(data["user_id"])
    rank, count = _within_user_rank(user, rng.random(len(data)))
    in_train = rank < _n_keep(count, test_fraction)
    split = Split(
        data[in_train].reset_index(drop=True),
        data[~in_train].reset_index(drop=True),
        name="holdout-per-user",
        seed=seed_value,
    )
    return split.check()


def kfold_ratings(df: pd.DataFrame, *, k: int = 5, seed: Seed) -> list[Split]:
    """Random k-fold over ratings: the k test parts partition the data, sizes differ by <= 1.

    Split i has test = fold i and train = the other k - 1 folds (names "kfold5-1".."kfold5-5").
    """
    data = _canonical(df, "kfold_ratings input")
    if not isinstance(k, int | np.integer) or not 2 <= k <= len(data):
        raise ValueError(f"kfold_ratings: k={k!r}; expected an int in [2, {len(data)}] (rows)")
    rng, seed_value = _rng(seed)
    fold = np.empty(len(data), dtype=np.int64)
    fold[rng.permutation(len(data))] = np.arange(len(data)) % k
    splits = []
    for i in range(k):
        test = fold == i
        split = Split(
            data[~test].reset_index(drop=True),
            data[test].reset_index(drop=True),
            name=f"kfold{k}-{i + 1}",
            seed=seed_value,
        )
        splits.append(split.check())
    return splits


def canonical_folds(
    df: pd.DataFrame,
    fold_tests: Sequence[pd.DataFrame],
    *,
    names: Sequence[str] | None = None,
) -> list[Split]:
    """Published folds (ML-100K u1..u5): test = the rows of `df` whose (user_id, item_id) pair
    is in fold i's test frame, train = all other rows. Names default to "u1", "u2", ...

    Raises SplitError if a fold names a pair that is not in `df` or names a pair twice.
    """
    data = _canonical(df, "canonical_folds input")
    names = [f"u{i + 1}" for i in range(len(fold_tests))] if names is None else list(names)
    if len(names) != len(fold_tests):
        raise ValueError(f"canonical_folds: {len(names)} names for {len(fold_tests)} folds")
    splits = []
    for name, fold in zip(names, fold_tests, strict=True):
        where = f"canonical fold {name!r}"
        _require_columns(fold, where, _KEY)
        _no_duplicate_pairs(fold, where, SplitError)
        data_key, fold_key = _pair_keys(data, fold)
        found = np.isin(fold_key, data_key)
        if not found.all():
            raise SplitError(
                f"{where}: {int((~found).sum())} test pair(s) not in the interactions, e.g. "
                f"{_pair_at(fold, ~found)}; expected every pair of "
                f"the fold to be a rated (user_id, item_id)"
            )
        test = np.isin(data_key, fold_key)
        split = Split(
            data[~test].reset_index(drop=True), data[test].reset_index(drop=True), name=name
        )
        splits.append(split.check())
    return splits


def temporal_global(
    df: pd.DataFrame, *, test_fraction: float = 0.2, drop_unknown_items: bool = True
) -> Split:
    """One global time cut-off: the last test_fraction of interactions are test.

    The cut-off is the timestamp T of row max(1, floor((1 - test_fraction) * n)) by time, and
    train is every row at or before T: the rows of one second are never split between train
    and test, so train can hold a few more rows than the fraction asks. Where no row is later
    than T, the cut-off second goes to test instead (train is every row before T); a frame
    with one timestamp cannot be split and raises DataError. Test rows of users absent from
    train are dropped, and of items absent from train when `drop_unknown_items`;
    `Split.dropped` holds them and `Split.notes` counts them.
    """
    _check_fraction(test_fraction, "test_fraction")
    data = _canonical(df, "temporal_global input", timestamp=True)
    stamps = data["timestamp"].to_numpy()
    n_target = int(_n_keep(np.array([len(data)]), test_fraction)[0])
    cutoff = np.sort(stamps)[n_target - 1].item()  # as given: float seconds stay floats
    in_train, side = stamps <= cutoff, "at or before"
    if in_train.all():
        in_train, side = stamps < cutoff, "before"
        if not in_train.any():
            raise DataError(
                f"temporal_global input: all {len(data)} rows have timestamp {cutoff}; a time "
                "cut-off cannot split them"
            )
    train, test = data[in_train], data[~in_train]
    unknown_user = ~test["user_id"].isin(train["user_id"]).to_numpy()
    unknown_item = ~test["item_id"].isin(train["item_id"]).to_numpy()
    item_only = unknown_item & ~unknown_user
    drop = unknown_user | (item_only if drop_unknown_items else False)
    items_note = (
        f"{int(item_only.sum())} more of {test['item_id'][item_only].nunique()} item(s) "
        + ("absent from train" if drop_unknown_items else "absent from train kept")
    )
    notes = (
        f"temporal_global: train = the {len(train)} of {len(data)} rows {side} timestamp "
        f"{cutoff} (the fraction asks for {n_target})",
        f"temporal_global: dropped {int(drop.sum())} test row(s): {int(unknown_user.sum())} of "
        f"{test['user_id'][unknown_user].nunique()} user(s) absent from train; {items_note}",
    )
    split = Split(
        train.reset_index(drop=True),
        test[~drop].reset_index(drop=True),
        name="temporal-global",
        notes=notes,
        dropped=test[drop].reset_index(drop=True),
        time_cutoff=train["timestamp"].max().item(),
    )
    return split.check()


def temporal_last_n(df: pd.DataFrame, *, n: int = 1) -> Split:
    """Each user's last n interactions by time are test; users with <= n stay in train only.

    Within a user, ties in timestamp are broken by `pair_hash(user_id, item_id)`, as in
    `leave_last_one_out` (the larger hash counts as later), not by item_id.
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"temporal_last_n: n={n!r}; expected an int >= 1")
    data = _canonical(df, "temporal_last_n input", timestamp=True)
    from_end, count = _rank_from_end(data)
    in_test = (count > n) & (from_end < n)
    split = Split(
        data[~in_test].reset_index(drop=True),
        data[in_test].reset_index(drop=True),
        name=f"temporal-last-{n}",
        notes=(
            f"temporal_last_n: {int((_user_counts(data) <= n).sum())} user(s) with <= {n} "
            f"interaction(s) are in train only",
        ),
    )
    return split.check()


def leave_last_one_out(df: pd.DataFrame) -> Split:
    """Each user's last interaction by time is test, the one before it valid, the rest train.

    Users with fewer than 3 interactions are in train only. Ties in timestamp are broken by
    `pair_hash(user_id, item_id)`, a fixed pseudo-random order, NOT by item_id: ML-100K users
    rated in bursts (45% of the held-out items share their second with the previous rating),
    and an item-id tie-break would make "the next item has a larger id" a pattern sequence
    models could learn from the protocol instead of from the users.
    """
    data = _canonical(df, "leave_last_one_out input", timestamp=True)
    from_end, count = _rank_from_end(data)
    eligible = count >= 3
    in_test, in_valid = eligible & (from_end == 0), eligible & (from_end == 1)
    in_train = ~(in_test | in_valid)
    split = Split(
        data[in_train].reset_index(drop=True),
        data[in_test].reset_index(drop=True),
        valid=data[in_valid].reset_index(drop=True),
        name="leave-last-one-out",
        notes=(
            f"leave_last_one_out: {int((_user_counts(data) < 3).sum())} user(s) with < 3 "
            f"interactions are in train only",
        ),
    )
    return split.check()


def validation_carveout(
    train: pd.DataFrame,
    *,
    fraction: float = 0.1,
    seed: Seed | None = None,
    how: Literal["per_user", "temporal", "global"] = "per_user",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a validation set out of TRAINING data only; returns (smaller train, valid).

    per_user: each user's ratings in a seeded random order (needs `seed`), as
        `holdout_per_user`; temporal: each user's latest ratings (ties broken by
        `pair_hash`, as in `leave_last_one_out`).
    Either way a user keeps max(1, floor((1 - fraction) * n_u)) ratings in train.
    global: one time cut-off, as `temporal_global` (about the last `fraction` of the rows by
        time are valid, the cut-off second is never split, rows of users or items absent
        before the cut-off are in neither part), so every train row is earlier than every
        valid one: validation for a global time split.
    """
    _check_fraction(fraction, "fraction")
    if how == "global":
        part = temporal_global(train, test_fraction=fraction)
        return part.train, part.test
    data = _canonical(train, "validation_carveout train", timestamp=how == "temporal")
    if how == "per_user":
        if seed is None:
            raise ValueError("validation_carveout: how='per_user' needs a seed (int or Generator)")
        rng, _ = _rng(seed)
        rank, count = _within_user_rank(_codes(data["user_id"]), rng.random(len(data)))
    elif how == "temporal":
        from_end, count = _rank_from_end(data)
        rank = count - 1 - from_end
    else:
        raise ValueError(
            f"validation_carveout: how={how!r}; expected 'per_user', 'temporal' or 'global'"
        )
    keep = rank < _n_keep(count, fraction)
    return data[keep].reset_index(drop=True), data[~keep].reset_index(drop=True)


def with_validation(
    split: Split,
    *,
    fraction: float = 0.1,
    seed: Seed | None = None,
    how: Literal["per_user", "temporal", "global"] = "per_user",
) -> Split:
    """The same split (every other field kept: source, cold and valid users) with `valid`
    carved out of its train part (`validation_carveout`)."""
    if split.valid is not None:
        raise ValueError(f"with_validation: split {split.name!r} already has a valid part")
    train, valid = validation_carveout(split.train, fraction=fraction, seed=seed, how=how)
    out = dataclasses.replace(
        split,
        train=train,
        valid=valid,
        name=f"{split.name}+valid-{how}",
        notes=split.notes
        + (
            f"validation_carveout: {len(valid)} of {len(split.train)} train rows to valid "
            f"(fraction={fraction}, how={how})",
        ),
    )
    return out.check()


def coldstart_users(
    df: pd.DataFrame,
    *,
    ks: Sequence[int] = (1, 3, 5, 10, 20),
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    min_query: int = 5,
    seed: Seed,
    pool_fraction: float = 1.0,
) -> ColdStartSplit:
    """User cold start: users split (seeded) into meta-train / meta-valid / meta-test.

    fractions: shares of users for (meta-train, meta-valid, meta-test); valid and test get
        round(share * n_users) users, train the rest.
    pool_fraction: keep only this share of meta-train users (at least one) in `train`, and of
        meta-valid users in what the final fit adds after tuning (`refit_valid_users`; tuning
        still validates on every meta-valid user), so the final fit's warm users shrink by
        that share; the kept users are a prefix of one seeded order (one for each group), so
        smaller pools are subsets of larger.
    Supports are the first k of each user's ratings in one seeded order, so they are nested
    across k and do not depend on `ks`, `min_query` or `pool_fraction`.
    """
    ks = _check_ks(ks)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"coldstart_users: fractions={fractions!r}; expected 3 non-negative shares "
            f"(meta-train, meta-valid, meta-test) summing to 1"
        )
    if not isinstance(min_query, int | np.integer) or min_query < 1:
        raise ValueError(f"coldstart_users: min_query={min_query!r}; expected an int >= 1")
    if not 0 < pool_fraction <= 1:
        raise ValueError(f"coldstart_users: pool_fraction={pool_fraction!r}; expected (0, 1]")
    data = _canonical(df, "coldstart_users input")
    rng, seed_value = _rng(seed)
    # Two child streams: the user partition and the support order never influence each other.
    rng_users, rng_rows = rng.spawn(2)
    users = np.unique(data["user_id"].to_numpy())
    n_valid = int(np.floor(fractions[1] * len(users) + 0.5))
    n_test = int(np.floor(fractions[2] * len(users) + 0.5))
    n_train = len(users) - n_valid - n_test
    if n_train < 1:
        raise ValueError(
            f"coldstart_users: {len(users)} users leave {n_train} for meta-train with "
            f"fractions={fractions!r}; expected at least one"
        )
    perm = rng_users.permutation(users)
    test_users = np.sort(perm[:n_test])
    valid_order, train_order = perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    valid_users = np.sort(valid_order)

    def pooled(order: np.ndarray) -> np.ndarray:  # the pool's share of a seeded order
        return np.sort(order[: max(1, int(np.floor(pool_fraction * len(order) + 0.5)))])

    pool = pooled(train_order)
    refit_valid = pooled(valid_order) if pool_fraction < 1 and n_valid else None

    rank, count = _within_user_rank(_codes(data["user_id"]), rng_rows.random(len(data)))
    user_ids = data["user_id"].to_numpy()
    episodes: dict[str, dict[int, pd.DataFrame]] = {}
    notes = [
        f"coldstart_users: {len(pool)} of {n_train} meta-train users in train "
        f"(pool_fraction={pool_fraction}), {len(valid_users)} meta-valid, {len(test_users)} "
        f"meta-test users"
    ]
    if refit_valid is not None:
        notes.append(f"coldstart_users: the final fit adds the queries of {len(refit_valid)} of "
                     f"{n_valid} meta-valid users (pool_fraction={pool_fraction})")  # fmt: skip
    for label, group in (("", test_users), ("valid_", valid_users)):
        member = np.isin(user_ids, group)
        for part in ("support", "query"):
            episodes[label + part] = {}
        for k in ks:
            eligible = member & (count >= k + min_query)
            episodes[label + "support"][k] = data[eligible & (rank < k)].reset_index(drop=True)
            episodes[label + "query"][k] = data[eligible & (rank >= k)].reset_index(drop=True)
            group_name = "meta-valid" if label else "meta-test"
            notes.append(
                f"coldstart_users: k={k}: {len(np.unique(user_ids[eligible]))} of {len(group)} "
                f"{group_name} users have >= {k + min_query} ratings"
            )
    split = ColdStartSplit(
        train=data[np.isin(user_ids, pool)].reset_index(drop=True),
        valid_users=valid_users.astype(np.int64),
        test_users=test_users.astype(np.int64),
        support=episodes["support"],
        query=episodes["query"],
        valid_support=episodes["valid_support"],
        valid_query=episodes["valid_query"],
        ks=ks,
        min_query=int(min_query),
        seed=seed_value,
        notes=tuple(notes),
        refit_valid_users=None if refit_valid is None else refit_valid.astype(np.int64),
    )
    return split.check()


# The support size the study tunes on: meta-validation episodes have it at every test k.
VALID_K = 5


def episode_split(cold: ColdStartSplit, k: int, *, valid_k: int = VALID_K) -> Split:
    """The k-shot episodes of a cold-start split as one runner `Split`.

    train: the meta-train users' rows plus every meta-test user's k-row support and every
    meta-valid user's `valid_k`-row support; valid / test: the meta-valid / meta-test users'
    queries; valid_users / cold_users: the users whose rows in train are supports only (users
    with fewer than k + min_query, resp. valid_k + min_query, ratings are in no part);
    refit_valid: the queries of `cold.refit_valid_users` (None: all of valid). A model
    that ignores `cold_users` treats the supports as ordinary training rows, which is what
    scoring from a new user's profile means for item-based models.

    Model selection does not depend on the test k: the meta-validation episodes have the one
    support size `valid_k` (default `VALID_K`, the k the study tunes on) for every k, so `valid`,
    `valid_users` and the meta-valid rows in `train` are the same for every k of one seed, and
    a network (meta-)trained for one k serves every other (see `models.meta`). A split whose
    `ks` lack `valid_k` takes its meta-validation episodes at k instead (noted in `notes`).
    """
    if k not in cold.ks:
        raise ValueError(f"episode_split: k={k!r}; the split has k in {cold.ks}")
    notes = cold.notes
    if valid_k not in cold.ks:
        notes += (f"episode_split: valid_k={valid_k} not in ks={cold.ks}; meta-valid at k={k}",)
        valid_k = k
    support, valid_support = cold.support[k], cold.valid_support[valid_k]
    valid = cold.valid_query[valid_k]
    refit = None
    if cold.refit_valid_users is not None:
        refit = valid[valid["user_id"].isin(cold.refit_valid_users)].reset_index(drop=True)
    split = Split(
        pd.concat([cold.train, valid_support, support], ignore_index=True),
        cold.query[k],
        valid=valid,
        name=f"{cold.name}@k={k}",
        seed=cold.seed,
        notes=notes,
        cold_users=np.unique(support["user_id"].to_numpy()).astype(np.int64),
        valid_users=np.unique(valid_support["user_id"].to_numpy()).astype(np.int64),
        refit_valid=refit,
    )
    return split.check()


def split_summary(split: Split | ColdStartSplit) -> dict[str, int | str]:
    """Counts of interactions, users and items per part, flat (one row of a data card):
    keys like "train_interactions", "test_users", "support_k5_items"."""
    out: dict[str, int | str] = {"name": split.name}
    if isinstance(split, Split):
        parts = split.parts()
        if split.dropped is not None:
            parts["dropped"] = split.dropped
    else:
        parts = {"train": split.train}
        out["valid_users_total"] = len(split.valid_users)
        out["test_users_total"] = len(split.test_users)
        for k in split.ks:
            parts[f"support_k{k}"] = split.support[k]
            parts[f"query_k{k}"] = split.query[k]
            parts[f"valid_support_k{k}"] = split.valid_support[k]
            parts[f"valid_query_k{k}"] = split.valid_query[k]
    for part, frame in parts.items():
        out[f"{part}_interactions"] = len(frame)
        out[f"{part}_users"] = int(frame["user_id"].nunique())
        out[f"{part}_items"] = int(frame["item_id"].nunique())
    return out


# ----------------------------------------------------------------------------- helpers


def _rng(seed: Seed) -> tuple[np.random.Generator, int | None]:
    """A Generator from an int seed (recorded) or a Generator (used as is; recorded as None)."""
    if isinstance(seed, np.random.Generator):
        return seed, None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed={seed!r}; expected an int or a numpy.random.Generator")
    return np.random.default_rng(int(seed)), int(seed)


def _check_fraction(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name}={value!r}; expected a fraction strictly between 0 and 1")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1 or any(int(k) != k for k in ks):
        raise ValueError(f"coldstart_users: ks={ks!r}; expected one or more ints >= 1")
    return out


def _require_columns(frame: pd.DataFrame, where: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; has {list(frame.columns)}")


def _canonical(df: pd.DataFrame, where: str, *, timestamp: bool = False) -> pd.DataFrame:
    """Check ids (and timestamps) and return the rows in (user_id, item_id) order, index 0..n-1.

    Sorting first makes every protocol independent of the input's row order.
    """
    columns = _KEY + (["timestamp"] if timestamp else [])
    _require_columns(df, where, columns)
    if len(df) == 0:
        raise DataError(f"{where}: no interactions to split; expected at least one row")
    for col in columns:
        values = df[col]
        if not pd.api.types.is_numeric_dtype(values) or values.isna().any():
            bad = values.isna().to_numpy()
            example = values[bad].iloc[0] if bad.any() else values.dtype
            raise DataError(
                f"{where}: column {col!r} must be numeric with no missing values; found "
                f"{example!r} (dtype {values.dtype}); expected int64 ids / unix seconds"
            )
    _no_duplicate_pairs(df, where, DataError)
    return df.sort_values(_KEY, kind="mergesort").reset_index(drop=True)


def _pair_keys(*frames: pd.DataFrame) -> list[npt.NDArray[np.int64]]:
    """One int64 key per (user_id, item_id) row, comparable across the given frames."""
    users = pd.concat([f["user_id"] for f in frames], ignore_index=True)
    items = pd.concat([f["item_id"] for f in frames], ignore_index=True)
    u, _ = pd.factorize(users)
    i, item_uniques = pd.factorize(items)
    key = u.astype(np.int64) * max(len(item_uniques), 1) + i
    bounds = np.cumsum([0] + [len(f) for f in frames])
    return [key[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _no_duplicate_pairs(frame: pd.DataFrame, where: str, error: type[Exception]) -> None:
    (key,) = _pair_keys(frame)
    dup = pd.Series(key).duplicated().to_numpy()
    if dup.any():
        raise error(
            f"{where}: {int(dup.sum())} duplicate (user_id, item_id) row(s), e.g. "
            f"{_pair_at(frame, dup)}; expected one row per pair"
        )


def _pair_at(frame: pd.DataFrame, mask: npt.NDArray[np.bool_]) -> str:
    """'user_id=U, item_id=I' of the first masked row (ids keep their dtype, unlike iloc)."""
    i = int(np.flatnonzero(mask)[0])
    return f"user_id={frame['user_id'].to_numpy()[i]}, item_id={frame['item_id'].to_numpy()[i]}"


def _disjoint_pairs(a: pd.DataFrame, b: pd.DataFrame, where: str, b_name: str) -> None:
    key_a, key_b = _pair_keys(a, b)
    shared = np.isin(key_a, key_b)
    if shared.any():
        raise SplitError(
            f"{where}: {int(shared.sum())} (user_id, item_id) pair(s) also in {b_name}, e.g. "
            f"{_pair_at(a, shared)}; expected disjoint parts"
        )


def _check_episode(
    support: pd.DataFrame,
    query: pd.DataFrame,
    users: npt.NDArray[np.int64],
    k: int,
    min_query: int,
    where: str,
) -> None:
    """Support: exactly k rows per user of `users`; query: >= min_query rows, same users."""
    for part, frame in (("support", support), ("query", query)):
        _require_columns(frame, f"{where} {part}", _KEY)
        _no_duplicate_pairs(frame, f"{where} {part}", SplitError)
        outside = ~np.isin(frame["user_id"].to_numpy(), users)
        if outside.any():
            raise SplitError(
                f"{where} {part}: user_id={frame['user_id'].to_numpy()[outside][0]} is not in "
                f"the user group; expected only its users"
            )
    n_support = support.groupby("user_id").size()
    n_query = query.groupby("user_id").size()
    if (n_support != k).any():
        user = n_support.index[(n_support != k).to_numpy()][0]
        raise SplitError(
            f"{where}: user_id={user} has {n_support[user]} support rows; expected k={k}"
        )
    if not n_support.index.equals(n_query.index):
        raise SplitError(f"{where}: support and query have different users; expected the same")
    if (n_query < min_query).any():
        user = n_query.index[(n_query < min_query).to_numpy()][0]
        raise SplitError(
            f"{where}: user_id={user} has {n_query[user]} query rows; expected >= {min_query}"
        )
    _disjoint_pairs(support, query, f"{where}: support", "query")


def _codes(ids: pd.Series) -> npt.NDArray[np.int64]:
    """Dense codes 0..n-1 of the ids in sorted order, shape (n_rows,)."""
    return np.unique(ids.to_numpy(), return_inverse=True)[1].astype(np.int64).reshape(-1)


def _within_user_rank(
    user: npt.NDArray[np.int64], *keys: npt.NDArray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per row: its 0-based rank within its user in ascending `keys` order (first key primary),
    and its user's number of rows; both shape (n_rows,). One lexsort, no loop over users."""
    n = len(user)
    order = np.lexsort(tuple(reversed(keys)) + (user,))
    sorted_user = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_user[1:] != sorted_user[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    count = np.empty(n, dtype=np.int64)
    count[order] = np.repeat(sizes, sizes)
    return rank, count


def _rank_from_end(data: pd.DataFrame) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per row: 0 for its user's latest interaction (by timestamp, then `pair_hash`), 1 for the
    one before, ...; and the user's row count. Both shape (n_rows,)."""
    users, items = data["user_id"].to_numpy(), data["item_id"].to_numpy()
    second = pair_hash(users, items)
    rank, count = _within_user_rank(_codes(data["user_id"]), data["timestamp"].to_numpy(), second)
    return count - 1 - rank, count


def _n_keep(count: npt.NDArray[np.int64], held_out: float) -> npt.NDArray[np.int64]:
    """How many of n rows stay in training: max(1, floor((1 - held_out) * n))."""
    return np.maximum(np.floor((1 - held_out) * count + _EPS).astype(np.int64), 1)


def _user_counts(data: pd.DataFrame) -> pd.Series:
    return data.groupby("user_id").size()


__all__ = [
    "ColdStartSplit",
    "Split",
    "SplitError",
    "canonical_folds",
    "coldstart_users",
    "holdout_per_user",
    "kfold_ratings",
    "leave_last_one_out",
    "split_summary",
    "temporal_global",
    "temporal_last_n",
    "validation_carveout",
    "with_validation",
]
