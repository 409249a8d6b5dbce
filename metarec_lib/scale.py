"""Scale curves: what fitting and evaluating a model costs as the synthetic data grows.

`run_scale` generates the synthetic data set at each size (`sizes_config`: the item catalogue
grows as n^ITEM_EXPONENT, users carry the rest of the growth), and for each model

1. estimates the memory the fit needs (`estimate_memory_mb`) and skips the model, BEFORE
   allocating anything, when the estimate exceeds the limit (EASE's dense item x item matrices
   are the case in point: 63,096 items need about 30 GB);
2. predicts the fit time from the model's last fitted size, `seconds * (n / n_last) ** e` with e
   the growth exponent fitted so far (at least 1: one pass over the data is at least linear;
   1 when there is only one point), and skips the model when that exceeds the budget by more
   than `SKIP_MARGIN` (a prediction can miss by a few times either way, so a fit predicted a
   little over the budget is run and measured; one measured over the budget is reported so);
3. otherwise fits it with a fixed number of passes (`PASSES`: the cost of a pass is what scales,
   so no early stopping and no tuning) under `metarec_lib.costs.measure`, then times the
   evaluation separately: the top 10 of a fixed sample of `EVAL_USERS` users, so evaluation
   cost is comparable across sizes.

Before the first size every model is fitted once on a tiny data set (`warm_up`, not recorded),
and before every measurement freed memory is handed back to the OS (`release_memory`), so
neither one-time start-up costs nor a previous fit's heap distort the smallest sizes.
Quality is a sanity check only: each sampled user's last quarter of interactions by time
(rounded up, so at least one) is held out of training and scored with the ranking metrics @10
of the study.
Results follow the study's contract under `results/<stem>/` (`metrics.csv`, `costs.csv`, with
protocol `scale@n=<n:g>`, e.g. `scale@n=1e+06`) plus `tables/scale.csv`, one row per size and
model, fitted or skipped with the reason. No top-K lists or splits are written: nothing here is
meant for paired tests. The files are written atomically once every model is done.

A model's sizes form one chain (its predictions read only its own earlier sizes), so the
models' chains run in parallel on the study's executor, one thread per worker as every cell of
the study; each chain generates the data it needs (`scale_chain`).
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from metarec_lib.costs import measure
from metarec_lib.data.dataset import Interactions
from metarec_lib.data.synthetic import generate_synthetic
from metarec_lib.io import atomic_write_csv
from metarec_lib.metrics import ranking_metrics
from metarec_lib.models.base import resolve_device
from metarec_lib.models.ease import DUAL_RATIO, FLOAT64_MAX_ITEMS
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.runner import COST_COLUMNS, METRIC_COLUMNS, RANKING_NAMES

SIZES = (1e5, 3e5, 1e6, 1e7)  # the notebook's default `sizes`
SMOKE_SIZES = (2e3, 1e4)
MODELS = ("EASE", "iALS", "BPR", "SASRec")
# Fixed passes per model (no validation, no early stopping): the cost of a pass is what scales.
PASSES: dict[str, dict[str, Any]] = {
    "EASE": {},  # closed form: one solve
    "iALS": {"iterations": 2},
    "BPR": {"epochs": 1},
    "SASRec": {"epochs": 1},
}
# The catalogue: BASE_ITEMS items at BASE_SIZE interactions, growing as n^ITEM_EXPONENT, so
# that EASE fits at 1e5 (1,000 items) and 1e6 (7,943) and needs ~30 GB at 1e7 (63,096).
BASE_SIZE, BASE_ITEMS, ITEM_EXPONENT, MIN_ITEMS = 1e5, 1000, 0.9, 50
MEAN_PER_USER = 50  # interactions of an average user (at most a fifth of the catalogue)
EVAL_USERS = 1000
TEST_FRACTION = 0.25
K = 10
SCORE_BLOCK = 1024  # users per scoring block of `Recommender.recommend`
MB = 1024.0 * 1024.0
# What a first PyTorch fit adds to the resident set besides its tensors (kernels, allocator
# pools): measured 100-300 MB for BPR and SASRec at 1e5 interactions.
TORCH_OVERHEAD_MB = 200.0
DATASET = "synthetic"
# A model is skipped by time only when its predicted fit time exceeds the budget this many
# times over. Predictions from the smaller sizes missed by 0.29-4.29x (measured over
# predicted) at 5c6e811; with a margin of 1, iALS at 10^7 was fitted there (predicted 124 s,
# took 48 s) and skipped at e88ee7a on the same host (predicted 253 s), on timing noise alone.
SKIP_MARGIN = 4.0
# How a skipped cell's reason starts, by cause: `scale_cell` writes them, the figure and the
# narrative read them back from the table. OWN_MEMORY_SKIP: the model's own pre-allocation
# check refused (EASE's MemoryError), a memory skip too.
MEMORY_SKIP, TIME_SKIP, OWN_MEMORY_SKIP = "would need", "predicted", "MemoryError:"
TABLE_COLUMNS = [
    "protocol", "n_target", "n_interactions", "n_users", "n_items", "generate_seconds",
    "family", "model", "passes", "status", "reason", "estimated_memory_mb",
    "predicted_fit_seconds", "fit_seconds", "eval_seconds", "peak_memory_mb", "n_parameters",
    "ndcg@10",
]  # fmt: skip


def protocol_name(n: float) -> str:
    """The `protocol` column of a size: "scale@n=1e+06" (Python's `:g` format)."""
    return f"scale@n={float(n):g}"


def sizes_config(n_interactions: float) -> dict[str, Any]:
    """`generate_synthetic` keyword arguments that give about `n_interactions` interactions.

    n_items = max(MIN_ITEMS, BASE_ITEMS * (n / BASE_SIZE) ** ITEM_EXPONENT); an average user
    has m = min(MEAN_PER_USER, n_items / 5) interactions (density m / n_items), and there are
    n / m users. Log-normal activity clipped to [5, n_items] keeps the total within a few
    percent of n for n >= 1e4 (within 30% from 1e3).
    """
    n = float(n_interactions)
    if not math.isfinite(n) or n < 1e3:
        raise ValueError(f"sizes_config: n_interactions={n_interactions!r}; expected >= 1000")
    n_items = max(MIN_ITEMS, int(round(BASE_ITEMS * (n / BASE_SIZE) ** ITEM_EXPONENT)))
    per_user = min(float(MEAN_PER_USER), n_items / 5.0)
    return {
        "n_users": max(1, int(round(n / per_user))),
        "n_items": n_items,
        "density": per_user / n_items,
    }


def _params(model_name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    return {**model_class(model_name).defaults, **(params or {})}


def estimate_memory_mb(
    model_name: str,
    n_users: int,
    n_items: int,
    n_interactions: int,
    params: dict[str, Any] | None = None,
    eval_users: int = EVAL_USERS,
) -> float:
    """Peak extra memory (MiB) a fit plus the top-10 evaluation needs, from the sizes alone.

    EASE: the dense item x item matrices (float64 up to 4,096 items, float32 above): the Gram
    matrix inverted in place plus B (two; the dual route: one plus three users x items work
    arrays). iALS: three (nnz, factors) float32 gathers of the conjugate-gradient products plus
    the two confidence matrices. BPR: the factors with gradient and two Adam moments, and an
    epoch of int64 triples with their sort keys. SASRec: the training windows (three int64
    (windows, max_len) arrays), the embeddings with Adam, and the full-softmax logits of a batch
    (batch x max_len x items, float32, three copies) or, with loss "bce", the batch activations.
    The two PyTorch models add TORCH_OVERHEAD_MB.
    Every model adds the evaluation's float64 score blocks (SCORE_BLOCK users x items, or
    `eval_users` x items when fewer, three copies). An estimate, not a bound: it says whether a
    fit is plausible before it allocates.
    """
    p = _params(model_name, params)
    nnz, users, items = float(n_interactions), float(n_users), float(n_items)
    sparse = nnz * 16.0  # a CSR matrix and its transpose (float32 / int32 + indices)
    scores = min(eval_users, SCORE_BLOCK) * items * 8.0 * 3
    if model_name == "EASE":
        size = 8.0 if n_items <= FLOAT64_MAX_ITEMS else 4.0
        if users <= DUAL_RATIO * items:
            need = items**2 * size + users * items * (16.0 + size)
        else:
            need = 2 * items**2 * size
        need += sparse
    elif model_name == "iALS":
        f = float(p["factors"])
        need = 3 * nnz * f * 4.0 + 2 * sparse + 6 * (users + items) * f * 4.0
    elif model_name == "BPR":
        f = float(p["factors"])
        need = 4 * (users + items) * (f + 1) * 4.0 + nnz * 8.0 * 8 + sparse
        need += TORCH_OVERHEAD_MB * MB
    elif model_name == "SASRec":
        length, hidden = float(p["max_len"]), float(p["hidden"])
        batch = float(p["batch_size"])
        windows = users + nnz / length  # a chunk per max_len items of each user
        per_batch = batch * length
        if p["loss"] == "ce":
            activations = per_batch * items * 4.0 * 3
        else:
            activations = per_batch * hidden * 4.0 * 40
        need = (3 * windows * length * 8.0 + 4 * (items + 1) * hidden * 4.0 + activations
                + nnz * 8.0 * 3 + TORCH_OVERHEAD_MB * MB)  # fmt: skip
    else:
        raise ValueError(
            f"estimate_memory_mb: no memory estimate for model {model_name!r}; "
            f"known: {list(MODELS)}"
        )
    return (need + scores) / MB


def memory_detail(model_name: str, n_users: int, n_items: int) -> str:
    """What dominates a model's memory estimate, in words (for skip reasons)."""
    if model_name == "EASE":
        dtype = "float64" if n_items <= FLOAT64_MAX_ITEMS else "float32"
        if n_users <= DUAL_RATIO * n_items:
            return f"a dense {n_items:,} x {n_items:,} {dtype} B plus users x items work arrays"
        return f"two dense {n_items:,} x {n_items:,} {dtype} matrices"
    if model_name == "SASRec":
        return f"full-softmax logits over {n_items:,} items per batch"
    return "factors and per-interaction work arrays"


def growth_exponent(sizes: npt.ArrayLike, seconds: npt.ArrayLike) -> float:
    """Least-squares slope of log(seconds) on log(size) over the points where both are finite
    and positive; NaN with fewer than 2 such points (or a single distinct size)."""
    x = np.asarray(sizes, dtype=np.float64).ravel()
    y = np.asarray(seconds, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"growth_exponent: {x.size} sizes but {y.size} values")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[ok]), np.log(y[ok])
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def predict_seconds(sizes: Sequence[float], seconds: Sequence[float], n: float) -> float:
    """Fit seconds at size `n`, extrapolated from the largest fitted size with the growth
    exponent so far (at least 1; 1 with a single point); NaN when nothing was fitted."""
    if not len(sizes):
        return math.nan
    e = growth_exponent(sizes, seconds)
    e = 1.0 if math.isnan(e) else max(e, 1.0)
    last = int(np.argmax(sizes))
    return float(seconds[last]) * (float(n) / float(sizes[last])) ** e


def sampled_holdout(
    data: Interactions, n_users: int, seed: int, test_fraction: float = TEST_FRACTION
) -> tuple[Interactions, npt.NDArray[np.int64], sp.csr_matrix]:
    """Hold out the last `test_fraction` (by time; rounded up, so at least one) of the
    interactions of `n_users` users drawn (seeded) among those with at least two.

    Returns (training interactions: everything else, the sampled users (sorted dense indices),
    their relevant test items: binary CSR (len(users), n_items)).
    """
    f = data.frame
    users = f["user"].to_numpy(np.int64)
    counts = np.bincount(users, minlength=data.n_users)
    pool = np.flatnonzero(counts >= 2)
    rng = np.random.default_rng([int(seed), 95])
    chosen = np.sort(rng.choice(pool, size=min(int(n_users), len(pool)), replace=False))
    rows = np.flatnonzero(np.isin(users, chosen))
    order = rows[np.lexsort((rows, f["timestamp"].to_numpy(np.int64)[rows], users[rows]))]
    u = users[order]
    start = np.searchsorted(u, u, side="left")
    rank = np.arange(len(u)) - start
    n_u = counts[u]
    keep = np.maximum(1, np.floor((1.0 - test_fraction) * n_u + 1e-9)).astype(np.int64)
    test_rows = order[rank >= keep]
    is_test = np.zeros(len(f), bool)
    is_test[test_rows] = True
    train = Interactions(f[~is_test].reset_index(drop=True), data.n_users, data.n_items,
                         data.users, data.items)  # fmt: skip
    local = np.searchsorted(chosen, users[test_rows])
    relevant = sp.csr_matrix(
        (np.ones(len(test_rows)), (local, f["item"].to_numpy(np.int64)[test_rows])),
        shape=(len(chosen), data.n_items),
    )
    relevant.sum_duplicates()
    return train, chosen, relevant


def plan(
    datasets: Sequence[str], sizes: Sequence[float], models: Sequence[str], *,
    budget_seconds: float, memory_limit_mb: float,
) -> pd.DataFrame:  # fmt: skip
    """What `run_scale` will do, before it allocates anything: per size the generator's
    configuration and each model's memory estimate (with "skip" where it exceeds the limit).
    Checks the arguments: the data set must be "synthetic" alone (the curves generate it)."""
    if list(datasets) != [DATASET]:
        raise ValueError(f"95_scale: datasets={list(datasets)!r}; the scale curves generate "
                         f"their data: expected [{DATASET!r}]")  # fmt: skip
    sizes = _check(sizes, models, budget_seconds, memory_limit_mb)
    rows = []
    for n in sizes:
        c = sizes_config(n)
        expected = int(round(c["density"] * c["n_items"] * c["n_users"]))
        row: dict[str, Any] = {"protocol": protocol_name(n), "n_users": c["n_users"],
                               "n_items": c["n_items"], "density": c["density"],
                               "expected_interactions": expected}  # fmt: skip
        for m in models:
            mb = estimate_memory_mb(m, c["n_users"], c["n_items"], expected, PASSES.get(m))
            row[f"{m} MB"] = f"{mb:,.0f}" + (" (skip)" if mb > memory_limit_mb else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _passes(model: str) -> str:
    fixed = PASSES.get(model, {})
    return ", ".join(f"{k}={v}" for k, v in fixed.items()) or "closed form"


def _check(sizes: Sequence[float], models: Sequence[str], budget_seconds: float,
           memory_limit_mb: float, skip_margin: float = SKIP_MARGIN) -> list[float]:  # fmt: skip
    if isinstance(sizes, str) or not len(sizes):
        raise ValueError(f"run_scale: sizes={sizes!r}; expected a non-empty list of numbers")
    out = [float(s) for s in sizes]
    if any(not math.isfinite(s) or s < 1e3 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"run_scale: sizes={list(sizes)!r}; expected distinct numbers >= 1000")
    unknown = [m for m in models if m not in MODELS]
    if unknown or not len(models):
        raise ValueError(f"run_scale: models={list(models)!r}; expected some of {list(MODELS)}")
    for name, value in (("budget_seconds", budget_seconds), ("memory_limit_mb", memory_limit_mb)):
        if not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"run_scale: {name}={value!r}; expected a number > 0")
    if not (isinstance(skip_margin, int | float) and skip_margin >= 1):
        raise ValueError(f"run_scale: skip_margin={skip_margin!r}; expected a number >= 1")
    return sorted(out)


def run_scale(
    sizes: Sequence[float],
    models: Sequence[str],
    *,
    budget_seconds: float,
    memory_limit_mb: float,
    seed: int,
    results_dir: str | Path,
    stem: str,
    device: str = "cpu",
    eval_users: int = EVAL_USERS,
    progress: bool = True,
    skip_margin: float = SKIP_MARGIN,
) -> pd.DataFrame:
    """Fit and evaluate every model at every size, smallest first, skipping (with the reason)
    those whose memory estimate exceeds `memory_limit_mb` or whose predicted fit time exceeds
    `budget_seconds` times `skip_margin` (see the module docstring). Writes
    `results_dir/stem/{metrics,costs}.csv` and `tables/scale.csv`; returns the scale table
    (`TABLE_COLUMNS`, by size, then model).

    A model's predictions read only its own earlier sizes, so each model is one independent
    chain (`scale_chain`), and the chains run as one batch on the parallel executor
    (`executors.default_executor`): on its workers, one thread each like every cell of the
    study, every chain generating the data it needs; with one worker, in this process one
    after another."""
    from metarec_lib.executors import CallJob, default_executor

    sizes = _check(sizes, models, budget_seconds, memory_limit_mb, skip_margin)
    out = Path(results_dir) / stem
    device = resolve_device(device)
    quiet = not progress or bool(os.environ.get("TQDM_DISABLE"))
    jobs = [CallJob(scale_chain, (name, sizes, int(seed), device, float(budget_seconds),
                                  float(memory_limit_mb), int(eval_users), not quiet,
                                  float(skip_margin)),
                    label=f"scale {name}")
            for name in models]  # fmt: skip
    chains = default_executor().map_calls(jobs)
    rows = sorted((row for chain in chains for row in chain),
                  key=lambda r: (r["n_target"], list(models).index(r["model"])))  # fmt: skip
    metric_rows: list[dict[str, Any]] = []
    cost_rows: list[dict[str, Any]] = []
    for row in rows:
        if row["status"] != "fitted":
            continue
        key = {"dataset": DATASET, "protocol": row["protocol"], "family": row["family"],
               "model": row["model"], "seed": int(seed)}  # fmt: skip
        metric_rows += [{**key, "metric": m, "value": v} for m, v in row.pop("_metrics").items()]
        costs = {"fit_seconds": row["fit_seconds"], "predict_seconds": row["eval_seconds"],
                 "peak_memory_mb": row["peak_memory_mb"], "n_parameters": row["n_parameters"],
                 "device": row["device"]}  # fmt: skip
        cost_rows.append({**key, **costs})
    _write(out, rows, metric_rows, cost_rows)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def scale_chain(
    name: str, sizes: Sequence[float], seed: int, device: str, budget: float, limit: float,
    eval_users: int = EVAL_USERS, progress: bool = False, margin: float = SKIP_MARGIN,
) -> list[dict[str, Any]]:  # fmt: skip
    """One model of `run_scale` at every size, smallest first: the table rows of its cells
    (`scale_cell`; a fitted row also keeps its "device" and, under "_metrics", its metrics).
    The model is warmed up first (`warm_up`), and each size's data is generated here, so the
    chain needs nothing from the process that sends it."""
    warm_up([name], device)
    history: tuple[list[float], list[float]] = ([], [])
    rows = []
    for n in tqdm(sorted(float(s) for s in sizes), desc=f"scale {name}", disable=not progress,
                  leave=False):  # fmt: skip
        start = time.perf_counter()
        ds = generate_synthetic(**sizes_config(n), seed=int(seed))
        data = ds.encoder().encode(ds.interactions)
        generate_seconds = time.perf_counter() - start
        del ds
        n_total = len(data.frame)
        train, users, relevant = sampled_holdout(data, eval_users, seed)
        del data
        release_memory()
        base = {"protocol": protocol_name(n), "n_target": n, "n_interactions": n_total,
                "n_users": train.n_users, "n_items": train.n_items,
                "generate_seconds": generate_seconds}  # fmt: skip
        cell = scale_cell(name, train, users, relevant, history, n, seed=seed, device=device,
                          budget=budget, limit=limit, margin=margin)  # fmt: skip
        rows.append({**base, **cell})
        if cell["status"] == "fitted":
            history[0].append(n)
            history[1].append(cell["fit_seconds"])
        del train, relevant
        release_memory()
    return rows


def warm_up(models: Sequence[str], device: str = "cpu") -> None:
    """Fit each model once on a tiny data set (not recorded), so that one-time costs (imports,
    the first optimiser, kernel initialisation: about a second for the PyTorch models) are not
    billed to the smallest size."""
    config = sizes_config(2e3)
    ds = generate_synthetic(**config, seed=0)
    data = ds.encoder().encode(ds.interactions)
    for name in models:
        params = {k: 1 for k in PASSES.get(name, {})}  # one pass of whatever the model counts
        model = get_model(name, device=device, **params)
        if hasattr(model, "progress"):
            model.progress = False
        model.fit(data, seed=0)
        model.recommend(np.arange(min(10, data.n_users)), K)
    release_memory()


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc's malloc_trim), so the
    next measurement's resident-set growth starts from what is really in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident set stays a little high
        pass


def scale_cell(
    name: str, train: Interactions, users: np.ndarray, relevant: sp.csr_matrix,
    history: tuple[list[float], list[float]], n: float, *, seed: int, device: str,
    budget: float, limit: float, margin: float = SKIP_MARGIN,
) -> dict[str, Any]:  # fmt: skip
    """One (size, model) cell of `run_scale`: skipped with a reason (memory estimate over
    `limit` MB, or fit seconds predicted from `history` = (fitted sizes, their fit seconds)
    over `margin` times `budget`), or fitted, evaluated and measured. Returns the cell's table
    fields, and for a fitted cell the device it computed on and its metrics (for the cost and
    metric rows)."""
    params = dict(PASSES.get(name, {}))
    n_inter = len(train.frame)
    estimate = estimate_memory_mb(
        name, train.n_users, train.n_items, n_inter, params, eval_users=len(users)
    )
    predicted = predict_seconds(history[0], history[1], n)
    row: dict[str, Any] = {"family": model_class(name).family, "model": name,
                           "passes": _passes(name), "estimated_memory_mb": estimate,
                           "predicted_fit_seconds": predicted}  # fmt: skip
    if estimate > limit:
        return {**row, "status": "skipped",
                "reason": f"{MEMORY_SKIP} ~{estimate:,.0f} MB > limit {limit:,.0f} MB ("
                          f"{memory_detail(name, train.n_users, train.n_items)})"}  # fmt: skip
    if predicted > margin * budget:
        last = max(history[0])
        seconds = history[1][history[0].index(last)]
        return {**row, "status": "skipped",
                "reason": f"{TIME_SKIP} {predicted:,.0f} s > {margin:g} x budget {budget:,.0f} s "
                          f"(extrapolated from {seconds:.1f} s at n={last:g})"}  # fmt: skip
    model = get_model(name, device=device, **params)
    if hasattr(model, "progress"):
        model.progress = False
    device = model.compute_device()  # where it computes, as `runner.evaluate_cell` bills it
    release_memory()
    try:
        with measure(device) as fit_cost:
            model.fit(train, seed=int(seed))
    except MemoryError as err:  # a model's own pre-allocation check (EASE's) has the last word
        return {**row, "status": "skipped", "reason": f"{OWN_MEMORY_SKIP} {err}"}
    with measure(device) as eval_cost:
        top, _ = model.recommend(users, K)
    per_user = ranking_metrics(top, relevant, ks=(K,), names=RANKING_NAMES)
    metrics = {m: float(np.nanmean(v)) for m, v in per_user.items()}
    n_parameters = int(model.n_parameters)
    del model
    release_memory()
    return {**row, "status": "fitted", "reason": "", "fit_seconds": fit_cost.seconds,
            "eval_seconds": eval_cost.seconds,
            "peak_memory_mb": max(fit_cost.peak_memory_mb, eval_cost.peak_memory_mb),
            "n_parameters": n_parameters, "ndcg@10": metrics[f"ndcg@{K}"],
            "device": device, "_metrics": metrics}  # fmt: skip


def _write(out: Path, rows: list[dict], metric_rows: list[dict], cost_rows: list[dict]) -> None:
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_metrics"} for r in rows],
                         columns=TABLE_COLUMNS)  # fmt: skip
    atomic_write_csv(out / "tables" / "scale.csv", table)
    atomic_write_csv(out / "metrics.csv", pd.DataFrame(metric_rows, columns=METRIC_COLUMNS))
    atomic_write_csv(out / "costs.csv", pd.DataFrame(cost_rows, columns=COST_COLUMNS))


