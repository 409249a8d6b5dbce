"""Top-K selection and recommendation metrics on dense indices (users 0..n-1, items 0..m-1).

Ranking metrics follow the definitions in `shared/tools/check_results.py` exactly, because that
script recomputes every reported value from the saved top-K lists and must agree within 1e-6:
binary relevance, per-user values, study value = mean over users with at least one relevant
test item. A top-K list may be padded with item -1 (fewer than K candidates); -1 is a miss, and
precision still divides by k.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from metarec_lib.hashing import pair_hash

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hr", "mrr")
PAD = -1
_HASH_BLOCK = 1 << 22  # tie-break hashes per block of rows (32 MiB of uint64)
HEAP_RATIO = 64  # `heap_selects`: torch.topk for k <= n / HEAP_RATIO, introselect above

__all__ = [
    "PAD",
    "RANKING_METRICS",
    "coverage",
    "evaluate_topk",
    "heap_selects",
    "intra_list_diversity",
    "novelty",
    "ranking_metrics",
    "rating_metrics",
    "rating_metrics_per_user",
    "row_users",
    "topk_from_scores",
]


def _as_csr(matrix, what: str, shape: tuple[int, int] | None) -> sp.csr_array:
    """A canonical CSR copy (sorted indices, no duplicates, no stored zeros) of `matrix`."""
    if not sp.issparse(matrix):
        raise TypeError(f"{what}: expected a scipy sparse matrix, got {type(matrix).__name__}")
    out = sp.csr_array(matrix, copy=True)
    if shape is not None and out.shape != shape:
        raise ValueError(f"{what}: shape {out.shape}, expected {shape}")
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def row_users(users: npt.ArrayLike | None, n_rows: int) -> npt.NDArray[np.int64]:
    """The user index of each row of a score matrix, which orders its ties: `users` checked to
    hold one per row, or 0..n_rows-1 without it."""
    if users is None:
        return np.arange(n_rows, dtype=np.int64)
    ids = np.asarray(users, np.int64)
    if ids.shape != (n_rows,):
        raise ValueError(f"users: shape {ids.shape}, expected ({n_rows},), one per row")
    return ids


def topk_from_scores(
    scores: npt.ArrayLike, k: int, exclude=None, users: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.floating]]:
    """The k best items per row of `scores` (n_users, n_items), best first.

    exclude: sparse (n_users, n_items) matrix whose nonzero entries (e.g. seen training items)
        are never returned; None excludes nothing.
    users: the rows' user indices (default 0..n_users-1), which break ties.
    Items scoring -inf (excluded ones included) are not candidates. Equal scores are ordered by
    `hashing.pair_hash(user, item)`: a fixed pseudo-random order of the items per user, so the
    result is deterministic and a tie favours no item. (By the lower item index, a model whose
    scores tie was handed the lowest ids, which in MovieLens are the older, more often rated
    films: a list of ML-100K's ten lowest ids scores NDCG@10 0.045 on `xdomain-genre`, where a
    random list scores 0.025.) Rows with fewer than k candidates are padded with item -1 and
    score -inf. Returns (items (n_users, k) int64, scores (n_users, k)). Selects the k largest
    per row (O(n_items), `_largest_unordered`) rather than sorting the row.
    """
    s = np.array(scores, copy=True)
    if s.ndim != 2:
        raise ValueError(f"scores: expected a 2-d (users, items) array, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if np.isnan(s).any():
        row, col = np.argwhere(np.isnan(s))[0]
        raise ValueError(f"scores: NaN at row {row}, item {col}; expected real scores")
    n, m = s.shape
    user_ids = row_users(users, n)
    if exclude is not None:
        ex = _as_csr(exclude, "exclude", (n, m))
        s[np.repeat(np.arange(n), np.diff(ex.indptr)), ex.indices] = -np.inf
    k = int(k)
    kk = min(k, m)
    if kk == 0 or n == 0:
        items = np.full((n, k), PAD, dtype=np.int64)
        return items, np.full((n, k), -np.inf, dtype=s.dtype)

    if kk == m:
        cols = np.broadcast_to(np.arange(m), (n, m))
    else:
        cols = _largest_unordered(s, kk)  # the kk largest; among items tied at the k-th, any
        top = np.take_along_axis(s, cols, axis=1)
        kth = top.min(axis=1, keepdims=True)  # the k-th largest value, (n, 1)
        # A row whose k-th value is shared by more items than the list has places for: which
        # of them make it is decided by their hashes. Elsewhere the kk are the only candidates.
        places = (top == kth).sum(axis=1)
        surplus = np.flatnonzero((s == kth).sum(axis=1) > places)
        cols = np.sort(cols, axis=1)
        if surplus.size:
            sub, cut = s[surplus], kth[surplus]
            above, tied = sub > cut, sub == cut
            need = kk - above.sum(axis=1)  # places left for the items tied at the k-th value
            lowest = _lowest_hashes(tied, need, user_ids[surplus], kk)
            cols[surplus] = np.nonzero(above | lowest)[1].reshape(len(surplus), kk)
    vals = np.take_along_axis(s, cols, axis=1)
    order = np.lexsort((pair_hash(user_ids[:, None], cols), -vals), axis=1)
    items = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    items[np.isneginf(vals)] = PAD
    if kk < k:
        items = np.hstack([items, np.full((n, k - kk), PAD, dtype=np.int64)])
        vals = np.hstack([vals, np.full((n, k - kk), -np.inf, dtype=vals.dtype)])
    return items, vals


def heap_selects(dtype: np.dtype, k: int, n: int) -> bool:
    """Whether to select the k largest of each row of n values with `torch.topk` (a heap per
    row) rather than NumPy's introselect: for k <= n / HEAP_RATIO and a dtype torch has. One
    thread, float64 scores 610 x 9,742, k = 10: 11 ms against `np.argpartition`'s 54 ms;
    float32 similarities 430 x 9,742: k = 100 10 ms against `np.partition`'s 18 ms, k = 200 24
    ms against 18 (1,682 x 1,682: k = 25 8 ms against 15, k = 50 20 against 15)."""
    return k * HEAP_RATIO <= n and np.dtype(dtype) in (np.float16, np.float32, np.float64)


def _largest_unordered(s: npt.NDArray[np.floating], kk: int) -> npt.NDArray[np.int64]:
    """Column indices (n, kk) of the kk largest entries of each row of `s` (kk < n_items), in
    no particular order; among entries tied at the kk-th value, an arbitrary subset."""
    m = s.shape[1]
    if heap_selects(s.dtype, kk, m):
        import torch

        src = torch.from_numpy(np.ascontiguousarray(s))
        return torch.topk(src, kk, dim=1, sorted=False).indices.numpy()
    return np.argpartition(s, m - kk, axis=1)[:, m - kk :]


def _lowest_hashes(
    tied: npt.NDArray[np.bool_], need: npt.NDArray[np.int64], users: npt.NDArray[np.int64], kk: int
) -> npt.NDArray[np.bool_]:
    """Per row of `tied` (rows, n_items), the `need` tied items of lowest `pair_hash(user,
    item)` (need <= kk): one partition of each row's hashes, not a sort of its ties, in blocks
    of rows that keep the (rows, n_items) hashes near `_HASH_BLOCK` values."""
    out = np.zeros_like(tied)
    m = tied.shape[1]
    step = max(1, _HASH_BLOCK // m)
    items = np.arange(m)[None, :]
    for start in range(0, len(tied), step):
        sl = slice(start, start + step)
        keys = pair_hash(users[sl, None], items)
        keys[~tied[sl]] = np.iinfo(np.uint64).max  # never among a row's `need` lowest
        low = np.argpartition(keys, kk - 1, axis=1)[:, :kk]  # the kk lowest, unordered
        low = np.take_along_axis(low, np.argsort(np.take_along_axis(keys, low, 1), 1), 1)
        rows = np.arange(low.shape[0])[:, None]
        out[sl][rows, low] = np.arange(kk)[None, :] < need[sl, None]
    return out


def _check_topk(topk: npt.ArrayLike, n_items: int | None) -> npt.NDArray[np.int64]:
    """Validate a top-K matrix: integers in -1..n_items-1, no item twice in one list."""
    t = np.asarray(topk)
    if t.ndim != 2:
        raise ValueError(f"topk: expected a 2-d (users, K) array, got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"topk: expected integer item indices, got dtype {t.dtype}")
    t = t.astype(np.int64, copy=False)
    if t.size:
        low, high = int(t.min()), int(t.max())
        if low < PAD or (n_items is not None and high >= n_items):
            raise ValueError(
                f"topk: item index range {low}..{high}, expected -1 (padding) .. {n_items}-1"
            )
        srt = np.sort(t, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != PAD)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(f"topk: row {row} recommends an item twice; expected distinct items")
    return t


def ranking_metrics(
    topk: npt.ArrayLike,
    relevant,
    ks: Iterable[int] = (10,),
    names: Sequence[str] = RANKING_METRICS,
) -> dict[str, npt.NDArray[np.float64]]:
    """Per-user ranking metrics, keyed like "ndcg@10", each a (n_users,) float64 vector.

    topk: (n_users, K) item indices, best first, -1 for padding. A k larger than K is allowed
        (the list counts as shorter than k).
    relevant: sparse (n_users, n_items); a nonzero entry marks a relevant test item.
    Users without relevant items get NaN, so `np.nanmean` gives the study value and the
    vectors can be paired across models. Definitions: see the module docstring.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks: expected positive cut-offs, got {ks}")
    unknown = [x for x in names if x not in RANKING_METRICS]
    if unknown:
        raise ValueError(f"names: unknown metrics {unknown}; expected some of {RANKING_METRICS}")
    if not sp.issparse(relevant) or len(relevant.shape) != 2:
        raise TypeError("relevant: expected a 2-d scipy sparse (users, items) matrix")
    n_users, n_items = relevant.shape
    t = _check_topk(topk, n_items)
    if t.shape[0] != n_users:
        raise ValueError(f"topk has {t.shape[0]} rows but relevant has {n_users}; expected equal")
    rel = _as_csr(relevant, "relevant", None)
    n_rel = np.diff(rel.indptr).astype(np.float64)

    kmax = max(ks)
    if t.shape[1] < kmax:
        t = np.hstack([t, np.full((n_users, kmax - t.shape[1]), PAD, dtype=np.int64)])
    t = t[:, :kmax]
    # Hits by binary search of (user, item) keys in the sorted CSR key list.
    rel_keys = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rel.indptr)) * n_items
    rel_keys += rel.indices
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + t
    hits = np.zeros(t.shape, dtype=np.float64)
    if rel_keys.size:
        pos = np.minimum(np.searchsorted(rel_keys, query), rel_keys.size - 1)
        hits[(rel_keys[pos] == query) & (t != PAD)] = 1.0

    ranks = np.arange(1, kmax + 1, dtype=np.float64)
    cum = np.cumsum(hits, axis=1)
    discount = 1.0 / np.log2(ranks + 1.0)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    dcg = np.cumsum(hits * discount, axis=1)
    ap = np.cumsum(hits * cum / ranks, axis=1)
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1) + 1.0, np.inf)
    no_rel = n_rel == 0
    safe_rel = np.where(no_rel, 1.0, n_rel)

    out: dict[str, npt.NDArray[np.float64]] = {}
    for k in ks:
        c = cum[:, k - 1]
        denom = np.minimum(safe_rel, k)
        values = {
            "precision": c / k,
            "recall": c / safe_rel,
            "hr": (c > 0).astype(np.float64),
            "mrr": np.where(first <= k, 1.0 / first, 0.0),
            "ndcg": dcg[:, k - 1] / ideal[denom.astype(np.int64)],
            "map": ap[:, k - 1] / denom,
        }
        for name in names:
            v = values[name]
            v[no_rel] = np.nan
            out[f"{name}@{k}"] = v
    return out


