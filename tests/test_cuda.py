"""Every GPU-capable model on CUDA (skipped without a GPU): it trains there, ranks there like
its CPU copy does, the same seed gives the same scores, and a pickle loads on the CPU.

CI has no GPU; these run where one is present (`make test` on a GPU machine, or
`pytest tests/test_cuda.py`). The data are small synthetic sets, so each model takes seconds.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from metarec_lib.costs import measure
from metarec_lib.data.dataset import Interactions, encode_source
from metarec_lib.data.synthetic import generate_synthetic
from metarec_lib.metrics import topk_overlap
from metarec_lib.models.base import Recommender
from metarec_lib.models.registry import model_class, torch_model_names
from metarec_lib.splits import holdout_per_user
from metarec_lib.transfer import synthetic_setting, target_fraction_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SIZE = {"n_users": 300, "n_items": 400}
EPOCHS = 2  # every pass count a model has (epochs, source_epochs) is capped here


@pytest.fixture(scope="module")
def data() -> dict[str, Interactions]:
    """Two training sets: "single", a synthetic 75/25 train part, and "cross-domain", a small
    synthetic transfer setting's target train part with its source domain."""
    ds = generate_synthetic(**SIZE, density=0.1, seed=0)
    single = ds.encoder().encode(
        holdout_per_user(ds.interactions, test_fraction=0.25, seed=0).train
    )
    setting = synthetic_setting(0.5, seed=0, **SIZE)
    split = target_fraction_split(setting, 1.0, seed=0)
    target = setting.target.encoder()
    cross = dataclasses.replace(target.encode(split.train),
                                source=encode_source(split.source, target))  # fmt: skip
    return {"single": single, "cross-domain": cross}


def make(name: str, device: str) -> Recommender:
    cls = model_class(name)
    capped = {k: min(EPOCHS, int(cls.defaults[k])) for k in ("epochs", "source_epochs")
              if k in cls.defaults}  # fmt: skip
    model = cls(device=device, **capped)
    if hasattr(model, "progress"):
        model.progress = False
    return model


def train_for(name: str, data: dict[str, Interactions]) -> Interactions:
    return data["cross-domain" if getattr(model_class(name), "needs_source", False) else "single"]


@pytest.mark.parametrize("name", torch_model_names())
def test_model_trains_and_ranks_on_cuda(name, data):
    train = train_for(name, data)
    users = np.arange(train.n_users)
    model = make(name, "cuda").fit(train, seed=0)
    assert model.compute_device() == "cuda"
    module = getattr(model, "module_", None)
    if module is not None:  # BPR and SVDpp export their weights to NumPy after training
        assert model.device_ == "cuda"
        assert all(w.is_cuda for w in module.parameters()), f"{name}: a parameter left the GPU"
    scores = np.asarray(model.score(users))
    assert scores.shape == (train.n_users, train.n_items) and np.isfinite(scores).all()
    top, top_scores = model.recommend(users, 10)
    seen = train.matrix(binary=True)
    assert not any(set(top[u]) & set(seen[u].indices) for u in users), f"{name}: seen items"
    assert (np.diff(top_scores, axis=1) <= 0).all()

    # Same seed, same device: the same scores, bit for bit (deterministic algorithms).
    again = make(name, "cuda").fit(train, seed=0)
    same = np.asarray(again.score(users))
    np.testing.assert_array_equal(same, scores, err_msg=f"{name}: same seed, other scores")

    # The pickle holds CPU tensors; the CPU copy scores like the GPU (float rounding apart,
    # TF32 convolutions included) and ranks the same items.
    restored = pickle.loads(pickle.dumps(model))
    if module is not None:
        assert restored.device_ == "cpu"
        assert all(not w.is_cuda for w in restored.module_.parameters())
    cpu_scores = np.asarray(restored.score(users))
    gap = np.abs(cpu_scores - scores).max() / max(np.abs(scores).max(), 1e-12)
    assert gap < 1e-3, f"{name}: CPU copy scores differ by {gap:.1e} of the largest score"
    cpu_top, _ = restored.recommend(users, 10)
    common = topk_overlap(cpu_top, top)
    assert common > 0.95, f"{name}: CPU copy shares only {common:.0%} of the top 10"


def test_costs_on_cuda_count_device_memory():
    """`measure("cuda")` adds the block's peak device memory: a 64 MiB tensor made inside it
    counts at least 64 MB."""
    with measure("cuda") as cost:
        block = torch.ones(16 * 2**20, device="cuda")
        del block
    assert cost.peak_memory_mb >= 64
