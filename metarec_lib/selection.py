"""Algorithm selection: meta-learners that pick, per user, the base recommender that serves
that user best (the study's second reading of "meta-learner", protocol `algo-selection`).

Design (one seed; every random step is seeded):

1. Split. Every user's ratings are split 75/25 exactly as the study's `topn-75-25` protocol
   does for the seed (`holdout_per_user`). The 75% part is TRAIN, the 25% part TEST. A
   per-user validation carve-out of TRAIN (`validation_carveout`, `valid_fraction`, same seed)
   gives FIT (train minus valid) and VALID. See `selection_split`.
2. Two fits per base model (fresh clones of the caller's models, hyperparameters as given,
   e.g. tuned values; neither fit sees `valid=`, as the runner's final fits do not):
   - the LABEL fit on FIT, scored on VALID: each eligible user's validation ndcg@k is the label;
   - the TEST fit on the whole TRAIN (FIT + VALID), scored on TEST: each user's test ndcg@k is
     used only to score the choices. No TEST row reaches a label, a feature or a learner.
3. Features (`user_meta_features`) come from FIT only: activity, tenure, recency, rating mean
   and std, mean and median item popularity (training users per item, counted on FIT), genre
   entropy, demographics where the data set has them; plus LANDMARKERS, cheap models' per-user
   validation ndcg@k (default MostPop and ItemKNN, column "landmark:<name>"). Landmarkers come
   from an INNER validation part: FIT is carved again per user (same fraction, its own seeded
   stream) into INNER-FIT and INNER-VALID, the landmarker (the caller's model where it is also
   a base model, else its defaults) is fitted on INNER-FIT and scored on INNER-VALID. So a
   landmarker is a validation score from training data, but never the label itself: with
   landmark = label, the regressor of that base model copies its noisy validation value while
   the others' predictions shrink, and the argmax then favours the landmarked models whenever
   their validation noise is high (ML-100K, seeds 42 and 43, four base models, each learner in
   both modes: gap closed -0.6 to -1.5 with label landmarkers, -0.05 to -1.2 with inner ones,
   about what no landmarker at all gives). A user without INNER-VALID rows (one FIT rating)
   has NaN landmarkers; the learners impute the median (MetaGB handles NaN natively).
4. Users. Eligible users have at least one VALID and one TEST rating. They are split by user
   id, seeded, into selection-train (`train_fraction`, default 70%) and selection-test users.
   Meta-learners and SingleBest see the features and labels of selection-train users only;
   a selection-test user contributes only its features (landmarkers included, which come from
   its own training data, as they would for a new user at deployment).
5. Meta-learners (scikit-learn, seeded): MetaNN (MLP), MetaDT (a shallow decision tree, for
   `sklearn.tree.plot_tree`), MetaSVM (RBF SVM on standardised features), MetaGB (histogram
   gradient boosting). Each has two modes: "classify" predicts the best base model's name
   (users whose labels all tie, typically all zero, carry no preference and are left out of
   its training; other ties go to the base model with the best mean label), "regress" predicts
   every base model's label and picks the argmax. mode="auto" (default) picks the mode with the
   better mean validation ndcg of its choices in k-fold cross-validation over selection-train
   users.
6. Evaluation on selection-test users: a method's per-user value is the TEST ndcg@k of the base
   model it chose. References: SingleBest (the base model with the best mean VALIDATION ndcg over
   selection-train users, for everyone) and Oracle (per user the base model with the best TEST
   ndcg: an upper bound, not a method). Gap closed = (mean(method) - mean(SingleBest)) /
   (mean(Oracle) - mean(SingleBest)), with a paired percentile bootstrap over users (the same
   resamples for every method) for its 95% CI. `stats` has no bootstrap helper, hence our own.

Results contract (`rows_for_contract`): protocol "algo-selection"; the meta-learners, SingleBest
and Oracle are family "meta" (the two references are defined by the selection problem and are
read only on this protocol's board, next to the learners they bound); the base models, applied to
the same selection-test users, keep their own family.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold
from sklearn.multioutput import MultiOutputRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from threadpoolctl import threadpool_limits

from metarec_lib.data.dataset import DataError, Dataset, Encoder, Interactions
from metarec_lib.metrics import ranking_metrics
from metarec_lib.models.base import FAMILIES, Recommender
from metarec_lib.models.registry import get_model
from metarec_lib.protocols import split_factory
from metarec_lib.runner import METRIC_COLUMNS
from metarec_lib.splits import validation_carveout

PROTOCOL = "algo-selection"
SINGLE_BEST = "SingleBest"
ORACLE = "Oracle"
REFERENCES = (SINGLE_BEST, ORACLE)
LANDMARKERS = ("MostPop", "ItemKNN")
LANDMARK_PREFIX = "landmark:"
MAX_LEVELS = 25  # a categorical user column with more levels (ML-100K zip_code) is not used
_DAY = 86_400.0
_USER_STREAM = 6_121  # second entropy words: the user split and the bootstrap own their streams
_BOOT_STREAM = 6_133
_LANDMARK_STREAM = 6_151
_TRAIN_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
Mode = Literal["classify", "regress"]

__all__ = [
    "LANDMARKERS", "META_LEARNERS", "MetaDT", "MetaGB", "MetaLearner", "MetaNN", "MetaSVM",
    "ORACLE", "PROTOCOL", "SINGLE_BEST", "SelectionData", "build_selection_data",
    "evaluate_selection", "fit_learners", "gap_closed", "rows_for_contract", "selection_choices",
    "selection_seed", "selection_split", "user_meta_features",
]  # fmt: skip


# ----------------------------------------------------------------------------- features


def user_meta_features(
    train: pd.DataFrame,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    now: float | None = None,
) -> pd.DataFrame:
    """Per-user meta-features from a raw-id TRAINING frame; index user_id (train's users).

    Columns: n_ratings; tenure_days (last minus first rating); recency_days (`now`, unix
    seconds, default train's latest timestamp, minus the user's last rating); rating_mean and
    rating_std (population std, 0 for one rating); pop_mean and pop_median (of the user's items'
    popularity = distinct train users per item); genre_entropy in bits, where `items` has
    `genres` ('|'-joined; an item spreads unit mass evenly over its genres; 0 without any genre);
    demographics from `users` (index user_id): numeric columns as they are, text columns with at
    most MAX_LEVELS values one-hot as "<column>=<value>" (NaN / 0 for users missing there).
    """
    _require(train, _TRAIN_COLUMNS, "user_meta_features train")
    if len(train) == 0:
        raise DataError("user_meta_features train: no rows; expected training interactions")
    if train[["user_id", "item_id"]].duplicated().any():
        raise DataError("user_meta_features train: duplicate (user_id, item_id) pairs")
    frame = train[list(_TRAIN_COLUMNS)].copy()
    frame["rating"] = frame["rating"].astype(np.float64)
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    now = float(frame["timestamp"].max()) if now is None else float(now)
    frame["pop"] = frame.groupby("item_id")["user_id"].transform("size").astype(np.float64)
    by = frame.groupby("user_id", sort=True)
    ts = by["timestamp"]
    out = pd.DataFrame(
        {
            "n_ratings": by.size().astype(np.float64),
            "tenure_days": (ts.max() - ts.min()) / _DAY,
            "recency_days": (now - ts.max()) / _DAY,
            "rating_mean": by["rating"].mean(),
            "rating_std": by["rating"].std(ddof=0),
            "pop_mean": by["pop"].mean(),
            "pop_median": by["pop"].median(),
        }
    )
    if items is not None and "genres" in items.columns:
        out["genre_entropy"] = _genre_entropy(frame, items["genres"]).reindex(out.index)
    if users is not None:
        demo = _demographics(users)
        if demo.shape[1]:
            aligned = demo.reindex(out.index)
            onehot = [c for c in demo.columns if "=" in c]
            aligned[onehot] = aligned[onehot].fillna(0.0)
            out = out.join(aligned)
    out.index = out.index.astype(np.int64).rename("user_id")
    return out.astype(np.float64)


def _genre_entropy(frame: pd.DataFrame, genres: pd.Series) -> pd.Series:
    """Entropy (bits) of each user's genre mass; 0.0 for a user whose items have no genre."""
    text = genres.reindex(frame["item_id"].to_numpy()).fillna("").astype(str).to_numpy()
    parts = [[g for g in t.split("|") if g] for t in text]
    long = pd.DataFrame({"user_id": frame["user_id"].to_numpy(), "genre": parts})
    long = long.explode("genre").dropna(subset=["genre"])
    if long.empty:
        return pd.Series(0.0, index=frame["user_id"].drop_duplicates().sort_values())
    per_item = np.array([len(p) for p in parts], dtype=np.float64)
    long["mass"] = 1.0 / per_item[long.index.to_numpy()]
    mass = long.groupby(["user_id", "genre"])["mass"].sum()
    p = mass / mass.groupby(level="user_id").transform("sum")
    entropy = (-(p * np.log2(p))).groupby(level="user_id").sum()
    return entropy.reindex(frame["user_id"].drop_duplicates().sort_values(), fill_value=0.0)


def _demographics(users: pd.DataFrame) -> pd.DataFrame:
    """Numeric user columns as they are; text ones with <= MAX_LEVELS values one-hot."""
    cols: dict[str, pd.Series] = {}
    for name in users.columns:
        col = users[name]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            cols[str(name)] = col.astype(np.float64)
            continue
        values = col.dropna().astype(str)
        levels = sorted(values.unique())
        if not 0 < len(levels) <= MAX_LEVELS:
            continue
        text = col.astype(str).where(col.notna(), None)
        for level in levels:
            cols[f"{name}={level}"] = (text == level).astype(np.float64)
    return pd.DataFrame(cols, index=users.index.astype(np.int64))


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class SelectionData:
    """Everything a selection experiment needs, one row per eligible user (index user_id).

    features: meta-features and landmarkers, from training data (FIT) only.
    labels: validation ndcg@k of each base model (columns), from the LABEL fits on FIT.
    test_ndcg: test ndcg@k of each base model, from the TEST fits on the whole 75% TRAIN.
    train_users / test_users: sorted selection-train / selection-test user ids (disjoint,
        together the index).
    """

    features: pd.DataFrame
    labels: pd.DataFrame
    test_ndcg: pd.DataFrame
    train_users: npt.NDArray[np.int64]
    test_users: npt.NDArray[np.int64]
    dataset: str = ""
    seed: int | None = None
    k: int = 10
    landmarkers: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.check()

    @property
    def base_models(self) -> list[str]:
        return [str(c) for c in self.labels.columns]

    def check(self) -> SelectionData:
        """Raise ValueError unless the frames align and the user groups partition the users."""
        index = self.labels.index
        if len(self.labels.columns) < 2:
            raise ValueError("SelectionData.labels: expected at least two base models (columns)")
        reserved = sorted(set(self.base_models) & set(REFERENCES))
        if reserved:
            raise ValueError(f"SelectionData: base model name(s) {reserved} are reserved")
        if not self.test_ndcg.columns.equals(self.labels.columns):
            raise ValueError("SelectionData.test_ndcg: columns differ from labels' base models")
        for what, frame in (("features", self.features), ("test_ndcg", self.test_ndcg)):
            if not frame.index.equals(index):
                raise ValueError(f"SelectionData.{what}: index differs from labels' user ids")
        for what, frame in (("labels", self.labels), ("test_ndcg", self.test_ndcg)):
            values = frame.to_numpy(np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"SelectionData.{what}: NaN or infinite ndcg values")
        train, test = np.asarray(self.train_users), np.asarray(self.test_users)
        if train.size == 0 or test.size == 0:
            raise ValueError("SelectionData: selection-train and selection-test need users")
        if np.intersect1d(train, test).size:
            raise ValueError("SelectionData: a user is both selection-train and selection-test")
        if not np.array_equal(np.sort(np.r_[train, test]), np.sort(index.to_numpy())):
            raise ValueError("SelectionData: train_users and test_users must cover the index")
        return self


def selection_split(
    dataset: Dataset, seed: int, valid_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(FIT, VALID, TEST): the study's topn-75-25 split for `seed`, its 75% part carved per user
    (seeded) into FIT and VALID. FIT + VALID is the TRAIN the test fits see."""
    split = split_factory("topn-75-25", dataset)(seed)
    fit, valid = validation_carveout(
        split.train, fraction=valid_fraction, seed=seed, how="per_user"
    )
    return fit, valid, split.test


def build_selection_data(
    dataset: Dataset,
    base_models: Mapping[str, Recommender],
    seed: int,
    *,
    train_fraction: float = 0.7,
    valid_fraction: float = 0.2,
    k: int = 10,
    landmarkers: Sequence[str] = LANDMARKERS,
) -> SelectionData:
    """Labels, test scores and meta-features of every eligible user (see the module docstring).

    base_models: name -> unfitted model (clones are fitted, the given models stay untouched).
    valid_fraction: 0.2 rather than tuning's 0.1, so most users have several validation items
        and per-user labels are less often all-zero ties.
    """
    if len(base_models) < 2:
        raise ValueError(f"build_selection_data: {len(base_models)} base model(s); expected >= 2")
    for name, model in base_models.items():
        if name in REFERENCES:
            raise ValueError(f"build_selection_data: base model name {name!r} is reserved")
        if not isinstance(model, Recommender) or not model.ranks:
            raise ValueError(f"build_selection_data: {name!r} is not a ranking Recommender")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction!r}; expected a value in (0, 1)")
    fit_part, valid_part, test_part = selection_split(dataset, seed, valid_fraction)
    encoder = dataset.encoder()
    fit, valid = encoder.encode(fit_part), encoder.encode(valid_part)
    train, test = encoder.encode(pd.concat([fit_part, valid_part])), encoder.encode(test_part)

    labels, scores = {}, {}
    for name, model in base_models.items():
        labels[name] = _per_user_ndcg(model.clone().fit(fit, seed=seed), valid, encoder, k)
        scores[name] = _per_user_ndcg(model.clone().fit(train, seed=seed), test, encoder, k)
    inner_fit, inner_valid = validation_carveout(
        fit_part,
        fraction=valid_fraction,
        seed=np.random.default_rng([int(seed), _LANDMARK_STREAM]),
        how="per_user",
    )
    inner_train, inner_score = encoder.encode(inner_fit), encoder.encode(inner_valid)
    marks = {}
    for name in landmarkers:
        cheap = base_models[name].clone() if name in base_models else get_model(name)
        cheap.fit(inner_train, seed=seed)
        marks[LANDMARK_PREFIX + name] = _per_user_ndcg(cheap, inner_score, encoder, k)

    label_frame, test_frame = pd.DataFrame(labels), pd.DataFrame(scores)
    eligible = label_frame.index.intersection(test_frame.index).sort_values()
    feats = user_meta_features(fit_part, dataset.users, dataset.items)
    feats = feats.join(pd.DataFrame(marks)).reindex(eligible)
    n_users = int(pd.concat([fit_part, test_part])["user_id"].nunique())
    rng = np.random.default_rng([int(seed), _USER_STREAM])
    shuffled = eligible.to_numpy(np.int64)[rng.permutation(len(eligible))]
    n_train = int(np.floor(train_fraction * len(eligible) + 1e-9))
    notes = (
        f"{len(eligible)} of {n_users} users eligible (>= 1 validation and >= 1 test rating); "
        f"{n_train} selection-train, {len(eligible) - n_train} selection-test",
        f"labels: ndcg@{k} on VALID ({valid_fraction:g} of each user's 75% part) of fits on "
        f"FIT; test scores: ndcg@{k} on TEST of fits on the whole 75% part",
        f"landmarkers {list(landmarkers)}: ndcg@{k} on an inner {valid_fraction:g} carve-out "
        f"of FIT, fitted on the rest of FIT",
    )
    return SelectionData(
        features=feats,
        labels=label_frame.reindex(eligible),
        test_ndcg=test_frame.reindex(eligible),
        train_users=np.sort(shuffled[:n_train]),
        test_users=np.sort(shuffled[n_train:]),
        dataset=dataset.name,
        seed=int(seed),
        k=int(k),
        landmarkers=tuple(landmarkers),
        notes=notes,
    )


def _per_user_ndcg(model: Recommender, part: Interactions, encoder: Encoder, k: int) -> pd.Series:
    """ndcg@k of a fitted model for every user of `part` (index raw user_id)."""
    users = np.unique(part.frame["user"].to_numpy())
    top, _ = model.recommend(users, k)
    relevant = part.matrix(binary=True)[users]
    values = ranking_metrics(top, relevant, ks=(k,), names=("ndcg",))[f"ndcg@{k}"]
    return pd.Series(values, index=pd.Index(encoder.user_ids[users], name="user_id"))


# ----------------------------------------------------------------------------- learners


class _Constant:
    """Predicts one class index for everyone (classification data with a single class)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.index, dtype=np.int64)


class MetaLearner:
    """Chooses a base model per user from meta-features; see the module docstring for modes.

    Keyword-only hyperparameters (`defaults`; unknown ones are an error naming them), `mode`
    ("auto", "classify" or "regress") and `cv_folds` for mode="auto". After `fit`: mode_,
    cv_scores_ (mode -> mean validation ndcg of the cross-validated choices; empty unless
    auto), models_ (base models, best mean label first: the tie-break order), feature_names_.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, mode: str = "auto", cv_folds: int = 3, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; "
                f"known: {sorted(self.defaults)}"
            )
        if mode not in ("auto", "classify", "regress"):
            raise ValueError(
                f"{type(self).__name__}: mode={mode!r}; expected auto/classify/regress"
            )
        if not isinstance(cv_folds, int) or cv_folds < 2:
            raise ValueError(f"{type(self).__name__}: cv_folds={cv_folds!r}; expected int >= 2")
        self.mode, self.cv_folds = mode, cv_folds
        self.params: dict[str, Any] = {**self.defaults, **params}

    def _make(self, mode: Mode, seed: int) -> BaseEstimator:
        """The unfitted scikit-learn estimator of a mode (regressors take every label column)."""
        raise NotImplementedError

    def fit(self, features: pd.DataFrame, labels: pd.DataFrame, *, seed: int) -> MetaLearner:
        """Fit on selection-train users: features and labels with the same index. Returns self."""
        if not features.index.equals(labels.index):
            raise ValueError(f"{self.name}.fit: features and labels index different users")
        if len(labels) < 2:
            raise ValueError(f"{self.name}.fit: {len(labels)} user(s); expected at least two")
        self.feature_names_ = [str(c) for c in features.columns]
        means = labels.mean(axis=0).to_numpy()
        order = np.argsort(-means, kind="stable")
        self.models_ = [str(labels.columns[i]) for i in order]
        x = features.to_numpy(np.float64)
        y = labels[self.models_].to_numpy(np.float64)
        self.cv_scores_: dict[str, float] = {}
        if self.mode == "auto":
            for mode in ("classify", "regress"):
                self.cv_scores_[mode] = self._cv_score(mode, x, y, seed)
            better = self.cv_scores_["regress"] > self.cv_scores_["classify"]
            self.mode_: Mode = "regress" if better else "classify"
        else:
            self.mode_ = self.mode  # type: ignore[assignment]
        self.estimator_ = self._fit_mode(self.mode_, x, y, seed)
        return self

    def choose(self, features: pd.DataFrame) -> npt.NDArray[np.object_]:
        """The chosen base model's name per row of `features` (same columns as in fit)."""
        if not hasattr(self, "estimator_"):
            raise RuntimeError(f"{self.name}.choose called before fit")
        if [str(c) for c in features.columns] != self.feature_names_:
            raise ValueError(f"{self.name}.choose: feature columns differ from those of fit")
        index = self._predict_index(self.estimator_, self.mode_, features.to_numpy(np.float64))
        return np.asarray(self.models_, dtype=object)[index]

    def _fit_mode(self, mode: Mode, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            if mode == "regress":
                return self._make("regress", seed).fit(x, y)
            informative = y.max(axis=1) > y.min(axis=1)  # all-tied users state no preference
            best = y.argmax(axis=1)  # first maximum: the globally better model wins ties
            classes = np.unique(best[informative])
            if classes.size < 2:
                return _Constant(int(classes[0]) if classes.size else 0)
            return self._make("classify", seed).fit(x[informative], best[informative])

    @staticmethod
    def _predict_index(estimator: Any, mode: Mode, x: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1):
            pred = np.asarray(estimator.predict(x))
        if mode == "regress":
            return pred.reshape(len(x), -1).argmax(axis=1)
        return pred.astype(np.int64)

    def _cv_score(self, mode: Mode, x: np.ndarray, y: np.ndarray, seed: int) -> float:
        """Mean validation ndcg of the mode's choices for held-out selection-train users."""
        folds = KFold(n_splits=min(self.cv_folds, len(x)), shuffle=True, random_state=seed)
        total = 0.0
        for fit_rows, held in folds.split(x):
            estimator = self._fit_mode(mode, x[fit_rows], y[fit_rows], seed)
            pick = self._predict_index(estimator, mode, x[held])
            total += float(y[held, pick].sum())
        return total / len(x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"mode": self.mode, **self.params}.items())
        return f"{type(self).__name__}({args})"


def _scaled(estimator: BaseEstimator) -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("model", estimator)])  # fmt: skip


