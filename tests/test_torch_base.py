import math
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from metarec_lib.evaluate import ndcg_on
from metarec_lib.models.bpr import sample_triples
from metarec_lib.models.torch_base import TORCH_DEFAULTS, TorchRecommender
from metarec_lib.models.training import EarlyStopping, adam, cpu_threads
from metarec_lib.testing import check_recommender, checkerboard, other_parity_valid


class _Factors(nn.Module):
    def __init__(self, n_users: int, n_items: int, factors: int, dropout: float,
                 generator: torch.Generator) -> None:  # fmt: skip
        super().__init__()
        self.users = nn.Parameter(torch.randn(n_users, factors, generator=generator) * 0.1)
        self.items = nn.Parameter(torch.randn(n_items, factors, generator=generator) * 0.1)
        self.dropout = nn.Dropout(dropout)


class TinyMF(TorchRecommender):
    """Dot-product MF with the BPR loss: the smallest model that exercises the whole loop.
    Not registered: it exists for these tests only."""

    name = "TinyMF"
    defaults: dict[str, Any] = {**TORCH_DEFAULTS, "factors": 8, "dropout": 0.0,
                                "batch_size": 64, "learning_rate": 0.05}  # fmt: skip

    def build(self, train, generator):
        self.threads_in_build_ = torch.get_num_threads()
        p = self.params
        return _Factors(train.n_users, train.n_items, int(p["factors"]), float(p["dropout"]),
                        generator)  # fmt: skip

    def batches(self, generator) -> Iterator[tuple[torch.Tensor, ...]]:
        u, i, j = sample_triples(self.seen_, generator)
        size = int(self.params["batch_size"])
        for start in range(0, len(u), size):
            yield u[start : start + size], i[start : start + size], j[start : start + size]

    def loss(self, module, batch):
        u, i, j = batch
        p = module.dropout(module.users[u])
        return -nn.functional.logsigmoid((p * (module.items[i] - module.items[j])).sum(1)).mean()

    def score_users(self, module, users):
        return module.users[users] @ module.items.T


class NaNMF(TinyMF):
    name = "NaNMF"

    def loss(self, module, batch):
        return super().loss(module, batch) * float("nan")


class FrozenMF(TinyMF):
    """Overrides `optimiser` (SGD with a zero step: the weights never move) and `step`
    (counts its calls and logs a constant loss)."""

    name = "FrozenMF"

    def optimiser(self, module):
        self.steps_ = 0
        return {"sgd": torch.optim.SGD(module.parameters(), lr=0.0)}

    def step(self, module, batch, optimiser):
        self.steps_ += 1
        optimiser["sgd"].zero_grad()
        self.loss(module, batch).backward()
        optimiser["sgd"].step()
        return torch.tensor(2.0, device=batch[0].device)


def _scores(model: TorchRecommender, n_users: int) -> np.ndarray:
    return model.score(np.arange(n_users))


# -- the contract and the loop ---------------------------------------------------------------
def test_tiny_model_passes_the_contract():
    check_recommender(lambda: TinyMF(epochs=30, factors=2))  # two factors: the two groups
    check_recommender(lambda: TinyMF(epochs=3, dropout=0.5), learns=False)


def test_early_stopping_keeps_the_best_epochs_weights():
    train, _ = checkerboard()
    valid = other_parity_valid(train)  # gets worse as the checkerboard is learnt
    model = TinyMF(epochs=40, eval_every=2, patience=3).fit(train, valid=valid, seed=0)
    epochs = [e for e, _ in model.history_]
    values = [v for _, v in model.history_]
    assert epochs == list(range(2, 2 * len(epochs) + 1, 2))
    assert epochs[-1] < 40, "validation kept improving; the test needs it to get worse"
    assert model.best_epoch_ == epochs[int(np.argmax(values))] == epochs[-4]
    assert values[-1] < max(values)
    assert ndcg_on(model, valid) == pytest.approx(max(values))
    # The kept weights are exactly those of a run stopped at the best epoch.
    refit = TinyMF(epochs=model.best_epoch_, eval_every=2, patience=3).fit(train, seed=0)
    np.testing.assert_allclose(_scores(refit, 20), _scores(model, 20), rtol=1e-6, atol=1e-7)
    assert refit.best_epoch_ is None and refit.history_ == []


