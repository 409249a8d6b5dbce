"""Fold-in: the matrix-factorisation competitors of the user cold-start protocol.

In a cold-start split, `train.cold_users` marks new users whose rows in `train` are only their
k-rating support sets. A plain factor model would train on those rows like any other; fold-in
is the classic way to serve a new user without retraining (Sarwar et al. 2002, "Incremental
singular value decomposition algorithms for highly scalable recommender systems"): fit the
model on the WARM users alone, then give each new user the answer of the model's own user
step, a regularised least-squares solve on their support with the item side held fixed.
So the item side never sees a support rating, and a cold user costs one small solve.

- `BiasedMFFoldIn`: `BiasedMF` (ALS) on warm rows; each cold user's (b_u, p_u) from
  `ridge_half_step` on their support (same `reg`, `reg_bias`, frequency-scaled penalty).
- `IALSFoldIn` ("iALSFoldIn"): `IALS` on warm users only; each cold user's vector from the
  exact implicit-ALS user step (`solve_exact`) with the model's confidences and the
  frequency-scaled penalty of training (the warm users' mean weight).

All cold users are solved in one batched call of the base model's solver. With `cold_users`
None or empty both are exactly their base model. While training with `valid` (tuning marks
the meta-validation users cold), early stopping scores the cold users folded in against each
sweep's item factors, so the sweep kept is the best one for new users; that fold-in never
reaches the item side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.als import IALS, _total_weight, row_regularisation, solve_exact
from metarec_lib.models.registry import register
from metarec_lib.models.svd import BiasedMF, ridge_half_step


def cold_user_indices(train: Interactions, model: str) -> npt.NDArray[np.int64]:
    """The distinct dense indices of `train.cold_users`, sorted (empty when None).

    ValueError naming `cold_users` when they are not integers in 0..n_users-1.
    """
    if train.cold_users is None:
        return np.empty(0, np.int64)
    raw = np.asarray(train.cold_users)
    if raw.size == 0:
        return np.empty(0, np.int64)
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(
            f"{model}: train.cold_users must be a 1-d array of integer user indices; "
            f"got shape {raw.shape}, dtype {raw.dtype}"
        )
    if raw.min() < 0 or raw.max() >= train.n_users:
        raise ValueError(
            f"{model}: train.cold_users holds indices {raw.min()}..{raw.max()}; "
            f"expected dense user indices 0..{train.n_users - 1}"
        )
    return np.unique(raw).astype(np.int64)


def split_cold(
    train: Interactions, cold: npt.NDArray[np.int64], model: str
) -> tuple[pd.DataFrame, Interactions]:
    """(warm rows of `train.frame`, support) for sorted distinct `cold` user indices.

    support: the cold users' rows as Interactions over the same catalogue whose user j is
    cold[j] (one row of the batched fold-in per cold user). ValueError when no warm rating is
    left to fit the item side on.
    """
    frame = train.frame
    is_cold = np.isin(frame["user"].to_numpy(np.int64), cold)
    warm = frame[~is_cold].reset_index(drop=True)
    if len(warm) == 0:
        raise ValueError(
            f"{model}: every rating in train belongs to a user in train.cold_users; fold-in "
            "needs warm users' ratings to fit the item factors"
        )
    support = frame[is_cold].reset_index(drop=True)
    support["user"] = np.searchsorted(cold, support["user"].to_numpy(np.int64))
    return warm, Interactions(support, len(cold), train.n_items)


def _check_support(support: Interactions, n_items: int, model: str) -> None:
    if support.n_items != n_items:
        raise ValueError(
            f"{model}: support has {support.n_items} items; the model was fitted on {n_items}"
        )


@register
class BiasedMFFoldIn(BiasedMF):
    """`BiasedMF` on warm users; cold users' (b_u, p_u) by fold-in on their support.

    Same hyperparameters, defaults and search space as `BiasedMF` (the same dicts), so tuned
    values carry over. The warm fit is exactly `BiasedMF` on the warm rows: mu_ and the
    rating range come from them, and a cold user's empty warm row takes no part in any sweep.
    Fitted attributes as `BiasedMF`; cold users' rows of user_bias_ / user_factors_ hold their
    fold-in solutions.
    """

    name = "BiasedMFFoldIn"

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        cold = cold_user_indices(train, self.name)
        if len(cold) == 0:
            super()._fit(train, valid=valid, seed=seed)
            return
        warm, support = split_cold(train, cold, self.name)
        warm_train = Interactions(warm, train.n_users, train.n_items, train.users, train.items)
        self._pending: tuple[npt.NDArray[np.int64], Interactions] | None = (cold, support)
        try:
            super()._fit(warm_train, valid=valid, seed=seed)
        finally:
            self._pending = None
        self._fold_in_cold(cold, support)

    def _early_stopping(self, valid: Interactions | None, epoch: int, state: object) -> bool:
        # Score the cold users as they would be served after this sweep. In place: `state`
        # holds these very arrays; the next user half-step rebuilds them from the warm rows,
        # and the item half-step never reads a cold row, so nothing leaks into the items.
        pending = getattr(self, "_pending", None)
        if pending is not None and valid is not None and len(valid) > 0:
            self._fold_in_cold(*pending)
        return super()._early_stopping(valid, epoch, state)

    def fold_in_users(
        self, support: Interactions
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(b (n,), p (n, k)) of every user of `support` from their rows, item side fixed.

        One batched ALS user half-step (`ridge_half_step`, the model's own, with its reg and
        reg_bias); `BiasedMF.fold_in` is the same for one user. Users without rows get zeros.
        """
        _check_support(support, self.n_items_, self.name)
        return ridge_half_step(
            support.matrix(), self.item_factors_, self.item_bias_, self.mu_,
            float(self.params["reg"]), float(self.params["reg_bias"]),
        )  # fmt: skip

    def _fold_in_cold(self, cold: npt.NDArray[np.int64], support: Interactions) -> None:
        bias, factors = self.fold_in_users(support)
        self.user_bias_[cold] = bias
        self.user_factors_[cold] = factors


