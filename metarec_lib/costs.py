"""What a model costs: wall seconds, peak memory, parameters, device.

Memory is in MiB (2**20 bytes), though the contract's column is named `peak_memory_mb`.

Peak memory is the growth of the process's resident set, sampled every few milliseconds (it sees
NumPy, PyTorch and BLAS buffers alike). With `trace_heap=True` the Python-heap peak from
`tracemalloc` (NumPy registers its buffers there) is taken too, which catches memory the
allocator reuses without growing the resident set; it is off by default because tracing slows
Python-heavy training loops and would distort their timings. On CUDA the growth of
`torch.cuda.max_memory_allocated` over what was allocated when the block began is added, since
device memory is not in the resident set (after `reset_peak_memory_stats` the peak starts at the
memory already allocated: a fitted model's weights during its predict, earlier cells' tensors).

Before a block, the memory the process freed but glibc's allocator kept is returned to the
system (`release_freed_memory`, `malloc_trim`). Without that, a worker that had run other jobs
reused what they freed without growing its resident set, and most cells of the 2026-11-29 run
recorded a peak of a few kB (65-80% of the collaborative, content, multi-task and transfer
cells under 1 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

MB = 1024.0 * 1024.0  # "MB" in `peak_memory_mb` and every label means MiB: 2**20 bytes


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 (a glibc-only symbol: AttributeError elsewhere)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def release_freed_memory() -> bool:
    """Return the memory this process freed but its allocator kept to the system (glibc's
    `malloc_trim`); False where the C library is not glibc (nothing happens)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


class _RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.interval = interval
        self.start_rss = self.process.memory_info().rss
        self.peak_rss = self.start_rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        return (self.peak_rss - self.start_rss) / MB


@contextmanager
def measure(device: str = "cpu", *, trace_heap: bool = False) -> Iterator[Measurement]:
    """Time a block and record its peak extra memory in MB (see module docstring)."""
    release_freed_memory()
    result = Measurement()
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the peak restarts at what is allocated now
        cuda_start = torch.cuda.memory_allocated()
    was_tracing = tracemalloc.is_tracing()
    if trace_heap and not was_tracing:
        tracemalloc.start()
    if trace_heap:
        tracemalloc.reset_peak()
        heap_start = tracemalloc.get_traced_memory()[0]
    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize()
        result.seconds = time.perf_counter() - start
        rss_mb = sampler.stop()
        heap_mb = 0.0
        if trace_heap:
            heap_mb = (tracemalloc.get_traced_memory()[1] - heap_start) / MB
            if not was_tracing:
                tracemalloc.stop()
        result.peak_memory_mb = max(rss_mb, heap_mb, 0.0)
        if cuda:
            result.peak_memory_mb += (torch.cuda.max_memory_allocated() - cuda_start) / MB
