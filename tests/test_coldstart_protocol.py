"""The cold-start protocol as runner splits: episodes, names, query metrics, tuning marks."""

import itertools

import numpy as np
import pandas as pd
import pytest

from metarec_lib import protocols, splits
from metarec_lib.data import load_dataset
from metarec_lib.metrics import query_ndcg_per_user
from metarec_lib.models.popularity import MostPop
from metarec_lib.models.registry import MODELS, register
from metarec_lib.runner import Experiment


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", n_users=120, n_items=60, density=0.3, seed=5)


def _pairs(frame):
    return set(zip(frame["user_id"], frame["item_id"], strict=True))


def test_episode_split_keeps_new_users_out_of_training_except_their_support(tiny):
    cold = splits.coldstart_users(tiny.interactions, seed=3)
    split = splits.episode_split(cold, 5)
    train_users = set(split.train["user_id"])
    for users, support in ((split.cold_users, cold.support[5]),
                           (split.valid_users, cold.valid_support[5])):  # fmt: skip
        assert set(users) <= train_users
        rows = split.train[split.train["user_id"].isin(users)]
        assert _pairs(rows) == _pairs(support)  # their only training rows are the support
        assert (rows.groupby("user_id").size() == 5).all()
    assert set(split.test["user_id"]) == set(split.cold_users)
    assert set(split.valid["user_id"]) == set(split.valid_users)
    assert not _pairs(split.test) & _pairs(split.train)
    assert not set(cold.test_users) & set(cold.train["user_id"])
    with pytest.raises(ValueError, match="k=4"):
        splits.episode_split(cold, 4)


