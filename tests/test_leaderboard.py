"""Leaderboard helpers on a hand-built results tree: who beats whom, and the printed verdicts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec_lib import leaderboard
from metarec_lib.testing import write_results_tree

USERS = np.arange(1, 41)


def write_tree(out: Path, per_user: dict[tuple[str, str, str], np.ndarray]) -> None:
    """Data set "d": per_user maps (protocol, family, model) -> per-user ndcg@10."""
    cells = {("d", p, f, m): {"ndcg@10": v} for (p, f, m), v in per_user.items()}
    write_results_tree(out, cells, USERS)


@pytest.fixture
def tree(tmp_path):
    base = np.linspace(0.2, 0.6, len(USERS))
    noise = np.where(USERS % 2 == 0, 0.01, -0.01)
    out = tmp_path / "30_x"
    write_tree(out, {
        ("p1", "collaborative", "Base"): base,
        ("p1", "collaborative", "Weak"): base - 0.1,
        ("p1", "deep", "Better"): base + 0.05,  # higher for every user
        ("p1", "deep", "Same"): base + noise,  # +-0.01 alternating: no systematic difference
        ("p2", "collaborative", "Base"): base,
        ("p2", "deep", "Worse"): base - 0.05,
    })  # fmt: skip
    return out


def test_versus_reference_picks_the_best_other_family_and_classifies(tree):
    boards = leaderboard.boards(tree)
    table = leaderboard.versus_reference(boards[("d", "p1")], tree, "d", "p1", "deep")
    table = table.set_index("model")
    assert set(table["reference"]) == {"Base"}  # not Weak: the best non-deep model
    assert table.loc["Better", "outcome"] == "wins"
    assert table.loc["Better", "diff"] == pytest.approx(0.05)
    assert table.loc["Same", "outcome"] == "tie" and table.loc["Same", "diff"] == pytest.approx(0)
    # Holm over two comparisons: the adjusted p is never below the raw one.
    assert (table["wilcoxon_p_holm"] >= table["wilcoxon_p"]).all()
    other = leaderboard.versus_reference(boards[("d", "p2")], tree, "d", "p2", "deep")
    assert other["outcome"].tolist() == ["loses"]
    assert leaderboard.versus_reference(boards[("d", "p2")], tree, "d", "p2", "meta").empty


def test_a_zero_mean_difference_is_a_tie_even_when_wilcoxon_rejects(tmp_path):
    # 36 users 1/64 better, 4 users 9/64 worse: the mean difference is exactly 0 (dyadic
    # values), but the signed ranks are lopsided (W+ = 666 of 820), so Wilcoxon rejects.
    base = 0.25 + USERS / 64
    shift = np.where(USERS <= 36, 1 / 64, -9 / 64)
    out = tmp_path / "30_x"
    write_tree(out, {("p", "collaborative", "Base"): base, ("p", "deep", "Cancel"): base + shift})
    board = leaderboard.boards(out)[("d", "p")]
    row = leaderboard.versus_reference(board, out, "d", "p", "deep").iloc[0]
    assert row["diff"] == 0.0 and row["wilcoxon_p_holm"] < 0.01
    assert row["outcome"] == "tie"  # was "loses": the sign of 0 counted as worse


def test_family_verdict_rule(tree):
    boards = leaderboard.boards(tree)
    both = pd.concat([leaderboard.versus_reference(b, tree, d, p, "deep")
                      for (d, p), b in boards.items()])  # fmt: skip
    text = leaderboard.family_verdict(both, "deep", "deep is better")
    assert "**Verdict: mixed**" in text and "wins 1, ties 0 and loses 1" in text
    assert "**Better**" in text and "**Worse**" in text
    only_p1 = both[both["protocol"] == "p1"]
    assert "**Verdict: supported**" in leaderboard.family_verdict(only_p1, "deep", "c")
    only_p2 = both[both["protocol"] == "p2"]
    assert "**Verdict: not supported**" in leaderboard.family_verdict(only_p2, "deep", "c")
    # A board that ties still counts as no win: one tie alone is "not supported".
    tie = only_p1.assign(outcome="tie")
    assert "**Verdict: not supported**" in leaderboard.family_verdict(tie, "deep", "c")
    assert "nothing to say" in leaderboard.family_verdict(pd.DataFrame(), "deep", "c")
    # The report's rule (leaderboard.share_verdict), not a looser one: 1 win, 2 ties, 3 losses
    # of 6 boards is "not supported" (5 of 6 give no evidence), 2 wins and 1 loss "supported".
    row = only_p1[only_p1["model"] == "Better"].iloc[0]

    def boards_with(*outcomes):
        return pd.DataFrame([row.to_dict() | {"dataset": f"d{i}", "outcome": o}
                             for i, o in enumerate(outcomes)])  # fmt: skip

    def verdict(*outcomes):
        return leaderboard.family_verdict(boards_with(*outcomes), "deep", "c")

    six = verdict("wins", "tie", "tie", "loses", "loses", "loses")
    assert "**Verdict: not supported** — on 6 boards" in six
    assert "wins 1, ties 2 and loses 3" in six
    assert "**Verdict: supported**" in verdict("wins", "wins", "loses")
    assert "**Verdict: mixed**" in verdict("wins", "tie")


def test_head_to_head_and_model_targets(tree):
    text = leaderboard.head_to_head(tree, "d", "p1", "Better", ["Base", "Same", "Missing"])
    assert "beats Base" in text and "beats Same" in text and "Beats all: **yes**" in text
    assert "Missing" not in text
    text = leaderboard.head_to_head(tree, "d", "p1", "Same", ["Base", "Better"])
    assert "ties with Base" in text and "loses to Better" in text and "**no**" in text
    assert "did not run" in leaderboard.head_to_head(tree, "d", "p1", "Nobody", ["Base"])

    boards = leaderboard.boards(tree)
    mean = float(np.linspace(0.2, 0.6, len(USERS)).mean()) + 0.05
    text = leaderboard.narrative(
        boards,
        None,
        {
            ("d", "p1", "Better", "ndcg@10"): (">=", 0.99),
            ("d", "p1", "Same", "ndcg@10"): (">=", 0.1),
        },
    )
    assert f"Target for Better: ndcg@10 >= 0.99, measured {mean:.4f}: **not met**" in text
    assert "Target for Same: ndcg@10 >= 0.1" in text and text.count("**met**") == 1


def test_the_paired_test_reads_rank_one_and_untested_models_are_named(tmp_path):
    """A run's RMSE weighs users by their ratings, the per-user mean weighs them equally, so
    the two can order models differently: the board ranks by the runs' mean and tests every
    model against its rank 1; a model without per-user values is shown untested."""
    out = tmp_path / "20_x"
    heavy = USERS <= 10  # say, 50 test ratings each, against one for the others
    a = np.where(heavy, 0.5, 1.5)  # per-user mean 1.25
    b = np.ones(len(USERS))  # per-user mean 1.0: better per user
    c = np.full(len(USERS), 2.0)
    write_results_tree(out, {("d", "rating", "collaborative", m): {"rmse": v}
                             for m, v in {"A": a, "B": b, "C": c}.items()}, USERS)  # fmt: skip
    metrics = pd.read_csv(out / "metrics.csv")
    # each run's RMSE over all ratings: A sqrt((500 * 0.25 + 30 * 2.25) / 530) = 0.60, B 1, C 2
    run_rmse = {"A": np.sqrt((500 * 0.25 + 30 * 2.25) / 530), "B": 1.0, "C": 2.0}
    metrics["value"] = metrics["model"].map(run_rmse)
    metrics.to_csv(out / "metrics.csv", index=False)
    for path in (out / "per_user").glob("*__C__*"):
        path.unlink()

    board = leaderboard.leaderboard(out, "d", "rating", "rmse").set_index("model")
    assert list(board.index) == ["A", "B", "C"] and board.loc["A", "rank"] == 1
    assert board.loc["A", "is_best"] and not board.loc["B", "is_best"]
    assert board.loc["B", "diff"] == pytest.approx(-0.25)  # B - A per user: lower RMSE
    assert board.loc["B", "wilcoxon_p_holm"] < 0.05 and not board.loc["B", "significant"]
    assert np.isnan(board.loc["C", "wilcoxon_p_holm"])  # no per-user values: untested
    view = leaderboard.summary_table(board.reset_index(), "rmse").set_index("model")
    assert view["p vs best (Holm)"].tolist() == ["best", f"{board.loc['B', 'wilcoxon_p_holm']:.2g}",
                                                 "n/a"]  # fmt: skip
    text = leaderboard.narrative({("d", "rating"): board.reset_index()})
    assert "best is **A**" in text
    assert "not significantly worse" in text and ": B;" in text
    assert "not tested (no paired per-user values): C" in text
    assert "every other model" not in text


def test_per_user_means_read_only_the_seeds_metrics_csv_holds(tmp_path):
    """A per-user file an earlier run left (a seed since dropped) is not averaged in."""
    out = tmp_path / "20_x"
    values = np.linspace(0.1, 0.5, len(USERS))
    write_results_tree(out, {("d", "p", "collaborative", "A"): {"ndcg@10": values}}, USERS)
    stale = out / "per_user" / "d__p__A__seed2.csv.gz"
    pd.DataFrame({"user_id": USERS, "ndcg@10": values + 0.3}).to_csv(stale, index=False)
    got = leaderboard.per_user_means(out, "d", "p", "A", "ndcg@10")
    np.testing.assert_allclose(got.to_numpy(), values + 0.15)  # both seeds in metrics.csv
    metrics = pd.read_csv(out / "metrics.csv")
    metrics[metrics["seed"] == 1].to_csv(out / "metrics.csv", index=False)  # a rerun on seed 1
    got = leaderboard.per_user_means(out, "d", "p", "A", "ndcg@10")
    np.testing.assert_allclose(got.to_numpy(), values)


def test_outcomes_by_hand():
    """Holm over four p values (0.001, 0.001, 0.002, 0.5 sorted: 4p, 3p, 2p, 1p, made monotone),
    then the sign of the difference in the metric's better direction; a zero difference ties."""
    diffs, p = [0.1, -0.2, 0.0, 0.05], [0.001, 0.002, 0.001, 0.5]
    adjusted, words = leaderboard.outcomes(diffs, p, "ndcg@10")
    np.testing.assert_allclose(adjusted, [0.004, 0.004, 0.004, 0.5])
    assert list(words) == ["wins", "loses", "tie", "tie"]
    _, words = leaderboard.outcomes(diffs, p, "rmse")  # lower is better: the signs flip
    assert list(words) == ["loses", "wins", "tie", "tie"]
