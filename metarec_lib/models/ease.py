"""EASE: a closed-form linear item-item autoencoder with a zero diagonal.

Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW). With X the binary
(n_users, n_items) matrix, B = argmin ||X - X B||^2 + reg ||B||^2 subject to diag(B) = 0 is

    P = (X^T X + reg I)^-1,    B = I - P / diag(P)  (column j divided by P_jj),  diag(B) = 0,

and the scores are X_u @ B. Two exact routes to B, whichever is cheaper:
  * primal: Cholesky inverse of the (n_items x n_items) Gram, over the items seen in training
    (an unseen item's row and column of B are exactly 0);
  * dual (when users are much fewer than items, e.g. ml-latest-small: 610 x 9,742): with
    M = X^T (X X^T + reg I)^-1 X, Woodbury gives reg P = I - M, hence
    B[i, j] = M[i, j] / (1 - M[j, j]) for i != j; only an (n_users x n_users) system is solved.
B is dense: float64 up to FLOAT64_MAX_ITEMS items, float32 above (halves the memory).
The solves run on one BLAS thread: on 2 busy cores (other fits, tests, notebooks) a threaded
OpenBLAS Cholesky was measured 3-20x slower than a single thread (which is 0.1-0.2 s on ML-100K).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import psutil
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender
from metarec_lib.models.knn import check_param, support_row
from metarec_lib.models.registry import register
from metarec_lib.tuning import LogUniform

FLOAT64_MAX_ITEMS = 4096
# Share of the currently available memory (psutil) a fit may plan to use.
MEMORY_FRACTION = 0.8
# Use the dual route when n_users <= DUAL_RATIO * n_items.
DUAL_RATIO = 0.5
# Columns of a float32 B widened to float64 at a time when scoring (`times_b`): 128 x 9,742
# float64 is 10 MB, within the cache; a multiple of the SIMD width.
SCORE_COLUMNS = 128


def check_memory(model: str, need: float, what: str) -> None:
    """Raise MemoryError before allocating `need` bytes (described by `what`) when that exceeds
    MEMORY_FRACTION of the memory psutil reports available."""
    available = float(psutil.virtual_memory().available)
    if need > MEMORY_FRACTION * available:
        raise MemoryError(
            f"{model}: fitting needs {what} = {need / 2**30:.2f} GiB, but only "
            f"{available / 2**30:.2f} GiB is available (limit: {MEMORY_FRACTION:.0%} of it, "
            f"metarec_lib.models.ease.MEMORY_FRACTION); use a smaller item catalogue "
            f"(e.g. drop rare items) or a machine with more memory"
        )


def _symmetrise_from_lower(a: np.ndarray, block: int = 512) -> None:
    """Copy the lower triangle of square `a` onto its upper triangle, in place, block by block
    (no n^2 index arrays, no full-size temporary)."""
    n = a.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        a[s:e, e:] = a[e:, s:e].T
        d = a[s:e, s:e]
        upper = np.triu_indices(e - s, 1)
        d[upper] = d.T[upper]


def ease_primal(gram: np.ndarray) -> np.ndarray:
    """B from the regularised Gram G = X^T X + reg I (n, n), overwriting G; returns B (n, n).

    Cholesky factor then inverse (LAPACK potrf/potri) in place, then B = -P / diag(P).
    """
    potrf, potri = (lapack.dpotrf, lapack.dpotri) if gram.dtype == np.float64 else (
        lapack.spotrf, lapack.spotri)  # fmt: skip
    # G is symmetric and C-ordered, so G.T is the same matrix in Fortran order: LAPACK works
    # in place on it, and its "upper" triangle is our lower one.
    factor, info = potrf(gram.T, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky of X^T X + reg I failed (info={info})")
    p, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse of X^T X + reg I failed (info={info})")
    b = p.T  # C-ordered view of the same memory; its lower triangle holds P
    _symmetrise_from_lower(b)
    diag = np.diag(b).copy()
    b /= -diag[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def gram_matrix(x: sp.csr_matrix, reg: float, dtype: npt.DTypeLike) -> np.ndarray:
    """X^T X + reg I as a dense (n_items, n_items) array of `dtype`, built in row blocks so no
    float64 full-size temporary exists when `dtype` is float32."""
    n = x.shape[1]
    xt = x.T.tocsr()
    gram = np.empty((n, n), dtype=dtype)
    step = max(1, (1 << 22) // max(n, 1))
    for s in range(0, n, step):
        gram[s : s + step] = (xt[s : s + step] @ x).toarray()
    gram[np.diag_indices_from(gram)] += reg
    return gram


def ease_dual(x: sp.csr_matrix, reg: float, dtype: npt.DTypeLike) -> np.ndarray:
    """B (n_items, n_items) from X (n_users, n_items) via the (n_users, n_users) dual system."""
    kernel = (x @ x.T).toarray() + reg * np.eye(x.shape[0])
    factor = scipy.linalg.cho_factor(kernel, lower=True, check_finite=False)
    solved = scipy.linalg.cho_solve(factor, x.toarray(), check_finite=False)  # K^-1 X
    # M = X^T K^-1 X; its diagonal in float64 (1 - M_jj can be small).
    diag_m = np.asarray(x.multiply(solved).sum(axis=0)).ravel()
    solved = solved.astype(dtype, copy=False)
    b = np.asarray(x.T.astype(dtype) @ solved)  # (n_items, n_items), already `dtype`
    b /= (1.0 - diag_m).astype(dtype)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def times_b(rows: sp.csr_matrix, b: np.ndarray, columns: int = SCORE_COLUMNS) -> np.ndarray:
    """rows @ b in float64, (n, n_items). A float32 B is widened `columns` columns at a time:
    SciPy's product would widen the whole of it, and a fresh (n_items x n_items) float64 buffer
    costs more than the product (ml-latest-small's 9,742 items: 760 MB; 610 users scored in
    1.97 s, 1.5 s of them the widening, against 0.44 s by blocks). Each score is the same sum
    of the same products in the same order either way, so the blocks change no bit."""
    rows = sp.csr_matrix(rows, dtype=np.float64)
    if b.dtype == np.float64:
        return np.asarray(rows @ b)
    out = np.empty((rows.shape[0], b.shape[1]))
    for start in range(0, b.shape[1], columns):
        out[:, start : start + columns] = rows @ b[:, start : start + columns].astype(np.float64)
    return out


@register
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder (Steck 2019); see the module docstring.

    Hyperparameters:
        reg: L2 penalty lambda on B; larger values shrink item-item weights towards 0 (more
            popularity-like); typical best on MovieLens is a few hundred.
    """

    name = "EASE"
    family = "collaborative"
    defaults = {"reg": 300.0}
    space = {"reg": LogUniform(10.0, 10_000.0)}

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        reg = self.params["reg"]
        check_param(self.name, "reg", reg, float(reg) > 0, "a number > 0")
        reg = float(reg)
        x = train.matrix(binary=True)
        dtype = np.float64 if x.shape[1] <= FLOAT64_MAX_ITEMS else np.float32
        with threadpool_limits(limits=1, user_api="blas"):
            b = self._solve(x, reg, dtype)
        self.x_ = x
        self.b_ = b

    def _solve(self, x: sp.csr_matrix, reg: float, dtype: npt.DTypeLike) -> np.ndarray:
        """B (n_items, n_items) by the cheaper exact route, after the memory check."""
        n_users, n_items = x.shape
        size = np.dtype(dtype).itemsize
        if n_users <= DUAL_RATIO * n_items:
            # B, plus dense X, K^-1 X (float64) and its `dtype` copy.
            check_memory(self.name, n_items**2 * size + n_users * n_items * (16 + size),
                         f"a dense {n_items} x {n_items} {np.dtype(dtype).name} B plus three "
                         f"{n_users} x {n_items} work arrays")  # fmt: skip
            b = ease_dual(x, reg, dtype)
        else:
            active = np.flatnonzero(np.diff(x.tocsc().indptr) > 0)  # items seen in training
            copies = 1 if len(active) == n_items else 2
            check_memory(self.name, copies * n_items**2 * size,
                         f"{copies} dense {n_items} x {n_items} {np.dtype(dtype).name} "
                         "matrices")  # fmt: skip
            b_active = ease_primal(gram_matrix(x[:, active], reg, dtype))
            if len(active) == n_items:
                b = np.ascontiguousarray(b_active)
            else:
                b = np.zeros((n_items, n_items), dtype=dtype)
                b[np.ix_(active, active)] = b_active
        return b

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return times_b(self.x_[users], self.b_)

    def score_items(
        self, support_items: npt.ArrayLike, weights: npt.ArrayLike | None = None
    ) -> np.ndarray:
        """Scores (n_items,) of a new user who interacted with `support_items` (no refit).

        EASE is fitted on binary data, so `weights` default to 1; equals `score` of a training
        user with exactly those items.
        """
        row = support_row(self.name, support_items, weights, self.n_items_)
        return times_b(row, self.b_).ravel()

    @property
    def n_parameters(self) -> int:
        return int(self.b_.size) if hasattr(self, "b_") else 0
