import dataclasses
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import Encoder, Interactions
from metarec_lib.hashing import pair_hash
from metarec_lib.models.sequences import (
    PAD,
    last_window,
    left_pad,
    shifted_windows,
    sliding_windows,
    user_sequences,
)
from metarec_lib.splits import leave_last_one_out


def _seqs(*rows: list[int]) -> list[np.ndarray]:
    return [np.asarray(r, np.int64) for r in rows]


# Sequences of unique items (index + 1, so >= 1), some users with 0 or 1 item.
unique_sequences = st.lists(
    st.lists(st.integers(1, 40), unique=True, max_size=9).map(lambda r: np.asarray(r, np.int64)),
    max_size=6,
)


# -- user_sequences -------------------------------------------------------------------------
def test_user_sequences_order_by_time_then_pair_hash_and_shift_by_one():
    frame = pd.DataFrame({"user": [0, 0, 0, 2, 0], "item": [3, 1, 2, 4, 0], "rating": 1.0,
                          "timestamp": [5, 5, 1, 7, 9]})  # fmt: skip
    seqs = user_sequences(Interactions(frame, 4, 5))
    assert len(seqs) == 4
    # user 0: item 2 (t=1), then items 1 and 3 tie at t=5 (pair_hash order), then item 0 (t=9).
    tied = [2, 4] if pair_hash(0, 1) < pair_hash(0, 3) else [4, 2]
    np.testing.assert_array_equal(seqs[0], [3, *tied, 1])
    assert len(seqs[1]) == 0 and len(seqs[3]) == 0  # no history
    np.testing.assert_array_equal(seqs[2], [5])
    assert all(s.dtype == np.int64 for s in seqs)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 2)),
        unique_by=lambda row: row[:2],  # one row per (user, item) pair
        max_size=25,
    )
)
def test_user_sequences_are_each_users_items_sorted_by_time_then_pair_hash(rows):
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"], dtype=np.int64)
    frame["rating"] = 1.0
    seqs = user_sequences(Interactions(frame, 4, 6))
    for u in range(4):
        expected = sorted((t, int(pair_hash(u, i)), i) for v, i, t in rows if v == u)
        np.testing.assert_array_equal(seqs[u], [i + 1 for _, _, i in expected])


def test_ties_are_ordered_as_the_split_orders_them_so_the_validation_item_comes_last():
    # Raw ids far from the dense indices, and every user's ratings in two seconds, so ties
    # decide the order: hashing indices and hashing raw ids would give different orders.
    rng = np.random.default_rng(0)
    rows = [(1000 + 7 * u, 50 + 13 * i, int(rng.integers(2)))
            for u in range(30) for i in rng.choice(40, size=8, replace=False)]  # fmt: skip
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=1.0)
    split = leave_last_one_out(raw)
    encoder = Encoder(np.unique(raw["user_id"]), np.unique(raw["item_id"]))
    history = encoder.encode(pd.concat([split.train, split.valid]))
    seqs = user_sequences(history)
    valid = encoder.encode(split.valid).frame
    assert len(valid) == 30
    for u, i in zip(valid["user"], valid["item"], strict=True):
        assert seqs[u][-1] == i + 1  # the final fit's history ends with the validation item
    # ... and hashing indices instead (no raw ids known) orders some of them differently.
    bare = dataclasses.replace(history, user_ids=None, item_ids=None)
    last = [user_sequences(bare)[u][-1] for u in valid["user"]]
    assert sum(a != i + 1 for a, i in zip(last, valid["item"], strict=True)) > 0


# -- left_pad / last_window -----------------------------------------------------------------
def test_left_pad_keeps_the_last_items():
    out = left_pad(_seqs([1, 2, 3, 4, 5], [7], []), 3)
    np.testing.assert_array_equal(out, [[3, 4, 5], [PAD, PAD, 7], [PAD, PAD, PAD]])
    assert out.dtype == np.int64
    assert left_pad(_seqs([1, 2]), 0).shape == (1, 0)
    assert left_pad([], 4).shape == (0, 4)


@settings(max_examples=50, deadline=None)
@given(unique_sequences, st.integers(0, 6))
def test_left_pad_right_aligns_the_tail(seqs, length):
    out = left_pad(seqs, length)
    assert out.shape == (len(seqs), length)
    for row, seq in zip(out, seqs, strict=True):
        keep = min(len(seq), length)
        np.testing.assert_array_equal(row[length - keep :], seq[len(seq) - keep :])
        assert (row[: length - keep] == PAD).all()


def test_last_window_reads_the_users_asked_for():
    seqs = _seqs([1, 2, 3], [], [4, 5])
    np.testing.assert_array_equal(last_window(seqs, [2, 0, 1], 2), [[4, 5], [2, 3], [PAD, PAD]])
    np.testing.assert_array_equal(last_window(seqs, np.array([0]), 4), [[PAD, 1, 2, 3]])


