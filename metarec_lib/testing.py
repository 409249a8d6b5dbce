"""The contract every `Recommender` must pass, and the tiny data sets it runs on.

`checkerboard()` is a data set with a known right answer (after implicit's test data): two groups
of users, each liking one half of the catalogue; every user's one held-out liked item must come
top for a model that learns anything about co-occurrence.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import FAMILIES, Recommender


def checkerboard(
    n_users: int = 20, n_items: int = 12, seed: int = 0
) -> tuple[Interactions, np.ndarray]:
    """(train, held_out) where user u likes the items with the parity of u.

    Each user rated every liked item but one (the held-out one, returned as `held_out[u]`).
    Ratings are 5 for liked items; each user also rated one disliked item with 1, so rating
    models see both ends of the scale.
    """
    rng = np.random.default_rng(seed)
    rows = []
    held_out = np.empty(n_users, dtype=np.int64)
    for u in range(n_users):
        liked = np.arange(u % 2, n_items, 2)
        held_out[u] = rng.choice(liked)
        rows += [(u, i, 5.0) for i in liked if i != held_out[u]]
        disliked = np.arange(1 - u % 2, n_items, 2)
        rows.append((u, int(rng.choice(disliked)), 1.0))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    users = pd.DataFrame({"age": 20 + 10 * (np.arange(n_users) % 2), "gender": "M",
                          "occupation": "other"})  # fmt: skip
    items = pd.DataFrame({"title": [f"item {i}" for i in range(n_items)],
                          "year": 2000, "genres": ["even" if i % 2 == 0 else "odd"
                                                   for i in range(n_items)]})  # fmt: skip
    return Interactions(frame, n_users, n_items, users, items), held_out


def cyclic_sequences(
    n_users: int = 24, n_items: int = 12, length: int = 6
) -> tuple[Interactions, np.ndarray]:
    """(train, next_item) for sequence models: user u saw items s, s+1, ..., s+length-1
    (mod n_items) in that order, s = u % n_items, so the next item is a function of the last
    one: (s + length) % n_items. A model that learns transitions ranks it first."""
    rows = []
    for u in range(n_users):
        for t in range(length):
            rows.append((u, (u + t) % n_items, 5.0, 100 * u + t))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return Interactions(frame, n_users, n_items), (np.arange(n_users) + length) % n_items


TrainTest = tuple[Interactions, Interactions]


def gpu_training_sets(
    n_users: int, n_items: int, density: float, *, setting: Mapping | None = None, seed: int = 42
) -> dict[str, TrainTest]:
    """The (train, test) sets every PyTorch model fits in the device tests and benchmarks:
    "single", a synthetic data set's per-user 75/25 holdout (data seed 0, split `seed`), and
    "cross-domain", the synthetic transfer setting's target holdout (relatedness 0.5, options
    `setting`), whose train part carries the source domain (see `training_set_for`)."""
    from metarec_lib.data.dataset import encode_source
    from metarec_lib.data.synthetic import generate_synthetic
    from metarec_lib.splits import holdout_per_user
    from metarec_lib.transfer import synthetic_setting, target_fraction_split

    ds = generate_synthetic(n_users=n_users, n_items=n_items, density=density, seed=0)
    single = holdout_per_user(ds.interactions, test_fraction=0.25, seed=seed)
    encoder = ds.encoder()
    transfer = synthetic_setting(0.5, seed=0, **(setting or {}))
    split = target_fraction_split(transfer, 1.0, seed)
    target = transfer.target.encoder()
    cross = dataclasses.replace(target.encode(split.train),
                                source=encode_source(split.source, target))  # fmt: skip
    return {"single": (encoder.encode(single.train), encoder.encode(single.test)),
            "cross-domain": (cross, target.encode(split.test))}  # fmt: skip


def training_set_for(name: str) -> str:
    """The `gpu_training_sets` key a registered model fits: cross-domain models read
    `train.source`."""
    from metarec_lib.models.registry import model_class

    return "cross-domain" if getattr(model_class(name), "needs_source", False) else "single"


def capped_model(name: str, device: str, epochs: int) -> Recommender:
    """A registered model with its defaults on `device`, every pass count it has (`epochs`,
    `source_epochs`) capped at `epochs`, without a progress bar."""
    from metarec_lib.models.registry import model_class

    cls = model_class(name)
    capped = {k: min(epochs, int(cls.defaults[k])) for k in ("epochs", "source_epochs")
              if k in cls.defaults}  # fmt: skip
    model = cls(device=device, **capped)
    if hasattr(model, "progress"):
        model.progress = False
    return model


def score_gap(reference: np.ndarray, other: np.ndarray) -> float:
    """max |other - reference| / max |reference|: how far two fits' scores of the same pairs
    differ, relative to the reference's largest magnitude (the CPU-GPU agreement that the
    benchmark reports and the CUDA tests bound)."""
    a, b = np.asarray(reference), np.asarray(other)
    return float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-12))


def check_space_holds_defaults(cls: type[Recommender]) -> None:
    """Assert every tuned hyperparameter's default lies in its search space (a Choice's values,
    or a Uniform / LogUniform's [low, high]), so tuning can find the default again."""
    for key, dist in cls.space.items():
        value = cls.defaults[key]
        inside = value in dist.values if hasattr(dist, "values") else dist.low <= value <= dist.high
        assert inside, f"{cls.__name__}: default {key}={value!r} is outside its space {dist!r}"


