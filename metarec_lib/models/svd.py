"""Rating-prediction factor models: biased matrix factorisation (ALS) and SVD++ (PyTorch).

Both predict r_ui = mu + b_u + b_i + q_i . x_u with mu the global training mean, and clip
predictions to the rating range seen in training, so `score` also ranks (predicted rating).

- `BiasedMF` (Koren, Bell & Volinsky 2009, "Matrix factorization techniques for recommender
  systems", IEEE Computer 42(8)): x_u = p_u, fitted by alternating least squares. With the item
  side fixed, each user's (b_u, p_u) is one ridge regression with a closed form, and vice versa;
  we solve all rows of a side at once with batched matrix products and batched solves. ALS was
  chosen over SGD/Adam because every sweep is an exact minimisation: no learning rate to tune,
  deterministic, and it reaches its best validation RMSE on ML-100K in about 10 sweeps (~1 s).
- `SVDpp` (Koren 2008, "Factorization meets the neighborhood", KDD): x_u = p_u + |N(u)|^-1/2
  sum_{j in N(u)} y_j, N(u) the user's training items; fitted with Adam on mini-batches of
  ratings in PyTorch; the implicit sum is aggregated once per user per batch (`embedding_bag`).

Regularisation is per rating, as in Koren's SGD (and the "weighted-lambda" ALS of Zhou et al.
2008, "Large-scale parallel collaborative filtering for the Netflix Prize"): a row with n ratings
pays reg * n * ||factors||^2, so heavy users and popular items are not over-shrunk; biases pay
reg_bias * ||b||^2 (a fixed number of pseudo-ratings at the global mean, as in Koren's baseline
predictors), which shrinks rarely rated items and users towards the mean.
"""

from __future__ import annotations

import copy

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.registry import register
from metarec_lib.tuning import Choice, LogUniform

ALPHA = 1.0
_BLOCK = 1 << 22  # floats per padded block in the batched Gram products (~32 MB float64)


# ----------------------------------------------------------------------------- ALS algebra