# ----------------------------------------------------------------------------- reading


def exponents(table: pd.DataFrame) -> pd.DataFrame:
    """Per model: sizes fitted, and the growth exponents of fit seconds, evaluation seconds and
    peak memory against interactions (NaN with fewer than two fitted sizes)."""
    out = []
    for model, sub in table.groupby("model", sort=False):
        done = sub[sub["status"] == "fitted"]
        x = done["n_interactions"].to_numpy(float)
        out.append({
            "model": model, "fitted_sizes": len(done),
            "fit_exponent": growth_exponent(x, done["fit_seconds"].to_numpy(float)),
            "eval_exponent": growth_exponent(x, done["eval_seconds"].to_numpy(float)),
            "memory_exponent": growth_exponent(x, done["peak_memory_mb"].to_numpy(float)),
        })  # fmt: skip
    return pd.DataFrame(out, columns=["model", "fitted_sizes", "fit_exponent", "eval_exponent",
                                      "memory_exponent"])  # fmt: skip


def figure(table: pd.DataFrame, *, budget_seconds: float | None = None,
           memory_limit_mb: float | None = None) -> plt.Figure:  # fmt: skip
    """Two log-log panels against interactions: seconds (fit solid, evaluation dashed, per
    model) and peak memory MB (per model). Skipped cells are open markers: a skip by time at
    its predicted seconds, one by memory (the estimate's or the model's own check) at its
    estimated memory; dotted lines mark the budget and the memory limit."""
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, (model, sub) in enumerate(table.groupby("model", sort=False)):
        c = colours[idx % len(colours)]
        done = sub[sub["status"] == "fitted"]
        x = done["n_interactions"]
        ax_t.plot(x, done["fit_seconds"], "o-", color=c, label=f"{model} fit")
        ax_t.plot(x, done["eval_seconds"], "s--", color=c, alpha=0.7, label=f"{model} evaluation")
        ax_m.plot(x, done["peak_memory_mb"].clip(lower=0.1), "o-", color=c, label=model)
        skipped = sub[sub["status"] == "skipped"]
        memory = skipped["reason"].str.startswith((MEMORY_SKIP, OWN_MEMORY_SKIP), na=False)
        timed = skipped[skipped["reason"].str.startswith(TIME_SKIP, na=False)]
        ax_t.plot(timed["n_interactions"], timed["predicted_fit_seconds"], "o", color=c,
                  mfc="none", ms=9)  # fmt: skip
        ax_m.plot(skipped["n_interactions"][memory], skipped["estimated_memory_mb"][memory], "o",
                  color=c, mfc="none", ms=9)  # fmt: skip
    if budget_seconds:
        ax_t.axhline(budget_seconds, ls=":", color="grey", label="budget per fit")
    if memory_limit_mb:
        ax_m.axhline(memory_limit_mb, ls=":", color="grey", label="memory limit")
    ax_t.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds",
             title="Fit (solid) and top-10 evaluation (dashed)")  # fmt: skip
    ax_m.set(xscale="log", yscale="log", xlabel="interactions", ylabel="peak extra memory, MB",
             title="Peak memory (fit or evaluation)")  # fmt: skip
    ax_t.legend(fontsize=7, ncol=2)
    ax_m.legend(fontsize=7)
    fig.text(0.5, -0.02, "open markers: skipped (predicted seconds / estimated memory)",
             ha="center", fontsize=8)  # fmt: skip
    fig.tight_layout()
    return fig


