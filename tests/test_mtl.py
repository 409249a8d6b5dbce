"""Multi-task reading on a hand-built results tree: per-task boards, models against SingleTask,
the "improves both tasks" rule, seesaw points, references and gate usage."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec_lib import mtl, plots
from metarec_lib.testing import write_results_tree

USERS = np.arange(1, 31)
P = "mtl-75-25"


def write_tree(out: Path, models: dict[tuple[str, str], dict[str, np.ndarray]]) -> None:
    """Data set "d", protocol P: models maps (family, model) -> {metric: per-user values};
    auc is given as one value per run."""
    write_results_tree(out, {("d", P, f, m): v for (f, m), v in models.items()}, USERS)


@pytest.fixture
def tree(tmp_path):
    ndcg = np.linspace(0.1, 0.5, len(USERS))
    rmse = np.linspace(0.8, 1.1, len(USERS))
    wiggle = np.where(USERS % 2 == 0, 0.01, -0.01)  # no systematic difference
    single = {"ndcg@10": ndcg, "rmse": rmse, "mae": rmse - 0.2, "logloss": rmse / 2,
              "auc": np.array([0.8])}  # fmt: skip
    out = tmp_path / "40_x"
    write_tree(out, {
        ("multitask", "SingleTask"): single,
        # Better on both tasks for every user.
        ("multitask", "Both"): {**single, "ndcg@10": ndcg + 0.05, "rmse": rmse - 0.05},
        # The seesaw: better interest, worse rating.
        ("multitask", "Seesaw"): {**single, "ndcg@10": ndcg + 0.02, "rmse": rmse + 0.03},
        ("multitask", "Same"): {**single, "ndcg@10": ndcg + wiggle, "rmse": rmse + wiggle},
        ("collaborative", "EASE"): {"ndcg@10": ndcg + 0.1},
        ("collaborative", "SVDpp"): {"ndcg@10": ndcg - 0.05, "rmse": rmse - 0.1,
                                     "mae": rmse - 0.3},  # fmt: skip
    })  # fmt: skip
    return out


def test_task_boards_cover_both_tasks_and_only_models_that_report_the_metric(tree):
    boards = mtl.task_boards(tree)
    assert set(boards) == {("d", m) for m in ("ndcg@10", "auc", "logloss", "rmse", "mae")}
    assert "EASE" in set(boards[("d", "ndcg@10")]["model"])
    assert "EASE" not in set(boards[("d", "rmse")]["model"])
    assert boards[("d", "rmse")]["model"].iloc[0] == "SVDpp"  # lower is better: SVDpp first
    assert "wilcoxon_p" not in boards[("d", "auc")]  # one value per run: no paired test
    mtl.save_task_boards(boards, tree / "tables")
    assert (tree / "tables" / f"leaderboard__d__{P}__rmse.csv").exists()


def test_versus_single_task_and_the_both_tasks_rule(tree):
    versus = mtl.versus_single_task(mtl.task_boards(tree), tree)
    assert set(versus["reference"]) == {"SingleTask"}
    assert not {"EASE", "SVDpp", "SingleTask"} & set(versus["model"])  # only challengers
    assert "auc" not in set(versus["metric"])
    out = versus.set_index(["model", "metric"])["outcome"]
    assert out[("Both", "ndcg@10")] == "wins" and out[("Both", "rmse")] == "wins"
    assert out[("Seesaw", "ndcg@10")] == "wins" and out[("Seesaw", "rmse")] == "loses"
    assert out[("Same", "ndcg@10")] == "tie" and out[("Same", "rmse")] == "tie"
    assert versus.set_index(["model", "metric"])["diff"][("Both", "rmse")] == pytest.approx(-0.05)
    both = mtl.both_tasks(versus).set_index("model")["improves_both"]
    assert both.to_dict() == {"Both": True, "Same": False, "Seesaw": False}
    best = mtl.best_per_task(versus).set_index("metric")["model"]
    assert best["ndcg@10"] == "Both" and best["rmse"] == "Both"
    text = mtl.verdict(versus)
    assert "improve both tasks at once" in text and "**yes**: Both on d" in text
    assert "Seesaw: ndcg@10 +0.0200 (wins); rmse +0.0300 (loses)" in text
    no_winner = versus[versus["model"] != "Both"]
    assert "**no**: none" in mtl.verdict(no_winner)
    assert "nothing to say" in mtl.verdict(pd.DataFrame())


def test_seesaw_points_references_and_figure(tree):
    boards = mtl.task_boards(tree)
    points = mtl.seesaw_points(boards, "d").set_index("model")
    assert set(points.index) == {"SingleTask", "Both", "Seesaw", "Same", "SVDpp"}  # not EASE
    assert points.loc["Both", "rmse"] == pytest.approx(np.linspace(0.8, 1.1, 30).mean() - 0.05)
    refs = mtl.references(boards, "d")
    assert refs["ndcg@10"][0] == "EASE" and refs["rmse"][0] == "SVDpp"
    fig = plots.seesaw(points.reset_index(), refs, title="d")
    assert plots.save(fig, tree / "seesaw.png").stat().st_size > 0
    assert mtl.seesaw_points(boards, "other").empty


def test_gate_usage_averages_seeds(tmp_path):
    gates = tmp_path / "gates"
    gates.mkdir()
    for seed, w in ((1, 0.2), (2, 0.4)):
        pd.DataFrame(
            {"task": ["interest", "interest"], "expert": ["e0", "e1"], "weight": [w, 1 - w]}
        ).to_csv(gates / f"d__{P}__MMoE__seed{seed}.csv.gz", index=False)
    usage = mtl.gate_usage(tmp_path)
    assert usage["weight"].tolist() == pytest.approx([0.3, 0.7])
    assert usage["seeds"].tolist() == [2, 2]
    fig = plots.gate_usage(usage)
    assert plots.save(fig, tmp_path / "gates.png").stat().st_size > 0
    assert mtl.gate_usage(tmp_path / "none").empty


def test_logloss_is_lower_is_better(tree):
    board = mtl.task_boards(tree)[("d", "logloss")]
    assert board["mean"].is_monotonic_increasing  # the best (lowest) first
    text = "".join(str(item.data) for item in mtl.render({("d", "logloss"): board})[:1])
    assert "lower is better" in text
