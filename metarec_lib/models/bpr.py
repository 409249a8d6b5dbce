"""BPR: matrix factorisation trained with the Bayesian Personalised Ranking loss.

Rendle, Freudenthaler, Gantner & Schmidt-Thieme (2009), "BPR: Bayesian Personalized Ranking
from Implicit Feedback", UAI. The score is x_ui = p_u . q_i + b_i; for a triple (u, i, j) with
i a training item of u and j an item u never interacted with, the loss is

    -log sigmoid(x_ui - x_uj) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2 + b_i^2 + b_j^2)

averaged over a mini-batch and minimised with Adam. One epoch visits every training pair once,
in a seeded random order, each with one negative drawn uniformly from the items that user has
not seen: colliding draws are redrawn (`negative_tries` rounds, vectorised); a triple whose
user has seen nearly every item and still collides is dropped, so a negative is never a seen
item (in particular never the positive). All randomness comes from one CPU `torch.Generator`
seeded by `fit`'s seed, so the same seed gives the same model on the same machine and device
(on CUDA the fit runs under `cuda_determinism`, whose deterministic `index_add_` makes the
backward's scatter-adds bitwise repeatable).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.losses import bpr_triple_loss
from metarec_lib.models.registry import register
from metarec_lib.models.training import EarlyStopping, adam, cpu_threads, cuda_determinism
from metarec_lib.tuning import Choice, LogUniform


def sample_triples(
    seen: sp.csr_matrix, generator: torch.Generator, negative_tries: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch of (user, positive, negative) index triples, int64 tensors of equal length.

    seen: binary CSR (n_users, n_items) of training pairs; every pair appears once, in an order
    drawn from `generator`. Negatives are uniform over items; draws that hit a seen item are
    redrawn up to `negative_tries` times, then the triple is dropped.
    """
    n_users, n_items = seen.shape
    seen = seen.tocsr()
    seen.sort_indices()
    users_all = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(seen.indptr))
    keys = torch.from_numpy(users_all * n_items + seen.indices.astype(np.int64))  # sorted
    order = torch.randperm(len(keys), generator=generator)
    users = torch.from_numpy(users_all)[order]
    positives = torch.from_numpy(seen.indices.astype(np.int64))[order]
    negatives = torch.randint(n_items, (len(users),), generator=generator)

    def collides(idx: torch.Tensor) -> torch.Tensor:
        query = users[idx] * n_items + negatives[idx]
        pos = torch.searchsorted(keys, query).clamp_(max=max(len(keys) - 1, 0))
        return keys[pos] == query if len(keys) else torch.zeros_like(query, dtype=torch.bool)

    bad = torch.arange(len(users))
    for _ in range(negative_tries):
        bad = bad[collides(bad)]
        if len(bad) == 0:
            break
        negatives[bad] = torch.randint(n_items, (len(bad),), generator=generator)
    if len(bad):
        bad = bad[collides(bad)]
        keep = torch.ones(len(users), dtype=torch.bool)
        keep[bad] = False
        users, positives, negatives = users[keep], positives[keep], negatives[keep]
    return users, positives, negatives


class BPRModule(nn.Module):
    """User factors P (n_users, f), item factors Q (n_items, f), item biases b (n_items,).

    `forward(u, i, j)` returns the regularised mean BPR loss of the batch of triples.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        factors: int,
        *,
        reg: float,
        item_bias: bool,
        init_std: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.reg = reg
        self.users = nn.Parameter(torch.randn(n_users, factors, generator=generator) * init_std)
        self.items = nn.Parameter(torch.randn(n_items, factors, generator=generator) * init_std)
        self.bias = nn.Parameter(torch.zeros(n_items), requires_grad=item_bias)

    def forward(self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The loss with its gradients written out (`losses.bpr_triple_loss`)."""
        return bpr_triple_loss(self.users, self.items, self.bias, u, i, j, reg=self.reg)


