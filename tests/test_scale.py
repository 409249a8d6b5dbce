"""Scale curves (`metarec_lib.scale`): exponents, sizing, skip decisions and the result files."""

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from metarec_lib import scale
from metarec_lib.data.dataset import Interactions
from metarec_lib.runner import COST_COLUMNS, METRIC_COLUMNS


def test_growth_exponent_recovers_a_power_law():
    n = np.array([1e3, 1e4, 1e5, 1e6])
    assert scale.growth_exponent(n, 2 * n**1.5) == pytest.approx(1.5)
    assert scale.growth_exponent(n, 0.1 * n) == pytest.approx(1.0)
    # Skipped points (NaN) are ignored; with fewer than two points there is no slope.
    assert scale.growth_exponent(n, [2.0, np.nan, 200.0, np.nan]) == pytest.approx(1.0)
    assert math.isnan(scale.growth_exponent([1e5], [3.0]))
    assert math.isnan(scale.growth_exponent([1e5, 1e6], [np.nan, 4.0]))


def test_predicted_seconds_extrapolate_at_least_linearly():
    # 1 s -> 8 s over 10x is exponent log10(8) = 0.90: extrapolated linearly (at least 1).
    assert scale.predict_seconds([1e5, 1e6], [1.0, 8.0], 1e7) == pytest.approx(80.0)
    # 1 s -> 100 s over 10x is quadratic: 100 * 10^2.
    assert scale.predict_seconds([1e5, 1e6], [1.0, 100.0], 1e7) == pytest.approx(1e4)
    assert scale.predict_seconds([1e5], [2.0], 1e6) == pytest.approx(20.0)  # one point: linear
    assert math.isnan(scale.predict_seconds([], [], 1e6))


@pytest.mark.parametrize("n", [2e3, 1e4, 1e5])
def test_sizes_config_hits_the_requested_count(n):
    from metarec_lib.data.synthetic import generate_synthetic

    config = scale.sizes_config(n)
    got = len(generate_synthetic(**config, seed=0).interactions)
    assert abs(got - n) <= 0.3 * n, (config, got)


def test_sizes_config_grows_items_slower_than_interactions():
    small, large = scale.sizes_config(1e5), scale.sizes_config(1e7)
    assert (small["n_items"], large["n_items"]) == (1000, 63096)  # 1000 * 100^0.9
    assert large["n_users"] / small["n_users"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="n_interactions"):
        scale.sizes_config(10)


def test_ease_memory_estimate_is_its_dense_matrices():
    # Above 4,096 items EASE is float32: two 10,000^2 float32 matrices are 800 MB, and the
    # sparse data (16 bytes an interaction) and the score blocks come on top.
    mb = scale.estimate_memory_mb("EASE", 50_000, 10_000, 1_000_000)
    dense = 2 * 10_000**2 * 4 / 2**20
    assert dense < mb < dense + 300
    # Memory grows with the square of the catalogue, not with the interactions.
    assert scale.estimate_memory_mb("EASE", 50_000, 20_000, 1_000_000) > 3.9 * dense
    with pytest.raises(ValueError, match="no memory estimate"):
        scale.estimate_memory_mb("MostPop", 10, 10, 100)
    # The score blocks: min(eval users, SCORE_BLOCK) x items float64, three copies.
    fewer = scale.estimate_memory_mb("EASE", 50_000, 10_000, 1_000_000, eval_users=24)
    assert mb - fewer == pytest.approx((1000 - 24) * 10_000 * 8 * 3 / 2**20)


def _tiny(n_users=400, n_items=60, per_user=8, seed=0) -> Interactions:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    frame = pd.DataFrame({"user": users, "item": items, "rating": 1.0,
                          "timestamp": rng.integers(0, 10**6, len(users))})  # fmt: skip
    return Interactions(frame, n_users, n_items)


