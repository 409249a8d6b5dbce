"""Sanity floors for the data cards: Random and MostPop on `topn-75-25` for every data set.

They tell a reader how hard each data set is before any real model runs, and they exercise the
whole results contract (metrics, costs, top-K lists, splits) in the first notebook.
"""

from __future__ import annotations

import pandas as pd

from metarec_lib.data.dataset import Dataset
from metarec_lib.models.popularity import MostPop, Random
from metarec_lib.notebook import NotebookConfig
from metarec_lib.protocols import split_factory
from metarec_lib.runner import Experiment

PROTOCOL = "topn-75-25"


def run_floors(data: dict[str, Dataset], config: NotebookConfig) -> pd.DataFrame:
    """Run Random and MostPop on `topn-75-25` for every data set and seed; long metric rows."""
    exp = Experiment(config.stem, config.results_dir)
    with exp.deferred_tables():  # the tables once, complete (an interruption leaves the old)
        frames = [
            exp.run(ds, PROTOCOL, split_factory(PROTOCOL, ds), [Random(), MostPop()], config.seeds)
            for ds in data.values()
        ]
    return pd.concat(frames, ignore_index=True)


def floors_narrative(table: pd.DataFrame, cards: pd.DataFrame) -> str:
    """Sentences whose numbers come from the aggregated floors table and the data cards."""
    ndcg = table[table["metric"] == "ndcg@10"].set_index(["dataset", "model"])
    lines = []
    for dataset in ndcg.index.get_level_values("dataset").unique():
        pop, rnd = ndcg.loc[(dataset, "MostPop")], ndcg.loc[(dataset, "Random")]
        card = cards.loc[dataset]
        lines.append(
            f"- **{dataset}**: MostPop reaches NDCG@10 {pop['mean']:.3f} "
            f"(95% CI {pop['ci_low']:.3f}–{pop['ci_high']:.3f}, {int(pop['n'])} seeds) against "
            f"{rnd['mean']:.3f} for Random, {pop['mean'] / max(rnd['mean'], 1e-12):.0f}× better: "
            f"{card['share_of_ratings_top20pct_items']:.0%} of the ratings fall on the 20% most "
            f"rated items (Gini {card['item_popularity_gini']:.2f}), so popularity alone is a "
            f"strong signal that every later model must beat."
        )
    return "\n".join(lines)
