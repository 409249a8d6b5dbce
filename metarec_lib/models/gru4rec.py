"""GRU4Rec: a recurrent network that predicts the next item at every position of a sequence.

Hidasi, Karatzoglou, Baltrunas & Tikk (2016), "Session-based Recommendations with Recurrent
Neural Networks", ICLR; losses of Hidasi & Karatzoglou (2018), "Recurrent Neural Networks with
Top-k Gains for Session-based Recommendations", CIKM. Here a "session" is a user's whole
training history in time order (`user_sequences`), cut into `shifted_windows` of `max_len`:
item embedding -> dropout -> GRU layer(s) -> dropout -> h_t, and the score of item i after
position t is W_i . h_t + b_i. Padded positions (target PAD) are left out of every loss.

Losses (`loss`):
  * "ce": softmax cross-entropy over the whole catalogue at every position;
  * "bpr-max" (2018): at position t of row r the negatives are the targets of the other rows
    at the same position t (the session-parallel mini-batch of the paper) plus `n_negatives`
    items drawn uniformly once per batch; with s_j the softmax of the negatives' scores r_j,
        -log sum_j s_j sigmoid(r_i - r_j) + bpr_reg * sum_j s_j r_j^2
    (a negative equal to the target, or padding, is masked out).
Scoring runs the GRU over the user's last `max_len` training items (`last_window`) and reads
the scores after the last one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.layers import Dropout
from metarec_lib.models.losses import bpr_max, full_softmax_cross_entropy
from metarec_lib.models.registry import register
from metarec_lib.models.sequences import (
    PAD,
    IntArray,
    last_window,
    shifted_windows,
    user_sequences,
)
from metarec_lib.models.torch_base import TORCH_DEFAULTS, Batch, TorchRecommender
from metarec_lib.tuning import Choice, LogUniform

LOSSES = ("ce", "bpr-max")


class GRU4RecModule(nn.Module):
    """Item embeddings (n_items + 1, d; row PAD stays 0), a GRU (d -> d, `layers` deep),
    output weights W (n_items, d) and biases b (n_items,)."""

    def __init__(
        self, n_items: int, *, dim: int, layers: int, dropout: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.dropout = Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True)
        self.out = nn.Embedding(n_items, dim)
        self.bias = nn.Parameter(torch.zeros(n_items))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(dim)  # PyTorch's GRU default, drawn from `generator`
            for w in self.gru.parameters():
                nn.init.uniform_(w, -bound, bound, generator=generator)
            for emb in (self.items, self.out):
                emb.weight.normal_(0.0, bound, generator=generator)
            self.items.weight[PAD] = 0.0

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """h_t at every position: (n, length, d); inputs hold item index + 1."""
        states, _ = self.gru(self.dropout(self.items(inputs)))
        return self.dropout(states)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scores of every item after the last position: (n, n_items)."""
        return self.hidden(inputs)[:, -1] @ self.out.weight.T + self.bias


