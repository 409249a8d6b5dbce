"""What a model costs: wall seconds, peak memory, parameters, device.

Peak memory is the growth of the process's resident set, sampled every few milliseconds (it sees
NumPy, PyTorch and BLAS buffers alike). With `trace_heap=True` the Python-heap peak from
`tracemalloc` (NumPy registers its buffers there) is taken too, which catches memory the
allocator reuses without growing the resident set; it is off by default because tracing slows
Python-heavy training loops and would distort their timings. On CUDA the peak of
`torch.cuda.max_memory_allocated` is added, since device memory is not in the resident set.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

MB = 1024.0 * 1024.0


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