def _imputed(estimator: BaseEstimator) -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("model", estimator)])  # fmt: skip


class MetaNN(MetaLearner):
    """A one-hidden-layer MLP (MLPClassifier / multi-output MLPRegressor), standardised input."""

    name = "MetaNN"
    defaults = {"hidden": 32, "alpha": 1e-2, "max_iter": 500}

    def _make(self, mode: Mode, seed: int) -> BaseEstimator:
        cls = MLPClassifier if mode == "classify" else MLPRegressor
        p = self.params
        return _scaled(cls(hidden_layer_sizes=(int(p["hidden"]),), alpha=float(p["alpha"]),
                           max_iter=int(p["max_iter"]), random_state=seed))  # fmt: skip


class MetaDT(MetaLearner):
    """A shallow decision tree, small enough to plot: `sklearn.tree.plot_tree(learner.tree_,
    **learner.plot_kwargs())`."""

    name = "MetaDT"
    defaults = {"max_depth": 3, "min_samples_leaf": 20}

    def _make(self, mode: Mode, seed: int) -> BaseEstimator:
        cls = DecisionTreeClassifier if mode == "classify" else DecisionTreeRegressor
        p = self.params
        tree = cls(max_depth=int(p["max_depth"]), min_samples_leaf=int(p["min_samples_leaf"]),
                   random_state=seed)  # fmt: skip
        return _imputed(tree)

    @property
    def tree_(self) -> DecisionTreeClassifier | DecisionTreeRegressor:
        """The fitted tree (a regression tree has one output per base model, in `models_`)."""
        if not isinstance(getattr(self, "estimator_", None), Pipeline):
            raise RuntimeError(f"{self.name}: no fitted tree (not fitted, or one class only)")
        return self.estimator_.named_steps["model"]

    def plot_kwargs(self) -> dict[str, Any]:
        """feature_names and (classification) class_names for `sklearn.tree.plot_tree`."""
        tree = self.tree_
        out: dict[str, Any] = {"feature_names": self.feature_names_}
        if isinstance(tree, DecisionTreeClassifier):
            out["class_names"] = [self.models_[int(c)] for c in tree.classes_]
        return out


