"""CFGAN: collaborative filtering with a vector-wise, user-based conditional GAN.

Chae, Kang, Kim & Lee (2018), "CFGAN: A Generic Collaborative Filtering Framework based on
Generative Adversarial Networks", CIKM. The generator G reads a user's purchase vector c_u (the
condition, 0/1 over all items) and outputs a real-valued purchase vector r̂_u over all items;
the discriminator D reads a (purchase vector, c_u) pair and says whether the vector is the
user's real one (c_u itself, for implicit feedback). Three devices make the GAN usable for
top-N recommendation:

* masking: D sees r̂_u ⊙ (e_u + k_u), where e_u marks the user's purchased items, so that G is
  judged on the purchased items (otherwise its best answer is a vector of all ones);
* PM (partial masking): k_u marks a random `pm_ratio` share of the user's unpurchased items,
  resampled every epoch; D sees G's outputs there next to real zeros;
* ZR (zero reconstruction): a random `zr_ratio` share of unpurchased items, drawn independently,
  whose outputs G is penalised to keep at 0: + alpha * sum_j r̂_uj^2.

Losses (D's output d = sigmoid(logit)), per user and averaged over a batch of users:
    D: -log d(c_u, c_u) - log(1 - d(r̂_u ⊙ (e_u + k_u), c_u))
    G:  log(1 - d(r̂_u ⊙ (e_u + k_u), c_u)) + alpha * sum_{j in ZR_u} r̂_uj^2   ("minimax")
     or -log d(r̂_u ⊙ (e_u + k_u), c_u) + alpha * ...                         ("non-saturating")
trained alternately (`d_steps` D updates, then `g_steps` G updates, per batch of users) with one
Adam optimiser per network. G and D are MLPs with sigmoid hidden layers and a linear output.
The score of user u is G(c_u).

Choices we measured on ML-100K (75/25 holdout, validation NDCG@10): a sigmoid on G's output
(outputs in [0, 1]) trains badly (0.08-0.09, below MostPop's 0.098), as the ZR penalty drives the
outputs into the sigmoid's flat tail; a linear output reaches 0.14-0.16. The paper's minimax G
loss works (0.143) but the non-saturating one, which is common GAN practice, is better (0.153
with the same settings), so it is the default. G takes no random noise z, so that a user's
score is a deterministic function of c_u. CFGAN's reported gains did not survive re-evaluation
against tuned baselines (Ferrari Dacrema, Boglio, Cremonesi & Jannach (2021), "A Troubling
Analysis of Reproducibility and Progress in Recommender Systems Research", TOIS).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.registry import register
from metarec_lib.models.torch_base import (
    TORCH_DEFAULTS,
    Batch,
    TorchRecommender,
    csr_tensor,
    product_operand,
)
from metarec_lib.models.training import adam
from metarec_lib.tuning import LogUniform, Uniform


def sample_unpurchased(
    purchases: torch.Tensor, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Boolean mask (n, n_items): for each row, round(ratio * #unpurchased) unpurchased items
    (all of them when the ratio exceeds 1) drawn uniformly without replacement; purchased items
    (purchases > 0) are never marked.

    An item is drawn when its uniform noise is at most the row's count-th smallest among the
    unpurchased items (purchased ones get noise 2, above any draw), found by a linear-time
    selection per row (`row_thresholds`). On ml-latest-small (610 x 9,742) a mask took 0.09 s
    where a partial `topk` over all rows took 0.11-0.29 s (more for smaller ratios): two masks
    an epoch were about 45% of a CFGAN epoch there. The comparison with the threshold is the
    whole mask: a purchased item's noise 2 is above every threshold, and a row with nothing to
    draw gets -1, below every noise; the unpurchased counts are summed as int32, since a sum of
    booleans widened to int64 by a copy of the matrix (these two cut a mask from about 0.10 s
    to 0.07 s there, the same bits)."""
    bought = purchases > 0
    noise = torch.rand(purchases.shape, generator=generator)
    noise.masked_fill_(bought, 2.0)  # never at most a threshold drawn from unpurchased items
    unbought = purchases.shape[1] - bought.sum(1, dtype=torch.int32).long()
    count = torch.minimum(torch.round(ratio * unbought).long(), unbought)  # (n,)
    values = noise.numpy()  # the noise is drawn on the CPU (the generator's device)
    threshold = row_thresholds(values, count.numpy(), unbought.numpy())
    return noise <= torch.from_numpy(threshold[:, None])


