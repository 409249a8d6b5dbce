"""Caser: convolutional sequence embedding for next-item recommendation.

Tang & Wang (2018), "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM. The last L items of a user form an L x d "image" E (rows = item embeddings).
Horizontal filters of heights h = 1..L (n_h each, ReLU, max-pooled over positions) capture
union-level and point-level sequential patterns; vertical filters (n_v, L x 1, linear) are
weighted sums of the L embeddings. Their concatenation, after dropout, goes through a ReLU
layer to z (d); the score of item i is W_i . [z; P_u] + b_i with a user embedding P_u.

Training examples are `sliding_windows(sequences, L, T)`: the L items before position t and
the T items from t on. Two losses (`loss`):
  * "bce" (the paper): -log sigmoid(y_target) for each of the T targets and
    -log(1 - sigmoid(y_j)) for `n_negatives` items j per example, drawn uniformly from the
    items the user never interacted with in training;
  * "ce": softmax cross-entropy over the whole catalogue for each of the T targets; at 1,682
    to 9,742 items it costs little and ranks better (measured: see `Caser.defaults`).
Scoring reads the user's last L training items (`last_window`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.layers import Dropout
from metarec_lib.models.losses import full_softmax_cross_entropy, product_dtype
from metarec_lib.models.registry import register
from metarec_lib.models.sequences import PAD, IntArray, last_window, sliding_windows, user_sequences
from metarec_lib.models.torch_base import TORCH_DEFAULTS, Batch, TorchRecommender
from metarec_lib.tuning import Choice, LogUniform

LOSSES = ("bce", "ce")


def fan_in_uniform_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every Linear / Conv1d weight and bias uniformly in +-1/sqrt(fan_in)
    (PyTorch's default bound) from `generator`, so the network depends only on the seed."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv1d):
            bound = 1.0 / math.sqrt(layer.weight[0].numel())
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def sample_unseen(
    keys: torch.Tensor,
    users: torch.Tensor,
    n_items: int,
    count: int,
    generator: torch.Generator,
    tries: int = 20,
) -> torch.Tensor:
    """(len(users), count) item indices drawn uniformly, redrawn (up to `tries` rounds,
    vectorised) where they hit an item of the user; keys = sorted user * n_items + item of the
    training pairs. Only a user who has seen nearly every item can keep a collision."""
    negatives = torch.randint(n_items, (len(users), count), generator=generator)
    if len(keys) == 0:
        return negatives
    owners = users[:, None].expand(-1, count)

    def collides() -> torch.Tensor:
        query = owners * n_items + negatives
        pos = torch.searchsorted(keys, query).clamp_(max=len(keys) - 1)
        return keys[pos] == query

    for _ in range(tries):
        bad = collides()
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        negatives[bad] = torch.randint(n_items, (n_bad,), generator=generator)
    return negatives


class CaserModule(nn.Module):
    """Item embeddings E (n_items + 1, d; row PAD stays 0), user embeddings P (n_users, d),
    horizontal convolutions (heights 1..L, n_h filters each), a vertical convolution (n_v
    filters), a ReLU layer to d, and output weights W (n_items, 2d) with biases b (n_items).
    `forward(users, windows)` returns scores (n, n_items); windows hold item index + 1."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        length: int,
        dim: int,
        n_h: int,
        n_v: int,
        dropout: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.users = nn.Embedding(n_users, dim)
        # A full-width (h x d) filter over the L x d image is a 1-D convolution with d input
        # channels (the same function, 2-3x faster on CPU); a vertical (L x 1) filter is a
        # weighted sum of the L rows, i.e. a linear map over positions.
        self.horizontal = nn.ModuleList(nn.Conv1d(dim, n_h, h) for h in range(1, length + 1))
        self.vertical = nn.Linear(length, n_v)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(n_h * length + n_v * dim, dim)
        self.out = nn.Embedding(n_items, 2 * dim)
        self.bias = nn.Parameter(torch.zeros(n_items))
        fan_in_uniform_(self, generator)
        with torch.no_grad():  # N(0, 1/d) embeddings, as in the authors' code
            for emb in (self.items, self.users, self.out):
                emb.weight.normal_(0.0, 1.0 / emb.weight.shape[1], generator=generator)
            self.items.weight[PAD] = 0.0

    def features(self, users: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """[z; P_u]: (n, 2d)."""
        # (n, d, L) as one contiguous copy: given the transposed view, every convolution's
        # forward and backward copied it again (10 copies a step, about 15% of an ML-100K fit).
        # The vertical map is the product plus the bias that `nn.Linear` computes on a view (on
        # a contiguous input it fuses them, and its bias gradient sums in another order).
        image = self.items(windows).transpose(1, 2).contiguous()
        pooled = [F.relu(conv(image)).amax(dim=2) for conv in self.horizontal]  # (n, n_h) each
        vertical = image @ self.vertical.weight.T + self.vertical.bias  # (n, d, n_v)
        vertical = vertical.flatten(1)
        z = F.relu(self.fc(self.dropout(torch.cat([*pooled, vertical], dim=1))))
        return torch.cat([z, self.users(users)], dim=1)

    def forward(self, users: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        return self.features(users, windows) @ self.out.weight.T + self.bias


@register
class Caser(TorchRecommender):
    """Caser (Tang & Wang 2018) trained with softmax cross-entropy ("ce") or sampled BCE ("bce").

    Hyperparameters (besides TORCH_DEFAULTS):
        max_len: L, the number of recent items read (training windows and scoring).
        targets: T, the items from position t on that each window predicts.
        dim: d, the embedding size (item, user, z).
        n_h, n_v: horizontal filters per height, vertical filters.
        dropout: dropout rate on the convolution features.
        loss: "ce" (full softmax) or "bce" (the paper's sampled binary cross-entropy).
        loss_precision: the "ce" softmax's matrix products, "float32", "bfloat16" or "auto"
            (bfloat16 where the CPU has it in hardware: `losses.product_dtype`).
        n_negatives: unseen items sampled per window for "bce".
    After fit, besides TorchRecommender's: sequences_ (each user's items + 1, time order).
    """

    name = "Caser"
    family = "deep"
    # Measured on loo-temporal ML-100K, valid NDCG@10 (MostPop 0.033, EASE 0.067), seeds 42 / 1:
    # loss "ce" 0.115-0.137 vs the paper's "bce" 0.094-0.118 (T = 1 or 3, 3 negatives); T = 3
    # no better than 1; dim 32 ties 50 (0.129 / 0.132) at 3/4 of the time; learning_rate
    # 3e-3 and 6e-3 tie (6e-3 stops 2 epochs sooner); max_len 8 ties 5 at 1.7x the time.
    # ml-latest-small (9,742 items): "ce" 0.049 in 134 s (16 s an epoch, best epoch 6), "bce"
    # 0.028 (MostPop 0.018, EASE 0.041); hence "ce", and at most 20 epochs.
    defaults: dict[str, Any] = {
        **TORCH_DEFAULTS,
        "epochs": 20,
        "batch_size": 1024,
        "learning_rate": 6e-3,
        "patience": 2,
        "max_len": 5,
        "targets": 1,
        "dim": 32,
        "n_h": 16,
        "n_v": 4,
        "dropout": 0.5,
        "loss": "ce",
        "loss_precision": "auto",
        "n_negatives": 3,
    }
    space = {
        "learning_rate": LogUniform(2e-3, 8e-3),
        "dim": Choice((32, 50)),
        "max_len": Choice((5, 8)),
    }

    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        p = self.params
        if p["loss"] not in LOSSES:
            raise ValueError(f"Caser: loss={p['loss']!r}; expected one of {LOSSES}")
        product_dtype(p["loss_precision"], torch.device("cpu"))  # validates it
        self.sequences_: list[IntArray] = user_sequences(train)
        users, inputs, targets = sliding_windows(
            self.sequences_, int(p["max_len"]), int(p["targets"])
        )
        self._users = torch.from_numpy(users)
        self._inputs = torch.from_numpy(inputs)
        self._targets = torch.from_numpy(targets)
        f = train.frame
        pairs = f["user"].to_numpy(np.int64) * train.n_items + f["item"].to_numpy(np.int64)
        self._keys = torch.from_numpy(np.unique(pairs))  # sorted, for `sample_unseen`
        return CaserModule(
            train.n_users,
            train.n_items,
            length=int(p["max_len"]),
            dim=int(p["dim"]),
            n_h=int(p["n_h"]),
            n_v=int(p["n_v"]),
            dropout=float(p["dropout"]),
            generator=generator,
        )

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """(users, windows, targets) per batch, plus sampled negatives (item indices) for
        "bce"; targets hold item index + 1 like the windows."""
        p = self.params
        order = torch.randperm(len(self._users), generator=generator)
        users, inputs, targets = self._users[order], self._inputs[order], self._targets[order]
        negatives = None
        if p["loss"] == "bce":
            negatives = sample_unseen(
                self._keys, users, self.n_items_, int(p["n_negatives"]), generator
            )
        size = int(p["batch_size"])
        for start in range(0, len(users), size):
            sl = slice(start, start + size)
            batch = (users[sl], inputs[sl], targets[sl])
            yield batch if negatives is None else (*batch, negatives[sl])

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        users, windows, targets = batch[:3]
        features = module.features(users, windows)
        if self.params["loss"] == "ce":
            products = product_dtype(self.params["loss_precision"], features.device)
            return full_softmax_cross_entropy(features, module.out.weight, targets - 1,
                                              module.bias, products=products)  # fmt: skip
        positives = targets - 1
        pos = (module.out(positives) * features[:, None]).sum(-1) + module.bias[positives]
        neg = (module.out(batch[3]) * features[:, None]).sum(-1) + module.bias[batch[3]]
        return F.softplus(-pos).mean() + F.softplus(neg).mean()

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        windows = last_window(self.sequences_, users.cpu().numpy(), int(self.params["max_len"]))
        return module(users, torch.from_numpy(windows).to(users.device))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the training windows (rebuilt by `build`; scoring needs only
        `sequences_`)."""
        state = super().__getstate__()
        for key in ("_users", "_inputs", "_targets", "_keys"):
            state.pop(key, None)
        return state