def test_ease_with_a_huge_catalogue_is_skipped_before_allocating():
    # 200,000 items: two dense float32 matrices are ~300 GB. The cell must say so and return at
    # once (allocating, or even building the Gram matrix, would take minutes and all memory).
    data = _tiny(n_items=60)
    data = Interactions(data.frame, data.n_users, 200_000)
    train, users, relevant = scale.sampled_holdout(data, 50, seed=0)
    start = time.perf_counter()
    row = scale.scale_cell("EASE", train, users, relevant, ([], []), 1e6, seed=0, device="cpu",
                      budget=60.0, limit=20_000.0)  # fmt: skip
    assert time.perf_counter() - start < 1.0
    assert row["status"] == "skipped"
    assert row["reason"].startswith("would need ~")
    assert "> limit 20,000 MB" in row["reason"] and "200,000 x 200,000 float32" in row["reason"]
    # 400 users, fewer than half the items: the dual route, one dense B plus work arrays.
    assert row["estimated_memory_mb"] > 200_000**2 * 4 / 2**20


def test_a_fit_predicted_over_the_margin_times_the_budget_is_skipped_with_the_prediction():
    train, users, relevant = scale.sampled_holdout(_tiny(), 50, seed=0)
    # 10 s at n=1e5 and 100 s at 1e6: linear growth, so 1,000 s predicted at 1e7 > 2 x 400 s.
    history = ([1e5, 1e6], [10.0, 100.0])
    row = scale.scale_cell("BPR", train, users, relevant, history, 1e7, seed=0,
                           device="cpu", budget=400.0, limit=20_000.0, margin=2)  # fmt: skip
    assert row["status"] == "skipped"
    assert row["reason"].startswith("predicted 1,000 s > 2 x budget 400 s")
    assert row["predicted_fit_seconds"] == pytest.approx(1000.0)
    # within the margin (1,000 <= 4 x 400 = 1,600) the fit runs and is measured
    row = scale.scale_cell("BPR", train, users, relevant, history, 1e7, seed=0,
                           device="cpu", budget=400.0, limit=20_000.0, margin=4)  # fmt: skip
    assert row["status"] == "fitted" and row["predicted_fit_seconds"] == pytest.approx(1000.0)
    assert scale.SKIP_MARGIN == 4.0


def test_a_numpy_model_asked_for_cuda_computes_and_is_billed_on_the_cpu():
    # EASE has no PyTorch: "cuda" must not reach its measurement (a CUDA synchronise and peak)
    # nor its cost row, as in `runner.evaluate_cell` (`Recommender.compute_device`).
    train, users, relevant = scale.sampled_holdout(_tiny(), 50, seed=0)
    row = scale.scale_cell("EASE", train, users, relevant, ([], []), 2e3, seed=0,
                           device="cuda", budget=60.0, limit=2_000.0)  # fmt: skip
    assert row["status"] == "fitted" and row["device"] == "cpu"


def test_the_narrative_says_how_far_predictions_were_off_and_whether_skips_stand():
    # A: 10 s at 1e5, predicted 20 s at 1e6 and took 80 (x4); B: predicted 10, took 5 (x0.5),
    # then skipped at 1e7 predicted at 400 s against a budget of 100 (4x the budget)
    rows = [("A", 1e5, "fitted", "", None, 10.0), ("A", 1e6, "fitted", "", 20.0, 80.0),
            ("B", 1e5, "fitted", "", None, 1.0), ("B", 1e6, "fitted", "", 10.0, 5.0),
            ("B", 1e7, "skipped", "predicted 400 s > budget 100 s", 400.0, None)]  # fmt: skip
    table = pd.DataFrame(rows, columns=["model", "n_target", "status", "reason",
                                        "predicted_fit_seconds", "fit_seconds"])  # fmt: skip
    miss = scale.prediction_misses(table)
    assert list(miss["model"]) == ["A", "B"] and list(miss["ratio"]) == [4.0, 0.5]
    text = scale._prediction_text(table, budget_seconds=100, skip_margin=1.5)
    assert "0.50-4.00 over 2 fit(s)" in text and "A at n=1e+06, was predicted at 20.0 s" in text
    assert "4.0x the budget or more (a model is skipped above 1.5x), so each would stand" in text
    # 4 x 0.5 = 2 > 1.5; against the default margin of 4, 2 would not be skipped
    margin4 = scale._prediction_text(table, budget_seconds=100)
    assert "could bring to 2.0x, under the 4x that skips" in margin4
    marked = scale.narrative(table.assign(protocol="p", n_interactions=table["n_target"],
                                          n_users=1, n_items=1), pd.DataFrame(), 50)  # fmt: skip
    assert "fitted A 80.0 s (over the budget), B 5.0 s." in marked
    shaky = scale._prediction_text(table, budget_seconds=250, skip_margin=1)  # 1.6 x 0.5 < 1
    assert "1.6x the budget" in shaky and "rest on the prediction" in shaky
    assert "budget" not in scale._prediction_text(table, budget_seconds=None)


