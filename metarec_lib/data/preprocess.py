"""The study document's preprocessing, done properly: merge item features, fill gaps, dedupe.

The document merges behaviour records (user_id, product_id, behavior) with product features
(price, category) on product_id, then calls `fillna(0)` and `drop_duplicates()`. Each of those
can silently corrupt data: a duplicated product row multiplies interactions, `fillna(0)` makes
unknown products free and can overwrite missing ids or ratings, and `drop_duplicates()` keeps
repeated (user, item) pairs that differ in any column. The functions here do each step with
checks and return a small report instead of printing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from metarec_lib.data.dataset import DataError

# Never filled: a missing id, rating or time is an error in the data, not a gap in the features.
PROTECTED = ("user_id", "item_id", "rating", "timestamp")
_INDICATOR = "__metarec_merge__"


@dataclass(frozen=True)
class MergeReport:
    """What `merge_item_features` did.

    n_rows: rows in the result; n_dropped: interaction rows dropped (how="inner");
    n_unmatched: interaction rows whose item has no feature row (their features are missing);
    unmatched_items: the distinct item ids without features, sorted;
    columns_added: item columns brought in; columns_skipped: item columns not brought in because
        the interactions already have a column of that name.
    """

    n_rows: int
    n_dropped: int
    n_unmatched: int
    unmatched_items: tuple
    columns_added: tuple[str, ...]
    columns_skipped: tuple[str, ...]


@dataclass(frozen=True)
class FillReport:
    """What `fill_missing` did: cells filled and the value used, per column considered."""

    filled: dict[str, int] = field(default_factory=dict)
    values: dict[str, object] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.filled.values())


@dataclass(frozen=True)
class PreprocessReport:
    """The three steps of `preprocess_interactions`."""

    n_duplicates_dropped: int
    merge: MergeReport
    fill: FillReport


def merge_item_features(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    *,
    on: str = "item_id",
    how: Literal["left", "inner"] = "left",
    validate: str = "many_to_one",
    columns: Sequence[str] | None = None,
    unknown_items: Literal["keep", "error"] = "keep",
) -> tuple[pd.DataFrame, MergeReport]:
    """Attach item features to each interaction row, keeping row order and index.

    items: one row per item, with `on` as a column or as the index (as in `Dataset.items`).
    columns: the item columns to bring (default: all that the interactions do not already have;
        asking for one they already have is an error rather than a silent `_x`/`_y` rename).
    how: "left" keeps every interaction (unknown items get missing features); "inner" drops them.
    unknown_items: "error" raises DataError when an interaction's item has no feature row.
    Raises DataError when `items` repeats an id (the document's merge would duplicate rows).
    """
    if how not in ("left", "inner"):
        raise ValueError(f"merge_item_features: how={how!r}; expected 'left' or 'inner'")
    if unknown_items not in ("keep", "error"):
        raise ValueError(
            f"merge_item_features: unknown_items={unknown_items!r}; expected 'keep' or 'error'"
        )
    if on not in interactions.columns:
        raise DataError(f"interactions: no column {on!r} to merge item features on")
    if on not in items.columns:
        if items.index.name != on:
            raise DataError(
                f"items: no column or index named {on!r}; index is named {items.index.name!r}"
            )
        items = items.reset_index()
    ids = items[on]
    if ids.isna().any():
        raise DataError(f"items: column {on!r} has {int(ids.isna().sum())} missing id(s)")
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise DataError(
            f"items: column {on!r} has {int(ids[dup].nunique())} id(s) on more than one row, "
            f"e.g. {ids[dup].tolist()[0]!r}; expected one feature row per item"
        )
    left_numeric = pd.api.types.is_numeric_dtype(interactions[on])
    if left_numeric != pd.api.types.is_numeric_dtype(ids):
        raise DataError(
            f"items: column {on!r} is {ids.dtype} but interactions' is {interactions[on].dtype}; "
            "expected the same kind of id (convert one side first)"
        )

    available = [c for c in items.columns if c != on]
    if columns is None:
        added = [c for c in available if c not in interactions.columns]
        skipped = [c for c in available if c in interactions.columns]
    else:
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise DataError(f"items: no column(s) {unknown}; available: {available}")
        clash = [c for c in columns if c in interactions.columns]
        if clash:
            raise DataError(
                f"interactions already have column(s) {clash}; drop them or leave them out of "
                "`columns`"
            )
        added, skipped = list(columns), []

    merged = interactions.merge(
        items[[on, *added]], on=on, how="left", validate=validate, indicator=_INDICATOR
    )
    merged.index = interactions.index
    matched = (merged.pop(_INDICATOR) == "both").to_numpy()
    unmatched_items = tuple(pd.unique(interactions[on].to_numpy()[~matched]).tolist())
    if unknown_items == "error" and not matched.all():
        raise DataError(
            f"interactions: column {on!r} has {int((~matched).sum())} row(s) whose item has no "
            f"feature row in items ({len(unmatched_items)} distinct, e.g. {unmatched_items[0]!r})"
        )
    n_dropped = 0
    if how == "inner":
        n_dropped = int((~matched).sum())
        merged = merged[matched]
    report = MergeReport(
        n_rows=len(merged),
        n_dropped=n_dropped,
        n_unmatched=int((~matched).sum()),
        unmatched_items=tuple(sorted(unmatched_items)),
        columns_added=tuple(added),
        columns_skipped=tuple(skipped),
    )
    return merged, report


def fill_missing(
    frame: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    numeric: float | Literal["median"] | Mapping[str, float] = "median",
    categorical: str = "unknown",
    protected: Sequence[str] = PROTECTED,
    indicator: bool = False,
) -> tuple[pd.DataFrame, FillReport]:
    """Fill missing feature values; never ids, ratings or timestamps.

    numeric: a constant (the document used 0, which prices unknown products at zero), "median"
        of the column's observed values, or a mapping column -> value (e.g. training-set medians,
        so test rows are filled without looking at test data). Integer columns get the value
        rounded, so they stay integer.
    categorical: the label for missing strings / categories.
    indicator: also add a boolean `<column>_missing` column for each column that had gaps.
    Raises DataError when a `protected` column has missing values (those rows need fixing, not
    filling) and ValueError when `columns` names a protected column.
    """
    refused = [c for c in (columns or ()) if c in protected]
    if refused:
        raise ValueError(
            f"fill_missing: refusing to fill {refused}: ids, ratings and timestamps are never "
            "filled (a missing one is a data error)"
        )
    for col in protected:
        if col in frame.columns and frame[col].isna().any():
            bad = frame[col].isna().to_numpy()
            raise DataError(
                f"column {col!r} has {int(bad.sum())} missing value(s), first at row "
                f"{int(np.flatnonzero(bad)[0])}; ids, ratings and timestamps are not filled: "
                "fix or drop those rows"
            )
    if columns is None:
        columns = [c for c in frame.columns if c not in protected]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(f"fill_missing: no column(s) {absent} in the frame")

    out = frame.copy()
    filled: dict[str, int] = {}
    values: dict[str, object] = {}
    for col in columns:
        s = out[col]
        missing = s.isna()
        n = int(missing.sum())
        filled[col] = n
        if n == 0:
            continue
        # A bool column that a left merge left with missing values has dtype object.
        present = s.dropna()
        flags = len(present) > 0 and present.map(type).isin((bool, np.bool_)).all()
        if (
            pd.api.types.is_bool_dtype(s)
            or flags
            or not (
                pd.api.types.is_numeric_dtype(s)
                or pd.api.types.is_string_dtype(s)
                or isinstance(s.dtype, pd.CategoricalDtype)
                or s.dtype == object
            )
        ):
            raise DataError(f"column {col!r} ({s.dtype}) has {n} missing value(s) and no fill rule")
        if pd.api.types.is_numeric_dtype(s):
            value = _numeric_fill(col, s, numeric)
            if pd.api.types.is_integer_dtype(s):
                value = round(value)
        else:
            value = categorical
            if isinstance(s.dtype, pd.CategoricalDtype) and value not in s.cat.categories:
                s = s.cat.add_categories([value])
        if indicator:
            out[f"{col}_missing"] = missing.to_numpy()
        out[col] = s.fillna(value)
        values[col] = value
    return out, FillReport(filled=filled, values=values)


def _numeric_fill(
    col: str, s: pd.Series, numeric: float | Literal["median"] | Mapping[str, float]
) -> float:
    if isinstance(numeric, Mapping):
        if col not in numeric:
            raise ValueError(f"fill_missing: numeric mapping has no value for column {col!r}")
        return float(numeric[col])
    if isinstance(numeric, str):
        if numeric != "median":
            raise ValueError(f"fill_missing: numeric={numeric!r}; expected a number or 'median'")
        if s.notna().sum() == 0:
            raise DataError(f"column {col!r} has no observed values to take the median of")
        return float(s.median())
    return float(numeric)


def drop_duplicate_interactions(
    frame: pd.DataFrame,
    *,
    keys: Sequence[str] = ("user_id", "item_id"),
    order_by: str | None = "timestamp",
) -> tuple[pd.DataFrame, int]:
    """Keep one row per (user_id, item_id): the latest by `order_by`, ties to the last row.

    Unlike the document's `drop_duplicates()`, repeated pairs that differ in other columns (a
    re-rating, a view then a purchase) are collapsed too. Row order and index are kept.
    order_by=None keeps the last row of each pair. Returns (frame, number of rows dropped).
    """
    needed = [*keys, *([order_by] if order_by is not None else [])]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise DataError(f"drop_duplicate_interactions: no column(s) {absent} in the frame")
    n = len(frame)
    if order_by is None:
        order = np.arange(n)
    else:
        t = frame[order_by]
        if t.isna().any():
            bad = t.isna().to_numpy()
            raise DataError(
                f"column {order_by!r} has {int(bad.sum())} missing value(s), first at row "
                f"{int(np.flatnonzero(bad)[0])}; cannot tell which duplicate is the latest"
            )
        order = np.argsort(t.to_numpy(), kind="stable")  # stable: ties stay in row order
    later = frame.iloc[order].duplicated(list(keys), keep="last").to_numpy()
    kept = np.sort(order[~later])
    return frame.iloc[kept], n - len(kept)


def preprocess_interactions(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    *,
    numeric: float | Literal["median"] | Mapping[str, float] = "median",
    categorical: str = "unknown",
    unknown_items: Literal["keep", "error"] = "keep",
    indicator: bool = False,
) -> tuple[pd.DataFrame, PreprocessReport]:
    """The document's pipeline, checked: dedupe (latest pair), merge item features, fill gaps.

    Only the merged-in item columns are filled; gaps in the interactions' own columns are left
    for the caller to judge.
    """
    deduped, n_dropped = drop_duplicate_interactions(interactions)
    merged, merge_report = merge_item_features(deduped, items, unknown_items=unknown_items)
    filled, fill_report = fill_missing(
        merged,
        columns=list(merge_report.columns_added),
        numeric=numeric,
        categorical=categorical,
        indicator=indicator,
    )
    return filled, PreprocessReport(n_dropped, merge_report, fill_report)


def document_pipeline_report(
    data: Mapping[str, object], *, features: Sequence[str] = ("year", "genres", "price", "category")
) -> pd.DataFrame:
    """The document's steps against ours, counted per data set (one row each).

    naive_exact_duplicates: rows `drop_duplicates()` would drop (identical in every column);
    duplicate_pairs_dropped: repeated (user, item) pairs we drop, keeping the latest;
    rows_without_features: interactions whose item has no feature row;
    cells_missing: feature cells that are missing after the merge (the document fills them with
    0, e.g. year 0; we fill numeric ones with the item-table median, categorical with "unknown").
    """
    rows = []
    for name, ds in data.items():
        cols = [c for c in features if c in ds.items.columns]
        inter = ds.interactions[["user_id", "item_id", "rating", "timestamp"]]
        deduped, n_pairs = drop_duplicate_interactions(inter)
        merged, merge = merge_item_features(deduped, ds.items, columns=cols)
        medians = {
            c: float(ds.items[c].median()) for c in cols
            if pd.api.types.is_numeric_dtype(ds.items[c])
        }  # fmt: skip
        _, fill = fill_missing(merged, columns=cols, numeric=medians or 0.0)
        rows.append(
            {
                "dataset": name,
                "interactions": len(inter),
                "naive_exact_duplicates": int(inter.duplicated().sum()),
                "duplicate_pairs_dropped": int(n_pairs),
                "rows_without_features": merge.n_unmatched,
                "features_merged": ", ".join(merge.columns_added),
                "cells_missing": fill.total,
                "filled_with": "; ".join(
                    f"{c}={v}" for c, v in fill.values.items() if fill.filled.get(c)
                ),  # fmt: skip
            }
        )
    return pd.DataFrame(rows)
