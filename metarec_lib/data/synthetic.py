"""A synthetic data set generated from a known latent structure.

Why: the study needs data where the right answer is known: to check that models recover
structure, to sweep cross-domain relatedness for transfer, and to make cold-start users at will.
The schema mirrors the study document's records (user, product, behaviour, rating, price,
category, timestamp) inside the project's `Dataset`.

Ids are 1-based: user index u has `user_id` u + 1, item index i has `item_id` i + 1. With d the
domain of item i, the noise-free latent score is

    score[u, i] = global_mean + user_bias[d, u] + item_bias[i]
                  + factor_scale * <user_factors[d, u], item_factors[i]> / sqrt(n_factors)
                  + category_preference[u, category[i]] - price_sensitivity[u] * price_z[i]

and `rating = clip(round(score + N(0, noise)), 1, 5)`; `behavior` is "view", "cart" or
"purchase" as `score + N(0, noise)` (a second, independent draw) passes 3.75 and 4.5. Per domain,
`user_factors[d] = sqrt(r) * shared + sqrt(1 - r) * own[d]` with r = `domain_relatedness`, so one
user's factors in two domains correlate with r (identical at 1, independent at 0); the user bias
is mixed the same way. Category preference and price sensitivity come from the observable user
features (gender, age, segment) plus a little individual noise, so feature models can learn them.
With several domains they too are per domain, `sqrt(r) * shared + sqrt(1 - r) * own[d]` (own[d]
built the same way from the features, with the domain's own effects), so at r = 0 a user's
tastes in two domains have nothing in common but the features they are read from. Which items a
user rates is drawn without replacement with Zipf-like popularity weights
`rank ** -popularity_skew`; so a user's activity is shared by the domains at every r. With
`exposure_taste` b > 0 users also pick what they expect to like: the weights become
`popularity * exp(b * score[u, i])` (Gumbel-top-k per user), so which items a user rates carries
their taste, as it does in real logs where people choose what to watch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from metarec_lib.data.dataset import Dataset

BEHAVIORS = ("view", "cart", "purchase")
SEGMENTS = ("budget", "mainstream", "premium")
GENDERS = ("F", "M")

_SEGMENT_SHARE = np.array([0.4, 0.4, 0.2])
_SEGMENT_PRICE_SENSITIVITY = np.array([0.5, 0.2, -0.1])  # budget users avoid dear items
_GLOBAL_MEAN = 3.5
_FACTOR_SCALE = 0.7
_BIAS_SD = 0.3
# Behaviour thresholds on a separately-noised latent score: roughly a view/cart/purchase funnel.
_CART_AT, _PURCHASE_AT = 3.75, 4.5
_T0 = 1_577_836_800  # 2020-01-01 00:00 UTC
_SPAN = 4 * 365 * 86_400
_MAX_ROUNDS = 64  # stream-extension rounds before the sampler falls back to Gumbel-top-k
_CHUNK = 1 << 20  # rows per chunk where a (rows, n_factors) or (rows, n_items) block is built


@dataclass(frozen=True)
class SyntheticTruth:
    """The latent structure behind a synthetic data set (arrays by 0-based index = id - 1).

    user_factors: (n_domains, n_users, n_factors); user_bias: (n_domains, n_users).
    item_factors: (n_items, n_factors); item_bias, item_domain, item_category, price_z,
        popularity (sampling probability, sums to 1): (n_items,).
    category_preference: (n_domains, n_users, n_categories); price_sensitivity: (n_domains,
        n_users).
    coldstart_user_ids: sorted `user_id`s drawn as cold-start users.
    """

    global_mean: float
    factor_scale: float
    user_factors: npt.NDArray[np.float64]
    user_bias: npt.NDArray[np.float64]
    item_factors: npt.NDArray[np.float64]
    item_bias: npt.NDArray[np.float64]
    item_domain: npt.NDArray[np.int64]
    item_category: npt.NDArray[np.int64]
    price_z: npt.NDArray[np.float64]
    popularity: npt.NDArray[np.float64]
    category_preference: npt.NDArray[np.float64]
    price_sensitivity: npt.NDArray[np.float64]
    coldstart_user_ids: npt.NDArray[np.int64]

    def score(self, user_ids: npt.ArrayLike, item_ids: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Noise-free latent score of each (user_id, item_id) pair, shape (n_pairs,)."""
        u = np.asarray(user_ids, dtype=np.int64) - 1
        i = np.asarray(item_ids, dtype=np.int64) - 1
        n_users, n_items = self.user_bias.shape[1], len(self.item_bias)
        for name, idx, n in (("user_id", u, n_users), ("item_id", i, n_items)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"SyntheticTruth.score: {name} outside 1..{n}")
        u, i = np.broadcast_arrays(u, i)
        u, i = u.ravel(), i.ravel()
        out = np.empty(u.shape, np.float64)
        k = self.item_factors.shape[1]
        for s in range(0, len(u), _CHUNK):
            uu, ii = u[s : s + _CHUNK], i[s : s + _CHUNK]
            d = self.item_domain[ii]
            dot = np.einsum("nk,nk->n", self.user_factors[d, uu], self.item_factors[ii])
            out[s : s + _CHUNK] = (
                self.global_mean
                + self.user_bias[d, uu]
                + self.item_bias[ii]
                + self.factor_scale * dot / math.sqrt(k)
                + self.category_preference[d, uu, self.item_category[ii]]
                - self.price_sensitivity[d, uu] * self.price_z[ii]
            )
        return out


