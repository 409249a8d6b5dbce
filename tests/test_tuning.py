import numpy as np
import pytest

from metarec_lib.models.popularity import MostPop
from metarec_lib.testing import checkerboard
from metarec_lib.tuning import Choice, LogUniform, Uniform, configurations, random_search


def test_small_discrete_space_is_a_full_grid():
    grid = configurations({"a": Choice((1, 2)), "b": Choice(("x", "y", "z"))}, budget=20, seed=0)
    assert len(grid) == 6 and {(c["a"], c["b"]) for c in grid} == {
        (a, b) for a in (1, 2) for b in "xyz"
    }


def test_random_draws_are_seeded_distinct_and_in_range():
    space = {"reg": LogUniform(1e-3, 10.0), "k": LogUniform(5, 500, integer=True),
             "w": Uniform(0.0, 1.0)}  # fmt: skip
    a, b = configurations(space, 20, seed=1), configurations(space, 20, seed=1)
    assert a == b and a != configurations(space, 20, seed=2)
    assert len({tuple(sorted(c.items())) for c in a}) == 20
    assert all(1e-3 <= c["reg"] <= 10 and 5 <= c["k"] <= 500 and isinstance(c["k"], int)
               for c in a)  # fmt: skip


def test_random_search_picks_the_best_validation_score():
    train, _ = checkerboard()

    # The score is a known function of the parameter: best at shrinkage closest to 7.
    result = random_search(
        MostPop, {"shrinkage": Choice((0.0, 3.0, 7.0, 20.0))}, train, train,
        lambda model, valid: -abs(model.params["shrinkage"] - 7.0), progress=False,
    )  # fmt: skip
    assert result.best == {"shrinkage": 7.0} and result.best_score == 0.0
    assert len(result.trials) == 4 and (result.trials["fit_seconds"] >= 0).all()
    lowest = random_search(
        MostPop, {"shrinkage": Choice((0.0, 3.0, 7.0, 20.0))}, train, train,
        lambda model, valid: abs(model.params["shrinkage"] - 7.0), higher_is_better=False,
        progress=False,
    )  # fmt: skip
    assert lowest.best == {"shrinkage": 7.0}


def test_all_nan_scores_is_an_error():
    train, _ = checkerboard()
    with pytest.raises(RuntimeError, match="NaN"):
        random_search(MostPop, {"shrinkage": Choice((1.0,))}, train, train,
                      lambda m, v: np.nan, progress=False, desc="x")  # fmt: skip


def test_a_diverging_configuration_is_a_failed_trial_not_a_crash():
    train, _ = checkerboard()

    class Diverges(MostPop):
        name = "Diverges"

        def _fit(self, train, *, valid, seed):
            if self.params["shrinkage"] > 50:
                raise FloatingPointError("training loss is nan")
            super()._fit(train, valid=valid, seed=seed)

    result = random_search(lambda **c: Diverges(**c), {"shrinkage": Choice((0.0, 100.0))},
                           train, train, lambda m, v: 1.0, budget=2, progress=False)  # fmt: skip
    assert result.best == {"shrinkage": 0.0}
    assert np.isnan(result.trials.set_index("shrinkage").loc[100.0, "score"])
    with pytest.raises(RuntimeError, match="NaN"):
        random_search(lambda **c: Diverges(**c), {"shrinkage": Choice((100.0,))}, train, train,
                      lambda m, v: 1.0, budget=1, progress=False)  # fmt: skip
