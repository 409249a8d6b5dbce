import pytest

from metarec_lib.notebook import validate_parameters

GOOD = dict(datasets=["synthetic"], seeds=[1, 2], smoke=True, results_dir="r", device="auto")


def test_good_parameters_pass():
    config = validate_parameters("10_x", **GOOD)
    assert config.out.as_posix() == "r/10_x" and config.seeds == [1, 2]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"datasets": ["ml-1m"]}, "unknown data set"),
        ({"datasets": "synthetic"}, "non-empty list"),
        ({"seeds": 42}, "list of integers"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"seeds": [1.5]}, "integers"),
        ({"smoke": "yes"}, "True or False"),
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
    with pytest.raises(DataUnavailable):
        notebook.load_datasets(strict)