@register
class IALSFoldIn(IALS):
    """`IALS` on warm users only; cold users' vectors by the exact iALS user step.

    Same hyperparameters, defaults and search space as `IALS` (the same dicts). The warm fit
    is `IALS` on the warm users (those with a non-cold row) re-indexed 0..n_warm-1: implicit
    ALS counts every user as zeros on unseen items, so a cold user left in with an empty row,
    or a catalogue user with no row at all, would still enter the item steps (through its
    random initial vector, the conjugate-gradient remainders and the mean user weight);
    re-indexed, the item factors are those of iALS on the warm users alone, however many
    users the catalogue has. Cold users are then solved exactly (also with solver="cg", as
    `IALS.fold_in`); users with no row at all get zero vectors. Fitted attributes as `IALS`,
    over all n_users; mean_user_weight_ is the warm users' mean.
    """

    name = "iALSFoldIn"

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        cold = cold_user_indices(train, self.name)
        if len(cold) == 0:
            super()._fit(train, valid=valid, seed=seed)
            return
        warm, support = split_cold(train, cold, self.name)
        # Only users with warm rows: a catalogue user with none (a meta-train user outside
        # the pool, a test user with too few ratings for k) would enter the fit as an empty row.
        warm_users = np.unique(warm["user"].to_numpy(np.int64))
        warm["user"] = np.searchsorted(warm_users, warm["user"].to_numpy(np.int64))
        compact = Interactions(warm, len(warm_users), train.n_items)
        self._pending: tuple[Any, ...] | None = (warm_users, cold, support)
        self._expanded: tuple[Any, ...] | None = None
        try:
            super()._fit(compact, valid=valid, seed=seed)
            self.user_factors_ = self._expand(warm_users, cold, support)
        finally:
            self._pending = self._expanded = None

    def _expand(
        self, warm_users: npt.NDArray[np.int64], cold: npt.NDArray[np.int64], support: Interactions
    ) -> np.ndarray:
        """All n_users vectors: the warm fit's (compact) rows in place, cold users folded in."""
        full = np.zeros((self.n_users_, self.item_factors_.shape[1]), self.item_factors_.dtype)
        full[warm_users] = self.user_factors_
        full[cold] = self.fold_in_users(support)
        return full

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        factors = self.user_factors_
        pending = getattr(self, "_pending", None)
        if pending is not None:
            # Early stopping inside the warm fit: user_factors_ is still compact. Expand once
            # per sweep (cached on the arrays' identity); the fit itself never sees the result.
            key = (self.user_factors_, self.item_factors_)
            cached = self._expanded
            if cached is None or cached[0] is not key[0] or cached[1] is not key[1]:
                self._expanded = cached = (*key, self._expand(*pending))
            factors = cached[2]
        return factors[users] @ self.item_factors_.T

    def fold_in_users(self, support: Interactions) -> np.ndarray:
        """Vectors (n, f) of every user of `support` from their rows, item factors fixed.

        One batched exact user step (`solve_exact`) on the model's own confidences
        (`_confidence_matrix`) with the training penalty reg * m * (w_u / m)^reg_exponent,
        w_u the user's total weight and m the warm users' mean (mean_user_weight_);
        `IALS.fold_in` is the same for one user. Users without rows get zeros.
        """
        _check_support(support, self.n_items_, self.name)
        p = self.params
        conf = self._confidence_matrix(support)
        weight = _total_weight(conf, self.n_items_)
        reg = row_regularisation(
            weight, float(p["reg"]), float(p["reg_exponent"]), self.mean_user_weight_
        ).astype(self.item_factors_.dtype)
        return solve_exact(conf, self.item_factors_, reg)
