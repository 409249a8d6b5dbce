"""What a model costs: wall seconds, peak memory, parameters, device.

Peak memory is the growth of the process's resident set, sampled every few milliseconds (it sees
NumPy, PyTorch and BLAS buffers alike). With `trace_heap=True` the Python-heap peak from
`tracemalloc` (NumPy registers its buffers there) is taken too, which catches memory the
allocator reuses without growing the resident set; it is off by default because tracing slows
Python-heavy training loops and would distort their timings. On CUDA the peak of
`torch.cuda.max_memory_allocated` is added, since device memory is not in the resident set.

`keep_freed_memory` (the study's job runners call it in every process that runs cells) has
glibc's allocator keep the memory a process frees for its next allocations: by default a buffer
over its threshold is mapped afresh and returned to the system when freed, so a training step's
(batch x width) activations were faulted in page by page at every step. Keeping them made fits
on one thread 1.14x (MMoE), 1.17x (CFGAN), 1.19x (BPR) and 1.2-1.6x (GRU4Rec) faster on the
study's data (`benchmarks/bench_malloc.py`), with the same numbers. So that the resident set
still measures a block's own peak, `measure` first returns what earlier blocks freed to the
system (`release_freed_memory`).
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

MB = 1024.0 * 1024.0
# glibc's mallopt parameters (malloc.h) and the values `keep_freed_memory` sets: buffers up to
# 1 GiB come from the heap, and freed memory stays with the process until `malloc_trim`.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (a glibc-only symbol: AttributeError elsewhere)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@functools.cache
def keep_freed_memory() -> bool:
    """Have this process's allocator keep freed memory for reuse (see the module docstring);
    True when it took the settings (glibc), False elsewhere (nothing changes). Once per
    process."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in KEEP.items())


def release_freed_memory() -> None:
    """Return the memory this process freed but kept to the system (glibc's `malloc_trim`)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
        torch.cuda.reset_peak_memory_stats()
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
            result.peak_memory_mb += torch.cuda.max_memory_allocated() / MB
