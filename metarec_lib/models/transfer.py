"""Transfer learning: recommend in a target domain with help from a source domain.

Every method here shares one base model, so that a difference between them comes from the
transfer method alone: a matrix factorisation for implicit top-N ranking,

    score(u, i) = <W p_u, q_i> + b_i

with user embeddings p, item embeddings q (`factors` wide), item biases b and a `factors` x
`factors` "top layer" W initialised to the identity; trained with BPR (one unseen negative per
positive per epoch, `bpr.sample_triples`), an L2 penalty `reg` on the embeddings and biases of
each triple (and on W - I once per batch, so W cannot grow to dodge the penalty) and Adam, by
the project's one training loop (`TorchRecommender`, early stopping on validation NDCG@10).
`fit_mf` trains this model on any `Interactions`: the source model of every method comes from it.

The source domain arrives as `train.source`, a `SourceDomain`: its interactions in their own
dense index space plus `user_to_target` / `item_to_target` (the target index of each shared
source entity, -1 for a source-only one). Users may be shared (cross-domain splits of one
population), items may be shared (the same movies in two catalogues), or both; either side may
share nothing. The methods:

- `TargetOnly`: the base model on the target training rows alone (ignores the source).
- `SourceOnly` (zero-shot): the base model trained on the source only (`epochs` source epochs, no
  early stopping: no target row is used, validation included); a target entity takes the
  parameters of the source entity mapped to it; an unshared one gets a zero embedding and a zero
  bias. So with shared items only, every target user has a zero embedding and gets the same
  ranking, the source's item biases (a source popularity ranking); with shared users only, every
  target item scores 0 and the ranking is a tie, broken by the top-k routine's order.
- `PretrainFinetune`: pretrain on the source (`source_epochs`), start the target model from the
  source's parameters for shared entities (embedding, and bias for items) and from the source's
  W; the rest starts at the usual random init. Then every weight trains on the target.
- `FrozenFinetune`: the same start, but the transferred embedding rows never change (their
  gradient is cut in the forward pass and Adam, without weight decay, leaves zero-gradient rows
  exactly in place); W, every bias and the other embeddings train.
- `JointTraining`: one model over the union of both domains' entities (a shared entity has one
  row), trained from random init on source and target pairs in one BPR loss, source triples
  weighted by `source_weight`. A triple's negative comes from its own domain's items (unseen by
  that user in that domain). Early stopping and scores use the target items only.
- `EMCDR` (Man, Shen, Jin & Cheng 2017, "Cross-Domain Recommendation: An Embedding and Mapping
  Approach", IJCAI): train the base model separately on the source and on the target; per shared
  side (users, items), learn a mapping f from source to target vectors (item vectors include the
  bias as a last coordinate) on the shared entities with at least `min_target` target training
  pairs, by MSE; then a shared entity with fewer target pairs (cold in the target) gets
  f(its source vector) in place of its target vector. `mapping` is "mlp" (one tanh hidden layer
  of 2 * factors, as in the paper) or "linear". A side with no warm shared entity learns no
  mapping and keeps the target vectors: with none on either side EMCDR is TargetOnly exactly
  (same seed, same scores).

Every method but `TargetOnly` needs `train.source` and raises a ValueError naming the model
without it. `n_parameters` counts the parameters of the model that scores the target (the
target network, plus EMCDR's mappings), not the source model's (kept as `source_model_`);
JointTraining's one network holds the source's users and items too, and counts them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from metarec_lib.data.dataset import Interactions, SourceDomain
from metarec_lib.models.base import resolve_device
from metarec_lib.models.bpr import sample_triples
from metarec_lib.models.losses import bpr_triple_loss
from metarec_lib.models.memo import TrainingMemo
from metarec_lib.models.registry import register
from metarec_lib.models.torch_base import TORCH_DEFAULTS, Batch, TorchRecommender
from metarec_lib.models.training import adam, cpu_threads, cuda_determinism
from metarec_lib.tuning import Choice, LogUniform

# The base model's hyperparameters. Adam's weight decay is not one: `reg` is the L2 penalty, and
# decay would move frozen rows. Measured with TargetOnly on ML-100K (75/25 holdout seed 42, a 10%
# per-user validation carve-out, seed 0): validation NDCG@10 0.152 (test 0.370) in 30 epochs,
# 2-4 s on one busy core. Every epoch with patience 3 stopped at epoch 7 on a plateau (0.142);
# learning_rate 1e-2: 0.152 (test 0.361); reg 5e-3 / 2e-2 (at 1e-2): 0.148 / 0.149; factors 64:
# 0.158 (test 0.366); W fixed at I: 0.157; BPR (no W, 60 epochs) reaches 0.165 at epoch 44.
MF_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in TORCH_DEFAULTS.items() if k != "weight_decay"},
    "epochs": 30,
    "batch_size": 2048,
    "learning_rate": 5e-3,
    "eval_every": 2,
    "patience": 4,
    "factors": 32,
    "reg": 0.01,
    "init_std": 0.1,
    "negative_tries": 20,
}
MF_SPACE = {
    "factors": Choice((16, 32, 64)),
    "learning_rate": LogUniform(1e-3, 2e-2),
    "reg": LogUniform(1e-3, 5e-2),
}
MAPPINGS = ("mlp", "linear")

# ----------------------------------------------------------------------------- the base model


class MFModule(nn.Module):
    """users (n_users, f), items (n_items, f), bias (n_items,), top W (f, f) = I at init.

    frozen_users / frozen_items (bool buffers): rows whose embedding gets no gradient.
    """

    def __init__(
        self, n_users: int, n_items: int, factors: int, init_std: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.users = nn.Parameter(torch.randn(n_users, factors, generator=generator) * init_std)
        self.items = nn.Parameter(torch.randn(n_items, factors, generator=generator) * init_std)
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.top = nn.Parameter(torch.eye(factors))
        self.register_buffer("frozen_users", torch.zeros(n_users, dtype=torch.bool))
        self.register_buffer("frozen_items", torch.zeros(n_items, dtype=torch.bool))

    def bpr_loss(
        self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor, w: torch.Tensor, reg: float
    ) -> torch.Tensor:
        """Mean of w * (-log sigmoid(x_ui - x_uj) + reg * squared norms) over the triples,
        plus reg * |W - I|^2; frozen rows get no gradient (`losses.bpr_triple_loss`)."""
        loss = bpr_triple_loss(self.users, self.items, self.bias, u, i, j, reg=reg, top=self.top,
                               weight=w, frozen_users=self.frozen_users,
                               frozen_items=self.frozen_items)  # fmt: skip
        eye = torch.eye(self.top.shape[0], device=self.top.device)
        return loss + reg * ((self.top - eye) ** 2).sum()

    def score_all(self, users: torch.Tensor, n_items: int) -> torch.Tensor:
        """Scores of the first `n_items` items (the target's) for each user: (len(users), n)."""
        return (self.users[users] @ self.top.T) @ self.items[:n_items].T + self.bias[:n_items]


@dataclass(frozen=True)
class Domain:
    """One domain's training pairs: `seen` (binary CSR in the domain's own indices) and the
    model row of each domain user / item; its triples weigh `weight` in the loss."""

    seen: sp.csr_matrix
    users: torch.Tensor
    items: torch.Tensor
    weight: float = 1.0


def identity_domain(seen: sp.csr_matrix) -> Domain:
    """The target domain of a model whose rows are the target's indices."""
    return Domain(seen, torch.arange(seen.shape[0]), torch.arange(seen.shape[1]))


class TransferMF(TorchRecommender):
    """The base model on `TorchRecommender`; a method overrides `network` (start and domains)
    or, when it does not train by the loop (SourceOnly, EMCDR), `_fit`."""

    family = "transfer"
    defaults: ClassVar[dict[str, Any]] = dict(MF_DEFAULTS)
    space = dict(MF_SPACE)
    cpu_threads: ClassVar[int | None] = 1  # embedding gathers and (batch, f) products
    needs_source: ClassVar[bool] = True

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        self._source = require_source(train, self.name) if self.needs_source else None
        self._seed = int(seed)
        super()._fit(train, valid=valid, seed=seed)

    def new_module(self, n_users: int, n_items: int, generator: torch.Generator) -> MFModule:
        p = self.params
        return MFModule(n_users, n_items, int(p["factors"]), float(p["init_std"]), generator)

    def network(
        self, train: Interactions, generator: torch.Generator
    ) -> tuple[MFModule, list[Domain]]:
        """(untrained module, training domains): here a fresh model on the target alone."""
        return self.new_module(train.n_users, train.n_items, generator), [
            identity_domain(self.seen_)
        ]

    def pretrain(self, source: SourceDomain, seed: int, epochs: int | None) -> TargetOnly:
        """The base model fitted on the source for `epochs` (None: the base `epochs`), kept as
        source_model_; `reused_seconds_` says what a remembered pretraining cost (`fit_mf`)."""
        self.source_model_ = fit_mf(source.interactions, self.params, seed=seed, epochs=epochs,
                                    device=self.device)  # fmt: skip
        self.reused_seconds_ = self.source_model_.reused_seconds_
        return self.source_model_

    # -- TorchRecommender's hooks ---------------------------------------------------------
    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        module, self._domains = self.network(train, generator)
        return module

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """Every training pair of every domain once, with one negative from its domain,
        mapped to model rows; (user, positive, negative, weight), in a seeded order."""
        tries = int(self.params["negative_tries"])
        parts = []
        for d in self._domains:
            u, i, j = sample_triples(d.seen, generator, tries)
            parts.append((d.users[u], d.items[i], d.items[j], torch.full((len(u),), d.weight)))
        u, i, j, w = (torch.cat(t) for t in zip(*parts, strict=True))
        if len(self._domains) > 1:  # each domain's triples are shuffled already
            order = torch.randperm(len(u), generator=generator)
            u, i, j, w = u[order], i[order], j[order], w[order]
        size = int(self.params["batch_size"])
        for start in range(0, len(u), size):
            sl = slice(start, start + size)
            yield u[sl], i[sl], j[sl], w[sl]

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        return module.bpr_loss(*batch, float(self.params["reg"]))

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        return module.score_all(users, self.n_items_)

    def optimiser(self, module: nn.Module) -> Any:
        """Adam without weight decay (`reg` is the L2 term), one fused kernel where available."""
        trainable = [w for w in module.parameters() if w.requires_grad]
        return adam(trainable, lr=float(self.params["learning_rate"]))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in ("_domains", "_source"):  # training data, not the model
            state.pop(key, None)
        return state


def fit_mf(
    data: Interactions,
    params: Mapping[str, Any],
    *,
    seed: int,
    valid: Interactions | None = None,
    epochs: int | None = None,
    device: str = "cpu",
) -> TargetOnly:
    """The base model fitted on `data` (any domain) with the base hyperparameters found in
    `params` (TargetOnly's defaults for the others), `epochs` overriding theirs.

    A fit without `valid` (a source pretraining) is remembered in this process by what it
    depends on (the data, the base hyperparameters, epochs, seed, device), so PretrainFinetune,
    FrozenFinetune and EMCDR at one target fraction and seed pretrain once; the fit is seeded
    and forks the RNG, so a remembered model is the one a new fit would give. Its
    `reused_seconds_` is the original fit's time when it was remembered, else 0."""
    config = {k: v for k, v in params.items() if k in TargetOnly.defaults}
    if epochs is not None:
        config["epochs"] = int(epochs)
    if valid is not None:
        return TargetOnly(device=device, **config).fit(data, valid=valid, seed=seed)
    key = _pretraining_key(data, config, seed, device)
    if (hit := _PRETRAINED.get(key)) is not None:
        model, seconds = hit
        reused = object.__new__(type(model))  # shares the (read-only) network, not this
        reused.__dict__.update(model.__dict__)  # attribute (copy.copy would pickle the network)
        reused.reused_seconds_ = seconds
        return reused
    start = time.perf_counter()
    model = TargetOnly(device=device, **config).fit(data, seed=seed)
    model.reused_seconds_ = 0.0
    _PRETRAINED.put(key, (model, time.perf_counter() - start))
    return model


# Source pretrainings by `_pretraining_key` (see `fit_mf`); a handful per target fraction.
_PRETRAINED = TrainingMemo(8)


def clear_pretraining_cache() -> None:
    """Forget every remembered source pretraining (tests that compare two trainings)."""
    _PRETRAINED.clear()


def _pretraining_key(data: Interactions, config: Mapping[str, Any], seed: int, device: str) -> str:
    digest = hashlib.sha256()
    for column in ("user", "item", "rating"):
        if column in data.frame:
            values = data.frame[column].to_numpy()
            digest.update(np.ascontiguousarray(values).tobytes())
    digest.update(json.dumps([sorted(config.items()), int(seed), str(device), data.n_users,
                              data.n_items], default=str).encode())  # fmt: skip
    return digest.hexdigest()


# ----------------------------------------------------------------------------- source helpers


def require_source(train: Interactions, model: str) -> SourceDomain:
    """`train.source`, checked: a ValueError naming the model when it is missing or its maps do
    not fit (wrong length, out of range, or two source entities on one target entity)."""
    source = train.source
    if source is None:
        raise ValueError(
            f"{model}: train.source is None; this transfer model needs the source domain "
            "(a SourceDomain on the training Interactions)"
        )
    sides = (
        ("user", source.user_to_target, source.interactions.n_users, train.n_users),
        ("item", source.item_to_target, source.interactions.n_items, train.n_items),
    )
    for kind, mapping, n_source, n_target in sides:
        arr = np.asarray(mapping)
        name = f"source.{kind}_to_target"
        if arr.shape != (n_source,) or (len(arr) and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"{model}: {name} is {arr.dtype} with shape {arr.shape}; expected integers, "
                f"one per source {kind} ({n_source},)"
            )
        if len(arr) and (arr.min() < -1 or arr.max() >= n_target):
            raise ValueError(
                f"{model}: {name} has values outside [-1, {n_target}): "
                f"min {arr.min()}, max {arr.max()}"
            )
        shared = arr[arr >= 0]
        if len(np.unique(shared)) != len(shared):
            raise ValueError(
                f"{model}: {name} maps two source {kind}s to one target {kind}; "
                "expected a one-to-one map of the shared ones"
            )
    return source


def shared_pairs(to_target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(source indices, target indices) of the shared entities of one side."""
    to_target = np.asarray(to_target, np.int64)
    src = np.flatnonzero(to_target >= 0)
    return torch.from_numpy(src), torch.from_numpy(to_target[src])


def union_rows(to_target: np.ndarray, n_target: int) -> torch.Tensor:
    """Model row of each source entity in a union table: its target index when shared, else
    n_target, n_target + 1, ... in source order (target entities keep rows 0..n_target-1)."""
    rows = np.asarray(to_target, np.int64).copy()
    own = rows < 0
    rows[own] = n_target + np.arange(int(own.sum()))
    return torch.from_numpy(rows)


def transfer_start(
    module: MFModule, source_module: MFModule, source: SourceDomain, *, freeze: bool = False
) -> MFModule:
    """Copy the source's W and the shared entities' embeddings (and item biases) into
    `module` (in place; other rows untouched); with `freeze`, mark the copied embedding rows
    frozen. Returns `module`."""
    su, tu = shared_pairs(source.user_to_target)
    si, ti = shared_pairs(source.item_to_target)
    with torch.no_grad():
        module.users[tu] = source_module.users.detach().cpu()[su]
        module.items[ti] = source_module.items.detach().cpu()[si]
        module.bias[ti] = source_module.bias.detach().cpu()[si]
        module.top.copy_(source_module.top.detach().cpu())
        if freeze:
            module.frozen_users[tu] = True
            module.frozen_items[ti] = True
    return module


# ----------------------------------------------------------------------------- methods


@register
class TargetOnly(TransferMF):
    """The base model on the target training rows only; `train.source` is ignored.

    Hyperparameters (besides TORCH_DEFAULTS' but weight_decay): factors, reg (L2 per triple),
    init_std (of the random embeddings), negative_tries (redraws of a seen negative).
    """

    name = "TargetOnly"
    needs_source = False


@register
class SourceOnly(TransferMF):
    """Zero-shot: the base model trained `epochs` epochs on the source only, read through the
    entity maps (unshared target entities: zero embedding, zero bias). No early stopping and no
    target row used; `seen_` still masks each user's target training items in `recommend`."""

    name = "SourceOnly"
    defaults: ClassVar[dict[str, Any]] = {
        k: v for k, v in MF_DEFAULTS.items() if k not in ("eval_every", "patience")
    }
    space = {"factors": Choice((16, 32, 64)), "reg": LogUniform(1e-3, 5e-2)}

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        source = require_source(train, self.name)
        self.device_ = resolve_device(self.device)
        self.pretrain(source, seed, None)
        module = self.new_module(train.n_users, train.n_items, torch.Generator().manual_seed(0))
        with torch.no_grad():  # no random start: unshared entities get zeros
            module.users.zero_()
            module.items.zero_()
        transfer_start(module, self.source_model_.module_, source)
        self.module_ = module.to(self.device_).eval()
        self.history_, self.best_epoch_ = [], None
        self.train_log_ = self.source_model_.train_log_.copy()


@register
class PretrainFinetune(TransferMF):
    """Pretrain on the source (`source_epochs`), start the target from it for shared entities
    and W (random elsewhere), then fine-tune every weight on the target."""

    name = "PretrainFinetune"
    defaults: ClassVar[dict[str, Any]] = {**MF_DEFAULTS, "source_epochs": 30}
    space = {
        "learning_rate": LogUniform(1e-3, 2e-2),
        "reg": LogUniform(1e-3, 5e-2),
        "source_epochs": Choice((10, 30)),
    }
    freeze: ClassVar[bool] = False
    training_group = "source-pretraining"  # see fit_mf: one pretraining per fraction and seed

    def network(
        self, train: Interactions, generator: torch.Generator
    ) -> tuple[MFModule, list[Domain]]:
        source_model = self.pretrain(self._source, self._seed, int(self.params["source_epochs"]))
        module = self.new_module(train.n_users, train.n_items, generator)
        transfer_start(module, source_model.module_, self._source, freeze=self.freeze)
        return module, [identity_domain(self.seen_)]


@register
class FrozenFinetune(PretrainFinetune):
    """PretrainFinetune with the transferred embedding rows frozen: W, biases and the other
    embeddings train."""

    name = "FrozenFinetune"
    freeze = True


@register
class JointTraining(TransferMF):
    """One model over the union of both domains' entities, BPR on source and target pairs
    together; source triples weigh `source_weight`; negatives from each triple's own domain."""

    name = "JointTraining"
    defaults: ClassVar[dict[str, Any]] = {**MF_DEFAULTS, "source_weight": 1.0}
    space = {
        "learning_rate": LogUniform(1e-3, 2e-2),
        "reg": LogUniform(1e-3, 5e-2),
        "source_weight": Choice((0.25, 0.5, 1.0)),
    }

    def network(
        self, train: Interactions, generator: torch.Generator
    ) -> tuple[MFModule, list[Domain]]:
        weight = float(self.params["source_weight"])
        if not weight >= 0:
            raise ValueError(f"{self.name}: source_weight={weight!r}; expected >= 0")
        source = self._source
        users = union_rows(source.user_to_target, train.n_users)
        items = union_rows(source.item_to_target, train.n_items)
        n_users = train.n_users + int((np.asarray(source.user_to_target) < 0).sum())
        n_items = train.n_items + int((np.asarray(source.item_to_target) < 0).sum())
        module = self.new_module(n_users, n_items, generator)
        source_domain = Domain(source.interactions.matrix(binary=True), users, items, weight)
        return module, [identity_domain(self.seen_), source_domain]


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def mapping_network(kind: str, dim_in: int, dim_out: int, generator: torch.Generator) -> nn.Module:
    """EMCDR's f: "linear", or "mlp" (dim_in -> 2 * dim_in, tanh -> dim_out)."""
    if kind == "linear":
        return _linear(dim_in, dim_out, generator)
    if kind == "mlp":
        hidden = 2 * dim_in
        return nn.Sequential(
            _linear(dim_in, hidden, generator), nn.Tanh(), _linear(hidden, dim_out, generator)
        )
    raise ValueError(f"EMCDR: mapping={kind!r}; expected one of {list(MAPPINGS)}")


def fit_mapping(
    f: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, learning_rate: float
) -> tuple[float, float]:
    """Full-batch Adam on the MSE of f(x) against y; returns (MSE before, MSE after)."""
    optimiser = adam(f.parameters(), lr=learning_rate)
    with torch.no_grad():
        before = float(nn.functional.mse_loss(f(x), y))
    for _ in range(steps):
        loss = nn.functional.mse_loss(f(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = float(nn.functional.mse_loss(f(x), y))
    return before, after


@register
class EMCDR(TransferMF):
    """Embedding and mapping (Man et al. 2017): separate source and target models; per shared
    side, f maps source to target vectors, learned on shared entities with >= `min_target`
    target pairs and applied to the shared ones with fewer. No warm shared entity: TargetOnly.

    Extra hyperparameters: source_epochs, mapping ("mlp" / "linear"), min_target,
    mapping_steps and mapping_learning_rate (full-batch Adam on the MSE).
    After fit: source_model_, mappings_ {side: f}, mapping_mse_ {side: (before, after)},
    replaced_ {side: target indices whose vectors are f(source)}.
    """

    name = "EMCDR"
    training_group = "source-pretraining"
    defaults: ClassVar[dict[str, Any]] = {
        **MF_DEFAULTS,
        "source_epochs": 30,
        "mapping": "mlp",
        "min_target": 5,
        "mapping_steps": 300,
        "mapping_learning_rate": 0.01,
    }
    space = {
        "mapping": Choice(MAPPINGS),
        "min_target": Choice((2, 5, 10)),
        "learning_rate": LogUniform(1e-3, 2e-2),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        p = self.params
        source = require_source(train, self.name)
        if p["mapping"] not in MAPPINGS:
            raise ValueError(f"EMCDR: mapping={p['mapping']!r}; expected one of {list(MAPPINGS)}")
        self.device_ = resolve_device(self.device)
        self.pretrain(source, seed, int(p["source_epochs"]))
        target = fit_mf(train, p, seed=seed, valid=valid, device=self.device)
        self.history_, self.best_epoch_ = target.history_, target.best_epoch_
        self.train_log_ = target.train_log_
        # A copy: the fitted target network may be the one `fit_mf` remembers for the next
        # fit with the same base settings, which must not start from this fit's mapped rows.
        module = copy.deepcopy(target.module_)
        self.mappings_: dict[str, nn.Module] = {}
        self.mapping_mse_: dict[str, tuple[float, float]] = {}
        self.replaced_: dict[str, np.ndarray] = {}
        counts = {"users": np.diff(self.seen_.indptr),
                  "items": np.bincount(self.seen_.indices, minlength=train.n_items)}  # fmt: skip
        maps = {"users": source.user_to_target, "items": source.item_to_target}
        generator = torch.Generator().manual_seed(int(seed))
        with cpu_threads(self.device_, 1), cuda_determinism(self.device_):
            for side in ("users", "items"):
                self._map_side(side, module, maps[side], counts[side], generator)
        self.module_ = module.eval()

    def _map_side(self, side: str, module: MFModule, to_target: np.ndarray,
                  counts: np.ndarray, generator: torch.Generator) -> None:  # fmt: skip
        """Learn f on the warm shared entities of one side; overwrite the cold shared ones."""
        p = self.params
        src, tgt = shared_pairs(to_target)
        warm = torch.from_numpy(counts[tgt.numpy()] >= int(p["min_target"]))
        if not bool(warm.any()):
            return  # nothing to learn from: the target vectors stay (TargetOnly)
        x_all, y_all = _side_vectors(self.source_model_.module_, side), _side_vectors(module, side)
        x, y = x_all[src[warm]], y_all[tgt[warm]]
        f = mapping_network(str(p["mapping"]), x.shape[1], y.shape[1], generator)
        self.mapping_mse_[side] = fit_mapping(f, x, y, int(p["mapping_steps"]),
                                              float(p["mapping_learning_rate"]))  # fmt: skip
        self.mappings_[side] = f.eval()
        cold_src, cold_tgt = src[~warm], tgt[~warm]
        self.replaced_[side] = cold_tgt.numpy()
        if not len(cold_tgt):
            return
        with torch.no_grad():
            mapped = f(x_all[cold_src]).to(module.users.device)
            if side == "users":
                module.users[cold_tgt] = mapped
            else:
                module.items[cold_tgt] = mapped[:, :-1]
                module.bias[cold_tgt] = mapped[:, -1]

    @property
    def n_parameters(self) -> int:
        mappings = getattr(self, "mappings_", {})
        return super().n_parameters + sum(
            int(w.numel()) for f in mappings.values() for w in f.parameters()
        )


def _side_vectors(module: MFModule, side: str) -> torch.Tensor:
    """A model's vectors of one side on CPU, detached: user embeddings, or item embeddings
    with the bias as a last column."""
    with torch.no_grad():
        if side == "users":
            return module.users.detach().cpu().clone()
        return torch.cat([module.items.detach().cpu(), module.bias.detach().cpu()[:, None]], 1)