def test_sampled_holdout_keeps_each_users_last_quarter_by_time():
    data = _tiny(n_users=30, per_user=8)
    train, users, relevant = scale.sampled_holdout(data, 10, seed=3)
    assert len(users) == 10 and np.all(np.diff(users) > 0)
    assert relevant.shape == (10, data.n_items)
    np.testing.assert_array_equal(np.diff(relevant.indptr), 2)  # 8 - floor(0.75 * 8)
    assert len(train.frame) + relevant.nnz == len(data.frame)
    f = data.frame
    for row, u in enumerate(users):
        mine = f[f["user"] == u].sort_values("timestamp")
        assert set(relevant[row].indices) == set(mine["item"].iloc[-2:])
    # Users not sampled keep every row.
    others = ~np.isin(f["user"], users)
    assert (train.frame["user"].isin(f["user"][others].unique())).sum() == others.sum()


def test_run_scale_writes_the_results_contract(tmp_path):
    table = scale.run_scale([2e3, 4e3], ["EASE", "iALS"], budget_seconds=60, memory_limit_mb=2000,
                            seed=1, results_dir=tmp_path, stem="95_x", eval_users=50,
                            progress=False)  # fmt: skip
    assert list(table.columns) == scale.TABLE_COLUMNS
    assert len(table) == 4 and set(table["status"]) == {"fitted"}
    out = tmp_path / "95_x"
    costs = pd.read_csv(out / "costs.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    saved = pd.read_csv(out / "tables" / "scale.csv")
    assert list(costs.columns) == COST_COLUMNS and list(metrics.columns) == METRIC_COLUMNS
    assert len(costs) == 4 and len(saved) == 4
    assert set(costs["protocol"]) == {"scale@n=2000", "scale@n=4000"}
    assert set(costs["family"]) == {"collaborative"} and set(costs["dataset"]) == {"synthetic"}
    assert set(costs["device"]) == {"cpu"}
    assert (costs[["fit_seconds", "predict_seconds", "peak_memory_mb"]] >= 0).all().all()
    assert set(metrics["metric"]) == {f"{m}@10" for m in scale.RANKING_NAMES}
    assert metrics["value"].between(0, 1).all()
    # EASE's parameters are its item x item matrix.
    ease = costs[costs["model"] == "EASE"].sort_values("protocol")
    assert list(ease["n_parameters"]) == [n**2 for n in table[table.model == "EASE"].n_items]
    slopes = scale.exponents(table)
    assert list(slopes["fitted_sizes"]) == [2, 2] and slopes["fit_exponent"].notna().all()
    assert "scale@n=4000" in scale.narrative(table, slopes)


def test_run_scale_sends_a_chain_per_model_and_workers_give_the_same_table(tmp_path, monkeypatch):
    from metarec_lib import executors

    sent = []

    class Recording(executors.LocalExecutor):
        def map_calls(self, jobs):
            sent.append([job.label for job in jobs])
            return super().map_calls(jobs)

    kwargs = {"budget_seconds": 60, "memory_limit_mb": 2000, "seed": 3, "eval_users": 40,
              "progress": False}  # fmt: skip
    tables = {}
    for workers in (1, 2):
        pool = Recording(workers)
        monkeypatch.setattr(executors, "_DEFAULT", pool)
        try:
            out = tmp_path / str(workers)
            tables[workers] = scale.run_scale([4e3, 2e3], ["iALS", "BPR"], **kwargs,
                                              results_dir=out, stem="95_x")  # fmt: skip
        finally:
            pool.close()
    assert sent == [["scale iALS", "scale BPR"]] * 2  # one batch: a chain per model
    one, two = tables[1], tables[2]
    # By size, then model as given; the chains' own order does not show.
    assert list(one["protocol"]) == ["scale@n=2000"] * 2 + ["scale@n=4000"] * 2
    assert list(one["model"]) == ["iALS", "BPR"] * 2
    same = ["protocol", "n_interactions", "n_users", "n_items", "model", "status", "ndcg@10"]
    pd.testing.assert_frame_equal(one[same], two[same])
    assert (two["fit_seconds"] > 0).all()


def test_run_scale_and_plan_reject_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        scale.run_scale([], ["EASE"], budget_seconds=1, memory_limit_mb=1, seed=0,
                        results_dir="x", stem="y")  # fmt: skip
    with pytest.raises(ValueError, match="models"):
        scale.run_scale([2e3], ["EASY"], budget_seconds=1, memory_limit_mb=1, seed=0,
                        results_dir="x", stem="y")  # fmt: skip
    with pytest.raises(ValueError, match="budget_seconds"):
        scale.plan(["synthetic"], [2e3], ["EASE"], budget_seconds=0, memory_limit_mb=1)
    with pytest.raises(ValueError, match=r"skip_margin=0\.5; expected a number >= 1"):
        scale.run_scale([2e3], ["EASE"], budget_seconds=1, memory_limit_mb=1, seed=0,
                        results_dir="x", stem="y", skip_margin=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="expected \\['synthetic'\\]"):
        scale.plan(["ml-100k"], [2e3], ["EASE"], budget_seconds=1, memory_limit_mb=1)
    plan = scale.plan(["synthetic"], [1e5, 1e7], ["EASE"], budget_seconds=1,
                      memory_limit_mb=20_000)  # fmt: skip
    assert list(plan["n_items"]) == [1000, 63096]
    assert not plan["EASE MB"][0].endswith("(skip)") and plan["EASE MB"][1].endswith("(skip)")


def test_the_notebook_runs_the_documented_sizes_and_every_model_has_three_below_1e7():
    """The notebook's default sizes are `scale.SIZES`, and at least three of them lie below
    1e7, where EASE stops (memory), so every model's growth exponent rests on >= 3 points."""
    from pathlib import Path

    from metarec_lib.pipeline import notebook_defaults

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "95_scale.ipynb"
    assert tuple(notebook_defaults(nb)["sizes"]) == scale.SIZES
    assert sum(n < 1e7 for n in scale.SIZES) >= 3


def test_the_figure_puts_a_skip_by_time_on_the_time_panel_and_any_memory_skip_on_the_other():
    """A: fitted at 1e5; at 1e6 skipped by the memory estimate (1,000 MB), at 1e7 by its own
    MemoryError (estimate 9,000 MB, prediction 70 s), at 1e8 by time (predicted 500 s)."""
    rows = [(1e5, "fitted", "", 1.0, 5.0, 1.0, 2.0, 10.0),
            (1e6, "skipped", f"{scale.MEMORY_SKIP} ~1,000 MB > limit", 10.0, 1_000.0,
             None, None, None),
            (1e7, "skipped", f"{scale.OWN_MEMORY_SKIP} no room", 70.0, 9_000.0,
             None, None, None),
            (1e8, "skipped", f"{scale.TIME_SKIP} 500 s > 4 x budget", 500.0, 90_000.0,
             None, None, None)]  # fmt: skip
    table = pd.DataFrame(
        rows,
        columns=[
            "n_interactions",
            "status",
            "reason",
            "predicted_fit_seconds",
            "estimated_memory_mb",
            "fit_seconds",
            "eval_seconds",
            "peak_memory_mb",
        ],
    )
    fig = scale.figure(table.assign(model="A"))
    ax_t, ax_m = fig.axes

    def open_markers(ax):
        return [
            line.get_xydata().tolist()
            for line in ax.get_lines()
            if line.get_markerfacecolor() == "none" and len(line.get_xydata())
        ]

    assert open_markers(ax_t) == [[[1e8, 500.0]]]
    assert open_markers(ax_m) == [[[1e6, 1_000.0], [1e7, 9_000.0]]]
    plt.close(fig)
