"""Reading a cold-start run: metric-versus-k and metric-versus-pool curves, and per board the
best meta-learning method against the best method of the other families (paired test).

Protocol names carry the support size and the warm-user pool (`coldstart-users@k=5`,
`coldstart-users@k=5,pool=0.25`, see `protocols.coldstart_variant`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metarec_lib.leaderboard import higher_is_better, leaderboard, versus_reference
from metarec_lib.protocols import coldstart_variant
from metarec_lib.stats import aggregate_frame

FAMILY = "meta"


def curves(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% CI over seeds per (dataset, k, pool, model) of one metric."""
    sel = metrics[(metrics["metric"] == metric) & metrics["protocol"].str.startswith("coldstart")]
    if sel.empty:
        return pd.DataFrame()
    table = aggregate_frame(sel, by=["dataset", "protocol", "family", "model"])
    variants = table["protocol"].map(coldstart_variant)
    table["k"] = [v[0] for v in variants]
    table["pool"] = [v[1] for v in variants]
    table["metric"] = metric
    return table.sort_values(["dataset", "model", "pool", "k"]).reset_index(drop=True)


def best_meta_versus_best_other(out: str | Path, metrics: pd.DataFrame,
                                metric: str = "ndcg@10") -> pd.DataFrame:  # fmt: skip
    """Per (dataset, protocol): the best meta-learning method against the best method of the
    other families on the same users (per-user values over seeds, Wilcoxon, Holm over the meta
    methods of the board; `versus_reference` rows of the best meta method) plus k and pool."""
    rows = []
    pairs = metrics.loc[metrics["protocol"].str.startswith("coldstart"), ["dataset", "protocol"]]
    for dataset, protocol in pairs.drop_duplicates().itertuples(index=False):
        board = leaderboard(out, dataset, protocol, metric)
        if board.empty or metric not in set(metrics["metric"]):
            continue
        table = versus_reference(board, out, dataset, protocol, FAMILY, metric=metric)
        if table.empty:
            continue
        best = table.sort_values("mean", ascending=not higher_is_better(metric)).iloc[0]
        k, pool = coldstart_variant(protocol)
        rows.append({**best.to_dict(), "k": k, "pool": pool})
    return pd.DataFrame(rows)


def narrative(comparisons: pd.DataFrame) -> str:
    """Markdown: per data set and k (and pool), does the best meta method beat the best
    non-meta method (Holm p < 0.05)? With the numbers."""
    if comparisons.empty:
        return "No cold-start board compares a meta-learning method with another family."
    verbs = {"wins": "beats", "loses": "loses to", "tie": "ties with"}
    lines = []
    for metric, group in comparisons.groupby("metric", sort=False):
        lines.append(f"**{metric}** (best meta method against the best non-meta method):")
        for row in group.sort_values(["dataset", "pool", "k"]).itertuples(index=False):
            pool = "" if row.pool == 1.0 else f", pool {row.pool:g}"
            answer = "yes" if row.outcome == "wins" else "no"
            lines.append(
                f"- {row.dataset}, k={row.k}{pool}: **{answer}**: {row.model} ({row.mean:.4f}) "
                f"{verbs[row.outcome]} {row.reference} ({row.reference_mean:.4f}); per-user "
                f"difference {row.diff:+.4f}, Holm p = {row.wilcoxon_p_holm:.2g}, "
                f"{int(row.n_users)} users."
            )
        wins = int((group["outcome"] == "wins").sum())
        lines.append(f"\nOn {metric} the best meta method wins {wins} of {len(group)} boards, "
                     f"ties {int((group['outcome'] == 'tie').sum())} and loses "
                     f"{int((group['outcome'] == 'loses').sum())}.\n")  # fmt: skip
    return "\n".join(lines)
