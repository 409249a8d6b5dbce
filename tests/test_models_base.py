import numpy as np
import pytest

from metarec_lib.hashing import pair_hash
from metarec_lib.models.base import ClipsRatings, resolve_device
from metarec_lib.models.popularity import MostPop, Random
from metarec_lib.models.registry import get_model, model_class, model_names, torch_model_names
from metarec_lib.testing import (
    capped_model,
    check_recommender,
    checkerboard,
    gpu_training_sets,
    score_gap,
    training_set_for,
)


@pytest.mark.parametrize("make", [Random, MostPop])
def test_sanity_floors_pass_the_contract(make):
    check_recommender(make, learns=False)


def test_mostpop_ranks_by_training_count_and_excludes_seen():
    train, _ = checkerboard()
    model = MostPop().fit(train)
    counts = np.bincount(train.frame["item"], minlength=train.n_items)
    top, scores = model.recommend(np.array([0]), k=train.n_items)
    seen = set(train.matrix()[0].indices)
    ranked = [i for i in top[0] if i >= 0]
    assert set(ranked) == set(range(train.n_items)) - seen
    assert all(counts[a] >= counts[b] for a, b in zip(ranked, ranked[1:], strict=False))
    # Equal counts: the lower pair_hash(user 0, item) first.
    for a, b in zip(ranked, ranked[1:], strict=False):
        if counts[a] == counts[b]:
            assert pair_hash(0, a) < pair_hash(0, b)
    assert (top[0][len(ranked) :] == -1).all()


def test_recommend_breaks_ties_by_each_users_own_id_whatever_the_batch():
    # Every count equal (one rating per item, by 12 users): MostPop's scores all tie, so each
    # list is the user's lowest pair_hash(user, item) among the items it has not seen.
    import pandas as pd

    from metarec_lib.data.dataset import Interactions

    frame = pd.DataFrame({"user": np.arange(12), "item": np.arange(12), "rating": 4.0})
    model = MostPop().fit(Interactions(frame, n_users=12, n_items=12))
    every, _ = model.recommend(np.arange(12), k=3)
    for u in (0, 3, 7):
        alone, _ = model.recommend(np.array([u]), k=3)
        np.testing.assert_array_equal(alone[0], every[u])  # not the order of row 0 of a batch
        ranked = [i for i in np.argsort(pair_hash(u, np.arange(12))) if i != u][:3]
        assert every[u].tolist() == ranked
    smaller, _ = model.recommend(np.arange(12), k=3, batch_size=5)
    np.testing.assert_array_equal(smaller, every)


def test_mostpop_predicts_shrunk_item_mean():
    train, _ = checkerboard()
    model = MostPop(shrinkage=2.0).fit(train)
    f = train.frame
    mu = f["rating"].mean()
    item = int(f["item"].iloc[0])
    r = f.loc[f["item"] == item, "rating"]
    expected = (r.sum() + 2.0 * mu) / (len(r) + 2.0)
    assert model.predict(np.array([3]), np.array([item]))[0] == pytest.approx(expected)


def test_unknown_hyperparameter_is_named():
    with pytest.raises(TypeError, match="shrinkag"):
        MostPop(shrinkag=3)


def test_registry_and_clone():
    assert {"Random", "MostPop"} <= set(model_names())
    model = get_model("MostPop", shrinkage=5.0)
    twin = model.clone(shrinkage=1.0)
    assert twin.params == {"shrinkage": 1.0} and model.params == {"shrinkage": 5.0}
    with pytest.raises(KeyError, match="known models"):
        get_model("NoSuchModel")


def test_recommend_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        MostPop().recommend(np.array([0]), 3)


def test_the_gpu_capable_models_are_the_pytorch_trained_ones():
    """Every model trained by gradient steps in PyTorch, and no other (the NumPy/SciPy models
    and BiasedMF's closed-form ALS steps never touch a GPU)."""
    assert torch_model_names() == [
        "BPR", "CFGAN", "CL4SRec", "Caser", "EMCDR", "ESMM", "FOMAML", "FrozenFinetune",
        "GRU4Rec", "JointTraining", "MAML", "MMoE", "MeLU", "NeuMF", "PLE", "PretrainAdapt",
        "PretrainFinetune", "Reptile", "SASRec", "SVDpp", "SharedBottom", "SingleTask",
        "SourceOnly", "TargetOnly",
    ]  # fmt: skip


def test_compute_device_is_the_cpu_for_models_without_pytorch():
    assert model_class("EASE")(device="cuda").compute_device() == "cpu"
    assert model_class("SASRec")(device="cuda:1").compute_device() == "cuda:1"
    assert model_class("BPR")(device="auto").compute_device() == resolve_device("auto")


def test_gpu_training_sets_and_capped_models():
    """Cross-domain models get the set with a source; no test pair is in its train part; every
    pass count is capped, none raised."""
    sets = gpu_training_sets(40, 50, 0.2, setting={"n_users": 40, "n_items": 50}, seed=0)
    assert sets["single"][0].source is None and sets["cross-domain"][0].source is not None
    for train, test in sets.values():
        pairs = lambda d: set(zip(d.frame["user"], d.frame["item"], strict=True))  # noqa: E731
        assert len(test) and not pairs(train) & pairs(test)
    assert [training_set_for(n) for n in ("EMCDR", "TargetOnly", "SASRec")] == [
        "cross-domain", "single", "single"]  # fmt: skip
    emcdr = capped_model("EMCDR", "cpu", 2)
    assert (emcdr.params["epochs"], emcdr.params["source_epochs"]) == (2, 2)
    assert capped_model("EMCDR", "cpu", 10**6).params["epochs"] == emcdr.defaults["epochs"]


def test_score_gap_is_the_largest_difference_over_the_references_largest_magnitude():
    reference = np.array([[1.0, -4.0], [2.0, 0.0]])
    other = np.array([[1.0, -3.0], [2.0, 0.5]])
    assert score_gap(reference, other) == 0.25  # |(-3) - (-4)| = 1 over |-4|
    assert score_gap(other, reference) == 1 / 3  # the same difference over |-3|
    assert score_gap(reference, reference) == 0.0
    assert score_gap(np.zeros(3), np.array([0.0, 1e-13, 0.0])) == pytest.approx(0.1)


def test_device_auto_resolves(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert model_class("BPR")(device="auto").compute_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_every_rating_model_clips_its_predictions_to_the_training_range_one_way():
    """A model that predicts ratings clips them through `ClipsRatings` (so `predict` is
    `clip_ratings(predict_raw)` everywhere) and no mixin is shadowed by another base."""
    raters = [n for n in model_names() if model_class(n).predicts_ratings]
    assert {"BiasedMF", "SVDpp", "ContentRegression", "MAML", "MMoE", "ESMM"} <= set(raters)
    for name in raters:
        cls = model_class(name)
        assert issubclass(cls, ClipsRatings), name
        assert cls.predict is ClipsRatings.predict and cls.clip_ratings is ClipsRatings.clip_ratings

    model = model_class("BiasedMF")()
    model.rating_range_ = (1.0, 5.0)
    model.predict_raw = lambda users, items: np.array([0.5, 3.25, 7.0])
    assert model.predict([0, 0, 0], [0, 1, 2]).tolist() == [1.0, 3.25, 5.0]