class MetaSVM(MetaLearner):
    """An RBF SVM on standardised features: SVC, or one SVR per base model."""

    name = "MetaSVM"
    defaults = {"C": 1.0, "epsilon": 0.01}  # ndcg labels are ~0.1: SVR's default 0.1 is too wide

    def _make(self, mode: Mode, seed: int) -> BaseEstimator:
        c = float(self.params["C"])
        if mode == "classify":
            return _scaled(SVC(C=c, kernel="rbf", gamma="scale", random_state=seed))
        svr = SVR(C=c, epsilon=float(self.params["epsilon"]), kernel="rbf", gamma="scale")
        return _scaled(MultiOutputRegressor(svr))


class MetaGB(MetaLearner):
    """Histogram gradient boosting: one classifier, or one regressor per base model."""

    name = "MetaGB"
    defaults = {"max_depth": 3, "max_iter": 100, "learning_rate": 0.05}

    def _make(self, mode: Mode, seed: int) -> BaseEstimator:
        p = self.params
        kw = {"max_depth": int(p["max_depth"]), "max_iter": int(p["max_iter"]),
              "learning_rate": float(p["learning_rate"]), "random_state": seed}  # fmt: skip
        if mode == "classify":
            return HistGradientBoostingClassifier(**kw)
        return MultiOutputRegressor(HistGradientBoostingRegressor(**kw))


