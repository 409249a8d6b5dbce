"""The synthetic generator: determinism, schema, the latent structure it promises, speed."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import Dataset, validate_interactions
from metarec_lib.data.synthetic import (
    BEHAVIORS,
    SyntheticTruth,
    _alias_table,
    _sample_items,
    generate_synthetic,
)

SMALL = {"n_users": 300, "n_items": 200, "density": 0.05}


@pytest.fixture(scope="module")
def medium() -> tuple[Dataset, SyntheticTruth]:
    return generate_synthetic(
        n_users=2000, n_items=500, density=0.08, n_domains=2, domain_relatedness=0.5,
        coldstart_fraction=0.25, seed=3, return_truth=True,
    )  # fmt: skip


def test_same_seed_same_data_and_digest():
    a, b = generate_synthetic(**SMALL, seed=7), generate_synthetic(**SMALL, seed=7)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert a.digest == b.digest
    assert a.notes == b.notes


def test_different_seeds_differ():
    a, b = generate_synthetic(**SMALL, seed=1), generate_synthetic(**SMALL, seed=2)
    assert a.digest != b.digest
    assert not a.items["price"].equals(b.items["price"])


def test_generator_seed_and_load_dataset():
    # a fresh Generator spawns the streams an int seed does: the same data as seed=5
    ds = generate_synthetic(**SMALL, seed=np.random.default_rng(5))
    assert ds.digest == generate_synthetic(**SMALL, seed=5).digest
    assert ds.digest != generate_synthetic(**SMALL, seed=np.random.default_rng(6)).digest
    assert (
        load_dataset("synthetic", **SMALL, seed=4).digest
        == generate_synthetic(**SMALL, seed=4).digest
    )


def test_schema_and_dtypes(medium):
    ds, _ = medium
    f = ds.interactions
    assert ds.name == "synthetic" and ds.source == "generated" and ds.rating_scale == (1.0, 5.0)
    assert list(f.columns) == ["user_id", "item_id", "rating", "timestamp", "behavior", "domain"]
    for col, dtype in [("user_id", np.int64), ("item_id", np.int64), ("rating", np.float64),
                       ("timestamp", np.int64), ("domain", np.int64)]:  # fmt: skip
        assert f[col].dtype == dtype, col
    assert list(f["behavior"].cat.categories) == list(BEHAVIORS) and f["behavior"].cat.ordered
    assert ds.items.index.name == "item_id" and ds.users.index.name == "user_id"
    assert list(ds.items.index) == list(range(1, 501))
    assert list(ds.users.index) == list(range(1, 2001))
    assert {"title", "year", "genres", "category", "price", "domain"} <= set(ds.items.columns)
    assert ds.items.loc[17, "title"] == "item 17"
    assert (ds.items["genres"] == ds.items["category"]).all()
    assert str(ds.items["year"].dtype) == "Int64"
    assert (ds.items["price"] > 0).all()
    assert {"age", "gender", "segment"} <= set(ds.users.columns)
    assert set(ds.users["gender"]) == {"F", "M"}
    # Sorted by user then time; times are unix seconds in 2020..2024.
    assert (np.diff(f["user_id"]) >= 0).all()
    same_user = np.diff(f["user_id"]) == 0
    assert (np.diff(f["timestamp"])[same_user] >= 0).all()
    assert f["timestamp"].between(1_577_836_800, 1_577_836_800 + 5 * 365 * 86_400).all()


def test_passes_validation_no_duplicates_integer_ratings(medium):
    ds, _ = medium
    f = ds.interactions
    checked = validate_interactions(f, source="synthetic", rating_scale=ds.rating_scale)
    pd.testing.assert_frame_equal(checked, f)
    assert not f.duplicated(["user_id", "item_id"]).any()
    assert set(np.unique(f["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert f["rating"].nunique() == 5  # the whole scale is used


def test_density_close_to_requested():
    ds = generate_synthetic(n_users=3000, n_items=400, density=0.05, seed=0)
    assert ds.describe()["density"] == pytest.approx(0.05, rel=0.05)
    assert ds.n_users == 3000  # every user has ratings


def test_coldstart_users_have_few_ratings(medium):
    ds, truth = medium
    counts = ds.interactions.groupby("user_id").size()
    cold = truth.coldstart_user_ids
    assert len(cold) == 500  # 25% of 2000
    assert counts.loc[cold].between(5, 20).all()
    warm = counts.drop(cold)
    assert warm.min() >= 5
    assert warm.mean() > 2 * counts.loc[cold].mean()
    assert len(counts) == 2000


def test_domains_split_items(medium):
    ds, truth = medium
    sizes = ds.items["domain"].value_counts()
    assert set(sizes.index) == {0, 1} and sizes.max() - sizes.min() <= 1
    f = ds.interactions
    np.testing.assert_array_equal(f["domain"], ds.items["domain"].loc[f["item_id"]].to_numpy())
    np.testing.assert_array_equal(truth.item_domain, ds.items["domain"].to_numpy())


@pytest.mark.parametrize(("relatedness", "expected"), [(1.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_domain_relatedness_is_the_factor_correlation(relatedness, expected):
    _, truth = generate_synthetic(
        n_users=3000, n_items=60, density=0.1, n_domains=3,
        domain_relatedness=relatedness, seed=11, return_truth=True,
    )  # fmt: skip
    f = truth.user_factors
    assert f.shape == (3, 3000, 8) and truth.user_bias.shape == (3, 3000)
    if relatedness == 1.0:
        np.testing.assert_array_equal(f[0], f[1])
        np.testing.assert_array_equal(truth.user_bias[0], truth.user_bias[2])
    corr = np.corrcoef(f[0].ravel(), f[2].ravel())[0, 1]
    assert corr == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("relatedness", [1.0, 0.5, 0.0])
def test_domain_relatedness_mixes_tastes_too(relatedness):
    """Category taste and price sensitivity correlate across domains with r as the factors do
    (at r = 0 nothing of a user's taste carries over), and keep their spread at every r."""
    kw = {"n_users": 4000, "n_items": 60, "density": 0.1, "n_domains": 2, "seed": 5}
    _, t = generate_synthetic(**kw, domain_relatedness=relatedness, return_truth=True)
    _, one = generate_synthetic(**{**kw, "n_domains": 1}, return_truth=True)
    pref, price = t.category_preference, t.price_sensitivity
    assert pref.shape == (2, 4000, 10) and price.shape == (2, 4000)
    if relatedness == 1.0:
        np.testing.assert_array_equal(pref[0], pref[1])
        np.testing.assert_array_equal(price[0], one.price_sensitivity[0])
    # Correlation over users within each category, averaged: r in expectation (each domain's
    # effects are a few draws, so one seed scatters around it: -0.08 at r=0, 0.33 at r=0.5).
    corr = np.mean([np.corrcoef(pref[0][:, c], pref[1][:, c])[0, 1] for c in range(10)])
    assert corr == pytest.approx(relatedness, abs=0.25)
    assert abs(pref[1].std() - one.category_preference[0].std()) < 0.15
    assert abs(price[1].mean() - one.price_sensitivity[0].mean()) < 0.15


def test_observed_ratings_follow_the_latent_score(medium):
    ds, truth = medium
    f = ds.interactions
    score = truth.score(f["user_id"], f["item_id"])
    assert spearmanr(f["rating"], score).statistic > 0.7
    # With no noise the rating is exactly the clipped, rounded score.
    ds0, truth0 = generate_synthetic(**SMALL, noise=0.0, return_truth=True)
    f0 = ds0.interactions
    expected = np.clip(np.rint(truth0.score(f0["user_id"], f0["item_id"])), 1, 5)
    np.testing.assert_array_equal(f0["rating"], expected)
    # More noise, weaker link.
    ds2, truth2 = generate_synthetic(**SMALL, noise=2.0, return_truth=True)
    f2 = ds2.interactions
    noisy = spearmanr(f2["rating"], truth2.score(f2["user_id"], f2["item_id"])).statistic
    assert noisy < spearmanr(f0["rating"], truth0.score(f0["user_id"], f0["item_id"])).statistic


def test_truth_score_is_the_documented_formula(medium):
    _, t = medium
    u, i = np.array([1, 2000, 17]), np.array([1, 500, 250])
    ui, ii = u - 1, i - 1
    d = t.item_domain[ii]
    dot = (t.user_factors[d, ui] * t.item_factors[ii]).sum(axis=1)
    expected = (
        t.global_mean + t.user_bias[d, ui] + t.item_bias[ii]
        + t.factor_scale * dot / np.sqrt(8)
        + t.category_preference[d, ui, t.item_category[ii]]
        - t.price_sensitivity[d, ui] * t.price_z[ii]
    )  # fmt: skip
    np.testing.assert_allclose(t.score(u, i), expected)
    with pytest.raises(ValueError, match="item_id outside 1..500"):
        t.score([1], [501])


def test_user_features_drive_preferences(medium):
    ds, truth = medium
    f = ds.interactions
    price_z = truth.price_z[f["item_id"].to_numpy() - 1]
    segment = ds.users["segment"].loc[f["user_id"]].to_numpy()
    corr = {
        s: spearmanr(f["rating"][segment == s], price_z[segment == s]).statistic
        for s in ("budget", "premium")
    }
    assert corr["budget"] < corr["premium"] - 0.2  # budget users dislike dear items
    # Category taste is mostly explained by gender, age and segment.
    users = ds.users
    x = np.column_stack([
        np.ones(len(users)), users["gender"] == "F", users["age"],
        users["segment"] == "budget", users["segment"] == "premium",
    ]).astype(float)  # fmt: skip
    y = truth.category_preference[1]
    fitted = x @ np.linalg.lstsq(x, y, rcond=None)[0]
    r2 = 1 - ((y - fitted) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    assert r2 > 0.6


def test_behavior_rises_with_rating(medium):
    ds, _ = medium
    means = ds.interactions.groupby("behavior", observed=True)["rating"].mean()
    assert means["view"] < means["cart"] < means["purchase"]
    assert ds.interactions["behavior"].value_counts(normalize=True).min() > 0.1


def test_popularity_skew_concentrates_interactions():
    def top_share(skew: float) -> float:
        counts = (
            generate_synthetic(
                n_users=1000, n_items=500, density=0.02, popularity_skew=skew, seed=2
            )
            .interactions["item_id"]
            .value_counts()
        )
        return counts.iloc[:5].sum() / counts.sum()

    assert top_share(1.5) > 2 * top_share(0.5) > 2 * top_share(0.0)
    ds, truth = generate_synthetic(**SMALL, return_truth=True)
    observed = ds.interactions["item_id"].value_counts().reindex(range(1, 201), fill_value=0)
    assert spearmanr(observed, truth.popularity).statistic > 0.8


def test_ten_to_the_six_interactions():
    ds = generate_synthetic(n_users=20_000, n_items=5_000, density=0.01, seed=0)
    assert len(ds.interactions) == pytest.approx(1_000_000, rel=0.03)
    key = ds.interactions["user_id"].to_numpy() * 10_000 + ds.interactions["item_id"].to_numpy()
    assert len(np.unique(key)) == len(key)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"density": 0.0}, "density=0.0"),
        ({"density": 1.5}, "density=1.5"),
        ({"n_domains": 11, "n_items": 10}, "n_domains=11"),
        ({"domain_relatedness": 1.2}, "domain_relatedness"),
        ({"coldstart_fraction": -0.1}, "coldstart_fraction"),
        ({"coldstart_ratings": (20, 5)}, "coldstart_ratings"),
        ({"n_users": 0}, "n_users=0"),
        ({"n_factors": 2.5}, "n_factors=2.5"),
        ({"min_ratings": 11, "n_items": 10}, "min_ratings=11"),
        ({"popularity_skew": -1.0}, "popularity_skew"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic(**kwargs)


def test_alias_table_reproduces_probabilities():
    p = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0])
    prob, alias = _alias_table(p)
    implied = prob / len(p)
    np.add.at(implied, alias, (1 - prob) / len(p))
    np.testing.assert_allclose(implied, p, atol=1e-12)


