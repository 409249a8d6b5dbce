"""Neighbourhood models: ItemKNN and UserKNN with shrunk cosine similarity.

Item-based top-N (Sarwar et al. 2001, WWW; Deshpande & Karypis 2004, ACM TOIS) and user-based
CF (Herlocker et al. 1999, SIGIR), with the shrinkage and top-k pruning of the strong baselines
in Dacrema et al. 2019 ("Are we really making much progress?", RecSys):

    sim(a, b) = a . b / (|a| |b| + shrink)

where a, b are columns (items) or rows (users) of the binary (or rating) user x item matrix X.
Shrinkage damps similarities supported by few co-occurrences. Only the `k` largest positive
similarities of each item/user are kept, in a sparse matrix.

The helpers `keep_topk`, `blockwise_topk`, `item_topk`, `support_row` and `check_param` are
shared with `graph.py` and `ease.py` (the other item-item models). Similarities are computed in
float32 row blocks, so memory stays small whatever the catalogue size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from metarec_lib.data.dataset import Interactions
from metarec_lib.hashing import pair_hash
from metarec_lib.metrics import heap_selects
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import register
from metarec_lib.tuning import Choice, LogUniform, Uniform

# Rows of a dense similarity block computed at once: BLOCK_ENTRIES / n columns (16 MB float32).
# Blocks are float32: half the memory traffic of float64 in the partition that dominates fit time.
BLOCK_ENTRIES = 1 << 22


def check_param(model: str, name: str, value: object, ok: bool, expected: str) -> None:
    """Raise ValueError naming the model, hyperparameter, value and what was expected."""
    if not ok:
        raise ValueError(f"{model}: hyperparameter {name}={value!r}; expected {expected}")


def keep_topk(
    block: npt.NDArray[np.floating],
    k: int,
    rows: npt.NDArray[np.int64] | None = None,
    cols: npt.NDArray[np.int64] | None = None,
) -> sp.csr_matrix:
    """Sparse copy of `block` (rows, n) keeping each row's k largest POSITIVE entries.

    Ties at the k-th value keep the entries with the lowest `hashing.pair_hash(row, column)` of
    their ids (`rows`, `cols`: the block's row and column ids, default their positions): a
    fixed pseudo-random choice that favours no item and does not depend on how rows are grouped
    into blocks. (The lower column index, used before, kept the lowest item ids among the tied
    ones, in MovieLens the older, more-rated films; on a ml-latest-small split RP3beta's k-th
    neighbour ties for 56% of its items and ItemKNN's for 21%.) Returns CSR (rows, n), float64.
    """
    n_rows, n = block.shape
    keep = block > 0
    if k < n:
        kth = _kth_largest(block, k)
        keep &= block >= kth
        over = np.flatnonzero((keep.sum(axis=1) > k) & (kth[:, 0] > 0))  # ties at the k-th
        if over.size:
            keep[over] = _break_ties(block[over], kth[over], k, over if rows is None
                                     else rows[over], cols)  # fmt: skip
    r, c = np.nonzero(keep)  # row-major, so columns ascend within each row
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    data = block[r, c].astype(np.float64, copy=False)
    return sp.csr_matrix((data, c, indptr), shape=(n_rows, n))


def _kth_largest(block: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.floating]:
    """The k-th largest value of each row of `block` (k < n), as (rows, 1): by `torch.topk` for
    a small k (`metrics.heap_selects`), else by partitioning the negated block at k - 1, which
    is several times faster than at n - k when most entries are 0 (numpy's introselect on
    ties). Either way the same value, so the same neighbours."""
    if heap_selects(block.dtype, k, block.shape[1]):
        import torch

        top = torch.topk(torch.from_numpy(np.ascontiguousarray(block)), k, dim=1, sorted=False)
        return top.values.amin(dim=1, keepdim=True).numpy()
    return -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]


def _break_ties(
    sub: np.ndarray, kth: np.ndarray, k: int, row_ids: np.ndarray, cols: np.ndarray | None
) -> np.ndarray:
    """Keep mask of rows `sub` whose k-th value `kth` (rows, 1) is tied: every entry above it,
    then the tied ones in `pair_hash(row id, column id)` order up to k in all."""
    above = sub > kth
    need = k - above.sum(axis=1)
    r, c = np.nonzero(sub == kth)
    order = np.lexsort((pair_hash(row_ids[r], c if cols is None else cols[c]), r))
    r, c = r[order], c[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # place among its row's tied entries
    take = rank < need[r]
    above[r[take], c[take]] = True
    return above


def blockwise_topk(
    n_rows: int,
    n_cols: int,
    k: int,
    block_of: Callable[[int, int], np.ndarray],
    ids: npt.NDArray[np.int64] | None = None,
) -> sp.csr_matrix:
    """Stack `keep_topk(block_of(start, stop), k)` over row blocks: CSR (n_rows, n_cols).

    `block_of(start, stop)` returns the dense rows start..stop-1 of a similarity matrix; only
    one block is ever dense, so memory stays O(BLOCK_ENTRIES) whatever the catalogue size.
    `ids`: the ids of a square matrix's rows and columns, which break ties (default 0..n-1).
    """
    ids = np.arange(max(n_rows, n_cols)) if ids is None else np.asarray(ids, dtype=np.int64)
    step = max(1, BLOCK_ENTRIES // max(n_cols, 1))
    parts = [keep_topk(block_of(s, e), k, ids[s:e], ids[:n_cols])
             for s, e in ((s, min(s + step, n_rows)) for s in range(0, n_rows, step))]  # fmt: skip
    if not parts:
        return sp.csr_matrix((n_rows, n_cols))
    return sp.vstack(parts, format="csr")


def item_topk(
    x: sp.csr_matrix,
    k: int,
    make_block: Callable[[sp.csr_matrix], Callable[[int, int], np.ndarray]],
) -> sp.csr_matrix:
    """Item x item top-k matrix (n_items, n_items) computed over the items seen in `x` only.

    `make_block(x_active)` returns `block_of(start, stop)`, the dense rows start..stop-1 of the
    similarity among the active columns of `x` (see `blockwise_topk`). An item without training
    data has similarity 0 to everything, so it is never a neighbour: skipping it changes nothing
    and saves ~20% of the work on a ml-latest-small split. Ties are broken on the item indices,
    not the active positions, so skipping changes no choice.
    """
    n_items = x.shape[1]
    active = np.flatnonzero(np.diff(x.tocsc().indptr) > 0)
    x_active = x[:, active].tocsr()
    sub = blockwise_topk(len(active), len(active), k, make_block(x_active), active)
    if len(active) == n_items:
        return sub
    coo = sub.tocoo()
    return sp.csr_matrix((coo.data, (active[coo.row], active[coo.col])), shape=(n_items, n_items))


def support_row(
    model: str,
    support_items: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    n_items: int,
) -> sp.csr_matrix:
    """A new user's profile as a (1, n_items) CSR row: `weights` (default 1) at `support_items`.

    Repeated items have their weights summed. Errors name the model and the bad value.
    """
    items = np.asarray(support_items)
    if items.ndim != 1 or (items.size and not np.issubdtype(items.dtype, np.integer)):
        raise ValueError(
            f"{model}.score_items: support_items must be a 1-d array of item indices, "
            f"got dtype {items.dtype} shape {items.shape}"
        )
    items = items.astype(np.int64)
    if items.size and (items.min() < 0 or items.max() >= n_items):
        bad = items[(items < 0) | (items >= n_items)][0]
        raise ValueError(
            f"{model}.score_items: support item {int(bad)} out of range; expected 0..{n_items - 1}"
        )
    if weights is None:
        values = np.ones(len(items))
    else:
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != items.shape:
            raise ValueError(
                f"{model}.score_items: weights shape {values.shape} differs from "
                f"support_items shape {items.shape}"
            )
    row = sp.csr_matrix((values, (np.zeros(len(items), np.int64), items)), shape=(1, n_items))
    row.sum_duplicates()
    return row


def _shrunk_cosine(gram_rows: np.ndarray, norms_rows: np.ndarray, norms: np.ndarray,
                   shrink: float, start: int) -> np.ndarray:  # fmt: skip
    """Cosine with shrinkage of a Gram block (rows start.., all columns), self-similarity 0."""
    denom = norms_rows[:, None] * norms[None, :] + shrink
    # In place; where denom == 0 a norm is 0, so the Gram entry is already 0.
    sim = np.divide(gram_rows, denom, out=gram_rows, where=denom > 0)
    rows = np.arange(sim.shape[0])
    sim[rows, start + rows] = 0.0
    return sim


def _input_matrix(train: Interactions, binary: bool) -> sp.csr_matrix:
    return train.matrix(binary=binary).astype(np.float64).tocsr()


def _check_knn_params(model: str, params: dict) -> tuple[int, float]:
    k, shrink = params["k"], params["shrink"]
    check_param(model, "k", k, isinstance(k, (int, np.integer)) and k >= 1,
                "an integer >= 1")  # fmt: skip
    check_param(model, "shrink", shrink, float(shrink) >= 0, "a number >= 0")
    check_param(model, "binary", params["binary"], isinstance(params["binary"], (bool, np.bool_)),
                "True (binary interactions) or False (ratings as weights)")  # fmt: skip
    return int(k), float(shrink)


@register
class ItemKNN(Recommender):
    """Item-based k-nearest-neighbours top-N recommender.

    Fit: S = shrunk cosine between item columns of X (n_users, n_items); for each target item j
    keep its `k` most similar items; W (n_items, n_items) has W[i, j] = S[i, j] for i among j's
    neighbours. Score: X_u @ W, i.e. the summed similarity of j's neighbours the user has seen.

    Hyperparameters:
        k: neighbours kept per item (larger = smoother, more popular items).
        shrink: added to the cosine denominator; damps similarities from few co-occurrences.
        binary: True uses 0/1 interactions, False weights them by the rating.
    """

    name = "ItemKNN"
    family = "collaborative"
    defaults = {"k": 200, "shrink": 10.0, "binary": True}
    # Hand-tuned on ML-100K (holdout 75/25): best k 100-400, shrink 0-300; shrink 1000 hurts.
    space = {
        "k": LogUniform(10, 1000, integer=True),
        "shrink": Uniform(0.0, 500.0),
        "binary": Choice((True, False)),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        k, shrink = _check_knn_params(self.name, self.params)
        x = _input_matrix(train, bool(self.params["binary"]))

        def make_block(xa: sp.csr_matrix) -> Callable[[int, int], np.ndarray]:
            x32, xt32 = xa.astype(np.float32), xa.T.tocsr().astype(np.float32)
            norms = np.sqrt(np.asarray(x32.multiply(x32).sum(axis=0)).ravel())

            def block(start: int, stop: int) -> np.ndarray:
                gram = (xt32[start:stop] @ x32).toarray()  # (stop - start, n_active)
                return _shrunk_cosine(gram, norms[start:stop], norms, shrink, start)

            return block

        # Rows of `neighbours` are target items; W = neighbours^T so that score = X_u @ W.
        neighbours = item_topk(x, k, make_block)
        self.x_ = x
        self.w_ = neighbours.T.tocsr()

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return np.asarray((self.x_[users] @ self.w_).toarray(), dtype=np.float64)

    def score_items(
        self, support_items: npt.ArrayLike, weights: npt.ArrayLike | None = None
    ) -> np.ndarray:
        """Scores (n_items,) of a new user who interacted with `support_items` (no refit).

        `weights` (same length) are the interaction values (ratings when `binary` is False);
        default 1. Equals `score` of a training user with exactly those items.
        """
        row = support_row(self.name, support_items, weights, self.n_items_)
        return np.asarray((row @ self.w_).toarray(), dtype=np.float64).ravel()

    @property
    def n_parameters(self) -> int:
        return int(self.w_.nnz) if hasattr(self, "w_") else 0


@register
class UserKNN(Recommender):
    """User-based k-nearest-neighbours top-N recommender.

    Fit: S = shrunk cosine between user rows of X (n_users, n_items); keep each user's `k` most
    similar users (sparse (n_users, n_users)). Score: S_u @ X, the similarity-weighted sum of
    the neighbours' rows, so an item scores high when many close neighbours interacted with it.

    Hyperparameters:
        k: neighbours kept per user.
        shrink: added to the cosine denominator; damps similarities from few shared items.
        binary: True uses 0/1 interactions, False weights them by the rating.
    """

    name = "UserKNN"
    family = "collaborative"
    defaults = {"k": 50, "shrink": 0.0, "binary": True}
    # Hand-tuned on ML-100K: best k 50-100, shrink 0-10 (100 already costs ~0.03 NDCG@10).
    space = {
        "k": LogUniform(10, 500, integer=True),
        "shrink": Uniform(0.0, 200.0),
        "binary": Choice((True, False)),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        k, shrink = _check_knn_params(self.name, self.params)
        x = _input_matrix(train, bool(self.params["binary"]))
        x32, xt32 = x.astype(np.float32), x.T.tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()).astype(np.float32)

        def block(start: int, stop: int) -> np.ndarray:
            gram = (x32[start:stop] @ xt32).toarray()  # (stop - start, n_users)
            return _shrunk_cosine(gram, norms[start:stop], norms, shrink, start)

        self.sim_ = blockwise_topk(train.n_users, train.n_users, k, block)
        self.x_ = x

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return np.asarray((self.sim_[users] @ self.x_).toarray(), dtype=np.float64)

    @property
    def n_parameters(self) -> int:
        return int(self.sim_.nnz) if hasattr(self, "sim_") else 0
