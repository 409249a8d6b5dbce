import dataclasses
import json

import pandas as pd
import pytest

from metarec_lib import leaderboard, plans
from metarec_lib.data import load_dataset
from metarec_lib.notebook import validate_parameters
from metarec_lib.study import Plan, run_plans


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", n_users=90, n_items=50, density=0.2, seed=3)


def test_run_plans_tunes_on_validation_and_writes_boards(tmp_path, tiny):
    config = validate_parameters("20_x", datasets=["synthetic"], seeds=[1, 2], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    rows, tuned = run_plans(config, {"synthetic": tiny},
                            [Plan("topn-75-25", ["Random", "MostPop"])], budget=3)  # fmt: skip
    assert set(rows["model"]) == {"Random", "MostPop"} and set(rows["seed"]) == {1, 2}
    assert list(tuned["model"]) == ["Random", "MostPop"]
    # budget 3 is MostPop's whole grid; the best validation score wins, the first on a tie
    trials = pd.read_csv(tmp_path / "20_x" / "tables" / "tuning_trials.csv")
    mostpop = trials[trials["model"] == "MostPop"].reset_index(drop=True)
    assert sorted(mostpop["shrinkage"]) == [0.0, 10.0, 100.0]
    first_best = mostpop.loc[mostpop["score"].idxmax()]
    assert json.loads(tuned.loc[1, "params"])["shrinkage"] == first_best["shrinkage"]
    assert tuned.loc[1, "validation_score"] == pytest.approx(first_best["score"])
    assert tuned.loc[1, "configurations"] == 3
    saved = pd.read_csv(tmp_path / "20_x" / "tables" / "hyperparameters.csv")
    assert len(saved) == 2

    board = leaderboard.leaderboard(tmp_path / "20_x", "synthetic", "topn-75-25", "ndcg@10")
    assert board["model"].tolist() == ["MostPop", "Random"] and board["rank"].tolist() == [1, 2]
    assert bool(board.loc[0, "is_best"]) and bool(board.loc[1, "significant"])
    text = leaderboard.narrative(
        {("synthetic", "topn-75-25"): board}, {("synthetic", "topn-75-25", "ndcg@10"): (">=", 0.99)}
    )
    assert "best is **MostPop**" in text and "not met" in text

    # A rerun is served from the caches: nothing is tuned or fitted again.
    again, _ = run_plans(config, {"synthetic": tiny},
                         [Plan("topn-75-25", ["Random", "MostPop"])], budget=3)  # fmt: skip
    pd.testing.assert_frame_equal(rows, again)


def test_rating_protocol_uses_folds_as_seeds(tmp_path, tiny):
    config = validate_parameters("10_x", datasets=["synthetic"], seeds=[7], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip

    from metarec_lib.models.popularity import MostPop
    from metarec_lib.models.registry import MODELS

    class ItemMean(MostPop):
        name = "ItemMeanTest"
        predicts_ratings = True

    MODELS["ItemMeanTest"] = ItemMean
    try:
        rows, _ = run_plans(config, {"synthetic": tiny}, [Plan("rating-5fold", ["ItemMeanTest"])],
                            budget=2)  # fmt: skip
    finally:
        del MODELS["ItemMeanTest"]
    assert sorted(set(rows["seed"])) == [1, 2, 3, 4, 5]
    assert set(rows["metric"]) == {"rmse", "mae"}


def test_plans_filter_models():
    chosen = plans.plans_for("20_collaborative", ["EASE", "BiasedMF"])
    assert [(p.protocol, list(p.models)) for p in chosen] == [
        ("rating-5fold", ["BiasedMF"]),
        ("topn-75-25", ["EASE", "BiasedMF"]),
        ("topn-temporal", ["EASE", "BiasedMF"]),
    ]
    assert "EASE" in plans.models_of("20_collaborative")
    deep = plans.plans_for("30_deep", ["SASRec", "NeuMF"], datasets={"loo-temporal": ["ml-100k"]})
    assert [(p.protocol, list(p.models), p.datasets) for p in deep] == [
        ("topn-75-25", ["NeuMF"], None),
        ("topn-temporal", ["NeuMF"], None),
        ("loo-temporal", ["SASRec"], ("ml-100k",)),
    ]


def test_the_deep_boards_hold_every_model_the_earlier_notebooks_run_on_their_split():
    """30_deep's top-N boards read a deep model against the study's best on the split (as the
    report's C2 row does), with the same tuning metric, so the shared caches hand over the
    earlier notebooks' searches and cells."""
    for protocol in ("topn-75-25", "topn-temporal"):
        (deep,) = [p for p in plans.PLANS["30_deep"] if p.protocol == protocol]
        earlier = [p for stem in ("10_content", "20_collaborative")
                   for p in plans.PLANS[stem] if p.protocol == protocol]  # fmt: skip
        models = {m for p in earlier for m in p.models}
        assert models == set(deep.models) - set(plans.DEEP_TOPN)
        for p in earlier:
            assert {m: deep.tune_metric.get(m) for m in p.models} == {
                m: p.tune_metric.get(m) for m in p.models
            }


def test_a_plan_runs_only_on_its_data_sets(tmp_path, tiny):
    other = dataclasses.replace(tiny, name="other")
    config = validate_parameters("30_w", datasets=["synthetic"], seeds=[5], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    plan = Plan("topn-75-25", ["MostPop"], datasets=("other",))
    rows, _ = run_plans(config, {"synthetic": tiny, "other": other}, [plan], budget=1)
    assert set(rows["dataset"]) == {"other"}


def test_best_epoch_from_history():
    from types import SimpleNamespace

    from metarec_lib.study import best_epoch_of

    ranked = SimpleNamespace(history_=[(1, 0.30), (2, 0.35), (3, 0.33)])
    assert best_epoch_of(ranked, higher_is_better=True) == 2
    assert best_epoch_of(ranked, higher_is_better=False) == 1
    assert best_epoch_of(SimpleNamespace(best_epoch_=7, history_=[]), higher_is_better=True) == 7
    assert best_epoch_of(SimpleNamespace(), higher_is_better=True) is None


def test_summary_table_handles_fractional_median_parameter_counts():
    board = pd.DataFrame({"rank": [1], "family": ["collaborative"], "model": ["M"],
                          "mean": [0.5], "ci_high": [0.6], "n": [2], "fit_seconds": [0.1],
                          "n_parameters": [3363.5]})  # fmt: skip
    view = leaderboard.summary_table(board, "ndcg@10")
    assert view.loc[0, "params"] == 3364 and view.loc[0, "ndcg@10"] == "0.5000 ± 0.1000"


def test_budgets_per_model_and_training_curves(tmp_path, tiny):
    config = validate_parameters("30_x", datasets=["synthetic"], seeds=[5], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    _, tuned = run_plans(config, {"synthetic": tiny},
                         [Plan("topn-75-25", ["BPR", "MostPop"])], budget=2,
                         budgets={"MostPop": 3})  # fmt: skip
    assert dict(zip(tuned["model"], tuned["configurations"], strict=True)) == {
        "BPR": 2,
        "MostPop": 3,
    }
    curves = pd.read_csv(tmp_path / "30_x" / "tables" / "training_curves.csv")
    assert set(curves["model"]) == {"BPR"}  # MostPop does not iterate
    assert list(curves.columns) == ["dataset", "protocol", "model", "epoch", "loss", "valid"]
    assert curves["epoch"].is_monotonic_increasing and curves["valid"].notna().any()


def test_leave_one_out_tunes_on_its_valid_part_and_refits_with_it(tmp_path, tiny):
    """The validation item is history for the final fit: never recommended at test time."""
    from metarec_lib.protocols import split_factory

    config = validate_parameters("30_y", datasets=["synthetic"], seeds=[5], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    run_plans(config, {"synthetic": tiny}, [Plan("loo-temporal", ["MostPop"])], budget=2)
    split = split_factory("loo-temporal", tiny)(5)
    top = pd.read_csv(tmp_path / "30_y" / "topk" / "synthetic__loo-temporal__MostPop__seed5.csv.gz")
    valid = set(zip(split.valid.user_id, split.valid.item_id, strict=True))
    assert valid and not valid & set(zip(top.user_id, top.item_id, strict=True))


def test_tune_data_reuses_one_data_sets_values_and_smoke_caps_epochs(tmp_path, tiny):
    other = load_dataset("synthetic", n_users=70, n_items=40, density=0.2, seed=9)
    other = dataclasses.replace(other, name="other")
    config = validate_parameters("30_z", datasets=["synthetic"], seeds=[5], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    plan = Plan("topn-75-25", ["MostPop", "BPR"], tune_data={"BPR": "synthetic"})
    _, tuned = run_plans(config, {"synthetic": tiny, "other": other}, [plan], budget=2)
    rows = tuned.set_index(["dataset", "model"])
    assert rows.loc[("other", "BPR"), "tuned_on_data"] == "synthetic"
    assert rows.loc[("other", "MostPop"), "tuned_on_data"] == "other"
    # Every value is carried; the epochs were recalibrated on the other data set's own
    # validation (its curve is saved), but smoke's 2 epochs give BPR (evaluated every 2) one
    # evaluation: no count was found, so the carried one stays.
    carried, own = (json.loads(rows.loc[(d, "BPR"), "params"]) for d in ("synthetic", "other"))
    assert own == carried and own["epochs"] <= 2
    assert rows.loc[("other", "BPR"), "epochs_on_data"] == "synthetic"
    assert rows.loc[("other", "MostPop"), "epochs_on_data"] == "other"
    curves = pd.read_csv(tmp_path / "30_z" / "tables" / "training_curves.csv")
    curve = curves[(curves["dataset"] == "other") & (curves["model"] == "BPR")].dropna()
    assert curve["epoch"].tolist() == [2]
    trials = pd.read_csv(tmp_path / "30_z" / "tables" / "tuning_trials.csv")
    assert set(zip(trials["dataset"], trials["model"])) == {  # noqa: B905
        ("synthetic", "MostPop"),
        ("synthetic", "BPR"),
        ("other", "MostPop"),
    }


def test_a_pool_variant_recalibrates_its_pass_count_on_its_own_training_users(tmp_path):
    """Tuned at k = 5 on every meta-train user, a smaller pool keeps the values but chooses its
    own number of ALS sweeps on the meta-valid queries, fitted on its own (fewer) users."""
    data = load_dataset("synthetic", n_users=200, n_items=60, density=0.25, seed=4)
    config = validate_parameters("60_z", datasets=["synthetic"], seeds=[1], smoke=False,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    tuned_on = {"tune_on": {"BiasedMFFoldIn": "coldstart-users@k=5"}}
    chosen = [Plan("coldstart-users@k=5", ["BiasedMFFoldIn"]),
              Plan("coldstart-users@k=5,pool=0.25", ["BiasedMFFoldIn"], **tuned_on,
                   recalibrate=True),
              Plan("coldstart-users@k=5,pool=0.5", ["BiasedMFFoldIn"], **tuned_on)]  # fmt: skip
    _, tuned = run_plans(config, {"synthetic": data}, chosen, budget=1)
    rows = tuned.set_index("protocol")
    full, small, plain = (json.loads(rows.loc[p, "params"]) for p in rows.index)
    assert {k: v for k, v in small.items() if k != "epochs"} == {
        k: v for k, v in full.items() if k != "epochs"}  # fmt: skip
    assert plain == full  # no recalibration asked: every value carried
    curves = pd.read_csv(tmp_path / "60_z" / "tables" / "training_curves.csv")
    own = curves[curves["protocol"] == "coldstart-users@k=5,pool=0.25"].dropna(subset=["valid"])
    base = curves[curves["protocol"] == "coldstart-users@k=5"].dropna(subset=["valid"])
    assert len(own) and len(base) and "coldstart-users@k=5,pool=0.5" not in set(curves["protocol"])
    assert not own["valid"].reset_index(drop=True).equals(base["valid"].reset_index(drop=True))
    expected = "coldstart-users@k=5,pool=0.25" if small != full else "coldstart-users@k=5"
    assert rows.loc["coldstart-users@k=5,pool=0.25", "epochs_on_protocol"] == expected
    assert all(p.recalibrate == ("pool" in p.protocol)
               for p in plans.plans_for("60_meta", ["MeLU"]))  # fmt: skip


def test_a_recalibration_counts_when_validation_rose_or_it_measured_the_carried_count():
    from metarec_lib.study import Tuned, informative

    def recalibrated(valid, best):
        curve = pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": 1.0, "valid": valid})
        return Tuned({"lr": 0.1, "epochs": best}, max(v for v in valid if v == v), "ndcg@10",
                     pd.DataFrame(), curve)  # fmt: skip

    assert informative(recalibrated([0.1, 0.3, 0.2, 0.2], 2), "epochs")
    assert not informative(recalibrated([0.3, 0.2, 0.1, 0.1], 1), "epochs")  # a plateau
    # The first evaluation is best: a plateau while the carried count lies past the curve, a
    # choice once the curve measured the carried count (3 < 4) and found it worse.
    assert not informative(recalibrated([0.3, 0.2, 0.1, 0.1], 1), "epochs", carried=12)
    assert informative(recalibrated([0.3, 0.2, 0.1, 0.1], 1), "epochs", carried=3)
    assert informative(recalibrated([0.3, 0.2, 0.1, 0.1], 1), "epochs", carried=4)
    assert not informative(recalibrated([0.3, 0.2, 0.1, 0.1], 1), "epochs", carried=1)  # same
    assert not informative(recalibrated([float("nan"), 0.3, 0.2, 0.1], 2), "epochs")
    assert not informative(recalibrated([0.1, 0.3, 0.2, 0.2], 2), None)
    no_curve = Tuned({"epochs": 3}, 0.2, "ndcg@10", pd.DataFrame())
    assert not informative(no_curve, "epochs")


def test_multitask_plan_tunes_on_the_joint_score_and_references_keep_theirs(tmp_path, tiny):
    """Multi-task models are tuned on both tasks at once (`joint`); a reference tuned on
    another protocol keeps that protocol's metric; gated models leave gate files."""
    config = validate_parameters("40_x", datasets=["synthetic"], seeds=[5], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    plan = Plan("mtl-75-25", ["MMoE", "MostPop"], tune_on={"MostPop": "topn-75-25"})
    rows, tuned = run_plans(config, {"synthetic": tiny}, [plan], budget=1)
    metric = dict(zip(tuned["model"], tuned["validation_metric"], strict=True))
    assert metric == {"MMoE": "joint", "MostPop": "ndcg@10"}
    assert {"auc", "rmse"} <= set(rows.loc[rows["model"] == "MMoE", "metric"])
    gates = pd.read_csv(tmp_path / "40_x" / "gates" / "synthetic__mtl-75-25__MMoE__seed5.csv.gz")
    assert gates.groupby("task")["weight"].sum().to_numpy() == pytest.approx([1.0, 1.0])


def test_tune_with_a_split_uses_it_and_keeps_fixed_values(tmp_path, tiny):
    """A protocol built outside `protocols` tunes on the split it is given (an unregistered
    name would make `split_factory` raise), at the first seed, with `fixed` kept over every
    configuration."""
    from metarec_lib.splits import holdout_per_user
    from metarec_lib.study import tune

    seen = []

    def split(seed):
        seen.append(seed)
        return holdout_per_user(tiny.interactions, test_fraction=0.25, seed=seed)

    with pytest.raises(ValueError, match=r"unknown protocol 'custom@frac=0\.5'"):
        tune(tiny, "custom@frac=0.5", "BPR", budget=1, seed=7, device="cpu",
             cache_dir=tmp_path / "a", progress=False)  # fmt: skip
    tuned = tune(tiny, "custom@frac=0.5", "BPR", budget=2, seed=7, device="cpu",
                 cache_dir=tmp_path / "b", progress=False, fixed={"epochs": 3},
                 split=split)  # fmt: skip
    assert seen == [7]
    # `fixed` is not searched (the trials hold only the space); early stopping keeps <= 3.
    assert 1 <= tuned.params["epochs"] <= 3 and len(tuned.trials) == 2
    assert "epochs" not in tuned.trials


def _count_fits(monkeypatch, cls) -> list[dict]:
    """The hyperparameters of every fit of `cls` from now on (in this process), in order."""
    fits = []
    original = cls._fit

    def counting(self, train, *, valid, seed):
        fits.append(dict(self.params))
        return original(self, train, valid=valid, seed=seed)

    monkeypatch.setattr(cls, "_fit", counting)
    return fits


def test_tuning_fits_each_configuration_once_and_keeps_the_best_ones_epoch(tmp_path, tiny,
                                                                         monkeypatch):  # fmt: skip
    """No refit of the chosen configuration: budget 3 means 3 fits; the tuned epochs are the
    best validation epoch of the chosen trial's curve, which is the one written."""
    from metarec_lib.models.bpr import BPR
    from metarec_lib.study import tune

    fits = _count_fits(monkeypatch, BPR)
    t = tune(tiny, "topn-75-25", "BPR", budget=3, seed=4, device="cpu", cache_dir=tmp_path,
             progress=False, fixed={"epochs": 6, "eval_every": 1})  # fmt: skip
    assert len(fits) == 3
    best = t.curve.loc[t.curve["valid"].idxmax(), "epoch"]
    assert t.params["epochs"] == best and t.score == t.curve["valid"].max()


def test_tuning_data_of_topn_temporal_and_a_named_metric(tiny):
    """topn-temporal tunes on a time cut-off inside its training data (nothing the fit holds is
    later than validation, no test row in either); a request's `metric` overrides the task's."""
    from metarec_lib.protocols import split_factory
    from metarec_lib.study import TuneRequest, _validation_data

    train, valid, kind = _validation_data(TuneRequest(tiny, "topn-temporal", "BiasedMF", 1), 0)
    assert kind == "ndcg@10"
    assert train.frame["timestamp"].max() <= valid.frame["timestamp"].min()
    test = split_factory("topn-temporal", tiny)(0).test
    assert valid.frame["timestamp"].max() <= test["timestamp"].min()
    assert 0 < len(valid) < 0.1 * (len(train) + len(valid)) + 1  # rows unseen in the fit dropped
    _, _, kind = _validation_data(TuneRequest(tiny, "topn-temporal", "BiasedMF", 1,
                                              metric="rmse"), 0)  # fmt: skip
    assert kind == "rmse"
    with pytest.raises(ValueError, match="metric='auc'"):
        _validation_data(TuneRequest(tiny, "topn-75-25", "BiasedMF", 1, metric="auc"), 0)


def test_every_model_is_tuned_under_the_protocol_it_is_evaluated_on_or_its_split():
    """tune_on may only name a protocol with the same split (mtl-75-25 is topn-75-25's);
    another protocol's training data holds this one's test pairs."""
    same_split = {("mtl-75-25", "topn-75-25")}
    for stem, chosen in plans.PLANS.items():
        for plan in chosen:
            for model, source in plan.tune_on.items():
                if stem == "60_meta":  # every k's episodes from one user split; fit sans test users
                    assert source.startswith("coldstart-users@k=5")
                    continue
                assert (plan.protocol, source) in same_split, (stem, plan.protocol, model, source)


def test_the_tuning_cache_keys_on_the_device_the_model_computes_on(tmp_path, tiny):
    """A search on the CPU is not reused for CUDA (torch models fit otherwise there); a NumPy
    model computes on the CPU whatever it is asked, so its search is shared."""
    from metarec_lib.models.registry import model_class
    from metarec_lib.study import _key, tune

    cls = model_class("BPR")
    cpu = _key("d", "topn-75-25", "BPR", cls, 2, 0, {}, None, "cpu")
    assert _key("d", "topn-75-25", "BPR", cls, 2, 0, {}, None, "cuda") != cpu
    tune(tiny, "topn-75-25", "MostPop", budget=1, seed=0, device="cpu", cache_dir=tmp_path,
         progress=False)  # fmt: skip
    tune(tiny, "topn-75-25", "MostPop", budget=1, seed=0, device="cuda", cache_dir=tmp_path,
         progress=False)  # fmt: skip
    assert len(list(tmp_path.glob("tune-*.json"))) == 1


def test_two_splits_under_one_protocol_name_never_share_a_cached_search(tmp_path, tiny):
    """The cache key of a search on a split from outside `protocols` holds its validation
    data's digest: another split under the same name is searched anew, and the same split is
    read back from the cache."""
    from metarec_lib.splits import holdout_per_user
    from metarec_lib.study import tune

    def split_at(fraction):
        return lambda seed: holdout_per_user(tiny.interactions, test_fraction=fraction, seed=seed)

    def search(fraction):
        return tune(tiny, "custom", "MostPop", budget=1, seed=0, device="cpu",
                    cache_dir=tmp_path, progress=False, split=split_at(fraction))  # fmt: skip

    first = search(0.25)
    assert len(list(tmp_path.glob("tune-*.json"))) == 1
    other = search(0.5)
    assert len(list(tmp_path.glob("tune-*.json"))) == 2
    assert other.score != first.score  # validated on other data
    assert search(0.25).score == first.score
    assert len(list(tmp_path.glob("tune-*.json"))) == 2


def test_a_split_asked_twice_in_one_batch_is_searched_once(tmp_path, tiny, monkeypatch):
    """Two requests with equal splits (two callables giving the same data) share one search:
    the key names the data, so the second is the first's result, with no trials of its own."""
    from metarec_lib.models.popularity import MostPop
    from metarec_lib.splits import holdout_per_user
    from metarec_lib.study import TuneRequest, tune_many

    fits = _count_fits(monkeypatch, MostPop)

    def split():
        return lambda seed: holdout_per_user(tiny.interactions, test_fraction=0.25, seed=seed)

    requests = [TuneRequest(tiny, "custom", "MostPop", 2, split=split()) for _ in range(2)]
    first, second = tune_many(requests, seed=0, device="cpu", cache_dir=tmp_path,
                              progress=False)  # fmt: skip
    assert second is first and len(fits) == 2  # budget 2: one search's two trials


def test_a_temporal_fit_sees_no_tag_given_after_its_cut_off(monkeypatch):
    """topn-temporal's final fit sees the tags given by its cut-off, its tuning fit those
    given by the validation cut-off, on rated and unrated (item 16) pairs alike; topn-75-25
    sees them all."""
    import numpy as np

    from metarec_lib.data.dataset import Dataset
    from metarec_lib.models.popularity import MostPop
    from metarec_lib.protocols import split_factory
    from metarec_lib.runner import evaluate_cell
    from metarec_lib.splits import validation_carveout, with_validation
    from metarec_lib.study import VALID_FRACTION, TuneRequest, _validation_data

    stamps = np.random.default_rng(0).permutation(30) + 1
    inter = pd.DataFrame({"user_id": np.repeat(np.arange(1, 6), 6),
                          "item_id": np.tile(np.arange(10, 16), 5),
                          "rating": 4.0, "timestamp": stamps})  # fmt: skip
    items = pd.DataFrame({"tags": ""}, index=pd.Index(np.arange(10, 17), name="item_id"))
    users = pd.DataFrame(index=pd.Index(np.arange(1, 6), name="user_id"))
    plain = Dataset("t", inter, items, users, (1, 5))
    split = split_factory("topn-temporal", plain)(0)
    cut = split.time_cutoff
    assert cut == split.train["timestamp"].max() < split.test["timestamp"].min()
    fit_part, _ = validation_carveout(split.train, fraction=VALID_FRACTION, how="global")
    valid_cut = int(fit_part["timestamp"].max())
    assert (cut, valid_cut) == (24, 21)  # 30 seconds: 0.8 x 30 = 24 rows, 0.9 x 24 = 21.6
    # the earliest fitted pair's item is tagged by its rater "x" at the validation cut-off and
    # "y" after the test one
    first = fit_part.sort_values("timestamp").iloc[0]
    rated = (int(first["user_id"]), int(first["item_id"]))
    events = pd.DataFrame({"user_id": [1, 1, 1, rated[0], rated[0]],
                           "item_id": [16, 16, 16, rated[1], rated[1]],
                           "tag": ["a", "b", "c", "x", "y"],
                           "timestamp": [valid_cut, cut, cut + 1, valid_cut, cut + 1]})  # fmt: skip
    ds = dataclasses.replace(plain, tag_events=events)

    def tags(data):  # of the tagged rated item and of item 16
        return [data.items["tags"].tolist()[rated[1] - 10], data.items["tags"].tolist()[-1]]

    train, _, _ = _validation_data(TuneRequest(ds, "topn-temporal", "MostPop", 1), 0)
    assert tags(train) == ["x", "a"]
    # a split that brings its own valid part (`with_validation`) is cut at its train's end
    own = with_validation(split, fraction=0.2, how="global")
    train, _, _ = _validation_data(TuneRequest(ds, "topn-temporal", "MostPop", 1,
                                               split=lambda seed: own), 0)  # fmt: skip
    assert own.train["timestamp"].max() == 19 and tags(train) == ["", ""]  # 0.8 x 24 rows
    # a protocol without a time cut-off sees every tag of its own pairs and the unrated ones
    train, _, _ = _validation_data(TuneRequest(ds, "topn-75-25", "MostPop", 1), 0)
    assert train.items["tags"].tolist()[-1] == "a|b|c"

    seen, original = [], MostPop._fit

    def record(self, train, **kw):
        seen.append(tags(train))
        return original(self, train, **kw)

    monkeypatch.setattr(MostPop, "_fit", record)
    evaluate_cell(MostPop(), split_factory("topn-temporal", ds)(0), ds.encoder(), seed=0)
    assert seen == [["x", "a|b"]]
