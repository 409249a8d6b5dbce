"""The summary: family boards from a fixture results tree, every claim's verdict rule on
hand-built boards, and the tables and figures the summary writes."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec_lib import summary
from metarec_lib.testing import write_results_tree

CLAIMS_MD = summary.CLAIMS_MD
VERDICTS = {"supported", "not supported", "mixed", "not testable here"}


def _row(protocol, family, mean, p, fit, *, params=10, memory=5.0, predict=1.0, metric="ndcg@10"):
    return {
        "dataset": "d",
        "protocol": protocol,
        "metric": metric,
        "family": family,
        "model": f"{family}-model",
        "mean": mean,
        "p_holm": p,
        "fit_seconds": fit,
        "predict_seconds": predict,
        "peak_memory_mb": memory,
        "n_parameters": params,
    }


def _boards() -> pd.DataFrame:
    """Hand-built boards: traditional best on topn-75-25, deep best on topn-temporal, a tie on
    loo-temporal; on four cold-start boards collaborative is best and meta loses, costs 10x the
    fit seconds, 100x the parameters, a fifth of the memory, 2x the predict seconds; with a
    tenth of the meta-train users meta loses 50% of its ndcg, the best other family 5%."""
    rows = [
        _row("topn-75-25", "collaborative", 0.5, np.nan, 1.0),
        _row("topn-75-25", "deep", 0.45, 0.001, 10.0),
        _row("topn-75-25", "content", 0.1, 0.001, 0.1),
        _row("topn-temporal", "deep", 0.3, np.nan, 10.0),
        _row("topn-temporal", "collaborative", 0.2, 0.001, 1.0),
        _row("topn-temporal", "content", 0.1, 0.001, 0.1),
        _row("loo-temporal", "deep", 0.3, np.nan, 10.0),
        _row("loo-temporal", "collaborative", 0.29, 0.5, 1.0),
    ]
    for protocol, collab, meta in (
        ("coldstart-users@k=1", 0.6, 0.2),
        ("coldstart-users@k=10", 0.6, 0.2),
        ("coldstart-users@k=5", 0.6, 0.2),
        ("coldstart-users@k=5,pool=0.1", 0.57, 0.1),
    ):
        rows += [
            _row(protocol, "collaborative", collab, np.nan, 1.0, predict=1.0),
            _row(protocol, "meta", meta, 0.001, 10.0, params=1000, memory=1.0, predict=2.0),
            _row(protocol, "content", 0.05, 0.001, 2.0, params=10, predict=1.0),
        ]
    frame = pd.DataFrame(rows)
    best = frame.groupby("protocol")["mean"].transform("max")
    frame["is_best"] = frame["mean"] == best
    frame["tied"] = frame["is_best"] | ~(frame["p_holm"] < 0.05)
    return frame


EXPECTED = {
    "C1": "not supported",  # traditional best or tied on 6 of 7 boards
    "C2": "not supported",  # deep wins 1, ties 1, loses 1
    "C3": "not supported",  # meta loses k=10
    "C4": "not supported",  # meta loses k=1 and k=5
    "C5": "not supported",  # meta loses both pool boards
    "C6": "supported",  # fit seconds 10 vs median 1.5
    "C7": "supported",  # 1000 parameters vs 10
    "C8": "supported",  # meta loses 50% of its quality, the others 5%
    "C9": "not testable here",
    "C10": "supported",  # meta ties or loses every cold-start board
    "C11": "not supported",  # median Spearman -0.5
    "Q1": "supported",
    "Q2": "supported",
    "Q3": "not supported",  # meta's memory is a fifth of the others'
    "Q4": "supported",  # predict 2 s vs 1 s
    "Q5": "supported",
}


def test_every_claim_and_question_has_a_rule_with_the_hand_worked_verdict():
    claims = summary.read_claims(CLAIMS_MD)
    assert list(claims["id"]) == [f"C{i}" for i in range(1, 12)] + [f"Q{i}" for i in range(1, 6)]
    assert claims.loc[0, "claim"].startswith("Traditional recommenders cannot capture")
    assert claims.set_index("id").loc["Q1", "claim"] == "How much data does meta-learning need?"
    assert set(summary.CLAIM_RULES) == set(claims["id"])
    boards = _boards()
    for cid, expected in EXPECTED.items():
        rule, fn = summary.CLAIM_RULES[cid]
        evidence = fn(boards)
        assert evidence.verdict == expected, (cid, evidence)
        assert rule and evidence.numbers
    assert "6 of 7" in summary.CLAIM_RULES["C1"][1](boards).numbers
    assert "wins 1, ties 1, loses 1 of 3" in summary.CLAIM_RULES["C2"][1](boards).numbers
    assert "meta 50.0%, best other family 5.0%" in summary.CLAIM_RULES["C8"][1](boards).numbers
    assert "-0.50" in summary.CLAIM_RULES["C11"][1](boards).numbers


def _pool_sweep(meta_full, meta_small, other_full, other_small, *, dataset="d"):
    """ndcg@10 boards of one data set's pool sweep, each model's per-seed values given."""
    rows = []
    sweep = (("coldstart-users@k=5", meta_full, other_full),
             ("coldstart-users@k=5,pool=0.1", meta_small, other_small))  # fmt: skip
    for protocol, meta, other in sweep:
        for family, seeds in (("meta", meta), ("collaborative", other)):
            row = _row(protocol, family, float(np.mean(seeds)), np.nan, 1.0)
            row["dataset"] = dataset
            row["seeds"] = json.dumps({str(42 + i): v for i, v in enumerate(seeds)})
            rows.append(row)
    return pd.DataFrame(rows)


def test_data_need_needs_every_seed_to_lean_the_way_of_the_means():
    # Meta loses 1 - 0.3/0.4 = 25% on the means, the other 10% (0.5 -> 0.45 in every seed).
    agree = _pool_sweep([0.4, 0.4, 0.4], [0.3, 0.28, 0.32], [0.5] * 3, [0.45] * 3)
    e = summary.data_need(agree, "x")
    assert e.verdict == "supported"
    assert "meta 25.0%, best other family 10.0%" in e.numbers
    assert "+15.0 points, +20.0 points, +10.0 points" in e.numbers  # 25/30/20 minus 10
    # The same means, but one seed where meta loses less than the other: mixed.
    disagree = _pool_sweep([0.4, 0.4, 0.4], [0.2, 0.2, 0.5], [0.5] * 3, [0.45] * 3)
    e = summary.data_need(disagree, "x")
    assert e.verdict == "mixed" and "the seeds disagree" in e.numbers
    assert "+40.0 points, +40.0 points, -35.0 points" in e.numbers  # 50/50/-25 minus 10


def test_pool_boards_are_the_data_sets_with_a_pool_sweep_only():
    swept = _pool_sweep([0.4] * 3, [0.3] * 3, [0.5] * 3, [0.45] * 3)
    plain = swept[swept["protocol"] == "coldstart-users@k=5"].assign(dataset="e")
    boards = pd.concat([swept, plain], ignore_index=True)
    picked = boards[summary._pool_boards(boards)]
    assert set(picked["dataset"]) == {"d"} and len(picked) == 4


def test_a_notebooks_claim_verdicts_read_the_reports_boards_for_each_claim():
    """60_meta prints C3, C4 and C5 on the boards the report reads for each (k >= 10, k <= 5,
    the pool sweep), with the report's wording; a claim without a board rule reads them all."""
    protocols = ["coldstart-users@k=1", "coldstart-users@k=5", "coldstart-users@k=10",
                 "coldstart-users@k=5,pool=0.1"]  # fmt: skip
    outcomes = ["loses", "tie", "wins", "loses"]
    versus = pd.DataFrame([
        {"dataset": "d", "protocol": p, "metric": "ndcg@10", "model": "MAML", "mean": 0.2,
         "reference": "EASE", "reference_mean": 0.3, "diff": -0.1, "wilcoxon_p_holm": 0.01,
         "n_users": 9, "outcome": o}
        for p, o in zip(protocols, outcomes, strict=True)
    ])  # fmt: skip
    text = summary.claim_verdicts(versus, "meta", ["C3", "C4", "C5", "C2"], CLAIMS_MD)
    c3, c4, c5, c2 = text.split("**Claim:** ")[1:]
    wording = summary.read_claims(CLAIMS_MD).set_index("id")["claim"]
    assert c3.startswith(f"C3: {wording['C3']}")
    assert "**Verdict: supported** — on 1 boards" in c3 and "k=10" in c3  # the k = 10 win
    assert "on 2 boards the best meta model wins 0, ties 1 and loses 1" in c4  # k = 1, 5
    assert "on 2 boards the best meta model wins 0, ties 1 and loses 1" in c5  # k = 5, pool 0.1
    assert "on 4 boards the best meta model wins 1, ties 1 and loses 2" in c2