def test_train_log_has_one_row_per_epoch():
    train, _ = checkerboard()
    model = TinyMF(epochs=4).fit(train, seed=0)
    log = model.train_log_
    assert list(log.columns) == ["epoch", "loss", "seconds", "samples", "samples_per_second",
                                 "valid_score"]  # fmt: skip
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    assert (log["samples"] == train.matrix(binary=True).nnz).all()  # every pair, once
    assert (log["loss"] > 0).all() and (log["seconds"] > 0).all()
    np.testing.assert_allclose(log["samples_per_second"], log["samples"] / log["seconds"])
    assert log["valid_score"].isna().all()
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]

    valid = other_parity_valid(train)
    model = TinyMF(epochs=4, eval_every=2, patience=10).fit(train, valid=valid, seed=0)
    log = model.train_log_
    assert log["valid_score"].isna().tolist() == [True, False, True, False]
    assert log.dropna()[["epoch", "valid_score"]].to_records(index=False).tolist() == [
        (e, v) for e, v in model.history_
    ]


def test_fit_leaves_the_global_rng_alone_and_seeds_it_itself():
    train, _ = checkerboard()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = TinyMF(epochs=3, dropout=0.5).fit(train, seed=7)  # dropout draws from the global RNG
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)  # a different caller state does not change the model
    b = TinyMF(epochs=3, dropout=0.5).fit(train, seed=7)
    np.testing.assert_array_equal(_scores(a, 20), _scores(b, 20))
    c = TinyMF(epochs=3, dropout=0.5).fit(train, seed=8)
    assert not np.allclose(_scores(a, 20), _scores(c, 20))


def test_nan_loss_raises_naming_the_model():
    train, _ = checkerboard()
    with pytest.raises(FloatingPointError, match=r"NaNMF: training loss is nan at epoch 1"):
        NaNMF(epochs=3).fit(train)


def test_custom_optimiser_and_step_are_used():
    train, _ = checkerboard()
    batch_size, epochs = 32, 3
    model = FrozenMF(epochs=epochs, batch_size=batch_size).fit(train, seed=0)
    n_batches = math.ceil(train.matrix(binary=True).nnz / batch_size)
    assert model.steps_ == epochs * n_batches
    assert (model.train_log_["loss"] == 2.0).all()  # what `step` returned
    untrained = FrozenMF(epochs=0).fit(train, seed=0)  # same initial weights, no step
    assert untrained.train_log_.empty
    np.testing.assert_array_equal(_scores(model, 20), _scores(untrained, 20))


# -- resources ---------------------------------------------------------------------------------
def test_fit_runs_on_the_class_thread_count_and_restores_the_count(monkeypatch):
    train, _ = checkerboard()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        model = TinyMF(epochs=1).fit(train)
        assert TinyMF.cpu_threads is None  # the default: torch's own setting is kept
        assert model.threads_in_build_ == 3
        monkeypatch.setattr(TinyMF, "cpu_threads", 1)
        model = TinyMF(epochs=1).fit(train)
        assert model.threads_in_build_ == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_context():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with cpu_threads("cpu", 1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError, match="^inside$"), cpu_threads("cpu", 2):
            assert torch.get_num_threads() == 2
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 3
        for device, threads in (("cpu", None), ("cuda", 1)):  # both leave the setting alone
            with cpu_threads(device, threads):
                assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_n_parameters_counts_the_module():
    train, _ = checkerboard()
    assert TinyMF().n_parameters == 0
    model = TinyMF(epochs=1, factors=5).fit(train)
    assert model.n_parameters == (train.n_users + train.n_items) * 5


