"""Users' histories as time-ordered item sequences, and the leak-free windows models train on.

Sequence arrays hold item index + 1 so that 0 can be the padding token (`PAD`); embeddings of
sequence models therefore have n_items + 1 rows. Order within a user is by timestamp, ties
broken by `metarec_lib.hashing.pair_hash` of the (user, item) raw ids (`Interactions.raw_ids`): a
fixed pseudo-random order, so that no model can learn an item-id order from ratings entered in
the same second, and the order `leave_last_one_out` uses. So the item a split held out as
validation is the last of the history a final fit on train + validation reads (before, ties
were hashed on dense indices: on ML-100K's loo-temporal split 271 of 943 users' histories ended
with another item of the validation item's second).

Every window function returns inputs that contain only items strictly before their targets:
`tests/test_sequences.py` builds sequences and checks that no target appears in its own input.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from metarec_lib.data.dataset import Interactions
from metarec_lib.hashing import pair_hash

PAD = 0
IntArray = npt.NDArray[np.int64]


def user_sequences(train: Interactions) -> list[IntArray]:
    """Each user's training items (index + 1) in time order (ties: `pair_hash` of the raw
    ids); an empty array for users without."""
    f = train.frame
    users = f["user"].to_numpy(np.int64)
    items = f["item"].to_numpy(np.int64)
    order = np.lexsort((pair_hash(*train.raw_ids()), f["timestamp"].to_numpy(np.int64), users))
    users, items = users[order], items[order] + 1
    bounds = np.searchsorted(users, np.arange(train.n_users + 1))
    return [items[bounds[u] : bounds[u + 1]] for u in range(train.n_users)]


def left_pad(rows: list[IntArray], length: int) -> IntArray:
    """Stack sequences into (len(rows), length), keeping each one's LAST `length` items and
    padding on the left with PAD."""
    out = np.full((len(rows), length), PAD, dtype=np.int64)
    for r, seq in enumerate(rows):
        tail = seq[-length:] if length else seq[:0]
        if len(tail):
            out[r, length - len(tail) :] = tail
    return out


def last_window(sequences: list[IntArray], users: npt.ArrayLike, length: int) -> IntArray:
    """The most recent `length` items of each user's history, left-padded: (n, length).
    What a sequence model reads to score a user's next item."""
    return left_pad([sequences[u] for u in np.asarray(users, np.int64)], length)


def shifted_windows(sequences: list[IntArray], length: int) -> tuple[IntArray, IntArray, IntArray]:
    """Next-item training pairs for models that predict at every position (SASRec, GRU4Rec).

    Each user's sequence s is cut, from its end, into chunks of up to `length` + 1 items
    (consecutive chunks share one item, so every transition is used once); a chunk c gives
    input c[:-1] and target c[1:], both left-padded to `length`. Position t of the target is
    the item that followed input[: t + 1]. Returns (users (n,), inputs (n, length),
    targets (n, length)); users with fewer than 2 items give no rows.
    """
    if length < 1:
        raise ValueError(f"shifted_windows: length={length!r}; expected >= 1")
    users, inputs, targets = [], [], []
    for u, seq in enumerate(sequences):
        end = len(seq)
        while end >= 2:
            chunk = seq[max(0, end - length - 1) : end]
            users.append(u)
            inputs.append(chunk[:-1])
            targets.append(chunk[1:])
            end -= length
    return (np.asarray(users, np.int64), left_pad(inputs, length), left_pad(targets, length))


def sliding_windows(
    sequences: list[IntArray], length: int, targets: int = 1
) -> tuple[IntArray, IntArray, IntArray]:
    """Caser's training examples: the `length` items before position t (left-padded) and the
    `targets` items from t on, for every position t >= 1 with `targets` items left.

    Returns (users (n,), inputs (n, length), targets (n, targets)).
    """
    if length < 1 or targets < 1:
        raise ValueError(f"sliding_windows: length={length!r}, targets={targets!r}; need >= 1")
    users, inputs, outs = [], [], []
    for u, seq in enumerate(sequences):
        for t in range(1, len(seq) - targets + 1):
            users.append(u)
            inputs.append(seq[max(0, t - length) : t])
            outs.append(seq[t : t + targets])
    out_targets = np.asarray(outs, np.int64).reshape(len(outs), targets)
    return np.asarray(users, np.int64), left_pad(inputs, length), out_targets
