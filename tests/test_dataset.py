import numpy as np
import pandas as pd
import pytest

from metarec_lib.data.dataset import (
    DataError,
    Dataset,
    interactions_digest,
    validate_interactions,
)


def frame(**overrides):
    base = {
        "user_id": [1, 1, 2],
        "item_id": [10, 20, 10],
        "rating": [4.0, 5.0, 1.0],
        "timestamp": [100, 200, 300],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_validate_coerces_types():
    out = validate_interactions(frame(user_id=["1", "1", "2"]), source="f.csv", rating_scale=(1, 5))
    assert out["user_id"].dtype == np.int64 and out["rating"].dtype == np.float64
    assert out["user_id"].tolist() == [1, 1, 2]


@pytest.mark.parametrize(
    "bad, column, words",
    [
        ({"user_id": [1, None, 2]}, "'user_id'", "non-integer"),
        ({"item_id": [1.5, 2, 3]}, "'item_id'", "non-integer"),
        ({"rating": [4.0, 6.0, 1.0]}, "'rating'", "outside the scale"),
        ({"timestamp": [100, "yesterday", 300]}, "'timestamp'", "unparseable"),
        ({"user_id": ["1", "inf", "2"]}, "'user_id'", "non-integer"),
        ({"timestamp": [100.0, 200.0, float("inf")]}, "'timestamp'", "unparseable"),
    ],
)
def test_validate_names_file_column_and_problem(bad, column, words):
    with pytest.raises(DataError) as err:
        validate_interactions(frame(**bad), source="ratings.csv", rating_scale=(1, 5))
    msg = str(err.value)
    assert "ratings.csv" in msg and column in msg and words in msg


def test_validate_rejects_a_repeated_pair_naming_it_and_its_row():
    # (1, 10) is rated at rows 0 and 2: a matrix would sum them, a split could part them
    bad = frame(user_id=[1, 2, 1], item_id=[10, 10, 10])
    with pytest.raises(DataError) as err:
        validate_interactions(bad, source="ratings.csv", rating_scale=(1, 5))
    msg = str(err.value)
    assert msg.startswith("ratings.csv: (user_id, item_id) = (1, 10) appears more than once")
    assert "(row 2, 1 repeat(s))" in msg and "drop_duplicate_interactions" in msg
    # the same item for another user, or the same user with another item, is no repeat
    assert len(validate_interactions(frame(), source="f", rating_scale=(1, 5))) == 3


def test_validate_missing_column():
    with pytest.raises(DataError, match=r"u\.data: missing column\(s\) \['timestamp'\]"):
        validate_interactions(
            frame().drop(columns="timestamp"), source="u.data", rating_scale=(1, 5)
        )


def test_digest_ignores_row_order_but_not_values():
    f = frame()
    assert interactions_digest(f) == interactions_digest(f.iloc[::-1])
    assert interactions_digest(f) != interactions_digest(frame(rating=[4.0, 5.0, 2.0]))


def test_dataset_digest_is_computed_once_and_travels_with_a_pickle(monkeypatch):
    import dataclasses
    import pickle

    import metarec_lib.data.dataset as dataset_module

    calls = []
    real = dataset_module.interactions_digest
    monkeypatch.setattr(dataset_module, "interactions_digest",
                        lambda f: calls.append(len(f)) or real(f))  # fmt: skip
    items = pd.DataFrame(index=pd.Index([10, 20], name="item_id"))
    users = pd.DataFrame(index=pd.Index([1, 2], name="user_id"))
    ds = Dataset("t", frame(), items, users, (1, 5))
    assert ds.digest == real(frame()) and ds.digest == ds.digest
    assert calls == [3]  # every cell's cache key asks; the table is sorted once
    assert pickle.loads(pickle.dumps(ds)).digest == ds.digest and calls == [3]
    # A derived data set is a new instance with its own digest.
    other = dataclasses.replace(ds, interactions=frame(rating=[4.0, 5.0, 2.0]))
    assert other.digest == real(frame(rating=[4.0, 5.0, 2.0])) != ds.digest
    assert calls == [3, 3]


def test_a_model_sees_the_tags_of_its_own_pairs_and_of_unrated_pairs_only():
    items = pd.DataFrame({"tags": ["x|y", "z", ""]}, index=pd.Index([10, 20, 30], name="item_id"))
    users = pd.DataFrame(index=pd.Index([1, 2, 3], name="user_id"))
    events = pd.DataFrame({"user_id": [1, 2, 3, 1, 9], "item_id": [10, 10, 10, 20, 10],
                           "tag": ["x", "y", "w", "z", "v"]})  # fmt: skip
    # Rated pairs: (1, 10), (1, 20), (2, 10). User 3 tagged item 10 without rating it; user 9
    # is not in the catalogue.
    ds = Dataset("t", frame(), items, users, (1, 5), tag_events=events)
    enc = ds.encoder()
    assert len(enc.tag_events) == 4  # user 9's event dropped
    # Train (1, 10) and (2, 10); (1, 20) held out: its tag "z" is not seen, the unrated
    # pair's "w" is.
    train = enc.encode(ds.interactions.iloc[[0, 2]])
    assert train.items["tags"].tolist() == ["w|x|y", "", ""]
    held_out = enc.encode(ds.interactions.iloc[[1]])
    assert held_out.items["tags"].tolist() == ["w", "z", ""]
    assert enc.encode(ds.interactions).items["tags"].tolist() == ["w|x|y", "z", ""]
    # Without tagging events the items' tags pass through as they are.
    plain = Dataset("t", frame(), items, users, (1, 5)).encoder()
    assert plain.encode(ds.interactions.iloc[[0]]).items["tags"].tolist() == ["x|y", "z", ""]


def test_encoder_round_trip_and_catalogue():
    items = pd.DataFrame({"title": ["a", "b", "c"]}, index=pd.Index([10, 20, 30], name="item_id"))
    users = pd.DataFrame(index=pd.Index([1, 2], name="user_id"))
    ds = Dataset("t", frame(), items, users, (1, 5))
    enc = ds.encoder()
    # Item 30 is never rated but belongs to the catalogue.
    assert enc.n_items == 3 and enc.n_users == 2
    inter = enc.encode(ds.interactions)
    assert inter.frame["item"].tolist() == [0, 1, 0]
    assert enc.item_ids[inter.frame["item"]].tolist() == [10, 20, 10]
    m = inter.matrix()
    assert m.shape == (2, 3) and m[0, 1] == 5.0 and m[1, 0] == 1.0
    assert inter.items["title"].tolist() == ["a", "b", "c"]
    with pytest.raises(DataError, match="item_id"):
        enc.item_index(np.array([99]))


def test_a_time_cut_off_keeps_the_tags_given_after_it_from_the_fit():
    items = pd.DataFrame({"tags": ["", "", ""]}, index=pd.Index([10, 20, 30], name="item_id"))
    users = pd.DataFrame(index=pd.Index([1, 2, 3], name="user_id"))
    # (1, 10) rated at 100 and tagged "early" at 150 and "late" at 250; user 3 tagged the
    # unrated item 30 "old" at 120 and "new" at 400
    events = pd.DataFrame({"user_id": [1, 1, 3, 3], "item_id": [10, 10, 30, 30],
                           "tag": ["early", "late", "old", "new"],
                           "timestamp": [150, 250, 120, 400]})  # fmt: skip
    ds = Dataset("t", frame(), items, users, (1, 5), tag_events=events)
    enc = ds.encoder()
    train = ds.interactions.iloc[[0]]
    assert enc.encode(train).items["tags"].tolist() == ["early|late", "", "new|old"]
    cut = enc.encode(train, tags_until=200).items["tags"].tolist()
    assert cut == ["early", "", "old"]
    at = enc.encode(train, tags_until=250).items["tags"].tolist()  # "at or before": kept
    assert at == ["early|late", "", "old"]
    untimed = events.drop(columns="timestamp")
    no_time = Dataset("t", frame(), items, users, (1, 5), tag_events=untimed)
    with pytest.raises(ValueError, match="tags_until needs tag events with a 'timestamp'"):
        no_time.encoder().encode(train, tags_until=200)
    gap = Dataset("t", frame(), items, users, (1, 5),
                  tag_events=events.assign(timestamp=[150, None, 120, 400]))  # fmt: skip
    with pytest.raises(DataError, match="tag_events: column 'timestamp'.*1 missing"):
        gap.encoder()