def test_meta_validation_is_the_same_for_every_support_size():
    """k = 1 and k = 20 of one seed: the same meta-valid episodes (at k = 5, also for users too
    short for k = 20), and train differs only in the meta-test users' supports."""
    dense = load_dataset("synthetic", n_users=80, n_items=60, density=0.5, seed=5)
    cold = splits.coldstart_users(dense.interactions, seed=3)
    one, twenty = splits.episode_split(cold, 1), splits.episode_split(cold, 20)
    pd.testing.assert_frame_equal(one.valid, twenty.valid)
    pd.testing.assert_frame_equal(one.valid, cold.valid_query[5])
    np.testing.assert_array_equal(one.valid_users, twenty.valid_users)
    assert cold.valid_support[20]["user_id"].nunique() < len(twenty.valid_users)

    def others(split):  # train without the meta-test users' rows
        rows = split.train[~split.train["user_id"].isin(cold.test_users)]
        return rows.sort_values(["user_id", "item_id"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(others(one), others(twenty))
    for split, k in ((one, 1), (twenty, 20)):
        rows = split.train[split.train["user_id"].isin(cold.test_users)]
        assert _pairs(rows) == _pairs(cold.support[k])
    assert len(one.train) - len(twenty.train) == len(cold.support[1]) - len(cold.support[20])


def test_a_split_without_the_validation_k_validates_at_the_test_k(tiny):
    cold = splits.coldstart_users(tiny.interactions, ks=(1, 3), seed=3)
    split = splits.episode_split(cold, 3)
    pd.testing.assert_frame_equal(split.valid, cold.valid_query[3])
    assert "valid_k=5" in split.notes[-1]
    pd.testing.assert_frame_equal(splits.episode_split(cold, 3, valid_k=1).valid,
                                  cold.valid_query[1])  # fmt: skip


def test_protocol_names_round_trip_and_supports_are_shared_across_pools(tiny):
    assert protocols.coldstart_variant("coldstart-users@k=5") == (5, 1.0)
    assert protocols.coldstart_variant("coldstart-users@k=5,pool=0.25") == (5, 0.25)
    assert protocols.coldstart_name(5, 0.25) == "coldstart-users@k=5,pool=0.25"
    assert protocols.coldstart_name(3) == "coldstart-users@k=3"
    for bad in ("coldstart-users", "coldstart-users@pool=0.5", "coldstart-users@k=x"):
        with pytest.raises(ValueError, match="cold-start protocol"):
            protocols.coldstart_variant(bad)
    assert protocols.task_of("coldstart-users@k=1") == "coldstart"
    full = protocols.split_factory("coldstart-users@k=3", tiny)(7)
    small = protocols.split_factory("coldstart-users@k=3,pool=0.5", tiny)(7)
    pd.testing.assert_frame_equal(full.test, small.test)  # same new users, same episodes
    assert small.train["user_id"].nunique() < full.train["user_id"].nunique()


def test_a_pool_shrinks_the_final_fits_warm_users_by_its_share(tiny):
    """The final fit adds the meta-valid users' queries to its history after tuning; a pool
    variant adds the same share of them as it keeps of the meta-train users, while tuning still
    validates on every meta-valid user."""

    def warm(split):  # users with more rows in the history than a support
        counts = split.history()["user_id"].value_counts()
        return set(counts[counts > 5].index)

    full = protocols.split_factory("coldstart-users@k=5", tiny)(7)
    assert full.refit_valid is None
    pd.testing.assert_frame_equal(full.history(), pd.concat([full.train, full.valid]))
    n_full = len(warm(full))
    previous = None
    for pool in (0.5, 0.25):
        small = protocols.split_factory(f"coldstart-users@k=5,pool={pool}", tiny)(7)
        pd.testing.assert_frame_equal(small.valid, full.valid)  # tuning: every meta-valid user
        refit = set(small.refit_valid["user_id"])
        assert refit < set(full.valid["user_id"])
        assert _pairs(small.refit_valid) == _pairs(full.valid[full.valid["user_id"].isin(refit)])
        cold = splits.coldstart_users(tiny.interactions, seed=7, pool_fraction=pool)
        assert len(cold.refit_valid_users) == round(pool * len(cold.valid_users))
        # The warm users of the final fit: the pooled meta-train and meta-valid users; the other
        # meta-valid users are not in it at all, the meta-test users by their supports only.
        assert (
            warm(small)
            == set(small.train["user_id"]) - set(small.cold_users) - set(small.valid_users) | refit
        )
        assert set(small.history()["user_id"]) == warm(small) | set(small.cold_users)
        assert len(warm(small)) / n_full == pytest.approx(pool, abs=0.05)
        if previous is not None:
            assert warm(small) < previous  # nested: smaller pools are subsets
        previous = warm(small)


def test_query_ndcg_by_hand():
    # User 0: query ratings 5, 3, 1 predicted in the order 3, 5, 1.
    users = [0, 0, 0, 2, 2]
    true = [5.0, 3.0, 1.0, 4.0, 4.0]
    pred = [0.2, 0.9, 0.1, 1.0, 1.0]
    out = query_ndcg_per_user(users, true, pred, k=3, n_users=3)
    dcg = 3 + 5 / np.log2(3) + 1 / 2
    ideal = 5 + 3 / np.log2(3) + 1 / 2
    assert out[0] == pytest.approx(dcg / ideal)
    assert out[2] == pytest.approx(1.0) and np.isnan(out[1])
    assert query_ndcg_per_user(users, true, pred, k=1, n_users=3)[0] == pytest.approx(3 / 5)


def test_query_ndcg_ties_share_their_ranks_discount():
    # Two items tied: each gets the mean of the discounts of ranks 1 and 2.
    out = query_ndcg_per_user([0, 0], [3.0, 1.0], [0.5, 0.5], k=2, n_users=1)
    assert out[0] == pytest.approx(4 * (1 + 1 / np.log2(3)) / 2 / (3 + 1 / np.log2(3)))
    # Three tied items and k = 1: each holds rank 1 with probability 1/3, DCG = 6 / 3 = 2.
    out = query_ndcg_per_user([0, 0, 0], [3.0, 1.0, 2.0], [1.0, 1.0, 1.0], k=1, n_users=1)
    assert out[0] == pytest.approx(2 / 3)
    # A tie below the cut-off changes nothing: rank 1 is untied, ranks 2-3 lie past k = 1.
    out = query_ndcg_per_user([0, 0, 0], [1.0, 5.0, 4.0], [0.9, 0.1, 0.1], k=1, n_users=1)
    assert out[0] == pytest.approx(1 / 5)


def test_query_ndcg_is_one_for_a_perfect_ranking_and_never_above():
    """Averaging the discounts of a tie group would round a perfect ranking to 1 +- 1e-16;
    a group of equal gains is not averaged, so a perfect ranking, tied or not, gives exactly 1
    and a near-perfect one never more."""
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 500, 5000))
    true = rng.integers(1, 6, 5000).astype(float)
    for pred in (true, true * 10 + np.arange(5000) * 1e-9, true * 10 - np.arange(5000) * 1e-9):
        out = query_ndcg_per_user(users, true, pred, k=10, n_users=500)
        assert np.all(out[~np.isnan(out)] == 1.0)
    out = query_ndcg_per_user(users, true, np.round(true + rng.normal(0, 1, 5000)), k=10,
                              n_users=500)  # fmt: skip
    assert np.nanmax(out) <= 1.0 and np.nanmin(out) < 1.0


