"""Algorithm selection: meta-features from training data only, labels from validation fits only,
Oracle / SingleBest / gap closed by construction, a tree that finds a deciding feature, the
results-contract rows, determinism and errors."""

import dataclasses

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from metarec_lib import selection as S
from metarec_lib.data import load_dataset
from metarec_lib.data.dataset import DataError, Interactions
from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import get_model

DAY = 86_400
SEED = 3


def synthetic():
    return load_dataset("synthetic", n_users=120, n_items=80, density=0.15, seed=1)


def base_models() -> dict[str, Recommender]:
    return {n: get_model(n) for n in ("MostPop", "ItemKNN", "EASE")}


@pytest.fixture(scope="module")
def data() -> S.SelectionData:
    return S.build_selection_data(synthetic(), base_models(), SEED)


# ----------------------------------------------------------------------------- features


def test_user_meta_features_hand_worked(monkeypatch):
    train = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 3, 3],
            "item_id": [1, 2, 3, 1, 2, 4],
            "rating": [5.0, 3.0, 4.0, 2.0, 4.0, 4.0],
            "timestamp": [0, DAY, 3 * DAY, 2 * DAY, DAY, 2 * DAY],
        }
    )
    items = pd.DataFrame(
        {"genres": ["A", "A|B", "B", "C"]}, index=pd.Index([1, 2, 3, 4], name="item_id")
    )
    users = pd.DataFrame(
        {
            "age": [20, 30, 40, 50],
            "gender": ["M", "F", "M", "F"],
            "zip_code": ["a", "b", "c", "d"],  # 4 levels > MAX_LEVELS below: not used
        },
        index=pd.Index([1, 2, 3, 4], name="user_id"),
    )
    monkeypatch.setattr(S, "MAX_LEVELS", 3)
    f = S.user_meta_features(train, users, items, now=5 * DAY)
    assert list(f.index) == [1, 2, 3]  # user 4 has no training data: no row
    assert not any(c.startswith("zip_code") for c in f.columns)
    np.testing.assert_allclose(f["n_ratings"], [3, 1, 2])
    np.testing.assert_allclose(f["tenure_days"], [3, 0, 1])
    np.testing.assert_allclose(f["recency_days"], [2, 3, 3])  # now = day 5
    np.testing.assert_allclose(f["rating_mean"], [4, 2, 4])
    np.testing.assert_allclose(f["rating_std"], [np.sqrt(2 / 3), 0, 0])
    # Popularity (training users per item): item 1: 2, item 2: 2, item 3: 1, item 4: 1.
    np.testing.assert_allclose(f["pop_mean"], [5 / 3, 2, 1.5])
    np.testing.assert_allclose(f["pop_median"], [2, 2, 1.5])
    # User 1: A 1.5, B 1.5 -> 1 bit; user 2: A only -> 0; user 3: A .5, B .5, C 1 -> 1.5 bits.
    np.testing.assert_allclose(f["genre_entropy"], [1.0, 0.0, 1.5])
    np.testing.assert_allclose(f["age"], [20, 30, 40])
    np.testing.assert_allclose(f["gender=F"], [0, 1, 0])
    np.testing.assert_allclose(f["gender=M"], [1, 0, 1])
    default_now = S.user_meta_features(train, None, None)  # now = train's latest rating (day 3)
    np.testing.assert_allclose(default_now["recency_days"], [0, 1, 1])
    assert "genre_entropy" not in default_now and "age" not in default_now


def test_user_meta_features_rejects_bad_input():
    frame = pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [3.0]})
    with pytest.raises(DataError, match="timestamp"):
        S.user_meta_features(frame, None, None)
    dup = pd.DataFrame({"user_id": [1, 1], "item_id": [2, 2], "rating": [3.0, 4.0],
                        "timestamp": [0, 1]})  # fmt: skip
    with pytest.raises(DataError, match="duplicate"):
        S.user_meta_features(dup, None, None)


def _with_changed_rows(ds, rows: pd.DataFrame, rating: float, timestamp: int):
    """A copy of `ds` whose rows with the (user_id, item_id) pairs of `rows` get a new rating
    and timestamp (neither moves a row to another part of the split)."""
    inter = ds.interactions.copy()
    key = pd.MultiIndex.from_frame(inter[["user_id", "item_id"]])
    hit = key.isin(pd.MultiIndex.from_frame(rows[["user_id", "item_id"]]))
    inter.loc[hit, "rating"] = rating
    inter.loc[hit, "timestamp"] = timestamp
    return dataclasses.replace(ds, interactions=inter)


