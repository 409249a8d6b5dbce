"""Leaderboards from the results files: mean and 95% CI over seeds, costs, and a paired test of
every model against the best one across users (Holm corrected)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from metarec_lib.stats import aggregate_frame, compare_to_best, holm, paired_test

LOWER_IS_BETTER = ("rmse", "mae", "logloss")
COST_COLUMNS = ("fit_seconds", "predict_seconds", "peak_memory_mb", "n_parameters")
MAJORITY = 2 / 3  # a claim is supported (or refuted) when it holds on >= 2/3 of its boards


def higher_is_better(metric: str) -> bool:
    return metric.split("@")[0] not in LOWER_IS_BETTER


def per_user_means(out: Path, dataset: str, protocol: str, model: str, metric: str) -> pd.Series:
    """A model's per-user metric, averaged over the seeds/folds it ran (index user_id); empty
    when none was saved (a metric with one value per run, such as auc, has no per-user one).
    Only the seeds `metrics.csv` holds for the model count: a per-user file an earlier run left
    (another seed list, a model since dropped) is not read."""
    prefix = f"{dataset}__{protocol}__{model}__seed"
    ran = _runs(Path(out) / "metrics.csv").get((dataset, protocol, model), set())
    paths = [path for path in sorted((Path(out) / "per_user").glob(f"{prefix}*.csv.gz"))
             if path.name[len(prefix) : -len(".csv.gz")] in ran]  # fmt: skip
    frames = [frame[["user_id", metric]] for frame in map(pd.read_csv, paths) if metric in frame]
    if not frames:
        return pd.Series(dtype=float)
    return pd.concat(frames).groupby("user_id")[metric].mean()


def _runs(metrics_csv: Path) -> dict[tuple[str, str, str], set[str]]:
    """{(dataset, protocol, model): the seeds (as text) of its rows} in a metrics.csv."""
    try:
        stat = metrics_csv.stat()
    except FileNotFoundError:
        return {}
    return _runs_at(str(metrics_csv), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _runs_at(path: str, stamp: tuple[int, int]) -> dict[tuple[str, str, str], set[str]]:
    """`_runs` of the file as it was at `stamp` (modification time, size): read once."""
    cells = pd.read_csv(path, usecols=["dataset", "protocol", "model", "seed"]).drop_duplicates()
    out: dict[tuple[str, str, str], set[str]] = {}
    for d, p, m, seed in cells.itertuples(index=False):
        out.setdefault((d, p, m), set()).add(str(seed))
    return out


def leaderboard(out: str | Path, dataset: str, protocol: str, metric: str) -> pd.DataFrame:
    """One row per model: mean, CI, seeds, median costs, and the paired test against the best.

    `out` is a notebook's results folder (`results/<stem>`). Rows are ranked by the mean over
    seeds (ties keep the models' first-appearance order); the paired test compares every model
    with rank 1, on per-user values averaged over seeds and the users every model was evaluated
    on. No test when rank 1 has no per-user values.
    """
    out = Path(out)
    metrics = pd.read_csv(out / "metrics.csv")
    costs = pd.read_csv(out / "costs.csv")
    sel = metrics[(metrics.dataset == dataset) & (metrics.protocol == protocol)
                  & (metrics.metric == metric)]  # fmt: skip
    if sel.empty:
        return pd.DataFrame()
    table = aggregate_frame(sel, by=["family", "model"])
    cost = median_costs(costs, dataset, protocol)
    table = table.merge(cost, left_on="model", right_index=True, how="left")
    better = higher_is_better(metric)
    table = table.sort_values("mean", ascending=not better, kind="stable").reset_index(drop=True)
    per_user = {m: per_user_means(out, dataset, protocol, m, metric) for m in table["model"]}
    per_user = {m: v for m, v in per_user.items() if len(v)}
    best = table["model"].iloc[0]
    if len(per_user) >= 2 and best in per_user:
        users = sorted(set.intersection(*(set(v.index) for v in per_user.values())))
        vectors = {m: v.reindex(users).to_numpy() for m, v in per_user.items()}
        tests = compare_to_best(vectors, higher_is_better=better, best=best).rename(
            columns={"mean": "per_user_mean", "n": "n_users"}
        )
        table = table.merge(tests, on="model", how="left")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def median_costs(costs: pd.DataFrame, dataset: str, protocol: str) -> pd.DataFrame:
    """Median over seeds of each model's COST_COLUMNS on one board (index: model)."""
    sel = costs[(costs["dataset"] == dataset) & (costs["protocol"] == protocol)]
    return sel.groupby("model")[list(COST_COLUMNS)].median()


def summary_table(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A compact, readable view of a leaderboard (for display and the report)."""
    if board.empty:
        return board
    cols = {"rank": "rank", "family": "family", "model": "model"}
    view = board[list(cols)].copy()
    view[metric] = [f"{m:.4f} ± {(h - m):.4f}" if np.isfinite(h) else f"{m:.4f}"
                    for m, h in zip(board["mean"], board["ci_high"], strict=True)]  # fmt: skip
    view["seeds"] = board["n"]
    if "wilcoxon_p_holm" in board:
        best = board["is_best"].fillna(False).astype(bool)
        view["p vs best (Holm)"] = [
            "best" if b else ("n/a" if pd.isna(p) else f"{p:.2g}")
            for b, p in zip(best, board["wilcoxon_p_holm"], strict=True)
        ]
    view["fit s"] = board["fit_seconds"].round(3)
    view["params"] = board["n_parameters"].round().astype("Int64")
    return view


def primary_metric(protocol: str) -> str:
    return "rmse" if protocol.startswith("rating") else "ndcg@10"


def boards(out: str | Path) -> dict[tuple[str, str], pd.DataFrame]:
    """Every (data set, protocol) leaderboard of a notebook, on its primary metric."""
    out = Path(out)
    metrics = pd.read_csv(out / "metrics.csv")
    pairs = metrics[["dataset", "protocol"]].drop_duplicates().itertuples(index=False)
    return {(d, p): leaderboard(out, d, p, primary_metric(p)) for d, p in pairs}


def save_boards(all_boards: dict[tuple[str, str], pd.DataFrame], folder: str | Path) -> None:
    """One CSV per leaderboard: tables/leaderboard__<dataset>__<protocol>.csv."""
    from metarec_lib.io import atomic_write_csv

    for (dataset, protocol), board in all_boards.items():
        atomic_write_csv(Path(folder) / f"leaderboard__{dataset}__{protocol}.csv", board)


def render(all_boards: dict[tuple[str, str], pd.DataFrame]) -> list:
    """Markdown headings and compact tables, for `display(*render(boards))` in a notebook."""
    from IPython.display import Markdown

    items: list = []
    for (dataset, protocol), board in all_boards.items():
        metric = primary_metric(protocol)
        items.append(
            Markdown(f"### {dataset} · `{protocol}` · {metric} (mean ± 95% CI half-width)")
        )
        items.append(summary_table(board, metric))
    return items


def narrative(
    all_boards: dict[tuple[str, str], pd.DataFrame],
    targets: dict[tuple[str, str, str], tuple[str, float]] | None = None,
    model_targets: dict[tuple[str, str, str, str], tuple[str, float]] | None = None,
) -> str:
    """Sentences with the numbers, printed by code: who wins, who ties, targets met or not.

    `targets` apply to the best model of a board, `model_targets` (keyed by data set,
    protocol, model, metric) to one named model.
    """
    lines = []
    for (dataset, protocol), board in all_boards.items():
        if board.empty:
            continue
        metric = primary_metric(protocol)
        best = board.iloc[0]
        text = (f"- **{dataset} / {protocol}**: best is **{best['model']}** ({best['family']}) "
                f"with {metric} {best['mean']:.4f} (95% CI {best['ci_low']:.4f}–"
                f"{best['ci_high']:.4f}, {int(best['n'])} runs)")  # fmt: skip
        if "significant" in board:
            text += _ties_text(board)
        target = (targets or {}).get((dataset, protocol, metric))
        if target:
            op, value = target
            met = best["mean"] <= value if op == "<=" else best["mean"] >= value
            text += f". Target {metric} {op} {value}: **{'met' if met else 'not met'}**"
        for (d, p, model, m), (op, value) in (model_targets or {}).items():
            row = board[board["model"] == model]
            if (d, p, m) != (dataset, protocol, metric) or row.empty:
                continue
            mean = float(row["mean"].iloc[0])
            met = mean <= value if op == "<=" else mean >= value
            text += (f". Target for {model}: {metric} {op} {value}, measured {mean:.4f}: "
                     f"**{'met' if met else 'not met'}**")  # fmt: skip
        lines.append(text + ".")
    return "\n".join(lines)


def _ties_text(board: pd.DataFrame) -> str:
    """The models of a tested board that are not significantly worse than rank 1 (its paired
    test's `significant`), and those that were not tested (no per-user values)."""
    others = board[~board["is_best"].fillna(False).astype(bool)]
    untested = others[others["wilcoxon_p_holm"].isna()]["model"].tolist()
    tested = others[others["wilcoxon_p_holm"].notna()]
    ties = tested[~tested["significant"].astype(bool)]["model"].tolist()
    if ties:
        text = (f"; not significantly worse (Holm-corrected Wilcoxon across users, p ≥ 0.05, "
                f"or a per-user mean no worse): {', '.join(ties)}")  # fmt: skip
    elif len(tested):
        text = (
            "; every other model tested is significantly worse (Holm-corrected Wilcoxon, p < 0.05)"
        )
    else:
        text = ""
    if untested:
        text += f"; not tested (no paired per-user values): {', '.join(untested)}"
    return text


def head_to_head(out: str | Path, dataset: str, protocol: str, model: str,
                 others: list[str]) -> str:  # fmt: skip
    """One sentence: does `model` beat each of `others` on this board (per-user Wilcoxon,
    Holm-corrected over `others`)? Models that did not run are named as missing."""
    metric = primary_metric(protocol)
    out = Path(out)
    mine = per_user_means(out, dataset, protocol, model, metric)
    if mine.empty:
        return f"- {dataset} / {protocol}: {model} did not run."
    rows = []
    for other in others:
        theirs = per_user_means(out, dataset, protocol, other, metric)
        if theirs.empty:
            continue
        users = sorted(set(mine.index) & set(theirs.index))
        test = paired_test(mine.reindex(users).to_numpy(), theirs.reindex(users).to_numpy())
        rows.append((other, test["mean_diff"], test["wilcoxon_p"]))
    if not rows:
        return f"- {dataset} / {protocol}: none of {others} ran."
    adjusted, words = outcomes([r[1] for r in rows], [r[2] for r in rows], metric)
    verbs = {"wins": "beats", "loses": "loses to", "tie": "ties with"}
    parts = [f"{verbs[word]} {other} ({metric} difference {diff:+.4f}, Holm p = {p:.2g})"
             for (other, diff, _), p, word in zip(rows, adjusted, words, strict=True)]  # fmt: skip
    verdict = "yes" if all(words == "wins") else "no"
    return f"- {dataset} / {protocol}: {model} " + "; ".join(parts) + f". Beats all: **{verdict}**."


def versus_reference(board: pd.DataFrame, out: str | Path, dataset: str, protocol: str,
                     family: str, *, metric: str | None = None,
                     reference: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Every model of `family` against the best model of the OTHER families on one board, or
    against the model named `reference` (then the family's other models are the challengers).

    `metric` is the board's metric (default: the protocol's primary one). Returns one row per
    challenger: model, mean, reference, reference_mean, diff (challenger - reference, per-user
    means over seeds), wilcoxon_p and its Holm adjustment over the challengers, and outcome:
    "wins" / "loses" (Holm p < 0.05, by the sign of diff) or "tie". Empty when the board lacks
    either side.
    """
    metric = metric or primary_metric(protocol)
    if board.empty:
        return pd.DataFrame()
    if reference is None:
        mine, others = board[board["family"] == family], board[board["family"] != family]
    else:
        mine = board[(board["family"] == family) & (board["model"] != reference)]
        others = board[board["model"] == reference]
    if mine.empty or others.empty:
        return pd.DataFrame()
    better = higher_is_better(metric)
    reference = others.sort_values("mean", ascending=not better).iloc[0]
    ref_user = per_user_means(Path(out), dataset, protocol, reference["model"], metric)
    if ref_user.empty:  # no per-user values (e.g. auc): no paired test
        return pd.DataFrame()
    rows = []
    for _, row in mine.iterrows():
        user = per_user_means(Path(out), dataset, protocol, row["model"], metric)
        users = sorted(set(user.index) & set(ref_user.index))
        test = paired_test(user.reindex(users).to_numpy(), ref_user.reindex(users).to_numpy())
        rows.append({"dataset": dataset, "protocol": protocol, "metric": metric,
                     "model": row["model"], "mean": row["mean"],
                     "reference": reference["model"], "reference_mean": reference["mean"],
                     "diff": test["mean_diff"], "n_users": test["n"],
                     "wilcoxon_p": test["wilcoxon_p"]})  # fmt: skip
    table = pd.DataFrame(rows)
    table["wilcoxon_p_holm"], table["outcome"] = outcomes(table["diff"], table["wilcoxon_p"],
                                                          metric)  # fmt: skip
    return table


def outcomes(
    diffs: npt.ArrayLike, p_values: npt.ArrayLike, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(Holm-adjusted p, outcome) of challengers each tested against one reference: "wins" /
    "loses" where the adjusted p < 0.05, by the sign of the mean difference (challenger -
    reference) in `metric`'s better direction, else "tie". The one rule of every win and loss
    the study and its benchmarks print."""
    adjusted = holm(np.asarray(p_values, dtype=float))
    sign = np.sign(np.asarray(diffs, dtype=float)) * (1 if higher_is_better(metric) else -1)
    # A zero mean difference is a tie whatever p says: the signed-rank test can reject on
    # per-user differences that cancel in the mean, and neither side is then better on average.
    words = np.where((adjusted < 0.05) & (sign != 0), np.where(sign > 0, "wins", "loses"), "tie")
    return adjusted, words


def share_verdict(n_for: int, n_against: int, n: int) -> str:
    """supported when the claim holds on >= 2/3 of n boards, not supported when it fails on
    >= 2/3, mixed otherwise; not testable here with no board. The one rule of every verdict
    the study prints, in the family notebooks and in the report's claims table."""
    if n == 0:
        return "not testable here"
    if n_for >= MAJORITY * n:
        return "supported"
    if n_against >= MAJORITY * n:
        return "not supported"
    return "mixed"


def family_verdict(comparisons: pd.DataFrame, family: str, claim: str) -> str:
    """Markdown verdict on a claim that `family` beats the others, from `versus_reference` rows.

    Rule (printed with the verdict; the report's, `share_verdict`): supported when the family's
    best model wins on >= 2/3 of the boards, not supported when it ties or loses on >= 2/3 (a
    tie is no evidence that it is better), mixed otherwise.
    """
    if comparisons.empty:
        return f"No board compares the {family} family with another family; nothing to say."
    lines, outcomes = [], []
    boards = comparisons.groupby(["dataset", "protocol", "metric"], sort=False)
    for (dataset, protocol, _), rows in boards:
        better = higher_is_better(rows["metric"].iloc[0])
        best = rows.sort_values("mean", ascending=not better).iloc[0]
        outcomes.append(best["outcome"])
        verb = {"wins": "beats", "loses": "loses to", "tie": "ties with"}[best["outcome"]]
        lines.append(
            f"- **{dataset} / {protocol}**: the best {family} model, **{best['model']}** "
            f"({best['metric']} {best['mean']:.4f}), {verb} the best other model "
            f"**{best['reference']}** ({best['reference_mean']:.4f}); per-user difference "
            f"{best['diff']:+.4f}, Holm-corrected Wilcoxon p = {best['wilcoxon_p_holm']:.2g}, "
            f"{int(best['n_users'])} users."
        )
    wins, ties, losses = (outcomes.count(o) for o in ("wins", "tie", "loses"))
    verdict = share_verdict(wins, ties + losses, len(outcomes))
    head = (f"**Claim:** {claim}\n\n**Verdict: {verdict}** — on {len(outcomes)} boards the best "
            f"{family} model wins {wins}, ties {ties} and loses {losses} against the best model of "
            f"the other families (rule, as in the report: supported if it wins on at least 2/3 "
            f"of the boards, not supported if it ties or loses on at least 2/3, mixed otherwise; "
            f"a win or loss needs Holm p < 0.05).")  # fmt: skip
    return head + "\n\n" + "\n".join(lines)
