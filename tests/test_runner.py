import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec_lib.data import load_dataset
from metarec_lib.models.popularity import MostPop, Random
from metarec_lib.runner import COST_COLUMNS, METRIC_COLUMNS, Experiment
from metarec_lib.splits import holdout_per_user

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_results.py"


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", n_users=80, n_items=40, density=0.2, seed=1)


def split(ds):
    return lambda seed: holdout_per_user(ds.interactions, test_fraction=0.25, seed=seed)


class Flaky(MostPop):
    """MostPop that crashes on a chosen seed, counting its fits."""

    name = "Flaky"
    fits = 0
    crash_on: int | None = None

    def _fit(self, train, *, valid, seed):
        type(self).fits += 1
        if seed == type(self).crash_on:
            raise RuntimeError("simulated crash")
        super()._fit(train, valid=valid, seed=seed)


def test_writes_the_results_contract(tmp_path, tiny):
    exp = Experiment("10_test", tmp_path, progress=False)
    exp.run(tiny, "topn-75-25", split(tiny), [Random(), MostPop()], seeds=[1, 2])
    out = tmp_path / "10_test"
    metrics = pd.read_csv(out / "metrics.csv")
    costs = pd.read_csv(out / "costs.csv")
    assert list(metrics.columns) == METRIC_COLUMNS and list(costs.columns) == COST_COLUMNS
    assert set(metrics["metric"]) >= {"ndcg@10", "precision@10", "map@10", "coverage@10"}
    assert len(costs) == 4 and (costs["fit_seconds"] >= 0).all()
    assert (out / "topk" / "synthetic__topn-75-25__MostPop__seed2.csv.gz").exists()
    test = pd.read_csv(out / "splits" / "synthetic__topn-75-25__seed1__test.csv.gz")
    train = holdout_per_user(tiny.interactions, test_fraction=0.25, seed=1).train
    assert not set(zip(test.user_id, test.item_id, strict=True)) & set(
        zip(train.user_id, train.item_id, strict=True)
    )
    # A real signal: popularity beats random on this data.
    mean = metrics[metrics.metric == "ndcg@10"].groupby("model")["value"].mean()
    assert mean["MostPop"] > mean["Random"]


@pytest.mark.skipif(
    not CHECKER.exists(), reason="shared/tools/check_results.py not beside the repo"
)
def test_results_pass_the_shared_checker(tmp_path, tiny, capsys):
    Experiment("20_test", tmp_path, progress=False).run(
        tiny, "topn-75-25", split(tiny), [Random(), MostPop()], seeds=[3]
    )
    spec = importlib.util.spec_from_file_location("check_results", CHECKER)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    problems, counts = [], {"metric_rows": 0, "cost_rows": 0, "audited": 0}
    checker.check_stem(tmp_path / "20_test", problems, counts)
    assert problems == [] and counts["audited"] == 12


def test_crash_leaves_no_partial_file_and_rerun_resumes(tmp_path, tiny):
    Flaky.fits, Flaky.crash_on = 0, 2
    exp = Experiment("30_test", tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        exp.run(tiny, "topn-75-25", split(tiny), [Flaky()], seeds=[1, 2])
    out = tmp_path / "30_test"
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert not (out / "metrics.csv").exists()  # tables are written whole, at the end
    assert Flaky.fits == 2

    Flaky.crash_on = None
    rows = Experiment("30_test", tmp_path, progress=False).run(
        tiny, "topn-75-25", split(tiny), [Flaky()], seeds=[1, 2]
    )
    assert Flaky.fits == 3  # seed 1 came from the cache, only seed 2 was fitted again
    assert set(rows["seed"]) == {1, 2}
    assert set(pd.read_csv(out / "metrics.csv")["seed"]) == {1, 2}


def test_a_rerun_interrupted_at_a_later_board_keeps_the_complete_tables(tmp_path, tiny):
    """Inside deferred_tables the boards' rows reach metrics.csv once, at the end: a crash at
    board 2 leaves the previous run's complete file, not board 1's rows alone."""
    Flaky.fits, Flaky.crash_on = 0, None
    out = tmp_path / "35_test"

    def boards(exp):
        with exp.deferred_tables():
            exp.run(tiny, "topn-75-25", split(tiny), [MostPop()], seeds=[1])
            exp.run(tiny, "topn-temporal", split(tiny), [Flaky()], seeds=[1])

    boards(Experiment("35_test", tmp_path, progress=False, use_cache=False))
    before = pd.read_csv(out / "metrics.csv")
    assert set(before["protocol"]) == {"topn-75-25", "topn-temporal"}
    Flaky.crash_on = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        boards(Experiment("35_test", tmp_path, progress=False, use_cache=False))
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), before)