def rating_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, float]:
    """RMSE and MAE over aligned (n,) vectors of true and predicted ratings."""
    t, p = _check_ratings(y_true, y_pred)
    err = p - t
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def rating_metrics_per_user(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, users: npt.ArrayLike, n_users: int
) -> dict[str, npt.NDArray[np.float64]]:
    """Per-user RMSE and MAE, (n_users,) each, NaN for users without test ratings.

    users: (n,) dense user index of each rating. The vectors feed paired tests across models.
    """
    t, p = _check_ratings(y_true, y_pred)
    u = np.asarray(users)
    if u.shape != t.shape or not np.issubdtype(u.dtype, np.integer):
        raise ValueError(f"users: expected {t.shape} integer indices, got {u.shape} {u.dtype}")
    if u.size and (u.min() < 0 or u.max() >= n_users):
        raise ValueError(f"users: index range {u.min()}..{u.max()}, expected 0..{n_users}-1")
    err = p - t
    count = np.bincount(u, minlength=n_users).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.bincount(u, weights=err**2, minlength=n_users) / count
        mae = np.bincount(u, weights=np.abs(err), minlength=n_users) / count
    return {"rmse": np.sqrt(mse), "mae": mae}


def interest_metrics(labels: npt.ArrayLike, probs: npt.ArrayLike) -> dict[str, float]:
    """AUC and log loss of predicted interest probabilities against 0/1 labels, (n,) each.

    Probabilities are clipped to [1e-7, 1 - 1e-7] for the log loss, so one confident miss
    costs at most -log(1e-7) = 16.1 instead of infinity.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and probs {p.shape}: expected equal, non-empty")
    if not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2:
        raise ValueError("labels: expected both 0 and 1 and nothing else")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probs: expected finite probabilities in [0, 1]")
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, clipped))}


def query_ndcg_per_user(
    users: npt.ArrayLike, true: npt.ArrayLike, predicted: npt.ArrayLike, k: int, n_users: int
) -> npt.NDArray[np.float64]:
    """Per-user NDCG@k of a user's query items ranked by `predicted`, graded by `true`
    (gain = the rating, discount 1/log2(rank + 1)): MeLU's measure, which ranks only the query
    items, so it is not comparable with a full-catalogue NDCG. Items tied in `predicted` share
    the mean discount of the ranks they span (McSherry & Najork 2008: the expected DCG over
    every order of the ties), so neither the input order nor an item's id decides a tie.
    Shape (n_users,), NaN for users without query rows."""
    u = np.asarray(users, np.int64).ravel()
    t = np.asarray(true, np.float64).ravel()
    p = np.asarray(predicted, np.float64).ravel()
    if not (u.shape == t.shape == p.shape):
        raise ValueError(f"users {u.shape}, true {t.shape}, predicted {p.shape}: expected equal")
    if k < 1:
        raise ValueError(f"query_ndcg_per_user: k={k!r}; expected >= 1")
    out = np.full(n_users, np.nan)
    if not u.size:
        return out

    def dcg(order: np.ndarray, key: np.ndarray | None) -> np.ndarray:
        # `order` sorts by (user, -key); a run of equal (user, key) is one tie group, and a
        # group whose gains differ shares its mean discount (equal gains need no averaging, and
        # without it a perfect ranking gives exactly the ideal DCG).
        uu, gain = u[order], t[order]
        new_user = np.diff(uu) != 0
        start = np.r_[0, np.flatnonzero(new_user) + 1]
        rank = np.arange(len(uu)) - np.repeat(start, np.diff(np.r_[start, len(uu)]))
        discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
        if key is not None:
            group = np.r_[0, np.flatnonzero(new_user | (np.diff(key[order]) != 0)) + 1]
            size = np.diff(np.r_[group, len(uu)])
            mixed = np.maximum.reduceat(gain, group) != np.minimum.reduceat(gain, group)
            mean = np.add.reduceat(discount, group) / size
            discount = np.where(np.repeat(mixed, size), np.repeat(mean, size), discount)
        return np.bincount(uu, weights=gain * discount, minlength=n_users)

    by_prediction = np.lexsort((-p, u))
    ideal = np.lexsort((-t, u))
    present = np.bincount(u, minlength=n_users) > 0
    ideal_dcg = dcg(ideal, None)
    ranked_dcg = dcg(by_prediction, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[present] = np.where(ideal_dcg[present] > 0,
                                ranked_dcg[present] / ideal_dcg[present], 0.0)  # fmt: skip
    return out


def logloss_per_user(
    labels: npt.ArrayLike, probs: npt.ArrayLike, users: npt.ArrayLike, n_users: int
) -> npt.NDArray[np.float64]:
    """Each user's mean log loss over their (label, probability) pairs, clipped as in
    `interest_metrics`: shape (n_users,), NaN for users without pairs."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    u = np.asarray(users, dtype=np.int64).ravel()
    if not (y.shape == p.shape == u.shape):
        raise ValueError(f"labels {y.shape}, probs {p.shape}, users {u.shape}: expected equal")
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    counts = np.bincount(u, minlength=n_users).astype(np.float64)
    sums = np.bincount(u, weights=loss, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _check_ratings(y_true, y_pred) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape}: expected equal, non-empty")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true/y_pred: non-finite values; expected finite ratings")
    return t, p