def narrative(
    table: pd.DataFrame,
    slopes: pd.DataFrame,
    budget_seconds: float | None = None,
    skip_margin: float = SKIP_MARGIN,
) -> str:
    """Markdown: per size what was fitted and what was skipped and why, then the exponents and
    how far the fit-time predictions that skips read were off (`prediction_misses`), and, with
    `budget_seconds`, whether each skip by time would stand (a prediction over `skip_margin`
    times the budget) if its prediction were as far too high as the farthest overestimate."""
    lines = []
    for (n, protocol), sub in table.groupby(["n_interactions", "protocol"], sort=True):
        first = sub.iloc[0]
        done = sub[sub["status"] == "fitted"]
        fits = ", ".join(
            f"{r.model} {r.fit_seconds:.1f} s"
            + (" (over the budget)" if budget_seconds and r.fit_seconds > budget_seconds else "")
            for r in done.itertuples()
        )
        lines.append(f"- **{protocol}** ({int(n):,} interactions, {int(first.n_users):,} users, "
                     f"{int(first.n_items):,} items): fitted {fits or 'nothing'}.")  # fmt: skip
        for r in sub[sub["status"] == "skipped"].itertuples():
            lines.append(f"  - {r.model} skipped: {r.reason}.")
    lines.append("")
    ease = table[(table["model"] == "EASE") & (table["status"] == "fitted")]
    items = growth_exponent(ease["n_items"], ease["fit_seconds"])
    if not math.isnan(items):
        memory = growth_exponent(ease["n_items"], ease["peak_memory_mb"])
        lines.append(f"- EASE is bound by the catalogue, not the interactions: against the item "
                     f"count its fit time grows as items^{items:.2f} (a dense inverse is at most "
                     f"items^3) and its peak memory as items^{memory:.2f} (dense matrices: "
                     f"items^2).")  # fmt: skip
    for r in slopes.itertuples():
        if r.fitted_sizes >= 2:
            lines.append(f"- {r.model}: fit time grows as n^{r.fit_exponent:.2f}, evaluation "
                         f"as n^{r.eval_exponent:.2f}, peak memory as n^{r.memory_exponent:.2f} "
                         f"(over {r.fitted_sizes} sizes).")  # fmt: skip
        else:
            lines.append(f"- {r.model}: fitted at {r.fitted_sizes} size(s), no exponent.")
    lines.append("")
    lines.append(
        "Skips by time follow the measured fits, so they can differ between runs on a "
        "busy machine; skips by memory follow the sizes alone."
    )
    lines.append(_prediction_text(table, budget_seconds, skip_margin))
    return "\n".join(lines).rstrip()


