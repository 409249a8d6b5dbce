"""Multi-task recommenders: one model learns "will the user rate this item" and "how many stars".

The two tasks on MovieLens: *interest* (binary: the rated pairs are positives, `negatives`
unrated items per positive are sampled each epoch, never a seen item; BCE on every sample) and
*rating* (the stars, MSE on the rated pairs only: masked). ESMM adds a third label, *like*
(rating >= `like_threshold`). Every model sees the same input for a (user, item) pair: user and
item id embeddings plus embedded side features (user age group, gender, occupation / segment;
item genres, release decade, category, price quintile and tags on at least two items, whichever
exist: see `encode_features`); a missing feature is not used and a missing value gets its own
index. `score` ranks by the interest logit (so the models sit on the top-N leaderboards),
`predict` gives ratings clipped to the training range, `predict_interest` p(rate).

What each model shares between the tasks:

- `SingleTask`: nothing - two separate networks (embeddings + MLP bottom + tower), one per task.
  The baseline a multi-task model must beat.
- `SharedBottom`: the embeddings and the MLP bottom; one tower per task (Caruana 1997,
  "Multitask learning", Machine Learning 28).
- `MMoE`: the embeddings and `n_experts` expert MLPs; each task mixes the experts with its own
  softmax gate over the input, then its own tower. Ma, Zhao, Yi, Chen, Hong & Chi (2018),
  "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD.
- `PLE`: the embeddings and `shared_experts` shared experts per extraction layer; each task
  also has `task_experts` experts of its own, and its gate mixes only its own and the shared
  ones; with `levels` = 2 a shared gate over all experts feeds the next layer's shared experts
  (Customized Gate Control layers stacked: Progressive Layered Extraction). Tang, Liu, Zhao &
  Gong (2020), "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model
  for Personalized Recommendations", RecSys.
- `ESMM`: only the embeddings. A CTR tower gives p(rate), a CVR tower p(like | rate) and
  p(like, rate) = p(rate) * p(like | rate); both are trained over the entire sample space (BCE
  of p(rate) against "rated" and of p(like, rate) against "rated and liked", on rated and
  unrated pairs alike), so the CVR tower never learns from the rated pairs alone (the sample
  selection bias ESMM removes). A third tower, trained on the rated pairs, gives `predict`.
  Ma, Zhao, Wang, Zhu, Wang, Ji, Wang & Gai (2018), "Entire Space Multi-Task Model: An Effective
  Approach for Estimating Post-Click Conversion Rate", SIGIR.

The task losses are added ("equal") or weighted by learned homoscedastic uncertainty
("uncertainty"): Kendall, Gal & Cipolla (2018), "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR: with s_t = log sigma_t^2 learned (from 0),
a regression loss enters as 0.5 exp(-s_t) L_t + 0.5 s_t and a classification loss as
exp(-s_t) L_t + 0.5 s_t.

Early stopping and tuning read one number for both tasks, `joint_score`: the mean of each
task's gain over its trivial predictor on validation data (NDCG@10 over that of the popularity
ranking, the RMSE of the training mean over the model's RMSE). It is scale-free, so neither task
dominates the choice, and `SingleTask` is chosen by the same rule, which so favours no model.
The search spaces (`space`) differ: each model searches the knobs its design adds (experts,
levels, negatives, the loss weighting), so part of a difference between two models can come
from a knob only one of them searched.

Scoring every item is vectorised: every first layer over [x_u; x_i] is split into its user and
item halves (`SplitLinear`), so it runs once per user and once per item and the per-pair work
starts at the sum; `score_users` scores blocks of users against the whole catalogue, each
first layer's item half computed once for all blocks (`item_side_reused`: validation on
ml-latest-small's 9,742 items, one user a block, went from 15 s to 4 s for MMoE). In
training the same split saves work: a side with no more rows than the batch (ML-100K's users
and items) is multiplied once per step as a whole table and gathered (`PairEncoder.sides`), and
first layers that read the same input (experts' and gates', ESMM's three bottoms') run as one
matmul (`FirstLayers`), initialised from the separate layers so a seed gives the network it did.
Adam runs fused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.special import expit
from torch import nn
from torch.nn import functional as F

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import ClipsRatings
from metarec_lib.models.content import _column_text, _FeatureCoder, split_pipes
from metarec_lib.models.layers import ReLU
from metarec_lib.models.neumf import sample_negatives
from metarec_lib.models.popularity import MostPop
from metarec_lib.models.registry import register
from metarec_lib.models.torch_base import TORCH_DEFAULTS, Batch, TorchRecommender
from metarec_lib.tuning import Choice, LogUniform

TASKS = ("interest", "rating")
WEIGHTINGS = ("equal", "uncertainty")
Inputs = tuple[torch.Tensor, ...]
Side = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # features, or (table, row index)

# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Features:
    """Side information as index tables.

    user_codes: (n_users, n_vars) int64, the level of each user variable (age group, gender,
        occupation, segment); a missing or unknown value has its own code, `user_levels[v] - 1`.
    user_levels: levels per variable, the missing-value level included.
    item_features: (n_items, n_features) float32 multi-hot (genres, decade, category, price
        quintile, tags), zero rows for items without any.
    """

    user_codes: npt.NDArray[np.int64]
    user_levels: tuple[int, ...]
    item_features: npt.NDArray[np.float32]


def tag_features(items: pd.DataFrame | None, n_items: int, min_items: int = 2) -> sp.csr_matrix:
    """(n_items, n_tags) multi-hot of the '|'-joined `tags` on at least `min_items` items."""
    tags = _column_text(items, "tags", n_items)
    if tags is None:
        return sp.csr_matrix((n_items, 0))
    lists = [sorted(set(split_pipes(t))) for t in tags]
    rows = np.repeat(np.arange(n_items), [len(t) for t in lists])
    terms = np.array([t for terms in lists for t in terms], dtype=object)
    if not len(terms):
        return sp.csr_matrix((n_items, 0))
    _, codes, counts = np.unique(terms, return_inverse=True, return_counts=True)
    keep = counts >= min_items
    new_code = np.cumsum(keep) - 1
    ok = keep[codes]
    return sp.csr_matrix(
        (np.ones(int(ok.sum())), (rows[ok], new_code[codes[ok]])), shape=(n_items, int(keep.sum()))
    )


def encode_features(train: Interactions, *, use: bool = True) -> Features:
    """Index tables of the side information in `train.users` / `train.items` (see `Features`).

    Uses `content._FeatureCoder` (the project's one reading of these columns) plus tags; a frame
    that is missing or not aligned to the dense index, or `use=False`, gives no features.
    """
    n_users, n_items = train.n_users, train.n_items
    users = train.users if use and train.users is not None and len(train.users) == n_users else None
    items = train.items if use and train.items is not None and len(train.items) == n_items else None
    coder = _FeatureCoder(users, items, n_items)
    codes = coder.user_codes(users, n_users)
    columns, levels = [], []
    for name, known in coder.user_levels.items():
        code = codes[name]
        columns.append(np.where(code >= 0, code, len(known)))  # missing -> its own index
        levels.append(len(known) + 1)
    user_codes = np.stack(columns, 1) if columns else np.zeros((n_users, 0), np.int64)
    blocks = [coder.item_features, tag_features(items, n_items)]
    item_features = sp.hstack(blocks, format="csr").toarray().astype(np.float32)
    return Features(user_codes.astype(np.int64), tuple(levels), item_features)


# ----------------------------------------------------------------------------- layers


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def _embedding(n: int, dim: int, generator: torch.Generator) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=0.05, generator=generator)
    return emb


class SplitLinear(nn.Module):
    """A linear layer over the concatenation of its inputs, applied piecewise:
    W [x_1; x_2] + b = W_1 x_1 + W_2 x_2 + b, so the inputs only need to broadcast: a user part
    (n, 1, d_u) and an item part (1, m, d_i) give all n x m pairs without building them."""

    memo: dict | None = None  # see `item_side_reused`

    def __init__(self, dims: Sequence[int], n_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.layer = _linear(sum(self.dims), n_out, generator)

    def forward(self, *inputs: Side) -> torch.Tensor:
        weights = torch.split(self.layer.weight, self.dims, dim=1)
        out = self.layer.bias
        for k, (x, w) in enumerate(zip(inputs, weights, strict=True)):
            out = out + reused(self.memo, k, x, lambda: half(x, w))  # noqa: B023 (called now)
        return out


def reused(
    memo: dict | None, key: Any, x: Side, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """`compute()`, or its value from `memo` when it was computed there under `key` for this
    very `x` (the same object: the entry keeps it alive, so its identity is not reused). Only
    inputs that broadcast over users (first dimension 1: the item side when scoring blocks of
    users) are kept, the last one per key, so the memo never holds a block of many users."""
    if memo is None or not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] != 1:
        return compute()
    hit = memo.get(key)
    if hit is not None and hit[0] is x:
        return hit[1]
    value = compute()
    memo[key] = (x, value)
    return value


@contextmanager
def item_side_reused(module: nn.Module) -> Iterator[None]:
    """Within: the item side of the encoder and of every first layer in `module` is computed
    once per item index tensor and reused, for scoring blocks of users against the same items
    (`MultiTaskRecommender.score_users`); without it a block of users recomputed the item
    half of every first layer (on ml-latest-small, 9,742 items x the layer's width, for each
    user). The same tensors, so the same scores; the weights must not change within."""
    holders = [
        m for m in module.modules() if isinstance(m, (PairEncoder, SplitLinear, FirstLayers))
    ]
    for m in holders:
        m.memo = {}
    try:
        yield
    finally:
        for m in holders:
            m.memo = None


def half(x: Side, weight: torch.Tensor) -> torch.Tensor:
    """W_k x_k of one input: a tensor, or a `(table, index)` pair whose table rows are
    multiplied once and then gathered (fewer rows than the batch when the batch repeats them)."""
    if isinstance(x, tuple):
        table, index = x
        return F.embedding(index, F.linear(table, weight))
    return F.linear(x, weight)


class MLP(nn.Module):
    """ReLU layers of the given widths; the first is a `SplitLinear` over `dims`."""

    def __init__(self, dims: Sequence[int], widths: Sequence[int], generator: torch.Generator):
        super().__init__()
        self.first = SplitLinear(dims, widths[0], generator)
        rest: list[nn.Module] = [ReLU()]
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            rest += [_linear(n_in, n_out, generator), ReLU()]
        self.rest = nn.Sequential(*rest)
        self.width = int(sum(widths))  # activations per sample, for memory budgets

    def forward(self, *inputs: Side) -> torch.Tensor:
        return self.rest(self.first(*inputs))


class Tower(nn.Module):
    """A task head: d -> d // 2 -> 1 (ReLU), output squeezed: (...,)."""

    def __init__(self, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        half = max(dim // 2, 1)
        self.net = nn.Sequential(_linear(dim, half, generator), ReLU(), _linear(half, 1, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class PairEncoder(nn.Module):
    """(user, item) indices -> (x_u, x_i): id embeddings plus embedded side features.

    x_u = [e_u; e_age; e_gender; ...] (one `dim` embedding per user variable, missing level
    included), x_i = [e_i; W f_i] with f_i the item's multi-hot features (no W without
    features). Indices of any shape broadcast: users (n, 1) and items (1, m) give all pairs.
    """

    memo: dict | None = None  # see `item_side_reused`

    def __init__(
        self, n_users: int, n_items: int, dim: int, features: Features, generator: torch.Generator
    ) -> None:
        super().__init__()
        levels = np.asarray(features.user_levels, np.int64)
        offsets = (np.cumsum(levels) - levels).astype(np.int64)
        codes = torch.from_numpy(features.user_codes + offsets[None, :])
        self.register_buffer("user_codes", codes, persistent=False)
        self.user_ids = _embedding(n_users, dim, generator)
        self.user_vars = _embedding(int(levels.sum()), dim, generator) if len(levels) else None
        self.item_ids = _embedding(n_items, dim, generator)
        n_feat = features.item_features.shape[1]
        self.register_buffer(
            "item_features", torch.from_numpy(features.item_features), persistent=False
        )
        self.item_proj = nn.Linear(n_feat, dim, bias=False) if n_feat else None
        if self.item_proj is not None:
            nn.init.xavier_uniform_(self.item_proj.weight, generator=generator)
        self.user_dim = dim * (1 + len(levels))
        self.item_dim = dim * (2 if n_feat else 1)

    def users(self, idx: torch.Tensor) -> torch.Tensor:
        parts = [self.user_ids(idx)]
        if self.user_vars is not None:
            parts.append(self.user_vars(self.user_codes[idx]).flatten(-2))
        return torch.cat(parts, -1)

    def items(self, idx: torch.Tensor) -> torch.Tensor:
        parts = [self.item_ids(idx)]
        if self.item_proj is not None:
            parts.append(self.item_proj(self.item_features[idx]))
        return torch.cat(parts, -1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> Inputs:
        return self.users(users), self.items(items)

    def sides(self, users: torch.Tensor, items: torch.Tensor) -> tuple[Side, Side]:
        """(x_u, x_i) as first layers (`SplitLinear`) take them: for a 1-D batch holding at
        least as many rows as there are users (items), that side comes as (its whole table,
        the batch's index), so the layer multiplies each user (item) once, not once a row."""
        n_users, n_items = self.user_ids.num_embeddings, self.item_ids.num_embeddings
        if users.dim() == 1 and n_users <= len(users):
            x_u: Side = (self.users(torch.arange(n_users, device=users.device)), users)
        else:
            x_u = self.users(users)
        if items.dim() == 1 and n_items <= len(items):
            x_i: Side = (self.items(torch.arange(n_items, device=items.device)), items)
        else:
            x_i = reused(self.memo, "items", items, lambda: self.items(items))
        return x_u, x_i


# ----------------------------------------------------------------------------- networks


class MultiTaskNet(nn.Module):
    """Base of the networks: `forward(users, items, tasks, gates)` -> {task: raw output}.

    users / items: broadcastable int64 index tensors. Outputs: "interest" (logit of p(rate)),
    "rating" (rating minus the training mean), ESMM also "like" (logit of p(like | rate)); only
    the `tasks` asked for are computed. With `gates`, MMoE / PLE add "gates": {task: (..., E)}.
    `log_vars` holds the uncertainty weighting's log-variances (None for "equal").
    `pair_width` is about how many floats one (user, item) pair's activations take.
    """

    outputs: ClassVar[tuple[str, ...]] = TASKS

    def __init__(self, loss_terms: Sequence[str], weighting: str) -> None:
        super().__init__()
        self.log_vars = (
            nn.Parameter(torch.zeros(len(loss_terms))) if weighting == "uncertainty" else None
        )
        self.pair_width = 1

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        tasks: Sequence[str] | None = None,
        gates: bool = False,
    ) -> dict[str, Any]:
        raise NotImplementedError


class SharedBottomNet(MultiTaskNet):
    """Encoder -> shared MLP bottom -> one tower per task (one task: a single-task network)."""

    def __init__(
        self,
        encoder: PairEncoder,
        widths: Sequence[int],
        tasks: Sequence[str],
        loss_terms: Sequence[str],
        weighting: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__(loss_terms, weighting)
        self.encoder = encoder
        self.bottom = MLP((encoder.user_dim, encoder.item_dim), widths, generator)
        self.towers = nn.ModuleDict({t: Tower(widths[-1], generator) for t in tasks})
        self.pair_width = self.bottom.width + 2 * widths[-1]

    def forward(self, users, items, tasks=None, gates=False):
        h = self.bottom(*self.encoder.sides(users, items))
        return {t: self.towers[t](h) for t in (tasks or self.towers)}


class SingleTaskNet(MultiTaskNet):
    """One complete `SharedBottomNet` per task, with its own embeddings: nothing shared."""

    def __init__(
        self, nets: Mapping[str, SharedBottomNet], loss_terms: Sequence[str], weighting: str
    ) -> None:
        super().__init__(loss_terms, weighting)
        self.nets = nn.ModuleDict(dict(nets))
        self.pair_width = max(n.pair_width for n in nets.values())

    def forward(self, users, items, tasks=None, gates=False):
        return {t: self.nets[t](users, items, (t,))[t] for t in (tasks or self.nets)}


def _mix(gate_logits: torch.Tensor, experts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(softmax weights (..., E), sum_e w_e expert_e (..., d))."""
    if torch.is_grad_enabled():
        weights = torch.softmax(gate_logits, dim=-1)
    else:  # scoring: torch's softmax over a last axis of a few experts is 5x slower than this
        weights = (gate_logits - gate_logits.amax(-1, keepdim=True)).exp_()
        weights = weights.div_(weights.sum(-1, keepdim=True))
    # A sum of products (no (..., E, d) stack to build) accumulated in place: the backward of
    # a product reads its inputs, not its output, so autograd allows it. Scoring also writes
    # every product into one buffer.
    mixed = weights[..., :1] * experts[0]
    term = None if torch.is_grad_enabled() else torch.empty_like(mixed)
    for k in range(1, len(experts)):
        mixed.add_(torch.mul(weights[..., k : k + 1], experts[k], out=term))
    return weights, mixed


class FirstLayers(nn.Module):
    """Named `SplitLinear` layers over the same inputs run as one: their weights stacked along
    the outputs (initialised by the layers given, so a network starts as it did with separate
    layers), one matmul per input instead of one per layer and input. `forward(*inputs,
    names)` -> {name: that layer's output}; `names` (default all) skips the others."""

    memo: dict | None = None  # see `item_side_reused`

    def __init__(self, layers: Mapping[str, SplitLinear]) -> None:
        super().__init__()
        [dims] = {layer.dims for layer in layers.values()}
        self.dims = dims
        self.names = tuple(layers)
        self.sizes = tuple(layer.layer.out_features for layer in layers.values())
        self.weight = nn.Parameter(torch.cat([m.layer.weight.detach() for m in layers.values()]))
        self.bias = nn.Parameter(torch.cat([m.layer.bias.detach() for m in layers.values()]))

    def forward(self, *inputs: Side, names: Sequence[str] | None = None) -> dict[str, Any]:
        weight, bias, keep = self.weight, self.bias, self.names
        if names is not None and set(self.names) - set(names):
            keep = tuple(n for n in self.names if n in names)
            starts = np.cumsum(self.sizes) - np.asarray(self.sizes)
            rows = torch.cat([
                torch.arange(int(s), int(s) + size)
                for n, s, size in zip(self.names, starts, self.sizes, strict=True)
                if n in keep
            ])  # fmt: skip
            weight, bias = weight[rows.to(weight.device)], bias[rows.to(weight.device)]
        out = bias
        for k, (x, w) in enumerate(zip(inputs, torch.split(weight, self.dims, dim=1), strict=True)):
            out = out + reused(self.memo, (k, keep), x, lambda: half(x, w))  # noqa: B023
        sizes = [s for n, s in zip(self.names, self.sizes, strict=True) if n in keep]
        return dict(zip(keep, out.split(sizes, -1), strict=True))


class MMoENet(MultiTaskNet):
    """Encoder -> `n_experts` expert MLPs -> per task: softmax gate (linear in the input) over
    the experts, then the task's tower. The experts' first layers and the gates run as one
    `FirstLayers`."""

    def __init__(
        self,
        encoder: PairEncoder,
        widths: Sequence[int],
        n_experts: int,
        loss_terms: Sequence[str],
        weighting: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__(loss_terms, weighting)
        dims = (encoder.user_dim, encoder.item_dim)
        self.encoder = encoder
        mlps = [MLP(dims, widths, generator) for _ in range(n_experts)]
        gates = {t: SplitLinear(dims, n_experts, generator) for t in TASKS}
        self.expert_names = tuple(f"expert {k}" for k in range(n_experts))
        self.first = FirstLayers(
            {
                **dict(zip(self.expert_names, [m.first for m in mlps], strict=True)),
                **{f"gate {t}": g for t, g in gates.items()},
            }  # fmt: skip
        )
        self.experts = nn.ModuleList([m.rest for m in mlps])  # the layers after the first
        self.towers = nn.ModuleDict({t: Tower(widths[-1], generator) for t in TASKS})
        self.pair_width = n_experts * (mlps[0].width + widths[-1]) + 2 * widths[-1]

    def forward(self, users, items, tasks=None, gates=False):
        wanted = tuple(tasks or TASKS)
        names = self.expert_names + tuple(f"gate {t}" for t in wanted)
        first = self.first(*self.encoder.sides(users, items), names=names)
        experts = [e(first[n]) for e, n in zip(self.experts, self.expert_names, strict=True)]
        out: dict[str, Any] = {}
        used = {}
        for t in wanted:
            used[t], mixed = _mix(first[f"gate {t}"], experts)
            out[t] = self.towers[t](mixed)
        if gates:
            out["gates"] = used
        return out


class PLENet(MultiTaskNet):
    """Encoder -> `levels` extraction layers (CGC) -> towers.

    Each layer has `shared_experts` shared and `task_experts` per-task experts; task t's gate
    mixes its own and the shared experts; below the last layer a shared gate over all experts
    feeds the next layer's shared experts, and each task's mixture feeds its own experts and
    gate. The MLP widths are split over the layers (levels=2 with widths (64, 32): one
    64-unit layer per expert in layer 1, one 32-unit layer in layer 2), so depth stays that of
    the other models. Experts are named "shared k" and "<task> k" (`expert_names`). The first
    layers (experts' and gates') that read the same input run as one `FirstLayers`: in layer 1
    all read the encoder's output; above, the shared ones read the shared mixture and each
    task's read its own.
    """

    def __init__(
        self,
        encoder: PairEncoder,
        widths: Sequence[int],
        levels: int,
        shared_experts: int,
        task_experts: int,
        loss_terms: Sequence[str],
        weighting: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__(loss_terms, weighting)
        if not 1 <= levels <= len(widths):
            raise ValueError(f"PLE: levels={levels}; expected 1..{len(widths)}")
        chunks = [list(c) for c in np.array_split(np.asarray(widths), levels)]
        self.encoder = encoder
        self.n_shared, self.n_task = shared_experts, task_experts
        self.expert_names = tuple(
            [f"shared {k}" for k in range(shared_experts)]
            + [f"{t} {k}" for t in TASKS for k in range(task_experts)]
        )
        layers = []
        dims: tuple[int, ...] = (encoder.user_dim, encoder.item_dim)
        width = 0
        for level, chunk in enumerate(chunks):
            chunk = [int(w) for w in chunk]
            firsts: dict[str, SplitLinear] = {}  # in the order the layers are initialised
            rests: dict[str, nn.Module] = {}
            for name in self.expert_names:
                mlp = MLP(dims, chunk, generator)
                firsts[name], rests[name] = mlp.first, mlp.rest
            n_gate = task_experts + shared_experts
            for t in TASKS:
                firsts[f"gate {t}"] = SplitLinear(dims, n_gate, generator)
            if level < levels - 1:
                n_all = shared_experts + len(TASKS) * task_experts
                firsts["gate shared"] = SplitLinear(dims, n_all, generator)
            layer = nn.Module()
            layer.rest = nn.ModuleList([rests[n] for n in self.expert_names])
            layer.first = nn.ModuleDict(
                {
                    key: FirstLayers(
                        {n: m for n, m in firsts.items() if self._reads(n, level) == key}
                    )
                    for key in dict.fromkeys(self._reads(n, level) for n in firsts)
                }  # fmt: skip
            )
            width += (shared_experts + len(TASKS) * task_experts) * (sum(chunk) + chunk[-1])
            layers.append(layer)
            dims = (chunk[-1],)
        self.layers = nn.ModuleList(layers)
        self.towers = nn.ModuleDict({t: Tower(widths[-1], generator) for t in TASKS})
        self.pair_width = width + 2 * widths[-1]

    @staticmethod
    def _reads(name: str, level: int) -> str:
        """The input a first layer reads: "x" (the encoder's) in layer 1, else "shared" or
        its task's mixture."""
        if level == 0:
            return "x"
        owner = name.removeprefix("gate ").split(" ")[0]
        return owner

    def expert_slots(self, task: str) -> list[int]:
        """Positions in `expert_names` of task's gate inputs (own experts, then shared)."""
        own = self.n_shared + TASKS.index(task) * self.n_task
        return list(range(own, own + self.n_task)) + list(range(self.n_shared))

    def forward(self, users, items, tasks=None, gates=False):
        wanted = tuple(tasks or TASKS)
        inputs: dict[str, tuple[Side, ...]] = {"x": self.encoder.sides(users, items)}
        used: dict[str, torch.Tensor] = {}
        shared_names = self.expert_names[: self.n_shared]
        for level, layer in enumerate(self.layers):
            last = level == len(self.layers) - 1
            need = wanted if last else TASKS  # lower layers feed both tasks' next layer
            names = [*shared_names, *(n for n in self.expert_names if n.split(" ")[0] in need),
                     *(f"gate {t}" for t in need), *([] if last else ["gate shared"])]  # fmt: skip
            first: dict[str, torch.Tensor] = {}
            for key, fused in layer.first.items():
                if key in inputs and set(fused.names) & set(names):
                    first.update(fused(*inputs[key], names=names))
            experts = {
                n: rest(first[n])
                for n, rest in zip(self.expert_names, layer.rest, strict=True)
                if n in first
            }
            shared = [experts[n] for n in shared_names]
            nxt: dict[str, tuple[Side, ...]] = {}
            for t in need:
                own = [experts[f"{t} {k}"] for k in range(self.n_task)]
                used[t], mixed = _mix(first[f"gate {t}"], own + shared)
                nxt[t] = (mixed,)
            if not last:
                every = [experts[n] for n in self.expert_names]
                nxt["shared"] = (_mix(first["gate shared"], every)[1],)
            inputs = nxt
        out: dict[str, Any] = {t: self.towers[t](inputs[t][0]) for t in wanted}
        if gates:
            out["gates"] = used
        return out


class ESMMNet(MultiTaskNet):
    """Shared encoder -> three separate MLP + tower stacks: "interest" (CTR: p(rate) logit),
    "like" (CVR: p(like | rate) logit) and "rating"; the MLPs' first layers run as one
    `FirstLayers`."""

    outputs = ("interest", "like", "rating")

    def __init__(
        self,
        encoder: PairEncoder,
        widths: Sequence[int],
        loss_terms: Sequence[str],
        weighting: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__(loss_terms, weighting)
        dims = (encoder.user_dim, encoder.item_dim)
        self.encoder = encoder
        mlps = {t: MLP(dims, widths, generator) for t in self.outputs}
        self.first = FirstLayers({t: m.first for t, m in mlps.items()})
        self.bottoms = nn.ModuleDict({t: m.rest for t, m in mlps.items()})  # after the first
        self.towers = nn.ModuleDict({t: Tower(widths[-1], generator) for t in self.outputs})
        self.pair_width = mlps["interest"].width + 2 * widths[-1]

    def forward(self, users, items, tasks=None, gates=False):
        wanted = tuple(tasks or self.outputs)
        first = self.first(*self.encoder.sides(users, items), names=wanted)
        return {t: self.towers[t](self.bottoms[t](first[t])) for t in wanted}


def esmm_log_probs(
    ctr_logit: torch.Tensor, cvr_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(rate), log p(like, rate)) with p(like, rate) = p(rate) * p(like | rate)."""
    log_ctr = F.logsigmoid(ctr_logit)
    return log_ctr, log_ctr + F.logsigmoid(cvr_logit)


def bce_from_log_prob(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of probabilities given as logs (stable near p = 1)."""
    log_not = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))
    return -(target * log_p + (1 - target) * log_not).mean()


def combine_losses(
    losses: Mapping[str, torch.Tensor], kinds: Mapping[str, str], log_vars: torch.Tensor | None
) -> torch.Tensor:
    """Sum of the task losses ("equal", log_vars None), or Kendall et al.'s uncertainty
    weighting: 0.5 exp(-s) L + 0.5 s for "mse" tasks, exp(-s) L + 0.5 s for "bce" tasks, with
    s = log_vars in the order of `losses`."""
    if log_vars is None:
        return torch.stack(list(losses.values())).sum()
    total = log_vars.new_zeros(())
    for s, (name, value) in zip(log_vars, losses.items(), strict=True):
        scale = 0.5 if kinds[name] == "mse" else 1.0
        total = total + scale * torch.exp(-s) * value + 0.5 * s
    return total


# ----------------------------------------------------------------------------- selection

NDCG_FLOOR = 0.01  # the popularity reference's NDCG@10 never counts as lower (tiny data)


def joint_score(ndcg: float, rmse: float, reference_ndcg: float, reference_rmse: float) -> float:
    """0.5 (ndcg / reference_ndcg + reference_rmse / rmse): 1 for a model as good as the
    trivial predictors on both tasks, higher is better; reference_ndcg is floored at
    NDCG_FLOOR."""
    return 0.5 * (ndcg / max(reference_ndcg, NDCG_FLOOR) + reference_rmse / max(rmse, 1e-12))


# ----------------------------------------------------------------------------- recommenders


class MultiTaskRecommender(ClipsRatings, TorchRecommender):
    """Base of the multi-task models: features, the epoch's samples, losses, weighting, heads.

    Hyperparameters (besides TORCH_DEFAULTS'):
        embedding: size of every embedding (ids and each side feature).
        hidden: width of the first MLP layer; the MLP is (hidden, hidden // 2), towers
            hidden // 2 -> hidden // 4 -> 1.
        negatives: unrated items sampled per rated pair each epoch (interest negatives).
        weighting: "equal" (sum of task losses) or "uncertainty" (Kendall et al. 2018).
        features: use the side features (False: ids only).
        negative_tries: rounds of redrawing negatives that hit a seen item.
    After fit, besides TorchRecommender's: mu_ (training mean rating), rating_range_ (min, max).
    """

    family = "multitask"
    predicts_ratings = True
    defaults: ClassVar[dict[str, Any]] = {
        **TORCH_DEFAULTS,
        "epochs": 20,
        "batch_size": 2048,
        "learning_rate": 2e-3,
        "patience": 3,
        "embedding": 16,
        "hidden": 64,
        "negatives": 4,
        "weighting": "equal",
        "features": True,
        "negative_tries": 20,
    }
    loss_kinds: ClassVar[dict[str, str]] = {"interest": "bce", "rating": "mse"}
    validation_metric: ClassVar[str] = "joint"
    # Small ops (embedding gathers, (batch, 64) matmuls): a second intra-op thread stalls
    # them badly on a shared 2-core machine (measured on the checkerboard: 0.014 s per epoch
    # on one thread, about 4 s per epoch on two while the other core was busy).
    cpu_threads: ClassVar[int | None] = 1
    score_floats: ClassVar[int] = 1 << 23
    predict_batch: ClassVar[int] = 1 << 15

    # -- what a model writes --------------------------------------------------------------
    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        raise NotImplementedError

    # -- shared pieces --------------------------------------------------------------------
    @property
    def widths(self) -> tuple[int, int]:
        hidden = int(self.params["hidden"])
        return hidden, max(hidden // 2, 1)

    def encoder(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> PairEncoder:
        return PairEncoder(n_users, n_items, int(self.params["embedding"]), features, generator)

    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        p = self.params
        if p["weighting"] not in WEIGHTINGS:
            raise ValueError(
                f"{self.name}: weighting={p['weighting']!r}; expected one of {list(WEIGHTINGS)}"
            )
        if int(p["negatives"]) < 1:
            raise ValueError(f"{self.name}: negatives={p['negatives']!r}; expected >= 1")
        pairs = train.frame.drop_duplicates(["user", "item"], keep="last")
        pairs = pairs.sort_values(["user", "item"], kind="mergesort")
        self._pos_users = torch.tensor(pairs["user"].to_numpy(np.int64))
        self._pos_items = torch.tensor(pairs["item"].to_numpy(np.int64))
        ratings = pairs["rating"].to_numpy(np.float64)
        self._pos_ratings = torch.from_numpy(ratings.astype(np.float32))
        self.mu_ = float(ratings.mean()) if len(ratings) else 0.0
        self.rating_range_ = (
            (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)
        )
        self._popularity = MostPop().fit(train)  # the interest task's trivial reference
        self._references: tuple[int, float, float] | None = None
        features = encode_features(train, use=bool(p["features"]))
        return self.network(train.n_users, train.n_items, features, generator)

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """(users, items, rated, rating): every rated pair once (rated 1, its rating) and
        `negatives` unseen items per rated pair (rated 0, rating 0), in a seeded order."""
        p = self.params
        n_pos = len(self._pos_users)
        repeated = self._pos_users.repeat(int(p["negatives"]))
        neg_users, neg_items = sample_negatives(
            self.seen_, repeated, generator, int(p["negative_tries"])
        )
        users = torch.cat([self._pos_users, neg_users])
        items = torch.cat([self._pos_items, neg_items])
        rated = torch.cat([torch.ones(n_pos), torch.zeros(len(neg_users))])
        rating = torch.cat([self._pos_ratings, torch.zeros(len(neg_users))])
        order = torch.randperm(len(users), generator=generator)
        size = int(p["batch_size"])
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            yield users[idx], items[idx], rated[idx], rating[idx]

    def rating_loss(
        self, output: torch.Tensor, rated: torch.Tensor, rating: torch.Tensor
    ) -> torch.Tensor:
        """MSE of mu + output against the rating, over the rated pairs of the batch only."""
        err = (output + self.mu_ - rating) ** 2 * rated
        return err.sum() / rated.sum().clamp(min=1.0)

    def task_losses(self, module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """{task: mean loss} of one batch, in `loss_kinds` order."""
        users, items, rated, rating = batch
        out = module(users, items)
        return {
            "interest": F.binary_cross_entropy_with_logits(out["interest"], rated),
            "rating": self.rating_loss(out["rating"], rated, rating),
        }

    def validation_score(self, valid: Interactions) -> float:
        """`joint_score` of this model on `valid` (its NDCG@10 and RMSE), against the popularity
        ranking and the training mean rating (computed once per validation set)."""
        from metarec_lib.evaluate import ndcg_on, rmse_on

        if self._references is None or self._references[0] != id(valid):
            mean_rmse = float(np.sqrt(np.mean((valid.frame["rating"].to_numpy() - self.mu_) ** 2)))
            self._references = (id(valid), ndcg_on(self._popularity, valid), mean_rmse)
        _, reference_ndcg, reference_rmse = self._references
        ndcg, rmse = ndcg_on(self, valid), rmse_on(self, valid)
        return joint_score(ndcg, rmse, reference_ndcg, reference_rmse)

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        return combine_losses(self.task_losses(module, batch), self.loss_kinds, module.log_vars)

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        """Interest logits of every item, in blocks of users whose pair activations stay near
        `score_floats` floats (32 MiB) whatever the catalogue size."""
        items = torch.arange(self.n_items_, device=users.device)[None, :]
        step = max(1, self.score_floats // (self.n_items_ * module.pair_width))
        with item_side_reused(module):
            return torch.cat(
                [
                    module(users[s : s + step, None], items, ("interest",))["interest"]
                    for s in range(0, len(users), step)
                ]
            )

    def outputs(
        self, users: npt.ArrayLike, items: npt.ArrayLike, tasks: Sequence[str], gates: bool = False
    ) -> dict[str, Any]:
        """Raw outputs of aligned (user, item) pairs as NumPy: {task: (n,)}, with `gates` also
        "gates": {task: (n, E)} (eval mode, no gradients, in batches)."""
        users, items = np.array(users, np.int64), np.array(items, np.int64)  # writable copies
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"{self.name}: users {users.shape} and items {items.shape} must be aligned 1-D"
            )
        module = self.module_
        was_training = module.training
        module.eval()
        parts: list[dict[str, Any]] = []
        with torch.no_grad():
            for s in range(0, len(users), self.predict_batch):
                u = torch.from_numpy(users[s : s + self.predict_batch]).to(self.device_)
                i = torch.from_numpy(items[s : s + self.predict_batch]).to(self.device_)
                parts.append(module(u, i, tuple(tasks), gates))
        module.train(was_training)
        out: dict[str, Any] = {}
        for t in tasks:
            chunks = [p[t].double().cpu().numpy() for p in parts]
            out[t] = np.concatenate(chunks) if chunks else np.empty(0)
        if gates:
            out["gates"] = {
                t: np.vstack([p["gates"][t].double().cpu().numpy() for p in parts]) for t in tasks
            }
        return out

    def predict_raw(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of aligned pairs: shape (n,)."""
        return self.outputs(users, items, ("rating",))["rating"] + self.mu_

    def predict_interest(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """p(rate) of aligned pairs, in (0, 1): shape (n,)."""
        return expit(self.outputs(users, items, ("interest",))["interest"])

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in ("_pos_users", "_pos_items", "_pos_ratings", "_popularity", "_references"):
            state.pop(key, None)
        return state


class GatedRecommender(MultiTaskRecommender):
    """A multi-task model whose tasks mix experts through softmax gates (MMoE, PLE)."""

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Names of the (last layer's) experts, the order of `gate_usage`'s arrays."""
        return self.module_.expert_names

    def gate_usage(self, users: npt.ArrayLike, items: npt.ArrayLike) -> dict[str, np.ndarray]:
        """{task: (n_experts,)}: the mean gate weight of each (last-layer) expert over the given
        aligned pairs; each sums to 1 (experts a task's gate cannot see get 0)."""
        gates = self.outputs(users, items, TASKS, gates=True)["gates"]
        return {t: self._full_axis(t, g.mean(0)) for t, g in gates.items()}

    def _full_axis(self, task: str, mean: np.ndarray) -> np.ndarray:
        return mean


# ----------------------------------------------------------------------------- models


@register
class SingleTask(MultiTaskRecommender):
    """Two separate networks, one per task: embeddings + MLP (hidden, hidden // 2) + tower each;
    no parameter shared. The weighting only rescales each network's own loss, which Adam all but
    undoes, so it is not searched."""

    name = "SingleTask"
    space = {
        "learning_rate": LogUniform(5e-4, 5e-3),
        "embedding": Choice((16, 32)),
    }

    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        nets = {
            t: SharedBottomNet(
                self.encoder(n_users, n_items, features, generator),
                self.widths,
                (t,),
                (),
                "equal",
                generator,
            )
            for t in TASKS
        }
        return SingleTaskNet(nets, TASKS, str(self.params["weighting"]))


@register
class SharedBottom(MultiTaskRecommender):
    """Shared embeddings and MLP bottom (hidden, hidden // 2); one tower per task."""

    name = "SharedBottom"
    space = {
        "learning_rate": LogUniform(5e-4, 5e-3),
        "embedding": Choice((16, 32)),
        "weighting": Choice(WEIGHTINGS),
    }

    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        return SharedBottomNet(
            self.encoder(n_users, n_items, features, generator),
            self.widths,
            TASKS,
            TASKS,
            str(self.params["weighting"]),
            generator,
        )


@register
class MMoE(GatedRecommender):
    """Multi-gate mixture of experts (Ma et al. 2018): `n_experts` expert MLPs (hidden,
    hidden // 2) shared by both tasks, one softmax gate and one tower per task."""

    name = "MMoE"
    defaults: ClassVar[dict[str, Any]] = {**MultiTaskRecommender.defaults, "n_experts": 4}
    space = {
        "n_experts": Choice((2, 4, 8)),
        "learning_rate": LogUniform(5e-4, 5e-3),
        "weighting": Choice(WEIGHTINGS),
    }

    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        n_experts = int(self.params["n_experts"])
        if n_experts < 1:
            raise ValueError(f"MMoE: n_experts={n_experts}; expected >= 1")
        return MMoENet(
            self.encoder(n_users, n_items, features, generator),
            self.widths,
            n_experts,
            TASKS,
            str(self.params["weighting"]),
            generator,
        )


@register
class PLE(GatedRecommender):
    """Progressive layered extraction (Tang et al. 2020): `levels` CGC layers with
    `shared_experts` shared and `task_experts` per-task experts each (see `PLENet`)."""

    name = "PLE"
    defaults: ClassVar[dict[str, Any]] = {
        **MultiTaskRecommender.defaults,
        "levels": 2,
        "shared_experts": 2,
        "task_experts": 1,
    }
    space = {
        "levels": Choice((1, 2)),
        "learning_rate": LogUniform(5e-4, 5e-3),
        "weighting": Choice(WEIGHTINGS),
    }

    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        p = self.params
        shared, own = int(p["shared_experts"]), int(p["task_experts"])
        if shared < 0 or own < 0 or shared + own < 1:
            raise ValueError(
                f"PLE: shared_experts={shared}, task_experts={own}; "
                "expected >= 0 each and at least one expert per gate"
            )
        return PLENet(
            self.encoder(n_users, n_items, features, generator),
            self.widths,
            int(p["levels"]),
            shared,
            own,
            TASKS,
            str(p["weighting"]),
            generator,
        )

    def _full_axis(self, task: str, mean: np.ndarray) -> np.ndarray:
        full = np.zeros(len(self.module_.expert_names))
        full[self.module_.expert_slots(task)] = mean
        return full


@register
class ESMM(MultiTaskRecommender):
    """Entire-space multi-task model (Ma et al. 2018, SIGIR): shared embeddings; CTR tower
    p(rate), CVR tower p(like | rate), p(like, rate) = their product, both BCE over all samples;
    a rating tower (MSE on rated pairs) for `predict`. Interest score: p(rate).

    Extra hyperparameter: like_threshold (a rated pair is "liked" when rating >= it).
    """

    name = "ESMM"
    defaults: ClassVar[dict[str, Any]] = {**MultiTaskRecommender.defaults, "like_threshold": 4.0}
    space = {
        "learning_rate": LogUniform(5e-4, 5e-3),
        "negatives": Choice((2, 4, 8)),
        "weighting": Choice(WEIGHTINGS),
    }
    loss_kinds: ClassVar[dict[str, str]] = {"interest": "bce", "like": "bce", "rating": "mse"}

    def network(
        self, n_users: int, n_items: int, features: Features, generator: torch.Generator
    ) -> MultiTaskNet:
        return ESMMNet(
            self.encoder(n_users, n_items, features, generator),
            self.widths,
            tuple(self.loss_kinds),
            str(self.params["weighting"]),
            generator,
        )

    def task_losses(self, module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        users, items, rated, rating = batch
        out = module(users, items)
        liked = rated * (rating >= float(self.params["like_threshold"])).to(rated.dtype)
        _, log_ctcvr = esmm_log_probs(out["interest"], out["like"])
        return {
            "interest": F.binary_cross_entropy_with_logits(out["interest"], rated),
            "like": bce_from_log_prob(log_ctcvr, liked),
            "rating": self.rating_loss(out["rating"], rated, rating),
        }

    def predict_funnel(self, users: npt.ArrayLike, items: npt.ArrayLike) -> dict[str, np.ndarray]:
        """{"rate": p(rate), "like_given_rate": p(like | rate), "like_and_rate": p(like, rate)}
        of aligned pairs, each (n,); p(like, rate) comes from the loss's own computation."""
        out = self.outputs(users, items, ("interest", "like"))
        ctr = torch.from_numpy(out["interest"])
        cvr = torch.from_numpy(out["like"])
        log_ctr, log_ctcvr = esmm_log_probs(ctr, cvr)
        return {
            "rate": log_ctr.exp().numpy(),
            "like_given_rate": torch.sigmoid(cvr).numpy(),
            "like_and_rate": log_ctcvr.exp().numpy(),
        }