def test_outcome_share_verdict_and_cost_ratio_by_hand():
    board = pd.DataFrame(
        [
            {
                "dataset": "d",
                "protocol": "p",
                "metric": "m",
                "family": "a",
                "model": "A",
                "is_best": True,
                "tied": True,
            },
            {
                "dataset": "d",
                "protocol": "p",
                "metric": "m",
                "family": "b",
                "model": "B",
                "is_best": False,
                "tied": False,
            },
            {
                "dataset": "d",
                "protocol": "p",
                "metric": "m",
                "family": "c",
                "model": "C",
                "is_best": False,
                "tied": True,
            },
        ]
    )
    assert summary.outcome(board, "a")["outcome"].tolist() == ["tie"]  # C is not worse
    assert summary.outcome(board, "b")["outcome"].tolist() == ["loss"]
    board.loc[2, "tied"] = False
    assert summary.outcome(board, "a")["outcome"].tolist() == ["win"]
    assert summary.outcome(board, "zzz").empty
    assert summary.share_verdict(2, 1, 3) == "supported"
    assert summary.share_verdict(1, 2, 3) == "not supported"
    assert summary.share_verdict(1, 1, 3) == "mixed"
    assert summary.share_verdict(0, 0, 0) == "not testable here"
    ratios = summary.cost_ratio(_boards(), "meta", "fit_seconds", summary._coldstart)
    assert len(ratios) == 4 and ratios["ratio"].to_numpy() == pytest.approx(10 / 1.5)


