"""Content-based recommenders: what users and items ARE, not who else rated them.

`ContentTFIDF` ranks items by the cosine between a user's profile and each item's TF-IDF vector
(genres, tags, title words, release decade) - the classic content-based filter of Pazzani &
Billsus, "Content-based recommendation systems" (The Adaptive Web, 2007) and Lops, de Gemmis &
Semeraro, "Content-based recommender systems: state of the art and trends" (Recommender Systems
Handbook, 2011). `ContentRegression` predicts ratings from user features x item features on top
of regularised user and item biases (Koren, Bell & Volinsky 2009, section "Adding biases"; the
feature crosses are those of Agarwal & Chen's regression-based latent factors, KDD 2009, without
the factors): the study's "user behaviour features x product features".

Side information is read from `Interactions.items` / `.users` (rows aligned to dense indices);
both models use whatever subset of the known columns exists and fall back gracefully (zero item
vectors, biases only) when a frame or column is missing.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from sklearn.feature_extraction.text import TfidfVectorizer
from threadpoolctl import threadpool_limits

from metarec_lib.data.dataset import Interactions
from metarec_lib.models.base import ClipsRatings, Recommender
from metarec_lib.models.registry import register
from metarec_lib.tuning import Choice, LogUniform, Uniform

# Placeholder genres that carry no content (ML-100K "unknown", latest-small "(no genres listed)").
_NO_GENRE = frozenset({"", "unknown", "(no genres listed)"})
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
# MovieLens-1M age groups (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+).
AGE_EDGES = (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
USER_CATEGORICAL = ("gender", "occupation", "segment")
ITEM_CATEGORICAL = ("category",)


# ----------------------------------------------------------------------------- item features


def split_pipes(text: str) -> list[str]:
    """'A|b c|unknown' -> ['a', 'b c']: lower-cased '|'-separated terms, placeholders dropped."""
    return [t for t in (s.strip().lower() for s in text.split("|")) if t not in _NO_GENRE]


def _column_text(frame: pd.DataFrame | None, column: str, n: int) -> list[str] | None:
    if frame is None or column not in frame.columns:
        return None
    values = frame[column].astype(object).where(frame[column].notna(), "")
    out = [str(v) for v in values.to_numpy()]
    return out if len(out) == n else None


def _tfidf(docs: list[str], *, terms: bool, min_df: int = 1) -> sp.csr_matrix:
    """(n_docs, n_terms) TF-IDF rows, L2-normalised; zero rows for empty documents.

    terms: '|'-separated terms (genres, tags) as single tokens; else words of free text.
    """
    vec = TfidfVectorizer(
        tokenizer=split_pipes if terms else None,
        token_pattern=None if terms else r"(?u)\b\w\w+\b",
        lowercase=not terms,
        stop_words=None if terms else "english",
        min_df=min_df,
        dtype=np.float64,
    )
    try:
        return sp.csr_matrix(vec.fit_transform(docs))
    except ValueError:  # empty vocabulary: no document has a usable term
        return sp.csr_matrix((len(docs), 0))


def _decades(items: pd.DataFrame | None, n: int) -> npt.NDArray[np.int64]:
    """Release decade per item, shape (n,); -1 where the year is missing."""
    if items is None or "year" not in items.columns or len(items) != n:
        return np.full(n, -1, np.int64)
    year = pd.to_numeric(items["year"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return np.where(np.isfinite(year), np.floor(np.nan_to_num(year) / 10) * 10, -1).astype(np.int64)


def _one_hot(codes: npt.NDArray[np.int64], n_levels: int) -> sp.csr_matrix:
    """(n, n_levels) indicator rows; a code of -1 gives a zero row."""
    ok = codes >= 0
    rows = np.flatnonzero(ok)
    return sp.csr_matrix((np.ones(len(rows)), (rows, codes[ok])), shape=(len(codes), n_levels))


def unit_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm (zero rows stay zero), CSR; works with zero columns too."""
    m = sp.csr_matrix(matrix, dtype=np.float64)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.csr_matrix(
        sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ m
    )


