"""SASRec: a causal self-attention encoder of the user's item sequence.

Kang & McAuley (2018), "Self-Attentive Sequential Recommendation", ICDM. The user's last
`max_len` items (index + 1, left-padded with PAD = 0) are embedded, scaled by sqrt(hidden),
added to learned position embeddings (indexed from the window's end, so the most recent item
always has the same position) and passed through dropout and `blocks` pre-LN blocks of
causal multi-head self-attention and a point-wise feed-forward network, then a final layer
norm. Position t may attend to positions <= t that hold an item (causal mask AND key padding
mask; a padded position attends only to itself, so no row of the attention is empty, and no
item position ever reads a padded one). The score of item i after position t is
h_t . e_i with the input embedding e_i shared as output embedding.

Training uses `shifted_windows`: the next item at every position of every window, padded
positions masked out of the loss. `loss="bce"` is the paper's loss (binary cross-entropy with
one sampled negative per position, never an item of the user's history); `loss="ce"` is the
full softmax cross-entropy over all items, which Klenitskiy & Vasilev (2023), "Turning Dross
Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys, found much better. It is the
default here: on leave-last-one-out ML-100K it reached a better test NDCG@10 in under half
the epochs (see `SASRec.defaults`), although the softmax over all items is over half the cost
of an epoch (on ml-latest-small's 9,742 items nearly all of it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.layers import Dropout
from metarec_lib.models.losses import full_softmax_cross_entropy, product_dtype
from metarec_lib.models.registry import register
from metarec_lib.models.sequences import PAD, last_window, shifted_windows, user_sequences
from metarec_lib.models.torch_base import TORCH_DEFAULTS, Batch, TorchRecommender
from metarec_lib.tuning import LogUniform, Uniform


class AttentionBlock(nn.Module):
    """Pre-LN transformer block: x + Drop(Attn(LN(x))), then x + Drop(FFN(LN(x))) (ReLU,
    width hidden). Dropout acts on the residual branches only, not also on the attention
    weights and inside the FFN as in the paper's code: on CPU each dropout mask costs about
    1.5% of an ML-100K epoch (2 ms a step at 256 x 50 x 64, `benchmarks/bench_dropout.py`),
    and the embedding and residual dropouts are what regularise."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"SASRec: hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ff1, self.ff2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x (B, L, d); allowed (B, 1, L, L) bool, True where query t may read key s. With
        `last`, only the last position's output (B, 1, d): every position still gives its key
        and value, but only the last one a query, an attention row and a feed-forward pass."""
        b, length, d = x.shape
        h = d // self.heads
        normed = self.norm1(x)
        if last:
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(normed[:, -1:], w[:d], bias[:d]).view(b, 1, self.heads, h)
            kv = F.linear(normed, w[d:], bias[d:]).view(b, length, 2, self.heads, h)
            q, (k, v) = q.transpose(1, 2), kv.permute(2, 0, 3, 1, 4)
            allowed, x, length = allowed[..., -1:, :], x[:, -1:], 1
        else:
            qkv = self.qkv(normed).view(b, length, 3, self.heads, h)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, d / heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff2(F.relu(self.ff1(self.norm2(x)))))


class SASRecModule(nn.Module):
    """Item + position embeddings, causal attention blocks, final layer norm.

    `forward(seqs)` maps (B, L) token ids (L <= max_len) to hidden states (B, L, hidden);
    `item_weights()` are the output embeddings of the n_items real items (token 1..n_items).
    Token ids above n_items (CL4SRec's mask token) have embeddings but are never scored.
    """

    def __init__(self, n_tokens: int, n_items: int, *, max_len: int, hidden: int, blocks: int,
                 heads: int, dropout: float, generator: torch.Generator) -> None:  # fmt: skip
        super().__init__()
        self.n_items, self.max_len, self.scale = n_items, max_len, math.sqrt(hidden)
        self.items = nn.Embedding(n_tokens, hidden, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, hidden)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(AttentionBlock(hidden, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # Xavier-normal weights from the generator, zero biases
            for name, w in self.named_parameters():
                if w.dim() >= 2:
                    std = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))
                    w.copy_(torch.randn(w.shape, generator=generator) * std)
                elif not name.startswith("norm") and ".norm" not in name:
                    w.zero_()
            self.items.weight[PAD].zero_()

    def forward(self, seqs: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Hidden states (B, L, hidden); with `last` only the last position's (B, hidden), for
        which the last block computes one query per row (`AttentionBlock`): the same values,
        at about two thirds of the cost with two blocks."""
        length = seqs.shape[1]
        real = seqs != PAD
        pos = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        x = self.items(seqs) * self.scale + self.positions(pos)
        x = self.drop(x) * real.unsqueeze(-1)
        idx = torch.arange(length, device=seqs.device)
        causal = idx[None, :] <= idx[:, None]  # (L, L): key s <= query t
        allowed = causal & (real[:, None, :] | (idx[None, :] == idx[:, None]))
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for k, block in enumerate(self.blocks):
            x = block(x, allowed, last=last and k == len(self.blocks) - 1)
        return self.norm(x[:, -1]) if last else self.norm(x)

    def item_weights(self) -> torch.Tensor:
        return self.items.weight[1 : self.n_items + 1]


def unseen_negatives(
    users: torch.Tensor, shape: tuple[int, ...], seen: sp.csr_matrix, generator: torch.Generator,
    tries: int = 20,
) -> torch.Tensor:  # fmt: skip
    """Uniform item tokens (1..n_items) of `shape` = (len(users), ...), redrawn up to `tries`
    times where they hit an item of that user's training history (a user who has seen nearly
    everything may keep a seen one)."""
    n_items = seen.shape[1]
    indptr = torch.from_numpy(seen.indptr.astype(np.int64))
    owner = torch.repeat_interleave(torch.arange(seen.shape[0]), indptr.diff())
    keys = owner * n_items + torch.from_numpy(seen.indices.astype(np.int64))  # sorted CSR
    u = users.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    neg = torch.randint(n_items, shape, generator=generator)
    for _ in range(tries):
        query = u * n_items + neg
        pos = torch.searchsorted(keys, query).clamp_(max=max(len(keys) - 1, 0))
        bad = keys[pos] == query if len(keys) else torch.zeros_like(query, dtype=torch.bool)
        if not bad.any():
            break
        neg = torch.where(bad, torch.randint(n_items, shape, generator=generator), neg)
    return neg + 1


@register
class SASRec(TorchRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), see the module docstring.

    Hyperparameters (besides TORCH_DEFAULTS):
        max_len: items of history read (training windows and scoring).
        hidden: embedding and hidden width; blocks: attention blocks; heads: attention heads.
        dropout: on the embeddings and on each block's two residual branches.
        loss: "ce" (full softmax cross-entropy) or "bce" (one sampled negative per position).
        loss_precision: the "ce" softmax's matrix products, "float32", "bfloat16" or "auto"
            (bfloat16 where the CPU has it in hardware: `losses.product_dtype`).
    After fit: sequences_ (each user's training items, index + 1, in time order).
    """

    name = "SASRec"
    family = "deep"
    # Measured on leave-last-one-out ML-100K, seed 42 (validation / test NDCG@10, one thread):
    # these defaults 0.112 / 0.098, best epoch 11 of 15, fit 60 s (3.8 s an epoch); MostPop
    # 0.039 / 0.043, EASE 0.085 / 0.075, MarkovChain 0.079 / 0.082. loss="bce" 0.112 / 0.088
    # at epoch 26 (an epoch costs half, but it needs twice as many); dropout 0.2 or max_len 200
    # end no better (0.117, 0.119 after 30 epochs) and take 2-3x longer; hidden 32 was worse;
    # learning_rate 1e-3 (the paper's) needs over 60 epochs. On ml-latest-small (9,742 items)
    # an epoch took 16 s (8.4 s with the fused, chunked loss of models.losses) and validation stays
    # near MostPop's for 12 epochs (0.02 vs 0.018; MarkovChain 0.052), with dropout 0.5 or
    # learning_rate 2e-3 too. A sampled softmax there
    # (1,024 or 4,096 uniform negatives shared by a batch, logQ-corrected) made an epoch 2-4x
    # faster but validation fell to 0.004-0.017 over 20 epochs, so the full softmax stays.
    defaults: ClassVar[dict[str, Any]] = {
        **TORCH_DEFAULTS,
        "max_len": 50,
        "hidden": 64,
        "blocks": 2,
        "heads": 1,
        "dropout": 0.1,
        "loss": "ce",
        "loss_precision": "auto",
        "epochs": 30,
        "batch_size": 256,
        "learning_rate": 5e-3,
        "eval_every": 1,
        "patience": 4,
    }
    space: ClassVar[dict[str, Any]] = {
        "learning_rate": LogUniform(2.5e-3, 8e-3),
        "dropout": Uniform(0.05, 0.3),
    }
    n_extra_tokens: ClassVar[int] = 0  # token ids after the items (CL4SRec: a mask token)

    def __init__(self, *, device: str = "cpu", **params: Any) -> None:
        super().__init__(device=device, **params)
        if self.params["loss"] not in ("ce", "bce"):
            raise ValueError(f"{self.name}: loss={self.params['loss']!r}; expected 'ce' or 'bce'")
        product_dtype(self.params["loss_precision"], torch.device("cpu"))  # validates it

    # -- TorchRecommender hooks -------------------------------------------------------------
    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        p = self.params
        self.sequences_ = user_sequences(train)
        users, inputs, targets = shifted_windows(self.sequences_, int(p["max_len"]))
        self._users = torch.from_numpy(users)
        self._inputs, self._targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        return SASRecModule(
            train.n_items + 1 + self.n_extra_tokens,
            train.n_items,
            max_len=int(p["max_len"]),
            hidden=int(p["hidden"]),
            blocks=int(p["blocks"]),
            heads=int(p["heads"]),
            dropout=float(p["dropout"]),
            generator=generator,
        )

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """Windows in a random order: (inputs, targets) (B, L'), plus negatives (B, L') for
        "bce"; leading columns that are padding in every row of the batch are cut off."""
        size = int(self.params["batch_size"])
        order = torch.randperm(len(self._inputs), generator=generator)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            inputs, targets = self._inputs[idx], self._targets[idx]
            first = int((inputs != PAD).any(0).int().argmax()) if len(inputs) else 0
            inputs, targets = inputs[:, first:], targets[:, first:]
            if self.params["loss"] == "bce":
                neg = unseen_negatives(self._users[idx], tuple(targets.shape), self.seen_,
                                       generator)  # fmt: skip
                yield inputs, targets, neg
            else:
                yield inputs, targets

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean next-item loss over the positions whose target is an item."""
        inputs, targets = batch[0], batch[1]
        real = targets != PAD
        h = module(inputs)[real]
        positives = targets[real]
        if self.params["loss"] == "ce":
            products = product_dtype(self.params["loss_precision"], h.device)
            return full_softmax_cross_entropy(h, module.item_weights(), positives - 1,
                                              products=products)  # fmt: skip
        negatives = batch[2][real]
        pos = (h * module.items(positives)).sum(-1)
        neg = (h * module.items(negatives)).sum(-1)
        return (F.softplus(-pos) + F.softplus(neg)).mean()

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        window = last_window(self.sequences_, users.cpu().numpy(), int(self.params["max_len"]))
        h = module(torch.from_numpy(window).to(users.device), last=True)
        return h @ module.item_weights().T

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        try:
            super()._fit(train, valid=valid, seed=seed)
        finally:  # training windows are not needed to score; keep pickles small
            for name in ("_users", "_inputs", "_targets"):
                self.__dict__.pop(name, None)