def test_board_metrics_per_protocol():
    assert summary.board_metric("rating-5fold") == ("rmse",)
    assert summary.board_metric("topn-75-25") == ("ndcg@10",)
    assert summary.board_metric("coldstart-users@k=5") == ("ndcg@10", "rmse")
    assert summary.board_metric("algo-selection") == ()
    assert summary.board_metric("scale@n=1e+06") == ()  # untuned fixed-pass fits


def test_curve_text_names_a_points_best_model_when_it_is_not_plotted():
    # collaborative: A averages 0.5, B 0.4, so A is plotted though B is best at k = 1
    rows = [("collaborative", "A", 1, 0.3), ("collaborative", "A", 5, 0.7),
            ("collaborative", "B", 1, 0.45), ("collaborative", "B", 5, 0.35),
            ("meta", "M", 1, 0.4), ("meta", "M", 5, 0.5)]  # fmt: skip
    every = pd.DataFrame(rows, columns=["family", "model", "k", "mean"]).assign(
        dataset="d", metric="ndcg@10"
    )
    plotted = summary.best_per_family(every)
    assert sorted(plotted["model"].unique()) == ["A", "M"]
    assert summary._curve_best(plotted, every, "k") == (
        "d, best of the plotted models at each k: 1: M, 5: A. "
        "Best of all models, where it is not plotted: 1: B (collaborative)."
    )
    only_plotted = every[every["model"] != "B"]
    assert summary._curve_best(plotted, only_plotted, "k").endswith("1: M, 5: A.")