def _exact_inclusion(p: np.ndarray, c: int) -> np.ndarray:
    """P(item i in a c-item successive sample), by enumerating every ordered sample."""
    out = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), c):
        prob, left = 1.0, 1.0
        for j in seq:
            prob *= p[j] / left
            left -= p[j]
        out[list(seq)] += prob
    return out


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("method", ["stream", "dense"])
def test_sampler_is_sampling_without_replacement(method, c):
    # c=4 from skewed weights: the stream path needs its restricted (prefix-skipping) rounds.
    p = np.array([0.55, 0.2, 0.12, 0.07, 0.04, 0.02])
    expected = _exact_inclusion(p, c)
    assert expected.sum() == pytest.approx(c)
    n = 20_000
    u, i = _sample_items(np.full(n, c), p, np.random.default_rng(c), method=method)
    assert len(u) == c * n and len(np.unique(u * 6 + i)) == c * n
    # 4 standard errors at most: sqrt(0.25 / 20000) = 0.0035.
    np.testing.assert_allclose(np.bincount(i, minlength=6) / n, expected, atol=0.014)


def test_sampler_extends_short_streams():
    # Nearly the whole catalogue from very skewed weights: most users need several rounds.
    p = np.array([0.9, 0.05, 0.03, 0.01, 0.005, 0.005])
    counts = np.array([5, 6, 1, 3] * 50)
    u, i = _sample_items(counts, p, np.random.default_rng(1), method="stream")
    np.testing.assert_array_equal(np.bincount(u, minlength=200), counts)
    assert len(np.unique(u * 6 + i)) == len(u)