def seen_with_edge_users(n_users: int = 30, n_items: int = 12, seed: int = 0) -> sp.csr_matrix:
    """A random binary seen-matrix (density 0.4) for negative samplers, whose user 0 has seen
    every item (no negative exists) and user 1 all but item 5 (exactly one negative)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.4).astype(float)
    dense[0] = 1.0
    dense[1] = 1.0
    dense[1, 5] = 0.0
    return sp.csr_matrix(dense)


def check_recommender(
    make: Callable[[], Recommender],
    *,
    learns: bool = True,
    seed: int = 0,
    k: int = 3,
    batch_rtol: float = 1e-6,
) -> None:
    """Assert the shared model contract; raises AssertionError naming what broke.

    Shapes; seen items never recommended; same seed gives the same scores; batch equals
    single-user scoring (within `batch_rtol`, relative and absolute); a pickle round trip
    scores the same; unknown hyperparameters are rejected; and, when `learns`, the held-out
    liked item of every checkerboard user ranks in the top k of its 6 unseen candidates (1
    liked, 5 of the other parity).
    """
    train, held_out = checkerboard()
    model = make()
    name = type(model).__name__
    assert model.family in FAMILIES, f"{name}: family {model.family!r} not in {FAMILIES}"
    try:
        type(model)(no_such_hyperparameter=1)
    except TypeError as err:
        assert "no_such_hyperparameter" in str(err), f"{name}: error does not name the key"
    else:
        raise AssertionError(f"{name}: an unknown hyperparameter was accepted")

    model.fit(train, seed=seed)
    users = np.arange(train.n_users)
    scores = np.asarray(model.score(users))
    assert scores.shape == (train.n_users, train.n_items), f"{name}: score shape {scores.shape}"
    assert np.isfinite(scores).all(), f"{name}: non-finite scores"

    top, top_scores = model.recommend(users, k)
    assert top.shape == (train.n_users, k) and top_scores.shape == (train.n_users, k)
    seen = train.matrix(binary=True)
    for u in users:
        overlap = set(top[u]) & set(seen[u].indices)
        assert not overlap, f"{name}: user {u} was recommended seen items {sorted(overlap)}"
    assert (np.diff(top_scores, axis=1) <= 1e-12).all(), f"{name}: top-k not sorted by score"

    again = make().fit(train, seed=seed)
    np.testing.assert_allclose(again.score(users), scores, rtol=1e-6, atol=1e-6,
                               err_msg=f"{name}: same seed, different scores")  # fmt: skip
    single = np.vstack([model.score(np.array([u])) for u in users])
    np.testing.assert_allclose(
        single,
        scores,
        rtol=batch_rtol,
        atol=batch_rtol,
        err_msg=f"{name}: batch scores differ from single-user scores",
    )
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(
        restored.score(users),
        scores,
        rtol=1e-6,
        atol=1e-6,
        err_msg=f"{name}: scores changed after a pickle round trip",
    )
    if model.predicts_ratings:
        pred = model.predict(users, held_out)
        assert pred.shape == (train.n_users,) and np.isfinite(pred).all(), f"{name}: predict"
        raw = model.predict_raw(users, held_out)
        np.testing.assert_array_equal(
            model.clip_ratings(raw), pred, err_msg=f"{name}: predict != clip_ratings(predict_raw)"
        )
        pulled_in = model.clip_ratings(np.array([-1e9, 1e9]))
        assert pulled_in[0] > -1e9 and pulled_in[1] < 1e9, f"{name}: clip_ratings clips nothing"
    if learns:
        hits = np.array([held_out[u] in top[u] for u in users])
        assert hits.all(), (
            f"{name}: held-out liked item missing from the top {k} for users "
            f"{np.flatnonzero(~hits).tolist()}"
        )


def other_parity_valid(train: Interactions) -> Interactions:
    """A checkerboard validation set that gets worse as the model learns: one unseen item of
    the OTHER parity per user. Early-stopping tests use it to force a stop."""
    seen = train.matrix(binary=True).toarray() > 0
    items = [next(i for i in range(1 - u % 2, train.n_items, 2) if not seen[u, i])
             for u in range(train.n_users)]  # fmt: skip
    frame = pd.DataFrame({"user": np.arange(train.n_users), "item": items, "rating": 5.0,
                          "timestamp": 0})  # fmt: skip
    return Interactions(frame, train.n_users, train.n_items)


def write_results_tree(
    out: Path,
    cells: Mapping[tuple[str, str, str, str], Mapping[str, np.ndarray]],
    users: np.ndarray,
    seeds: tuple[int, ...] = (1, 2),
) -> None:
    """A notebook's results folder for leaderboard tests: metrics.csv, costs.csv and per_user
    files. `cells` maps (dataset, protocol, family, model) to {metric: per-user values}; every
    seed gets the same values, and a metric given as one value is per run only (no per-user
    column, like auc)."""
    (out / "per_user").mkdir(parents=True, exist_ok=True)
    metrics, costs = [], []
    for (dataset, protocol, family, model), values in cells.items():
        per_user = {m: v for m, v in values.items() if np.size(v) == len(users)}
        for seed in seeds:
            pd.DataFrame({"user_id": users, **per_user}).to_csv(
                out / "per_user" / f"{dataset}__{protocol}__{model}__seed{seed}.csv.gz",
                index=False,
            )
            base = {"dataset": dataset, "protocol": protocol, "family": family, "model": model,
                    "seed": seed}  # fmt: skip
            metrics += [
                {**base, "metric": m, "value": float(np.mean(v))} for m, v in values.items()
            ]
            costs.append({**base, "fit_seconds": 1.0, "predict_seconds": 0.1,
                          "peak_memory_mb": 10.0, "n_parameters": 5, "device": "cpu"})  # fmt: skip
    pd.DataFrame(metrics).to_csv(out / "metrics.csv", index=False)
    pd.DataFrame(costs).to_csv(out / "costs.csv", index=False)


def bpr_loss_by_autograd(users, items, bias, u, i, j, reg, top=None, weight=None, frozen=None):
    """`models.losses.bpr_triple_loss` as the models wrote it before, for tests and benchmarks
    to compare with: gathered rows, autograd's backward; frozen = (user mask, item mask) or
    None, frozen rows detached."""
    import torch
    import torch.nn.functional as F

    def rows(table, mask, idx):
        r = table[idx]
        return r if mask is None else torch.where(mask[idx, None], r.detach(), r)

    p = rows(users, None if frozen is None else frozen[0], u)
    qi, qj = (rows(items, None if frozen is None else frozen[1], x) for x in (i, j))
    pw = p if top is None else p @ top.T
    diff = (pw * (qi - qj)).sum(1) + bias[i] - bias[j]
    penalty = (p**2).sum(1) + (qi**2).sum(1) + (qj**2).sum(1) + bias[i] ** 2 + bias[j] ** 2
    per = -F.logsigmoid(diff) + reg * penalty
    return (per if weight is None else weight * per).mean()