def test_pareto_front_keeps_the_undominated():
    points = pd.DataFrame({"cost": [1.0, 2.0, 3.0, 0.5, 2.0], "q": [0.5, 0.6, 0.55, 0.1, 0.6]})
    front = summary.pareto_front(points, "cost", "q")
    # 3.0/0.55 is beaten by 2.0/0.6; the two equal points 2.0/0.6 keep each other.
    assert front.tolist() == [True, True, False, True, True]
    lower = summary.pareto_front(points.assign(q=-points["q"]), "cost", "q", better="lower")
    assert lower.tolist() == front.tolist()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two notebooks sharing the ml-100k topn-75-25 board plus a cold-start board."""
    root = tmp_path_factory.mktemp("results")
    users = np.arange(1, 41)
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, len(users))
    write_results_tree(
        root / "20_collaborative",
        {
            ("ml-100k", "topn-75-25", "collaborative", "EASE"): {"ndcg@10": base + 0.2},
            ("ml-100k", "topn-75-25", "collaborative", "MostPop"): {"ndcg@10": base},
        },
        users,
        seeds=(42, 43, 44),
    )
    write_results_tree(
        root / "30_deep",
        {
            ("ml-100k", "topn-75-25", "deep", "SASRec"): {"ndcg@10": base + 0.19},
            ("ml-100k", "topn-75-25", "collaborative", "EASE"): {"ndcg@10": base - 0.3},
        },
        users,
        seeds=(42, 43, 44),
    )
    write_results_tree(
        root / "60_meta",
        {
            ("ml-100k", "coldstart-users@k=5", "meta", "MAML"): {"ndcg@10": base, "rmse": base + 1},
            ("ml-100k", "coldstart-users@k=5", "collaborative", "iALSFoldIn"): {
                "ndcg@10": base + 0.1
            },
        },
        users,
        seeds=(42, 43, 44),
    )
    split = pd.DataFrame({"user_id": np.repeat(users, users % 5 + 1)})
    split["item_id"] = np.arange(len(split))
    (root / "20_collaborative" / "splits").mkdir()
    split.to_csv(
        root / "20_collaborative" / "splits" / "ml-100k__topn-75-25__seed42__test.csv.gz",
        index=False,
    )
    return root


def test_family_boards_share_a_board_and_test_against_the_best(tree):
    boards = summary.family_boards(tree)
    board = boards[(boards["protocol"] == "topn-75-25")].set_index("family")
    # EASE of 20_collaborative wins the duplicate (30_deep's copy is ignored).
    assert board.loc["collaborative", "model"] == "EASE"
    assert board.loc["collaborative", "notebook"] == "20_collaborative"
    assert board.loc["collaborative", "mean"] == pytest.approx(
        np.mean(np.random.default_rng(0).uniform(0.2, 0.4, 40)) + 0.2
    )
    assert bool(board.loc["collaborative", "is_best"]) and not board.loc["deep", "is_best"]
    # SASRec is 0.01 below EASE for every user: a significant paired loss.
    assert board.loc["deep", "p_holm"] < 0.05 and not board.loc["deep", "tied"]
    cold = boards[boards["protocol"] == "coldstart-users@k=5"]
    assert set(cold["metric"]) == {"ndcg@10", "rmse"}
    assert cold.loc[cold["metric"] == "rmse", "family"].tolist() == ["meta"]  # only MAML has it


def test_a_familys_own_baseline_is_not_its_best(tmp_path):
    from metarec_lib import crossdomain, mtl

    assert summary.FAMILY_BASELINES == {"multitask": mtl.BASELINE,
                                        "transfer": crossdomain.BASELINE}  # fmt: skip
    users = np.arange(1, 31)
    base = np.random.default_rng(1).uniform(0.2, 0.4, len(users))
    write_results_tree(
        tmp_path / "40_multitask",
        {
            ("ml-100k", "mtl-75-25", "multitask", "SingleTask"): {"ndcg@10": base + 0.05},
            ("ml-100k", "mtl-75-25", "multitask", "ESMM"): {"ndcg@10": base + 0.02},
            ("ml-100k", "mtl-75-25", "collaborative", "iALS"): {"ndcg@10": base + 0.1},
        },
        users,
        seeds=(42, 43),
    )
    boards = summary.family_boards(tmp_path)
    board = boards[boards["metric"] == "ndcg@10"].set_index("family")
    # SingleTask has the multi-task family's highest mean, but it is the family's baseline.
    assert board.loc["multitask", "model"] == "ESMM"
    assert board.loc["multitask", "mean"] == pytest.approx(base.mean() + 0.02)
    assert board.loc["collaborative", "model"] == "iALS"
    assert "SingleTask" not in set(boards["model"])


def test_build_writes_every_table_and_figure_the_outline_names(tree):
    out = tree / "90_summary"
    sections = summary.build(tree, CLAIMS_MD, out)
    claims = pd.read_csv(out / "tables" / "claims.csv")
    assert len(claims) == 16 and set(claims["verdict"]) <= VERDICTS
    assert list(claims.columns) == ["id", "claim", "experiment", "numbers", "verdict", "rule"]
    outline = json.loads((out / "outline.json").read_text())
    assert outline["sections"][0]["title"] == "Claims versus evidence"
    for section in outline["sections"]:
        for key in ("table", "figure"):
            if section[key]:
                assert (out / section[key]).is_file(), section[key]
    assert {"claims", "leaderboard", "pareto_topn", "activity"} <= set(sections)
    activity = pd.read_csv(out / "tables" / "activity_quintiles.csv")
    assert set(activity["quintile"]) == {1, 2, 3, 4, 5}
    assert activity.groupby("model")["users"].sum().eq(40).all()


def test_scale_growth_lists_each_models_exponent_and_family(tmp_path):
    assert summary.scale_growth(tmp_path) == ""  # 95_scale did not run
    folder = tmp_path / "95_scale"
    (folder / "tables").mkdir(parents=True)
    pd.DataFrame({"model": ["EASE", "SASRec", "BPR"], "fit_exponent": [1.8, 1.634, np.nan]}).to_csv(
        folder / "tables" / "exponents.csv", index=False
    )
    pd.DataFrame({"model": ["EASE", "SASRec"], "family": ["collaborative", "deep"]}).to_csv(
        folder / "costs.csv", index=False
    )
    assert summary.scale_growth(tmp_path) == (
        "; fit time grows as n^e with the interactions (95_scale): EASE 1.80 (collaborative), "
        "SASRec 1.63 (deep)"
    )


def test_q3_leaves_out_boards_whose_memory_median_is_below_the_floor():
    """A board where the other families' peak memory is 0.2 MB (noise of the RSS sampler)
    gives no ratio: Q3 reads the four boards above 1 MB (meta a fifth: not supported) and says
    how many it left out; without the floor that board's ratio (1 / 0.2 = 5) would count."""
    boards = _boards()
    noisy = pd.DataFrame([
        _row("coldstart-users@k=20", "collaborative", 0.6, np.nan, 1.0, memory=0.2),
        _row("coldstart-users@k=20", "meta", 0.2, 0.001, 10.0, memory=1.0),
        _row("coldstart-users@k=20", "content", 0.05, 0.001, 2.0, memory=0.2),
    ]).assign(is_best=[True, False, False], tied=[True, False, False])  # fmt: skip
    boards = pd.concat([boards, noisy], ignore_index=True)
    evidence = summary.CLAIM_RULES["Q3"][1](boards)
    assert evidence.verdict == "not supported"
    assert "> 1 on 0 of 4 boards" in evidence.numbers and "1 board(s) left out" in evidence.numbers
    unfloored = summary.cost_ratio(boards, "meta", "peak_memory_mb", summary._coldstart)
    assert len(unfloored) == 5 and unfloored["ratio"].max() == pytest.approx(5.0)


