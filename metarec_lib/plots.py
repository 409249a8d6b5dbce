"""Figures, each saved under `results/<stem>/figures/` and returned for display."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from metarec_lib import datacard
from metarec_lib.data.dataset import Dataset
from metarec_lib.io import atomic_write_bytes


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Save a figure as PNG and close it; returns the path (display it with IPython's Image).

    PNG metadata is fixed so reruns give the same bytes.
    """
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, bbox_inches="tight", format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def data_card_figure(ds: Dataset) -> plt.Figure:
    """Four panels: rating distribution, long-tail curve, user activity, genre shares."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    ratings = datacard.rating_distribution(ds)
    width = 0.4 if ds.rating_scale[0] == 0.5 else 0.8
    axes[0].bar(ratings.index.astype(float), ratings.to_numpy(), width=width, color="#4c72b0")
    axes[0].set(title="Rating distribution", xlabel="rating", ylabel="share of ratings")

    curve = datacard.popularity_curve(ds)
    axes[1].plot(curve["item_rank_share"], curve["cumulative_share"], color="#dd8452")
    axes[1].plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    axes[1].set(
        title=f"Long tail (Gini {datacard.gini(curve['ratings'].to_numpy()):.2f})",
        xlabel="share of items, most popular first",
        ylabel="cumulative share of ratings",
    )

    activity = datacard.user_activity(ds).to_numpy()
    bins = np.logspace(0, np.log10(max(activity.max(), 2)), 30)
    axes[2].hist(activity, bins=bins, color="#55a868")
    axes[2].set(xscale="log", title="User activity", xlabel="ratings per user (log)",
                ylabel="users")  # fmt: skip

    genres = datacard.genre_distribution(ds).head(20)
    if len(genres):
        axes[3].barh(genres.index[::-1], genres.to_numpy()[::-1], color="#8172b3")
        axes[3].tick_params(axis="y", labelsize=7)
    axes[3].set(title="Genre / category share of items", xlabel="share of items")
    fig.suptitle(f"{ds.name}: {len(ds.interactions):,} ratings, {ds.n_users:,} users, "
                 f"{ds.n_items:,} items")  # fmt: skip
    fig.tight_layout()
    return fig


def bar_metric(table, metric: str, *, by: Sequence[str] = ("dataset",), title: str = ""):
    """Bars of `metric` (mean with 95% CI columns ci_low/ci_high) per model, one panel per `by`."""
    groups = list(table.groupby(list(by))) if by else [((), table)]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.2), squeeze=False)
    for ax, (key, sub) in zip(axes[0], groups, strict=True):
        sub = sub[sub["metric"] == metric].sort_values("mean")
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        ax.barh(sub["model"], sub["mean"], xerr=np.nan_to_num(err), color="#4c72b0")
        ax.set(title=" / ".join(map(str, key if isinstance(key, tuple) else (key,))),
               xlabel=metric)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def data_card_figures(data: dict[str, Dataset], folder: str | Path) -> list[Path]:
    """One data-card figure per data set, saved as `<folder>/<name>.png`."""
    return [save(data_card_figure(ds), Path(folder) / f"{name}.png") for name, ds in data.items()]


def as_images(paths: Sequence[Path]) -> list:
    """IPython images of saved figures, for `display(*...)` in a notebook."""
    from IPython.display import Image

    return [Image(filename=str(p)) for p in paths]


FAMILY_COLOURS = {
    "content": "#8172b3", "collaborative": "#4c72b0", "deep": "#dd8452",
    "multitask": "#55a868", "transfer": "#c44e52", "meta": "#937860",
}  # fmt: skip


COST_LABELS = {
    "fit_seconds": "fit seconds (median over seeds, log)",
    "n_parameters": "learned parameters (log)",
    "peak_memory_mb": "peak memory MB (median over seeds, log)",
}


def cost_quality(board, metric: str, *, title: str = "", cost: str = "fit_seconds",
                 front: str | None = None) -> plt.Figure:  # fmt: skip
    """A cost column of a leaderboard (log scale) against a metric, one labelled point per
    model, coloured by family; models with no cost (0 parameters) sit at the left edge. With
    `front` (a boolean column of `board`), the Pareto front is drawn as a grey step line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    floor = 1e-4 if cost == "fit_seconds" else 1.0  # where a zero cost is drawn (log axis)
    if front is not None and board[front].any():
        pts = board[board[front].astype(bool)].sort_values(cost)
        ax.step(np.maximum(pts[cost].astype(float), floor), pts["mean"], where="post",
                color="grey", alpha=0.6, lw=1.5, label="Pareto front")  # fmt: skip
        ax.legend(fontsize=7, loc="best")
    for _, row in board.iterrows():
        colour = FAMILY_COLOURS.get(row["family"], "grey")
        x = max(float(row[cost]), floor)
        ax.errorbar(x, row["mean"],
                    yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
                    if np.isfinite(row["ci_high"]) else None,
                    fmt="o", color=colour, capsize=2)  # fmt: skip
        ax.annotate(row["model"], (x, row["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set(xscale="log", xlabel=COST_LABELS[cost], ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def popularity_bias(metrics, dataset: str, protocol: str, k: int = 10) -> plt.Figure:
    """Coverage@k and novelty@k against NDCG@k per model (means over seeds)."""
    sel = metrics[(metrics.dataset == dataset) & (metrics.protocol == protocol)]
    wide = sel.groupby(["family", "model", "metric"])["value"].mean().unstack("metric")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, other in zip(axes, (f"coverage@{k}", f"novelty@{k}"), strict=True):
        for (family, model), row in wide.iterrows():
            ax.scatter(row[f"ndcg@{k}"], row[other], color=FAMILY_COLOURS.get(family, "grey"))
            ax.annotate(model, (row[f"ndcg@{k}"], row[other]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set(xlabel=f"ndcg@{k}", ylabel=other, title=f"{dataset} / {protocol}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def family_figures(all_boards: dict, out: str | Path, *, parameters: bool = False) -> list[Path]:
    """Cost-versus-quality per board (and, with `parameters`, parameter count versus quality)
    and popularity bias for top-N boards, saved under `out/figures/`."""
    import pandas as pd

    out = Path(out)
    metrics = pd.read_csv(out / "metrics.csv")
    paths = []
    for (dataset, protocol), board in all_boards.items():
        if board.empty:
            continue
        metric = "rmse" if protocol.startswith("rating") else "ndcg@10"
        fig = cost_quality(board, metric, title=f"{dataset} / {protocol}")
        paths.append(save(fig, out / "figures" / f"cost_quality__{dataset}__{protocol}.png"))
        if parameters:
            fig = cost_quality(board, metric, title=f"{dataset} / {protocol}", cost="n_parameters")
            paths.append(save(fig, out / "figures" / f"params_quality__{dataset}__{protocol}.png"))
        if metric == "ndcg@10":
            fig = popularity_bias(metrics, dataset, protocol)
            paths.append(save(fig, out / "figures" / f"popularity__{dataset}__{protocol}.png"))
    return paths


def training_curves(curves, *, value: str = "valid", ylabel: str = "validation ndcg@10"):
    """Validation metric (or `value="loss"`) per epoch of each tuned model, one panel per
    (data set, protocol); curves come from `tables/training_curves.csv`."""
    keys = list(curves[["dataset", "protocol"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.6 * max(len(keys), 1), 3.6),
                             squeeze=False)  # fmt: skip
    for ax, (dataset, protocol) in zip(axes[0], keys, strict=False):
        sel = curves[(curves.dataset == dataset) & (curves.protocol == protocol)]
        for model, rows in sel.groupby("model"):
            rows = rows.dropna(subset=[value])
            if len(rows):
                ax.plot(rows["epoch"], rows[value], marker=".", label=model)
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"{dataset} / {protocol}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def seesaw(points, refs: dict, *, title: str = "", baseline: str = "SingleTask") -> plt.Figure:
    """The multi-task trade-off: each model at (interest ndcg@10, rating rmse), the better
    corner bottom right; `baseline`'s point marked, and the best other-family model per task
    (`refs`: {metric: (model, value)}) drawn as reference lines. `points` comes from
    `mtl.seesaw_points`."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for _, row in points.iterrows():
        single = row["model"] == baseline
        ax.scatter(row["ndcg@10"], row["rmse"], color=FAMILY_COLOURS.get(row["family"], "grey"),
                   marker="s" if single else "o", s=50 if single else 30, zorder=3)  # fmt: skip
        ax.annotate(row["model"], (row["ndcg@10"], row["rmse"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    if baseline in set(points["model"]):
        row = points[points["model"] == baseline].iloc[0]
        ax.axvline(row["ndcg@10"], color="grey", lw=0.8, ls=":")
        ax.axhline(row["rmse"], color="grey", lw=0.8, ls=":", label=f"{baseline} (each task)")
    if "ndcg@10" in refs:
        model, value = refs["ndcg@10"]
        ax.axvline(value, color="black", lw=1, ls="--", label=f"best top-N: {model}")
    if "rmse" in refs:
        model, value = refs["rmse"]
        ax.axhline(value, color="black", lw=1, ls="-.", label=f"best rating: {model}")
    ax.set(xlabel="interest ndcg@10 (higher is better)", ylabel="rating rmse (lower is better)",
           title=title)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def gate_usage(usage, *, title: str = "") -> plt.Figure:
    """Heat map of each task's mean gate weight per expert (one panel per model); `usage` is
    one data set's rows of `mtl.gate_usage`."""
    models = list(dict.fromkeys(usage["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), squeeze=False,
                             figsize=(4.2 * max(len(models), 1), 2.6))  # fmt: skip
    for ax, model in zip(axes[0], models, strict=False):
        rows = usage[usage["model"] == model]
        table = rows.pivot_table(index="task", columns="expert", values="weight", sort=False)
        ax.imshow(table.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
        for (i, j), w in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if w > 0.6 else "black")  # fmt: skip
        ax.set_title(f"{model} {title}".strip(), fontsize=9)
    fig.tight_layout()
    return fig


def line_panels(
    table,
    *,
    x: str,
    panels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title=None,
    dashed: str | Sequence[str] = (),
    xscale: str = "log",
) -> plt.Figure:
    """One panel per distinct value of the `panels` columns: the mean against `x`, one line per
    model with its 95% CI band (ci_low, ci_high) over seeds; the `dashed` models (references) in
    dashes, black then greys.
    `title(key)` names a panel (default: the key's values joined)."""
    import pandas as pd

    keys = list(table[list(panels)].drop_duplicates().itertuples(index=False, name=None))
    dashed = [dashed] if isinstance(dashed, str) else list(dashed)
    greys = ("black", "dimgray", "darkgray")
    n = max(len(keys), 1)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        mask = np.ones(len(table), dtype=bool)
        for column, value in zip(panels, key, strict=True):
            mask &= (table[column].isna() if pd.isna(value) else table[column] == value).to_numpy()
        for model, rows in table[mask].groupby("model", sort=False):
            rows = rows.sort_values(x)
            style = ({"ls": "--", "color": greys[dashed.index(model) % len(greys)]}
                     if model in dashed else {})  # fmt: skip
            (line,) = ax.plot(rows[x], rows["mean"], marker=".", label=model, **style)
            if rows["ci_high"].notna().any():
                ax.fill_between(rows[x], rows["ci_low"], rows["ci_high"], color=line.get_color(),
                                alpha=0.15)  # fmt: skip
        name = title(key) if title else " / ".join(str(v) for v in key)
        ax.set(xscale=xscale, xlabel=xlabel, ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def target_fraction_curves(table, *, reference: str | Sequence[str] = ("EASE", "MostPop"),
                           metric: str = "ndcg@10"):  # fmt: skip
    """The transfer figure: the metric against the target training fraction, one panel per
    (setting, relatedness), the non-transfer references dashed; `table` comes from
    `crossdomain.curves`."""
    import pandas as pd

    def title(key):
        setting, rel = key
        return setting if pd.isna(rel) else f"{setting}, relatedness {rel:g}"

    return line_panels(table, x="fraction", panels=("setting", "relatedness"),
                       xlabel="target training fraction", ylabel=metric, title=title,
                       dashed=reference)  # fmt: skip


def coldstart_curves(table, *, x: str = "k", xlabel: str = "support size k"):
    """The cold-start figure: one metric against the support size (or the meta-train pool),
    one panel per data set; `table` comes from `coldstart.curves`."""
    metric = table["metric"].iloc[0] if len(table) else ""
    return line_panels(table, x=x, panels=("dataset",), xlabel=xlabel, ylabel=metric)


def quintiles(table, *, metric: str = "ndcg@10", title: str = "") -> plt.Figure:
    """Who benefits: the metric by user-activity quintile, one line per family's best model;
    `table` comes from `summary.activity_quintiles`."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (family, model), rows in table.groupby(["family", "model"], sort=False):
        rows = rows.sort_values("quintile")
        ax.plot(rows["quintile"], rows["mean"], marker="o", label=f"{model} ({family})",
                color=FAMILY_COLOURS.get(family))  # fmt: skip
    ax.set(xlabel="user-activity quintile (1 = least active)", ylabel=metric, title=title,
           xticks=[1, 2, 3, 4, 5])  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