@register
class BPR(Recommender):
    """Matrix factorisation with the BPR pairwise loss (Rendle et al. 2009), in PyTorch.

    Hyperparameters:
        factors: latent dimension f.
        learning_rate: Adam step size.
        reg: L2 weight on the factors (and biases) of each triple.
        batch_size: triples per Adam step.
        epochs: maximum passes over the training pairs.
        item_bias: learn an item bias b_i (popularity) besides the factors.
        init_std: standard deviation of the initial factors.
        negative_tries: rounds of redrawing negatives that hit a seen item.
        eval_every: with `valid`, evaluate NDCG@10 every this many epochs.
        patience: with `valid`, stop after this many evaluations without improvement and keep
            the best weights.
    After fit: user_factors_ (n_users, f), item_factors_ (n_items, f), item_bias_ (n_items,),
    history_ [(epoch, valid NDCG@10)], best_epoch_ (the epoch kept; None without `valid`),
    loss_history_ [(epoch, mean training loss)].
    """

    gpu_capable = True

    name = "BPR"
    family = "collaborative"
    defaults: dict[str, Any] = {
        "factors": 64,
        "learning_rate": 0.005,
        "reg": 0.01,
        "batch_size": 4096,
        "epochs": 60,
        "item_bias": True,
        "init_std": 0.1,
        "negative_tries": 20,
        "eval_every": 2,
        "patience": 5,
    }
    # Measured on ML-100K (75/25 holdout, early stopping): best near learning_rate 0.002-0.008,
    # reg 0.005-0.01; reg >= 0.03 or <= 0.001 costs 0.03-0.2 NDCG@10.
    space = {
        "factors": Choice((32, 64, 128)),
        "learning_rate": LogUniform(1e-3, 2e-2),
        "reg": LogUniform(1e-3, 5e-2),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        device = resolve_device(self.device)
        with cpu_threads(device, 1), cuda_determinism(device):
            self._train(train, valid, seed, device)

    def _train(
        self, train: Interactions, valid: Interactions | None, seed: int, device: str
    ) -> None:
        from metarec_lib.evaluate import ndcg_on

        p = self.params
        generator = torch.Generator().manual_seed(int(seed))
        module = BPRModule(
            train.n_users,
            train.n_items,
            int(p["factors"]),
            reg=float(p["reg"]),
            item_bias=bool(p["item_bias"]),
            init_std=float(p["init_std"]),
            generator=generator,
        ).to(device)
        trainable = [w for w in module.parameters() if w.requires_grad]
        optimiser = adam(trainable, lr=float(p["learning_rate"]))
        batch = int(p["batch_size"])
        self.loss_history_: list[tuple[int, float]] = []
        stopper = EarlyStopping(int(p["patience"]))
        for epoch in range(1, int(p["epochs"]) + 1):
            triples = sample_triples(self.seen_, generator, int(p["negative_tries"]))
            u, i, j = (t.to(device) for t in triples)
            total = torch.zeros((), device=device)
            for start in range(0, len(u), batch):
                sl = slice(start, start + batch)
                loss = module(u[sl], i[sl], j[sl])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach() * len(u[sl])
            self.loss_history_.append((epoch, float(total) / max(len(u), 1)))
            if valid is None or epoch % int(p["eval_every"]):
                continue
            self._export(module)
            snapshot = lambda: (self.user_factors_, self.item_factors_, self.item_bias_)  # noqa: E731
            if stopper.update(epoch, ndcg_on(self, valid), snapshot):
                break
        self.history_, self.best_epoch_ = stopper.history, stopper.best_epoch
        self._export(module)
        if stopper.best_state is not None:
            self.user_factors_, self.item_factors_, self.item_bias_ = stopper.best_state

    def _export(self, module: BPRModule) -> None:
        """Copy the weights to NumPy (scoring, pickling and early-stopping snapshots)."""
        with torch.no_grad():
            self.user_factors_ = module.users.detach().cpu().numpy().copy()
            self.item_factors_ = module.items.detach().cpu().numpy().copy()
            self.item_bias_ = module.bias.detach().cpu().numpy().copy()

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        return self.user_factors_[users] @ self.item_factors_.T + self.item_bias_

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "user_factors_"):
            return 0
        bias = self.item_bias_.size if self.params["item_bias"] else 0
        return int(self.user_factors_.size + self.item_factors_.size + bias)
