import math
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.content import (
    ContentRegression,
    ContentTFIDF,
    ridge_biases_features,
    tfidf_item_vectors,
)
from metarec_lib.models.registry import MODELS
from metarec_lib.testing import check_recommender, check_space_holds_defaults

GENRES_ONLY = {"tag_weight": 0.0, "title_weight": 0.0, "decade_weight": 0.0}


def interactions(rows, n_users, n_items, users=None, items=None) -> Interactions:
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    return Interactions(frame, n_users, n_items, users, items)


# ----------------------------------------------------------------------------- contract


def test_content_tfidf_passes_the_contract():
    check_recommender(ContentTFIDF)
    assert ContentTFIDF.family == "content" and not ContentTFIDF.predicts_ratings


def test_content_regression_passes_the_contract():
    # Default regularisation suits 100k ratings; on 100 ratings it shrinks the planted crosses
    # too far to be sure of the ranking, so the learning check uses a weak prior.
    check_recommender(ContentRegression, learns=False)
    check_recommender(lambda: ContentRegression(reg_features=1.0))
    assert ContentRegression.family == "content" and ContentRegression.predicts_ratings


def test_both_models_are_registered_with_sensible_spaces():
    assert MODELS["ContentTFIDF"] is ContentTFIDF
    assert MODELS["ContentRegression"] is ContentRegression
    for cls in (ContentTFIDF, ContentRegression):
        assert 2 <= len(cls.space) <= 4 and set(cls.space) <= set(cls.defaults)
        check_space_holds_defaults(cls)  # tuning can find the default again


# ----------------------------------------------------------------------------- ContentTFIDF


def five_items() -> pd.DataFrame:
    # df(a) = 3, df(b) = 2 of n = 5 items; item 3 has no content at all.
    return pd.DataFrame({"genres": ["a", "b", "a|b", "", "a"]})


def idf(df: int, n: int = 5) -> float:
    return math.log((1 + n) / (1 + df)) + 1  # scikit-learn's smoothed idf


def test_hand_worked_profile_and_cosine_ranking():
    """User 0 rated item 0 (genre a) 5 and item 1 (genre b) 3: centred weights +1 and -1, so
    the profile is (1, -1)/sqrt(2) over (a, b)."""
    train = interactions([(0, 0, 5.0), (0, 1, 3.0)], 1, 5, items=five_items())
    model = ContentTFIDF(**GENRES_ONLY).fit(train)
    ia, ib = idf(3), idf(2)
    both = np.array([ia, ib]) / math.hypot(ia, ib)  # item 2's unit vector
    expected = np.array([1, -1, both[0] - both[1], 0, 1]) / math.sqrt(2)
    np.testing.assert_allclose(model.score([0])[0], expected, atol=1e-12)
    # Unseen items: 4 (genre a, liked) first, then the featureless item 3 (cosine 0), and last
    # item 2, which shares the disliked genre b.
    top, _ = model.recommend([0], k=3)
    assert top[0].tolist() == [4, 3, 2]
    np.testing.assert_allclose(
        model.item_vectors_.toarray(),
        [[1, 0], [0, 1], both, [0, 0], [1, 0]],
        atol=1e-12,
    )


def test_centring_pushes_away_items_like_a_below_mean_rating():
    train = interactions([(0, 0, 5.0), (0, 1, 3.0)], 1, 5, items=five_items())
    centred = ContentTFIDF(**GENRES_ONLY).fit(train).score([0])[0]
    binary = ContentTFIDF(**GENRES_ONLY, weighting="binary").fit(train).score([0])[0]
    # Binary: both rated genres are liked, so the a|b item is the best match.
    assert binary[2] > binary[4] == pytest.approx(1 / math.sqrt(2)) and binary[2] > 0.99
    # Centred: genre b was rated below the user's mean, so b items score below zero.
    assert centred[1] < 0 and centred[2] < centred[3] == 0.0 < centred[4]