RESULTS = Path(__file__).resolve().parents[1] / "results"
NOTEBOOK_CLAIMS = [("30_deep", "deep_vs_best_baseline.csv", "deep", "C2"),
                   *[("60_meta", "best_meta_vs_best_other.csv", "meta", c)
                     for c in ("C3", "C4", "C5")]]  # fmt: skip


@pytest.mark.parametrize(("stem", "table", "family", "claim"), NOTEBOOK_CLAIMS)
def test_the_committed_notebooks_print_the_reports_verdict_and_counts(stem, table, family, claim):
    """What 30_deep and 60_meta print for a claim, recomputed from their committed tables, is
    the committed report's row: same verdict, same wins, ties and losses (they test on other
    Holm families, so this is checked on the real results, not assumed)."""
    versus_path = RESULTS / stem / "tables" / table
    claims_path = RESULTS / "90_summary" / "tables" / "claims.csv"
    if not (versus_path.exists() and claims_path.exists()):
        pytest.skip("no committed results")
    text = summary.claim_verdicts(pd.read_csv(versus_path), family, [claim], CLAIMS_MD)
    row = pd.read_csv(claims_path).set_index("id").loc[claim]
    wins, ties, losses, n = map(int, re.findall(r"\d+", row["numbers"])[:4])
    assert f"**Verdict: {row['verdict']}** — on {n} boards" in text
    assert f"wins {wins}, ties {ties} and loses {losses}" in text


