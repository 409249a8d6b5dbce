"""The `Dataset` every loader returns, its validation, and the dense-index encoding models see.

Raw ids stay at the edges (results, audit files); inside, models work on dense indices
0..n_users-1 and 0..n_items-1 over the whole catalogue of the data set (LensKit's vocabulary).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class DataError(ValueError):
    """Bad input data: the message names the file, the column and the problem."""


@dataclass(frozen=True)
class Dataset:
    """One recommendation data set.

    interactions: one row per (user, item) with int64 `user_id`, `item_id`, float64 `rating`,
        int64 `timestamp` (unix seconds), plus any extra columns the source has.
    items: indexed by `item_id`; `title`, `year` (nullable Int64), `genres` ('|'-joined),
        `tags` ('|'-joined) where the data set has them, and any extra item features.
    users: indexed by `user_id`; `age`, `gender`, `occupation` where the data set has them.
    rating_scale: (lowest, highest) allowed rating.
    canonical_folds: the test (user_id, item_id) pairs of published folds (ML-100K u1..u5),
        or None where the source does not ship them.
    source: where the data came from (a folder, a URL, the package-index mirror, "generated").
    tag_events: where `items.tags` come from users' tagging (ml-latest-small's tags.csv): one
        row per (user_id, item_id, tag), lower-cased, with the tag's `timestamp` where known.
        A model never sees `items.tags` as they are: `Encoder.encode` rebuilds them from the
        events of the interactions it encodes (see `Encoder`), since a user's tag on an item
        tells that the user watched it, and, under a time cut-off, from those given by then.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    rating_scale: tuple[float, float]
    source: str = ""
    canonical_folds: tuple[pd.DataFrame, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    tag_events: pd.DataFrame | None = None

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the normalised interactions table: equal data gives an equal digest.

        Computed once per data set (it sorts the whole table: about 12 ms on ML-100K, and every
        cell's and search's cache key asks for it) and kept, also through a pickle; a data set
        is not changed in place (the class is frozen; derived sets are new instances)."""
        return interactions_digest(self.interactions)

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def encoder(self) -> Encoder:
        """An encoder over every user and item of the data set (the full catalogue)."""
        users = np.union1d(self.interactions["user_id"].to_numpy(), self.users.index.to_numpy())
        items = np.union1d(self.interactions["item_id"].to_numpy(), self.items.index.to_numpy())
        encoder = Encoder(users.astype(np.int64), items.astype(np.int64), self.users, self.items)
        if self.tag_events is None:
            return encoder
        return replace(encoder, tag_events=_tag_events(self.tag_events, self.interactions,
                                                       encoder))  # fmt: skip

    def describe(self) -> dict[str, float]:
        """Counts and density, for data cards and logs."""
        n, u, i = len(self.interactions), self.n_users, self.n_items
        return {"interactions": n, "users": u, "items": i, "density": n / (u * i) if n else 0.0}


def _tag_events(events: pd.DataFrame, rated: pd.DataFrame, encoder: Encoder) -> pd.DataFrame:
    """The tagging events in dense indices: `key` (the pair's `pair_key`), `item`, `tag`,
    `rated`: whether the pair is among the data set's interactions, and `timestamp` where the
    events have one. Events of users or items outside the catalogue are dropped (nothing could
    be held out of them)."""
    known = (np.isin(events["user_id"].to_numpy(), encoder.user_ids)
             & np.isin(events["item_id"].to_numpy(), encoder.item_ids))  # fmt: skip
    events = events[known]
    user = encoder.user_index(events["user_id"].to_numpy())
    item = encoder.item_index(events["item_id"].to_numpy())
    key = pair_key(user, item, encoder.n_items)
    rated_users = encoder.user_index(rated["user_id"].to_numpy())
    all_keys = pair_key(rated_users, encoder.item_index(rated["item_id"].to_numpy()),
                        encoder.n_items)  # fmt: skip
    out = pd.DataFrame({"key": key, "item": item, "tag": events["tag"].to_numpy(),
                        "rated": np.isin(key, all_keys)})  # fmt: skip
    if "timestamp" in events:
        stamps = events["timestamp"]
        if not pd.api.types.is_numeric_dtype(stamps) or stamps.isna().any():
            raise DataError(
                "Dataset.tag_events: column 'timestamp' must be numeric (unix seconds) with no "
                f"missing values; dtype {stamps.dtype}, {int(stamps.isna().sum())} missing"
            )
        out["timestamp"] = stamps.to_numpy()
    return out


def pair_key(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) index pair: user * n_items + item."""
    return np.asarray(users, np.int64) * np.int64(n_items) + np.asarray(items, np.int64)


def interactions_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of (user_id, item_id, rating, timestamp), sorted, as int64/float64 bytes."""
    cols = list(INTERACTION_COLUMNS)
    ordered = frame[cols].sort_values(cols[:2] + cols[3:], kind="mergesort")
    h = hashlib.sha256()
    h.update(ordered["user_id"].to_numpy(np.int64).tobytes())
    h.update(ordered["item_id"].to_numpy(np.int64).tobytes())
    h.update(ordered["rating"].to_numpy(np.float64).tobytes())
    h.update(ordered["timestamp"].to_numpy(np.int64).tobytes())
    return h.hexdigest()


def validate_interactions(
    frame: pd.DataFrame, *, source: str, rating_scale: tuple[float, float]
) -> pd.DataFrame:
    """Check and coerce an interactions table; raise DataError naming source, column, problem.

    Returns a copy with int64 ids and timestamps and float64 ratings, one row per (user, item).
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; expected {list(INTERACTION_COLUMNS)}"
        )
    out = frame.copy()
    for col in ("user_id", "item_id"):
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values) | (values != np.floor(values.fillna(0)))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: column {col!r} has {int(bad.sum())} missing or non-integer id(s); "
                f"first at row {row}: {frame[col].iloc[row]!r}"
            )
        out[col] = values.astype(np.int64)
    rating = pd.to_numeric(out["rating"], errors="coerce")
    lo, hi = rating_scale
    bad = rating.isna() | (rating < lo) | (rating > hi)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column 'rating' has {int(bad.sum())} value(s) outside the scale "
            f"[{lo}, {hi}] or not a number; first at row {row}: {frame['rating'].iloc[row]!r}"
        )
    out["rating"] = rating.astype(np.float64)
    ts = out["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        secs = ts.astype("int64") // 10**9
        bad = ts.isna()
    else:
        secs = pd.to_numeric(ts, errors="coerce")
        bad = secs.isna() | ~np.isfinite(secs) | (secs != np.floor(secs.fillna(0)))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column 'timestamp' has {int(bad.sum())} unparseable value(s) "
            f"(expected unix seconds); first at row {row}: {frame['timestamp'].iloc[row]!r}"
        )
    out["timestamp"] = secs.astype(np.int64)
    # A repeated pair would be summed where interactions become a matrix (`sum_duplicates`)
    # and would put one pair on both sides of a split; `preprocess.drop_duplicate_interactions`
    # collapses repeats by a stated rule first.
    dup = out.duplicated(["user_id", "item_id"]).to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        pair = f"({out['user_id'].iat[row]}, {out['item_id'].iat[row]})"
        raise DataError(
            f"{source}: (user_id, item_id) = {pair} "
            f"appears more than once (row {row}, {int(dup.sum())} repeat(s)); expected one "
            f"rating per pair (metarec_lib.data.preprocess.drop_duplicate_interactions)"
        )
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class Interactions:
    """Interactions in dense indices, what every `Recommender.fit` receives.

    frame: columns `user`, `item` (dense int64 indices), `rating`, `timestamp`.
    users / items: side information with rows aligned to the dense index (row i = index i).
    """

    frame: pd.DataFrame
    n_users: int
    n_items: int
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    # Transfer protocols: the source domain's interactions (see `SourceDomain`); None elsewhere.
    source: SourceDomain | None = None
    # Cold-start protocols: dense indices of the new users whose rows in `frame` are support
    # sets to adapt to, not data to (meta-)train on; None elsewhere. A model that ignores it
    # simply treats the support rows as more training data (EASE, ItemKNN: score from them).
    cold_users: np.ndarray | None = None
    # The raw ids of the dense indices (row i = index i), set by `Encoder.encode`: a split breaks
    # equal timestamps by `hashing.pair_hash` of raw ids, and `raw_ids` lets a model order them
    # the same way. None for interactions built otherwise (indices are hashed instead).
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def matrix(self, binary: bool = False) -> sp.csr_matrix:
        """User x item CSR matrix of ratings (or 1.0 where `binary`), shape (n_users, n_items)."""
        f = self.frame
        values = np.ones(len(f)) if binary else f["rating"].to_numpy(np.float64)
        m = sp.csr_matrix(
            (values, (f["user"].to_numpy(), f["item"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        return m

    def raw_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's (user, item) raw ids where the encoder's are known, else its indices."""
        users, items = self.frame["user"].to_numpy(np.int64), self.frame["item"].to_numpy(np.int64)
        if self.user_ids is not None and self.item_ids is not None:
            return self.user_ids[users], self.item_ids[items]
        return users, items


@dataclass(frozen=True)
class SourceDomain:
    """A transfer protocol's source-domain interactions, in their own dense index space.

    interactions: the source interactions (`user`, `item` index the source's own entities).
    user_to_target / item_to_target: (n_source_users,) / (n_source_items,) int64: the target's
        dense index of each source entity the two domains share, -1 for a source-only one.
    """

    interactions: Interactions
    user_to_target: np.ndarray
    item_to_target: np.ndarray


def encode_source(frame: pd.DataFrame, target: Encoder) -> SourceDomain:
    """Encode a split's raw-id source frame (user_id, item_id, rating[, timestamp]).

    An entity the source shares with the target carries the target's raw id and maps to its
    dense index; any other id (the split builders use ids outside the target's catalogue) is a
    source-only entity (-1).
    """
    user_ids = np.unique(frame["user_id"].to_numpy())
    item_ids = np.unique(frame["item_id"].to_numpy())
    own = Encoder(user_ids, item_ids)
    return SourceDomain(
        own.encode(frame),
        _index_or_missing(target.user_ids, user_ids),
        _index_or_missing(target.item_ids, item_ids),
    )


def _index_or_missing(vocab: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Dense index of each raw id in the sorted `vocab`, -1 where absent."""
    if len(vocab) == 0:
        return np.full(len(raw), -1, np.int64)
    pos = np.clip(np.searchsorted(vocab, raw), 0, len(vocab) - 1)
    return np.where(vocab[pos] == raw, pos, -1).astype(np.int64)


@dataclass(frozen=True)
class Encoder:
    """Maps raw user/item ids to dense indices and back, over a fixed catalogue."""

    user_ids: np.ndarray  # sorted raw user ids, index = dense index
    item_ids: np.ndarray  # sorted raw item ids
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    # `Dataset.tag_events` in dense indices (`_tag_events`); None where the data have none.
    tag_events: pd.DataFrame | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, raw: np.ndarray | pd.Series) -> np.ndarray:
        return _lookup(self.user_ids, np.asarray(raw), "user_id")

    def item_index(self, raw: np.ndarray | pd.Series) -> np.ndarray:
        return _lookup(self.item_ids, np.asarray(raw), "item_id")

    def encode(self, frame: pd.DataFrame, *, tags_until: float | None = None) -> Interactions:
        """Encode a raw-id interactions frame (a split's train or test part).

        With `tag_events`, the items' `tags` are rebuilt from the events this frame allows:
        those of its own (user, item) pairs and those of pairs the data set has no rating for.
        A tag on a held-out pair (validation, test, a cold user's query) would tell a model
        which item the user watched; on ml-latest-small 1,003 of 3,683 tagging events were on
        pairs of the topn-75-25 test split of seed 42. `tags_until` (a time split's cut-off,
        `Split.time_cutoff`) keeps only the events given at or before it: on ml-latest-small's
        topn-temporal, 5 tags on training pairs were given after the cut-off, and 70 tags on
        unrated pairs after its validation cut-off."""
        out = pd.DataFrame(
            {
                "user": self.user_index(frame["user_id"]),
                "item": self.item_index(frame["item_id"]),
                "rating": frame["rating"].to_numpy(np.float64)
                if "rating" in frame
                else np.ones(len(frame)),
                "timestamp": frame["timestamp"].to_numpy(np.int64)
                if "timestamp" in frame
                else np.zeros(len(frame), np.int64),
            }
        )
        users = self.users.reindex(self.user_ids) if self.users is not None else None
        items = self.items.reindex(self.item_ids) if self.items is not None else None
        if items is not None and self.tag_events is not None:
            tags = self._tags(out["user"].to_numpy(), out["item"].to_numpy(), tags_until)
            items = items.assign(tags=tags)
        return Interactions(out, self.n_users, self.n_items, users, items,
                            user_ids=self.user_ids, item_ids=self.item_ids)  # fmt: skip

    def _tags(self, users: np.ndarray, items: np.ndarray, until: float | None) -> np.ndarray:
        """Per item (dense index order) its '|'-joined sorted unique tags from the events of
        these (user, item) pairs and of unrated pairs, given at or before `until` (None: any
        time); "" for an item without."""
        ev = self.tag_events
        keep = ~ev["rated"].to_numpy() | np.isin(ev["key"].to_numpy(),
                                                 pair_key(users, items, self.n_items))  # fmt: skip
        if until is not None:
            if "timestamp" not in ev:
                raise ValueError("Encoder.encode: tags_until needs tag events with a "
                                 "'timestamp' column; these have none")  # fmt: skip
            keep &= ev["timestamp"].to_numpy() <= until
        kept = ev.loc[keep, ["item", "tag"]].drop_duplicates().sort_values(["item", "tag"])
        joined = kept.groupby("item")["tag"].agg("|".join)
        return joined.reindex(np.arange(self.n_items), fill_value="").to_numpy(object)


def _lookup(vocab: np.ndarray, raw: np.ndarray, column: str) -> np.ndarray:
    pos = np.searchsorted(vocab, raw)
    pos = np.clip(pos, 0, len(vocab) - 1)
    bad = vocab[pos] != raw
    if bad.any():
        raise DataError(
            f"{column}: {int(bad.sum())} id(s) not in the catalogue, e.g. {raw[bad][0]!r}"
        )
    return pos.astype(np.int64)
