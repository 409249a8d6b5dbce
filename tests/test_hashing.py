import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.hashing import pair_hash

MASK = (1 << 64) - 1


def splitmix64(state: int) -> int:
    """SplitMix64's next output from `state`, in Python integers (Steele et al. 2014)."""
    z = (state + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_pair_hash_of_0_0_is_splitmix64s_first_value_from_seed_0():
    # The published first output of SplitMix64 seeded with 0.
    assert int(pair_hash(0, 0)) == 0xE220A8397B1DCDAF
    assert isinstance(pair_hash(0, 0), np.uint64)  # two scalars give a scalar


@settings(max_examples=200, deadline=None)
@given(user=st.integers(0, 2**31 - 1), item=st.integers(0, 2**31 - 1))
def test_pair_hash_equals_splitmix64_of_user_shifted_xor_item(user, item):
    assert int(pair_hash(user, item)) == splitmix64((user << 32) ^ item)
    assert int(pair_hash(np.int64(user), np.int64(item))) == int(pair_hash(user, item))


def test_pair_hash_broadcasts_like_numpy_and_is_not_symmetric():
    users, items = np.arange(3)[:, None], np.array([5, 9])
    grid = pair_hash(users, items)
    assert grid.shape == (3, 2) and grid.dtype == np.uint64
    assert all(int(grid[u, j]) == splitmix64((u << 32) ^ int(i))
               for u in range(3) for j, i in enumerate(items))  # fmt: skip
    assert pair_hash(1, 2) != pair_hash(2, 1)


def test_pair_hash_carries_no_item_order():
    # Over many users, "item 9 after item 2" is a coin flip, not a rule.
    later = pair_hash(np.arange(2000), np.full(2000, 9)) > pair_hash(np.arange(2000), 2)
    assert 0.45 < later.mean() < 0.55
