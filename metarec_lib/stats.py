"""Aggregation over seeds and paired significance tests over per-user metric vectors.

Per-user vectors come from `metrics.ranking_metrics` (NaN for users without relevant items);
pairs where either side is NaN are dropped before testing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps

METRIC_COLUMNS = ("dataset", "protocol", "family", "model", "seed", "metric", "value")

__all__ = ["aggregate", "aggregate_frame", "compare_to_best", "holm", "paired_test"]


def _t_halfwidth(std: npt.ArrayLike, n: npt.ArrayLike, confidence: float) -> np.ndarray:
    """Half-width t_{(1+c)/2, n-1} * std / sqrt(n) of a Student-t interval; NaN where n < 2."""
    std, n = np.asarray(std, dtype=np.float64), np.asarray(n, dtype=np.float64)
    ok = n >= 2
    df = np.where(ok, n - 1.0, 1.0)
    half = sps.t.ppf(0.5 + confidence / 2.0, df) * std / np.sqrt(np.where(ok, n, 1.0))
    return np.where(ok, half, np.nan)


def aggregate(values: npt.ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std (ddof=1), n and a Student-t confidence interval of `values` (e.g. seeds).

    NaN values are dropped (n counts the rest). With n = 1 the std and the interval are NaN:
    one run says nothing about spread, and a zero-width interval would claim certainty.
    With n = 0 everything but n is NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: {confidence}, expected a level in (0, 1)")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    std = float(v.std(ddof=1)) if n >= 2 else float("nan")
    half = float(_t_halfwidth(std, n, confidence))
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def aggregate_frame(
    frame: pd.DataFrame,
    by: Sequence[str] = ("dataset", "protocol", "family", "model", "metric"),
    *,
    value: str = "value",
    seed: str = "seed",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Aggregate a long metrics table (dataset,protocol,family,model,seed,metric,value) over seeds.

    Returns one row per group of `by` with columns mean, std, n, ci_low, ci_high (as
    `aggregate`; NaN values are dropped). A seed appearing twice in one group is an error.
    """
    by = list(by)
    missing = [c for c in [*by, seed, value] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"metrics table: missing columns {missing}; has {list(frame.columns)}, "
            f"expected {list(METRIC_COLUMNS)}"
        )
    dup = frame.duplicated(subset=[*by, seed])
    if dup.any():
        row = frame.loc[dup].iloc[0]
        plain = {c: v.item() if isinstance(v, np.generic) else v for c, v in row.items()}
        key = ", ".join(f"{c}={plain[c]!r}" for c in [*by, seed])
        raise ValueError(f"metrics table: {int(dup.sum())} duplicate rows, first at {key}")
    values = pd.to_numeric(frame[value], errors="raise").astype(np.float64)
    grouped = values.groupby([frame[c] for c in by], dropna=False, sort=True)
    out = grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["n"] = out["n"].astype(np.int64)
    out.loc[out["n"] < 2, "std"] = np.nan
    half = _t_halfwidth(out["std"].to_numpy(), out["n"].to_numpy(), confidence)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out.reset_index()


