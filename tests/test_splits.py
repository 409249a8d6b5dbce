"""Split invariants, hand-worked temporal cases, determinism, and ML-100K's canonical folds."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data.dataset import DataError, interactions_digest
from metarec_lib.hashing import pair_hash
from metarec_lib.splits import (
    ColdStartSplit,
    Split,
    SplitError,
    canonical_folds,
    coldstart_users,
    holdout_per_user,
    kfold_ratings,
    leave_last_one_out,
    split_summary,
    temporal_global,
    temporal_last_n,
    validation_carveout,
    with_validation,
)

PROPS = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------- helpers


def frame(rows: list[tuple[int, int, int]], rating: float = 4.0) -> pd.DataFrame:
    """(user_id, item_id, timestamp) triples -> interactions frame with an extra `row` column."""
    u, i, t = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return pd.DataFrame(
        {
            "user_id": u,
            "item_id": i,
            "rating": np.full(len(u), rating),
            "timestamp": t,
            "row": np.arange(len(u)),
        }
    )


def random_frame(n_users: int, n_items: int, density: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    return pd.DataFrame(
        {
            "user_id": u.astype(np.int64) + 1,
            "item_id": i.astype(np.int64) + 100,
            "rating": rng.integers(1, 6, len(u)).astype(float),
            "timestamp": rng.integers(0, 50, len(u)).astype(np.int64),
            "row": np.arange(len(u)),
        }
    )


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user_id"].tolist(), df["item_id"].tolist(), strict=True))


def rows(df: pd.DataFrame) -> list[int]:
    return sorted(df["row"].tolist())


def assert_same_split(a: Split, b: Split) -> None:
    for part in ("train", "valid", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert (x is None) == (y is None)
        if x is not None:
            pd.testing.assert_frame_equal(x, y)


def hash_key(df: pd.DataFrame) -> list[tuple[int, int]]:
    """(timestamp, pair_hash): the within-user time order every temporal protocol uses."""
    hashes = pair_hash(df["user_id"].to_numpy(), df["item_id"].to_numpy())
    return list(zip(df["timestamp"].tolist(), hashes.tolist(), strict=True))


@st.composite
def frames(draw, max_users: int = 6, max_items: int = 8, max_rows: int = 40) -> pd.DataFrame:
    """Small random frames with unique (user, item) pairs, many timestamp ties, shuffled rows."""
    cells = st.tuples(st.integers(1, max_users), st.integers(1, max_items))
    keys = sorted(draw(st.sets(cells, min_size=1, max_size=max_rows)))
    times = draw(st.lists(st.integers(0, 5), min_size=len(keys), max_size=len(keys)))
    df = frame([(u, i, t) for (u, i), t in zip(keys, times, strict=True)])
    order = draw(st.permutations(range(len(df))))
    return df.iloc[list(order)].reset_index(drop=True)


# ----------------------------------------------------------------------------- holdout


def test_holdout_hand_worked_sizes():
    # users with 1, 2, 4, 5 ratings keep max(1, floor(0.75 n)) = 1, 1, 3, 3 in train
    df = frame([(1, 1, 0)] + [(2, i, 0) for i in range(2)] + [(3, i, 0) for i in range(4)]
               + [(4, i, 0) for i in range(5)])  # fmt: skip
    split = holdout_per_user(df, test_fraction=0.25, seed=3)
    assert split.train.groupby("user_id").size().to_dict() == {1: 1, 2: 1, 3: 3, 4: 3}
    assert split.test.groupby("user_id").size().to_dict() == {2: 1, 3: 1, 4: 2}
    assert split.seed == 3 and split.valid is None


@PROPS
@given(df=frames(), fraction=st.sampled_from([0.1, 0.25, 0.5, 0.9]), seed=st.integers(0, 99))
def test_holdout_properties(df, fraction, seed):
    split = holdout_per_user(df, test_fraction=fraction, seed=seed)
    assert not pairs(split.train) & pairs(split.test)
    assert rows(pd.concat([split.train, split.test])) == list(range(len(df)))
    n = df.groupby("user_id").size()
    expected = np.maximum(np.floor((1 - fraction) * n + 1e-9), 1).astype(int)
    assert split.train.groupby("user_id").size().to_dict() == expected.to_dict()
    # extra columns travel with their row
    merged = split.test.merge(df, on="row", suffixes=("", "_orig"))
    assert (merged["item_id"] == merged["item_id_orig"]).all()
    # the row order of the input does not matter
    assert_same_split(split, holdout_per_user(df[::-1], test_fraction=fraction, seed=seed))


def test_holdout_deterministic_and_seed_sensitive():
    df = random_frame(40, 30, 0.4, seed=0)
    a, b = holdout_per_user(df, seed=1), holdout_per_user(df, seed=1)
    assert_same_split(a, b)
    assert_same_split(a, holdout_per_user(df, seed=np.random.default_rng(1)))
    assert pairs(a.test) != pairs(holdout_per_user(df, seed=2).test)
    assert holdout_per_user(df, seed=np.random.default_rng(1)).seed is None


# ----------------------------------------------------------------------------- k-fold


@PROPS
@given(df=frames(), k=st.integers(2, 6), seed=st.integers(0, 99))
def test_kfold_tests_partition_the_data(df, k, seed):
    if k > len(df):
        with pytest.raises(ValueError, match="k="):
            kfold_ratings(df, k=k, seed=seed)
        return
    splits = kfold_ratings(df, k=k, seed=seed)
    assert len(splits) == k
    assert sorted(sum((s.test["row"].tolist() for s in splits), [])) == list(range(len(df)))
    sizes = [len(s.test) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    for s in splits:
        assert rows(pd.concat([s.train, s.test])) == list(range(len(df)))
        assert not pairs(s.train) & pairs(s.test)
    assert [s.name for s in splits] == [f"kfold{k}-{i + 1}" for i in range(k)]


def test_kfold_deterministic_and_seed_sensitive():
    df = random_frame(20, 20, 0.5, seed=2)
    a, b, c = (kfold_ratings(df, k=4, seed=s) for s in (7, 7, 8))
    for x, y in zip(a, b, strict=True):
        assert_same_split(x, y)
    assert pairs(a[0].test) != pairs(c[0].test)


# ----------------------------------------------------------------------------- canonical


def test_canonical_folds_hand_made():
    df = frame([(1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 3, 0), (3, 2, 0), (3, 3, 0)])
    folds = [
        pd.DataFrame({"user_id": [1, 3], "item_id": [2, 3]}),
        pd.DataFrame({"user_id": [2, 2, 1], "item_id": [1, 3, 1], "rating": [9.0, 9.0, 9.0]}),
    ]
    u1, u2 = canonical_folds(df, folds)
    assert (u1.name, u2.name) == ("u1", "u2")
    assert pairs(u1.test) == {(1, 2), (3, 3)} and rows(u1.train) == [0, 2, 3, 4]
    assert pairs(u2.test) == {(2, 1), (2, 3), (1, 1)} and rows(u2.train) == [1, 4, 5]
    assert (u2.test["rating"] == 4.0).all()  # rows come from the interactions, not the fold


def test_canonical_folds_rejects_unknown_and_duplicate_pairs():
    df = frame([(1, 1, 0), (1, 2, 0), (2, 1, 0)])
    with pytest.raises(SplitError, match=r"'u1'.*not in the interactions.*user_id=2, item_id=2"):
        canonical_folds(df, [pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2]})])
    with pytest.raises(SplitError, match="duplicate"):
        canonical_folds(df, [pd.DataFrame({"user_id": [1, 1], "item_id": [1, 1]})])


def _ml100k_dir() -> Path:
    data_dir = os.environ.get("METAREC_DATA_DIR")
    if not data_dir:
        pytest.skip("METAREC_DATA_DIR is not set (needs the MovieLens 100K files)")
    return Path(data_dir) / "ml-100k"


def _read_udata(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])


def test_ml100k_canonical_folds_from_files():
    folder = _ml100k_dir()
    df = _read_udata(folder / "u.data")
    tests = [_read_udata(folder / f"u{i}.test") for i in range(1, 6)]
    splits = canonical_folds(df, tests)
    assert [s.name for s in splits] == ["u1", "u2", "u3", "u4", "u5"]
    for i, s in enumerate(splits, start=1):
        assert (len(s.train), len(s.test)) == (80_000, 20_000)
        assert interactions_digest(s.train) == interactions_digest(
            _read_udata(folder / f"u{i}.base")
        )
    assert len(pairs(pd.concat([s.test for s in splits]))) == 100_000


@pytest.mark.skipif(
    importlib.util.find_spec("metarec_lib.data.movielens") is None,
    reason="metarec_lib.data.movielens (the loader) is not written yet",
)
def test_ml100k_canonical_folds_from_loader():
    _ml100k_dir()
    from metarec_lib.data import load_dataset

    ds = load_dataset("ml-100k")
    assert ds.canonical_folds is not None
    splits = canonical_folds(ds.interactions, ds.canonical_folds)
    assert [(len(s.train), len(s.test)) for s in splits] == [(80_000, 20_000)] * 5


# ----------------------------------------------------------------------------- temporal


TEMPORAL_ROWS = [
    (1, 10, 1),  # row 0
    (2, 10, 2),  # row 1
    (1, 11, 3),  # row 2
    (2, 11, 3),  # row 3
    (3, 10, 4),  # row 4
    (1, 12, 5),  # row 5
    (2, 12, 6),  # row 6: 7th by time: its second, 6, is the cut-off
    (3, 12, 6),  # row 7: the same second -> train too
    (4, 10, 7),  # row 8: user 4 never in train -> dropped
    (1, 13, 8),  # row 9: item 13 never in train -> dropped when drop_unknown_items
]


def test_temporal_global_hand_worked_with_ties():
    df = frame(TEMPORAL_ROWS).iloc[[9, 3, 0, 7, 5, 1, 8, 2, 6, 4]]  # order must not matter
    # floor(0.7 * 10) = 7: the 7th row by time has timestamp 6, so the cut-off is 6 and row 7,
    # of the same second, is train too (the old rule sent it to test by its user_id)
    split = temporal_global(df, test_fraction=0.3)
    assert rows(split.train) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert rows(split.test) == [] and rows(split.dropped) == [8, 9]
    assert "dropped 2 test row(s): 1 of 1 user(s)" in split.notes[1]
    assert "the 8 of 10 rows at or before timestamp 6 (the fraction asks for 7)" in split.notes[0]
    assert split.time_cutoff == 6 and holdout_per_user(df, seed=0).time_cutoff is None

    keep_items = temporal_global(df, test_fraction=0.3, drop_unknown_items=False)
    assert rows(keep_items.test) == [9] and rows(keep_items.dropped) == [8]

    # 0.4: floor(0.6 * 10) = 6, the 6th row by time (row 5) is alone in its second
    six = temporal_global(df, test_fraction=0.4)
    assert rows(six.train) == [0, 1, 2, 3, 4, 5] and rows(six.test) == [6, 7]


def test_temporal_global_cut_off_second_goes_to_test_when_it_is_the_last():
    # 4 rows, timestamps 1, 2, 2, 2; 0.25 asks for 3 train rows, whose cut-off second 2 is the
    # last: train at or before 2 would leave no test row, so that second is test
    df = frame([(1, 10, 1), (1, 11, 2), (2, 10, 2), (2, 11, 2)])
    split = temporal_global(df, test_fraction=0.25, drop_unknown_items=False)
    assert rows(split.train) == [0] and rows(split.test) == [1]
    assert rows(split.dropped) == [2, 3]  # user 2 has no train row
    assert "the 1 of 4 rows before timestamp 2" in split.notes[0] and split.time_cutoff == 1
    with pytest.raises(DataError, match="all 2 rows have timestamp 5; a time cut-off"):
        temporal_global(frame([(1, 10, 5), (2, 10, 5)]), test_fraction=0.5)


def test_temporal_global_keeps_float_seconds_as_they_are():
    # 0.2 of 5 rows at 1.5 ... 5.5: the 4th row's 4.5 is the cut-off (truncating it to 4
    # would move that row to test)
    df = frame([(1, 10, 0), (1, 11, 0), (2, 10, 0), (3, 11, 0), (2, 11, 0)])
    df["timestamp"] = [1.5, 2.5, 3.5, 4.5, 5.5]
    split = temporal_global(df, test_fraction=0.2)
    assert rows(split.train) == [0, 1, 2, 3] and rows(split.test) == [4]
    assert split.time_cutoff == 4.5 and "at or before timestamp 4.5" in split.notes[0]


@PROPS
@given(df=frames(), fraction=st.sampled_from([0.2, 0.5]))
def test_temporal_global_properties(df, fraction):
    if df["timestamp"].nunique() == 1:
        with pytest.raises(ValueError, match="a time cut-off cannot split them"):
            temporal_global(df, test_fraction=fraction)
        return
    split = temporal_global(df, test_fraction=fraction)
    assert rows(pd.concat([split.train, split.test, split.dropped])) == list(range(len(df)))
    later = pd.concat([split.test, split.dropped])
    assert len(later) > 0
    # no second is split: every train row is strictly earlier than every later row
    assert split.train["timestamp"].max() < later["timestamp"].min()
    n_train = max(1, math.floor((1 - fraction) * len(df) + 1e-9))
    assert split.time_cutoff == split.train["timestamp"].max()
    if len(split.train) < n_train:  # only when the fraction's last second is the data's last
        assert set(later["timestamp"]) == {df["timestamp"].max()}
    # train is the fraction's rows plus the rest of their last second, or that second less
    cutoff = sorted(df["timestamp"])[n_train - 1]
    expected = df["timestamp"] <= cutoff
    if expected.all():
        expected = df["timestamp"] < cutoff
    assert rows(split.train) == sorted(df.loc[expected, "row"])
    assert set(split.test["user_id"]) <= set(split.train["user_id"])
    assert set(split.test["item_id"]) <= set(split.train["item_id"])


def test_temporal_last_n_ties_by_pair_hash():
    # user 1: item 5 at t=10, items 3 and 7 tie at t=20; user 2: 1 rating. The larger
    # pair_hash counts as later: pair_hash(1, 3) > pair_hash(1, 7), so item 3 is the last
    # (by item_id it was item 7).
    assert pair_hash(1, 3) > pair_hash(1, 7)
    df = frame([(1, 7, 20), (1, 5, 10), (1, 3, 20), (2, 1, 30)])
    one = temporal_last_n(df, n=1)
    assert pairs(one.test) == {(1, 3)}
    assert pairs(one.train) == {(1, 5), (1, 7), (2, 1)}
    two = temporal_last_n(df, n=2)
    assert pairs(two.test) == {(1, 7), (1, 3)}
    three = temporal_last_n(df, n=3)  # user 1 has exactly 3: stays in train
    assert len(three.test) == 0 and len(three.train) == 4
    # validation_carveout(how="temporal") orders the same way: user 1 keeps floor(0.7 * 3) = 2
    train, valid = validation_carveout(df, fraction=0.3, how="temporal")
    assert pairs(valid) == {(1, 3)} and pairs(train) == {(1, 5), (1, 7), (2, 1)}


@PROPS
@given(df=frames(), n=st.integers(1, 3))
def test_temporal_last_n_properties(df, n):
    split = temporal_last_n(df, n=n)
    assert rows(pd.concat([split.train, split.test])) == list(range(len(df)))
    count = df.groupby("user_id").size()
    assert split.test.groupby("user_id").size().to_dict() == {u: n for u in count[count > n].index}
    for user, test in split.test.groupby("user_id"):
        train = split.train[split.train["user_id"] == user]
        assert max(hash_key(train)) < min(hash_key(test))


def test_leave_last_one_out_hand_worked():
    df = frame([(1, 4, 5), (1, 2, 9), (1, 9, 9), (1, 1, 1), (2, 1, 1), (2, 2, 2)])
    split = leave_last_one_out(df)
    # t=9 tie between items 2 and 9: the larger pair_hash counts as later.
    later, earlier = (9, 2) if pair_hash(1, 9) > pair_hash(1, 2) else (2, 9)
    assert pairs(split.test) == {(1, later)}
    assert pairs(split.valid) == {(1, earlier)}
    assert pairs(split.train) == {(1, 4), (1, 1), (2, 1), (2, 2)}  # user 2 has < 3


@PROPS
@given(df=frames())
def test_leave_last_one_out_properties(df):
    split = leave_last_one_out(df)
    assert rows(pd.concat([split.train, split.valid, split.test])) == list(range(len(df)))
    count = df.groupby("user_id").size()
    eligible = {u: 1 for u in count[count >= 3].index}
    assert split.test.groupby("user_id").size().to_dict() == eligible
    assert split.valid.groupby("user_id").size().to_dict() == eligible
    for user in eligible:
        train, valid, test = (p[p["user_id"] == user] for p in split.parts().values())
        assert max(hash_key(train)) < hash_key(valid)[0] < hash_key(test)[0]


# ----------------------------------------------------------------------------- validation


def test_validation_carveout_per_user_and_temporal():
    df = random_frame(30, 20, 0.5, seed=3)
    train, valid = validation_carveout(df, fraction=0.2, seed=0)
    assert rows(pd.concat([train, valid])) == list(range(len(df)))
    n = df.groupby("user_id").size()
    assert train.groupby("user_id").size().to_dict() == np.floor(0.8 * n + 1e-9).to_dict()
    again, _ = validation_carveout(df, fraction=0.2, seed=0)
    pd.testing.assert_frame_equal(train, again)
    assert pairs(valid) != pairs(validation_carveout(df, fraction=0.2, seed=1)[1])

    train, valid = validation_carveout(df, fraction=0.2, how="temporal")
    for user, v in valid.groupby("user_id"):
        assert max(hash_key(train[train["user_id"] == user])) < min(hash_key(v))
    with pytest.raises(ValueError, match="needs a seed"):
        validation_carveout(df, fraction=0.2)


def test_validation_carveout_global_is_one_time_cut_off():
    """10 rows, one per second, fraction 0.3: the first 7 by time fit, the last 3 are
    validation, except a row whose user or item the fit never saw (as temporal_global)."""
    df = frame([(1, 10, 0), (2, 11, 1), (1, 11, 2), (2, 10, 3), (3, 12, 4), (1, 12, 5),
                (2, 12, 6), (1, 13, 7), (3, 10, 8), (4, 10, 9)])  # fmt: skip
    train, valid = validation_carveout(df, fraction=0.3, how="global")
    assert sorted(train["row"]) == [0, 1, 2, 3, 4, 5, 6]
    # rows 7 (item 13) and 9 (user 4) are unseen before the cut-off: in neither part
    assert valid["row"].tolist() == [8]
    assert train["timestamp"].max() < valid["timestamp"].min()
    # no seed needed, the same parts every call
    pd.testing.assert_frame_equal(validation_carveout(df, fraction=0.3, how="global")[0], train)
    with pytest.raises(ValueError, match="'per_user', 'temporal' or 'global'"):
        validation_carveout(df, fraction=0.3, how="random")


def test_carveout_how_follows_the_protocol():
    from metarec_lib.protocols import carveout_how

    assert carveout_how("topn-temporal") == "global"
    assert carveout_how("loo-temporal") == "temporal"
    assert carveout_how("topn-75-25") == carveout_how("rating-5fold") == "per_user"


def test_with_validation_keeps_the_other_fields():
    """A transfer split's source and a cold-start split's user sets survive the carve-out."""
    df = random_frame(30, 20, 0.5, seed=5)
    base = holdout_per_user(df, seed=0)
    cold = np.array([1, 2], dtype=np.int64)
    source = df.iloc[:5].reset_index(drop=True)
    marked = Split(base.train, base.test, name="x", seed=0, source=source, cold_users=cold,
                   valid_users=np.array([3], dtype=np.int64))  # fmt: skip
    split = with_validation(marked, fraction=0.25, seed=1)
    assert split.source is source
    np.testing.assert_array_equal(split.cold_users, cold)
    np.testing.assert_array_equal(split.valid_users, [3])


def test_with_validation_never_touches_test():
    df = random_frame(30, 20, 0.5, seed=4)
    base = holdout_per_user(df, seed=0)
    split = with_validation(base, fraction=0.25, seed=1)
    pd.testing.assert_frame_equal(split.test, base.test)
    assert rows(pd.concat([split.train, split.valid])) == rows(base.train)
    assert split.name == "holdout-per-user+valid-per_user" and split.seed == 0
    with pytest.raises(ValueError, match="already has a valid part"):
        with_validation(split, seed=1)


# ----------------------------------------------------------------------------- cold start


def coldstart_invariants(df: pd.DataFrame, cs: ColdStartSplit, min_query: int) -> None:
    users = set(df["user_id"])
    valid, test = set(cs.valid_users.tolist()), set(cs.test_users.tolist())
    train_users = set(cs.train["user_id"])
    assert not (valid & test) and not (train_users & (valid | test))
    assert valid | test | train_users <= users
    count = df.groupby("user_id").size()
    for group, support, query in ((test, cs.support, cs.query),
                                  (valid, cs.valid_support, cs.valid_query)):  # fmt: skip
        previous = None
        for k in cs.ks:
            eligible = {u for u in group if count[u] >= k + min_query}
            assert support[k].groupby("user_id").size().to_dict() == dict.fromkeys(eligible, k)
            assert not pairs(support[k]) & pairs(query[k])
            whole = df[df["user_id"].isin(eligible)]
            assert rows(pd.concat([support[k], query[k]])) == rows(whole)
            if previous is not None:  # nested: a user's smaller support is inside its larger
                assert {p for p in previous if p[0] in eligible} <= pairs(support[k])
            previous = pairs(support[k])


@PROPS
@given(
    df=frames(max_users=20, max_items=12, max_rows=120),
    seed=st.integers(0, 99),
    min_query=st.integers(1, 3),
)
def test_coldstart_properties(df, seed, min_query):
    n_users = df["user_id"].nunique()
    if n_users - math.floor(0.1 * n_users + 0.5) - math.floor(0.2 * n_users + 0.5) < 1:
        with pytest.raises(ValueError, match="meta-train"):
            coldstart_users(df, ks=(1, 2, 4), min_query=min_query, seed=seed)
        return
    cs = coldstart_users(df, ks=(1, 2, 4), min_query=min_query, seed=seed)
    coldstart_invariants(df, cs, min_query)
    kept = set(df["user_id"]) - set(cs.valid_users.tolist()) - set(cs.test_users.tolist())
    assert set(cs.train["user_id"]) == kept  # pool_fraction=1: every meta-train user
    assert rows(cs.train) == rows(df[df["user_id"].isin(kept)])


def test_coldstart_sizes_determinism_and_independence():
    df = random_frame(100, 60, 0.4, seed=5)
    cs = coldstart_users(df, seed=0)
    assert (len(cs.valid_users), len(cs.test_users), cs.train["user_id"].nunique()) == (10, 20, 70)
    coldstart_invariants(df, cs, 5)
    same = coldstart_users(df, seed=0)
    for k in cs.ks:
        pd.testing.assert_frame_equal(cs.support[k], same.support[k])
        pd.testing.assert_frame_equal(cs.valid_query[k], same.valid_query[k])
    other = coldstart_users(df, seed=1)
    assert set(other.test_users.tolist()) != set(cs.test_users.tolist())
    # supports are data: the same whatever ks, min_query or pool size a method asks for
    narrow = coldstart_users(df, ks=(3,), min_query=1, seed=0, pool_fraction=0.3)
    assert np.array_equal(narrow.test_users, cs.test_users)
    assert pairs(narrow.support[3]) == pairs(cs.support[3])
    assert narrow.train["user_id"].nunique() == 21  # round(0.3 * 70)
    assert set(narrow.train["user_id"]) < set(cs.train["user_id"])


def test_coldstart_rejects_bad_arguments():
    df = random_frame(10, 10, 0.8, seed=6)
    with pytest.raises(ValueError, match="fractions"):
        coldstart_users(df, fractions=(0.5, 0.1, 0.1), seed=0)
    with pytest.raises(ValueError, match="ks="):
        coldstart_users(df, ks=(0, 3), seed=0)
    with pytest.raises(ValueError, match="pool_fraction"):
        coldstart_users(df, pool_fraction=0.0, seed=0)


# ----------------------------------------------------------------------------- check / inputs


def test_split_check_catches_leaks():
    df = frame([(1, 1, 0), (1, 2, 0), (2, 1, 0)])
    with pytest.raises(SplitError, match=r"test: 1 .* also in train, e.g. user_id=1, item_id=2"):
        Split(df, df.iloc[[1]], name="bad").check()
    with pytest.raises(SplitError, match="valid: 1 .* also in train"):
        Split(df.iloc[:2], df.iloc[[2]], valid=df.iloc[[0]]).check()
    with pytest.raises(SplitError, match="duplicate"):
        Split(pd.concat([df, df.iloc[[0]]]), df.iloc[[]]).check()
    assert isinstance(SplitError("x"), ValueError)


def test_coldstart_check_catches_leaks():
    df = random_frame(30, 20, 0.6, seed=7)
    cs = coldstart_users(df, ks=(2,), min_query=2, seed=0)
    leaked = df[df["user_id"] == cs.test_users[0]]
    bad = ColdStartSplit(**{**vars(cs), "train": pd.concat([cs.train, leaked])})
    with pytest.raises(SplitError, match=f"meta-test user.*user_id={cs.test_users[0]}"):
        bad.check()
    short = cs.support[2].groupby("user_id").head(1)
    with pytest.raises(SplitError, match="support rows; expected k=2"):
        ColdStartSplit(**{**vars(cs), "support": {2: short}}).check()


def test_inputs_are_validated():
    df = frame([(1, 1, 0), (1, 1, 3)])
    with pytest.raises(DataError, match=r"duplicate.*user_id=1, item_id=1"):
        holdout_per_user(df, seed=0)
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        leave_last_one_out(df.drop(columns="timestamp"))
    with pytest.raises(DataError, match="'item_id' must be numeric"):
        kfold_ratings(df.assign(item_id=[1.0, np.nan]), seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_per_user(frame([(1, 1, 0)]), test_fraction=1.0, seed=0)


def test_split_summary_counts():
    df = frame([(1, 1, 0), (1, 2, 0), (2, 1, 0), (2, 3, 0)])
    split = Split(df.iloc[[0, 1, 2]], df.iloc[[3]], name="s")
    assert split_summary(split) == {
        "name": "s",
        "train_interactions": 3, "train_users": 2, "train_items": 2,
        "test_interactions": 1, "test_users": 1, "test_items": 1,
    }  # fmt: skip
    cs = coldstart_users(random_frame(20, 20, 0.7, seed=8), ks=(1, 2), min_query=1, seed=0)
    summary = split_summary(cs)
    assert summary["support_k2_interactions"] == 2 * summary["support_k2_users"]
    assert summary["test_users_total"] == 4 and summary["valid_users_total"] == 2
