"""`TorchRecommender`: the one training loop every PyTorch model of the study runs through.

It owns device choice (`device="auto"`: CUDA when present), seeding, CPU threads, batching,
the optimiser, a tqdm bar over epochs, early stopping on a validation score and a per-epoch
log (loss, seconds, samples per second, validation value) for training curves and benchmarks.
A model file then holds only its module, its batches and its loss:

    build(train, generator) -> nn.Module   prepare data and create the network (CPU)
    batches(generator)      -> iterator of tuples of CPU tensors (one epoch)
    loss(module, batch)     -> scalar tensor
    score_users(module, users) -> (len(users), n_items) tensor of scores

and, only where one Adam step per batch does not fit (a GAN), `optimiser` and `step`.

Determinism: all sampling draws from one CPU `torch.Generator` seeded by `fit`'s seed, and the
global torch RNG (dropout) is seeded inside `torch.random.fork_rng`, so the caller's RNG state
is untouched and the same seed gives the same model on the same machine and device. On CUDA,
`fit` also runs under `training.cuda_determinism()`: torch's deterministic algorithms, strictly
(an op without one raises), cuDNN autotuning off and cuBLAS's fixed workspace; sparse operands
are dense there (`product_operand`). GPU and CPU results differ: in the last bits for the
factorisations, by a different fit of the same quality for the deeper networks (other
rounding, other dropout streams; benchmarks/README.md), so committed numbers are CPU numbers.

Full-catalogue ranking on a GPU (`recommend`) scores, masks and sorts each batch of users on the
device and copies back only the top k; the batch holds as many users as fit a quarter of the
free device memory (at most `score_batch`). Ties are ordered as on the CPU (`topk_torch`).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn
from tqdm import tqdm

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import Recommender, resolve_device
from metarec_lib.models.training import (
    LOG_COLUMNS,
    EarlyStopping,
    adam,
    cpu_threads,
    cuda_determinism,
    epoch_record,
)

Batch = tuple[torch.Tensor, ...]

TORCH_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "eval_every": 1,
    "patience": 3,
}


class TorchRecommender(Recommender):
    """Base for PyTorch models; subclasses extend `defaults` with `TORCH_DEFAULTS`.

    Hyperparameters every subclass has: epochs (maximum), batch_size, learning_rate and
    weight_decay (Adam), eval_every and patience (early stopping on `validation_score`,
    validation NDCG@10 unless a model says otherwise, only when `fit` gets `valid`; the best
    epoch's weights are kept).
    After fit: module_ (in eval mode, on device_), history_ [(epoch, validation score)],
    best_epoch_, train_log_ (DataFrame: epoch, loss, seconds, samples, samples_per_second,
    valid_score).
    """

    gpu_capable = True

    family = "deep"
    defaults: ClassVar[dict[str, Any]] = dict(TORCH_DEFAULTS)
    # Intra-op threads on CPU during fit (None: torch's default, every core). The deep models'
    # matmuls gain 1.6-1.9x from a second core (SASRec, Caser, GRU4Rec, NeuMF, CFGAN epochs
    # on an idle 2-core machine); a model made of small ops may set 1 (as BPR does).
    cpu_threads: ClassVar[int | None] = None
    score_batch: ClassVar[int] = 512
    validation_metric: ClassVar[str] = "ndcg@10"  # what `validation_score` measures
    progress: bool = True

    # -- what a model writes --------------------------------------------------------------
    @abstractmethod
    def build(self, train: Interactions, generator: torch.Generator) -> nn.Module:
        """Prepare training data from `train` and return the untrained network (on CPU)."""

    @abstractmethod
    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of training batches (CPU tensors; the first one's length is the batch
        size used for the loss average)."""

    @abstractmethod
    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one batch (already on the device)."""

    @abstractmethod
    def score_users(self, module: nn.Module, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for `users` (int64 tensor on the device): (n, n_items)."""

    def validation_score(self, valid: Interactions) -> float:
        """What early stopping maximises: NDCG@10 on `valid` (a multi-task model combines its
        tasks' scores)."""
        from metarec_lib.evaluate import ndcg_on

        return ndcg_on(self, valid)

    def optimiser(self, module: nn.Module) -> Any:
        """Adam over the trainable parameters (fused: `training.adam`). A model with several
        networks (CFGAN) returns whatever its `step` needs, e.g. one optimiser per network."""
        p = self.params
        trainable = [w for w in module.parameters() if w.requires_grad]
        return adam(trainable, lr=float(p["learning_rate"]),
                    weight_decay=float(p["weight_decay"]))  # fmt: skip

    def step(self, module: nn.Module, batch: Batch, optimiser: Any) -> torch.Tensor:
        """One optimisation step on a batch; returns the (detached) loss to log. Override for
        alternating updates (a GAN's discriminator and generator)."""
        loss = self.loss(module, batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.detach()

    # -- the loop -------------------------------------------------------------------------
    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        self.device_ = resolve_device(self.device)
        devices = [torch.cuda.current_device()] if self.device_.startswith("cuda") else []
        with (
            cpu_threads(self.device_, self.cpu_threads),
            torch.random.fork_rng(devices),
            cuda_determinism(self.device_),
        ):
            torch.manual_seed(int(seed))
            generator = torch.Generator().manual_seed(int(seed))
            module = self.build(train, generator).to(self.device_)
            self.module_ = module
            self._train(module, valid, generator)

    def _train(
        self, module: nn.Module, valid: Interactions | None, generator: torch.Generator
    ) -> None:
        p = self.params
        optimiser = self.optimiser(module)
        stopper = EarlyStopping(int(p["patience"]))
        log: list[dict[str, Any]] = []
        quiet = not self.progress or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(range(1, int(p["epochs"]) + 1), desc=f"fit {self.name}", leave=False,
                   disable=quiet, unit="epoch")  # fmt: skip
        for epoch in bar:
            module.train()
            start = time.perf_counter()
            total, samples = torch.zeros((), device=self.device_), 0
            for batch in self.batches(generator):
                batch = tuple(t.to(self.device_, non_blocking=True) for t in batch)
                loss = self.step(module, batch, optimiser)
                n = len(batch[0])
                total += loss * n
                samples += n
            mean_loss = float(total) / max(samples, 1)  # float() waits for the device
            seconds = time.perf_counter() - start
            row = epoch_record(self.name, epoch, mean_loss, seconds, samples,
                               f"learning_rate={p['learning_rate']}")  # fmt: skip
            log.append(row)
            if valid is None or epoch % int(p["eval_every"]):
                continue
            module.eval()
            row["valid_score"] = value = self.validation_score(valid)
            bar.set_postfix(loss=f"{mean_loss:.4f}", valid=f"{value:.4f}")
            if stopper.update(epoch, value, lambda: copy.deepcopy(module.state_dict())):
                break
        bar.close()
        if stopper.best_state is not None:
            module.load_state_dict(stopper.best_state)
        module.eval()
        self.history_, self.best_epoch_ = stopper.history, stopper.best_epoch
        self.train_log_ = pd.DataFrame(log, columns=LOG_COLUMNS)

    # -- inference ------------------------------------------------------------------------
    @contextmanager
    def _inference(self) -> Iterator[nn.Module]:
        """The fitted network in eval mode without gradients; its mode comes back after."""
        module = self.module_
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                yield module
        finally:
            module.train(was_training)

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        users = np.asarray(users, np.int64)
        out = []
        with self._inference() as module:
            for start in range(0, len(users), self.score_batch):
                block = torch.from_numpy(users[start : start + self.score_batch]).to(self.device_)
                out.append(self.score_users(module, block).float().cpu().numpy())
        if not out:
            return np.empty((0, self.n_items_), np.float32)
        return np.vstack(out)

    def recommend(self, users: npt.ArrayLike, k: int = 10, *, exclude_seen: bool = True,
                  batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top-k per user; on a GPU the scores never leave the device (see the module doc)."""
        if not str(getattr(self, "device_", "cpu")).startswith("cuda"):
            return super().recommend(users, k, exclude_seen=exclude_seen, batch_size=batch_size)
        users = np.asarray(users, np.int64)
        rows = min(self.score_batch, rows_that_fit(self.n_items_, self.device_))
        items, scores = [], []
        with self._inference() as module:
            for start in range(0, len(users), rows):
                block = users[start : start + rows]
                s = self.score_users(module, torch.from_numpy(block).to(self.device_)).float()
                seen = self.seen_[block] if exclude_seen else None
                top, val = topk_torch(s, k, seen, block)
                items.append(top.cpu().numpy())
                scores.append(val.cpu().numpy().astype(np.float64))
        if not items:
            return np.empty((0, k), np.int64), np.empty((0, k))
        return np.vstack(items), np.vstack(scores)

    @property
    def n_parameters(self) -> int:
        module = getattr(self, "module_", None)
        return 0 if module is None else int(sum(w.numel() for w in module.parameters()))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle with the network on CPU, so a model fitted on a GPU loads anywhere."""
        state = self.__dict__.copy()
        if "module_" in state:
            state["module_"] = copy.deepcopy(self.module_).cpu()
            state["device_"] = "cpu"
        return state


def topk_torch(
    scores: torch.Tensor, k: int, exclude=None, users: npt.ArrayLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`metrics.topk_from_scores` on a tensor, on its own device: the k best items per row, best
    first, items in `exclude` (a sparse matrix of the rows) never returned, fewer than k
    candidates padded with -1 / -inf. Ties are ordered as there, by `hashing.pair_hash` of
    (users[row], item): the rows where a tie decides the list (equal values within the first k,
    or at the k-th place) are handed to `topk_from_scores`, the others keep the device's sort."""
    from metarec_lib.metrics import PAD, row_users, topk_from_scores

    if torch.isnan(scores).any():
        row, col = (int(v) for v in torch.nonzero(torch.isnan(scores))[0])
        raise ValueError(f"scores: NaN at row {row}, item {col}; expected real scores")
    s = scores.clone()
    if exclude is not None:
        ex = exclude.tocsr()
        r = torch.from_numpy(np.repeat(np.arange(ex.shape[0]), np.diff(ex.indptr)))
        c = torch.from_numpy(ex.indices.astype(np.int64))
        s[r.to(s.device), c.to(s.device)] = -torch.inf
    ids = row_users(users, len(s))
    kk = min(int(k), s.shape[1])
    values, idx = torch.sort(s, dim=1, descending=True, stable=True)
    tied = (values[:, 1:kk] == values[:, : kk - 1]).any(dim=1)
    if kk < s.shape[1]:
        tied |= values[:, kk] == values[:, kk - 1]
    values, idx = values[:, :kk].clone(), idx[:, :kk].clone()
    rows = torch.nonzero(tied).flatten()
    if len(rows):
        host = rows.cpu().numpy()
        top, val = topk_from_scores(s[rows].cpu().numpy(), kk, users=ids[host])
        idx[rows] = torch.from_numpy(top).to(idx.device)
        values[rows] = torch.from_numpy(val).to(values.device, values.dtype)
    idx = torch.where(torch.isinf(values) & (values < 0), torch.full_like(idx, PAD), idx)
    if kk < k:  # fewer items than k
        pad = k - kk
        idx = torch.cat([idx, torch.full((s.shape[0], pad), PAD, device=s.device)], dim=1)
        tail = torch.full((s.shape[0], pad), -torch.inf, device=s.device, dtype=values.dtype)
        values = torch.cat([values, tail], dim=1)
    return idx, values


def csr_tensor(matrix: sp.spmatrix) -> torch.Tensor:
    """A SciPy sparse matrix as a float32 torch CSR tensor (indices sorted, int64), without
    torch's notice that its CSR support is in beta."""
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)), torch.from_numpy(m.data),
            size=m.shape, check_invariants=False)  # fmt: skip


def product_operand(matrix: sp.spmatrix, device: str | torch.device) -> torch.Tensor:
    """`matrix` as float32 on `device`, to multiply a dense tensor with: CSR on the CPU (the
    product reads only the nonzeros), dense on CUDA, where cuSPARSE's CSR-times-dense product
    gave other bits on repeats of one product (an H200; torch's deterministic mode does not
    cover it) and cuBLAS's dense one, under `training.cuda_determinism`, does not."""
    if torch.device(device).type == "cuda":
        dense = sp.csr_matrix(matrix, dtype=np.float32).toarray()
        return torch.from_numpy(dense).to(device)
    return csr_tensor(matrix).to(device)


def rows_that_fit(n_items: int, device: str, share: float = 0.25) -> int:
    """Users per ranking batch whose scores, sort values and indices (16 bytes an item) fit
    `share` of the device's free memory; 1024 off CUDA."""
    if not str(device).startswith("cuda"):
        return 1024
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, int(share * free // (16 * max(n_items, 1))))