def row_thresholds(
    values: npt.NDArray[np.float32], counts: npt.NDArray[np.int64], unbought: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Each row's counts[r]-th smallest value (-1 where counts[r] is 0), for rows of uniform
    [0, 1) noise over `unbought` entries and 2 elsewhere, with counts <= unbought.

    The count-th smallest of u uniforms lies near q = count / u; the values within six
    standard deviations (plus 2 / u) of q are gathered for all rows at once and the row's
    threshold is selected among them (`np.partition`), after counting the values below the
    band. A row whose threshold falls outside its band (about one in 10^8 for uniform noise)
    is partitioned whole. The same thresholds as partitioning every row (on ml-latest-small's
    610 x 9,742: 15 ms instead of 38 ms)."""
    n = len(values)
    out = np.full(n, -1.0, dtype=np.float32)
    rows = np.flatnonzero(counts > 0)
    if not len(rows):
        return out
    q = counts[rows] / unbought[rows]
    half = 6.0 * np.sqrt(q * (1.0 - q) / unbought[rows]) + 2.0 / unbought[rows]
    low, high = np.full((n, 1), 3.0, np.float32), np.full((n, 1), -1.0, np.float32)
    low[rows, 0], high[rows, 0] = q - half, np.minimum(q + half, 1.5)
    below = (values < low).sum(1)
    band = (values >= low) & (values <= high)
    inside = band.sum(1)
    flat, ends = values[band], np.cumsum(inside)
    for r in rows.tolist():
        k = int(counts[r] - below[r]) - 1
        if 0 <= k < inside[r]:
            out[r] = np.partition(flat[ends[r] - inside[r] : ends[r]], k)[k]
        else:
            out[r] = np.partition(values[r], counts[r] - 1)[counts[r] - 1]
    return out


def purchase_rows(matrix: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a 0/1 purchase matrix as torch CSR tensors: (rows (n, n_items), their transpose
    (n_items, n)), the two operands `SparseInputLinear` multiplies them by."""
    return csr_tensor(matrix), csr_tensor(sp.csr_matrix(matrix).T)


class _SparseRowsTimesWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, rows_t, weight):  # type: ignore[override]
        ctx.save_for_backward(rows_t)
        return rows @ weight

    @staticmethod
    def backward(ctx, upstream):  # type: ignore[override]
        (rows_t,) = ctx.saved_tensors
        return None, None, rows_t @ upstream if ctx.needs_input_grad[2] else None


class SparseInputLinear(nn.Module):
    """x @ weight + bias with weight (n_in, n_out), for x dense or given as CSR rows and their
    transpose (`purchase_rows`). Purchase vectors are 1.7% nonzero on ml-latest-small (6% on
    ML-100K): as CSR the product and its weight gradient read only the purchased items' weight
    rows (a G step's first layer 2.7 ms instead of 16 ms there). Dense inputs (G's masked
    output, which carries a gradient) use the dense product."""

    def __init__(self, weight: torch.Tensor, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(weight.shape[1])) if bias else None

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(x, tuple):
            out = _SparseRowsTimesWeight.apply(x[0], x[1], self.weight)
            return out if self.bias is None else out + self.bias
        return x @ self.weight if self.bias is None else torch.addmm(self.bias, x, self.weight)


class PairInput(nn.Module):
    """D's first layer over [vector; condition] as two `SparseInputLinear` halves, so that
    either can be CSR rows: [v; c] @ W + b = v @ W_v + c @ W_c + b."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        half = weight.shape[0] // 2
        self.vector = SparseInputLinear(weight[:half].contiguous(), bias=True)
        self.condition = SparseInputLinear(weight[half:].contiguous(), bias=False)

    def forward(self, pair: tuple) -> torch.Tensor:
        vector, condition = pair
        return self.vector(vector) + self.condition(condition)


def _xavier(n_in: int, n_out: int, generator: torch.Generator) -> torch.Tensor:
    """A Xavier-uniform (n_in, n_out) weight, drawn as nn.Linear's (n_out, n_in) one is."""
    weight = torch.empty(n_out, n_in)
    nn.init.xavier_uniform_(weight, generator=generator)
    return weight.T.contiguous()