def test_features_and_labels_ignore_test_rows(data):
    ds = synthetic()
    fit, valid, test = S.selection_split(ds, SEED)
    far_future = int(ds.interactions["timestamp"].max()) + 1000 * DAY
    changed = _with_changed_rows(ds, test, rating=1.0, timestamp=far_future)
    again = S.build_selection_data(changed, base_models(), SEED)
    pd.testing.assert_frame_equal(again.features, data.features)
    pd.testing.assert_frame_equal(again.labels, data.labels)
    # Control: the same change to FIT rows does reach the features.
    user = int(fit["user_id"].iloc[0])
    control = _with_changed_rows(ds, fit[fit["user_id"] == user], 1.0, far_future)
    moved = S.build_selection_data(control, base_models(), SEED).features
    assert moved.loc[user, "rating_mean"] == 1.0 != data.features.loc[user, "rating_mean"]


# ----------------------------------------------------------------------------- labels


class Recording(Recommender):
    """Most-popular scores that record the (user, item) pairs of every fit (dense indices)."""

    name = "Recording"
    family = "collaborative"
    fits: list[set[tuple[int, int]]] = []

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        f = train.frame
        Recording.fits.append(set(zip(f["user"].tolist(), f["item"].tolist(), strict=True)))
        self.pop_ = np.bincount(f["item"].to_numpy(), minlength=train.n_items).astype(float)

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        return np.tile(self.pop_, (len(np.asarray(users)), 1))


def test_labels_come_from_validation_fits_and_never_see_test():
    ds = synthetic()
    Recording.fits.clear()
    models = {"MostPop": get_model("MostPop"), "Recording": Recording()}
    data = S.build_selection_data(ds, models, SEED, landmarkers=("MostPop",))
    fit, valid, test = S.selection_split(ds, SEED)
    enc = ds.encoder()

    def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
        e = enc.encode(frame).frame
        return set(zip(e["user"].tolist(), e["item"].tolist(), strict=True))

    assert len(Recording.fits) == 2  # one LABEL fit, one TEST fit
    assert pairs(fit) in Recording.fits
    assert pairs(pd.concat([fit, valid])) in Recording.fits
    assert all(not (f & pairs(test)) for f in Recording.fits)
    # Labels are ndcg@10 on VALID of a fit on FIT; test scores on TEST of a fit on FIT + VALID.
    label_fit = get_model("MostPop").fit(enc.encode(fit), seed=SEED)
    test_fit = get_model("MostPop").fit(enc.encode(pd.concat([fit, valid])), seed=SEED)
    assert data.labels["MostPop"].mean() == pytest.approx(ndcg_on(label_fit, enc.encode(valid)))
    per_user_valid = valid[valid["user_id"].isin(data.labels.index)]
    assert set(per_user_valid["user_id"]) == set(data.labels.index)
    eligible_test = test[test["user_id"].isin(data.labels.index)]
    assert data.test_ndcg["MostPop"].mean() == pytest.approx(
        ndcg_on(test_fit, enc.encode(eligible_test))
    )
    # The landmarker is a validation score from training data, not the label itself.
    assert not np.allclose(data.features["landmark:MostPop"].fillna(-1), data.labels["MostPop"])


# ----------------------------------------------------------------------------- evaluation


def test_oracle_single_best_and_gap_closed_by_construction(data):
    per_user, summary = S.evaluate_selection(data, ["MetaDT", "MetaSVM"], SEED, n_boot=200)
    assert list(per_user["user_id"]) == list(data.test_users)
    base = per_user[data.base_models].to_numpy()
    np.testing.assert_array_equal(per_user["Oracle"], base.max(axis=1))
    for method in ("MetaDT", "MetaSVM", "SingleBest", *data.base_models):
        assert (per_user[method] <= per_user["Oracle"]).all()
    single = data.labels.loc[data.train_users].mean().idxmax()
    np.testing.assert_array_equal(per_user["SingleBest"], per_user[single])
    s = summary.set_index("method")
    assert list(s.index) == ["MetaDT", "MetaSVM", "SingleBest", "Oracle", *data.base_models]
    assert (s.loc["SingleBest", ["gap_closed", "ci_low", "ci_high"]] == 0.0).all()
    assert (s.loc["Oracle", ["gap_closed", "ci_low", "ci_high"]] == 1.0).all()
    assert s.loc[single, "gap_closed"] == 0.0
    assert (s["ci_low"] <= s["gap_closed"]).all() and (s["gap_closed"] <= s["ci_high"]).all()
    assert s.loc["MetaDT", "kind"] == "meta" and s.loc["MetaDT", "mode"] in ("classify", "regress")
    assert S.gap_closed([0.3, 0.5], [0.2, 0.4], [0.4, 0.6]) == pytest.approx(0.5)
    assert np.isnan(S.gap_closed([0.3], [0.2], [0.2]))