def test_a_family_better_per_user_than_the_best_is_not_counted_a_loss(tmp_path):
    # The board's best is ranked by the runs' RMSE, the test pairs per-user RMSEs; here they
    # disagree: A's runs read 0.80 and B's 0.85, but B is 0.1 better for each of 30 users.
    users = np.arange(1, 31)
    write_results_tree(
        tmp_path / "20_collaborative",
        {
            ("ml-100k", "rating-5fold", "collaborative", "A"): {"rmse": np.full(len(users), 1.0)},
            ("ml-100k", "rating-5fold", "deep", "B"): {"rmse": np.full(len(users), 0.9)},
        },
        users,
    )
    path = tmp_path / "20_collaborative" / "metrics.csv"
    metrics = pd.read_csv(path)
    metrics["value"] = np.where(metrics["model"] == "A", 0.80, 0.85)
    metrics.to_csv(path, index=False)
    board = summary.family_boards(tmp_path).set_index("model")
    assert board.loc["A", "is_best"] and board.loc["B", "p_holm"] < 0.05
    assert board.loc["B", "tied"]  # different, but not worse: not a loss


def test_a_board_without_per_user_values_is_left_out_not_counted_a_tie(tmp_path):
    # topn-75-25 has per-user values (collaborative better for each of 30 users); topn-temporal
    # only run-level values, so no paired test can run there and nothing is known to be tied.
    users = np.arange(1, 31)
    noise = np.random.default_rng(3).uniform(0, 0.01, len(users))
    write_results_tree(
        tmp_path / "30_deep",
        {
            ("d", "topn-75-25", "collaborative", "EASE"): {"ndcg@10": 0.5 + noise},
            ("d", "topn-75-25", "deep", "NeuMF"): {"ndcg@10": 0.1 + noise[::-1]},
            ("d", "topn-temporal", "collaborative", "EASE"): {"ndcg@10": np.array([0.2])},
            ("d", "topn-temporal", "deep", "NeuMF"): {"ndcg@10": np.array([0.3])},
        },
        users,
    )
    boards = summary.family_boards(tmp_path)
    tested = boards.groupby("protocol")["tested"].all()
    assert tested["topn-75-25"] and not tested["topn-temporal"]
    table = summary.outcome(boards, "deep").set_index("protocol")["outcome"]
    assert table.to_dict() == {"topn-75-25": "loss", "topn-temporal": "untested"}
    evidence = summary.family_wins(boards, "deep", "claim")
    assert evidence.numbers == (
        "deep wins 0, ties 0, loses 1 of 1 boards; "
        "1 board(s) without per-user values to test left out"
    )
    assert evidence.verdict == "not supported"
    c1 = summary._not_traditional_best(boards)
    assert c1.numbers.startswith("the best traditional model is best or tied on 1 of 1 boards")
    assert c1.numbers.endswith("; 1 board(s) without per-user values to test left out")