META_LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls for cls in (MetaNN, MetaDT, MetaSVM, MetaGB)
}


# ----------------------------------------------------------------------------- evaluation

Learners = Mapping[str, MetaLearner] | Sequence[str] | None


def fit_learners(data: SelectionData, learners: Learners, seed: int) -> dict[str, MetaLearner]:
    """Fit meta-learners (in place) on the selection-train users; returns label -> learner.

    learners: label -> learner, names of META_LEARNERS (defaults), or None for all of them.
    """
    if learners is None:
        learners = list(META_LEARNERS)
    if isinstance(learners, Mapping):
        named = dict(learners)
    else:
        unknown = [n for n in learners if n not in META_LEARNERS]
        if unknown:
            raise KeyError(f"unknown meta-learner(s) {unknown}; known: {sorted(META_LEARNERS)}")
        named = {n: META_LEARNERS[n]() for n in learners}
    clash = sorted(set(named) & (set(REFERENCES) | set(data.base_models)))
    if clash:
        raise ValueError(f"meta-learner label(s) {clash} clash with base models or references")
    x, y = data.features.loc[data.train_users], data.labels.loc[data.train_users]
    return {label: learner.fit(x, y, seed=seed) for label, learner in named.items()}


def selection_choices(data: SelectionData, fitted: Mapping[str, MetaLearner]) -> pd.DataFrame:
    """The base model each method picks for each selection-test user (index user_id): one
    column per fitted learner, then SingleBest and Oracle."""
    x = data.features.loc[data.test_users]
    out = pd.DataFrame(
        {label: learner.choose(x) for label, learner in fitted.items()}, index=x.index
    )
    train_means = data.labels.loc[data.train_users].mean(axis=0)
    out[SINGLE_BEST] = data.base_models[int(np.argmax(train_means.to_numpy()))]
    test = data.test_ndcg.loc[data.test_users]
    out[ORACLE] = np.asarray(data.base_models, dtype=object)[test.to_numpy().argmax(axis=1)]
    return out.astype(object)