def _prediction_text(
    table: pd.DataFrame, budget_seconds: float | None, skip_margin: float = SKIP_MARGIN
) -> str:
    """How far the fit-time predictions were off, and whether the skips by time stand: a skip
    stands when its prediction, divided as far as the farthest overestimate, is still over
    `skip_margin` times the budget (the rule that skipped it)."""
    lines = []
    miss = prediction_misses(table)
    if len(miss):
        worst = miss.iloc[0]
        low, high = miss["ratio"].min(), miss["ratio"].max()
        lines.append(
            f"A skip by time reads an extrapolation, and the fits show how far one can be off: "
            f"measured over predicted fit time {low:.2f}-{high:.2f} over {len(miss)} fit(s) "
            f"with a prediction; the farthest, {worst.model} at n={worst.n_target:g}, was "
            f"predicted at {worst.predicted_fit_seconds:.1f} s and took {worst.fit_seconds:.1f} s."
        )
        timed = table[
            (table["status"] == "skipped") & table["reason"].str.startswith(TIME_SKIP, na=False)
        ]
        if budget_seconds and len(timed):
            over = timed["predicted_fit_seconds"] / budget_seconds
            corrected = over.min() * min(low, 1.0)
            stands = corrected > skip_margin
            lines.append(
                f"The skips by time were predicted at {over.min():.1f}x the budget or more "
                f"(a model is skipped above {skip_margin:g}x), "
                + ("so each would stand even if its prediction were off as far as the farthest "
                   f"overestimate above ({low:.2f})." if stands else
                   f"which the farthest overestimate above ({low:.2f}) could bring to "
                   f"{corrected:.1f}x, under the {skip_margin:g}x that skips: those skips rest on "
                   "the prediction.")
            )  # fmt: skip
    return " ".join(lines)


def prediction_misses(table: pd.DataFrame) -> pd.DataFrame:
    """The fitted cells that had a prediction (every size after a model's first): model,
    n_target, predicted and measured fit seconds and their ratio, farthest from 1 first (by
    |log ratio|), so a reader sees how much a skip by time can be trusted."""
    done = table[(table["status"] == "fitted") & table["predicted_fit_seconds"].notna()]
    out = done[["model", "n_target", "predicted_fit_seconds", "fit_seconds"]].copy()
    out["ratio"] = out["fit_seconds"] / out["predicted_fit_seconds"]
    order = np.argsort(-np.abs(np.log(out["ratio"].to_numpy(float))), kind="stable")
    return out.iloc[order].reset_index(drop=True)