def grouped_data(n: int = 300, seed: int = 0) -> S.SelectionData:
    """Model A is best for light users, B for heavy users (40%), C never; noise features."""
    rng = np.random.default_rng(seed)
    heavy = (rng.random(n) < 0.4).astype(float)
    ids = pd.Index(np.arange(1, n + 1, dtype=np.int64), name="user_id")
    features = pd.DataFrame(
        {"noise1": rng.normal(size=n), "heavy": heavy, "noise2": rng.normal(size=n)}, index=ids
    )

    def ndcg() -> pd.DataFrame:
        a = np.where(heavy == 1, 0.1, 0.4) + rng.normal(0, 0.05, n)
        b = np.where(heavy == 1, 0.4, 0.1) + rng.normal(0, 0.05, n)
        c = 0.2 + rng.normal(0, 0.05, n)
        return pd.DataFrame({"A": a, "B": b, "C": c}, index=ids).clip(0, 1)

    order = rng.permutation(ids.to_numpy())
    return S.SelectionData(features, ndcg(), ndcg(), np.sort(order[: int(0.7 * n)]),
                           np.sort(order[int(0.7 * n):]), dataset="grouped", seed=seed)  # fmt: skip


def test_metadt_closes_most_of_the_gap_when_a_feature_decides():
    data = grouped_data()
    tree = S.MetaDT()
    per_user, summary = S.evaluate_selection(data, {"MetaDT": tree}, 0, n_boot=200)
    s = summary.set_index("method")
    assert data.labels.loc[data.train_users].mean().idxmax() == "A"  # SingleBest: A
    assert s.loc["MetaDT", "gap_closed"] > 0.8
    assert s.loc["MetaDT", "ci_low"] > 0.5
    picks = S.selection_choices(data, {"MetaDT": tree})["MetaDT"]
    heavy = data.features.loc[data.test_users, "heavy"] == 1
    assert (picks[heavy] == "B").mean() > 0.9 and (picks[~heavy] == "A").mean() > 0.9
    # The root split of the plottable tree is the deciding feature.
    names = tree.plot_kwargs()["feature_names"]
    assert names[tree.tree_.tree_.feature[0]] == "heavy"


def test_determinism():
    ds = synthetic()
    a = S.build_selection_data(ds, base_models(), SEED)
    b = S.build_selection_data(ds, base_models(), SEED)
    for field in ("features", "labels", "test_ndcg"):
        pd.testing.assert_frame_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.train_users, b.train_users)
    other = S.build_selection_data(ds, base_models(), SEED + 1)
    assert not np.array_equal(other.train_users, a.train_users)
    data = grouped_data(n=120)
    learners = {
        "MetaNN": {"max_iter": 100},
        "MetaDT": {},
        "MetaSVM": {},
        "MetaGB": {"max_iter": 20},
    }

    def run():
        made = {n: S.META_LEARNERS[n](**p) for n, p in learners.items()}
        return S.evaluate_selection(data, made, 7, n_boot=100)

    (pu1, sm1), (pu2, sm2) = run(), run()
    pd.testing.assert_frame_equal(pu1, pu2)
    pd.testing.assert_frame_equal(sm1, sm2)