def _padded_blocks(
    indptr: npt.NDArray[np.int64], pad: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Group rows of similar length and pad them: [(rows (b,), positions (b, width))].

    positions index the CSR data/indices arrays; padding points at position `pad` (a slot one
    past the end, which callers fill with zeros). Rows are sorted by length and cut where the
    length grows by more than 25% or the block would exceed `_BLOCK` entries / 64, so padding
    wastes little and each block is one batched BLAS product.
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
        step = max(1, (_BLOCK // 64) // width)
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
    + reg * n_u * ||x_1:||^2 with z_i = (1, q_i), x = (b_u, p_u): the ridge system
    (Z_u^T Z_u + diag(reg_bias, reg n_u, ...)) x = Z_u^T y_u. Returns (bias (n_rows,),
    factors (n_rows, k)); rows without ratings get zeros. `blocks` caches `_padded_blocks`.
    """
    matrix = sp.csr_matrix(matrix)
    n_rows, k = matrix.shape[0], fixed_factors.shape[1]
    indptr = matrix.indptr.astype(np.int64)
    if blocks is None:
        blocks = _padded_blocks(indptr, matrix.nnz)
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
        gram = np.matmul(zb.transpose(0, 2, 1), zb)  # (b, k + 1, k + 1)
        rhs = np.matmul(target[positions][:, None, :], zb)[:, 0, :]  # (b, k + 1)
        diag = np.empty((len(rows), k + 1))
        diag[:, 0] = reg_bias
        diag[:, 1:] = (reg * counts[rows] ** ALPHA)[:, None]
        gram[:, np.arange(k + 1), np.arange(k + 1)] += diag + 1e-12
        solution[rows] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return solution[:, 0], solution[:, 1:]


def _training_frame(train: Interactions) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray]:
    f = train.frame
    return (
        f["user"].to_numpy(np.int64),
        f["item"].to_numpy(np.int64),
        f["rating"].to_numpy(np.float64),
    )


class _RatingModel(Recommender):
    """Shared prediction code: mu + b_u + b_i + x_u . q_i, clipped to the training range."""

    family = "collaborative"
    predicts_ratings = True

    def _set_range(self, ratings: npt.NDArray[np.float64]) -> None:
        self.mu_ = float(ratings.mean()) if len(ratings) else 0.0
        self.rating_range_ = (
            (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)
        )

    def _user_vectors(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return self.user_factors_[users]

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Predicted ratings of every item, (len(users), n_items), clipped to the train range."""
        users = np.asarray(users, np.int64)
        raw = (
            self.mu_
            + self.user_bias_[users][:, None]
            + self.item_bias_[None, :]
            + self._user_vectors(users) @ self.item_factors_.T
        )
        return np.clip(raw, *self.rating_range_)

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Predicted ratings of aligned (user, item) pairs, (n,), clipped to the train range."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        raw = (
            self.mu_
            + self.user_bias_[users]
            + self.item_bias_[items]
            + np.einsum("nk,nk->n", self._user_vectors(users), self.item_factors_[items])
        )
        return np.clip(raw, *self.rating_range_)

    def _valid_rmse(self, valid: Interactions) -> float:
        u, i, r = _training_frame(valid)
        return float(np.sqrt(np.mean((self.predict(u, i) - r) ** 2))) if len(r) else np.nan


@register
class BiasedMF(_RatingModel):
    """Biased matrix factorisation fitted by ALS (Koren, Bell & Volinsky 2009).

    r_ui = mu + b_u + b_i + p_u . q_i, minimising the squared error plus
    reg * (n_u ||p_u||^2 + n_i ||q_i||^2) + reg_bias * (b_u^2 + b_i^2) (see module docstring).

    Hyperparameters: `factors` k (0 gives the biases-only baseline predictor); `reg` the
    per-rating L2 weight on factors; `reg_bias` the L2 weight on biases (pseudo-ratings at the
    mean); `epochs` the maximum number of ALS sweeps (user half-step then item half-step);
    `patience` sweeps without a better validation RMSE before stopping (only with `valid`;
    the best sweep's parameters are kept and `history_` records (epoch, valid RMSE));
    `init_std` the standard deviation of the random initial item factors.

    Fitted: user_bias_ (n_users,), item_bias_ (n_items,), user_factors_ (n_users, k),
    item_factors_ (n_items, k), mu_, rating_range_.
    """

    name = "BiasedMF"
    defaults = {
        "factors": 64,
        "reg": 0.05,
        "reg_bias": 5.0,
        "epochs": 15,
        "patience": 2,
        "init_std": 0.1,
    }
    space = {
        "factors": Choice((16, 32, 64, 128)),
        "reg": LogUniform(0.01, 0.3),
        "reg_bias": LogUniform(0.5, 30.0),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        k = int(self.params["factors"])
        reg, reg_bias = float(self.params["reg"]), float(self.params["reg_bias"])
        users, items, ratings = _training_frame(train)
        self._set_range(ratings)
        by_user = train.matrix()
        by_item = by_user.T.tocsr()
        user_blocks = _padded_blocks(by_user.indptr.astype(np.int64), by_user.nnz)
        item_blocks = _padded_blocks(by_item.indptr.astype(np.int64), by_item.nnz)
        rng = np.random.default_rng(seed)
        self.item_factors_ = rng.normal(0.0, float(self.params["init_std"]), (train.n_items, k))
        self.item_bias_ = np.zeros(train.n_items)
        self.user_bias_ = np.zeros(train.n_users)
        self.user_factors_ = np.zeros((train.n_users, k))
        self.history_: list[tuple[int, float]] = []
        best, best_rmse, waited = None, np.inf, 0
        for epoch in range(1, int(self.params["epochs"]) + 1):
            self.user_bias_, self.user_factors_ = ridge_half_step(
                by_user, self.item_factors_, self.item_bias_, self.mu_, reg, reg_bias, user_blocks
            )
            self.item_bias_, self.item_factors_ = ridge_half_step(
                by_item, self.user_factors_, self.user_bias_, self.mu_, reg, reg_bias, item_blocks
            )
            if valid is None or len(valid) == 0:
                continue
            rmse = self._valid_rmse(valid)
            self.history_.append((epoch, rmse))
            if rmse < best_rmse - 1e-6:
                best_rmse, waited = rmse, 0
                best = (self.user_bias_, self.user_factors_, self.item_bias_, self.item_factors_)
            else:
                waited += 1
                if waited >= int(self.params["patience"]):
                    break
        if best is not None:
            self.user_bias_, self.user_factors_, self.item_bias_, self.item_factors_ = best
            self.best_epoch_ = min(self.history_, key=lambda h: h[1])[0]

    def fold_in(
        self, items: npt.ArrayLike, ratings: npt.ArrayLike
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """(b_u, p_u (k,)) of a new user from their (item, rating) pairs, item side fixed.

        The same ridge problem as one ALS user half-step, so folding in a training user's own
        ratings reproduces (up to the last item half-step) that user's fitted parameters.
        """
        items = np.asarray(items, np.int64)
        ratings = np.asarray(ratings, np.float64)
        if items.shape != ratings.shape or items.ndim != 1:
            raise ValueError(
                f"BiasedMF.fold_in: items {items.shape} and ratings {ratings.shape} must be "
                "aligned 1-d arrays"
            )
        row = sp.csr_matrix(
            (ratings, (np.zeros(len(items), np.int64), items)), shape=(1, self.n_items_)
        )
        row.sum_duplicates()
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
        return np.clip(raw, *self.rating_range_)

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


class SVDppNet(nn.Module):
    """SVD++ parameters and loss: biases (n,), p (n_users, k), q and y (n_items, k).

    indptr (n_users + 1,) / indices (nnz,): each user's training items N(u) (CSR pattern);
    rows_per_user (n_users,) / rows_per_item (n_items,): training ratings per row, the weights
    of the per-rating L2 penalty. p and q start N(0, init_std^2) from `generator`; biases and
    y start at zero, so the untrained model is a biased MF.
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
        self.user_factors = nn.Parameter(
            torch.randn(n_users, factors, generator=generator) * init_std
        )
        self.item_factors = nn.Parameter(
            torch.randn(n_items, factors, generator=generator) * init_std
        )
        self.implicit_factors = nn.Parameter(torch.zeros(n_items, factors))
        indptr = np.asarray(indptr, np.int64)
        indices = np.asarray(indices, np.int64)
        counts = np.diff(indptr)
        norm = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
        self.register_buffer("indptr", torch.as_tensor(indptr))
        self.register_buffer("indices", torch.as_tensor(indices))
        self.register_buffer("counts", torch.as_tensor(counts))
        self.register_buffer("norm", torch.as_tensor(norm, dtype=torch.float32))
        self.register_buffer("user_weight", torch.as_tensor(counts, dtype=torch.float32))
        item_counts = np.bincount(indices, minlength=n_items).astype(np.float32)
        self.register_buffer("item_weight", torch.as_tensor(item_counts))

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
        """reg * (sum_u n_u ||p_u||^2 + sum_i n_i (||q_i||^2 + ||y_i||^2)) + reg_bias * ||b||^2."""
        factors = (self.user_weight * self.user_factors.square().sum(1)).sum() + (
            self.item_weight
            * (self.item_factors.square().sum(1) + self.implicit_factors.square().sum(1))
        ).sum()
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
    shuffled mini-batches of ratings, minimising the same objective as `BiasedMF` plus
    reg * n_j ||y_j||^2 (per-rating L2 on factors, `reg_bias` on biases).

    Hyperparameters: `factors` k; `reg`, `reg_bias` as in `BiasedMF`; `learning_rate` (Adam);
    `epochs` (maximum passes over the ratings); `batch_size` (ratings per step); `patience`
    epochs without a better validation RMSE before stopping (only with `valid`; the best
    epoch's parameters are kept, `history_` records (epoch, valid RMSE)); `init_std` of p and q.

    Fitted (NumPy, so scoring needs no torch): user_bias_, item_bias_, user_factors_ (the full
    x_u, implicit term included, (n_users, k)), item_factors_ (n_items, k),
    implicit_factors_ (n_items, k), mu_, rating_range_.
    """

    name = "SVDpp"
    defaults = {
        "factors": 64,
        "reg": 0.05,
        "reg_bias": 5.0,
        "learning_rate": 0.005,
        "lr_decay": 1.0,
        "epochs": 30,
        "batch_size": 1024,
        "patience": 3,
        "init_std": 0.1,
    }
    space = {
        "factors": Choice((16, 32, 64, 128)),
        "reg": LogUniform(0.01, 0.3),
        "reg_bias": LogUniform(0.5, 30.0),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        device = resolve_device(self.device)
        users, items, ratings = _training_frame(train)
        self._set_range(ratings)
        pattern = train.matrix(binary=True)
        generator = torch.Generator().manual_seed(int(seed))
        net = SVDppNet(
            int(self.params["factors"]), pattern.indptr, pattern.indices, train.n_items,
            self.mu_, init_std=float(self.params["init_std"]), generator=generator,
        ).to(device)  # fmt: skip
        optimizer = torch.optim.Adam(net.parameters(), lr=float(self.params["learning_rate"]))
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, float(self.params["lr_decay"]))
        u = torch.as_tensor(users.copy(), device=device)
        i = torch.as_tensor(items.copy(), device=device)
        r = torch.as_tensor(ratings, dtype=torch.float32, device=device)
        reg, reg_bias = float(self.params["reg"]), float(self.params["reg_bias"])
        batch, n = int(self.params["batch_size"]), len(ratings)
        self.history_: list[tuple[int, float]] = []
        best, best_rmse, waited = None, np.inf, 0
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
            if valid is None or len(valid) == 0:
                continue
            self._export(net)
            rmse = self._valid_rmse(valid)
            self.history_.append((epoch, rmse))
            if rmse < best_rmse - 1e-6:
                best_rmse, waited = rmse, 0
                best = copy.deepcopy(net.state_dict())
            else:
                waited += 1
                if waited >= int(self.params["patience"]):
                    break
        if best is not None:
            net.load_state_dict(best)
            self.best_epoch_ = min(self.history_, key=lambda h: h[1])[0]
        self._export(net)

    @torch.no_grad()
    def _export(self, net: SVDppNet) -> None:
        """Copy the fitted parameters to NumPy (float64), x_u with its implicit term."""
        users = torch.arange(self.n_users_, device=net.user_bias.device)
        self.user_bias_ = net.user_bias.detach().cpu().double().numpy()
        self.item_bias_ = net.item_bias.detach().cpu().double().numpy()
        self.user_factors_ = net.user_vectors(users).cpu().double().numpy()
        self.item_factors_ = net.item_factors.detach().cpu().double().numpy()
        self.implicit_factors_ = net.implicit_factors.detach().cpu().double().numpy()

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
