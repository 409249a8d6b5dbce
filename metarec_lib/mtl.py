"""Reading a multi-task run: one leaderboard per task metric, each multi-task model against
`SingleTask` with paired tests, whether any model improves both tasks at once, and which experts
each task's gate uses.

The interest task is read on ndcg@10 (ranking every item, so the top-N models sit on the same
board), auc and logloss; the rating task on rmse and mae. A win or a loss needs a
Holm-corrected Wilcoxon p < 0.05 across users (auc is one number per run, so it has no paired
test: its board shows the 95% CI over seeds only).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metarec_lib.io import atomic_write_csv
from metarec_lib.leaderboard import higher_is_better, leaderboard, summary_table, versus_reference

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "interest": ("ndcg@10", "auc", "logloss"),
    "rating": ("rmse", "mae"),
}
HEADLINE = {"interest": "ndcg@10", "rating": "rmse"}  # the seesaw's axes
BASELINE = "SingleTask"

Boards = dict[tuple[str, str], pd.DataFrame]  # (dataset, metric) -> leaderboard


def task_boards(out: str | Path, protocol: str = "mtl-75-25") -> Boards:
    """Every (data set, metric) leaderboard of a multi-task protocol, metrics of both tasks."""
    out = Path(out)
    metrics = pd.read_csv(out / "metrics.csv")
    metrics = metrics[metrics["protocol"] == protocol]
    boards: Boards = {}
    for dataset in metrics["dataset"].drop_duplicates():
        present = set(metrics.loc[metrics["dataset"] == dataset, "metric"])
        for names in TASK_METRICS.values():
            for metric in (m for m in names if m in present):
                boards[(dataset, metric)] = leaderboard(out, dataset, protocol, metric)
    return boards


def save_task_boards(boards: Boards, folder: str | Path, protocol: str = "mtl-75-25") -> None:
    """tables/leaderboard__<dataset>__<protocol>__<metric>.csv, one per board."""
    for (dataset, metric), board in boards.items():
        atomic_write_csv(Path(folder) / f"leaderboard__{dataset}__{protocol}__{metric}.csv", board)


def render(boards: Boards, protocol: str = "mtl-75-25") -> list:
    """Markdown headings and compact tables per task, for `display(*render(boards))`."""
    from IPython.display import Markdown

    items: list = []
    for task, names in TASK_METRICS.items():
        for (dataset, metric), board in boards.items():
            if metric in names and not board.empty:
                direction = "higher" if higher_is_better(metric) else "lower"
                title = (f"### {task} · {dataset} · `{protocol}` · {metric} "
                         f"({direction} is better; mean ± 95% CI half-width)")  # fmt: skip
                items.append(Markdown(title))
                items.append(summary_table(board, metric))
    return items


def versus_single_task(boards: Boards, out: str | Path, protocol: str = "mtl-75-25",
                       baseline: str = BASELINE) -> pd.DataFrame:  # fmt: skip
    """Every multi-task model against `baseline` on every board with per-user values (Holm over
    the models of a board): `versus_reference` rows plus a `task` column."""
    frames = []
    for (dataset, metric), board in boards.items():
        table = versus_reference(board, out, dataset, protocol, "multitask", metric=metric,
                                 reference=baseline)  # fmt: skip
        if not table.empty:
            task = next(t for t, names in TASK_METRICS.items() if metric in names)
            frames.append(table.assign(task=task))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def best_per_task(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The best multi-task model of each (data set, metric) board against the baseline."""
    if comparisons.empty:
        return comparisons
    rows = []
    for _, board in comparisons.groupby(["dataset", "metric"], sort=False):
        better = higher_is_better(board["metric"].iloc[0])
        rows.append(board.sort_values("mean", ascending=not better).iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


def both_tasks(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per (data set, model): the outcome against the baseline on each task's headline metric
    (ndcg@10, rmse) and `improves_both` (a significant win on both)."""
    if comparisons.empty:
        return pd.DataFrame()
    head = comparisons[comparisons["metric"].isin(HEADLINE.values())]
    wide = head.pivot_table(index=["dataset", "model"], columns="task", values="outcome",
                            aggfunc="first").reset_index()  # fmt: skip
    wide.columns.name = None
    for task in HEADLINE:
        if task not in wide:
            wide[task] = "missing"
    wide["improves_both"] = (wide["interest"] == "wins") & (wide["rating"] == "wins")
    return wide[["dataset", "model", "interest", "rating", "improves_both"]]


def verdict(comparisons: pd.DataFrame, baseline: str = BASELINE) -> str:
    """Markdown: per data set and task the best multi-task model against the baseline, then
    whether any model improves both tasks at once (PLE's claim), with the numbers."""
    if comparisons.empty:
        return f"No board compares a multi-task model with {baseline}; nothing to say."
    verbs = {"wins": "beats", "loses": "loses to", "tie": "ties with"}
    lines = []
    for _, row in best_per_task(comparisons).iterrows():
        lines.append(
            f"- **{row['dataset']} · {row['task']} · {row['metric']}**: the best multi-task "
            f"model, **{row['model']}** ({row['mean']:.4f}), {verbs[row['outcome']]} "
            f"{baseline} ({row['reference_mean']:.4f}); per-user difference {row['diff']:+.4f}, "
            f"Holm-corrected Wilcoxon p = {row['wilcoxon_p_holm']:.2g}, {int(row['n_users'])} "
            f"users."
        )
    both = both_tasks(comparisons)
    winners = both[both["improves_both"]]
    summary = ", ".join(f"{r.model} on {r.dataset}" for r in winners.itertuples()) or "none"
    rows = []
    for dataset, group in comparisons[comparisons["metric"].isin(HEADLINE.values())].groupby(
        "dataset", sort=False
    ):
        for model, mine in group.groupby("model", sort=False):
            cells = {m: mine[mine["metric"] == m] for m in HEADLINE.values()}
            text = "; ".join(
                f"{m} {c['diff'].iloc[0]:+.4f} ({c['outcome'].iloc[0]})"
                for m, c in cells.items() if len(c)
            )  # fmt: skip
            rows.append(f"  - {dataset} · {model}: {text}")
    head = (f"**Does any multi-task model improve both tasks at once** (a significant win over "
            f"{baseline} on ndcg@10 and on rmse)? **{'yes' if len(winners) else 'no'}**: "
            f"{summary}. Differences against {baseline}:")  # fmt: skip
    return "\n".join(lines) + "\n\n" + head + "\n" + "\n".join(rows)


def seesaw_points(boards: Boards, dataset: str) -> pd.DataFrame:
    """Models with both headline metrics on `dataset`: model, family, ndcg@10, rmse (means)."""
    x, y = HEADLINE["interest"], HEADLINE["rating"]
    a, b = boards.get((dataset, x)), boards.get((dataset, y))
    if a is None or b is None or a.empty or b.empty:
        return pd.DataFrame(columns=["model", "family", x, y])
    left = a[["model", "family", "mean"]].rename(columns={"mean": x})
    right = b[["model", "mean"]].rename(columns={"mean": y})
    return left.merge(right, on="model")


def references(boards: Boards, dataset: str, family: str = "multitask") -> dict[str, tuple]:
    """The best model of the other families per headline metric: {metric: (model, mean)}."""
    out = {}
    for metric in HEADLINE.values():
        board = boards.get((dataset, metric))
        if board is None or board.empty:
            continue
        others = board[board["family"] != family]
        if len(others):
            best = others.sort_values("mean", ascending=not higher_is_better(metric)).iloc[0]
            out[metric] = (best["model"], float(best["mean"]))
    return out


def gate_usage(out: str | Path, protocol: str = "mtl-75-25") -> pd.DataFrame:
    """Mean gate weight per (dataset, model, task, expert) over seeds, from the `gates/` files
    the runner writes for MMoE and PLE; columns dataset, model, task, expert, weight, seeds."""
    frames = []
    for path in sorted(Path(out, "gates").glob(f"*__{protocol}__*__seed*.csv.gz")):
        dataset, _, model, seed = path.name[: -len(".csv.gz")].split("__")
        frames.append(pd.read_csv(path).assign(dataset=dataset, model=model, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["dataset", "model", "task", "expert", "weight", "seeds"])
    table = pd.concat(frames, ignore_index=True)
    grouped = table.groupby(["dataset", "model", "task", "expert"], sort=False)
    return grouped.agg(weight=("weight", "mean"), seeds=("seed", "nunique")).reset_index()
