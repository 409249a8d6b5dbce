"""RP3beta: item-item random walks of length three on the user-item graph, popularity-damped.

Paudel, Christoffel, Newell & Bernstein 2017, "Updatable, accurate, diverse, and scalable
recommendations for interactive applications" (ACM TiiS 7(1)); P3alpha from Cooper et al. 2014
(WWW companion); as re-implemented and tuned in Dacrema et al. 2019 (RecSys).

With X (n_users, n_items) binary:
    P_ui = X with rows L1-normalised          (user -> item transition probabilities)
    P_iu = X^T with rows L1-normalised        (item -> user transition probabilities)
    W[i, j] = (P_iu^alpha @ P_ui^alpha)[i, j] / pop_j^beta    (powers taken elementwise)
Each row i keeps its `k` largest entries (i -> i is dropped: it only reaches seen items), and
is optionally L1-normalised. Score: X_u @ W.

As in the reference implementations (Cooper et al.'s P3alpha, Dacrema et al.'s code) `alpha`
is applied to each transition probability before the product, not to the product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender
from metarec_lib.models.knn import check_param, item_topk, support_row
from metarec_lib.models.registry import register
from metarec_lib.tuning import LogUniform, Uniform


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    """Rows divided by their sums (empty rows stay empty)."""
    sums = np.asarray(m.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(inv) @ m)


@register
class RP3beta(Recommender):
    """Popularity-damped three-step random walk item-item model (see module docstring).

    Hyperparameters:
        alpha: exponent on every transition probability (1 = plain random walk; < 1 flattens,
            > 1 sharpens towards low-degree users and items).
        beta: divides W[:, j] by pop_j^beta; 0 = P3alpha, larger values push less popular items.
        k: entries kept per item row of W.
        normalize: L1-normalise each row of W after pruning.
    """

    name = "RP3beta"
    family = "collaborative"
    defaults = {"alpha": 1.0, "beta": 0.5, "k": 200, "normalize": True}
    # Hand-tuned: best beta ~0.6 on ML-100K, ~0.4 on ml-latest-small; beta >= 0.9 collapses
    # (NDCG@10 < 0.2: items seen once win), so the range stops at 0.8.
    space = {
        "alpha": Uniform(0.0, 2.0),
        "beta": Uniform(0.0, 0.8),
        "k": LogUniform(10, 1000, integer=True),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        p = self.params
        alpha, beta, k = p["alpha"], p["beta"], p["k"]
        check_param(self.name, "alpha", alpha, float(alpha) >= 0, "a number >= 0")
        check_param(self.name, "beta", beta, float(beta) >= 0, "a number >= 0")
        check_param(self.name, "k", k, isinstance(k, (int, np.integer)) and k >= 1,
                    "an integer >= 1")  # fmt: skip
        normalize = p["normalize"]
        check_param(self.name, "normalize", normalize, isinstance(normalize, (bool, np.bool_)),
                    "True or False")  # fmt: skip
        x = train.matrix(binary=True)

        def make_block(xa: sp.csr_matrix) -> Callable[[int, int], np.ndarray]:
            p_ui = _row_normalised(xa)
            p_iu = _row_normalised(xa.T.tocsr())
            p_ui.data **= float(alpha)
            p_iu.data **= float(alpha)
            # float32 blocks: half the memory traffic in the top-k partition (see knn.py).
            p_ui, p_iu = p_ui.astype(np.float32), p_iu.astype(np.float32)
            popularity = np.asarray(xa.sum(axis=0)).ravel()  # (n_active,), all > 0
            damping = (1.0 / popularity ** float(beta)).astype(np.float32)

            def block(start: int, stop: int) -> np.ndarray:
                w = (p_iu[start:stop] @ p_ui).toarray() * damping[None, :]
                rows = np.arange(stop - start)
                w[rows, start + rows] = 0.0
                return w

            return block

        w = item_topk(x, int(k), make_block)
        if normalize:
            w = _row_normalised(w)
        self.x_ = x
        self.w_ = w

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return np.asarray((self.x_[users] @ self.w_).toarray(), dtype=np.float64)

    def score_items(
        self, support_items: npt.ArrayLike, weights: npt.ArrayLike | None = None
    ) -> np.ndarray:
        """Scores (n_items,) of a new user who interacted with `support_items` (no refit).

        `weights` default to 1 (the model is fitted on binary data); equals `score` of a
        training user with exactly those items.
        """
        row = support_row(self.name, support_items, weights, self.n_items_)
        return np.asarray((row @ self.w_).toarray(), dtype=np.float64).ravel()

    @property
    def n_parameters(self) -> int:
        return int(self.w_.nnz) if hasattr(self, "w_") else 0