def test_user_with_all_equal_ratings_still_likes_what_they_rated():
    train = interactions([(0, 0, 4.0), (0, 4, 4.0)], 1, 5, items=five_items())
    scores = ContentTFIDF(**GENRES_ONLY).fit(train).score([0])[0]
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from([1.0, 2.0, 3.5, 4.0, 5.0])),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from(["centred", "binary"]),
)
def test_score_profile_equals_scoring_a_fitted_user(support, weighting):
    items = pd.DataFrame(
        {"genres": ["a", "b", "a|c", "c", "", "b|c", "a|b|c", "d"],
         "year": pd.array([1990, 1995, None, 2001, 1985, 1990, 2010, 1999], dtype="Int64")}
    )  # fmt: skip
    other = [(1, 0, 2.0), (1, 3, 5.0)]
    train = interactions([(0, i, r) for i, r in support] + other, 2, 8, items=items)
    model = ContentTFIDF(weighting=weighting).fit(train)
    got = model.score_profile([i for i, _ in support], [r for _, r in support])
    np.testing.assert_allclose(got, model.score([0])[0], atol=1e-12)
    assert np.all(np.abs(got) <= 1 + 1e-12)


def test_item_vector_blocks():
    items = pd.DataFrame(
        {
            "title": ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "unknown"],
            "year": pd.array([1995, 1999, 1995, None], dtype="Int64"),
            "genres": ["Animation", "Animation", "Action", "unknown"],
            "tags": ["robin williams|pixar", "pixar", "", np.nan],
        }
    )
    weights = {"genre": 0.0, "tag": 0.0, "title": 1.0, "decade": 0.0}
    titles = tfidf_item_vectors(items, 4, weights).toarray()
    # "(1995)" is stripped, words of one title only ("heat", "2") are dropped.
    np.testing.assert_allclose(titles @ titles.T, [[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4, [0] * 4])
    decade = tfidf_item_vectors(items, 4, {**weights, "title": 0.0, "decade": 1.0}).toarray()
    np.testing.assert_allclose(decade @ decade.T, [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0],
                                                   [0, 0, 0, 0]])  # fmt: skip
    tags = tfidf_item_vectors(items, 4, {**weights, "title": 0.0, "tag": 1.0}).toarray()
    assert tags.shape[1] == 2  # multi-word tags are single terms: "robin williams", "pixar"
    assert tags[1] @ tags[0] == pytest.approx(idf(2, 4) / math.hypot(idf(1, 4), idf(2, 4)))
    # "unknown" is a placeholder genre, not content.
    genres = tfidf_item_vectors(items, 4, {**weights, "title": 0.0, "genre": 1.0}).toarray()
    assert genres.shape[1] == 2 and not genres[3].any()
    # Block weights: genre and decade blocks of weight 1 and 2 -> items 0 and 2 (same decade,
    # different genre) are (1, 0, 2)/sqrt(5) and (0, 1, 2)/sqrt(5): cosine 4/5.
    mix = tfidf_item_vectors(items, 4, {**weights, "title": 0.0, "genre": 1.0, "decade": 2.0})
    assert (mix[0] @ mix[2].T).toarray()[0, 0] == pytest.approx(4 / 5)
    np.testing.assert_allclose(spla.norm(mix, axis=1), [1, 1, 1, 0])


def test_tfidf_without_item_features_scores_zero_but_still_recommends():
    train = interactions([(0, 0, 5.0), (1, 1, 3.0)], 2, 3, items=None)
    model = ContentTFIDF().fit(train)
    assert (model.score([0, 1]) == 0).all()
    top, _ = model.recommend([0], k=2)
    assert 0 not in top[0] and model.n_parameters == 0


def test_tfidf_rejects_bad_hyperparameters_and_support():
    train = interactions([(0, 0, 5.0)], 1, 5, items=five_items())
    with pytest.raises(ValueError, match="title"):
        ContentTFIDF(title_weight=-1.0).fit(train)
    with pytest.raises(ValueError, match="weighting"):
        ContentTFIDF(weighting="mean").fit(train)
    model = ContentTFIDF().fit(train)
    with pytest.raises(ValueError, match="one rating per item"):
        model.score_profile([0, 1], [5.0])
    with pytest.raises(ValueError, match="out of range"):
        model.score_profile([7], [5.0])


