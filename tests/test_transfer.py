"""Transfer data: title matching, genre/synthetic domains, target-fraction splits, source ids."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from metarec_lib import transfer
from metarec_lib.data.dataset import DataError, encode_source
from metarec_lib.splits import SplitError, holdout_per_user
from metarec_lib.transfer import (
    FRACTIONS,
    GENRE,
    GENRE_SOURCE,
    GENRE_TARGET,
    SYNTHETIC,
    SYNTHETIC_TARGET_DOMAIN,
    XDATA,
    TransferSetting,
    alternative_keys,
    genre_domain,
    genre_setting,
    match_items,
    match_report,
    normalise_title,
    parse_protocol,
    protocol_name,
    synthetic_setting,
    target_fraction_split,
    xdata_setting,
)

SMALL = {"n_users": 150, "n_items": 120, "density": 0.2, "min_ratings": 10}
# Measured: 1271 of ML-100K's 1682 movies (75.6%) match ml-latest-small; 1245 in pass 1.
MIN_TARGET_RATE = 0.74


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user_id"].tolist(), frame["item_id"].tolist(), strict=True))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def movielens():
    if not os.environ.get("METAREC_DATA_DIR"):
        pytest.skip("METAREC_DATA_DIR is not set (MovieLens files)")
    from metarec_lib.data import load_dataset

    return load_dataset("ml-100k"), load_dataset("ml-latest-small")


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_setting(0.5, seed=3, **SMALL)


@pytest.fixture(scope="module")
def genre(movielens):
    return genre_setting(movielens[0])


@pytest.fixture(scope="module")
def xdata(movielens):
    return xdata_setting(*movielens)


@pytest.fixture(params=["synthetic", "genre", "xdata"])
def setting(request) -> TransferSetting:
    return request.getfixturevalue(request.param)


# ----------------------------------------------------------------------------- titles


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Usual Suspects, The (1995)", "The Usual Suspects (1995)"),
        ("Fish Called Wanda, A (1988)", "A Fish Called Wanda (1988)"),
        ("Awfully Big Adventure, An (1995)", "An Awfully Big Adventure (1995)"),
        ("Misérables, Les (1995)", "Les Miserables (1995)"),
        ("Cérémonie, La (1995)", "La Ceremonie (1995)"),
        ("Postino, Il (1994)", "Il Postino (1994)"),
        ("Avventura, L' (1960)", "L'Avventura (1960)"),
        ("Mariachi, El (1992)", "El Mariachi (1992)"),
        ("Blechtrommel, Die (1979)", "Blechtrommel (1979)"),
        ("Seven (Se7en) (1995)", "Seven (a.k.a. Se7en) (1995)"),
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
         "The City of Lost Children (1995)"),
        ("Truth About Cats & Dogs, The (1996)", "The Truth About Cats and Dogs (1996)"),
        ("Schindler's List (1993)", "Schindlers  List (1993)"),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)",
         "Land Before Time III - The Time of the Great Giving (1995)"),
    ],
)  # fmt: skip
def test_spellings_of_one_movie_share_key_and_year(a, b):
    assert normalise_title(a) == normalise_title(b)


def test_normalise_title_hand_worked_values():
    assert normalise_title("Usual Suspects, The (1995)") == ("usual suspects", 1995)
    assert normalise_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "city of lost children",
        1995,
    )
    assert normalise_title("Die Hard (1988)") == ("die hard", 1988)  # not a German article
    assert normalise_title("(500) Days of Summer (2009)") == ("500 days of summer", 2009)
    assert normalise_title("Babylon 5") == ("babylon 5", None)
    assert normalise_title("Hamlet (1990)")[0] == normalise_title("Hamlet (1996)")[0]
    assert normalise_title("Hamlet (1990)") != normalise_title("Hamlet (1996)")
    assert normalise_title("Crow, The (1994)") != normalise_title("Crown, The (1994)")
    with pytest.raises(ValueError, match="title"):
        normalise_title(None)  # type: ignore[arg-type]


def test_alternative_keys_drop_aka_and_tags():
    title = "Léon: The Professional (a.k.a. The Professional) (Léon) (1994)"
    assert normalise_title(title) == ("leon the professional", 1994)
    assert alternative_keys(title) == ("professional", "leon")
    assert alternative_keys("Land Before Time III (1995) (V)") == ()
    assert alternative_keys("Toy Story (1995)") == ()


def test_match_items_on_hand_made_frames():
    source = pd.DataFrame(
        {
            "title": [
                "Usual Suspects, The (1995)",  # 1 -> 10: trailing vs leading article
                "Hamlet (1996)",  # 2: target's Hamlet is 1990
                "Chasing Amy (1997)",  # 3: twice in target, ambiguous
                "Dear Diary (Caro Diario) (1994)",  # 4 -> 14: alternative titles (pass 2)
                "Misérables, Les (1995)",  # 5 -> 15: target's year from its year column
                "Babylon 5",  # 6: no year on either side
                "Crash (1996)",  # 7, 8: twice in source, ambiguous
                "Crash (1996)",
            ],
            "genres": "Drama",
        },
        index=pd.Index([1, 2, 3, 4, 5, 6, 7, 8], name="item_id"),
    )
    target = pd.DataFrame(
        {
            "title": [
                "The Usual Suspects (1995)",
                "Hamlet (1990)",
                "Chasing Amy (1997)",
                "Chasing Amy (1997)",
                "Caro Diario (Dear Diary) (1994)",
                "Les Miserables",
                "Babylon 5",
                "Crash (1996)",
                "Heat (1995)",
                "Toy Story (1995)",
            ],
            "year": pd.array([1995, 1990, 1997, 1997, 1994, 1995, None, 1996, 1995, 1995], "Int64"),
        },
        index=pd.Index([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], name="item_id"),
    )
    matches = match_items(source, target)
    assert list(matches.columns) == ["source_item_id", "target_item_id"]
    assert matches.to_numpy().tolist() == [[1, 10], [4, 14], [5, 15]]
    assert matches.dtypes.tolist() == [np.int64, np.int64]
    report = match_report(matches, source, target)
    assert report == {
        "source_items": 8,
        "target_items": 10,
        "matched": 3,
        "source_rate": 3 / 8,
        "target_rate": 3 / 10,
    }
    # an item_id column works as well as the index
    assert match_items(source.reset_index(), target).equals(matches)
    with pytest.raises(DataError, match="'title'"):
        match_items(source.drop(columns="title"), target)


def test_match_of_the_real_data_is_one_to_one_and_above_the_measured_rate(movielens):
    ml100k, latest = movielens
    matches = match_items(latest.items, ml100k.items)
    assert matches["source_item_id"].is_unique and matches["target_item_id"].is_unique
    assert matches["source_item_id"].isin(latest.items.index).all()
    assert matches["target_item_id"].isin(ml100k.items.index).all()
    report = match_report(matches, latest.items, ml100k.items)
    assert report["target_items"] == 1682 and report["source_items"] == 9742
    assert report["target_rate"] >= MIN_TARGET_RATE
    by_target = matches.set_index("target_item_id")["source_item_id"]
    assert by_target[1] == 1  # Toy Story (1995)
    assert by_target[12] == 50  # Usual Suspects, The (1995)
    assert 246 not in by_target.index and 268 not in by_target.index  # Chasing Amy, twice


# ----------------------------------------------------------------------------- genres


def test_genre_rule_on_a_hand_made_frame():
    items = pd.DataFrame(
        {
            "genres": [
                "Action|Drama",
                "Drama|Romance",
                "",
                "unknown",
                "Sci-Fi",
                "Comedy|Western",
                None,
                "Horror",
            ]
        },
        index=pd.Index([5, 3, 9, 1, 2, 8, 7, 4], name="item_id"),
    )
    domain = genre_domain(items)
    assert domain.index.equals(items.index)
    a, d = GENRE_TARGET, GENRE_SOURCE
    assert domain.tolist() == [a, d, d, d, a, a, d, d]
    with pytest.raises(DataError, match="'genres'"):
        genre_domain(items.rename(columns={"genres": "genre"}))


def test_genre_domains_of_ml100k_are_disjoint_and_cover_it(movielens, genre):
    ml100k = movielens[0]
    target_items = set(genre.target.items.index)
    source_items = set((-genre.source["item_id"]).tolist())
    assert len(target_items) == 619 and len(source_items) == 1063
    assert not target_items & source_items
    assert target_items | source_items == set(ml100k.items.index)
    assert set(genre.target.interactions["item_id"]) <= target_items
    assert len(genre.target.interactions) + len(genre.source) == len(ml100k.interactions)
    assert genre.target.name == "ml-100k" and genre.shared == "users"
    assert set(genre.source["user_id"]) <= set(genre.target.users.index)


def test_synthetic_setting_splits_items_by_domain(synthetic):
    target = synthetic.target
    assert target.name == "synthetic" and synthetic.relatedness == 0.5
    assert (target.items["domain"] == SYNTHETIC_TARGET_DOMAIN).all()
    assert (target.interactions["domain"] == SYNTHETIC_TARGET_DOMAIN).all()
    assert len(target.items) == SMALL["n_items"] // 2
    assert (synthetic.source["item_id"] < 0).all() and (synthetic.source["user_id"] > 0).all()
    assert not set(-synthetic.source["item_id"]) & set(target.items.index)
    assert list(synthetic.source.columns) == ["user_id", "item_id", "rating", "timestamp"]
    with pytest.raises(ValueError, match="n_domains"):
        synthetic_setting(0.5, n_domains=3)


# ----------------------------------------------------------------------------- splits


def test_target_fraction_split_invariants(setting):
    target = setting.target.interactions
    base = holdout_per_user(target, test_fraction=0.25, seed=0)
    splits = {f: target_fraction_split(setting, f, seed=0) for f in (0.01, 0.1, 0.5, 1.0)}
    previous: set[tuple[int, int]] = set()
    source = pairs(setting.source)
    for f, split in splits.items():
        assert split.name == protocol_name(setting.name, f, setting.relatedness)
        pd.testing.assert_frame_equal(split.test, base.test)
        assert len(split.train) == max(1, math.floor(f * len(base.train) + 1e-9))
        train, test = pairs(split.train), pairs(split.test)
        assert not train & test and not test & source and not train & source
        assert previous <= train  # nested
        previous = train
        assert split.source is setting.source
    pd.testing.assert_frame_equal(splits[1.0].train, base.train)
    cold = set(splits[0.01].test["user_id"]) - set(splits[0.01].train["user_id"])
    assert cold and any("no target training rows" in n for n in splits[0.01].notes)
    other = target_fraction_split(setting, 0.5, seed=1)
    assert pairs(other.test) != pairs(splits[0.5].test)
    assert pairs(other.train) != pairs(splits[0.5].train)
    again = target_fraction_split(setting, 0.5, seed=0)
    pd.testing.assert_frame_equal(again.train, splits[0.5].train)


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_fractions_are_refused(synthetic, fraction):
    with pytest.raises(ValueError, match="fraction"):
        target_fraction_split(synthetic, fraction, seed=0)


def test_bad_seed_is_refused(synthetic):
    with pytest.raises(ValueError, match="seed"):
        target_fraction_split(synthetic, 0.5, seed=np.random.default_rng(0))  # type: ignore[arg-type]


def test_a_source_sharing_a_target_pair_is_refused(synthetic):
    leaky = TransferSetting(
        SYNTHETIC,
        synthetic.target,
        synthetic.target.interactions[["user_id", "item_id", "rating", "timestamp"]].head(50),
        "users",
        relatedness=0.5,
    )
    with pytest.raises(SplitError, match="also in the source"):
        target_fraction_split(leaky, 0.5, seed=0)


# ----------------------------------------------------------------------------- source ids


@pytest.mark.parametrize("name", ["synthetic", "genre"])
def test_encode_source_shares_users(request, name):
    setting = request.getfixturevalue(name)
    split = target_fraction_split(setting, 0.1, seed=0)
    enc = setting.target.encoder()
    domain = encode_source(split.source, enc)
    users = np.unique(setting.source["user_id"])
    assert setting.shared == "users"
    assert np.array_equal(domain.user_to_target, enc.user_index(users))
    assert (domain.user_to_target >= 0).all()
    assert len(domain.item_to_target) == setting.source["item_id"].nunique()
    assert (domain.item_to_target == -1).all()
    assert len(domain.interactions) == len(setting.source)


def test_encode_source_shares_matched_items(movielens, xdata):
    ml100k, latest = movielens
    split = target_fraction_split(xdata, 0.1, seed=0)
    enc = xdata.target.encoder()
    domain = encode_source(split.source, enc)
    assert xdata.shared == "items"
    assert len(domain.user_to_target) == 610 and (domain.user_to_target == -1).all()
    matches = match_items(latest.items, ml100k.items)
    rated = matches[matches["source_item_id"].isin(latest.interactions["item_id"])]
    shared = domain.item_to_target >= 0
    assert shared.sum() == len(rated) == 1270
    assert (~shared).sum() == latest.interactions["item_id"].nunique() - len(rated)
    expected = np.sort(enc.item_index(rated["target_item_id"]))
    assert np.array_equal(np.sort(domain.item_to_target[shared]), expected)
    # the source's Toy Story (latest movieId 1) carries ML-100K item 1's id
    toy = xdata.source[latest.interactions["item_id"].to_numpy() == 1]
    assert (toy["item_id"] == 1).all() and len(toy) > 0


# ----------------------------------------------------------------------------- names


def test_protocol_names_round_trip():
    assert protocol_name(GENRE, 0.01) == "xdomain-genre@frac=0.01"
    assert protocol_name(SYNTHETIC, 0.1, 0.5) == "xdomain-synthetic@rel=0.5,frac=0.1"
    assert protocol_name(XDATA, 1) == "xdata-latest-to-100k@frac=1.0"
    for fraction in FRACTIONS:
        for name, rel in ((XDATA, None), (GENRE, None), (SYNTHETIC, 0.0), (SYNTHETIC, 0.75)):
            assert parse_protocol(protocol_name(name, fraction, rel)) == (name, fraction, rel)


@pytest.mark.parametrize(
    "bad",
    [
        "xdomain-genre",
        "xdomain-genre@frac=0.0",
        "xdomain-genre@frac=1.5",
        "xdomain-genre@frac=0.10",
        "xdomain-genre@frac=abc",
        "xdomain-genre@rel=0.5,frac=0.1",
        "xdomain-synthetic@frac=0.1",
        "xdomain-synthetic@rel=2.0,frac=0.1",
        "topn-75-25@frac=0.1",
        "",
    ],
)
def test_bad_protocol_names_are_refused(bad):
    with pytest.raises(ValueError, match="parse_protocol|protocol_name"):
        parse_protocol(bad)


def test_protocol_name_refuses_bad_arguments():
    with pytest.raises(ValueError, match="relatedness"):
        protocol_name(SYNTHETIC, 0.1)
    with pytest.raises(ValueError, match="relatedness"):
        protocol_name(GENRE, 0.1, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        protocol_name(GENRE, 0.0)
    with pytest.raises(ValueError, match="setting_name"):
        protocol_name("xdomain-books", 0.1)


def test_synthetic_feedback_is_the_liked_pairs_so_relatedness_changes_it():
    """The generator picks rated items by popularity alone: the setting keeps ratings >= 4, so
    which pairs a model sees depends on taste, and so on the domains' relatedness."""
    low = transfer.synthetic_setting(0.0, **SMALL)
    high = transfer.synthetic_setting(1.0, **SMALL)
    for setting in (low, high):
        assert setting.target.interactions["rating"].min() >= transfer.SYNTHETIC_LIKED_AT
        assert setting.source["rating"].min() >= transfer.SYNTHETIC_LIKED_AT
    pairs = [set(zip(s.target.interactions["user_id"], s.target.interactions["item_id"],
                     strict=True)) for s in (low, high)]  # fmt: skip
    assert pairs[0] != pairs[1]