def _mlp(first: nn.Module, sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    """`first`, then linear layers of `sizes` (from first's output width) with sigmoid
    activations before each and none after the last (the output is a real value / logit)."""
    layers: list[nn.Module] = [first]
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layer = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(layer.weight, generator=generator)
        nn.init.zeros_(layer.bias)
        layers += [nn.Sigmoid(), layer]
    return nn.Sequential(*layers)


Condition = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CFGANModule(nn.Module):
    """`generator`: c_u -> r̂_u (linear output); `discriminator`: (vector, c_u) -> one logit.
    A condition (and D's vector) is a dense (n, n_items) tensor or CSR rows with their
    transpose (`purchase_rows`)."""

    def __init__(
        self, n_items: int, hidden: int, d_hidden: int, layers: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        first = SparseInputLinear(_xavier(n_items, hidden, generator), bias=True)
        self.generator = _mlp(first, [hidden] * layers + [n_items], generator)
        pair = PairInput(_xavier(2 * n_items, d_hidden, generator))
        self.discriminator = _mlp(pair, [d_hidden] * layers + [1], generator)

    def generate(self, condition: Condition) -> torch.Tensor:
        """r̂_u (real-valued) for each condition row: (n, n_items)."""
        return self.generator(condition)

    def judge(self, vector: Condition, condition: Condition) -> torch.Tensor:
        """D's logits (n,) that `vector` is the real purchase vector of the user `condition`."""
        return self.discriminator((vector, condition)).squeeze(1)


@register
class CFGAN(TorchRecommender):
    """Vector-wise user-based CFGAN (Chae et al. 2018) with the ZR and PM schemes (ZP).

    Hyperparameters (besides TORCH_DEFAULTS'; learning_rate and weight_decay apply to both
    networks' Adam optimisers, batch_size counts users):
        hidden: units of each hidden layer of G.
        d_hidden: units of each hidden layer of D.
        layers: hidden layers of G and of D.
        alpha: weight of the ZR penalty (sum over a user's ZR items).
        zr_ratio: share of each user's unpurchased items in the ZR sample.
        pm_ratio: share of each user's unpurchased items in the PM sample.
        d_steps, g_steps: discriminator, then generator updates per batch.
        generator_loss: "non-saturating" (-log d) or the paper's "minimax" (log(1 - d)).
    """

    name = "CFGAN"
    family = "deep"
    defaults: dict[str, Any] = {
        **TORCH_DEFAULTS,
        "epochs": 150,
        "batch_size": 128,
        "learning_rate": 2e-3,
        "weight_decay": 0.0,
        "eval_every": 5,
        "patience": 4,
        "hidden": 256,
        "d_hidden": 64,
        "layers": 1,
        "alpha": 0.03,
        "zr_ratio": 0.7,
        "pm_ratio": 0.7,
        "d_steps": 1,
        "g_steps": 1,
        "generator_loss": "non-saturating",
    }
    # Measured on ML-100K (validation NDCG@10, seed 42): alpha 0.03 > 0.1 > 0.01 (0.161, 0.152,
    # 0.142); ratios 0.7-0.9 > 0.4 (0.161 vs 0.149); learning_rate 1e-3..2e-3 with 128 users
    # per batch; 1e-4 is still improving after 150 epochs.
    space = {
        "alpha": LogUniform(0.01, 0.1),
        "zr_ratio": Uniform(0.5, 0.95),
        "pm_ratio": Uniform(0.5, 0.95),
        "learning_rate": LogUniform(1e-3, 4e-3),
    }

    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        p = self.params
        self._purchases = torch.from_numpy(self.seen_.toarray().astype(np.float32))
        return CFGANModule(
            train.n_items, int(p["hidden"]), int(p["d_hidden"]), int(p["layers"]), generator
        )

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """(purchases, ZR mask, PM mask, the purchases as CSR rows and their transpose) of a
        batch of users; the losses read the purchases dense and G and D their CSR form. On CUDA
        the batches stop after the masks and G and D read the dense purchases too: cuSPARSE's
        products are not bitwise repeatable, cuBLAS's are (`cuda_determinism`)."""
        p = self.params
        sparse = not self.device_.startswith("cuda")
        zr = sample_unpurchased(self._purchases, float(p["zr_ratio"]), generator)
        pm = sample_unpurchased(self._purchases, float(p["pm_ratio"]), generator)
        order = torch.randperm(len(self._purchases), generator=generator)
        size = int(p["batch_size"])
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            dense = (self._purchases[idx], zr[idx], pm[idx])
            yield (*dense, *purchase_rows(self.seen_[idx.numpy()])) if sparse else dense

    def optimiser(self, module: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        p = self.params
        lr, decay = float(p["learning_rate"]), float(p["weight_decay"])
        return (
            adam(module.generator.parameters(), lr=lr, weight_decay=decay),
            adam(module.discriminator.parameters(), lr=lr, weight_decay=decay),
        )

    def discriminator_loss(
        self, module: nn.Module, batch: Batch, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """D's loss with G's output held fixed; `out`: G's output for the batch if known."""
        real, _, pm = batch[:3]
        condition = _condition(batch)
        with torch.no_grad():
            out = module.generate(condition) if out is None else out.detach()
            fake = out * (real + pm.float())
        logsig = nn.functional.logsigmoid
        return -(logsig(module.judge(condition, condition))
                 + logsig(-module.judge(fake, condition))).mean()  # fmt: skip

    def loss(
        self, module: nn.Module, batch: Batch, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """G's loss (logged per epoch): the adversarial term on the masked output, as
        `generator_loss` says, plus the ZR penalty; `out`: G's output for the batch (with
        its graph) if known."""
        real, zr, pm = batch[:3]
        condition = _condition(batch)
        out = module.generate(condition) if out is None else out
        logit = module.judge(out * (real + pm.float()), condition)
        kind = self.params["generator_loss"]
        if kind == "minimax":  # the paper's: minimise log(1 - d)
            adversarial = nn.functional.logsigmoid(-logit)
        elif kind == "non-saturating":  # minimise -log d, whose gradient survives a confident D
            adversarial = -nn.functional.logsigmoid(logit)
        else:
            raise ValueError(f"CFGAN: generator_loss={kind!r}; use 'non-saturating' or 'minimax'")
        penalty = (out.square() * zr.float()).sum(1)
        return (adversarial + float(self.params["alpha"]) * penalty).mean()

    def step(self, module: nn.Module, batch: Batch, optimiser: Any) -> torch.Tensor:
        """`d_steps` discriminator updates, then `g_steps` generator updates (D frozen);
        returns G's last loss. G does not change during D's updates, so its output is computed
        once (with its graph) for all of them and for G's first update: one forward pass of G
        fewer per batch, bitwise the same numbers."""
        opt_g, opt_d = optimiser
        loss = torch.zeros((), device=batch[0].device)
        out: torch.Tensor | None = module.generate(_condition(batch))
        for _ in range(int(self.params["d_steps"])):
            loss = self.discriminator_loss(module, batch, out)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        module.discriminator.requires_grad_(False)
        for _ in range(int(self.params["g_steps"])):
            loss = self.loss(module, batch, out)
            out = None  # G has changed: later updates recompute its output
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
        module.discriminator.requires_grad_(True)
        return loss.detach()

    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        seen = self.seen_[users.cpu().numpy()]
        if users.device.type == "cuda":  # dense, as in training (`batches`)
            return module.generate(product_operand(seen, users.device))
        return module.generate(tuple(r.to(users.device) for r in purchase_rows(seen)))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_purchases", None)  # training data; `seen_` already holds it
        return state


def _condition(batch: Batch) -> Condition:
    """A batch's purchases as G's and D's condition: its CSR rows when it carries them (the
    training batches), else the dense purchases."""
    return (batch[3], batch[4]) if len(batch) > 3 else batch[0]
