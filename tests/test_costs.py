import numpy as np
import pytest

from metarec_lib.costs import measure


def test_measure_sees_a_large_allocation():
    with measure() as m:
        block = np.ones((4000, 4000))  # 122 MiB
        block += 1
    assert m.seconds > 0
    assert 100 < m.peak_memory_mb < 400


def test_measure_small_work_is_small():
    with measure(trace_heap=True) as m:
        sum(range(1000))
    assert m.peak_memory_mb < 20


CHURN = """
import ctypes, ctypes.util, json
import numpy as np
from metarec_lib import costs

libc = ctypes.CDLL(ctypes.util.find_library("c"))
# A worker whose allocator thresholds have risen: freed 1 MiB buffers stay with the process.
assert libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1


def churn():
    with costs.measure() as m:
        arrays = [np.ones(1 << 17) for _ in range(200)]  # 200 buffers of 1 MiB, alive at once
        arrays[-1][0] = 2.0
    return m.peak_memory_mb


first = churn()
release = costs.release_freed_memory
costs.release_freed_memory = lambda: False
kept = churn()  # the same block, reusing what the first freed
costs.release_freed_memory = release
print(json.dumps([first, kept, churn()]))
"""


def test_measure_sees_a_block_that_reuses_memory_freed_before():
    """200 MiB allocated in 1 MiB buffers, freed, then allocated again in a process whose
    allocator keeps freed memory: without returning it first, the second block looks free
    (the resident set does not grow); `measure` returns it, so every block shows its 200 MiB."""
    import json
    import subprocess
    import sys

    from metarec_lib.costs import _glibc

    if _glibc() is None:
        pytest.skip("malloc_trim is glibc's")
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                         check=True)  # fmt: skip
    first, kept, released = json.loads(out.stdout)
    assert 180 < first < 260
    assert kept < 20  # what every measured block after the first saw before
    assert 180 < released < 260


def test_cuda_peak_counts_only_what_the_block_allocated(monkeypatch):
    """After reset_peak_memory_stats the CUDA peak starts at what is allocated already (1 GiB
    of a model's weights here); the block's peak extra is what it allocated beyond that."""
    import torch

    state = {"allocated": 1 << 30, "peak": 1 << 30}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda *a, **k: state.update(peak=state["allocated"]))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: state["peak"])
    with measure("cuda") as m:
        state["peak"] += 10 * (1 << 20)  # a 10 MiB temporary, freed before the end
    assert 10 <= m.peak_memory_mb < 30  # 10 MiB plus the resident set's noise, not 1,034
