"""The document's preprocessing done properly, on small hand-worked frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import DataError
from metarec_lib.data.preprocess import (
    drop_duplicate_interactions,
    fill_missing,
    merge_item_features,
    preprocess_interactions,
)


def behaviour() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 1, 2, 1, 2, 3],
            "item_id": [10, 11, 10, 10, 12, 99],
            "behavior": ["view", "view", "cart", "purchase", "view", "view"],
            "rating": [3.0, 4.0, 5.0, 4.0, 2.0, 1.0],
            "timestamp": [100, 50, 70, 300, 10, 20],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def products() -> pd.DataFrame:
    return pd.DataFrame(
        {"price": [9.5, np.nan, 30.0], "category": ["books", "toys", None]},
        index=pd.Index([10, 11, 12], name="item_id"),
    )


# drop_duplicate_interactions


def test_latest_duplicate_is_kept_and_counted():
    out, n = drop_duplicate_interactions(behaviour())
    # (1, 10) appears at t=100 (view) and t=300 (purchase): the purchase stays.
    assert n == 1
    assert list(out.index) == [11, 12, 13, 14, 15]  # original order and labels
    assert out.loc[13, "behavior"] == "purchase"


def test_ties_keep_the_last_row_and_order_by_none():
    f = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2],
            "item_id": [5, 5, 5, 5],
            "rating": [1.0, 2.0, 3.0, 4.0],
            "timestamp": [7, 7, 6, 1],
        }  # fmt: skip
    )
    out, n = drop_duplicate_interactions(f)
    assert n == 2 and list(out["rating"]) == [2.0, 4.0]  # rows 0, 1 tie at t=7: row 1 is last
    out, n = drop_duplicate_interactions(f, order_by=None)
    assert n == 2 and list(out["rating"]) == [3.0, 4.0]


def test_dedupe_refuses_missing_times_and_columns():
    f = behaviour().astype({"timestamp": float})
    f.loc[12, "timestamp"] = np.nan
    with pytest.raises(DataError, match="'timestamp' has 1 missing value"):
        drop_duplicate_interactions(f)
    with pytest.raises(DataError, match="no column"):
        drop_duplicate_interactions(f.drop(columns="item_id"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 5)), max_size=30))
def test_dedupe_keeps_the_maximum_time_of_every_pair(rows):
    f = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"], dtype=np.int64)
    f["row"] = np.arange(len(f))
    out, n = drop_duplicate_interactions(f)
    assert n == len(f) - len(out)
    assert not out.duplicated(["user_id", "item_id"]).any()
    if len(f):
        latest = f.groupby(["user_id", "item_id"])["timestamp"].max()
        kept = out.set_index(["user_id", "item_id"])["timestamp"]
        pd.testing.assert_series_equal(kept.sort_index(), latest, check_names=False)
        # Among rows with the latest time, the last one is kept.
        last = f[f["timestamp"] == f.groupby(["user_id", "item_id"])["timestamp"].transform("max")]
        assert set(out["row"]) == set(last.groupby(["user_id", "item_id"])["row"].max())


# merge_item_features


def test_merge_keeps_every_interaction_and_flags_missing_features():
    out, rep = merge_item_features(behaviour(), products())
    assert list(out.index) == list(behaviour().index)
    assert list(out["item_id"]) == [10, 11, 10, 10, 12, 99]
    assert list(out["price"].fillna(-1)) == [9.5, -1, 9.5, 9.5, 30.0, -1]
    assert rep.n_rows == 6 and rep.n_dropped == 0
    assert rep.n_unmatched == 1 and rep.unmatched_items == (99,)
    assert rep.columns_added == ("price", "category") and rep.columns_skipped == ()


def test_merge_inner_and_error_on_unknown_items():
    out, rep = merge_item_features(behaviour(), products(), how="inner")
    assert len(out) == 5 and rep.n_dropped == 1 and 99 not in set(out["item_id"])
    with pytest.raises(DataError, match=r"1 row\(s\).*e\.g\. 99"):
        merge_item_features(behaviour(), products(), unknown_items="error")


def test_merge_refuses_duplicated_item_rows():
    items = products().reset_index()
    items = pd.concat([items, items.iloc[[0]]])  # item 10 twice: the document's merge doubles rows
    with pytest.raises(DataError, match=r"'item_id' has 1 id\(s\) on more than one row.*10"):
        merge_item_features(behaviour(), items)


def test_merge_column_clashes_and_id_kinds():
    inter = behaviour().assign(category="x")
    out, rep = merge_item_features(inter, products())
    assert rep.columns_skipped == ("category",) and (out["category"] == "x").all()
    with pytest.raises(DataError, match="already have column"):
        merge_item_features(inter, products(), columns=["category"])
    items = products().reset_index().astype({"item_id": str})
    with pytest.raises(DataError, match="same kind of id"):
        merge_item_features(behaviour(), items)
    with pytest.raises(DataError, match="no column or index named 'product_id'"):
        merge_item_features(behaviour().rename(columns={"item_id": "product_id"}), products(),
                            on="product_id")  # fmt: skip


# fill_missing


def test_fill_reports_counts_and_values():
    merged, _ = merge_item_features(behaviour(), products())
    # price: rows for items 11 and 99 missing (2); category: items 12 and 99 missing (2).
    out, rep = fill_missing(merged)
    assert rep.filled == {"behavior": 0, "price": 2, "category": 2} and rep.total == 4
    assert rep.values == {"price": 9.5, "category": "unknown"}  # median of 9.5, 9.5, 9.5, 30
    assert out["price"].tolist() == [9.5, 9.5, 9.5, 9.5, 30.0, 9.5]
    assert out["category"].tolist() == ["books", "toys", "books", "books", "unknown", "unknown"]
    assert merged["price"].isna().sum() == 2  # the input is not changed

    out, rep = fill_missing(merged, numeric=0.0, categorical="?", indicator=True)
    assert out["price"].tolist() == [9.5, 0.0, 9.5, 9.5, 30.0, 0.0]
    assert out["price_missing"].tolist() == [False, True, False, False, False, True]
    assert "behavior_missing" not in out

    out, rep = fill_missing(merged, numeric={"price": 12.0})
    assert rep.values["price"] == 12.0
    with pytest.raises(ValueError, match="no value for column 'price'"):
        fill_missing(merged, numeric={"other": 1.0})


def test_fill_keeps_integer_and_categorical_dtypes():
    f = pd.DataFrame(
        {
            "year": pd.array([1990, None, 1995, 2001], dtype="Int64"),
            "genre": pd.Categorical(["a", None, "b", "a"]),
        }  # fmt: skip
    )
    out, rep = fill_missing(f)
    assert str(out["year"].dtype) == "Int64" and out["year"].tolist() == [1990, 1995, 1995, 2001]
    assert out["genre"].tolist() == ["a", "unknown", "b", "a"]
    assert rep.filled == {"year": 1, "genre": 1}


def test_fill_has_no_rule_for_a_flag_column_even_after_a_merge_made_it_object():
    merged, _ = merge_item_features(behaviour(), products().assign(flag=[True, False, True]))
    assert merged["flag"].dtype == object and merged["flag"].isna().sum() == 1  # item 99
    with pytest.raises(DataError, match=r"column 'flag' \(object\) has 1 missing value\(s\)"):
        fill_missing(merged)
    out, rep = fill_missing(merged, columns=["price"])  # the other columns are still fillable
    assert rep.filled == {"price": 2}


def test_fill_refuses_ids_and_ratings():
    f = behaviour().astype({"user_id": float})
    with pytest.raises(ValueError, match="refusing to fill"):
        fill_missing(f, columns=["item_id"])
    f.loc[14, "user_id"] = np.nan
    with pytest.raises(DataError, match=r"'user_id' has 1 missing value\(s\), first at row 4"):
        fill_missing(f)
    g = behaviour()
    g.loc[11, "rating"] = np.nan
    with pytest.raises(DataError, match="'rating'"):
        fill_missing(g)
    with pytest.raises(DataError, match="no observed values"):
        fill_missing(pd.DataFrame({"price": [np.nan, np.nan]}))


# the whole pipeline


def test_preprocess_pipeline():
    out, rep = preprocess_interactions(behaviour(), products(), numeric=0.0)
    assert rep.n_duplicates_dropped == 1
    assert rep.merge.n_unmatched == 1 and rep.fill.filled == {"price": 2, "category": 2}
    assert len(out) == 5 and not out[["price", "category"]].isna().any().any()
    assert out.loc[13, "behavior"] == "purchase"


def test_document_pipeline_report_counts_what_the_naive_steps_miss():
    from metarec_lib.data.dataset import Dataset
    from metarec_lib.data.preprocess import document_pipeline_report

    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 10, 20, 30],
            "rating": [3.0, 4.0, 5.0, 2.0],
            "timestamp": [1, 2, 3, 4],
        }
    )
    items = pd.DataFrame(
        {"year": pd.array([1990, pd.NA, 2000], dtype="Int64"), "genres": ["A", "B", "A"]},
        index=pd.Index([10, 20, 40], name="item_id"),
    )
    ds = Dataset("t", inter, items, pd.DataFrame(index=pd.Index([1, 2], name="user_id")), (1, 5))
    row = document_pipeline_report({"t": ds}).iloc[0]
    # User 1 rated item 10 twice at different times: not an exact duplicate row, but a
    # duplicate pair; the later rating is kept. Item 30 has no feature row; item 20 no year.
    assert row["naive_exact_duplicates"] == 0 and row["duplicate_pairs_dropped"] == 1
    assert row["rows_without_features"] == 1
    # Missing after the merge: item 20's year, item 30's year and genres -> 3 cells;
    # year is filled with the item-table median (1990 + 2000) / 2.
    assert row["cells_missing"] == 3 and row["filled_with"] == "year=1995; genres=unknown"