def test_query_ndcg_of_ties_is_the_mean_over_their_orders_and_ignores_input_order():
    """The value with ties equals the mean, over every order of the tied items, of NDCG with
    that order imposed (scores nudged apart); the rows' input order does not change it."""
    rng = np.random.default_rng(7)
    true = rng.integers(1, 6, 6).astype(float)
    pred = np.array([0.3, 0.7, 0.3, 0.3, 0.7, 0.1])
    users = np.zeros(6, dtype=int)
    for k in (1, 2, 4, 10):
        tied = query_ndcg_per_user(users, true, pred, k=k, n_users=1)[0]
        values = []
        for perm in itertools.permutations(range(6)):
            nudged = pred - 1e-6 * np.argsort(perm)  # ties broken in the order `perm`
            values.append(query_ndcg_per_user(users, true, nudged, k=k, n_users=1)[0])
        assert tied == pytest.approx(np.mean(values), abs=1e-12)
        shuffled = rng.permutation(6)
        again = query_ndcg_per_user(users, true[shuffled], pred[shuffled], k=k, n_users=1)
        assert again[0] == pytest.approx(tied, abs=1e-12)


class _SeesColdUsers(MostPop):
    """MostPop that records which users the runner marked as cold (for the test below)."""

    name = "_SeesColdUsers"
    seen_cold: list = []  # noqa: RUF012
    seen_users: list = []  # noqa: RUF012  (the users with rows in each fit's train)

    def _fit(self, train, *, valid, seed):
        type(self).seen_cold.append(None if train.cold_users is None else train.cold_users.copy())
        type(self).seen_users.append(np.unique(train.frame["user"].to_numpy()))
        super()._fit(train, valid=valid, seed=seed)


@pytest.fixture
def registered():
    """_SeesColdUsers in the model registry for one test (tuning looks models up by name)."""
    register(_SeesColdUsers)
    yield
    MODELS.pop(_SeesColdUsers.name)


def test_runner_scores_queries_and_marks_new_users(tmp_path, tiny):
    from metarec_lib.models.svd import BiasedMF

    _SeesColdUsers.seen_cold.clear()
    split = protocols.split_factory("coldstart-users@k=5", tiny)
    exp = Experiment("60_x", tmp_path, progress=False)
    rows = exp.run(tiny, "coldstart-users@k=5", split, [_SeesColdUsers(), BiasedMF(epochs=2)],
                   seeds=[1], task="coldstart")  # fmt: skip
    by_model = rows.groupby("model")["metric"].apply(set)
    assert {"ndcg@10", "query_ndcg@3", "query_ndcg@10"} <= by_model["_SeesColdUsers"]
    assert "rmse" not in by_model["_SeesColdUsers"]
    assert {"rmse", "mae", "query_ndcg@10"} <= by_model["BiasedMF"]
    encoder = tiny.encoder()
    expected = encoder.user_index(split(1).cold_users)
    np.testing.assert_array_equal(_SeesColdUsers.seen_cold[0], expected)
    top = pd.read_csv(tmp_path / "60_x" / "topk" /
                      "synthetic__coldstart-users@k=5___SeesColdUsers__seed1.csv.gz")  # fmt: skip
    assert not _pairs(top) & _pairs(split(1).train)  # supports are never recommended back


