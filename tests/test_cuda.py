"""Every GPU-capable model on CUDA (skipped without a GPU): it trains there, ranks there like
its CPU copy does, the same seed gives the same scores, and a pickle loads on the CPU.

CI has no GPU; these run where one is present (`make test` on a GPU machine, or
`pytest tests/test_cuda.py`). The data are small synthetic sets, so each model takes seconds.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from metarec_lib.costs import measure
from metarec_lib.data.dataset import Interactions
from metarec_lib.metrics import topk_overlap
from metarec_lib.models.registry import torch_model_names
from metarec_lib.testing import capped_model, gpu_training_sets, score_gap, training_set_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SIZE = {"n_users": 300, "n_items": 400}
EPOCHS = 2  # every pass count a model has (epochs, source_epochs) is capped here


@pytest.fixture(scope="module")
def data() -> dict[str, Interactions]:
    """The training parts of `gpu_training_sets` at SIZE."""
    sets = gpu_training_sets(**SIZE, density=0.1, setting=SIZE, seed=0)
    return {kind: train for kind, (train, _) in sets.items()}


@pytest.mark.parametrize("name", torch_model_names())
def test_model_trains_and_ranks_on_cuda(name, data):
    train = data[training_set_for(name)]
    users = np.arange(train.n_users)
    model = capped_model(name, "cuda", EPOCHS).fit(train, seed=0)
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
    again = capped_model(name, "cuda", EPOCHS).fit(train, seed=0)
    same = np.asarray(again.score(users))
    np.testing.assert_array_equal(same, scores, err_msg=f"{name}: same seed, other scores")

    # The pickle holds CPU tensors; the CPU copy scores like the GPU (float rounding apart,
    # TF32 convolutions included) and ranks the same items.
    restored = pickle.loads(pickle.dumps(model))
    if module is not None:
        assert restored.device_ == "cpu"
        assert all(not w.is_cuda for w in restored.module_.parameters())
    cpu_scores = np.asarray(restored.score(users))
    gap = score_gap(scores, cpu_scores)
    assert gap < 1e-3, f"{name}: CPU copy scores differ by {gap:.1e} of the largest score"
    cpu_top, _ = restored.recommend(users, 10)
    common = topk_overlap(cpu_top, top)
    assert common > 0.95, f"{name}: CPU copy shares only {common:.0%} of the top 10"


def test_product_operands_are_dense_on_cuda_and_repeat_to_the_bit():
    """cuSPARSE's CSR-times-dense product gave other bits on repeats (an H200), so
    `product_operand` is dense on CUDA; the product then repeats exactly."""
    import scipy.sparse as sp

    from metarec_lib.models.torch_base import product_operand
    from metarec_lib.models.training import cuda_determinism

    m = sp.random(128, 4000, density=0.02, format="csr", random_state=1, dtype=np.float32)
    operand = product_operand(m, "cuda")
    assert operand.is_cuda and operand.layout == torch.strided
    assert np.array_equal(operand.cpu().numpy(), m.toarray())
    w = torch.randn(4000, 256, generator=torch.Generator().manual_seed(0)).cuda()
    with cuda_determinism("cuda"):
        first = (operand @ w).cpu()
        assert all(torch.equal(first, (operand @ w).cpu()) for _ in range(4))


def test_costs_on_cuda_count_device_memory():
    """`measure("cuda")` adds the block's peak device memory: a 64 MiB tensor made inside it
    counts at least 64 MB."""
    with measure("cuda") as cost:
        block = torch.ones(16 * 2**20, device="cuda")
        del block
    assert cost.peak_memory_mb >= 64