# ----------------------------------------------------------------------------- ContentRegression


def test_ridge_solver_matches_a_dense_least_squares_solve():
    rng = np.random.default_rng(3)
    n, n_users, n_items = 300, 12, 9
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    phi = sp.random(n, 5, density=0.4, random_state=4, format="csr")
    y = rng.normal(size=n)
    regs = {"reg_user": 2.0, "reg_item": 0.5, "reg_features": 3.0}
    b_u, b_i, w = ridge_biases_features(users, items, phi, y, n_users, n_items, **regs)
    design = np.hstack([np.eye(n_users)[users], np.eye(n_items)[items], phi.toarray()])
    penalty = np.concatenate([[2.0] * n_users, [0.5] * n_items, [3.0] * 5])
    exact = np.linalg.solve(design.T @ design + np.diag(penalty), design.T @ y)
    np.testing.assert_allclose(np.concatenate([b_u, b_i, w]), exact, atol=1e-6)


def planted(seed: int = 0) -> tuple[Interactions, float]:
    """400 users (gender F/M) x 60 items (genre x or y), 30 ratings each:
    r = 2.5 + 0.3 [F] + 0.4 [x] + 0.8 [F and x] + user and item biases + noise."""
    rng = np.random.default_rng(seed)
    n_users, n_items, cross = 400, 60, 0.8
    female = np.arange(n_users) % 2 == 0
    genre_x = np.arange(n_items) % 2 == 0
    u = np.repeat(np.arange(n_users), 30)
    i = np.concatenate([rng.choice(n_items, 30, replace=False) for _ in range(n_users)])
    r = (2.5 + 0.3 * female[u] + 0.4 * genre_x[i] + cross * (female[u] & genre_x[i])
         + rng.normal(0, 0.3, n_users)[u] + rng.normal(0, 0.1, n_items)[i]
         + rng.normal(0, 0.3, len(u)))  # fmt: skip
    users = pd.DataFrame({"gender": np.where(female, "F", "M")})
    items = pd.DataFrame({"genres": np.where(genre_x, "x", "y")})
    return interactions(list(zip(u, i, r, strict=True)), n_users, n_items, users, items), cross


def test_regression_recovers_a_planted_feature_cross():
    train, cross = planted()
    model = ContentRegression(reg_features=1.0).fit(train)
    genre_x = np.arange(train.n_items) % 2 == 0
    gaps = {}
    for gender in ("F", "M"):
        # A new user known only by features: feature effects + item biases.
        pred = model.predict_profile({"gender": gender}, np.arange(train.n_items))
        gaps[gender] = pred[genre_x].mean() - pred[~genre_x].mean()
    assert gaps["F"] - gaps["M"] == pytest.approx(cross, abs=0.1)
    assert gaps["M"] == pytest.approx(0.4, abs=0.15)
    # Without features the same new user gets no cross effect: the gap is the population's.
    anonymous = model.predict_profile(None, np.arange(train.n_items))
    gap = anonymous[genre_x].mean() - anonymous[~genre_x].mean()
    assert gaps["M"] - 0.05 < gap < gaps["F"] + 0.05


def test_regression_features_beat_biases_on_held_out_planted_ratings():
    data, _ = planted(seed=1)
    held = np.random.default_rng(5).random(len(data)) < 0.2
    train = Interactions(data.frame[~held], data.n_users, data.n_items, data.users, data.items)
    f = data.frame[held]
    errors = {}
    for reg in (1.0, 1e12):  # planted features vs (in effect) biases only
        model = ContentRegression(reg_features=reg).fit(train)
        pred = model.predict(f["user"], f["item"])
        errors[reg] = np.sqrt(np.mean((pred - f["rating"]) ** 2))
    # The cross's non-additive part has sd 0.8 / 4 = 0.2 on top of noise sd 0.3.
    assert errors[1.0] < errors[1e12] - 0.03 and errors[1.0] < 0.33