def cross_entropy_loss(
    module: GRU4RecModule, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean full-softmax cross-entropy over the positions whose target is not PAD."""
    valid = targets != PAD
    return full_softmax_cross_entropy(hidden[valid], module.out.weight, targets[valid] - 1,
                                      module.bias)  # fmt: skip


def bpr_max_loss(
    module: GRU4RecModule,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    reg: float,
) -> torch.Tensor:
    """Mean BPR-max loss (with score regularisation `reg`) over the non-PAD positions.

    hidden (n, L, d); targets (n, L) item index + 1; negatives (k,) item indices shared by the
    batch. Negatives of (r, t): targets[s, t] for every row s (PAD and the target itself are
    masked) and the k shared ones.
    """
    n = targets.shape[0]
    items = (targets - 1).clamp(min=0)
    w_t, b_t = module.out(items), module.bias[items]  # (n, L, d), (n, L)
    positive = (hidden * w_t).sum(-1) + b_t  # (n, L)
    in_batch = torch.einsum("rld,sld->rls", hidden, w_t) + b_t.T[None]  # (n, L, n)
    shared = hidden @ module.out(negatives).T + module.bias[negatives]  # (n, L, k)
    scores = torch.cat([in_batch, shared], dim=2)
    ids = torch.cat(
        [targets.T[None].expand(n, -1, -1), (negatives + 1).expand(*targets.shape, -1)], dim=2
    )
    ok = (ids != targets[..., None]) & (ids != PAD)
    return bpr_max(scores, positive, ok, targets != PAD, reg)


@register
class GRU4Rec(TorchRecommender):
    """GRU4Rec (Hidasi et al. 2016; BPR-max of Hidasi & Karatzoglou 2018) over users' histories.

    Hyperparameters (besides TORCH_DEFAULTS; batch_size counts windows of `max_len`):
        max_len: window length (training chunks and the history read when scoring).
        dim: embedding and GRU hidden size.
        layers: stacked GRU layers.
        dropout: dropout on the embeddings and on the GRU output.
        loss: "ce" (full softmax) or "bpr-max".
        n_negatives: extra uniform negatives per batch for "bpr-max".
        bpr_reg: weight of the BPR-max score regularisation.
    After fit, besides TorchRecommender's: sequences_ (each user's items + 1, time order).
    """

    name = "GRU4Rec"
    family = "deep"
    # Measured on loo-temporal valid NDCG@10 (full ranking; MostPop / EASE: ML-100K 0.033 /
    # 0.067, ml-latest-small 0.018 / 0.041). ML-100K, seeds 42 / 1 / 2: "ce" 0.118 / 0.118 /
    # 0.114 (30-40 s), "bpr-max" 0.115 / 0.100 / 0.102 (12-26 s). ml-latest-small (9,742
    # items): "ce" 0.059 in 263 s (16 s an epoch: the full softmax), "bpr-max" 0.067 / 0.066 in
    # 22-45 s. So "bpr-max" is the default: it scales to the larger catalogue, where it also
    # ranks better; choose "ce" for small catalogues. For "bpr-max": 512 negatives 0.108 at
    # twice the time (seed 1), dropout 0.4 0.106 vs 0.100, bpr_reg 0.1 0.095, max_len 50 no
    # gain; learning_rate 3e-3 and 5e-3 tie.
    defaults: dict[str, Any] = {
        **TORCH_DEFAULTS,
        "batch_size": 128,
        "learning_rate": 5e-3,
        "max_len": 20,
        "dim": 64,
        "layers": 1,
        "dropout": 0.2,
        "loss": "bpr-max",
        "n_negatives": 256,
        "bpr_reg": 1.0,
    }
    space = {
        "learning_rate": LogUniform(2e-3, 1e-2),
        "dropout": Choice((0.2, 0.4)),
        "n_negatives": Choice((256, 512)),
    }

    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        p = self.params
        if p["loss"] not in LOSSES:
            raise ValueError(f"GRU4Rec: loss={p['loss']!r}; expected one of {LOSSES}")
        self.sequences_: list[IntArray] = user_sequences(train)
        _, inputs, targets = shifted_windows(self.sequences_, int(p["max_len"]))
        self._inputs, self._targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        return GRU4RecModule(
            train.n_items,
            dim=int(p["dim"]),
            layers=int(p["layers"]),
            dropout=float(p["dropout"]),
            generator=generator,
        )

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """(inputs, targets) windows in a random order, plus for "bpr-max" the batch's shared
        negatives (item indices)."""
        p = self.params
        order = torch.randperm(len(self._inputs), generator=generator)
        inputs, targets = self._inputs[order], self._targets[order]
        size = int(p["batch_size"])
        n_batches = -(-len(order) // size)
        bpr_max = p["loss"] == "bpr-max"
        if bpr_max:
            shape = (n_batches, int(p["n_negatives"]))
            negatives = torch.randint(self.n_items_, shape, generator=generator)
        for b in range(n_batches):
            sl = slice(b * size, (b + 1) * size)
            yield (inputs[sl], targets[sl], negatives[b]) if bpr_max else (inputs[sl], targets[sl])

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        hidden = module.hidden(batch[0])
        if self.params["loss"] == "ce":
            return cross_entropy_loss(module, hidden, batch[1])
        return bpr_max_loss(module, hidden, batch[1], batch[2], float(self.params["bpr_reg"]))

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        windows = last_window(self.sequences_, users.cpu().numpy(), int(self.params["max_len"]))
        return module(torch.from_numpy(windows).to(users.device))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the training windows (rebuilt by `build`; scoring needs only
        `sequences_`)."""
        state = super().__getstate__()
        for key in ("_inputs", "_targets"):
            state.pop(key, None)
        return state
