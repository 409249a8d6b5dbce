"""Training helpers shared by iterative models: early stopping, CPU thread control, Adam, and
the deterministic-algorithm settings every PyTorch fit on CUDA runs under (`cuda_determinism`).

`EarlyStopping` is the one place that decides when a model stops and which weights it keeps,
so BPR, iALS, the rating factorisations and every PyTorch model stop by the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

# cuBLAS's fixed workspace, needed for deterministic products on CUDA; effective when set
# before the process's first cuBLAS call, so at import (unless the caller set it already).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class EarlyStopping:
    """Track a validation value per evaluation; keep the best snapshot; say when to stop.

    `update(epoch, value, snapshot)` records the value, calls `snapshot()` (a copy of the
    weights) only when the value is the best so far, and returns True once `patience`
    evaluations in a row failed to improve on the best. A NaN value never counts as a gain.
    """

    def __init__(self, patience: int, *, higher_is_better: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience={patience!r}; expected an int >= 1")
        self.patience = int(patience)
        self.higher_is_better = higher_is_better
        self.history: list[tuple[int, float]] = []
        self.best_epoch: int | None = None
        self.best_value = -np.inf if higher_is_better else np.inf
        self.best_state: Any = None
        self.waited = 0

    def update(self, epoch: int, value: float, snapshot: Callable[[], Any]) -> bool:
        self.history.append((int(epoch), float(value)))
        better = value > self.best_value if self.higher_is_better else value < self.best_value
        if better:  # False for NaN
            self.best_value, self.best_epoch, self.waited = float(value), int(epoch), 0
            self.best_state = snapshot()
            return False
        self.waited += 1
        return self.waited >= self.patience


@contextmanager
def cpu_threads(device: str, threads: int | None) -> Iterator[None]:
    """On CPU, run torch ops on `threads` intra-op threads for the duration, then restore.

    Small models (embedding gathers, (batch, 64) matmuls) run faster on one thread on a
    2-core machine: the intra-op barriers cost more than they save, and on a busy machine they
    stall by 10x or more (measured with BPR: 0.83 s vs 1.0 s for 10 ML-100K epochs). Results
    do not depend on the thread count. None, or a non-CPU device, leaves the setting alone.
    """
    import torch

    if device != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def adam(parameters: Iterable[Any], *, lr: float, weight_decay: float = 0.0) -> Any:
    """torch's Adam, its update fused into one kernel per step when the parameters are all on
    the CPU or all on CUDA (elsewhere the default loop). On one CPU thread the per-parameter
    loop made a fit on ml-latest-small 1.34x slower for NeuMF, 1.17x for SVD++ and 1.06x for
    CFGAN (`benchmarks/bench_adam.py`). Deterministic like the loop, though not bitwise equal
    to it: the kernel rounds differently."""
    import torch

    params = list(parameters)
    kinds = {w.device.type for w in params}
    fused = len(kinds) == 1 and kinds <= {"cpu", "cuda"}
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


LOG_COLUMNS = ["epoch", "loss", "seconds", "samples", "samples_per_second", "valid_score"]


def epoch_record(name: str, epoch: int, mean_loss: float, seconds: float, samples: int,
                 rates: str) -> dict[str, Any]:  # fmt: skip
    """One row of a training log (`LOG_COLUMNS`; valid_score NaN until measured). A non-finite
    loss is a FloatingPointError naming the model, the epoch and its learning rates (`rates`),
    which tuning counts as a failed configuration."""
    if not np.isfinite(mean_loss):
        raise FloatingPointError(
            f"{name}: training loss is {mean_loss} at epoch {epoch} ({rates}); lower the "
            f"learning rate"
        )
    return {"epoch": epoch, "loss": mean_loss, "seconds": seconds, "samples": samples,
            "samples_per_second": samples / seconds if seconds > 0 else np.nan,
            "valid_score": np.nan}  # fmt: skip


class cuda_determinism:
    """Within, on a CUDA device: torch's deterministic algorithms, strictly, and no cuDNN
    autotuning; the previous settings come back on exit. A no-op elsewhere.

    Strict, not warn-only: an op without a deterministic kernel raises rather than warns, and
    memory-efficient attention's backward (SASRec, CL4SRec) uses its deterministic algorithm
    only in this mode. Every GPU-capable model trains under it, twice from one seed to the same
    bits (`tests/test_cuda.py`, on an H200 with torch 2.11). Not covered by torch's flag, and
    so avoided on CUDA: cuSPARSE's CSR-times-dense product, which gave different bits on
    repeats there (`torch_base.product_operand` is dense on CUDA; so are CFGAN's batches)."""

    def __init__(self, device: str) -> None:
        self.active = str(device).startswith("cuda")

    def __enter__(self) -> None:
        import torch

        if not self.active:
            return
        self._before = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    def __exit__(self, *exc: object) -> None:
        import torch

        if not self.active:
            return
        enabled, warn_only, benchmark, deterministic = self._before
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = deterministic