def test_rerun_gives_identical_metrics_file(tmp_path, tiny):
    for cache in (True, False):
        Experiment("40_test", tmp_path / str(cache), use_cache=cache, progress=False).run(
            tiny, "topn-75-25", split(tiny), [Random(), MostPop()], seeds=[5]
        )
    a = (tmp_path / "True" / "40_test" / "metrics.csv").read_bytes()
    b = (tmp_path / "False" / "40_test" / "metrics.csv").read_bytes()
    assert a == b


def test_rating_task_reports_rmse(tmp_path, tiny):
    class Mean(MostPop):
        name = "ItemMean"
        predicts_ratings = True

    rows = Experiment("50_test", tmp_path, progress=False).run(
        tiny, "rating-holdout", split(tiny), [Mean(shrinkage=0.0)], seeds=[1], task="rating"
    )
    values = dict(zip(rows.metric, rows.value, strict=True))
    s = holdout_per_user(tiny.interactions, test_fraction=0.25, seed=1)
    means = s.train.groupby("item_id")["rating"].mean()
    pred = s.test["item_id"].map(means).fillna(s.train["rating"].mean())
    assert values["rmse"] == pytest.approx(np.sqrt(((pred - s.test["rating"]) ** 2).mean()))
    assert values["mae"] == pytest.approx((pred - s.test["rating"]).abs().mean())


def test_rating_task_rejects_ranking_only_models(tmp_path, tiny):
    with pytest.raises(ValueError, match="does not predict ratings"):
        Experiment("60_test", tmp_path, progress=False).run(
            tiny, "r", split(tiny), [Random()], seeds=[1], task="rating"
        )


def test_unknown_family_rejected(tmp_path, tiny):
    class Odd(Random):
        name = "Odd"
        family = "astrology"

    with pytest.raises(ValueError, match="unknown family"):
        Experiment("70_test", tmp_path, progress=False).run(
            tiny, "p", split(tiny), [Odd()], seeds=[1]
        )


def test_eval_negatives_are_unseen_and_fixed_by_the_seed():
    import scipy.sparse as sp

    from metarec_lib.runner import eval_negatives

    seen = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]))
    users, items = eval_negatives(seen, np.array([0, 0, 1, 2]), 3, seed=4)
    assert not (seen[users, items] > 0).any()
    assert 1 not in users  # user 1 has seen everything: its draws are dropped
    assert (users == 0).sum() == 6 and (users == 2).sum() == 3
    again = eval_negatives(seen, np.array([0, 0, 1, 2]), 3, seed=4)
    np.testing.assert_array_equal(items, again[1])


def test_multitask_task_scores_both_tasks(tmp_path, tiny):
    from metarec_lib.models.multitask import SharedBottom

    exp = Experiment("40_test", tmp_path, progress=False)
    model = SharedBottom(epochs=2, embedding=8, hidden=16)
    rows = exp.run(tiny, "mtl-75-25", split(tiny), [model], seeds=[1], task="multitask")
    values = dict(zip(rows["metric"], rows["value"], strict=True))
    assert {"ndcg@10", "rmse", "mae", "auc", "logloss"} <= set(values)
    assert 0 <= values["auc"] <= 1 and values["logloss"] > 0 and values["rmse"] > 0
    per_user = pd.read_csv(tmp_path / "40_test" / "per_user" /
                           "synthetic__mtl-75-25__SharedBottom__seed1.csv.gz")  # fmt: skip
    assert {"ndcg@10", "rmse", "logloss"} <= set(per_user.columns)
    assert per_user["logloss"].gt(0).all()


