"""Data cards: the numbers a reader needs before trusting any result on a data set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from metarec_lib.data.dataset import Dataset


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, towards 1 = concentrated)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def summary(ds: Dataset, *, ks: Sequence[int] = (1, 3, 5, 10, 20), min_query: int = 5) -> dict:
    """Counts, density, rating scale, popularity concentration and cold-start headroom."""
    inter = ds.interactions
    per_user = inter.groupby("user_id").size()
    per_item = inter.groupby("item_id").size()
    top20 = np.sort(per_item.to_numpy())[::-1][: max(1, int(np.ceil(0.2 * len(per_item))))]
    catalogue = max(len(ds.items), ds.n_items)
    out = {
        "dataset": ds.name,
        "source": ds.source,
        "interactions": len(inter),
        "users": ds.n_users,
        "items_rated": ds.n_items,
        "items_in_catalogue": catalogue,
        "density": len(inter) / (ds.n_users * catalogue) if len(inter) else 0.0,
        "rating_min": float(inter["rating"].min()),
        "rating_max": float(inter["rating"].max()),
        "rating_mean": float(inter["rating"].mean()),
        "ratings_per_user_median": float(per_user.median()),
        "ratings_per_user_min": int(per_user.min()),
        "ratings_per_item_median": float(per_item.median()),
        "share_of_ratings_top20pct_items": float(top20.sum() / len(inter)),
        "item_popularity_gini": gini(per_item.to_numpy()),
        "items_with_one_rating": int((per_item == 1).sum()),
        "first_rating": pd.to_datetime(int(inter["timestamp"].min()), unit="s").date().isoformat(),
        "last_rating": pd.to_datetime(int(inter["timestamp"].max()), unit="s").date().isoformat(),
        "digest": ds.digest[:16],
    }
    for k in ks:
        # Users who can serve as cold-start test users with a support set of k ratings.
        out[f"users_with_k{k}_plus_{min_query}"] = int((per_user >= k + min_query).sum())
    return out


def summaries(datasets: Sequence[Dataset]) -> pd.DataFrame:
    """One data card per data set, as rows of a table."""
    return pd.DataFrame([summary(ds) for ds in datasets]).set_index("dataset")


def rating_distribution(ds: Dataset) -> pd.Series:
    """Share of ratings at each rating value."""
    return ds.interactions["rating"].value_counts(normalize=True).sort_index()


def genre_distribution(ds: Dataset) -> pd.Series:
    """Share of items carrying each genre (an item with several genres counts in each)."""
    if "genres" not in ds.items.columns or ds.items.empty:
        return pd.Series(dtype=float)
    genres = ds.items["genres"].fillna("").astype(str).str.split("|").explode()
    genres = genres[genres != ""]
    return (genres.value_counts() / len(ds.items)).sort_values(ascending=False)


def popularity_curve(ds: Dataset) -> pd.DataFrame:
    """Long tail: items sorted by popularity, with the cumulative share of ratings."""
    counts = np.sort(ds.interactions.groupby("item_id").size().to_numpy())[::-1]
    return pd.DataFrame(
        {
            "item_rank_share": np.arange(1, len(counts) + 1) / len(counts),
            "ratings": counts,
            "cumulative_share": np.cumsum(counts) / counts.sum(),
        }
    )


def user_activity(ds: Dataset) -> pd.Series:
    """Number of ratings per user."""
    return ds.interactions.groupby("user_id").size().rename("ratings")