# -- shifted_windows ------------------------------------------------------------------------
def test_shifted_windows_by_hand():
    users, inputs, targets = shifted_windows(_seqs([1, 2, 3, 4, 5, 6], [9], [], [7, 8]), 2)
    # user 0 cut from the end into chunks of up to 3 items sharing one: [4 5 6], [2 3 4], [1 2].
    np.testing.assert_array_equal(users, [0, 0, 0, 3])
    np.testing.assert_array_equal(inputs, [[4, 5], [2, 3], [PAD, 1], [PAD, 7]])
    np.testing.assert_array_equal(targets, [[5, 6], [3, 4], [PAD, 2], [PAD, 8]])

    users, inputs, targets = shifted_windows(_seqs([1, 2, 3, 4, 5]), 3)
    np.testing.assert_array_equal(users, [0, 0])
    np.testing.assert_array_equal(inputs, [[2, 3, 4], [PAD, PAD, 1]])
    np.testing.assert_array_equal(targets, [[3, 4, 5], [PAD, PAD, 2]])


def test_shifted_windows_without_transitions_are_empty():
    users, inputs, targets = shifted_windows(_seqs([3], []), 4)
    assert users.shape == (0,) and inputs.shape == (0, 4) and targets.shape == (0, 4)


@settings(max_examples=100, deadline=None)
@given(unique_sequences, st.integers(1, 5))
def test_shifted_windows_properties(seqs, length):
    users, inputs, targets = shifted_windows(seqs, length)
    assert inputs.shape == targets.shape == (len(users), length)
    # Padded positions line up: a target is PAD exactly where its input is PAD.
    np.testing.assert_array_equal(inputs == PAD, targets == PAD)
    # No target appears in its own input window input[: t + 1].
    for row_in, row_out in zip(inputs, targets, strict=True):
        for t in range(length):
            if row_out[t] != PAD:
                assert row_out[t] not in set(row_in[: t + 1].tolist()) - {PAD}
    # Every transition (a, b) appears exactly once as (inputs[r, t], targets[r, t]).
    seen = Counter(
        (int(u), int(a), int(b))
        for u, row_in, row_out in zip(users, inputs, targets, strict=True)
        for a, b in zip(row_in, row_out, strict=True)
        if b != PAD
    )
    expected = Counter(
        (u, int(a), int(b)) for u, s in enumerate(seqs) for a, b in zip(s[:-1], s[1:], strict=True)
    )
    assert seen == expected
    assert all(count == 1 for count in seen.values())


# -- sliding_windows ------------------------------------------------------------------------
def test_sliding_windows_by_hand():
    users, inputs, targets = sliding_windows(_seqs([1, 2, 3, 4], [5]), 2)
    np.testing.assert_array_equal(users, [0, 0, 0])
    np.testing.assert_array_equal(inputs, [[PAD, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(targets, [[2], [3], [4]])

    users, inputs, targets = sliding_windows(_seqs([], [1, 2, 3, 4]), 2, targets=2)
    np.testing.assert_array_equal(users, [1, 1])
    np.testing.assert_array_equal(inputs, [[PAD, 1], [1, 2]])
    np.testing.assert_array_equal(targets, [[2, 3], [3, 4]])

    users, inputs, targets = sliding_windows(_seqs([1], []), 3, targets=2)
    assert users.shape == (0,) and inputs.shape == (0, 3) and targets.shape == (0, 2)


@settings(max_examples=100, deadline=None)
@given(unique_sequences, st.integers(1, 5), st.integers(1, 3))
def test_sliding_windows_properties(seqs, length, n_targets):
    users, inputs, targets = sliding_windows(seqs, length, targets=n_targets)
    assert inputs.shape == (len(users), length) and targets.shape == (len(users), n_targets)
    assert len(users) == sum(max(0, len(s) - n_targets) for s in seqs)
    assert (targets != PAD).all()
    for row_in, row_out in zip(inputs, targets, strict=True):
        assert not set(row_out.tolist()) & set(row_in.tolist())  # no target in its input
    # Row t (from 1) of a user: the `length` items before position t, then the next ones.
    for u, seq in enumerate(seqs):
        rows = np.flatnonzero(users == u)
        for t, r in enumerate(rows, start=1):
            np.testing.assert_array_equal(inputs[r], left_pad([seq[:t]], length)[0])
            np.testing.assert_array_equal(targets[r], seq[t : t + n_targets])


# -- errors -----------------------------------------------------------------------------------
def test_window_lengths_are_checked():
    seqs = _seqs([1, 2, 3])
    with pytest.raises(ValueError, match="length=0"):
        shifted_windows(seqs, 0)
    with pytest.raises(ValueError, match="length=0"):
        sliding_windows(seqs, 0)
    with pytest.raises(ValueError, match="targets=0"):
        sliding_windows(seqs, 2, targets=0)
