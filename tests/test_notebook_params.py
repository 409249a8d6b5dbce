import pytest

from metarec_lib.notebook import validate_parameters

GOOD = dict(datasets=["synthetic"], seeds=[1, 2], smoke=True, results_dir="r", device="auto")


def test_good_parameters_pass():
    config = validate_parameters("10_x", **GOOD)
    assert config.out.as_posix() == "r/10_x" and config.seeds == [1, 2]


def test_good_parameters_start_the_executors_workers(monkeypatch):
    from metarec_lib import executors

    started = []
    monkeypatch.setattr(
        executors, "_DEFAULT", type("E", (), {"start": lambda self: started.append(1)})()
    )
    validate_parameters("10_x", **GOOD)
    assert started == [1]
    with pytest.raises(ValueError, match="duplicates"):
        validate_parameters("10_x", **{**GOOD, "seeds": [1, 1]})
    assert started == [1]  # bad parameters start nothing


@pytest.mark.parametrize(
    "change, message",
    [
        ({"datasets": ["ml-1m"]}, "unknown data set"),
        ({"datasets": "synthetic"}, "non-empty list"),
        ({"seeds": 42}, "list of integers"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"seeds": [1.5]}, "integers"),
        ({"smoke": "yes"}, "`smoke` must be True or False"),
        ({"strict": "no"}, "`strict` must be True or False"),
        ({"device": "tpu"}, "unknown device"),
        ({"models": ["EASY"], "known_models": ["EASE"]}, "unknown model"),
    ],
)
def test_bad_parameters_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        validate_parameters("10_x", **{**GOOD, **change})


def test_unavailable_data_set_is_skipped_with_a_notice_or_fails_when_strict(tmp_path, monkeypatch):
    import json

    from metarec_lib import notebook
    from metarec_lib.data import DataUnavailable

    real = notebook.load_dataset

    def fake(name, **options):
        if name == "ml-latest-small":
            raise DataUnavailable("ml-latest-small: tried data_dir (absent), cache (absent) ...")
        return real(name, **options)

    monkeypatch.setattr(notebook, "load_dataset", fake)
    params = {**GOOD, "datasets": ["synthetic", "ml-latest-small"], "results_dir": tmp_path}
    config = validate_parameters("00_x", **params)
    data = notebook.load_datasets(config)
    assert list(data) == ["synthetic"]
    notices = json.loads((tmp_path / "00_x" / "notices.json").read_text())
    assert notices[0]["dataset"] == "ml-latest-small" and "tried data_dir" in notices[0]["detail"]
    assert "skipped" in notebook.sources_markdown(data, config)

    strict = validate_parameters("00_x", **params, strict=True)
    with pytest.raises(DataUnavailable, match=r"^ml-latest-small: tried data_dir"):
        notebook.load_datasets(strict)


def test_smoke_cut_keeps_the_first_users_and_their_most_rated_items():
    import pandas as pd

    from metarec_lib.data.dataset import Dataset
    from metarec_lib.notebook import subsample_users

    inter = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 3, 3, 9],
        "item_id": [10, 20, 30, 20, 40, 30, 20, 50],
        "rating": 4.0, "timestamp": range(8),
    })  # fmt: skip
    items = pd.DataFrame(index=pd.Index([10, 20, 30, 40, 50], name="item_id"))
    ds = Dataset(name="t", interactions=inter, items=items, users=pd.DataFrame(),
                 rating_scale=(1.0, 5.0))  # fmt: skip
    cut = subsample_users(ds, 3, n_items=2)
    # Users 1-3 rated 20 three times, 30 twice, 10 and 40 once: items 20 and 30 stay.
    assert sorted(cut.interactions["item_id"].unique()) == [20, 30]
    assert sorted(cut.interactions["user_id"].unique()) == [1, 2, 3]
    assert list(cut.items.index) == [20, 30]
    # A tie goes to the lower id: with 3 items, 10 (once) beats 40 (once).
    assert sorted(subsample_users(ds, 3, n_items=3).interactions["item_id"].unique()) == [
        10,
        20,
        30,
    ]
    assert len(subsample_users(ds, 2).interactions) == 5  # no item cut