def _factorize(values: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    codes, levels = pd.factorize(pd.Series(values), sort=True)
    return codes.astype(np.int64), np.asarray(levels)


def tfidf_item_vectors(items: pd.DataFrame | None, n_items: int, weights: Mapping[str, float]
                       ) -> sp.csr_matrix:  # fmt: skip
    """Unit-length item vectors, shape (n_items, n_features), CSR.

    Blocks (each L2-normalised per item, then multiplied by its weight): TF-IDF of genres,
    of tags, of title words (trailing '(year)' stripped, English stop words and words of a single
    title dropped), and the one-hot release decade. Items without any feature get a zero row.
    weights: 'genre', 'tag', 'title', 'decade' -> non-negative block weights.
    """
    blocks = []
    genres = _column_text(items, "genres", n_items)
    if genres is not None and weights["genre"] > 0:
        blocks.append(weights["genre"] * _tfidf(genres, terms=True))
    tags = _column_text(items, "tags", n_items)
    if tags is not None and weights["tag"] > 0:
        blocks.append(weights["tag"] * _tfidf(tags, terms=True))
    titles = _column_text(items, "title", n_items)
    if titles is not None and weights["title"] > 0:
        clean = [_TRAILING_YEAR.sub("", t) for t in titles]
        blocks.append(weights["title"] * _tfidf(clean, terms=False, min_df=2))
    decade = _decades(items, n_items)
    if weights["decade"] > 0 and (decade >= 0).any():
        codes, levels = _factorize(np.where(decade >= 0, decade, np.nan))
        blocks.append(weights["decade"] * _one_hot(codes, len(levels)))
    if not blocks:
        return sp.csr_matrix((n_items, 0))
    return unit_rows(sp.hstack(blocks, format="csr"))


# ----------------------------------------------------------------------------- ContentTFIDF


def profile_weights(
    users: npt.NDArray[np.int64], ratings: npt.NDArray[np.float64], n_users: int, centred: bool
) -> npt.NDArray[np.float64]:
    """Per-rating profile weights, shape (n,): rating minus the user's mean rating (`centred`)
    or 1. A user whose centred weights are all zero (every rating equal) gets weight 1, so a user
    who rated everything 5 still likes what they rated."""
    if not centred:
        return np.ones(len(users))
    count = np.bincount(users, minlength=n_users)
    mean = np.bincount(users, weights=ratings, minlength=n_users) / np.maximum(count, 1)
    w = ratings - mean[users]
    mass = np.bincount(users, weights=np.abs(w), minlength=n_users)
    return np.where(mass[users] > 1e-12, w, 1.0)


@register
class ContentTFIDF(Recommender):
    """Cosine between a user profile and TF-IDF item vectors (Pazzani & Billsus 2007).

    Item vector x_i (n_features,): the unit-length concatenation of weighted, L2-normalised
    blocks (see `tfidf_item_vectors`). User profile p_u = mean over rated items of w_ui x_i,
    with w_ui = r_ui - mean_u ("centred": items rated below the user's mean push similar items
    away) or 1 ("binary"). score(u, i) = cos(p_u, x_i) in [-1, 1]; a user or item without
    features scores 0. Only the ratios of the block weights matter (cosine is scale free), so
    `genre_weight` stays 1 and the others are tuned relative to it.

    Hyperparameters: genre_weight, tag_weight, title_weight, decade_weight (block weights;
    0 drops the block), weighting ("centred" or "binary").
    """

    name = "ContentTFIDF"
    family = "content"
    defaults = {
        "genre_weight": 1.0,
        "tag_weight": 1.0,
        "title_weight": 0.3,
        "decade_weight": 0.5,
        "weighting": "centred",
    }
    space = {
        "tag_weight": Uniform(0.0, 2.0),
        "title_weight": Uniform(0.0, 1.0),
        "decade_weight": Uniform(0.0, 1.5),
        "weighting": Choice(("centred", "binary")),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        if self.params["weighting"] not in ("centred", "binary"):
            raise ValueError(
                f"ContentTFIDF: weighting={self.params['weighting']!r}; "
                "expected 'centred' or 'binary'"
            )
        weights = {
            b: float(self.params[f"{b}_weight"]) for b in ("genre", "tag", "title", "decade")
        }
        bad = {k: v for k, v in weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"ContentTFIDF: negative or NaN block weight(s) {bad}; expected >= 0")
        self.item_vectors_ = tfidf_item_vectors(train.items, train.n_items, weights)
        self.item_vectors_t_ = sp.csr_matrix(self.item_vectors_.T)
        f = train.frame
        users = f["user"].to_numpy(np.int64)
        w = profile_weights(users, f["rating"].to_numpy(np.float64), train.n_users,
                            self.params["weighting"] == "centred")  # fmt: skip
        weight_matrix = sp.csr_matrix(
            (w, (users, f["item"].to_numpy(np.int64))), shape=(train.n_users, train.n_items)
        )
        self.profiles_ = unit_rows(weight_matrix @ self.item_vectors_)

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Cosine scores, shape (len(users), n_items)."""
        users = np.asarray(users, np.int64)
        return np.asarray((self.profiles_[users] @ self.item_vectors_t_).toarray(), np.float64)

    def score_profile(
        self, items: npt.ArrayLike, ratings: npt.ArrayLike | None = None
    ) -> np.ndarray:
        """Scores of every item, shape (n_items,), for a new user known only by a few rated
        items (cold start): the profile is built from `items` (k,) and `ratings` (k,) exactly as
        in `fit` (None: binary weights), without refitting."""
        items = np.asarray(items, np.int64)
        if ratings is None:
            ratings = np.ones(len(items))
        ratings = np.asarray(ratings, np.float64)
        if ratings.shape != items.shape:
            raise ValueError(
                f"ContentTFIDF.score_profile: ratings shape {ratings.shape} != items shape "
                f"{items.shape}; expected one rating per item"
            )
        if items.size and (items.min() < 0 or items.max() >= self.n_items_):
            raise ValueError(
                f"ContentTFIDF.score_profile: item index out of range [0, {self.n_items_}): "
                f"{items[(items < 0) | (items >= self.n_items_)][0]}"
            )
        w = profile_weights(np.zeros(len(items), np.int64), ratings, 1,
                            self.params["weighting"] == "centred")  # fmt: skip
        profile = unit_rows(sp.csr_matrix(w[None, :]) @ self.item_vectors_[items])
        return np.asarray((profile @ self.item_vectors_t_).toarray()[0], np.float64)

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "profiles_"):
            return 0
        return int(self.profiles_.nnz + self.item_vectors_.nnz)


# ----------------------------------------------------------------------------- ContentRegression


class _FeatureCoder:
    """User and item side information -> codes and indicator matrices for `ContentRegression`.

    User variables (each one categorical code per user, -1 when missing): `age` in MovieLens-1M
    groups, `gender`, `occupation`, `segment`. Item features (n_items, n_item_features) binary:
    genres multi-hot, release decade, `category`, `price` quintile - whichever exist.
    """

    def __init__(self, users: pd.DataFrame | None, items: pd.DataFrame | None, n_items: int):
        self.user_levels: dict[str, npt.NDArray[Any]] = {}
        if users is not None:
            if "age" in users.columns:
                self.user_levels["age"] = np.arange(len(AGE_EDGES) + 1)
            for col in USER_CATEGORICAL:
                if col in users.columns:
                    _, levels = _factorize(users[col].astype(object))
                    if len(levels):
                        self.user_levels[col] = levels
        self.item_features = self._items(items, n_items)

    def user_codes(self, users: pd.DataFrame | Mapping[str, Any] | None, n: int
                   ) -> dict[str, npt.NDArray[np.int64]]:  # fmt: skip
        """Variable -> codes (n,) against the levels seen at fit (unknown level or NA -> -1)."""
        if isinstance(users, Mapping):
            users = pd.DataFrame({k: [v] for k, v in users.items()})
        out = {}
        for col, levels in self.user_levels.items():
            if users is None or col not in users.columns:
                out[col] = np.full(n, -1, np.int64)
            elif col == "age":
                age = pd.to_numeric(users[col], errors="coerce").to_numpy(
                    np.float64, na_value=np.nan
                )
                code = np.searchsorted(np.asarray(AGE_EDGES), age, side="right")
                out[col] = np.where(np.isfinite(age), code, -1).astype(np.int64)
            else:
                cat = pd.Categorical(users[col].astype(object), categories=levels)
                out[col] = np.asarray(cat.codes, np.int64)
        return out

    @staticmethod
    def _items(items: pd.DataFrame | None, n: int) -> sp.csr_matrix:
        if items is None or len(items) != n:
            return sp.csr_matrix((n, 0))
        blocks = []
        genres = _column_text(items, "genres", n)
        if genres is not None:
            lists = [split_pipes(g) for g in genres]
            vocab = sorted({t for terms in lists for t in terms})
            index = {t: j for j, t in enumerate(vocab)}
            rows = np.repeat(np.arange(n), [len(t) for t in lists])
            cols = np.array([index[t] for terms in lists for t in terms], np.int64)
            blocks.append(sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(n, len(vocab))))
        decade = _decades(items, n)
        if (decade >= 0).any():
            codes, levels = _factorize(np.where(decade >= 0, decade, np.nan))
            blocks.append(_one_hot(codes, len(levels)))
        for col in ITEM_CATEGORICAL:
            if col in items.columns:
                codes, levels = _factorize(items[col].astype(object))
                blocks.append(_one_hot(codes, len(levels)))
        if "price" in items.columns:
            price = pd.to_numeric(items["price"], errors="coerce").to_numpy(
                np.float64, na_value=np.nan
            )
            if np.isfinite(price).any():
                edges = np.unique(np.nanquantile(price, [0.2, 0.4, 0.6, 0.8]))
                code = np.where(np.isfinite(price), np.searchsorted(edges, price, side="right"), -1)
                blocks.append(_one_hot(code.astype(np.int64), len(edges) + 1))
        blocks = [b for b in blocks if b.shape[1]]
        return sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n, 0))

    @property
    def n_features(self) -> int:
        """Columns of the design: user main effects, item main effects, user x item crosses."""
        n_user = sum(len(v) for v in self.user_levels.values())
        b = self.item_features.shape[1]
        return n_user + b + n_user * b

    def design(self, codes: Mapping[str, npt.NDArray[np.int64]], items: npt.NDArray[np.int64]
               ) -> sp.csr_matrix:  # fmt: skip
        """Design rows phi(u, i) for aligned (user codes, item) pairs, shape (n, n_features).

        Columns: one-hot of each user variable; item features; and for each user variable v the
        row-wise outer product one-hot(v) x item features (levels_v * n_item_features columns).
        """
        n = len(items)
        feats = self.item_features[items]
        b = feats.shape[1]
        nnz_row = np.diff(feats.indptr)
        blocks = []
        for col, levels in self.user_levels.items():
            blocks.append(_one_hot(codes[col], len(levels)))
        blocks.append(feats)
        for col, levels in self.user_levels.items():
            code = codes[col]
            shifted = sp.csr_matrix(
                (feats.data.copy(), feats.indices + np.repeat(np.maximum(code, 0) * b, nnz_row),
                 feats.indptr.copy()),
                shape=(n, len(levels) * b),
            )  # fmt: skip
            blocks.append(sp.diags((code >= 0).astype(np.float64)) @ shifted)
        return sp.hstack(blocks, format="csr")


def ridge_biases_features(
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    phi: sp.csr_matrix,
    y: npt.NDArray[np.float64],
    n_users: int,
    n_items: int,
    *,
    reg_user: float,
    reg_item: float,
    reg_features: float,
    rtol: float = 1e-6,
    max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise |y - b_u[users] - b_i[items] - phi @ w|^2 + reg_user |b_u|^2
    + reg_item |b_i|^2 + reg_features |w|^2; returns (b_u (n_users,), b_i (n_items,), w (p,)).

    Conjugate gradients on the normal equations, preconditioned by their exact block diagonal
    (rating counts + reg for the biases, a Cholesky factor of phi'phi + reg for w): the biases
    and the feature main effects are nearly collinear, which makes plain alternating updates
    crawl (~100 sweeps); this converges in a few dozen matrix-vector products.
    """
    n, p = len(y), phi.shape[1]
    rows = np.arange(n)
    design = sp.hstack(
        [
            sp.csr_matrix((np.ones(n), (rows, users)), shape=(n, n_users)),
            sp.csr_matrix((np.ones(n), (rows, items)), shape=(n, n_items)),
            phi,
        ],
        format="csr",
    )
    design_t = sp.csr_matrix(design.T)
    reg = np.concatenate([np.full(n_users, reg_user), np.full(n_items, reg_item),
                          np.full(p, reg_features)])  # fmt: skip
    diag = np.concatenate([np.bincount(users, minlength=n_users) + reg_user,
                           np.bincount(items, minlength=n_items) + reg_item])  # fmt: skip
    # One BLAS thread: a p x p (p < ~2,000) factorisation gains nothing from threads, and
    # OpenBLAS threads on a busy 2-core machine made it take seconds instead of milliseconds.
    with threadpool_limits(limits=1, user_api="blas"):
        chol = sla.cho_factor((phi.T @ phi).toarray() + reg_features * np.eye(p)) if p else None
    m = n_users + n_items

    def precondition(v: np.ndarray) -> np.ndarray:
        out = np.empty_like(v)
        out[:m] = v[:m] / diag
        if p:
            out[m:] = sla.cho_solve(chol, v[m:])
        return out

    size = m + p
    normal = spla.LinearOperator(
        (size, size), matvec=lambda v: design_t @ (design @ v) + reg * v, dtype=np.float64
    )
    pre = spla.LinearOperator((size, size), matvec=precondition, dtype=np.float64)
    with threadpool_limits(limits=1, user_api="blas"):
        x, info = spla.cg(normal, design_t @ y, rtol=rtol, maxiter=max_iter, M=pre)
    if info > 0:
        warnings.warn(
            f"ridge_biases_features: conjugate gradients stopped after {info} iterations "
            f"without reaching rtol={rtol}; using the last iterate",
            RuntimeWarning,
            stacklevel=2,
        )
    return x[:n_users], x[n_users:m], x[m:]


@register
class ContentRegression(ClipsRatings, Recommender):
    """Rating = mu + b_u + b_i + phi(u, i) . w, clipped to the training rating range.

    phi(u, i) (n_features,): one-hot user variables (age group, gender, occupation / segment),
    item features (genres multi-hot, decade, category, price quintile) and their row-wise outer
    product (user variable level x item feature), sparse. All of b_u, b_i and w minimise one
    ridge objective jointly (`ridge_biases_features`), so biases and feature effects share out
    the signal by their regularisation: group means go to w, individual deviations to biases.
    A user unseen in training has b_u = 0, so it gets feature-based predictions plus item bias;
    `predict_profile` adds a bias estimated from a few support ratings (cold start).

    Hyperparameters: reg_user, reg_item (shrinkage of the biases, in pseudo-ratings),
    reg_features (ridge on w, in the same squared-error units).
    """

    name = "ContentRegression"
    family = "content"
    predicts_ratings = True
    defaults = {"reg_user": 5.0, "reg_item": 5.0, "reg_features": 100.0}
    space = {
        "reg_user": LogUniform(1.0, 30.0),
        "reg_item": LogUniform(1.0, 30.0),
        "reg_features": LogUniform(10.0, 3000.0),
    }

    def _fit(self, train: Interactions, *, valid: Interactions | None, seed: int) -> None:
        regs = {k: float(self.params[k]) for k in ("reg_user", "reg_item", "reg_features")}
        bad = {k: v for k, v in regs.items() if not v > 0}
        if bad:
            raise ValueError(f"ContentRegression: regularisation {bad}; expected > 0")
        f = train.frame
        u = f["user"].to_numpy(np.int64)
        i = f["item"].to_numpy(np.int64)
        r = f["rating"].to_numpy(np.float64)
        self.coder_ = _FeatureCoder(train.users, train.items, train.n_items)
        self.user_codes_ = self.coder_.user_codes(train.users, train.n_users)
        self.mu_ = float(r.mean()) if len(r) else 0.0
        self.rating_range_ = (float(r.min()), float(r.max())) if len(r) else (-np.inf, np.inf)
        phi = self.coder_.design({k: c[u] for k, c in self.user_codes_.items()}, i)
        solution = ridge_biases_features(
            u, i, phi, r - self.mu_, train.n_users, train.n_items, **regs
        )
        self.user_bias_, self.item_bias_, self.weights_ = solution
        self._split_weights()

    def _split_weights(self) -> None:
        """Cache w as (user main (n_users,), item main (n_items,), crosses per variable)."""
        feats = self.coder_.item_features
        b = feats.shape[1]
        levels = {k: len(v) for k, v in self.coder_.user_levels.items()}
        w, pos = self.weights_, 0
        user_main = np.zeros(self.n_users_)
        for k, n in levels.items():
            code = self.user_codes_[k]
            user_main += np.where(code >= 0, w[pos : pos + n][np.maximum(code, 0)], 0.0)
            pos += n
        self.item_main_ = np.asarray(feats @ w[pos : pos + b]) + self.item_bias_
        pos += b
        self.crosses_ = {}
        for k, n in levels.items():
            # One extra zero row, so that code -1 (missing) picks no cross effect.
            self.crosses_[k] = np.vstack([w[pos : pos + n * b].reshape(n, b), np.zeros((1, b))])
            pos += n * b
        self.user_main_ = user_main + self.user_bias_

    def _cross(self, codes: Mapping[str, npt.NDArray[np.int64]], n: int) -> np.ndarray:
        """Sum over user variables of the cross effects for all items, shape (n, n_items)."""
        feats = self.coder_.item_features
        out = np.zeros((n, self.n_items_))
        for k, table in self.crosses_.items():
            out += np.asarray(feats @ table[codes[k]].T).T
        return out

    def score(self, users: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of every item, shape (len(users), n_items): the ranking
        scores (clipping would tie every item predicted above the top rating; `predict` clips)."""
        users = np.asarray(users, np.int64)
        codes = {k: c[users] for k, c in self.user_codes_.items()}
        pred = self.mu_ + self.user_main_[users, None] + self.item_main_[None, :]
        return pred + self._cross(codes, len(users))

    def predict_raw(self, users: npt.ArrayLike, items: npt.ArrayLike) -> np.ndarray:
        """Unclipped predicted ratings of aligned (user, item) pairs, shape (n,): as `score`."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        codes = {k: c[users] for k, c in self.user_codes_.items()}
        phi = self.coder_.design(codes, items)
        return self.mu_ + self.user_bias_[users] + self.item_bias_[items] + phi @ self.weights_

    def predict_profile(
        self,
        user_features: Mapping[str, Any] | None,
        items: npt.ArrayLike,
        support_items: npt.ArrayLike | None = None,
        support_ratings: npt.ArrayLike | None = None,
    ) -> np.ndarray:
        """Ratings of `items` (n,) for a new user: features (e.g. {"age": 25, "gender": "F"};
        None or missing keys: no feature effect) and optionally a few support ratings (k,),
        from which the user's bias is estimated with the fitted `reg_user` shrinkage."""
        items = np.asarray(items, np.int64)
        codes = self.coder_.user_codes(user_features, 1)
        bias = 0.0
        if support_items is not None and len(np.asarray(support_items)):
            s_items = np.asarray(support_items, np.int64)
            s_ratings = np.asarray(support_ratings, np.float64)
            if s_ratings.shape != s_items.shape:
                raise ValueError(
                    f"ContentRegression.predict_profile: support_ratings shape "
                    f"{s_ratings.shape} != support_items shape {s_items.shape}"
                )
            s_codes = {k: np.repeat(c, len(s_items)) for k, c in codes.items()}
            s_phi = self.coder_.design(s_codes, s_items)
            base = self.mu_ + self.item_bias_[s_items] + s_phi @ self.weights_
            bias = float((s_ratings - base).sum() / (len(s_items) + float(self.params["reg_user"])))
        phi = self.coder_.design({k: np.repeat(c, len(items)) for k, c in codes.items()}, items)
        pred = self.mu_ + bias + self.item_bias_[items] + phi @ self.weights_
        return self.clip_ratings(pred)

    @property
    def n_parameters(self) -> int:
        if not hasattr(self, "weights_"):
            return 0
        return int(1 + self.user_bias_.size + self.item_bias_.size + self.weights_.size)
