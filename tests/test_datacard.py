import numpy as np
import pandas as pd
import pytest

from metarec_lib import datacard
from metarec_lib.data.dataset import Dataset


def test_gini_hand_worked():
    # counts 0,0,0,4: Gini = (2*1-5)*0 + ... = (2*4-4-1)*4 / (4*4) = 12/16 = 0.75
    assert datacard.gini(np.array([4, 0, 0, 0])) == pytest.approx(0.75)
    assert datacard.gini(np.array([3, 3, 3])) == pytest.approx(0.0)


def test_summary_counts():
    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 3],
            "item_id": [1, 2, 3, 1, 1],
            "rating": [5.0, 3, 4, 1, 2],
            "timestamp": [0, 1, 2, 3, 86400],
        }
    )
    items = pd.DataFrame(
        {"genres": ["A|B", "B", ""], "title": ["x", "y", "z"]},
        index=pd.Index([1, 2, 3], name="item_id"),
    )
    ds = Dataset("tiny", inter, items, pd.DataFrame(index=pd.Index([], name="user_id")), (1, 5))
    card = datacard.summary(ds, ks=(1,), min_query=2)
    assert card["interactions"] == 5 and card["users"] == 3 and card["items_rated"] == 3
    assert card["density"] == pytest.approx(5 / 9)
    assert card["users_with_k1_plus_2"] == 1  # only user 1 has >= 3 ratings
    assert card["share_of_ratings_top20pct_items"] == pytest.approx(3 / 5)  # item 1: 3 ratings
    assert card["last_rating"] == "1970-01-02"
    genres = datacard.genre_distribution(ds)
    assert genres.to_dict() == {"B": pytest.approx(2 / 3), "A": pytest.approx(1 / 3)}