def test_pickle_puts_the_module_on_cpu_without_touching_the_original():
    train, _ = checkerboard()
    model = TinyMF(epochs=2).fit(train)
    scores = _scores(model, 20)
    model.device_ = "elsewhere"  # stands in for a GPU on a CPU-only machine
    restored = pickle.loads(pickle.dumps(model))
    assert restored.device_ == "cpu" and model.device_ == "elsewhere"
    assert restored.module_ is not model.module_
    assert all(w.device.type == "cpu" for w in restored.module_.parameters())
    np.testing.assert_array_equal(_scores(restored, 20), scores)
    unfitted = pickle.loads(pickle.dumps(TinyMF()))
    assert not hasattr(unfitted, "module_")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fit_pickles_to_cpu():
    train, _ = checkerboard()
    model = TinyMF(epochs=40, device="cuda").fit(train, seed=0)
    assert model.device_ == "cuda" and next(model.module_.parameters()).is_cuda
    restored = pickle.loads(pickle.dumps(model))
    assert restored.device_ == "cpu" and not next(restored.module_.parameters()).is_cuda
    assert next(model.module_.parameters()).is_cuda  # the original stays on the GPU
    np.testing.assert_allclose(_scores(restored, 20), _scores(model, 20), rtol=1e-5, atol=1e-6)
    check_recommender(lambda: TinyMF(epochs=30, factors=2, device="cuda"))
    # Ranking on the device gives the CPU's top lists (scores agree to float precision).
    users = np.arange(20)
    gpu_items, gpu_scores = model.recommend(users, 5)
    cpu_items, cpu_scores = restored.recommend(users, 5)
    assert (gpu_items == cpu_items).mean() > 0.95
    # atol as above: a score near 0 (1.2e-3) differed by 1.4e-7 on an H200, 1.1e-4 relative.
    np.testing.assert_allclose(np.sort(gpu_scores, 1), np.sort(cpu_scores, 1), rtol=1e-4, atol=1e-6)


# -- EarlyStopping -------------------------------------------------------------------------------
def _run(stopper: EarlyStopping, values: list[float]) -> tuple[list[bool], list[int]]:
    """Feed values for epochs 1, 2, ...; returns (stop flags, epochs whose snapshot was taken)."""
    taken: list[int] = []
    flags = [stopper.update(e, v, lambda e=e: taken.append(e) or f"w{e}")
             for e, v in enumerate(values, start=1)]  # fmt: skip
    return flags, taken


def test_early_stopping_higher_is_better():
    stopper = EarlyStopping(3)
    flags, taken = _run(stopper, [0.1, 0.3, 0.2, 0.25, 0.3])
    # 0.3 again at epoch 5 is no gain: the third evaluation in a row without one stops.
    assert flags == [False, False, False, False, True]
    assert taken == [1, 2]
    assert stopper.best_epoch == 2 and stopper.best_value == 0.3 and stopper.best_state == "w2"
    assert stopper.history == [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.25), (5, 0.3)]


def test_early_stopping_improvement_resets_the_wait():
    stopper = EarlyStopping(2)
    flags, taken = _run(stopper, [0.5, 0.4, 0.6, 0.1, 0.7, 0.2, 0.2])
    assert flags == [False, False, False, False, False, False, True]
    assert taken == [1, 3, 5] and stopper.best_state == "w5"


def test_early_stopping_lower_is_better():
    stopper = EarlyStopping(2, higher_is_better=False)
    flags, taken = _run(stopper, [1.0, 0.5, 0.7, 0.4, 0.4, 0.9])
    assert flags == [False, False, False, False, False, True]
    assert taken == [1, 2, 4] and stopper.best_epoch == 4 and stopper.best_value == 0.4


def test_early_stopping_nan_is_never_a_gain():
    stopper = EarlyStopping(3)
    flags, taken = _run(stopper, [math.nan, 0.2, math.nan, math.nan, math.nan])
    assert flags == [False, False, False, False, True]
    assert taken == [2] and stopper.best_epoch == 2
    assert math.isnan(stopper.history[0][1])
    only_nan = EarlyStopping(2, higher_is_better=False)
    flags, taken = _run(only_nan, [math.nan, math.nan])
    assert flags == [False, True] and taken == []
    assert only_nan.best_epoch is None and only_nan.best_state is None


def test_early_stopping_patience_must_be_positive():
    with pytest.raises(ValueError, match="patience=0"):
        EarlyStopping(0)
    stopper = EarlyStopping(1)
    assert _run(stopper, [0.3, 0.2])[0] == [False, True]


