"""iALS: implicit-feedback matrix factorisation by alternating least squares.

Hu, Koren & Volinsky (2008), "Collaborative Filtering for Implicit Feedback Datasets", ICDM.
Every (user, item) cell is fitted: the preference p_ui is 1 where the user interacted and 0
elsewhere, weighted by the confidence c_ui = 1 + alpha * r_ui (1 on unobserved cells):

    L(X, Y) = sum_ui c_ui (p_ui - x_u . y_i)^2 + sum_u reg_u |x_u|^2 + sum_i reg_i |y_i|^2

Each half-step solves every user's (then every item's) weighted least squares with the other
side fixed, using Y^T C_u Y = Y^T Y + Y_u^T (C_u - I) Y_u so that only observed cells cost work.
Solvers: "cg" runs `cg_steps` conjugate-gradient steps warm-started from the current factors
(Takacs, Pilaszy & Tikk 2011, "Applications of the conjugate gradient method for implicit
feedback collaborative filtering", RecSys), vectorised over all users at once; "exact" builds
the (n, f, f) systems in padded batches and solves them with `torch.linalg.solve`.

Frequency-scaled regularisation (Rendle et al. 2022, "Revisiting the Performance of iALS on
Item Recommendation Benchmarks", RecSys): reg_u = reg * mean_w * (w_u / mean_w)^reg_exponent,
where w_u = sum_i c_ui is the user's total weight over all cells and mean_w its mean over that
side (items likewise). reg_exponent = 1 gives reg * w_u, Rendle's lambda (|I_u| + alpha0 |I|)
written in Hu's weights; 0 gives the constant penalty of Hu et al. Measuring `reg` in units of
the data weight keeps its good values (about 0.01-0.05 on MovieLens) nearly independent of
`alpha` and of the data set's size.

Each iteration updates the items, then the users, so after `fit` the user factors are the exact
("exact") or near ("cg") least-squares answer for the final item factors, as `fold_in` is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import register
from metarec_lib.models.training import EarlyStopping, cpu_threads
from metarec_lib.tuning import Choice, LogUniform

_CONFIDENCES = ("linear", "log", "binary")
_SOLVERS = ("cg", "exact")
# float32 halves memory traffic and doubles BLAS speed; the solves stay well conditioned (reg > 0).
_DTYPE = np.float32
# Padded batches of the exact solver hold about this many numbers at once.
_EXACT_BATCH_NUMBERS = 1 << 22
# Dense (rows, n_cols) score blocks of `sampled_dots` hold about this many numbers at once.
_DENSE_BLOCK_NUMBERS = 1 << 22
# `sampled_dots` goes dense from this density of the pattern (break-even measured on 2 cores).
_DENSE_DENSITY = 0.03


def confidence(
    ratings: npt.ArrayLike, kind: str, alpha: float, epsilon: float = 1.0
) -> npt.NDArray[np.float64]:
    """Confidence c >= 1 of observed cells from their ratings r (n,):

    "linear": 1 + alpha * r; "log": 1 + alpha * log(1 + r / epsilon); "binary": 1 + alpha.
    """
    r = np.asarray(ratings, dtype=np.float64)
    if kind == "linear":
        return 1.0 + alpha * r
    if kind == "log":
        return 1.0 + alpha * np.log1p(r / epsilon)
    if kind == "binary":
        return np.full(r.shape, 1.0 + alpha)
    raise ValueError(f"iALS: confidence={kind!r}; expected one of {_CONFIDENCES}")


def row_regularisation(
    weight: npt.NDArray[np.float64], reg: float, exponent: float, mean_weight: float
) -> npt.NDArray[np.float64]:
    """Per-row L2 penalty reg * mean_weight * (weight / mean_weight)^exponent (n_rows,).

    weight: each row's total confidence sum_i c_ui over ALL cells. exponent 1 gives
    reg * weight, Rendle et al.'s lambda (|I_u| + alpha0 |I|) written in Hu's weights;
    exponent 0 gives every row the penalty of an average row. Either way `reg` is a fraction of
    the data weight, so its good values hardly move with `alpha`.
    """
    return reg * mean_weight * (weight / mean_weight) ** exponent


def _total_weight(conf: sp.csr_matrix, n_cols: int) -> npt.NDArray[np.float64]:
    """sum_i c_ui over all n_cols cells of each row: unobserved cells weigh 1 (n_rows,)."""
    return n_cols + np.asarray(conf.sum(axis=1)).ravel() - np.diff(conf.indptr)


def sampled_dots(
    pattern: sp.csr_matrix,
    left: npt.NDArray,
    right: npt.NDArray,
    right_rows: npt.NDArray | None = None,
) -> npt.NDArray:
    """left[u] . right[i] for every stored (u, i) of `pattern`, in CSR order (nnz,).

    Dense catalogues (density >= _DENSE_DENSITY, e.g. ML-100K): dense row blocks of
    left @ right.T, sampled, as one BLAS product beats gathering (nnz, f) copies there.
    Sparser ones: a row-wise dot of gathered rows; `right_rows` = right[pattern.indices] may be
    passed when it is reused (the fixed side in conjugate gradient).
    """
    n, m = pattern.shape
    lengths = np.diff(pattern.indptr)
    if pattern.nnz < _DENSE_DENSITY * n * m:
        gathered = right[pattern.indices] if right_rows is None else right_rows
        return np.einsum("ij,ij->i", np.repeat(left, lengths, axis=0), gathered)
    out = np.empty(pattern.nnz, dtype=np.result_type(left, right))
    block = max(1, _DENSE_BLOCK_NUMBERS // max(m, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        lo, hi = pattern.indptr[start], pattern.indptr[stop]
        local = np.repeat(np.arange(stop - start), lengths[start:stop])
        out[lo:hi] = (left[start:stop] @ right.T)[local, pattern.indices[lo:hi]]
    return out


def solve_exact(
    conf: sp.csr_matrix, fixed: npt.NDArray, reg: npt.NDArray[np.float64]
) -> npt.NDArray:
    """Exact weighted least squares for every row of `conf` (n, m) given `fixed` (m, f).

    Row u solves (F^T F + F_u^T (C_u - I) F_u + reg_u I) x = F_u^T c_u. Rows are sorted by
    length and solved in padded batches so that each batch is one batched matmul and one
    batched `torch.linalg.solve`. Returns (n, f) in the dtype of `fixed`.
    """
    n, f = conf.shape[0], fixed.shape[1]
    gram = fixed.T @ fixed
    rhs = (conf @ fixed).astype(fixed.dtype)  # F_u^T c_u, since p = 1 on observed cells
    counts = np.diff(conf.indptr)
    order = np.argsort(counts, kind="stable")
    out = np.empty((n, f), dtype=fixed.dtype)
    sorted_len = counts[order]
    start = 0
    while start < n:
        # The longest batch of sorted rows whose padded (rows, longest, f) block fits the budget.
        padded_size = np.arange(1, n - start + 1) * np.maximum(sorted_len[start:], f) * f
        stop = start + max(1, int(np.searchsorted(padded_size, _EXACT_BATCH_NUMBERS, "right")))
        rows = order[start:stop]
        longest = max(int(counts[rows].max()), 1)
        sub = conf[rows]
        lengths = np.diff(sub.indptr)
        local = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(sub.nnz) - np.repeat(sub.indptr[:-1], lengths)
        padded = np.zeros((len(rows), longest, f), dtype=fixed.dtype)
        padded[local, position] = np.sqrt(sub.data - 1.0)[:, None] * fixed[sub.indices]
        system = np.matmul(padded.transpose(0, 2, 1), padded)
        system += gram
        system[:, np.arange(f), np.arange(f)] += reg[rows, None]
        if not np.isfinite(system).all():
            raise FloatingPointError(
                "iALS: the normal equations are not finite (the factors diverged); "
                "lower alpha or raise reg"
            )
        # torch's batched solve: numpy's (OpenBLAS) stalls on f >= 128 when cores are shared.
        # On one thread: with several, MKL's threaded LU inside torch's parallel loop over the
        # batch livelocked for good (two threads spinning in sgetrf; Intel Xeon, 60_meta in
        # `make smoke`) or failed (SLASWP). A worker has one thread anyway.
        try:
            with cpu_threads("cpu", 1):
                solution = torch.linalg.solve(torch.from_numpy(system), torch.from_numpy(rhs[rows]))
            out[rows] = solution.numpy()
        except RuntimeError:  # MKL's batched LU has failed on finite systems (SLASWP, 60_meta)
            out[rows] = np.linalg.solve(system, rhs[rows][..., None])[..., 0]
        start = stop
    return out


def solve_cg(
    conf: sp.csr_matrix,
    fixed: npt.NDArray,
    reg: npt.NDArray[np.float64],
    start: npt.NDArray,
    steps: int,
) -> npt.NDArray:
    """`steps` conjugate-gradient steps on every row's system at once, from `start` (n, f).

    Same systems as `solve_exact`; the product A_u p = F^T F p + F_u^T ((c_u - 1) * F_u p)
    + reg_u p costs O(f^2 + n_u f) per row and never forms A_u. Returns (n, f).
    """
    gram = fixed.T @ fixed
    extra = conf.data - 1.0
    fixed_rows = (
        fixed[conf.indices] if conf.nnz < _DENSE_DENSITY * conf.shape[0] * conf.shape[1] else None
    )

    def apply(p: npt.NDArray) -> npt.NDArray:
        dots = sampled_dots(conf, p, fixed, fixed_rows) * extra
        weighted = sp.csr_matrix((dots, conf.indices, conf.indptr), shape=conf.shape)
        return p @ gram + reg[:, None] * p + weighted @ fixed

    x = start.copy()
    resid = conf @ fixed - apply(x)
    direction = resid.copy()
    rs_old = np.einsum("ij,ij->i", resid, resid)
    tiny = np.finfo(x.dtype).tiny
    for _ in range(steps):
        a_dir = apply(direction)
        curvature = np.einsum("ij,ij->i", direction, a_dir)
        step = np.where(curvature > tiny, rs_old / np.maximum(curvature, tiny), 0.0)
        x += step[:, None] * direction
        resid -= step[:, None] * a_dir
        rs_new = np.einsum("ij,ij->i", resid, resid)
        beta = np.where(rs_old > tiny, rs_new / np.maximum(rs_old, tiny), 0.0)
        direction = resid + beta[:, None] * direction
        rs_old = rs_new
    return x


def objective(
    conf: sp.csr_matrix,
    users: npt.NDArray,
    items: npt.NDArray,
    reg_users: npt.NDArray[np.float64],
    reg_items: npt.NDArray[np.float64],
) -> float:
    """The iALS loss L(X, Y) over ALL cells, in O(nnz f + (n + m) f^2).

    sum over all cells of s^2 is trace(X^T X Y^T Y); observed cells add c (1 - s)^2 - s^2.
    Products in the factors' dtype (pass float64 factors for an exact value), sums in float64.
    """
    f64 = np.float64
    s = sampled_dots(conf, users, items).astype(f64)
    every = np.sum((users.T @ users).astype(f64) * (items.T @ items).astype(f64))
    observed = np.sum(conf.data.astype(f64) * (1.0 - s) ** 2 - s**2)
    penalty = np.dot(reg_users.astype(f64), np.sum(users.astype(f64) ** 2, axis=1))
    penalty += np.dot(reg_items.astype(f64), np.sum(items.astype(f64) ** 2, axis=1))
    return float(every + observed + penalty)


@register
class IALS(Recommender):
    """Implicit ALS (Hu et al. 2008) with frequency-scaled L2 (Rendle et al. 2022).

    NumPy/SciPy on the CPU (a fit on ML-100K takes about half a second); `device` is unused.

    Hyperparameters:
        factors: latent dimension f.
        reg: L2 penalty of an average user / item (see the module docstring).
        alpha: confidence slope; higher trusts observed cells more relative to missing ones.
        confidence: "linear" (1 + alpha r), "log" (1 + alpha log(1 + r/epsilon)) or "binary".
        epsilon: scale of the "log" confidence.
        reg_exponent: frequency scaling of the penalty (0: constant; 1: Rendle et al.).
        iterations: maximum number of (items, users) alternations.
        solver: "cg" (fast, `cg_steps` warm-started steps) or "exact".
        cg_steps: conjugate-gradient steps per half-iteration.
        init_std: standard deviation of the initial factors.
        patience: with `valid`, stop after this many iterations without a better NDCG@10 and
            keep the best factors.
    After fit: user_factors_ (n_users, f), item_factors_ (n_items, f), loss_history_
    [(iteration, loss)], and when `valid` was given history_ [(iteration, valid NDCG@10)] and
    best_epoch_ (the iteration kept; None without `valid`).
    """

    name = "iALS"
    family = "collaborative"
    defaults: dict[str, Any] = {
        "factors": 64,
        "reg": 0.02,
        "alpha": 1.0,
        "confidence": "linear",
        "epsilon": 1.0,
        "reg_exponent": 0.5,
        "iterations": 15,
        "solver": "cg",
        "cg_steps": 3,
        "init_std": 0.01,
        "patience": 3,
    }
    # Measured on ML-100K / ml-latest-small (75/25 holdout): good reg 0.01-0.05, alpha 0.3-3;
    # NDCG falls steeply outside, so the ranges stay within about a decade of those.
    space = {
        "factors": Choice((32, 64, 128, 256)),
        "reg": LogUniform(3e-3, 0.3),
        "alpha": LogUniform(0.1, 30.0),
    }

    def _check(self) -> None:
        p = self.params
        if p["confidence"] not in _CONFIDENCES:
            raise ValueError(f"iALS: confidence={p['confidence']!r}; expected {_CONFIDENCES}")
        if p["solver"] not in _SOLVERS:
            raise ValueError(f"iALS: solver={p['solver']!r}; expected one of {_SOLVERS}")
        if not p["reg"] > 0:
            raise ValueError(f"iALS: reg={p['reg']!r}; expected > 0 (the systems need it)")
        if not p["alpha"] >= 0:
            raise ValueError(f"iALS: alpha={p['alpha']!r}; expected >= 0 (confidence >= 1)")
        if int(p["factors"]) < 1 or int(p["iterations"]) < 1 or int(p["cg_steps"]) < 1:
            raise ValueError(
                f"iALS: factors={p['factors']!r}, iterations={p['iterations']!r}, "
                f"cg_steps={p['cg_steps']!r}; expected each >= 1"
            )

    def _confidence_matrix(self, train: Interactions) -> sp.csr_matrix:
        """Observed confidences c_ui as CSR (n_users, n_items); duplicate rows are summed."""
        p = self.params
        m = train.matrix(binary=p["confidence"] == "binary")
        m.data = confidence(m.data, p["confidence"], float(p["alpha"]), float(p["epsilon"]))
        return m.astype(_DTYPE)

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        from metarec_lib.evaluate import ndcg_on

        self._check()
        p = self.params
        f, solver, steps = int(p["factors"]), p["solver"], int(p["cg_steps"])
        conf = self._confidence_matrix(train)
        conf_t = conf.T.tocsr()
        n_users, n_items = conf.shape
        w_users, w_items = _total_weight(conf, n_items), _total_weight(conf_t, n_users)
        self.mean_user_weight_ = float(w_users.mean())
        reg, nu = float(p["reg"]), float(p["reg_exponent"])
        reg_users = row_regularisation(w_users, reg, nu, self.mean_user_weight_).astype(_DTYPE)
        reg_items = row_regularisation(w_items, reg, nu, float(w_items.mean())).astype(_DTYPE)

        rng = np.random.default_rng(seed)
        users = rng.normal(0.0, float(p["init_std"]), (n_users, f)).astype(_DTYPE)
        items = rng.normal(0.0, float(p["init_std"]), (n_items, f)).astype(_DTYPE)

        def half(m: sp.csr_matrix, fixed, r, current):
            if solver == "exact":
                return solve_exact(m, fixed, r)
            return solve_cg(m, fixed, r, current, steps)

        self.loss_history_: list[tuple[int, float]] = []
        stopper = EarlyStopping(int(p["patience"]))
        for it in range(1, int(p["iterations"]) + 1):
            items = half(conf_t, users, reg_items, items)
            users = half(conf, items, reg_users, users)
            self.loss_history_.append((it, objective(conf, users, items, reg_users, reg_items)))
            if valid is None:
                continue
            self.user_factors_, self.item_factors_ = users, items
            snapshot = lambda u=users, i=items: (u.copy(), i.copy())  # noqa: E731
            if stopper.update(it, ndcg_on(self, valid), snapshot):
                break
        self.history_, self.best_epoch_ = stopper.history, stopper.best_epoch
        if stopper.best_state is not None:
            users, items = stopper.best_state
        self.user_factors_, self.item_factors_ = users, items

    # -- inference ------------------------------------------------------------------------
    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return self.user_factors_[users] @ self.item_factors_.T

    def fold_in(
        self, items: npt.ArrayLike, weights: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.float64]:
        """A new user's vector (f,) by one exact user step with the item factors fixed.

        items: item indices the user interacted with; weights: their ratings (what the
        `rating` column held in training; default 1 each), turned into confidences as in
        training. Repeated items are summed, as in the training matrix.
        """
        if not hasattr(self, "item_factors_"):
            raise RuntimeError("iALS.fold_in called before fit")
        items = np.asarray(items, np.int64).ravel()
        if items.size and (items.min() < 0 or items.max() >= self.n_items_):
            raise ValueError(
                f"iALS.fold_in: item indices {items.min()}..{items.max()}; "
                f"expected 0..{self.n_items_ - 1}"
            )
        w = np.ones(items.size) if weights is None else np.asarray(weights, float).ravel()
        if w.shape != items.shape:
            raise ValueError(f"iALS.fold_in: {w.size} weights for {items.size} items")
        row = sp.csr_matrix((w, (np.zeros(items.size, np.int64), items)), shape=(1, self.n_items_))
        row.sum_duplicates()
        p = self.params
        binary = p["confidence"] == "binary"
        data = np.ones_like(row.data) if binary else row.data
        row.data = confidence(data, p["confidence"], float(p["alpha"]), float(p["epsilon"]))
        weight = _total_weight(row, self.n_items_)
        reg = row_regularisation(
            weight, float(p["reg"]), float(p["reg_exponent"]), self.mean_user_weight_
        ).astype(self.item_factors_.dtype)
        return solve_exact(row, self.item_factors_, reg)[0]

    def score_vector(self, user_vector: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Scores of every item (n_items,) for a user vector (f,), e.g. from `fold_in`."""
        return self.item_factors_ @ np.asarray(user_vector, dtype=self.item_factors_.dtype)

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "user_factors_"):
            return 0
        return int(self.user_factors_.size + self.item_factors_.size)