def coverage(topk: npt.ArrayLike, n_items: int) -> float:
    """Catalogue coverage: distinct items recommended anywhere in `topk` / n_items."""
    t = _check_topk(topk, n_items)
    return float(np.unique(t[t != PAD]).size / n_items)


def topk_overlap(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Mean share of list a's items that list b also holds, row by row: how far two top-k
    tables of the same users agree (1 = the same items, in any order). Padding (-1) counts as
    no item; a row of a with no item is left out (NaN if every row is)."""
    x, y = _check_topk(a, None), _check_topk(b, None)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"topk_overlap: {x.shape[0]} rows against {y.shape[0]}; expected the same users"
        )
    real = x != PAD
    shared = ((x[:, :, None] == y[:, None, :]).any(axis=2) & real).sum(axis=1)
    n = real.sum(axis=1)
    return float(np.mean(shared[n > 0] / n[n > 0])) if (n > 0).any() else float("nan")


def novelty(topk: npt.ArrayLike, item_popularity: npt.ArrayLike, n_users: int) -> float:
    """Mean self-information of recommended items, in bits.

    Each item scores -log2(pop_i / n_users), pop_i = number of (training) users who interacted
    with item i (an item with pop 0 is counted as pop 1, to stay finite). A list scores the mean
    over its items; the result is the mean over lists with at least one item (NaN if none).
    """
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1 or (pop < 0).any():
        raise ValueError("item_popularity: expected a (n_items,) vector of non-negative counts")
    if n_users < 1:
        raise ValueError(f"n_users: {n_users}, expected the positive number of users counted")
    t = _check_topk(topk, pop.size)
    info = -np.log2(np.maximum(pop, 1.0) / n_users)
    valid = t != PAD
    per_list = np.where(valid, info[np.where(valid, t, 0)], 0.0).sum(axis=1)
    n = valid.sum(axis=1)
    return float(np.mean(per_list[n > 0] / n[n > 0])) if (n > 0).any() else float("nan")


def intra_list_diversity(topk: npt.ArrayLike, item_features) -> float:
    """Mean pairwise cosine distance (1 - cosine similarity) within each list.

    item_features: (n_items, f) dense or sparse, e.g. genre one-hot. An item without features
        has similarity 0 to every item. Each list scores the mean over its unordered pairs of
        (non-padding) items; the result is the mean over lists with at least two items (NaN if
        none). Computed without forming pairs: sum_{i<j} cos_ij = (|sum_i x_i|^2 - sum_i |x_i|^2)/2
        with unit rows x_i.
    """
    raw = item_features if sp.issparse(item_features) else np.asarray(item_features)
    f = sp.csr_array(raw, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError("item_features: expected a 2-d (n_items, n_features) matrix")
    n_items = f.shape[0]
    t = _check_topk(topk, n_items)
    norms = np.sqrt(np.asarray(f.multiply(f).sum(axis=1)).ravel())
    unit = sp.diags_array(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ f
    valid = t != PAD
    rows = np.repeat(np.arange(t.shape[0]), valid.sum(axis=1))
    pick = sp.csr_array((np.ones(rows.size), (rows, t[valid])), shape=(t.shape[0], n_items))
    summed = pick @ unit  # (n_lists, f): sum of unit feature rows of each list
    sq = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
    self_sq = (pick @ (norms > 0).astype(np.float64)).ravel()
    m = valid.sum(axis=1).astype(np.float64)
    ok = m >= 2
    if not ok.any():
        return float("nan")
    pairs = m[ok] * (m[ok] - 1.0) / 2.0
    mean_cos = (sq[ok] - self_sq[ok]) / 2.0 / pairs
    return float(np.mean(1.0 - mean_cos))


def evaluate_topk(
    topk: npt.ArrayLike,
    relevant,
    *,
    ks: Iterable[int] = (10,),
    n_items: int | None = None,
    item_popularity: npt.ArrayLike | None = None,
    item_features=None,
    n_users: int | None = None,
    names: Sequence[str] = RANKING_METRICS,
) -> dict[str, float]:
    """Study-level numbers for one top-K matrix: ranking metrics and beyond-accuracy ones.

    Ranking metrics ("ndcg@10", ...) are the mean over users with a relevant item, as the audit
    recomputes them; "coverage@k" always; "novelty@k" with `item_popularity` (counted over
    `n_users` users, default the rows of `relevant`); "ild@k" with `item_features`.
    n_items defaults to the columns of `relevant`.
    """
    ks = [int(k) for k in ks]
    n_items = relevant.shape[1] if n_items is None else int(n_items)
    per_user = ranking_metrics(topk, relevant, ks=ks, names=names)
    out: dict[str, float] = {}
    for key, v in per_user.items():
        out[key] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    t = np.asarray(topk)
    for k in ks:
        head = t[:, :k]
        out[f"coverage@{k}"] = coverage(head, n_items)
        if item_popularity is not None:
            pop_users = relevant.shape[0] if n_users is None else int(n_users)
            out[f"novelty@{k}"] = novelty(head, item_popularity, pop_users)
        if item_features is not None:
            out[f"ild@{k}"] = intra_list_diversity(head, item_features)
    return out