def test_topk_torch_matches_the_numpy_ranking_with_ties_exclusions_and_padding():
    import numpy as np
    import scipy.sparse as sp

    from metarec_lib.hashing import pair_hash
    from metarec_lib.metrics import topk_from_scores
    from metarec_lib.models.torch_base import topk_torch

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (30, 12)).astype(np.float32)  # many ties
    scores[3, :] = 1.0  # a row of equal scores: the lowest pair hashes win
    exclude = sp.random(30, 12, density=0.3, random_state=1, format="csr")
    exclude.data[:] = 1
    exclude = exclude.tolil()
    exclude[5, :] = 1  # nothing left for user 5: all padding
    exclude = exclude.tocsr()
    users = rng.integers(0, 500, 30)
    for k in (1, 5, 12, 15):
        items, values = topk_from_scores(scores, k, exclude, users=users)
        t_items, t_values = topk_torch(torch.from_numpy(scores), k, exclude, users)
        np.testing.assert_array_equal(t_items.numpy(), items)
        np.testing.assert_array_equal(t_values.numpy(), values.astype(np.float32))
    # row 3 as user 3 (no `users`): pair_hash(3, i) ranks items 0..11 as 2, 8, 3, ...
    assert np.argsort(pair_hash(3, np.arange(12)))[:3].tolist() == [2, 8, 3]
    assert topk_torch(torch.from_numpy(scores), 3)[0][3].tolist() == [2, 8, 3]
    assert (topk_torch(torch.from_numpy(scores), 3, exclude)[0][5] == -1).all()
    with pytest.raises(ValueError, match="users: shape"):
        topk_torch(torch.from_numpy(scores), 3, None, np.arange(10))
    bad = torch.from_numpy(scores.copy())
    bad[2, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN at row 2, item 7"):
        topk_torch(bad, 3)


def test_cuda_determinism_sets_and_restores_the_flags():
    from metarec_lib.models.torch_base import cuda_determinism, rows_that_fit

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with cuda_determinism("cuda"):  # the flags can be set without a GPU
        assert torch.are_deterministic_algorithms_enabled()
        # strict: an op without a deterministic kernel raises (memory-efficient attention's
        # backward picks its deterministic one only in this mode)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    with cuda_determinism("cpu"):  # a no-op off CUDA
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    assert rows_that_fit(10_000, "cpu") == 1024


def test_adam_is_fused_on_cpu_and_steps_like_the_loop():
    """`training.adam` asks torch for the fused kernel for CPU parameters (not for a device
    without one); its steps are Adam's: after five steps on the same gradients the weights
    equal the per-parameter loop's to rounding. A model's default optimiser is that one."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 3, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn(w.shape, generator=gen) for w in start] for _ in range(5)]
    out = {}
    for fused in (True, False):
        weights = [nn.Parameter(w.clone()) for w in start]
        if fused:
            optimiser = adam(weights, lr=0.1, weight_decay=0.01)
        else:
            optimiser = torch.optim.Adam(weights, lr=0.1, weight_decay=0.01, foreach=False)
        assert optimiser.defaults["fused"] is (True if fused else None)
        for step in grads:
            for w, g in zip(weights, step, strict=True):
                w.grad = g.clone()
            optimiser.step()
        out[fused] = [w.detach() for w in weights]
    for a, b, w0 in zip(out[True], out[False], start, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert (a - w0).abs().min() > 0  # it moved every weight
    assert TinyMF().optimiser(_Factors(3, 4, 2, 0.0, gen)).defaults["fused"] is True
    on_meta = nn.Parameter(torch.zeros(2, device="meta"))
    assert adam([on_meta], lr=0.1).defaults["fused"] is None  # no fused kernel there


def test_product_operand_is_csr_on_the_cpu_and_multiplies_like_the_matrix():
    import scipy.sparse as sp

    from metarec_lib.models.torch_base import product_operand

    m = sp.csr_matrix(np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]]))
    operand = product_operand(m, "cpu")
    assert operand.layout == torch.sparse_csr and operand.dtype == torch.float32
    assert torch.equal(operand.to_dense(), torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]]))
    w = torch.tensor([[1.0, -1.0], [0.5, 2.0], [4.0, 0.0]])
    # rows: 2 * (0.5, 2) = (1, 4); (1, -1) + 3 * (4, 0) = (13, -1)
    assert torch.equal(operand @ w, torch.tensor([[1.0, 4.0], [13.0, -1.0]]))
