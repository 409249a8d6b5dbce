"""The study's one tie-break: a fixed pseudo-random hash of a (row id, column id) pair.

Wherever equal values must be put in order (ratings given in the same second, equal scores in a
top-K list, equal similarities at a k-th neighbour), the study orders them by `pair_hash` of the
raw ids rather than by index. An index order would favour the lowest item ids (in MovieLens the
older, more-rated films) and a model could learn it; the hash favours nothing and does not
depend on row order, block size or which items a fit skips. It lives here, apart from the
modules that use it (`splits`, `metrics`, `models.knn`, `models.sequences`), so none of them
imports another for it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def pair_hash(users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """A fixed pseudo-random uint64 per (user, item) pair: SplitMix64's output for the state
    (user << 32) ^ item, so (0, 0) gives SplitMix64's first value from seed 0. Broadcasts like
    NumPy; two scalars give a scalar. Ids are taken modulo 2**64 (non-negative ids below 2**32
    never collide before mixing)."""
    u = np.atleast_1d(np.asarray(users)).astype(np.uint64)
    i = np.atleast_1d(np.asarray(items)).astype(np.uint64)
    x = (u << np.uint64(32)) ^ i
    with np.errstate(over="ignore"):  # wrap-around arithmetic is the point
        x = x + _GAMMA
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    return x if np.ndim(users) or np.ndim(items) else x[0]
