"""The one `Recommender` interface every model of every family implements.

Models see dense indices (see `metarec_lib.data.dataset.Interactions`): users 0..n_users-1,
items 0..n_items-1 over the whole catalogue. `score` is the one method a ranking model must
write; `recommend` (top-k with seen items excluded) is written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from metarec_lib.data.dataset import Interactions

Family = Literal["content", "collaborative", "deep", "multitask", "transfer", "meta"]
FAMILIES: tuple[str, ...] = ("content", "collaborative", "deep", "multitask", "transfer", "meta")


def resolve_device(device: str = "auto") -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is passed through."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


class Recommender(ABC):
    """Base class: keyword-only hyperparameters, `fit`, `score`, `predict`, `recommend`.

    Subclasses declare `name`, `family` and `defaults` (every hyperparameter with its default);
    an unknown hyperparameter is an error naming it. `fit` stores the training matrix so that
    `recommend` can exclude each user's seen items.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    defaults: ClassVar[dict[str, Any]] = {}
    # Search space for tuning: name -> metarec_lib.tuning.Choice / Uniform / LogUniform.
    space: ClassVar[dict[str, Any]] = {}
    predicts_ratings: ClassVar[bool] = False
    ranks: ClassVar[bool] = True  # False for models whose scores are not meant for top-N
    # Models whose fits at one seed share a training they remember in-process name one group
    # (a parallel executor then runs them on one worker); "" means the model's own name.
    training_group: ClassVar[str] = ""
    # True for the models that train and score with PyTorch on `device` (so on a GPU when
    # "auto" finds one); the others compute on the CPU whatever `device` says.
    gpu_capable: ClassVar[bool] = False

    def __init__(self, *, device: str = "cpu", **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; "
                f"known: {sorted(self.defaults)}"
            )
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.device = device
        self.seen_: sp.csr_matrix | None = None

    def compute_device(self) -> str:
        """Where this model computes: `device` resolved ("auto": CUDA when present) for a
        `gpu_capable` model, "cpu" for the others, so cost rows name the right device."""
        return resolve_device(self.device) if self.gpu_capable else "cpu"

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable identity of this model: name and hyperparameters."""
        return {"model": self.name, **self.params}

    def clone(self, **params: Any) -> Recommender:
        """An unfitted copy with some hyperparameters changed."""
        return type(self)(device=self.device, **{**self.params, **params})

    # -- training -------------------------------------------------------------------------
    def fit(
        self, train: Interactions, *, valid: Interactions | None = None, seed: int = 0
    ) -> Recommender:
        """Fit on `train`; `valid` is for early stopping only. Returns self."""
        self.seen_ = train.matrix(binary=True)
        self.n_users_, self.n_items_ = train.n_users, train.n_items
        # One BLAS thread: fits are many small solves, where threads buy little and, when the
        # cores are shared, cost up to 30x (measured with batched np.linalg.solve); it also keeps
        # timings comparable across models.
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit(train, valid=valid, seed=seed)
        return self

    @abstractmethod
    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        """Model-specific training."""

    # -- inference ------------------------------------------------------------------------
    @abstractmethod
    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Scores of every item for each user: float array (len(users), n_items)."""

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Scores (ratings, for rating models) of aligned (user, item) pairs: shape (n,)."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        out = np.empty(len(users))
        uniq, inv = np.unique(users, return_inverse=True)
        for start in range(0, len(uniq), 1024):
            block = uniq[start : start + 1024]
            scores = self.score(block)
            mask = (inv >= start) & (inv < start + len(block))
            out[mask] = scores[inv[mask] - start, items[mask]]
        return out

    def predict_raw(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """`predict` before any clipping to the rating range: what orders a user's pairs
        (clipping ties every pair predicted past an end of the range). A model whose `predict`
        clips overrides this and `clip_ratings`; for the others it is `predict`."""
        return self.predict(users, items)

    def clip_ratings(self, values: np.ndarray) -> np.ndarray:
        """What `predict` makes of `predict_raw`'s values: `values` itself, or for a model that
        clips, `values` clipped to its rating range (so a caller needing both computes once)."""
        return values

    def recommend(
        self,
        users: npt.ArrayLike,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per user over the full catalogue: (items (n, k) int64, scores (n, k)).

        Seen training items are never returned when `exclude_seen`; a user with fewer than k
        candidates gets -1 / -inf padding.
        """
        from metarec_lib.metrics import topk_from_scores

        if self.seen_ is None:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit")
        users = np.asarray(users, np.int64)
        items, scores = [], []
        for start in range(0, len(users), batch_size):
            block = users[start : start + batch_size]
            s = np.asarray(self.score(block), dtype=np.float64)
            top, val = topk_from_scores(
                s, k, self.seen_[block] if exclude_seen else None, users=block
            )
            items.append(top)
            scores.append(val)
        if not items:
            return np.empty((0, k), np.int64), np.empty((0, k))
        return np.vstack(items), np.vstack(scores)

    @property
    def n_parameters(self) -> int:
        """Number of learned parameters (numbers stored after fit), for the cost tables."""
        return 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class ClipsRatings:
    """For a rating model whose `predict` is its `predict_raw` clipped to the lowest and
    highest rating seen in training (`rating_range_`, set by `fit`). Put it before
    `Recommender` among the bases, so that its `predict` and `clip_ratings` are the ones used."""

    rating_range_: tuple[float, float]

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Predicted ratings of aligned (user, item) pairs, clipped to the training range: (n,)."""
        return self.clip_ratings(self.predict_raw(users, items))  # type: ignore[attr-defined]

    def clip_ratings(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values, *self.rating_range_)