def test_sampler_falls_back_when_the_tail_is_unreachable():
    # Five items share 1e-6 of the mass: the stream gives up after its rounds and the dense
    # path finishes every user exactly.
    p = np.array([1 - 1e-6] + [2e-7] * 5)
    u, i = _sample_items(np.full(10, 6), p, np.random.default_rng(0), method="stream")
    np.testing.assert_array_equal(np.bincount(u), np.full(10, 6))
    assert len(np.unique(u * 6 + i)) == 60


def test_extreme_skew_finishes_quickly():
    # Zipf 5: only ~60 items carry float-resolvable mass; 150 per user must go the dense way.
    ds = generate_synthetic(n_users=20, n_items=3000, density=0.05, popularity_skew=5.0)
    counts = ds.interactions.groupby("user_id").size()
    assert counts.min() >= 5 and not ds.interactions.duplicated(["user_id", "item_id"]).any()
    assert counts.sum() == pytest.approx(20 * 150, rel=0.3)


@settings(max_examples=25, deadline=None)
@given(
    n_users=st.integers(1, 40),
    n_items=st.integers(1, 60),
    density=st.floats(0.01, 1.0),
    domains=st.integers(1, 5),
    cold=st.floats(0.0, 1.0),
    skew=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_hold_for_any_parameters(n_users, n_items, density, domains, cold, skew, seed):
    n_domains = min(domains, n_items)
    ds, truth = generate_synthetic(
        n_users=n_users, n_items=n_items, density=density, n_domains=n_domains,
        coldstart_fraction=cold, coldstart_ratings=(1, 3), min_ratings=1,
        popularity_skew=skew, seed=seed, return_truth=True,
    )  # fmt: skip
    f = ds.interactions
    validate_interactions(f, source="synthetic", rating_scale=ds.rating_scale)
    assert not f.duplicated(["user_id", "item_id"]).any()
    counts = f.groupby("user_id").size()
    assert len(counts) == n_users and counts.max() <= n_items
    assert counts.loc[truth.coldstart_user_ids].le(3).all()
    assert f["item_id"].between(1, n_items).all()
    assert set(ds.items["domain"]) == set(range(n_domains))


def test_exposure_taste_makes_rated_items_carry_taste():
    """With exposure_taste users rate what they expect to like: the rated pairs' latent score
    rises with it, each user still rates as many distinct items, and 0 is the plain sampler."""
    kw = {"n_users": 300, "n_items": 200, "density": 0.1, "seed": 4}
    plain, t0 = generate_synthetic(**kw, return_truth=True)
    same = generate_synthetic(**kw, exposure_taste=0.0)
    pd.testing.assert_frame_equal(plain.interactions, same.interactions)
    tilted, t2 = generate_synthetic(**kw, exposure_taste=2.0, return_truth=True)
    f0, f2 = plain.interactions, tilted.interactions
    np.testing.assert_array_equal(f0.groupby("user_id").size(), f2.groupby("user_id").size())
    assert not f2.duplicated(["user_id", "item_id"]).any()
    mean0 = t0.score(f0["user_id"], f0["item_id"]).mean()
    mean2 = t2.score(f2["user_id"], f2["item_id"]).mean()
    assert mean2 > mean0 + 0.5
    assert f2["rating"].mean() > f0["rating"].mean() + 0.3
    with pytest.raises(ValueError, match="exposure_taste"):
        generate_synthetic(**kw, exposure_taste=-1.0)
