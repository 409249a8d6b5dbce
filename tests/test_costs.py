import numpy as np

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
