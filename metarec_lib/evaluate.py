"""Validation scores for early stopping and tuning (never computed on test data)."""

from __future__ import annotations

import numpy as np

from metarec_lib.data.dataset import Interactions
from metarec_lib.metrics import ranking_metrics, rating_metrics
from metarec_lib.models.base import Recommender


def ndcg_on(model: Recommender, valid: Interactions, k: int = 10) -> float:
    """Mean NDCG@k of a fitted model over the users of `valid` (full ranking, seen excluded)."""
    users = np.unique(valid.frame["user"].to_numpy())
    if len(users) == 0:
        return float("nan")
    top, _ = model.recommend(users, k)
    relevant = valid.matrix(binary=True)[users]
    return float(np.nanmean(ranking_metrics(top, relevant, ks=(k,), names=("ndcg",))[f"ndcg@{k}"]))


def rmse_on(model: Recommender, valid: Interactions) -> float:
    """RMSE of a fitted rating model on the (user, item, rating) rows of `valid`."""
    f = valid.frame
    pred = model.predict(f["user"].to_numpy(), f["item"].to_numpy())
    return rating_metrics(f["rating"].to_numpy(), pred)["rmse"]


def score_on(model: Recommender, valid: Interactions, kind: str) -> float:
    """The validation score tuning ranks configurations by: "rmse", "ndcg@10", or "joint"
    (a multi-task model's own `validation_score`, both tasks at once)."""
    if kind == "joint":
        return float(model.validation_score(valid))
    if kind == "rmse":
        return float(rmse_on(model, valid))
    if kind == "ndcg@10":
        return ndcg_on(model, valid)
    raise ValueError(f"score_on: kind={kind!r}; expected 'rmse', 'ndcg@10' or 'joint'")