def test_rows_for_contract(data):
    per_user, _ = S.evaluate_selection(data, ["MetaDT"], SEED, n_boot=50)
    families = {n: m.family for n, m in base_models().items()}
    rows = S.rows_for_contract(per_user, "synthetic", SEED, families)
    assert list(rows.columns) == ["dataset", "protocol", "family", "model", "seed", "metric",
                                  "value"]  # fmt: skip
    assert set(rows["protocol"]) == {"algo-selection"} and set(rows["seed"]) == {SEED}
    fam = rows.drop_duplicates("model").set_index("model")["family"]
    assert fam[["MetaDT", "SingleBest", "Oracle"]].eq("meta").all()
    assert fam[list(families)].eq("collaborative").all()
    value = rows.set_index(["model", "metric"])["value"]
    assert value[("MetaDT", "ndcg@10")] == pytest.approx(per_user["MetaDT"].mean())
    assert value[("SingleBest", "gap_closed")] == 0.0 and value[("Oracle", "gap_closed")] == 1.0
    with pytest.raises(ValueError, match="unknown family"):
        S.rows_for_contract(per_user, "synthetic", SEED, {"MostPop": "popular"})


# ----------------------------------------------------------------------------- errors


def test_bad_input_is_named():
    ds = synthetic()
    with pytest.raises(ValueError, match="expected >= 2"):
        S.build_selection_data(ds, {"MostPop": get_model("MostPop")}, SEED)
    with pytest.raises(ValueError, match="reserved"):
        S.build_selection_data(ds, {"Oracle": get_model("MostPop"), **base_models()}, SEED)
    with pytest.raises(TypeError, match="depth"):
        S.MetaDT(depth=2)
    with pytest.raises(ValueError, match="mode"):
        S.MetaNN(mode="rank")
    data = grouped_data(n=40)
    with pytest.raises(ValueError, match="both selection-train and selection-test"):
        dataclasses.replace(data, test_users=np.r_[data.test_users, data.train_users[:1]])
    with pytest.raises(KeyError, match="MetaXY"):
        S.evaluate_selection(data, ["MetaXY"], 0)
    with pytest.raises(ValueError, match="clash"):
        S.evaluate_selection(data, {"A": S.MetaDT()}, 0)


class _Calls:
    """A parallel executor in name that runs its jobs here and records each batch of calls."""

    name, workers, in_process = "recording", 2, False

    def __init__(self):
        self.batches = []

    def start(self):
        """Nothing to start: the jobs run here."""

    def map_calls(self, jobs):
        from metarec_lib.executors import run_call

        self.batches.append([job.label for job in jobs])
        return [run_call(job, single_thread=False) for job in jobs]

    def map_trials(self, jobs):
        from metarec_lib.executors import run_trial

        return [run_trial(job, single_thread=False) for job in jobs]


def test_run_selection_sends_every_data_set_and_seed_as_one_batch(tmp_path, monkeypatch):
    """The (data set, seed) pairs go to the executor as one batch of `selection_seed` calls;
    each gives what `selection_seed` gives alone, and both seeds reach the results contract."""
    from metarec_lib import executors
    from metarec_lib.notebook import validate_parameters
    from metarec_lib.study import tune_for_data

    recording = _Calls()
    monkeypatch.setattr(executors, "_DEFAULT", recording)
    config = validate_parameters("60_x", datasets=["synthetic"], seeds=[1, 2], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    ds, names, learners = synthetic(), ("MostPop", "ItemKNN"), ["MetaDT"]
    out = S.run_selection(config, {"synthetic": ds}, names, budgets=dict.fromkeys(names, 1),
                          learners=learners, n_boot=20)  # fmt: skip
    assert recording.batches == [["selection synthetic seed=1", "selection synthetic seed=2"]]
    assert sorted(set(out["seed"])) == [1, 2] and set(out["dataset"]) == {"synthetic"}
    metrics = pd.read_csv(tmp_path / "60_x" / "metrics.csv")
    assert set(metrics["seed"]) == {1, 2} and set(metrics["protocol"]) == {S.PROTOCOL}
    # Seed 2 alone, with the tuned values run_selection used (the tuning cache), is the same.
    chosen = tune_for_data(config, [(ds, ds, "topn-75-25", n, 1) for n in names])
    models = {n: get_model(n, **t.params) for n, (t, _, _) in zip(names, chosen, strict=True)}
    _, alone, timing = S.selection_seed(ds, models, 2, learners, 20)
    got = out[out["seed"] == 2].drop(columns=["dataset", "seed", *timing]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, alone)
    assert set(timing) == {"build_seconds", "evaluate_seconds"}
    assert all(v >= 0 for v in timing.values())