def test_multitask_task_scores_references_on_what_they_predict(tmp_path, tiny):
    """A top-N model gets ranking metrics only, a rating model ranking and rating metrics:
    both sit on the multi-task leaderboards as references."""
    from metarec_lib.models.svd import BiasedMF

    exp = Experiment("40_test", tmp_path, progress=False)
    rows = exp.run(tiny, "mtl-75-25", split(tiny), [MostPop(), BiasedMF(epochs=2)], seeds=[1],
                   task="multitask")  # fmt: skip
    by_model = rows.groupby("model")["metric"].apply(set)
    assert "ndcg@10" in by_model["MostPop"] and not {"rmse", "auc"} & by_model["MostPop"]
    assert {"ndcg@10", "rmse", "mae"} <= by_model["BiasedMF"]
    assert not {"auc", "logloss"} & by_model["BiasedMF"]


def test_logloss_per_user_by_hand():
    from metarec_lib.metrics import logloss_per_user

    out = logloss_per_user([1, 0, 1], [0.5, 0.5, 0.25], [0, 0, 2], n_users=4)
    assert out[0] == pytest.approx(np.log(2))
    assert out[2] == pytest.approx(np.log(4))
    assert np.isnan(out[1]) and np.isnan(out[3])


def test_record_keeps_the_cells_another_experiment_wrote(tmp_path, tiny):
    Experiment("45_x", tmp_path, progress=False).run(
        tiny, "topn-75-25", split(tiny), [MostPop()], seeds=[1]
    )
    before = pd.read_csv(tmp_path / "45_x" / "metrics.csv")
    extra = pd.DataFrame([{"dataset": "synthetic", "protocol": "algo-selection",
                           "family": "meta", "model": "Oracle", "seed": 1,
                           "metric": "ndcg@10", "value": 0.5}])  # fmt: skip
    Experiment("45_x", tmp_path, progress=False).record(extra)
    after = pd.read_csv(tmp_path / "45_x" / "metrics.csv")
    assert len(after) == len(before) + 1
    assert set(after["protocol"]) == {"topn-75-25", "algo-selection"}
    assert len(pd.read_csv(tmp_path / "45_x" / "costs.csv")) == 1  # MostPop's cell kept


class Remembering(MostPop):
    """MostPop that claims it reused a remembered training which cost 100 s."""

    name = "Remembering"

    def _fit(self, train, *, valid, seed):
        super()._fit(train, valid=valid, seed=seed)
        self.reused_seconds_ = 100.0


def test_a_fit_that_reused_a_training_is_charged_its_cost(tmp_path, tiny):
    exp = Experiment("10_test", tmp_path, progress=False)
    exp.run(tiny, "topn-75-25", split(tiny), [MostPop(), Remembering()], seeds=[1])
    costs = pd.read_csv(tmp_path / "10_test" / "costs.csv").set_index("model")
    assert costs.loc["MostPop", "fit_seconds"] < 100 <= costs.loc["Remembering", "fit_seconds"]


def test_a_cost_row_names_the_device_the_model_computed_on(tmp_path, tiny):
    """A model that never uses PyTorch is billed to the CPU whatever its `device` says (on a
    GPU machine "auto" would otherwise write "cuda" beside a NumPy model's costs)."""
    exp = Experiment("10_test", tmp_path, progress=False)
    exp.run(tiny, "topn-75-25", split(tiny), [MostPop(device="cuda")], seeds=[1])
    costs = pd.read_csv(tmp_path / "10_test" / "costs.csv")
    assert costs["device"].tolist() == ["cpu"]
