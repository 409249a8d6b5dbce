"""Meta-learning recommenders for user cold start: MeLU, MAML, FOMAML, Reptile, PretrainAdapt.

The contract (the cold-start protocol, `splits.episode_split`): `fit(train, valid=, seed=)` gets
`train` holding the warm (meta-train) users' ratings and, for each user in `train.cold_users`,
only that user's support set (k ratings). A model meta-trains on the warm users only, each one a
task, then adapts the network to each cold user's support and keeps that user's adapted
parameters, so `predict` (ratings, clipped to the warm training range) and `score` (the adapted
predicted rating of every item, unclipped so that it still orders items) serve cold users. No
cold user's row enters training: the task pool, the mean rating and the range are warm only.
`valid` (meta-validation: held-out query rows of some cold users) drives early stopping: RMSE on
those rows after adapting each of their users on its rows in `train` (its support).

Every model shares one network and one inner loop, so that a difference between them comes
from how the network is (meta-)trained and what it adapts:

    rating(u, i) = mu + out(MLP([x_u; x_i]))

x_u: one `embedding`-wide vector per user variable (age group, gender, occupation: whatever
exists), x_i: a projection of the item's multi-hot features (genres, decade, tags) plus, with
`item_ids`, an item id embedding - `multitask.encode_features` / `PairEncoder`, without ids for
users (a new user's id embedding would never have been trained). MLP: (hidden, hidden // 2),
ReLU; mu: the warm training mean. The "decision layers" are the MLP and the output layer.

Inner loop (adaptation to a user, the local update): `inner_steps` plain SGD steps of size
`inner_lr` on the mean squared error over the user's rows, starting from the global parameters;
written with `torch.func` (`functional_call` + `grad`) and vectorised over users with `vmap`
(users padded to the same number of rows, padding masked out of the loss). Where the item id
table adapts, a task's inner loop works on the table's rows of its own items only
(`task_view`): the same gradients and adapted rows as the whole table, at a cost per row
instead of per catalogue item (3 epochs of MAML on ml-latest-small: 5.5 s instead of 12.6 s).

Meta-training (outer loop): Adam (`learning_rate`) over all parameters. An epoch visits every
warm user with at least two ratings once, in a seeded order, in meta-batches of
`tasks_per_batch` tasks; each task draws a support of k rows (`train_support`: "uniform" draws
k in 1..20, the protocol's range, or a fixed int; at most the user's ratings minus one) and a
query of up to `query_size` of the user's other rows. Tasks are equally weighted.

- `MeLU` (Lee, Im, Jang, Cho & Chung 2019, "MeLU: Meta-Learned User Preference Estimator for
  Cold-Start Recommendation", KDD): the decision layers adapt, the embeddings are global (they
  change in the outer update only); meta-gradient of the query loss through the local update,
  second order. The published MeLU embeds features only (`item_ids=False`); the item id
  embedding, on by default, was measured to help on MovieLens (see `META_DEFAULTS`).
- `MAML` (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML): every parameter adapts; exact second-order meta-gradient (the inner
  gradients stay in the graph).
- `FOMAML`: MAML's first-order approximation (the inner gradients are detached, so the
  meta-gradient is the query gradient at the adapted parameters).
- `Reptile` (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms"): every
  parameter adapts, on the task's support and query rows together (Reptile has no query); the
  outer step moves towards the mean adapted weights, theta - mean(phi) given to Adam as the
  gradient.
- `PretrainAdapt` (family "transfer"): no meta-training; the network is trained on every warm
  rating by mini-batch regression (Adam, `batch_size`, `epochs` passes), then fine-tuned on each
  cold user's support with the same inner loop (every parameter adapts): the baseline a
  meta-learner has to beat.

Users other than the cold ones: a user is always scored with the parameters adapted on its
known ratings (a meta-learned initialisation is not meant to predict unadapted). A cold user's
(adapted on its support) are computed in `fit` and kept (`adapted_`); `adapt` adds or replaces
users from any support set; any other user is adapted on its rows in `train` when scored
(deterministic, recomputed on each call, not stored); a user without rows gets the global
parameters.

Training once per seed: the trained network depends on the warm rows, the side information, the
hyperparameters, the seed, the device and the meta-validation (`valid` and its users' rows in
`train`), never on the cold users' supports. So a process keeps the trained networks (an
in-process memo keyed by all of these, `_training_key`) and a fit with the same key loads the
trained parameters instead of training again; only the adaptation of the cold users runs. With
`splits.episode_split`'s one meta-validation support size the support sizes k = 1..20 of one
seed share one training; the results are bitwise those of a fresh fit. Such a fit sets
`meta_train_reused_` and `reused_seconds_` (the seconds the training it reuses took, 0 for a fit
that trained), which a cost report adds to the fit's own time.

Defaults: a quick measurement on ML-100K, see the note above `META_DEFAULTS`. Costs there (one
busy core): an epoch takes 0.2-0.5 s (660 warm users), early stopping ends fits after 10-30
epochs (5-17 s); adapting 283 cold users takes 0.04 s (MeLU) to 0.14 s (MAML). With `item_ids`
every model but MeLU adapts, hence keeps per user, the item id table: 35k floats per cold user
on ML-100K, 170k on ml-latest-small (31M floats, 124 MB, for its 183 tuning cold users).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import ClipsRatings, Recommender, resolve_device
from metarec_lib.models.memo import TrainingMemo
from metarec_lib.models.multitask import MLP, Features, PairEncoder, _linear, encode_features
from metarec_lib.models.registry import register
from metarec_lib.models.torch_base import product_operand
from metarec_lib.models.training import (
    LOG_COLUMNS,
    EarlyStopping,
    adam,
    cpu_threads,
    cuda_determinism,
    epoch_record,
)
from metarec_lib.tuning import Choice, LogUniform

Params = dict[str, torch.Tensor]
ITEM_TABLE = "encoder.item_ids.weight"  # the item id embedding (n_items, embedding)
ITEM_FEATURES = "encoder.item_features"  # the items' multi-hot features (a buffer)
ITEM_PROJ = "encoder.item_proj.weight"  # their projection (embedding, n_features)
MAX_SUPPORT = 20  # the protocol's largest support; "uniform" draws warm supports in 1..20
LOCAL = ("all", "decision")

# Measured on ML-100K, coldstart-users@k=5, seed 0, cold users = meta-valid + meta-test (tuning
# now leaves the meta-test users out), early stopping on the meta-valid queries; meta-valid
# RMSE (meta-test in brackets).
# References on the meta-test queries: warm global mean 1.091, warm item mean 0.998.
# - item_ids: MeLU without (features only, as published) 1.039 (1.010), with 0.976 (0.975).
# - inner_lr x inner_steps, one setting for every model (so that the comparison is about how
#   the network was trained, not the adaptation budget): 0.01 x 3: MeLU 0.976 (0.975), MAML
#   0.975 (0.975), FOMAML 0.976 (0.973), Reptile 1.004 (1.007), PretrainAdapt 0.980 (0.965).
#   MeLU: 0.03 x 3 0.978, 0.1 x 3 1.005, 0.3 x 3 1.056, 0.1 x 1 0.977, 0.1 x 5 1.015; MAML:
#   0.1 x 3 0.998; PretrainAdapt: 0 steps 1.019 (0.992), 0.003 x 3 0.993, 0.03 x 3 0.997,
#   0.1 x 3 1.097, 0.01 x 5 0.983; Reptile: 0.03 x 3 1.016, 0.01 x 5 1.017.
# - learning_rate 3e-3: MeLU 0.978, Reptile 1.007 (both overfit sooner). tasks_per_batch 16:
#   MeLU 0.976. train_support fixed at 5 (the test k): MeLU 0.973; "uniform" kept, as the
#   protocol's k runs over 1..20.
# - patience 10: the meta-valid curve is noisy (run to 60 epochs, MeLU's best is 0.975 at
#   epoch 30, against 0.976 at epoch 10).
META_DEFAULTS: dict[str, Any] = {
    "embedding": 16,
    "hidden": 64,
    "item_ids": True,
    "inner_steps": 3,
    "inner_lr": 0.01,
    "learning_rate": 1e-3,
    "epochs": 100,
    "eval_every": 1,
    "patience": 10,
}
EPISODE_DEFAULTS: dict[str, Any] = {
    **META_DEFAULTS,
    "tasks_per_batch": 32,
    "train_support": "uniform",
    "query_size": 20,
}


# ----------------------------------------------------------------------------- data


# Trained networks by `_training_key`, so the support sizes of one seed meta-train once: a
# cold-start grid runs k = 1, 3, 5, 10, 20 on the same warm users and, with
# `splits.episode_split`'s one meta-validation support size, the same meta-valid rows. An entry
# is the trained parameters (no buffers: those follow from the side information in the key) and
# the training record: 0.14 MB on ML-100K, 0.68 MB on ml-latest-small (its item id table);
# least recently used out first. 32 entries hold one notebook's grid, 5 models x 3 seeds on each
# of two data sets (about 12 MB), with room for the tuning fits in between.
_TRAINED = TrainingMemo(32)


def clear_training_cache() -> None:
    """Forget every trained network (tests that compare two trainings call this)."""
    _TRAINED.clear()


@dataclass(frozen=True)
class UserRows:
    """Ratings grouped by user: user u's rows are `indptr[u]:indptr[u + 1]` of `items` and
    `ratings` (sorted by user, then item; a duplicated pair keeps its last rating)."""

    indptr: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    ratings: npt.NDArray[np.float32]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, n_users: int) -> UserRows:
        pairs = frame.drop_duplicates(["user", "item"], keep="last")
        pairs = pairs.sort_values(["user", "item"], kind="mergesort")
        users = pairs["user"].to_numpy(np.int64)
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, pairs["item"].to_numpy(np.int64),
                   pairs["rating"].to_numpy(np.float32))  # fmt: skip

    def count(self, users: npt.ArrayLike) -> npt.NDArray[np.int64]:
        users = np.asarray(users, np.int64)
        return self.indptr[users + 1] - self.indptr[users]

    def only(self, keep: npt.NDArray[np.bool_]) -> UserRows:
        """The rows of the users where `keep` (n_users,) is True; the others get none."""
        row_users = np.repeat(np.arange(len(keep)), np.diff(self.indptr))
        mask = keep[row_users]
        counts = np.where(keep, np.diff(self.indptr), 0)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return UserRows(indptr, self.items[mask], self.ratings[mask])

    def rows(self, user: int) -> npt.NDArray[np.int64]:
        return np.arange(self.indptr[user], self.indptr[user + 1])


def pad_rows(rows: Sequence[np.ndarray], data: UserRows) -> tuple[torch.Tensor, ...]:
    """(items, ratings, mask), each (len(rows), width): row lists padded to the longest (at
    least 1) with item 0, rating 0 and mask 0."""
    width = max([len(r) for r in rows] + [1])
    items = np.zeros((len(rows), width), np.int64)
    ratings = np.zeros((len(rows), width), np.float32)
    mask = np.zeros((len(rows), width), np.float32)
    for t, r in enumerate(rows):
        items[t, : len(r)] = data.items[r]
        ratings[t, : len(r)] = data.ratings[r]
        mask[t, : len(r)] = 1.0
    return torch.from_numpy(items), torch.from_numpy(ratings), torch.from_numpy(mask)


@dataclass(frozen=True)
class Episodes:
    """A meta-batch of T tasks: each a user with a support and a query, padded.

    users: (T,) int64; support_* (T, K) and query_* (T, Q): items (int64), ratings and mask
    (1 for a real row, 0 for padding)."""

    users: torch.Tensor
    support_items: torch.Tensor
    support_ratings: torch.Tensor
    support_mask: torch.Tensor
    query_items: torch.Tensor
    query_ratings: torch.Tensor
    query_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.users)

    def to(self, device: str, dtype: torch.dtype) -> Episodes:
        """On `device`, ratings and masks in `dtype`."""
        return Episodes(
            self.users.to(device),
            self.support_items.to(device),
            self.support_ratings.to(device, dtype),
            self.support_mask.to(device, dtype),
            self.query_items.to(device),
            self.query_ratings.to(device, dtype),
            self.query_mask.to(device, dtype),
        )


# ----------------------------------------------------------------------------- network


class FeatureEncoder(PairEncoder):
    """`PairEncoder` without user ids: x_u = the user variables' embeddings (empty without
    user features), x_i = the projected item features, plus the item id embedding when
    `item_ids` (without features and ids x_i is empty)."""

    def __init__(
        self, n_items: int, dim: int, features: Features, item_ids: bool, generator: torch.Generator
    ) -> None:
        super().__init__(1, n_items, dim, features, generator)
        self.user_ids = None
        if not item_ids:
            self.item_ids = None
        has_features = features.item_features.shape[1] > 0
        self.user_dim = dim * len(features.user_levels)
        self.item_dim = dim * (int(item_ids) + int(has_features))

    def users(self, idx: torch.Tensor) -> torch.Tensor:
        if self.user_vars is None:
            return self.item_features.new_zeros((*idx.shape, 0))
        return self.user_vars(self.user_codes[idx]).flatten(-2)

    def items(self, idx: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.item_ids is not None:
            parts.append(self.item_ids(idx))
        if self.item_proj is not None:
            parts.append(self.item_proj(self.item_features[idx]))
        return torch.cat(parts, -1) if parts else self.item_features.new_zeros((*idx.shape, 0))


class DecisionLayers(nn.Module):
    """MLP over [x_u; x_i] then a linear output: (...,) = the rating minus the mean."""

    def __init__(self, dims: Sequence[int], widths: Sequence[int], generator: torch.Generator):
        super().__init__()
        self.mlp = MLP(dims, widths, generator)
        self.out = _linear(widths[-1], 1, generator)

    def forward(self, x_u: torch.Tensor, x_i: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x_u, x_i)).squeeze(-1)


class MetaNet(nn.Module):
    """The one network of every model here: `encoder` (embeddings) -> `decision` layers.
    forward(users, items): broadcastable index tensors -> rating minus the mean."""

    def __init__(
        self,
        n_items: int,
        features: Features,
        dim: int,
        widths: Sequence[int],
        item_ids: bool,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.encoder = FeatureEncoder(n_items, dim, features, item_ids, generator)
        self.decision = DecisionLayers(
            (self.encoder.user_dim, self.encoder.item_dim), widths, generator
        )
        self.pair_width = self.encoder.item_dim + int(sum(widths)) + 1  # floats per pair

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.decision(*self.encoder(users, items))


# ----------------------------------------------------------------------------- base


class MetaRecommender(ClipsRatings, Recommender):
    """Base: the network, the inner loop, adaptation, scoring and the training loop.

    A model writes `prepare` (keep what its batches need from the warm rows), `batches` (one
    epoch) and `step` (one update; returns the loss to log and the number of samples).
    Hyperparameters (`META_DEFAULTS`): embedding, hidden (MLP widths hidden, hidden // 2),
    item_ids, inner_steps and inner_lr (the local update), learning_rate (outer Adam), epochs
    (maximum), eval_every and patience (early stopping on meta-validation RMSE).
    After fit: module_ (the global network), local_names_ (the parameters the inner loop
    adapts), adapted_ ({name: (n_adapted, ...)}) and slot_ ((n_users,), a user's row in
    adapted_ or -1), rows_ (the training rows by user), mu_ and rating_range_ (of the warm
    users' ratings), history_ [(epoch, valid RMSE)], best_epoch_, train_log_ (epoch, loss,
    seconds, samples, samples_per_second, valid_score: the validation RMSE),
    meta_train_seconds_ (the training's seconds, measured when it ran), meta_train_reused_
    (True when the memo served the trained network) and reused_seconds_ (meta_train_seconds_
    when reused, else 0.0: the training cost this fit's wall time lacks).
    """

    gpu_capable = True

    family = "meta"
    predicts_ratings = True
    defaults: ClassVar[dict[str, Any]] = dict(META_DEFAULTS)
    local: ClassVar[str] = "all"  # what the inner loop adapts: "all" or "decision"
    # Small ops on tiny tensors: one intra-op thread (a second one only adds barriers).
    cpu_threads: ClassVar[int | None] = 1
    budget_floats: ClassVar[int] = 1 << 22  # activations per block when adapting or scoring
    # What is derived from the fitted module's items and kept: `_feature_rows`, `_feature_matrix`.
    _derived: ClassVar[tuple[str, ...]] = ("_feature_rows_", "_feature_operand_")

    # -- what a model writes --------------------------------------------------------------
    @abstractmethod
    def prepare(self, warm: UserRows) -> None:
        """Keep what `batches` needs from the warm users' rows; raise if there is nothing."""

    @abstractmethod
    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        """One epoch of training batches (CPU)."""

    @abstractmethod
    def step(self, module: MetaNet, batch: Any, optimiser: torch.optim.Optimizer) -> tuple:
        """One update; returns (detached loss, samples in the batch)."""

    # -- checks ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params
        ints = {"embedding": 1, "hidden": 2, "inner_steps": 0, "epochs": 0, "eval_every": 1,
                "patience": 1, "tasks_per_batch": 1, "query_size": 1, "batch_size": 1}  # fmt: skip
        for key, low in ints.items():
            if key in p and (isinstance(p[key], bool) or int(p[key]) != p[key] or p[key] < low):
                raise ValueError(f"{self.name}: {key}={p[key]!r}; expected an int >= {low}")
        for key in ("inner_lr", "learning_rate"):
            if not float(p[key]) >= 0:
                raise ValueError(f"{self.name}: {key}={p[key]!r}; expected a number >= 0")
        if "train_support" in p:
            k = p["train_support"]
            if k != "uniform" and (isinstance(k, bool | str) or int(k) != k or k < 1):
                raise ValueError(
                    f"{self.name}: train_support={k!r}; expected 'uniform' or an int >= 1"
                )
        if self.local not in LOCAL:  # pragma: no cover - a class attribute
            raise ValueError(f"{self.name}: local={self.local!r}; expected one of {LOCAL}")

    def _cold_mask(self, train: Interactions) -> npt.NDArray[np.bool_]:
        cold = np.zeros(train.n_users, bool)
        if train.cold_users is None:
            return cold
        users = np.asarray(train.cold_users)
        if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
            raise ValueError(
                f"{self.name}: train.cold_users must be a 1-D integer array of dense user "
                f"indices; got dtype {users.dtype}, shape {users.shape}"
            )
        bad = (users < 0) | (users >= train.n_users)
        if bad.any():
            raise ValueError(
                f"{self.name}: train.cold_users holds {int(bad.sum())} index(es) outside "
                f"0..{train.n_users - 1}, e.g. {int(users[bad][0])}"
            )
        cold[users] = True
        return cold

    # -- fit ------------------------------------------------------------------------------
    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        self._check_params()
        for derived in self._derived:  # from a previous fit's items
            self.__dict__.pop(derived, None)
        self.__dict__.pop("diverged_users_", None)  # a previous fit's
        p = self.params
        if valid is not None and not len(valid.frame):
            valid = None  # nothing to validate on: train the full `epochs`
        self.device_ = resolve_device(self.device)
        rows = UserRows.from_frame(train.frame, train.n_users)
        cold = self._cold_mask(train)
        warm = rows.only(~cold)
        if not len(warm.ratings):
            raise ValueError(f"{self.name}: no warm (non-cold) user has a rating to train on")
        self.mu_ = float(warm.ratings.astype(np.float64).mean())
        self.rating_range_ = (float(warm.ratings.min()), float(warm.ratings.max()))
        self.rows_ = rows
        devices = [torch.cuda.current_device()] if self.device_.startswith("cuda") else []
        with (
            cpu_threads(self.device_, self.cpu_threads),
            torch.random.fork_rng(devices),
            cuda_determinism(self.device_),
        ):
            torch.manual_seed(int(seed))
            generator = torch.Generator().manual_seed(int(seed))
            hidden = int(p["hidden"])
            module = MetaNet(
                train.n_items,
                encode_features(train),
                int(p["embedding"]),
                (hidden, max(hidden // 2, 1)),
                bool(p["item_ids"]),
                generator,
            ).to(self.device_)
            self.module_ = module
            prefix = "" if self.local == "all" else "decision."
            self.local_names_ = tuple(
                n for n, _ in module.named_parameters() if n.startswith(prefix)
            )
            self.prepare(warm)
            key = self._training_key(warm, rows, train, valid, seed)
            cached = _TRAINED.get(key)
            start = time.perf_counter()
            if cached is None:
                self._train(module, valid, np.random.default_rng(int(seed)))
                self.meta_train_seconds_ = time.perf_counter() - start
                state = {n: w.detach().clone() for n, w in module.named_parameters()}
                _TRAINED.put(key, (state, self.history_, self.best_epoch_, self.train_log_,
                                self.meta_train_seconds_))  # fmt: skip
                self.meta_train_reused_, self.reused_seconds_ = False, 0.0
            else:  # the same warm users, hyperparameters and seed: the same trained network
                state, self.history_, self.best_epoch_, self.train_log_, seconds = cached
                with torch.no_grad():
                    for n, w in module.named_parameters():
                        w.copy_(state[n])
                self.meta_train_seconds_, self.meta_train_reused_ = seconds, True
                self.reused_seconds_ = seconds
            self.release()
            self.adapted_: Params = {}
            self.slot_ = np.full(train.n_users, -1, np.int64)
            with torch.no_grad():
                self._store(np.flatnonzero(cold & (rows.count(np.arange(train.n_users)) > 0)),
                            rows)  # fmt: skip

    def _training_key(self, warm: UserRows, rows: UserRows, train: Interactions,
                      valid: Interactions | None, seed: int) -> str:  # fmt: skip
        """What the trained network depends on: the model and its hyperparameters, the seed,
        the device, the warm users' rows, the catalogue and side information, `valid` and the
        rows in `train` of `valid`'s users (early stopping adapts them on those rows). Cold
        users' supports are not in it: they are adapted after training."""
        digest = hashlib.sha256()

        def add(data: UserRows) -> None:
            for array in (data.indptr, data.items, data.ratings):
                digest.update(np.ascontiguousarray(array).tobytes())

        add(warm)
        if valid is not None:
            f = valid.frame
            for column in ("user", "item", "rating"):
                digest.update(f[column].to_numpy().tobytes())
            judged = np.zeros(train.n_users, bool)
            judged[f["user"].to_numpy(np.int64)] = True
            add(rows.only(judged))
        for frame in (train.users, train.items):
            if frame is not None:
                digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
        config = json.dumps([self.name, self.params, int(seed), self.device_, train.n_users,
                             train.n_items], sort_keys=True, default=str)  # fmt: skip
        digest.update(config.encode())
        return digest.hexdigest()

    def release(self) -> None:
        """Drop what only training needed (the warm rows kept by `prepare`)."""

    def _train(self, module: MetaNet, valid: Interactions | None, rng: np.random.Generator):
        p = self.params
        optimiser = adam(module.parameters(), lr=float(p["learning_rate"]))
        stopper = EarlyStopping(int(p["patience"]), higher_is_better=False)
        log: list[dict[str, Any]] = []
        for epoch in range(1, int(p["epochs"]) + 1):
            start = time.perf_counter()
            total, samples = 0.0, 0
            for batch in self.batches(rng):
                loss, n = self.step(module, batch, optimiser)
                total += float(loss) * n
                samples += n
            mean_loss = total / max(samples, 1)
            seconds = time.perf_counter() - start
            row = epoch_record(
                self.name,
                epoch,
                mean_loss,
                seconds,
                samples,
                f"learning_rate={p['learning_rate']}, inner_lr={p['inner_lr']}",
            )
            log.append(row)
            if valid is None or epoch % int(p["eval_every"]):
                continue
            row["valid_score"] = value = self.valid_rmse(module, valid)
            if stopper.update(epoch, value, lambda: copy.deepcopy(module.state_dict())):
                break
        if stopper.best_state is not None:
            module.load_state_dict(stopper.best_state)
        self.history_, self.best_epoch_ = stopper.history, stopper.best_epoch
        self.train_log_ = pd.DataFrame(log, columns=LOG_COLUMNS)

    def valid_rmse(self, module: MetaNet, valid: Interactions) -> float:
        """RMSE of `module` on `valid`'s rows, each user adapted on its rows in `train`, the
        predictions clipped to the training range."""
        f = valid.frame
        users, items = f["user"].to_numpy(np.int64), f["item"].to_numpy(np.int64)
        if not len(users):
            return float("nan")
        pred = np.empty(len(users))
        uniq, inv = np.unique(users, return_inverse=True)
        step = self._score_step(module)
        for start in range(0, len(uniq), step):
            block = uniq[start : start + step]
            with torch.no_grad():
                params = self._adapt_rows(module, block, self.rows_)
                scores = self._rate_all(module, params, block).double().cpu().numpy()
            mask = (inv >= start) & (inv < start + len(block))
            pred[mask] = scores[inv[mask] - start, items[mask]]
        err = self.clip_ratings(pred) - f["rating"].to_numpy(np.float64)
        return float(np.sqrt(np.mean(err**2)))

    # -- the inner loop -------------------------------------------------------------------
    def local_params(self, module: MetaNet) -> Params:
        """The parameters the inner loop adapts (the module's own tensors)."""
        named = dict(module.named_parameters())
        return {n: named[n] for n in self.local_names_}

    def task_mse(
        self,
        module: MetaNet,
        params: Params,
        user: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        mask: torch.Tensor,
        fixed: Params | None = None,
    ) -> torch.Tensor:
        """Mean squared error of one user's (masked) rows with `params` (and the buffers in
        `fixed`) in place of the module's own (the others stay the module's)."""
        given = params if not fixed else {**params, **fixed}
        pred = functional_call(module, given, (user[None], items)) + self.mu_
        return ((pred - ratings) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)

    def inner_loop(
        self,
        module: MetaNet,
        params: Params,
        user: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        mask: torch.Tensor,
        *,
        first_order: bool = False,
        fixed: Params | None = None,
    ) -> Params:
        """`inner_steps` SGD steps of size `inner_lr` on one user's rows from `params` (the
        buffers in `fixed` stay as given). The gradients stay differentiable (second order)
        unless `first_order`."""
        steps, lr = int(self.params["inner_steps"]), float(self.params["inner_lr"])

        def loss(q: Params) -> torch.Tensor:
            return self.task_mse(module, q, user, items, ratings, mask, fixed)

        for _ in range(steps):
            g = grad(loss)(params)
            if first_order:
                g = {n: v.detach() for n, v in g.items()}
            params = {n: w - lr * g[n] for n, w in params.items()}
        return params

    def task_view(
        self, module: MetaNet, params: Params, items: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> tuple[Params, Params, torch.Tensor]:  # fmt: skip
        """(params, fixed tensors, items) for a task whose rows are `items` (1-D, padding
        included) and whose items' features lie in `columns` (1-D, from `feature_columns`;
        None: all of them).

        When the inner loop adapts the item id table, the task gets only that table's rows at
        `items`, with the item features' rows beside them, and its rows are addressed
        0..len(items)-1: the loss reads no other row, so its gradient and the adapted rows are
        those of the whole table (a user rates an item once, so no real row repeats; padding
        rows get no gradient), while a step costs one row a position instead of the whole
        catalogue (9,742 rows on ml-latest-small). With `columns`, the features' projection
        likewise gets only those columns of its weight (adapted or not) and the features only
        those columns: the other columns are 0 for every real row of the task, so they add
        nothing to the loss and get no gradient (ml-latest-small's 573 feature columns, 3.5 an
        item, become a few dozen a task). Otherwise all is unchanged."""
        if ITEM_TABLE not in params and columns is None:
            return params, {}, items
        encoder = module.encoder
        view, fixed = dict(params), {}
        if encoder.item_ids is not None:
            table = params.get(ITEM_TABLE, encoder.item_ids.weight)
            (view if ITEM_TABLE in params else fixed)[ITEM_TABLE] = table[items]
        if columns is None:
            fixed[ITEM_FEATURES] = encoder.item_features[items]
        else:
            fixed[ITEM_FEATURES] = encoder.item_features[items[:, None], columns[None, :]]
            weight = params.get(ITEM_PROJ, encoder.item_proj.weight)
            (view if ITEM_PROJ in params else fixed)[ITEM_PROJ] = weight[:, columns]
        return view, fixed, torch.arange(items.shape[-1], device=items.device)

    def feature_columns(
        self, module: MetaNet, items: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """(T, C): for each task (a row of `items` (T, L) with `mask`), the feature columns its
        real items use, in increasing order, then columns none of them uses (distinct, so the
        padding columns are all-zero and adapt to nothing); C is the most any task uses. None
        when there are no item features or C is over half of them (the full width is then as
        cheap; ML-100K's 26 columns)."""
        if module.encoder.item_proj is None:
            return None
        features = self._feature_rows(module)
        n_features = features.shape[1]
        task, position = np.nonzero(mask.cpu().numpy() > 0)
        rows = features[items.cpu().numpy()[task, position]]
        present = np.zeros((len(items), n_features), bool)
        present[np.repeat(task, np.diff(rows.indptr)), rows.indices] = True
        width = max(int(present.sum(1).max(initial=0)), 1)
        if 2 * width > n_features:
            return None
        columns = np.argsort(~present, axis=1, kind="stable")[:, :width]
        return torch.from_numpy(np.ascontiguousarray(columns)).to(items.device)

    def _dtype(self, module: MetaNet) -> torch.dtype:
        return next(module.parameters()).dtype

    def _adapt_rows(self, module: MetaNet, users: np.ndarray, rows: UserRows) -> Params:
        """Adapted local parameters of `users` on their rows in `rows`: {name: (n, ...)}.
        Users are adapted in blocks of similar row counts (vmap over a block)."""
        local = self.local_params(module)
        dtype, device = self._dtype(module), self.device_
        out = {n: w.new_empty((len(users), *w.shape)) for n, w in local.items()}
        counts = np.maximum(rows.count(users), 1)
        order = np.argsort(counts, kind="stable")
        per_user = sum(w.numel() for w in local.values()) * 3  # parameters, gradient, update
        start = 0
        while start < len(users):
            end = start + 1
            while (
                end < len(users)
                and (end + 1 - start) * (counts[order[end]] * module.pair_width + per_user)
                <= self.budget_floats
            ):
                end += 1
            block = order[start:end]
            items, ratings, mask = pad_rows([rows.rows(u) for u in users[block]], rows)
            items = items.to(device)
            columns = self.feature_columns(module, items, mask)

            def adapt(u: torch.Tensor, i: torch.Tensor, r: torch.Tensor, m: torch.Tensor,
                      *c: torch.Tensor) -> Params:  # fmt: skip
                view, fixed, at = self.task_view(module, local, i, *c)
                return self.inner_loop(module, view, u, at, r, m, fixed=fixed)

            fast = vmap(adapt)(torch.from_numpy(users[block]).to(device), items,
                               ratings.to(device, dtype), mask.to(device, dtype),
                               *([] if columns is None else [columns]))  # fmt: skip
            index = torch.from_numpy(block).to(device)
            for n in out:
                if n == ITEM_TABLE:  # the global table with each user's adapted rows
                    table = local[n].detach().expand(len(block), *local[n].shape).clone()
                    real = mask > 0
                    who = torch.arange(len(block), device=device)[:, None].expand_as(items)
                    table[who[real], items[real]] = fast[n].detach()[real]
                    out[n][index] = table
                elif n == ITEM_PROJ and columns is not None:  # adapted at the task's columns
                    weight = local[n].detach().expand(len(block), *local[n].shape).clone()
                    at = columns[:, None, :].expand(-1, weight.shape[1], -1)
                    out[n][index] = weight.scatter_(2, at, fast[n].detach())
                else:
                    out[n][index] = fast[n].detach()
            start = end
        return out

    def _store(self, users: np.ndarray, rows: UserRows) -> None:
        """Adapt `users` on their rows and keep the result (replacing earlier ones). A user
        whose adaptation diverges (a non-finite parameter or score) keeps the global parameters
        and is listed in `diverged_users_`."""
        users = np.unique(np.asarray(users, np.int64))
        if not len(users):
            return
        fresh = self._adapt_rows(self.module_, users, rows)
        finite = torch.ones(len(users), dtype=torch.bool, device=self.device_)
        for w in fresh.values():
            finite &= torch.isfinite(w.reshape(len(users), -1)).all(1)
        step = self._score_step(self.module_)  # finite weights can still overflow the scores
        for start in range(0, len(users), step):
            part = {n: w[start : start + step] for n, w in fresh.items()}
            rated = self._rate_all(self.module_, part, users[start : start + step])
            finite[start : start + step] &= torch.isfinite(rated).all(1)
        if not bool(finite.all()):  # a diverged adaptation keeps the global parameters
            base = dict(self.module_.named_parameters())
            for n, w in fresh.items():
                w[~finite] = base[n].detach()
            lost = users[~finite.cpu().numpy()]
            self.diverged_users_ = np.union1d(getattr(self, "diverged_users_", lost), lost)
        slots = self.slot_[users].copy()
        new = slots < 0
        n_old = len(next(iter(self.adapted_.values()))) if self.adapted_ else 0
        slots[new] = n_old + np.arange(int(new.sum()))
        self.slot_[users] = slots
        device = self.device_
        idx_new, idx_old = torch.from_numpy(new).to(device), torch.from_numpy(~new).to(device)
        old_slots = torch.from_numpy(slots[~new]).to(device)
        for n, w in fresh.items():
            kept = self.adapted_.get(n, w.new_empty((0, *w.shape[1:])))
            grown = torch.cat([kept, w[idx_new]])
            grown[old_slots] = w[idx_old]
            self.adapted_[n] = grown

    # -- public ---------------------------------------------------------------------------
    def adapt(self, support: Interactions) -> MetaRecommender:
        """Adapt every user with rows in `support` on those rows and keep the adapted
        parameters (replacing a user's earlier ones); the support items count as seen."""
        if getattr(self, "module_", None) is None:
            raise RuntimeError(f"{self.name}.adapt called before fit")
        if (support.n_users, support.n_items) != (self.n_users_, self.n_items_):
            raise ValueError(
                f"{self.name}.adapt: support is {support.n_users} x {support.n_items}; the model "
                f"was fitted on {self.n_users_} x {self.n_items_} (the same dense index)"
            )
        rows = UserRows.from_frame(support.frame, support.n_users)
        with (
            cpu_threads(self.device_, self.cpu_threads),
            cuda_determinism(self.device_),
            torch.no_grad(),
        ):
            self._store(support.frame["user"].to_numpy(np.int64), rows)
        self.seen_ = ((self.seen_ + support.matrix(binary=True)) > 0).astype(np.float64).tocsr()
        return self

    def user_parameters(self, users: npt.ArrayLike) -> Params:
        """Every parameter as each user sees it: {name: (len(users), ...)}; the ones the inner
        loop does not adapt are the global ones, repeated."""
        users = np.asarray(users, np.int64)
        with cuda_determinism(self.device_), torch.no_grad():
            own = self._user_params(users)
            return {
                n: own[n] if n in own else w.detach().expand(len(users), *w.shape).clone()
                for n, w in self.module_.named_parameters()
            }

    def _user_params(self, users: np.ndarray) -> Params:
        """Local parameters of `users`: kept ones where there are, else adapted on the fly on
        their rows in `train` (the global ones for a user without rows)."""
        slots = self.slot_[users]
        have = slots >= 0
        if have.all():
            index = torch.from_numpy(slots).to(self.device_)
            return {n: w.index_select(0, index) for n, w in self.adapted_.items()}
        out = self._adapt_rows(self.module_, users, self.rows_)
        if have.any():
            at = torch.from_numpy(np.flatnonzero(have)).to(self.device_)
            index = torch.from_numpy(slots[have]).to(self.device_)
            for n in out:
                out[n][at] = self.adapted_[n].index_select(0, index)
        return out

    def _rate_all(self, module: MetaNet, params: Params, users: np.ndarray) -> torch.Tensor:
        """(len(users), n_items) predicted ratings (unclipped), user t with params[.][t].

        Where each user has its own feature projection W_t (every parameter adapts), the
        items' projected features F W_t^T come from one product over the block, sparse on the
        CPU (F has 3.5 nonzeros an item on ml-latest-small, against 573 columns a dense product
        multiplies; dense on CUDA, see `product_operand`), and reach the network as its
        features with an identity projection."""
        items = torch.arange(self.n_items_, device=self.device_)
        index = torch.from_numpy(users).to(self.device_)
        if ITEM_PROJ not in params:

            def one(p: Params, user: torch.Tensor) -> torch.Tensor:
                return functional_call(module, p, (user[None], items))

            return vmap(one)(params, index) + self.mu_
        weight = params[ITEM_PROJ]  # (users, dim, n_features)
        n, dim, n_features = weight.shape
        stacked = weight.permute(2, 0, 1).reshape(n_features, n * dim)  # [W_1^T ... W_n^T]
        projected = self._feature_matrix(module) @ stacked
        projected = projected.reshape(-1, n, dim).transpose(0, 1)  # (users, n_items, dim)
        identity = torch.eye(dim, dtype=weight.dtype, device=weight.device)

        def with_projected(p: Params, user: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            given = {**p, ITEM_PROJ: identity, ITEM_FEATURES: x}
            return functional_call(module, given, (user[None], items))

        return vmap(with_projected)(params, index, projected) + self.mu_

    def _feature_rows(self, module: MetaNet) -> sp.csr_matrix:
        """The items' features as a SciPy CSR matrix (kept until the next fit)."""
        rows = self.__dict__.get("_feature_rows_")
        if rows is None:
            rows = sp.csr_matrix(module.encoder.item_features.cpu().numpy())
            self._feature_rows_ = rows
        return rows

    def _feature_matrix(self, module: MetaNet) -> torch.Tensor:
        """`_feature_rows` as a product operand on the module's device (kept)."""
        matrix = self.__dict__.get("_feature_operand_")
        if matrix is None:
            device = module.encoder.item_features.device
            matrix = product_operand(self._feature_rows(module), device)
            self._feature_operand_ = matrix
        return matrix

    def _score_step(self, module: MetaNet) -> int:
        return max(1, self.budget_floats // (self.n_items_ * module.pair_width))

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Predicted ratings of every item (unclipped), each user with its adapted parameters:
        (len(users), n_items) float32."""
        if getattr(self, "module_", None) is None:
            raise RuntimeError(f"{self.name}.score called before fit")
        users = np.asarray(users, np.int64)
        out = np.empty((len(users), self.n_items_), np.float32)
        step = self._score_step(self.module_)
        with cuda_determinism(self.device_), torch.no_grad():  # adapting on the fly: gradients
            for start in range(0, len(users), step):
                block = users[start : start + step]
                params = self._user_params(block)
                out[start : start + len(block)] = (
                    self._rate_all(self.module_, params, block).float().cpu().numpy()
                )
        return out

    def predict_raw(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of aligned pairs, read from `score`: (n,)."""
        return Recommender.predict(self, users, items)

    @property
    def n_parameters(self) -> int:
        """The global network's parameters plus, per kept adapted user, the values that differ
        from the global network's. A user's adapted copy of an item table leaves the rows of
        items outside its support as they were (their gradient is zero): held for speed, they
        are not the user's own parameters (ML-100K, k = 5, seed 42: FOMAML keeps 6,643,917
        values for 189 users, 1,186,898 of them its own)."""
        module = getattr(self, "module_", None)
        if module is None:
            return 0
        base = dict(module.named_parameters())
        with torch.no_grad():
            kept = sum(int((w != base[n].unsqueeze(0)).sum())
                       for n, w in getattr(self, "adapted_", {}).items())  # fmt: skip
        return int(sum(w.numel() for w in module.parameters()) + kept)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle with the network and the kept parameters on CPU."""
        state = self.__dict__.copy()
        for derived in self._derived:  # rebuilt from the module when needed
            state.pop(derived, None)
        if "module_" in state:
            state["module_"] = copy.deepcopy(self.module_).cpu()
            state["adapted_"] = {n: w.cpu() for n, w in self.adapted_.items()}
            state["device_"] = "cpu"
        return state


# ----------------------------------------------------------------------------- episodic


class EpisodicRecommender(MetaRecommender):
    """Meta-trained on episodes of warm users (MeLU, MAML, FOMAML, Reptile).

    Extra hyperparameters: tasks_per_batch, train_support ("uniform": k in 1..20, or an int),
    query_size. `meta_gradient` is the one thing the methods differ in (with `local`).
    After fit also task_users_: the warm users with at least two ratings (the task pool).
    """

    defaults: ClassVar[dict[str, Any]] = dict(EPISODE_DEFAULTS)
    first_order: ClassVar[bool] = False

    def prepare(self, warm: UserRows) -> None:
        counts = np.diff(warm.indptr)
        self.task_users_ = np.flatnonzero(counts >= 2)
        if not len(self.task_users_):
            raise ValueError(
                f"{self.name}: no warm user has the 2 ratings a task needs (a support and a query)"
            )
        self._warm: UserRows | None = warm

    def release(self) -> None:
        self._warm = None

    def batches(self, rng: np.random.Generator) -> Iterator[Episodes]:
        order = rng.permutation(self.task_users_)
        size = int(self.params["tasks_per_batch"])
        for start in range(0, len(order), size):
            yield self.sample_episodes(order[start : start + size], rng)

    def sample_episodes(self, users: np.ndarray, rng: np.random.Generator) -> Episodes:
        """One task per user (warm users only): a support of k of its rows and a query of up to
        `query_size` of the others, drawn with `rng`."""
        warm = self._warm
        if warm is None:
            raise RuntimeError(f"{self.name}: episodes are drawn during fit only")
        p = self.params
        fixed = p["train_support"]
        supports, queries = [], []
        for u in users:
            n = int(warm.indptr[u + 1] - warm.indptr[u])
            if n < 2:
                raise ValueError(f"{self.name}: user {u} has {n} warm rating(s); a task needs 2")
            most = min(MAX_SUPPORT if fixed == "uniform" else int(fixed), n - 1)
            k = int(rng.integers(1, most + 1)) if fixed == "uniform" else most
            q = min(int(p["query_size"]), n - k)
            perm = warm.indptr[u] + rng.permutation(n)[: k + q]
            supports.append(perm[:k])
            queries.append(perm[k:])
        return Episodes(torch.as_tensor(np.asarray(users, np.int64)),
                        *pad_rows(supports, warm), *pad_rows(queries, warm))  # fmt: skip

    def outer_loss(self, module: MetaNet, episodes: Episodes) -> torch.Tensor:
        """Mean over tasks of the query MSE after the inner loop on the support (second order
        unless `first_order`), differentiable in the module's parameters."""
        local = self.local_params(module)

        def task(u, si, sr, sm, qi, qr, qm, *c):
            view, fixed, at = self.task_view(module, local, torch.cat([si, qi]), *c)
            k = si.shape[-1]
            fast = self.inner_loop(module, view, u, at[:k], sr, sm, first_order=self.first_order,
                                   fixed=fixed)  # fmt: skip
            return self.task_mse(module, fast, u, at[k:], qr, qm, fixed)

        e = episodes
        columns = self.feature_columns(module, torch.cat([e.support_items, e.query_items], 1),
                                       torch.cat([e.support_mask, e.query_mask], 1))  # fmt: skip
        losses = vmap(task)(e.users, e.support_items, e.support_ratings, e.support_mask,
                            e.query_items, e.query_ratings, e.query_mask,
                            *([] if columns is None else [columns]))  # fmt: skip
        return losses.mean()

    def meta_gradient(self, module: MetaNet, episodes: Episodes) -> tuple[torch.Tensor, Params]:
        """(outer loss, {name: gradient of the outer loss}) for every module parameter."""
        named = dict(module.named_parameters())
        loss = self.outer_loss(module, episodes)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        return loss.detach(), {
            n: torch.zeros_like(w) if g is None else g
            for (n, w), g in zip(named.items(), grads, strict=True)
        }

    def step(self, module: MetaNet, batch: Episodes, optimiser: torch.optim.Optimizer):
        episodes = batch.to(self.device_, self._dtype(module))
        loss, grads = self.meta_gradient(module, episodes)
        for n, w in module.named_parameters():
            w.grad = grads[n]
        optimiser.step()
        return loss, len(episodes)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_warm", None)
        return state


_SPACE_LR = {"learning_rate": LogUniform(3e-4, 3e-3), "inner_lr": LogUniform(0.01, 0.5)}


@register
class MeLU(EpisodicRecommender):
    """MeLU (Lee et al. 2019): features-only embeddings (global) into decision layers that
    adapt to each user (second-order meta-gradient)."""

    name = "MeLU"
    local = "decision"
    space = {**_SPACE_LR, "inner_steps": Choice((1, 3, 5))}


@register
class MAML(EpisodicRecommender):
    """MAML (Finn et al. 2017): every parameter adapts; exact second-order meta-gradient."""

    name = "MAML"
    space = {**_SPACE_LR, "inner_steps": Choice((1, 3, 5))}


@register
class FOMAML(EpisodicRecommender):
    """First-order MAML: the inner gradients are detached from the meta-gradient."""

    name = "FOMAML"
    first_order = True
    space = {**_SPACE_LR, "inner_steps": Choice((1, 3, 5))}


@register
class Reptile(EpisodicRecommender):
    """Reptile (Nichol et al. 2018): inner SGD on the task's support and query rows together,
    outer step towards the mean adapted weights (theta - mean phi as Adam's gradient)."""

    name = "Reptile"
    space = {**_SPACE_LR, "inner_steps": Choice((1, 3, 5))}

    def meta_gradient(self, module: MetaNet, episodes: Episodes) -> tuple[torch.Tensor, Params]:
        """(mean task loss after adaptation, {name: theta - mean over tasks of phi}), computed
        as the mean of the moves theta - phi_t: a row no task moves (an item or a user level
        absent from the meta-batch) gets exactly 0. theta - mean(phi) computed as written gave
        such rows rounding noise (up to 2e-8), which Adam, invariant to a gradient's scale,
        turned into steps of up to the learning rate."""
        e = episodes
        items = torch.cat([e.support_items, e.query_items], 1)
        ratings = torch.cat([e.support_ratings, e.query_ratings], 1)
        mask = torch.cat([e.support_mask, e.query_mask], 1)
        local = self.local_params(module)
        columns = self.feature_columns(module, items, mask)

        def task(u, i, r, m, *c):
            view, fixed, at = self.task_view(module, local, i, *c)
            fast = self.inner_loop(module, view, u, at, r, m, first_order=True, fixed=fixed)
            return fast, self.task_mse(module, fast, u, at, r, m, fixed)

        with torch.no_grad():
            fast, losses = vmap(task)(e.users, items, ratings, mask,
                                      *([] if columns is None else [columns]))  # fmt: skip
            out = {}
            for n, w in module.named_parameters():
                if n == ITEM_TABLE and n in local:  # a task moved its rows only (`task_view`)
                    moved = (fast[n] - w.detach()[items]).flatten(0, 1)
                    out[n] = torch.zeros_like(w).index_add_(0, items.flatten(), moved,
                                                            alpha=-1.0 / len(e))  # fmt: skip
                elif n == ITEM_PROJ and n in local and columns is not None:  # its columns only
                    moved = fast[n] - w.detach()[:, columns].transpose(0, 1)  # (T, dim, C)
                    out[n] = torch.zeros_like(w).index_add_(
                        1, columns.flatten(), moved.transpose(0, 1).flatten(1),
                        alpha=-1.0 / len(e))  # fmt: skip
                else:  # the mean move, not theta - mean(phi) (see `meta_gradient`)
                    out[n] = (w.detach() - fast[n]).mean(0) if n in fast else torch.zeros_like(w)
            return losses.mean(), out


# ----------------------------------------------------------------------------- transfer


@register
class PretrainAdapt(MetaRecommender):
    """The network trained on every warm rating by mini-batch regression (no meta-training),
    then fine-tuned on each cold user's support by the same inner loop (every parameter).
    Extra hyperparameter: batch_size (rows per Adam step)."""

    name = "PretrainAdapt"
    family = "transfer"
    defaults: ClassVar[dict[str, Any]] = {**META_DEFAULTS, "epochs": 30, "batch_size": 256}
    space = {
        "learning_rate": LogUniform(3e-4, 3e-3),
        "inner_lr": LogUniform(0.01, 0.5),
        "inner_steps": Choice((1, 3, 5)),
    }

    def prepare(self, warm: UserRows) -> None:
        users = np.repeat(np.arange(len(warm.indptr) - 1), np.diff(warm.indptr))
        self._pairs: tuple[torch.Tensor, ...] | None = (
            torch.from_numpy(users),
            torch.from_numpy(warm.items),
            torch.from_numpy(warm.ratings),
        )

    def release(self) -> None:
        self._pairs = None

    def batches(self, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        users, items, ratings = self._pairs
        order = torch.from_numpy(rng.permutation(len(users)))
        size = int(self.params["batch_size"])
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            yield users[idx], items[idx], ratings[idx]

    def regression_loss(
        self, module: MetaNet, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error of the global network on (user, item, rating) rows."""
        return ((module(users, items) + self.mu_ - ratings) ** 2).mean()

    def step(self, module: MetaNet, batch: tuple, optimiser: torch.optim.Optimizer):
        dtype = self._dtype(module)
        users, items, ratings = batch
        loss = self.regression_loss(module, users.to(self.device_), items.to(self.device_),
                                    ratings.to(self.device_, dtype))  # fmt: skip
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.detach(), len(users)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_pairs", None)
        return state