def test_regression_biases_only_hand_worked_and_cold_start():
    """No side information: the model is mu + b_u + b_i, the ridge solution of 3 ratings."""
    train = interactions([(0, 0, 5.0), (0, 1, 3.0), (1, 0, 4.0)], 3, 3)
    model = ContentRegression(reg_user=1.0, reg_item=1.0).fit(train)
    mu = 4.0
    # Normal equations, x = (b_u0, b_u1, b_i0, b_i1): (A'A + I) x = A'(r - mu).
    a = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]], float)
    x = np.linalg.solve(a.T @ a + np.eye(4), a.T @ np.array([1.0, -1.0, 0.0]))
    np.testing.assert_allclose(model.user_bias_[:2], x[:2], atol=1e-9)
    np.testing.assert_allclose(model.item_bias_[:2], x[2:], atol=1e-9)
    # User 2 and item 2 have no ratings: bias 0, so user 2 gets mu + b_i (clipped to [3, 5] when
    # predicted, not when ranked).
    np.testing.assert_allclose(model.score([2])[0], mu + model.item_bias_)
    np.testing.assert_allclose(model.predict([2, 2, 2], [0, 1, 2]),
                               np.clip(mu + model.item_bias_, 3, 5))  # fmt: skip
    assert model.item_bias_[2] == 0.0 and model.user_bias_[2] == 0.0
    # A cold-start user with support ratings gets the shrunk mean residual as bias.
    pred = model.predict_profile(None, [0, 2], support_items=[1], support_ratings=[4.5])
    bias = (4.5 - mu - model.item_bias_[1]) / (1 + 1.0)
    np.testing.assert_allclose(pred, np.clip(mu + bias + model.item_bias_[[0, 2]], 3, 5))


def test_regression_predict_agrees_with_score_and_with_missing_features():
    train, _ = planted()
    users = train.users.copy()
    users.loc[3, "gender"] = None  # a missing feature value: no effect from that variable
    train = Interactions(train.frame, train.n_users, train.n_items, users, train.items)
    model = ContentRegression().fit(train)
    pick_u = np.array([0, 3, 3, 7, 399])
    pick_i = np.array([5, 0, 59, 12, 1])
    np.testing.assert_allclose(
        model.predict(pick_u, pick_i), model.score(pick_u)[np.arange(5), pick_i], atol=1e-9
    )
    assert model.n_parameters == 1 + 400 + 60 + model.weights_.size
    # weights: gender one-hot (2), genre (2), gender x genre (4)
    assert model.weights_.size == 8


def test_regression_rejects_bad_regularisation_and_support():
    train, _ = planted()
    with pytest.raises(ValueError, match="reg_item"):
        ContentRegression(reg_item=0.0).fit(train)
    model = ContentRegression().fit(train)
    with pytest.raises(ValueError, match="support_ratings"):
        model.predict_profile(None, [0], support_items=[1, 2], support_ratings=[3.0])


# ----------------------------------------------------------------------------- MovieLens


@pytest.mark.skipif(
    not os.environ.get("METAREC_DATA_DIR"), reason="METAREC_DATA_DIR not set (MovieLens files)"
)
def test_on_ml100k_fold_u1():
    from metarec_lib.data import load_dataset
    from metarec_lib.evaluate import ndcg_on, rmse_on
    from metarec_lib.splits import canonical_folds

    ds = load_dataset("ml-100k")
    enc = ds.encoder()
    u1 = canonical_folds(ds.interactions, ds.canonical_folds)[0]
    train, test = enc.encode(u1.train), enc.encode(u1.test)
    biases = rmse_on(ContentRegression(reg_features=1e12).fit(train), test)
    full = rmse_on(ContentRegression().fit(train), test)
    # Measured: 0.9547 (biases only) and 0.9505; a global mean gives 1.154.
    assert full < biases - 0.002 and full < 0.953
    # Content-only ranking is weak on MovieLens but far above random (~0.01).
    assert ndcg_on(ContentTFIDF().fit(train), test) > 0.03