def paired_test(a: npt.ArrayLike, b: npt.ArrayLike) -> dict[str, float]:
    """Paired tests of a vs b over aligned per-user vectors (NaN on either side: pair dropped).

    Returns n (pairs kept), mean_diff = mean(a - b), the two-sided Wilcoxon signed-rank p
    (zero differences discarded, scipy's default) and the paired t-test p. All differences
    zero: both p = 1.0. Fewer than two pairs: the t-test p is NaN; no pairs: both NaN.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_test: vectors of length {x.size} and {y.size}; expected equal")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    n = int(d.size)
    out = {"n": n, "mean_diff": float(d.mean()) if n else float("nan")}
    if n == 0:
        return out | {"wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    if not np.any(d != 0):
        return out | {"wilcoxon_p": 1.0, "ttest_p": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant differences, tiny n
        wilcoxon_p = float(sps.wilcoxon(d).pvalue)
        if n < 2:
            ttest_p = float("nan")
        elif np.all(d == d[0]):
            ttest_p = 0.0  # a constant nonzero difference: t is infinite
        else:
            ttest_p = float(sps.ttest_rel(x, y).pvalue)
    return out | {"wilcoxon_p": wilcoxon_p, "ttest_p": ttest_p}


def holm(pvalues: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Holm-Bonferroni step-down adjusted p-values, same order as the input.

    Sorted ascending, p_(i) becomes max_{j<=i} (m - j + 1) p_(j), capped at 1, so adjusted values
    keep the order of the raw ones. NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    if ((flat[ok] < 0) | (flat[ok] > 1)).any():
        raise ValueError(
            f"holm: p-values {flat[ok][(flat[ok] < 0) | (flat[ok] > 1)]}, expected values in [0, 1]"
        )
    out = np.full(flat.shape, np.nan)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(flat[idx], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * flat[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.reshape(p.shape)


def compare_to_best(
    per_user: Mapping[str, npt.ArrayLike],
    higher_is_better: bool = True,
    *,
    alpha: float = 0.05,
    test: Literal["wilcoxon", "ttest"] = "wilcoxon",
    best: str | None = None,
) -> pd.DataFrame:
    """Compare every model with the best one: `best` when given, else the model with the
    highest (or lowest) mean of its per-user vector.

    per_user: model -> (n_users,) per-user metric, aligned across models (NaN: no value).
    Returns one row per model, best first then by mean: model, mean (nanmean), n (pairs),
    diff (mean of model - best over pairs), wilcoxon_p, ttest_p, their Holm adjustments over the
    comparisons with the best, is_best, and significant: significantly worse than the best (the
    Holm-adjusted p of `test` < alpha and `diff` in the worse direction). The best model's own
    row has diff 0 and NaN p-values. Ties for best go to the first model.

    A leaderboard ranks by the mean over runs of each run's metric, which need not order the
    models as their per-user means do (a run's RMSE weighs a user by their test ratings, the
    per-user mean weighs users equally), so it passes its rank-1 model as `best`: the model
    every other is tested against is then the one it calls best, and a model whose per-user
    mean beats that one is never "significantly worse".
    """
    if not per_user:
        raise ValueError("compare_to_best: no models given")
    vectors = {m: np.asarray(v, dtype=np.float64).ravel() for m, v in per_user.items()}
    sizes = {m: v.size for m, v in vectors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"compare_to_best: per-user vectors of different lengths {sizes}")
    if test not in ("wilcoxon", "ttest"):
        raise ValueError(f"test: {test!r}, expected 'wilcoxon' or 'ttest'")
    means = {
        m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        for m, v in vectors.items()
    }
    sign = 1.0 if higher_is_better else -1.0
    ranked = sorted(means, key=lambda m: -sign * means[m] if not np.isnan(means[m]) else np.inf)
    if best is None:
        best = ranked[0]
    elif best not in vectors:
        raise ValueError(f"compare_to_best: best={best!r} is not among {sorted(vectors)}")
    else:
        ranked = [best] + [m for m in ranked if m != best]
    rows = []
    for m in ranked:
        if m == best:
            n = int(np.isfinite(vectors[m]).sum())
            res = {"n": n, "mean_diff": 0.0, "wilcoxon_p": np.nan, "ttest_p": np.nan}
        else:
            res = paired_test(vectors[m], vectors[best])
        rows.append(
            {
                "model": m,
                "mean": means[m],
                "n": res["n"],
                "diff": res["mean_diff"],
                "wilcoxon_p": res["wilcoxon_p"],
                "ttest_p": res["ttest_p"],
            }
        )
    out = pd.DataFrame(rows)
    out["wilcoxon_p_holm"] = holm(out["wilcoxon_p"].to_numpy())
    out["ttest_p_holm"] = holm(out["ttest_p"].to_numpy())
    out["is_best"] = out["model"] == best
    worse = (sign * out["diff"] < 0).to_numpy()
    out["significant"] = (out[f"{test}_p_holm"] < alpha).to_numpy() & worse
    return out