@overload
def generate_synthetic(*, return_truth: Literal[False] = ..., **kw) -> Dataset: ...
@overload
def generate_synthetic(*, return_truth: Literal[True], **kw) -> tuple[Dataset, SyntheticTruth]: ...


def generate_synthetic(
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    density: float = 0.02,
    n_factors: int = 8,
    n_domains: int = 1,
    domain_relatedness: float = 1.0,
    n_categories: int = 10,
    coldstart_fraction: float = 0.0,
    coldstart_ratings: tuple[int, int] = (5, 20),
    min_ratings: int = 5,
    popularity_skew: float = 1.0,
    exposure_taste: float = 0.0,
    noise: float = 0.5,
    seed: int | np.random.Generator = 0,
    return_truth: bool = False,
) -> Dataset | tuple[Dataset, SyntheticTruth]:
    """Generate the "synthetic" data set; with `return_truth`, also its `SyntheticTruth`.

    density: expected fraction of the catalogue a regular user rates (counts vary log-normally
        around it, at least `min_ratings`, at most n_items); cold-start users are excluded.
    n_domains / domain_relatedness: items are split evenly into domains 0..n_domains-1; user
        factors, biases, category tastes and price sensitivities correlate across domains with
        `domain_relatedness` in [0, 1].
    coldstart_fraction: share of users given only `coldstart_ratings` (lo, hi) ratings, uniform.
    popularity_skew: Zipf exponent of the item sampling weights (0 = uniform).
    exposure_taste: how strongly a user's latent score tilts which items they rate (0 = by
        popularity alone, the default; 2 makes one score point about 7x as likely to be rated).
    noise: standard deviation of the Gaussian noise added before rounding the rating.
    seed: an int (same int, same data and digest) or a numpy Generator.
    """
    _check_params(
        n_users=n_users, n_items=n_items, density=density, n_factors=n_factors,
        n_domains=n_domains, domain_relatedness=domain_relatedness, n_categories=n_categories,
        coldstart_fraction=coldstart_fraction, coldstart_ratings=coldstart_ratings,
        min_ratings=min_ratings, popularity_skew=popularity_skew, noise=noise,
        exposure_taste=exposure_taste,
    )  # fmt: skip
    rng_users, rng_items, rng_counts, rng_sample, rng_obs = np.random.default_rng(seed).spawn(5)
    users, gender, segment, age_z = _make_users(n_users, rng_users)
    items, item_truth = _make_items(
        n_items, n_factors, n_domains, n_categories, popularity_skew, rng_items
    )
    features = (gender, age_z, segment)
    category_preference = _category_preference(*features, n_categories, rng_users)
    price_sensitivity = _SEGMENT_PRICE_SENSITIVITY[segment] + rng_users.normal(0.0, 0.1, n_users)
    counts, cold = _rating_counts(
        n_users, n_items, density, coldstart_fraction, coldstart_ratings, min_ratings, rng_counts
    )
    r = float(domain_relatedness)
    shared = rng_users.normal(0.0, 1.0, (n_users, n_factors + 1))
    own = rng_users.normal(0.0, 1.0, (n_domains, n_users, n_factors + 1))
    mixed = _mix(shared, own, r)  # last column: the bias
    # Drawn last and only with several domains, so one-domain data sets stay as they were.
    category_preference = np.repeat(category_preference[None], n_domains, axis=0)
    price_sensitivity = np.repeat(price_sensitivity[None], n_domains, axis=0)
    if n_domains > 1 and r < 1.0:
        # The domains' own segment effects (not the fixed budget/premium order), centred on the
        # same mean, so the mix keeps the mean and spread of the price sensitivity.
        centre = _SEGMENT_PRICE_SENSITIVITY.mean()
        for d in range(n_domains):
            own_taste = _category_preference(*features, n_categories, rng_users)
            category_preference[d] = _mix(category_preference[d], own_taste, r)
            own_price = (
                centre
                + rng_users.normal(0.0, _SEGMENT_PRICE_SENSITIVITY.std(), 3)[segment]
                + rng_users.normal(0.0, 0.1, n_users)
            )
            price_sensitivity[d] = centre + _mix(price_sensitivity[d] - centre,
                                                 own_price - centre, r)  # fmt: skip
    truth = SyntheticTruth(
        global_mean=_GLOBAL_MEAN,
        factor_scale=_FACTOR_SCALE,
        user_factors=np.ascontiguousarray(mixed[:, :, :n_factors]),
        user_bias=_BIAS_SD * mixed[:, :, n_factors],
        category_preference=category_preference,
        price_sensitivity=price_sensitivity,
        coldstart_user_ids=np.flatnonzero(cold).astype(np.int64) + 1,
        **item_truth,
    )
    if exposure_taste > 0:
        u, i = _sample_by_taste(counts, truth, float(exposure_taste), rng_sample)
    else:
        u, i = _sample_items(counts, truth.popularity, rng_sample)

    score = truth.score(u + 1, i + 1)
    rating = np.clip(np.rint(score + rng_obs.normal(0.0, noise, len(u))), 1.0, 5.0)
    propensity = score + rng_obs.normal(0.0, noise, len(u))
    behavior = np.digitize(propensity, [_CART_AT, _PURCHASE_AT]).astype(np.int8)
    start = _T0 + rng_obs.integers(0, (3 * _SPAN) // 4, n_users)
    length = np.minimum(rng_obs.exponential(_SPAN / 4, n_users), _T0 + _SPAN - start) + 86_400
    timestamp = start[u] + np.floor(rng_obs.random(len(u)) * length[u]).astype(np.int64)
    # Sort by (user, time); one int64 key argsort is several times faster than a lexsort.
    order = np.argsort(u * (_SPAN + 2 * 86_400) + (timestamp - _T0), kind="stable")
    interactions = pd.DataFrame(
        {
            "user_id": u[order] + 1,
            "item_id": i[order] + 1,
            "rating": rating[order],
            "timestamp": timestamp[order].astype(np.int64),
            "behavior": pd.Categorical.from_codes(
                behavior[order], categories=list(BEHAVIORS), ordered=True
            ),
            "domain": truth.item_domain[i[order]],
        }
    )
    params = (
        f"n_users={n_users}, n_items={n_items}, density={density}, n_factors={n_factors}, "
        f"n_domains={n_domains}, domain_relatedness={domain_relatedness}, "
        f"n_categories={n_categories}, coldstart_fraction={coldstart_fraction}, "
        f"coldstart_ratings={tuple(coldstart_ratings)}, min_ratings={min_ratings}, "
        f"popularity_skew={popularity_skew}, noise={noise}, "
        + (f"exposure_taste={exposure_taste}, " if exposure_taste else "")
        + f"seed={seed if isinstance(seed, int) else 'Generator'}"
    )
    ds = Dataset(
        name="synthetic",
        interactions=interactions,
        items=items,
        users=users,
        rating_scale=(1.0, 5.0),
        source="generated",
        notes=(f"metarec_lib.data.synthetic.generate_synthetic({params})",),
    )
    return (ds, truth) if return_truth else ds


def _make_users(
    n_users: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Users table (age, gender, segment) and the codes the preferences are built from."""
    age = np.clip(np.rint(rng.normal(38.0, 12.0, n_users)), 16, 80).astype(np.int64)
    gender = rng.integers(0, 2, n_users)
    segment = rng.choice(3, size=n_users, p=_SEGMENT_SHARE)
    users = pd.DataFrame(
        {
            "age": age,
            "gender": pd.array(np.asarray(GENDERS)[gender], dtype="str"),
            "segment": pd.array(np.asarray(SEGMENTS)[segment], dtype="str"),
        },
        index=pd.Index(np.arange(1, n_users + 1, dtype=np.int64), name="user_id"),
    )
    age_z = (age - 38.0) / 12.0
    return users, gender, segment, age_z


def _mix(shared: np.ndarray, own: np.ndarray, r: float) -> np.ndarray:
    """`sqrt(r) * shared + sqrt(1 - r) * own`: unit-variance parts that correlate with r across
    domains (identical at 1, independent at 0)."""
    return math.sqrt(r) * shared + math.sqrt(1.0 - r) * own


def _category_preference(
    gender: np.ndarray,
    age_z: np.ndarray,
    segment: np.ndarray,
    n_categories: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_users, n_categories) category taste: effects of gender, age and segment drawn from
    `rng`, plus a little individual noise, so feature models can learn most of it."""
    gender_effect = rng.normal(0.0, 0.3, (2, n_categories))
    age_effect = rng.normal(0.0, 0.3, n_categories)
    segment_effect = rng.normal(0.0, 0.2, (3, n_categories))
    return (
        gender_effect[gender]
        + age_z[:, None] * age_effect
        + segment_effect[segment]
        + rng.normal(0.0, 0.15, (len(gender), n_categories))
    )


def _make_items(
    n_items: int,
    n_factors: int,
    n_domains: int,
    n_categories: int,
    popularity_skew: float,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Items table (title, year, genres, category, price, domain) and the item half of the truth."""
    domain = rng.permutation(np.arange(n_items, dtype=np.int64) % n_domains)
    category = rng.integers(0, n_categories, n_items).astype(np.int64)
    log_price = rng.uniform(np.log(5.0), np.log(200.0), n_categories)[category]
    log_price = log_price + rng.normal(0.0, 0.5, n_items)
    price = np.round(np.exp(log_price), 2)
    price_z = (log_price - log_price.mean()) / (log_price.std() or 1.0)
    rank = rng.permutation(n_items) + 1.0  # popularity rank 1 = most popular
    log_w = -popularity_skew * np.log(rank)
    popularity = np.exp(log_w - log_w.max())
    popularity /= popularity.sum()
    pop_sd = log_w.std()
    pop_z = (log_w - log_w.mean()) / pop_sd if pop_sd > 0 else np.zeros(n_items)
    item_bias = rng.normal(0.0, _BIAS_SD, n_items) + 0.1 * pop_z  # popular items rate a bit higher
    item_factors = rng.normal(0.0, 1.0, (n_items, n_factors))
    names = np.asarray([f"category {c}" for c in range(n_categories)])
    ids = np.arange(1, n_items + 1, dtype=np.int64)
    items = pd.DataFrame(
        {
            "title": pd.array([f"item {j}" for j in ids], dtype="str"),
            "year": pd.array(rng.integers(1990, 2020, n_items), dtype="Int64"),
            "genres": pd.array(names[category], dtype="str"),
            "category": pd.array(names[category], dtype="str"),
            "price": price,
            "domain": domain,
        },
        index=pd.Index(ids, name="item_id"),
    )
    truth = {
        "item_factors": item_factors,
        "item_bias": item_bias,
        "item_domain": domain,
        "item_category": category,
        "price_z": price_z,
        "popularity": popularity,
    }
    return items, truth


def _rating_counts(
    n_users: int,
    n_items: int,
    density: float,
    coldstart_fraction: float,
    coldstart_ratings: tuple[int, int],
    min_ratings: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Ratings per user (n_users,) and the cold-start mask (n_users,)."""
    sigma = 0.6  # log-normal activity: a few heavy users, many light ones (mean preserved)
    counts = density * n_items * rng.lognormal(-(sigma**2) / 2, sigma, n_users)
    counts = np.clip(np.rint(counts), min_ratings, n_items).astype(np.int64)
    cold = np.zeros(n_users, bool)
    n_cold = int(round(coldstart_fraction * n_users))
    cold[rng.choice(n_users, size=n_cold, replace=False)] = True
    lo, hi = coldstart_ratings
    hi = min(hi, n_items)
    counts[cold] = rng.integers(lo, hi + 1, n_cold)
    return counts, cold


def _sample_by_taste(
    counts: np.ndarray, truth: SyntheticTruth, taste: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per user u, `counts[u]` distinct items without replacement with weights
    `popularity * exp(taste * score[u, :])`: Gumbel-top-k on a block of users at a time.
    Returns (user index, item index) arrays of length counts.sum()."""
    n_items, n_users = len(truth.popularity), len(counts)
    log_pop = np.log(np.maximum(truth.popularity, 1e-300))
    items = np.arange(1, n_items + 1)
    out_u, out_i = [], []
    block = max(1, _CHUNK // n_items)
    for start in range(0, n_users, block):
        users = np.arange(start, min(n_users, start + block))
        score = truth.score(users[:, None] + 1, items[None, :]).reshape(len(users), n_items)
        keys = log_pop + taste * score + rng.gumbel(size=(len(users), n_items))
        out_u.append(np.repeat(users, counts[users]))
        out_i.append(_largest_keys(keys, counts[users]))
    return np.concatenate(out_u).astype(np.int64), np.concatenate(out_i).astype(np.int64)


def _largest_keys(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Gumbel-top-k: the column indices of each row's `counts[row]` largest keys, largest
    first, rows concatenated (only the largest `max(counts)` are sorted)."""
    n_items = keys.shape[1]
    top = int(counts.max()) if len(counts) else 0
    if top == 0:
        return np.empty(0, np.int64)
    if top < n_items:  # only the `top` largest keys matter: partition, then sort those
        part = np.argpartition(-keys, top - 1, axis=1)[:, :top]
        keys = np.take_along_axis(keys, part, axis=1)
    else:
        part = np.broadcast_to(np.arange(n_items), keys.shape)
    order = np.take_along_axis(part, np.argsort(-keys, axis=1, kind="stable"), axis=1)
    return order[np.arange(order.shape[1]) < counts[:, None]]


def _sample_items(
    counts: np.ndarray,
    p: np.ndarray,
    rng: np.random.Generator,
    method: Literal["auto", "stream", "dense"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Per user u, `counts[u]` distinct items by successive sampling with probabilities `p`.

    Light users (auto: counts <= n_items / 4): a stream of draws with replacement, keeping the
    first distinct items (the same distribution as sampling without replacement). Streams of
    users who fall short are extended in rounds, drawing only from items beyond the longest
    popularity-rank prefix the user already holds (still exact: draws of held items are
    rejected), which keeps heavy popularity skew cheap. Heavy users: Gumbel-top-k over the row.
    Returns (user index, item index) arrays of length counts.sum().
    """
    n_items, n_users = len(p), len(counts)
    by_rank = np.argsort(-p, kind="stable")  # popularity rank -> item
    p_rank = p[by_rank]
    cdf = np.cumsum(p_rank)
    cdf /= cdf[-1]
    alias_prob, alias = _alias_table(p_rank)
    # Dense when the stream would be long: many items wanted, or wanted from so few items with
    # float-resolvable probability that the stream would crawl through a vanishing tail.
    resolvable = int((p_rank >= 1e-9).sum())
    dense = (4 * counts > n_items) | (2 * counts > resolvable)
    if method != "auto":  # for tests: both paths draw from the same distribution
        dense = np.full(n_users, method == "dense")
    out_u, out_i = [], []

    active = np.flatnonzero(~dense & (counts > 0))
    grid, distinct = _expected_distinct(p_rank)
    first_draws = np.interp(counts[active], distinct, grid)
    draws = np.ceil(np.minimum(1.1 * first_draws, 3.0 * counts[active])).astype(np.int64) + 8
    lo = np.zeros(n_users)  # popularity mass of the rank prefix each user already holds
    prev_u = prev_r = np.empty(0, np.int64)
    prev_n = np.zeros(n_users, np.int64)  # distinct items held by each still-active user
    for _ in range(_MAX_ROUNDS):
        if not active.size:
            break
        new_u = np.repeat(active, draws)
        new_r = _draw_ranks(lo[new_u], alias_prob, alias, cdf, rng)
        all_u, all_r = _interleave(active, prev_n[active], draws, prev_u, prev_r, new_u, new_r)
        first = _first_occurrence(all_u, all_r, n_items)
        uu, rr = all_u[first], all_r[first]
        per_user = np.bincount(uu, minlength=n_users)
        rank = np.arange(len(uu)) - (np.cumsum(per_user) - per_user)[uu]
        is_short = np.zeros(n_users, bool)
        is_short[active[per_user[active] < counts[active]]] = True
        done = ~is_short[uu]
        keep = done & (rank < counts[uu])
        out_u.append(uu[keep])
        out_i.append(by_rank[rr[keep]])
        prev_u, prev_r = uu[~done], rr[~done]
        active = np.flatnonzero(is_short)
        prev_n[:] = 0
        prev_n[active] = per_user[active]
        lo[active] = _prefix_mass(prev_u, prev_r, active, prev_n[active], cdf)
        draws = np.ceil(1.5 * (counts[active] - prev_n[active])).astype(np.int64) + 8
    dense[active] = True  # safety net, not reached in practice: finish stragglers densely

    heavy = np.flatnonzero(dense)
    log_p = np.log(np.maximum(p, np.finfo(float).tiny))
    rows = max(1, _CHUNK // n_items)
    for s in range(0, len(heavy), rows):
        block = heavy[s : s + rows]
        keys = log_p + rng.gumbel(size=(len(block), n_items))
        out_u.append(np.repeat(block, counts[block]))
        out_i.append(_largest_keys(keys, counts[block]))
    u = np.concatenate(out_u).astype(np.int64) if out_u else np.empty(0, np.int64)
    i = np.concatenate(out_i).astype(np.int64) if out_i else np.empty(0, np.int64)
    return u, i


def _draw_ranks(
    lo: np.ndarray,
    alias_prob: np.ndarray,
    alias: np.ndarray,
    cdf: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One popularity-rank draw per entry of `lo`, restricted to ranks whose cdf exceeds lo.

    Unrestricted draws (lo == 0) use the O(1) alias method; restricted ones the inverse cdf.
    """
    n = len(cdf)
    fresh = lo == 0.0
    if fresh.all():
        j = rng.integers(0, n, len(lo))
        return np.where(rng.random(len(j)) < alias_prob[j], j, alias[j])
    out = np.empty(len(lo), np.int64)
    j = rng.integers(0, n, int(fresh.sum()))
    out[fresh] = np.where(rng.random(len(j)) < alias_prob[j], j, alias[j])
    base = lo[~fresh]
    x = base + rng.random(len(base)) * (1.0 - base)
    out[~fresh] = np.minimum(np.searchsorted(cdf, x, side="right"), n - 1)
    return out


def _interleave(
    users: np.ndarray,
    n_prev: np.ndarray,
    n_new: np.ndarray,
    prev_u: np.ndarray,
    prev_r: np.ndarray,
    new_u: np.ndarray,
    new_r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate two user-grouped streams per user (held items first), without a sort."""
    if prev_u.size == 0:
        return new_u, new_r
    total = n_prev + n_new
    start = np.cumsum(total) - total
    out_u = np.repeat(users, total)
    out_r = np.empty(len(out_u), np.int64)
    prev_start = np.cumsum(n_prev) - n_prev
    new_start = np.cumsum(n_new) - n_new
    out_r[np.repeat(start - prev_start, n_prev) + np.arange(len(prev_r))] = prev_r
    out_r[np.repeat(start + n_prev - new_start, n_new) + np.arange(len(new_r))] = new_r
    return out_u, out_r


def _prefix_mass(
    u: np.ndarray, r: np.ndarray, users: np.ndarray, n_held: np.ndarray, cdf: np.ndarray
) -> np.ndarray:
    """cdf mass of the longest rank prefix 0..m-1 each user holds (u grouped, users sorted)."""
    seg = n_held + 1  # m <= n_held, so a segment of n_held + 1 flags always has a gap
    start = np.cumsum(seg) - seg
    pos = np.searchsorted(users, u)
    small = r < seg[pos]
    flags = np.zeros(int(seg.sum()), bool)
    flags[start[pos[small]] + r[small]] = True
    local = np.arange(len(flags)) - np.repeat(start, seg)
    m = np.minimum.reduceat(np.where(flags, len(cdf), local), start)
    return np.where(m > 0, cdf[np.maximum(m - 1, 0)], 0.0)


def _first_occurrence(u: np.ndarray, i: np.ndarray, n_items: int) -> np.ndarray:
    """Positions (sorted) of the first occurrence of each (u, i) pair; `u` must be grouped.

    A per-chunk scratch table with `np.minimum.at` instead of `np.unique`: no O(n log n) sort,
    several times faster on ten million draws.
    """
    n = len(u)
    if n == 0:
        return np.empty(0, np.int64)
    rows = max(1, (4 * _CHUNK) // n_items)  # users per chunk; scratch holds rows * n_items
    big = np.iinfo(np.int64).max
    scratch = np.full(rows * n_items, big, np.int64)
    # Chunk boundaries at user changes, so each chunk spans fewer than `rows` distinct users.
    change = np.flatnonzero(np.diff(u)) + 1
    starts = np.concatenate([[0], change])
    bounds = np.append(starts[::rows], n)
    keep = np.zeros(n, bool)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        local_user = np.cumsum(np.diff(u[a:b], prepend=u[a]) != 0)
        key = local_user * n_items + i[a:b]
        pos = np.arange(a, b)
        np.minimum.at(scratch, key, pos)
        keep[a:b] = scratch[key] == pos
        scratch[key] = big
    return np.flatnonzero(keep)


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table for O(1) draws from `p` (cheaper than a binary search per draw)."""
    n = len(p)
    scaled = p * (n / p.sum())
    prob = np.ones(n)
    alias = np.arange(n)
    small = list(np.flatnonzero(scaled < 1.0))
    large = list(np.flatnonzero(scaled >= 1.0))
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias  # leftovers (rounding) keep prob 1: they are their own alias


def _expected_distinct(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected distinct items after m draws with replacement, on a grid of m: (grid, E)."""
    n_items = len(p)
    grid = np.unique(np.ceil(np.geomspace(1.0, 64.0 * n_items + 1, 200)))
    log_q = np.log1p(-np.minimum(p, 1.0 - 1e-16))
    distinct = np.zeros(len(grid))
    step = max(1, (1 << 22) // len(grid))
    for s in range(0, n_items, step):
        distinct += -np.expm1(np.outer(grid, log_q[s : s + step])).sum(axis=1)
    return grid, np.maximum.accumulate(distinct)


def _check_params(**kw) -> None:
    """Raise ValueError naming the parameter, its value and what was expected."""

    def fail(name: str, expected: str) -> None:
        raise ValueError(f"generate_synthetic: {name}={kw[name]!r}; expected {expected}")

    for name in ("n_users", "n_items", "n_factors", "n_domains", "n_categories", "min_ratings"):
        v = kw[name]
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            fail(name, "an integer >= 1")
    n_items = kw["n_items"]
    if not 0.0 < kw["density"] <= 1.0:
        fail("density", "a fraction in (0, 1]")
    if kw["n_domains"] > n_items:
        fail("n_domains", f"at most n_items={n_items} (every domain needs an item)")
    if kw["min_ratings"] > n_items:
        fail("min_ratings", f"at most n_items={n_items}")
    for name in ("domain_relatedness", "coldstart_fraction"):
        if not 0.0 <= kw[name] <= 1.0:
            fail(name, "a number in [0, 1]")
    lohi = kw["coldstart_ratings"]
    if (
        not isinstance(lohi, tuple | list)
        or len(lohi) != 2
        or not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in lohi)
        or not 1 <= lohi[0] <= lohi[1]
        or (kw["coldstart_fraction"] > 0 and lohi[0] > n_items)
    ):
        fail(
            "coldstart_ratings", f"(lo, hi) integers with 1 <= lo <= hi and lo <= n_items={n_items}"
        )
    if not 0.0 <= kw["exposure_taste"] <= 10.0:
        fail("exposure_taste", "a number in [0, 10]")
    if not 0.0 <= kw["popularity_skew"] <= 5.0:
        fail("popularity_skew", "a Zipf exponent in [0, 5]")
    if not 0.0 <= kw["noise"] < math.inf:
        fail("noise", "a finite standard deviation >= 0")
