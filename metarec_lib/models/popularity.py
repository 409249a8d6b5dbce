"""Sanity floors: `Random` and `MostPop`. Any model that does not beat MostPop learns nothing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import register
from metarec_lib.tuning import Choice


@register
class Random(Recommender):
    """Uniformly random scores, fixed per (seed, user): the floor every model must clear."""

    name = "Random"
    family = "collaborative"

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        self.seed_ = seed

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        # One generator per user so batching does not change a user's scores.
        return (
            np.vstack(
                [np.random.default_rng([self.seed_, int(u)]).random(self.n_items_) for u in users]
            )
            if len(users)
            else np.empty((0, self.n_items_))
        )


@register
class MostPop(Recommender):
    """Items ranked by how many training users interacted with them; same list for everyone.

    As a rating predictor it returns the item's mean training rating, shrunk to the global mean
    with `shrinkage` pseudo-ratings.
    """

    name = "MostPop"
    family = "collaborative"
    defaults = {"shrinkage": 10.0}
    space = {"shrinkage": Choice((0.0, 10.0, 100.0))}

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        counts = np.bincount(train.frame["item"].to_numpy(), minlength=train.n_items)
        self.popularity_ = counts.astype(np.float64)
        sums = np.bincount(
            train.frame["item"].to_numpy(),
            weights=train.frame["rating"].to_numpy(),
            minlength=train.n_items,
        )
        mu = float(train.frame["rating"].mean()) if len(train) else 0.0
        lam = float(self.params["shrinkage"])
        self.item_mean_ = (
            (sums + lam * mu) / (counts + lam)
            if lam > 0
            else np.where(counts > 0, sums / np.maximum(counts, 1), mu)
        )

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        n = len(np.asarray(users))
        return np.broadcast_to(self.popularity_, (n, self.n_items_)).copy()

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        return self.item_mean_[np.asarray(items, np.int64)]

    @property
    def n_parameters(self) -> int:
        return (
            int(self.popularity_.size + self.item_mean_.size) if hasattr(self, "popularity_") else 0
        )
