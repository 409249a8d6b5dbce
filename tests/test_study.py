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
    assert json.loads(tuned.loc[1, "params"])["shrinkage"] in (0.0, 10.0, 100.0)
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