def gap_closed(method: npt.ArrayLike, single: npt.ArrayLike, oracle: npt.ArrayLike) -> float:
    """(mean(method) - mean(single)) / (mean(oracle) - mean(single)); NaN when Oracle's mean
    equals SingleBest's (no gap to close)."""
    m, s, o = (float(np.mean(np.asarray(v, dtype=np.float64))) for v in (method, single, oracle))
    return (m - s) / (o - s) if o != s else float("nan")


def evaluate_selection(
    data: SelectionData,
    learners: Learners = None,
    seed: int = 0,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit the learners (in place; see `fit_learners`) and score every method on the
    selection-test users.

    Returns (per_user, summary). per_user: user_id, then one column per method with its
    per-user test ndcg@k: the learners, SingleBest, Oracle, then each base model applied to
    everyone. summary: one row per method (same order): method, kind ("meta", "reference",
    "base"), mode (a learner's chosen mode), ndcg@k (mean), gap_closed, ci_low, ci_high
    (paired percentile bootstrap over users, `n_boot` resamples seeded by `seed`), n_users.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}; expected a level in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}; expected >= 1")
    fitted = fit_learners(data, learners, seed)
    picks = selection_choices(data, fitted)
    test = data.test_ndcg.loc[data.test_users]
    values = test.to_numpy(np.float64)
    column = {name: i for i, name in enumerate(data.base_models)}
    per_user = pd.DataFrame({"user_id": test.index.to_numpy(np.int64)})
    for method in picks.columns:
        idx = np.array([column[c] for c in picks[method]], dtype=np.int64)
        per_user[method] = values[np.arange(len(values)), idx]
    for name in data.base_models:
        per_user[name] = test[name].to_numpy(np.float64)

    methods = [c for c in per_user.columns if c != "user_id"]
    v = per_user[methods].to_numpy(np.float64)
    rng = np.random.default_rng([int(seed), _BOOT_STREAM])
    draws = rng.integers(0, len(v), size=(n_boot, len(v)))
    boot = v[draws].mean(axis=1)  # (n_boot, n_methods)
    s, o = methods.index(SINGLE_BEST), methods.index(ORACLE)
    denom = boot[:, o] - boot[:, s]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(denom[:, None] != 0, (boot - boot[:, [s]]) / denom[:, None], np.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    rows = []
    for j, method in enumerate(methods):
        r = ratios[:, j][np.isfinite(ratios[:, j])]
        low, high = np.percentile(r, [tail, 100.0 - tail]) if r.size else (np.nan, np.nan)
        kind = "meta" if method in fitted else "reference" if method in REFERENCES else "base"
        rows.append({
            "method": method, "kind": kind,
            "mode": fitted[method].mode_ if method in fitted else "",
            f"ndcg@{data.k}": float(v[:, j].mean()),
            "gap_closed": gap_closed(v[:, j], v[:, s], v[:, o]),
            "ci_low": float(low), "ci_high": float(high), "n_users": len(v),
        })  # fmt: skip
    return per_user, pd.DataFrame(rows)


def rows_for_contract(
    per_user: pd.DataFrame,
    dataset: str | Dataset,
    seed: int,
    family_of: Mapping[str, str],
    *,
    k: int = 10,
) -> pd.DataFrame:
    """Metric rows (dataset, protocol, family, model, seed, metric, value) of every method in
    `per_user` (as `evaluate_selection` returns it): ndcg@k (mean over selection-test users)
    and gap_closed. family_of: base model name -> family (e.g. `{n: m.family for n, m in
    base_models.items()}`); every other column (learners, SingleBest, Oracle) is "meta"."""
    missing = [c for c in ("user_id", SINGLE_BEST, ORACLE) if c not in per_user.columns]
    if missing:
        raise ValueError(f"rows_for_contract: per_user lacks column(s) {missing}")
    bad = {m: f for m, f in family_of.items() if f not in FAMILIES}
    if bad:
        raise ValueError(f"rows_for_contract: unknown family {bad}; expected one of {FAMILIES}")
    name = dataset.name if isinstance(dataset, Dataset) else str(dataset)
    single, oracle = per_user[SINGLE_BEST], per_user[ORACLE]
    rows = []
    for method in (c for c in per_user.columns if c != "user_id"):
        values = per_user[method].to_numpy(np.float64)
        base = {"dataset": name, "protocol": PROTOCOL, "family": family_of.get(method, "meta"),
                "model": method, "seed": int(seed)}  # fmt: skip
        rows.append({**base, "metric": f"ndcg@{k}", "value": float(np.mean(values))})
        rows.append({**base, "metric": "gap_closed", "value": gap_closed(values, single, oracle)})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; has {list(frame.columns)}")


def run_selection(
    config: Any,
    data: Mapping[str, Dataset],
    base_names: Sequence[str],
    *,
    budgets: Mapping[str, int],
    tune_data: Mapping[str, str] | None = None,
    learners: Learners = None,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """The `algo-selection` protocol for a notebook: per data set and seed, the base models with
    their tuned `topn-75-25` values (the shared tuning cache, `budgets[name]` configurations, on
    the data set `tune_data[name]` where given, as `30_deep` tunes its models on ML-100K),
    `build_selection_data`, `evaluate_selection`; metric rows and per-user ndcg (for paired
    tests) go through the runner's `Experiment.record`. The (data set, seed) pairs are
    independent, so they run as one batch on the parallel executor (`selection_seed`). Returns
    the summaries (one row per data set, seed and method) with the seconds spent building the
    data (the base models' two fits) and evaluating (fitting the learners)."""
    from metarec_lib.executors import CallJob, default_executor
    from metarec_lib.models.registry import get_model
    from metarec_lib.runner import Experiment
    from metarec_lib.study import tune_for_data

    exp = Experiment(config.stem, config.results_dir, progress=not config.smoke)
    jobs, families = [], {}
    for ds in data.values():
        wanted = [(ds, data.get((tune_data or {}).get(name, ds.name), ds), "topn-75-25", name,
                   budgets[name]) for name in base_names]  # fmt: skip
        chosen = tune_for_data(config, wanted)
        models = {name: get_model(name, device=config.device, **(own or tuned).params)
                  for name, (tuned, _, own) in zip(base_names, chosen, strict=True)}  # fmt: skip
        families[ds.name] = {name: m.family for name, m in models.items()}
        jobs += [CallJob(selection_seed, (ds, models, seed, learners, n_boot),
                         label=f"selection {ds.name} seed={seed}")
                 for seed in config.seeds]  # fmt: skip
    summaries = []
    for job, (per_user, summary, timing) in zip(jobs, default_executor().map_calls(jobs),
                                                strict=True):  # fmt: skip
        ds, _, seed = job.args[:3]
        rows = rows_for_contract(per_user, ds, seed, families[ds.name])
        frames = {(ds.name, PROTOCOL, m, seed): pd.DataFrame(
                      {"user_id": per_user["user_id"], "ndcg@10": per_user[m]})
                  for m in per_user.columns if m != "user_id"}  # fmt: skip
        exp.record(rows, None, frames)
        summaries.append(summary.assign(dataset=ds.name, seed=seed, **timing))
    return pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()


def selection_seed(
    dataset: Dataset,
    base_models: Mapping[str, Recommender],
    seed: int,
    learners: Learners = None,
    n_boot: int = 1000,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """One (data set, seed) of `run_selection`: `build_selection_data` then
    `evaluate_selection`; (per_user, summary, {"build_seconds", "evaluate_seconds"})."""
    import time

    start = time.perf_counter()
    sel = build_selection_data(dataset, base_models, seed)
    built = time.perf_counter()
    per_user, summary = evaluate_selection(sel, learners, seed, n_boot=n_boot)
    timing = {"build_seconds": built - start, "evaluate_seconds": time.perf_counter() - built}
    return per_user, summary, timing
