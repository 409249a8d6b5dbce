"""Rating-prediction factor models: biased matrix factorisation (ALS) and SVD++ (PyTorch).

Both predict r_ui = mu + b_u + b_i + q_i . x_u with mu the global training mean. `predict`
clips to the rating range seen in training (what RMSE reads); `score` ranks by the unclipped
values, since clipping ties every item predicted above the top rating (2-6% of the users had 10
or more such items on the 75/25 split) and the ranking would then fall to the item index.

- `BiasedMF` (Koren, Bell & Volinsky 2009, "Matrix factorization techniques for recommender
  systems", IEEE Computer 42(8)): x_u = p_u, fitted by alternating least squares. With the item
  side fixed, each user's (b_u, p_u) is one ridge regression with a closed form, and vice versa;
  all rows of a side are solved at once with batched matrix products and batched solves. ALS
  rather than SGD/Adam: every sweep is an exact minimisation (no learning rate to tune,
  deterministic, ~1 s on ML-100K), it reaches its best validation RMSE in 3-8 sweeps, and its
  validation curve is smooth, so a sweep count tuned on a carve-out transfers to a refit on
  all training data (with constant-rate SGD the curve zigzagged and such refits got worse).
- `SVDpp` (Koren 2008, "Factorization meets the neighborhood", KDD): x_u = p_u + |N(u)|^-1/2
  sum_{j in N(u)} y_j, N(u) the user's training items; fitted with Adam (exponentially decayed
  learning rate) on mini-batches of ratings; the implicit sum is aggregated once per distinct
  user of a batch (`embedding_bag`).

Regularisation (both models, the same objective): factors pay reg * n^0.5 * ||.||^2 where n is
the row's number of training ratings (`FREQUENCY_EXPONENT`; what the FrequencyRegularization
option of MyMediaLite's biased MF does (Gantner et al. 2011); it lies between plain L2 (n^0)
and the per-rating penalty of Koren's SGD / weighted-lambda ALS (n^1, Zhou et al. 2008), and
was slightly better than both on ML-100K validation (ALS, u1 carve-out: RMSE 0.908 vs 0.910
with n^0 and 0.912 with n^1)). Biases pay reg_bias * b^2 (reg_bias pseudo-ratings at the
global mean, as in Koren's baseline predictors), which shrinks rarely rated items and users
towards the mean.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.evaluate import rmse_on
from metarec_lib.models.base import ClipsRatings, Recommender, resolve_device
from metarec_lib.models.registry import register
from metarec_lib.models.training import adam, cuda_determinism
from metarec_lib.tuning import Choice, LogUniform

FREQUENCY_EXPONENT = 0.5  # factor penalty of a row with n ratings: reg * n**FREQUENCY_EXPONENT
_BLOCK = 1 << 22  # floats per array in the batched Gram products (32 MB in float64)


# ----------------------------------------------------------------------------- ALS algebra


def _padded_blocks(
    indptr: npt.NDArray[np.int64], pad: int, k: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Group rows of similar length and pad them: [(rows (b,), positions (b, width))].

    positions index the CSR data/indices arrays; padding points at position `pad` (a slot one
    past the end, which callers fill with zeros). Rows are sorted by length and cut where the
    length grows by more than 25%, and blocks are kept under `_BLOCK` floats for both the
    gathered (b, width, k + 1) factors and the (b, k + 1, k + 1) Gram matrices, so padding
    wastes little, memory stays bounded and each block is one batched BLAS product.
    """
    counts = np.diff(indptr)
    order = np.argsort(counts, kind="stable")
    sorted_counts = counts[order]
    # Length classes on a 1.25x geometric grid (0 and 1 get their own classes).
    classes = np.floor(np.log(np.maximum(sorted_counts, 1)) / np.log(1.25)).astype(np.int64)
    classes[sorted_counts == 0] = -1
    cuts = np.flatnonzero(np.diff(classes)) + 1
    blocks = []
    for group in np.split(np.arange(len(order)), cuts):
        if len(group) == 0 or sorted_counts[group[-1]] == 0:
            continue  # rows without ratings keep the zero solution of their ridge problem
        width = int(sorted_counts[group[-1]])
        step = max(1, _BLOCK // ((k + 1) * max(width, k + 1)))
        for start in range(0, len(group), step):
            rows = order[group[start : start + step]]
            offset = np.arange(width)
            positions = indptr[rows][:, None] + offset[None, :]
            positions = np.where(offset[None, :] < counts[rows][:, None], positions, pad)
            blocks.append((rows, positions))
    return blocks


def ridge_half_step(
    matrix: sp.csr_matrix,
    fixed_factors: npt.NDArray[np.float64],
    fixed_bias: npt.NDArray[np.float64],
    mu: float,
    reg: float,
    reg_bias: float,
    blocks: list | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One ALS half-step: every row's (bias, factors) with the other side fixed.

    matrix: (n_rows, n_cols) CSR of ratings; fixed_factors (n_cols, k); fixed_bias (n_cols,).
    Row u solves min_x sum_{i in row u} (r_ui - mu - c_i - z_i . x)^2 + reg_bias * x_0^2
    + reg * n_u^e * ||x_1:||^2 with z_i = (1, q_i), x = (b_u, p_u), e = FREQUENCY_EXPONENT:
    the ridge system (Z_u^T Z_u + diag(reg_bias, reg n_u^e, ...)) x = Z_u^T y_u.
    Returns (bias (n_rows,), factors (n_rows, k)); rows without ratings get zeros.
    `blocks` caches `_padded_blocks` across sweeps.
    """
    matrix = sp.csr_matrix(matrix)
    n_rows, k = matrix.shape[0], fixed_factors.shape[1]
    indptr = matrix.indptr.astype(np.int64)
    if blocks is None:
        blocks = _padded_blocks(indptr, matrix.nnz, k)
    counts = np.diff(indptr).astype(np.float64)
    # Z with a zero row appended for padding; targets with a zero appended likewise.
    z = np.zeros((matrix.shape[1] + 1, k + 1))
    z[:-1, 0] = 1.0
    z[:-1, 1:] = fixed_factors
    cols = np.append(matrix.indices, matrix.shape[1])
    target = np.append(matrix.data - mu - fixed_bias[matrix.indices], 0.0)
    solution = np.zeros((n_rows, k + 1))
    for rows, positions in blocks:
        zb = z[cols[positions]]  # (b, width, k + 1)
        tb = target[positions]  # (b, width)
        diag = np.empty((len(rows), k + 1))
        diag[:, 0] = reg_bias
        diag[:, 1:] = (reg * counts[rows] ** FREQUENCY_EXPONENT)[:, None]
        if positions.shape[1] < k + 1 and diag.min() > 1e-6:
            # Fewer ratings than unknowns: the equivalent (push-through identity) system
            # x = D^-1 Z^T (Z D^-1 Z^T + I)^-1 y is width x width instead of (k+1) x (k+1).
            scaled = zb / diag[:, None, :]
            kernel = np.matmul(scaled, zb.transpose(0, 2, 1))
            kernel[:, np.arange(kernel.shape[1]), np.arange(kernel.shape[1])] += 1.0
            dual = np.linalg.solve(kernel, tb[..., None])  # (b, width, 1)
            solution[rows] = np.matmul(scaled.transpose(0, 2, 1), dual)[..., 0]
        else:
            gram = np.matmul(zb.transpose(0, 2, 1), zb)  # (b, k + 1, k + 1)
            rhs = np.matmul(tb[:, None, :], zb)[:, 0, :]  # (b, k + 1)
            gram[:, np.arange(k + 1), np.arange(k + 1)] += diag + 1e-12  # reg = 0 solvable
            solution[rows] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return solution[:, 0], solution[:, 1:]


class _RatingModel(ClipsRatings, Recommender):
    """Shared prediction code: mu + b_u + b_i + x_u . q_i (clipped to the training range in
    `predict`, not in `score`)."""

    family = "collaborative"
    predicts_ratings = True

    def _set_range(self, ratings: npt.NDArray[np.float64]) -> None:
        self.mu_ = float(ratings.mean()) if len(ratings) else 0.0
        self.rating_range_ = (
            (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)
        )

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of every item, (len(users), n_items): the ranking scores."""
        users = np.asarray(users, np.int64)
        return (
            self.mu_
            + self.user_bias_[users][:, None]
            + self.item_bias_[None, :]
            + self.user_factors_[users] @ self.item_factors_.T
        )

    def predict_raw(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of aligned (user, item) pairs, (n,): as `score`."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        return (
            self.mu_
            + self.user_bias_[users]
            + self.item_bias_[items]
            + np.einsum("nk,nk->n", self.user_factors_[users], self.item_factors_[items])
        )

    def _start_history(self) -> None:
        self.history_: list[tuple[int, float]] = []
        self._best: tuple[float, int, object] = (np.inf, 0, None)

    def _early_stopping(self, valid: Interactions | None, epoch: int, state: object) -> bool:
        """Record validation RMSE after `epoch`; keep `state` if best. True means stop.

        Without `valid` nothing is recorded or kept and the last epoch counts as the best.
        """
        if valid is None or len(valid) == 0:
            self._best = (np.nan, epoch, None)
            return False
        rmse = rmse_on(self, valid)
        self.history_.append((epoch, rmse))
        if rmse < self._best[0] - 1e-6:
            self._best = (rmse, epoch, state)
        return epoch - self._best[1] >= int(self.params["patience"])

    def _best_state(self) -> object:
        """The state kept by `_early_stopping` (None: keep the last); sets best_epoch_."""
        _, self.best_epoch_, state = self._best
        del self._best
        return state


@register
class BiasedMF(_RatingModel):
    """Biased matrix factorisation fitted by ALS (Koren, Bell & Volinsky 2009).

    r_ui = mu + b_u + b_i + p_u . q_i, minimising the squared error plus
    reg * (n_u^0.5 ||p_u||^2 + n_i^0.5 ||q_i||^2) + reg_bias * (b_u^2 + b_i^2), summed over
    users and items (n = training ratings of the row; see the module docstring).

    Hyperparameters: `factors` k (0 gives the biases-only baseline predictor); `reg` the L2
    weight on factors (times n^0.5 for a row with n ratings, see the module docstring);
    `reg_bias` the L2 weight on biases (pseudo-ratings at the mean); `epochs` the maximum
    number of ALS sweeps (user half-step then item half-step; without `valid`, exactly that);
    `patience` sweeps without a better validation RMSE before stopping (only with `valid`;
    the best sweep's parameters are kept and `history_` records (epoch, valid RMSE));
    `init_std` the standard deviation of the random initial item factors.

    Fitted: user_bias_ (n_users,), item_bias_ (n_items,), user_factors_ (n_users, k),
    item_factors_ (n_items, k), mu_, rating_range_, best_epoch_ (the sweep kept).
    """

    name = "BiasedMF"
    # Defaults: the region validation picked on the ML-100K u1..u5 carve-outs (reg 1-1.5,
    # reg_bias 1-9, 64-128 factors, best sweep 3-8).
    defaults = {
        "factors": 64,
        "reg": 1.2,
        "reg_bias": 3.0,
        "epochs": 8,
        "patience": 3,
        "init_std": 0.1,
    }
    space = {
        "factors": Choice((32, 64, 128)),
        "reg": LogUniform(0.5, 3.0),
        "reg_bias": LogUniform(1.0, 30.0),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        k = int(self.params["factors"])
        reg, reg_bias = float(self.params["reg"]), float(self.params["reg_bias"])
        ratings = train.frame["rating"].to_numpy(np.float64)
        self._set_range(ratings)
        by_user = train.matrix()
        by_item = by_user.T.tocsr()
        user_blocks = _padded_blocks(by_user.indptr.astype(np.int64), by_user.nnz, k)
        item_blocks = _padded_blocks(by_item.indptr.astype(np.int64), by_item.nnz, k)
        rng = np.random.default_rng(seed)
        self.item_factors_ = rng.normal(0.0, float(self.params["init_std"]), (train.n_items, k))
        self.item_bias_ = np.zeros(train.n_items)
        self.user_bias_ = np.zeros(train.n_users)
        self.user_factors_ = np.zeros((train.n_users, k))
        self._start_history()
        for epoch in range(1, int(self.params["epochs"]) + 1):
            self.user_bias_, self.user_factors_ = ridge_half_step(
                by_user, self.item_factors_, self.item_bias_, self.mu_, reg, reg_bias, user_blocks
            )
            self.item_bias_, self.item_factors_ = ridge_half_step(
                by_item, self.user_factors_, self.user_bias_, self.mu_, reg, reg_bias, item_blocks
            )
            state = (self.user_bias_, self.user_factors_, self.item_bias_, self.item_factors_)
            if self._early_stopping(valid, epoch, state):
                break
        best = self._best_state()
        if best is not None:
            self.user_bias_, self.user_factors_, self.item_bias_, self.item_factors_ = best

    def fold_in(
        self, items: npt.ArrayLike, ratings: npt.ArrayLike
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """(b_u, p_u (k,)) of a new user from their (item, rating) pairs, item side fixed.

        The same ridge problem as one ALS user half-step, so after a fit run to convergence,
        folding in a training user's own ratings gives back that user's fitted parameters.
        """
        items = np.asarray(items, np.int64)
        ratings = np.asarray(ratings, np.float64)
        if items.shape != ratings.shape or items.ndim != 1:
            raise ValueError(
                f"BiasedMF.fold_in: items {items.shape} and ratings {ratings.shape} must be "
                "aligned 1-d arrays"
            )
        if len(np.unique(items)) != len(items):
            raise ValueError("BiasedMF.fold_in: items must be distinct (one rating per item)")
        row = sp.csr_matrix(
            (ratings, (np.zeros(len(items), np.int64), items)), shape=(1, self.n_items_)
        )
        bias, factors = ridge_half_step(
            row, self.item_factors_, self.item_bias_, self.mu_,
            float(self.params["reg"]), float(self.params["reg_bias"]),
        )  # fmt: skip
        return float(bias[0]), factors[0]

    def predict_vector(
        self, b_u: float, p_u: npt.ArrayLike, items: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """Predicted ratings (len(items),) for a user given by (b_u, p_u), e.g. from `fold_in`."""
        items = np.asarray(items, np.int64)
        raw = (
            self.mu_
            + b_u
            + self.item_bias_[items]
            + self.item_factors_[items] @ np.asarray(p_u, np.float64)
        )
        return self.clip_ratings(raw)

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "item_factors_"):
            return 0
        return int(
            self.user_bias_.size
            + self.item_bias_.size
            + self.user_factors_.size
            + self.item_factors_.size
            + 1
        )


# ----------------------------------------------------------------------------- SVD++ (torch)


class _RowWeightedSquares(torch.autograd.Function):
    """sum_r w_r sum_t ||x_t[r]||^2 over tables x_t (n, k) sharing the row weights w (n,).

    The gradient is autograd's for the same expression written out, bit for bit: (g w_r) times
    2 x_t[r] (doubling is exact, so the order of the products does not matter), but computed
    in one product per table, where autograd's chain of square, sum, mul and their backwards
    made and read several (n, k) temporaries. On ml-latest-small's SVD++ tables (128 factors)
    the penalty's forward and backward took 5.7 ms of a 17 ms step, and take 4.4 ms so: most
    of it is writing a dense gradient for every row of every table, which the penalty needs."""

    @staticmethod
    def forward(ctx, weight, *tables):  # type: ignore[override]
        ctx.save_for_backward(weight, *tables)
        with torch.no_grad():
            return (weight * sum(torch.linalg.vecdot(t, t, dim=1) for t in tables)).sum()

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        weight, *tables = ctx.saved_tensors
        row = (upstream * weight)[:, None]
        grads = [2 * t * row if need else None
                 for t, need in zip(tables, ctx.needs_input_grad[1:], strict=True)]  # fmt: skip
        return None, *grads


class SVDppNet(nn.Module):
    """SVD++ parameters and loss: biases (n,), p (n_users, k), q and y (n_items, k).

    indptr (n_users + 1,) / indices (nnz,): each user's training items N(u) (the CSR pattern
    of the training ratings, which also gives the penalty weights n^FREQUENCY_EXPONENT).
    p and q start N(0, init_std^2) from `generator` (zero for users / items without training
    ratings, which nothing would move); biases and y start at zero, so the untrained model
    is a biased MF.
    """

    def __init__(
        self,
        factors: int,
        indptr: npt.NDArray[np.int64],
        indices: npt.NDArray[np.int64],
        n_items: int,
        mu: float,
        *,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        n_users = len(indptr) - 1
        self.mu = float(mu)
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        indptr = np.asarray(indptr, np.int64)
        indices = np.asarray(indices, np.int64)
        counts = np.diff(indptr)
        item_counts = np.bincount(indices, minlength=n_items)
        p = torch.randn(n_users, factors, generator=generator) * init_std
        q = torch.randn(n_items, factors, generator=generator) * init_std
        self.user_factors = nn.Parameter(p * torch.as_tensor(counts > 0)[:, None])
        self.item_factors = nn.Parameter(q * torch.as_tensor(item_counts > 0)[:, None])
        self.implicit_factors = nn.Parameter(torch.zeros(n_items, factors))
        norm = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
        self.register_buffer("indptr", torch.as_tensor(indptr))
        self.register_buffer("indices", torch.as_tensor(indices))
        self.register_buffer("counts", torch.as_tensor(counts))
        self.register_buffer("norm", torch.as_tensor(norm, dtype=torch.float32))
        e = FREQUENCY_EXPONENT
        self.register_buffer("user_weight", torch.as_tensor(counts**e, dtype=torch.float32))
        self.register_buffer("item_weight", torch.as_tensor(item_counts**e, dtype=torch.float32))

    def implicit(self, users: torch.Tensor) -> torch.Tensor:
        """|N(u)|^-1/2 sum_{j in N(u)} y_j per user: (len(users), k); zeros where N(u) is empty."""
        counts = self.counts[users]
        offsets = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        pos = torch.repeat_interleave(self.indptr[users] - offsets, counts, output_size=total)
        pos = pos + torch.arange(total, device=pos.device)
        weights = torch.repeat_interleave(self.norm[users], counts, output_size=total)
        return F.embedding_bag(
            self.indices[pos], self.implicit_factors, offsets, mode="sum",
            per_sample_weights=weights,
        )  # fmt: skip

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """x_u = p_u + implicit(u): (len(users), k)."""
        return F.embedding(users, self.user_factors) + self.implicit(users)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings (unclipped) of aligned (user, item) pairs: (n,)."""
        # y is aggregated once per distinct user of the batch, then gathered per rating
        # (F.embedding rather than indexing: its backward is deterministic on GPUs too).
        unique, inverse = torch.unique(users, return_inverse=True)
        x = F.embedding(inverse, self.user_vectors(unique))
        q = F.embedding(items, self.item_factors)
        bu = F.embedding(users, self.user_bias[:, None])[:, 0]
        bi = F.embedding(items, self.item_bias[:, None])[:, 0]
        return self.mu + bu + bi + (x * q).sum(1)

    def penalty(self, reg: float, reg_bias: float) -> torch.Tensor:
        """reg * (sum_u n_u^e ||p_u||^2 + sum_i n_i^e (||q_i||^2 + ||y_i||^2)) + reg_bias ||b||^2,
        e = FREQUENCY_EXPONENT, n the training ratings of the row (a scalar tensor)."""
        squares = _RowWeightedSquares.apply
        factors = squares(self.user_weight, self.user_factors) + squares(
            self.item_weight, self.item_factors, self.implicit_factors
        )
        biases = self.user_bias.square().sum() + self.item_bias.square().sum()
        return reg * factors + reg_bias * biases

    def loss(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        reg: float,
        reg_bias: float,
        n_total: int,
    ) -> torch.Tensor:
        """Mini-batch estimate of the training objective divided by its `n_total` ratings:
        mean squared error on the batch + penalty / n_total."""
        err = self(users, items) - ratings
        return err.square().mean() + self.penalty(reg, reg_bias) / n_total


@register
class SVDpp(_RatingModel):
    """SVD++ (Koren 2008): r_ui = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j).

    N(u) is the user's training items (never validation or test items). Fitted with Adam on
    shuffled mini-batches of ratings, minimising the objective of `BiasedMF` plus
    reg * n_j^0.5 ||y_j||^2 (see `SVDppNet.penalty`).

    Hyperparameters: `factors` k; `reg`, `reg_bias` as in `BiasedMF`; `learning_rate` (Adam's
    initial step) and `lr_decay` (its factor per epoch: large early steps, a settled end point);
    `epochs` (maximum passes over the ratings; without `valid`, exactly that); `batch_size`
    (ratings per step); `patience` epochs without a better validation RMSE before stopping
    (only with `valid`; the best epoch's parameters are kept, `history_` records
    (epoch, valid RMSE)); `init_std` of p and q.

    Fitted (NumPy, so scoring needs no torch): user_bias_, item_bias_, user_factors_ (the full
    x_u, implicit term included, (n_users, k)), item_factors_ (n_items, k),
    implicit_factors_ (n_items, k), mu_, rating_range_.
    """

    gpu_capable = True

    name = "SVDpp"
    # Defaults: the region validation picked on the ML-100K u1..u5 carve-outs (reg 1.7-2.3,
    # reg_bias 3-16, 64-128 factors, best epoch 9-24; by epoch 20 the step is 4% of the first).
    defaults = {
        "factors": 64,
        "reg": 2.0,
        "reg_bias": 5.0,
        "learning_rate": 0.02,
        "lr_decay": 0.85,
        "epochs": 20,
        "batch_size": 4096,
        "patience": 3,
        "init_std": 0.1,
    }
    space = {
        "factors": Choice((32, 64, 128)),
        "reg": LogUniform(1.0, 5.0),
        "reg_bias": LogUniform(2.0, 30.0),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        device = resolve_device(self.device)
        with cuda_determinism(device):
            self._train(train, valid, seed, device)

    def _train(
        self, train: Interactions, valid: Interactions | None, seed: int, device: str
    ) -> None:
        f = train.frame
        users, items = f["user"].to_numpy(np.int64), f["item"].to_numpy(np.int64)
        ratings = f["rating"].to_numpy(np.float64)
        self._set_range(ratings)
        pattern = train.matrix(binary=True)
        generator = torch.Generator().manual_seed(int(seed))
        net = SVDppNet(
            int(self.params["factors"]), pattern.indptr, pattern.indices, train.n_items,
            self.mu_, init_std=float(self.params["init_std"]), generator=generator,
        ).to(device)  # fmt: skip
        optimizer = adam(net.parameters(), lr=float(self.params["learning_rate"]))
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, float(self.params["lr_decay"]))
        u = torch.tensor(users, device=device)
        i = torch.tensor(items, device=device)
        r = torch.tensor(ratings, dtype=torch.float32, device=device)
        reg, reg_bias = float(self.params["reg"]), float(self.params["reg_bias"])
        batch, n = int(self.params["batch_size"]), len(ratings)
        self._start_history()
        for epoch in range(1, int(self.params["epochs"]) + 1):
            net.train()
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                loss = net.loss(u[idx], i[idx], r[idx], reg, reg_bias, n)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
            snapshot = None
            if valid is not None and len(valid) > 0:
                snapshot = self._export(net)
            if self._early_stopping(valid, epoch, snapshot):
                break
        best = self._best_state()
        self._set_arrays(self._export(net) if best is None else best)

    @torch.no_grad()
    def _export(self, net: SVDppNet) -> tuple[np.ndarray, ...]:
        """Copy the parameters to NumPy (float64; x_u with its implicit term), set and return
        them: (user_bias_, item_bias_, user_factors_, item_factors_, implicit_factors_)."""
        users = torch.arange(self.n_users_, device=net.user_bias.device)
        arrays = tuple(
            t.detach().cpu().double().numpy()
            for t in (net.user_bias, net.item_bias, net.user_vectors(users), net.item_factors,
                      net.implicit_factors)
        )  # fmt: skip
        self._set_arrays(arrays)
        return arrays

    def _set_arrays(self, arrays: tuple[np.ndarray, ...]) -> None:
        (self.user_bias_, self.item_bias_, self.user_factors_, self.item_factors_,
         self.implicit_factors_) = arrays  # fmt: skip

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "item_factors_"):
            return 0
        # p_u is stored folded into user_factors_; count it once, as the model has it.
        return int(
            self.user_bias_.size
            + self.item_bias_.size
            + self.user_factors_.size
            + self.item_factors_.size
            + self.implicit_factors_.size
            + 1
        )