def test_tuning_fits_without_meta_test_users_and_marks_meta_valid_users_cold(
    tmp_path, tiny, registered
):
    """A meta-test user's support at the tuned k (5) holds query items of a smaller k, so the
    tuning fit leaves the meta-test users out; the meta-valid users are its cold users."""
    from metarec_lib.study import tune

    _SeesColdUsers.seen_cold.clear()
    _SeesColdUsers.seen_users.clear()
    tune(tiny, "coldstart-users@k=5", "_SeesColdUsers", budget=1, seed=2, device="cpu",
         cache_dir=tmp_path, progress=False)  # fmt: skip
    split = protocols.split_factory("coldstart-users@k=5", tiny)(2)
    encoder = tiny.encoder()
    valid_users = np.sort(encoder.user_index(split.valid_users))
    np.testing.assert_array_equal(_SeesColdUsers.seen_cold[0], valid_users)
    test_users = encoder.user_index(split.cold_users)
    assert len(test_users) and not np.isin(test_users, _SeesColdUsers.seen_users[0]).any()
    assert np.isin(valid_users, _SeesColdUsers.seen_users[0]).all()  # their supports stay
    k1_queries = protocols.split_factory("coldstart-users@k=1", tiny)(2).test
    fit_users = encoder.user_index(k1_queries["user_id"].unique())
    assert not np.isin(fit_users, _SeesColdUsers.seen_users[0]).any()


class _PastTheScale(MostPop):
    """A rating model with fixed raw predictions, some past the top of its 1-5 scale."""

    name = "_PastTheScale"
    predicts_ratings = True
    raw = {0: 5.5, 1: 6.0, 2: 2.0}  # noqa: RUF012  (item -> raw predicted rating)

    def predict_raw(self, users, items):
        return np.array([self.raw[int(i)] for i in items])

    def predict(self, users, items):
        return self.clip_ratings(self.predict_raw(users, items))

    def clip_ratings(self, values):
        return np.clip(values, 1.0, 5.0)


def test_query_metrics_rank_by_unclipped_ratings_and_score_clipped_ones():
    """Clipped, items 0 and 1 tie at 5 and share ranks 1 and 2; unclipped, item 1 (raw 6.0,
    true 5) ranks first, which is the ideal order: NDCG@3 = 1. RMSE and MAE are of the clipped
    ratings: errors 2, 0, 1."""
    from metarec_lib.data.dataset import Interactions
    from metarec_lib.runner import _add_query_metrics

    frame = pd.DataFrame({"user": [0, 0, 0], "item": [0, 1, 2], "rating": [3.0, 5.0, 1.0]})
    test = Interactions(frame, n_users=1, n_items=3)
    metrics, per_user = {}, pd.DataFrame(index=[0])
    _add_query_metrics(_PastTheScale(), test, metrics, per_user, np.array([0]))
    assert metrics["query_ndcg@3"] == pytest.approx(1.0)
    # ranked by the clipped ratings, items 0 (true 3) and 1 (true 5) tie and share the mean
    # discount of ranks 1 and 2: NDCG@3 = ((3 + 5) (1 + 1/log2(3)) / 2 + 1/2)
    # / (5 + 3/log2(3) + 1/2) = 0.9501, less than the 1.0 above
    from metarec_lib.metrics import query_ndcg_per_user

    clipped = _PastTheScale().predict(np.zeros(3), np.arange(3))
    by_clipped = query_ndcg_per_user([0, 0, 0], [3.0, 5.0, 1.0], clipped, k=3, n_users=1)
    assert by_clipped[0] == pytest.approx(0.9501, abs=1e-4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert metrics["mae"] == pytest.approx(1.0)
    assert per_user["query_ndcg@10"].tolist() == pytest.approx([1.0])
