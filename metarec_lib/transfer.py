"""Transfer-learning data: title matching, genre and synthetic domains, target-fraction splits.

Three settings pair a target data set with a source-domain interactions frame:

- "xdata-latest-to-100k": target ML-100K, source ml-latest-small; movies matched by normalised
  title and year (`match_items`), users disjoint (shared = "items");
- "xdomain-genre": within ML-100K, target = "action" items, source = "drama" items
  (`genre_domain`), users shared;
- "xdomain-synthetic": `generate_synthetic(n_domains=2, ...)`, target = domain 1, source =
  domain 0, users shared; `domain_relatedness` sweeps how much the domains have in common.

Source ids (the contract of `Split.source` and `encode_source`): an entity the source shares with
the target carries the TARGET's raw id; a source-only entity carries minus its own id (all
MovieLens and synthetic ids are >= 1), so it can never collide with a target id.

`target_fraction_split` keeps one per-user holdout test set per seed and trains on a nested,
seeded fraction of the target's training rows: the protocol sweeps how little target data
there is, which is where transfer should pay.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from metarec_lib.data.dataset import INTERACTION_COLUMNS, DataError, Dataset
from metarec_lib.splits import Split, SplitError, holdout_per_user

XDATA = "xdata-latest-to-100k"
GENRE = "xdomain-genre"
SYNTHETIC = "xdomain-synthetic"
SETTINGS = (XDATA, GENRE, SYNTHETIC)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)

# Genre domains: an item is "action" when ANY of its genres is in ACTION_GENRES (so an
# Action|Drama film is "action"), else "drama" (Drama, Comedy, Romance, Children's, Horror, ...;
# items with no genre or only "unknown" too). On ML-100K: 619 action items (52,054 ratings, all
# 943 users), 1063 drama items (47,946 ratings, 940 users).
GENRE_TARGET = "action"
GENRE_SOURCE = "drama"
ACTION_GENRES = frozenset({"Action", "Adventure", "Crime", "Sci-Fi", "Thriller", "War", "Western"})

# Synthetic domains and the generator's defaults for the transfer setting: 1000 users sharing
# two domains of 400 items; ~80 ratings per user (>= 20), ~34 of them liked per domain. Users
# pick what they expect to like (exposure_taste 2): with exposure by popularity alone the rated
# pairs carry hardly any taste, popularity decides the rankings and relatedness hardly matters
# (measured: MostPop 0.157 / 0.216 / 0.306 NDCG@10 at fractions 0.01 / 0.1 / 1, above or level
# with every transfer method, and transfer "helped" as much with the source's users shuffled).
# With it, at fraction 1, seed 42, hyperparameters fixed: TargetOnly 0.405 / 0.397 NDCG@10 at
# relatedness 0 / 1, PretrainFinetune 0.374 / 0.457.
SYNTHETIC_TARGET_DOMAIN = 1
SYNTHETIC_SOURCE_DOMAIN = 0
SYNTHETIC_DEFAULTS: dict[str, object] = {
    "n_users": 1000,
    "n_items": 800,
    "density": 0.1,
    "min_ratings": 20,
    "exposure_taste": 2.0,
}
# The implicit feedback is the liked pairs, rating >= SYNTHETIC_LIKED_AT, in both domains.
SYNTHETIC_LIKED_AT = 4.0

_FRACTION_STREAM = 7_357  # second entropy word: the fraction order never reuses holdout's stream

# ----------------------------------------------------------------------------- title matching

_ARTICLES = "the a an les la le l' il der die das el los las".split()
# A trailing ", The" (after alternative titles are gone) is dropped; so is a leading "The ".
# "die" is NOT dropped when leading: "Die Hard" is no German article.
_TRAILING_ARTICLE = re.compile(r",\s*(?:" + "|".join(map(re.escape, _ARTICLES)) + r")\s*$")
_LEADING_ARTICLE = re.compile(
    r"^(?:(?:" + "|".join(re.escape(a) for a in _ARTICLES if a not in ("die", "l'")) + r")\s+"
    r"|l')"
)
_TRAILING_GROUP = re.compile(r"\s*\(([^()]*)\)\s*$")
_AKA = re.compile(r"^(?:a\.k\.a\.|aka)\s+", re.IGNORECASE)
_APOSTROPHES = re.compile(r"['\u2019`\u00b4]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise_title(title: str) -> tuple[str, int | None]:
    """(key, year) of a movie title, so that spellings of one movie share a key.

    year: the last trailing "(yyyy)" group (None when there is none). Every other trailing
    parenthesised group is an alternative title ("(a.k.a. Se7en)", "(Cité des enfants perdus,
    La)") or a tag ("(V)") and is dropped. The key is then accent-free (NFKD, combining marks
    dropped), lower-case, without a trailing article (", The", ", A", ", Les", ", L'", ...) or
    a leading one ("The ", "A ", "Les ", "L'...", but not "Die "), with "&" read as "and",
    apostrophes deleted and any other run of punctuation or spaces as one space.
    """
    key, _, year = _parse_title(title)
    return key, year


def alternative_keys(title: str) -> tuple[str, ...]:
    """Keys of a title's parenthesised alternative titles ("(a.k.a. Se7en)" -> "se7en"), in
    order, normalised as `normalise_title` does; one-letter tags like "(V)" are not titles."""
    return _parse_title(title)[1]


def _parse_title(title: str) -> tuple[str, tuple[str, ...], int | None]:
    """(key, alternative keys, year): see `normalise_title`."""
    if not isinstance(title, str):
        raise ValueError(f"normalise_title: title={title!r}; expected a string")
    text, year, groups = title.strip(), None, []
    while (group := _TRAILING_GROUP.search(text)) is not None and group.start() > 0:
        inside = group.group(1).strip()
        if year is None and re.fullmatch(r"\d{4}", inside):
            year = int(inside)
        else:
            groups.insert(0, _AKA.sub("", inside))
        text = text[: group.start()]
    alternatives = tuple(k for k in map(_key, groups) if len(k) > 1)
    return _key(text), alternatives, year


def _key(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().strip()
    text = _TRAILING_ARTICLE.sub("", text)
    text = _LEADING_ARTICLE.sub("", text)
    text = _APOSTROPHES.sub("", text.replace("&", " and "))
    return _NON_WORD.sub(" ", text).strip()


def match_items(source_items: pd.DataFrame, target_items: pd.DataFrame) -> pd.DataFrame:
    """One-to-one movie matches on (normalised title, year): columns source_item_id,
    target_item_id (int64), in source_item_id order.

    Items frames are indexed by item_id (or have an `item_id` column) and have `title`; the
    year is the title's "(yyyy)", else the `year` column where there is one. Two passes, each
    on (name, year) with the same year required:
    1. main keys (`normalise_title`);
    2. among items still unmatched, main or alternative keys (`alternative_keys`) on either
       side: "Dear Diary (Caro Diario)" matches "Caro Diario (Dear Diary)", "Bram Stoker's
       Dracula" matches "Dracula (Bram Stoker's Dracula)"; a pair is kept only when neither
       item has another candidate.
    Never matched: items without a year or key, and ambiguous ones: a (name, year) that
    several items share on one side (e.g. ML-100K lists "Chasing Amy (1997)" twice).
    """
    source = _title_keys(source_items, "source_items")
    target = _title_keys(target_items, "target_items")
    first = _unique_pairs(_names(source, main_only=True), _names(target, main_only=True))
    second = _unique_pairs(
        _names(source[~source["item_id"].isin(first["source_item_id"])], main_only=False),
        _names(target[~target["item_id"].isin(first["target_item_id"])], main_only=False),
    )
    out = pd.concat([first, second], ignore_index=True)
    return out.sort_values("source_item_id", kind="mergesort").reset_index(drop=True)


def match_report(
    matches: pd.DataFrame, source_items: pd.DataFrame, target_items: pd.DataFrame
) -> dict[str, float]:
    """Counts and match rates: items per side, matched pairs, and the share of each side's
    items matched (source_rate, target_rate)."""
    n_source, n_target = len(source_items), len(target_items)
    n = len(matches)
    return {
        "source_items": n_source,
        "target_items": n_target,
        "matched": n,
        "source_rate": n / n_source if n_source else 0.0,
        "target_rate": n / n_target if n_target else 0.0,
    }


def _title_keys(items: pd.DataFrame, where: str) -> pd.DataFrame:
    """item_id, key, alternatives (tuple), year (float) of every item with a year."""
    if "title" not in items.columns:
        raise DataError(f"{where}: missing column 'title'; has {list(items.columns)}")
    missing = items["title"].isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{where}: column 'title' has {int(missing.sum())} missing value(s); first at row "
            f"{int(np.flatnonzero(missing)[0])}"
        )
    ids = items["item_id"] if "item_id" in items.columns else items.index.to_series()
    parsed = [_parse_title(t) for t in items["title"]]
    year = np.array([np.nan if p[2] is None else p[2] for p in parsed], dtype=np.float64)
    if "year" in items.columns:
        column = pd.to_numeric(items["year"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        year = np.where(np.isnan(year), column, year)
    out = pd.DataFrame(
        {
            "item_id": ids.to_numpy(np.int64),
            "key": [p[0] for p in parsed],
            "alternatives": [p[1] for p in parsed],
            "year": year,
        }
    )
    return out[~np.isnan(year)].reset_index(drop=True)


def _names(keys: pd.DataFrame, *, main_only: bool) -> pd.DataFrame:
    """(item_id, name, year) rows: each item's main key, and its alternatives unless main_only;
    empty names dropped, each (item, name) once."""
    names = keys["key"] if main_only else keys["key"].map(lambda k: (k,)) + keys["alternatives"]
    rows = pd.DataFrame({"item_id": keys["item_id"], "name": names, "year": keys["year"]})
    rows = rows.explode("name") if not main_only else rows
    rows = rows[rows["name"].notna() & (rows["name"] != "")]
    return rows.drop_duplicates(["item_id", "name"]).reset_index(drop=True)


def _unique_pairs(source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """Pairs sharing a (name, year) unique on each side, kept when one-to-one."""
    source = source[~source.duplicated(["name", "year"], keep=False)]
    target = target[~target.duplicated(["name", "year"], keep=False)]
    pairs = source.merge(target, on=["name", "year"], suffixes=("_source", "_target"))
    pairs = pairs.drop_duplicates(["item_id_source", "item_id_target"])
    unique = ~pairs["item_id_source"].duplicated(keep=False) & ~pairs["item_id_target"].duplicated(
        keep=False
    )
    return pd.DataFrame(
        {
            "source_item_id": pairs.loc[unique, "item_id_source"].to_numpy(np.int64),
            "target_item_id": pairs.loc[unique, "item_id_target"].to_numpy(np.int64),
        }
    )


# ----------------------------------------------------------------------------- genre domains


def genre_domain(items: pd.DataFrame) -> pd.Series:
    """Each item's domain, "action" or "drama", index aligned to `items` (see ACTION_GENRES).

    `genres` is '|'-joined; an item is "action" when any genre is in ACTION_GENRES, else
    "drama" (including items with no genre, an empty string or only "unknown").
    """
    if "genres" not in items.columns:
        raise DataError(f"genre_domain: missing column 'genres'; has {list(items.columns)}")
    genres = items["genres"].fillna("").astype(str)
    action = [bool(ACTION_GENRES.intersection(g.split("|"))) for g in genres]
    values = np.where(np.asarray(action, dtype=bool), GENRE_TARGET, GENRE_SOURCE)
    return pd.Series(values, index=items.index, name="domain", dtype="str")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TransferSetting:
    """A target data set and the source-domain interactions that may help it.

    target: the target domain only (its catalogue is what models rank and encoders cover).
    source: raw-id interactions (user_id, item_id, rating, timestamp) under the module's id
        convention: shared entities carry the target's id, source-only ones minus their own.
    shared: which entities the domains have in common, "users" or "items".
    relatedness: the synthetic setting's domain_relatedness; None for the others.
    notes: match rates, domain sizes and other decisions, for data cards.
    """

    name: str
    target: Dataset
    source: pd.DataFrame
    shared: Literal["users", "items"]
    notes: tuple[str, ...] = ()
    relatedness: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SETTINGS:
            raise ValueError(f"TransferSetting: name={self.name!r}; expected one of {SETTINGS}")
        if self.shared not in ("users", "items"):
            raise ValueError(f"TransferSetting: shared={self.shared!r}; expected users or items")
        missing = [c for c in INTERACTION_COLUMNS if c not in self.source.columns]
        if missing:
            raise DataError(f"TransferSetting {self.name!r}: source lacks column(s) {missing}")


def xdata_setting(target: Dataset, source: Dataset) -> TransferSetting:
    """ML-100K (target) with ml-latest-small (source): matched movies carry their ML-100K id,
    unmatched ones and every source user (no user is shared) minus their own id."""
    matches = match_items(source.items, target.items)
    report = match_report(matches, source.items, target.items)
    frame = _source_frame(source.interactions, "source.interactions")
    to_target = dict(zip(matches["source_item_id"], matches["target_item_id"], strict=True))
    mapped = frame["item_id"].map(to_target)  # NaN where the movie is unmatched
    shared = mapped.notna().to_numpy()
    frame["item_id"] = np.where(
        shared, mapped.fillna(0).to_numpy(np.int64), -frame["item_id"].to_numpy()
    )
    frame["user_id"] = -frame["user_id"]
    notes = (
        f"{XDATA}: {report['matched']} movies matched by normalised title + year: "
        f"{report['target_rate']:.1%} of {report['target_items']} {target.name} items, "
        f"{report['source_rate']:.1%} of {report['source_items']} {source.name} items "
        f"(ambiguous or year-less titles unmatched)",
        f"{XDATA}: {int(shared.sum())} of {len(frame)} source ratings "
        f"({shared.mean():.1%}) are on matched movies; users do not overlap (source users "
        f"carry -user_id), unmatched source movies -item_id",
        f"{XDATA}: source ratings on {source.name}'s scale {source.rating_scale}",
    )
    return TransferSetting(XDATA, target, frame, "items", notes)


def genre_setting(ml100k: Dataset) -> TransferSetting:
    """ML-100K split by `genre_domain`: target = its action items (every user kept in the
    users frame, so all users are shared), source = the drama items' ratings (-item_id)."""
    domain = genre_domain(ml100k.items)
    action_ids = ml100k.items.index[domain.to_numpy() == GENRE_TARGET].to_numpy()
    unknown = ~np.isin(ml100k.interactions["item_id"].to_numpy(), ml100k.items.index.to_numpy())
    if unknown.any():
        raise DataError(f"genre_setting: {int(unknown.sum())} rating(s) of items not in items")
    target, source, in_target = _split_by_items(
        ml100k, action_ids, f"{GENRE}: target domain = {GENRE_TARGET} items only"
    )
    n_items = len(ml100k.items)
    notes = (
        f"{GENRE}: {len(action_ids)} {GENRE_TARGET} items (any genre in "
        f"{sorted(ACTION_GENRES)}), {n_items - len(action_ids)} {GENRE_SOURCE} items (all "
        f"others, no-genre items included)",
        f"{GENRE}: {int(in_target.sum())} target ratings by {target.n_users} users, "
        f"{len(source)} source ratings by {source['user_id'].nunique()} users; users shared, "
        f"source items carry -item_id",
    )
    return TransferSetting(GENRE, target, source, "users", notes)


def synthetic_setting(relatedness: float, seed: int = 0, **generator_options) -> TransferSetting:
    """Two synthetic domains (users shared, items split): target = domain 1, source = domain 0
    (-item_id), liked pairs only (see SYNTHETIC_LIKED_AT). Options override SYNTHETIC_DEFAULTS
    and go to `generate_synthetic`."""
    from metarec_lib.data.synthetic import generate_synthetic

    reserved = {"n_domains", "domain_relatedness", "seed", "return_truth"} & set(generator_options)
    if reserved:
        raise ValueError(f"synthetic_setting: option(s) {sorted(reserved)} are set by the setting")
    options = {**SYNTHETIC_DEFAULTS, **generator_options}
    data = generate_synthetic(n_domains=2, domain_relatedness=relatedness, seed=seed, **options)
    liked = data.interactions["rating"].to_numpy() >= SYNTHETIC_LIKED_AT
    data = replace(data, interactions=data.interactions[liked].reset_index(drop=True))
    item_domain = data.items["domain"].to_numpy()
    target_ids = data.items.index[item_domain == SYNTHETIC_TARGET_DOMAIN].to_numpy()
    target, source, in_target = _split_by_items(
        data, target_ids, f"{SYNTHETIC}: target domain = {SYNTHETIC_TARGET_DOMAIN}"
    )
    notes = (
        f"{SYNTHETIC}: domain_relatedness={float(relatedness)}, seed={seed}, "
        f"generator options {options}",
        f"{SYNTHETIC}: target domain {SYNTHETIC_TARGET_DOMAIN}: {len(target_ids)} items, "
        f"{int(in_target.sum())} ratings; source domain {SYNTHETIC_SOURCE_DOMAIN}: "
        f"{len(data.items) - len(target_ids)} items, {len(source)} ratings; users shared",
    )
    return TransferSetting(SYNTHETIC, target, source, "users", notes, float(relatedness))


def _split_by_items(
    data: Dataset, target_ids: np.ndarray, note: str
) -> tuple[Dataset, pd.DataFrame, np.ndarray]:
    """(target data set with the `target_ids` items only, source frame of the other items'
    ratings with -item_id, the target mask over `data.interactions`); users are shared."""
    in_target = np.isin(data.interactions["item_id"].to_numpy(), target_ids)
    source = _source_frame(data.interactions[~in_target], f"{data.name} interactions")
    source["item_id"] = -source["item_id"]
    target = replace(
        data,
        interactions=data.interactions[in_target].reset_index(drop=True),
        items=data.items.loc[target_ids],
        canonical_folds=None,
        notes=data.notes + (note,),
    )
    return target, source, in_target


def _source_frame(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The interaction columns of `frame`, int64 ids (all >= 1, so negation is safe)."""
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    out = frame[list(INTERACTION_COLUMNS)].reset_index(drop=True)
    for col in ("user_id", "item_id"):
        values = out[col].to_numpy(np.int64)
        if values.size and values.min() < 1:
            raise DataError(
                f"{where}: column {col!r} has id {values.min()}; expected ids >= 1 "
                f"(source-only ids are negated)"
            )
        out[col] = values
    return out


# ----------------------------------------------------------------------------- splits


def target_fraction_split(
    setting: TransferSetting, fraction: float, seed: int, test_fraction: float = 0.25
) -> Split:
    """Per-user holdout of the target, training on a nested `fraction` of its training rows.

    test: `holdout_per_user(target, test_fraction, seed)`'s test part, the same for every
        fraction of a seed. train: the first max(1, floor(fraction * n)) of that split's n
        training rows in one seeded order (uniform over rows, not per user), so smaller
        fractions are subsets of larger ones; fraction 1 keeps them all. Users left without
        training rows stay in the test (cold users: where transfer should help).
    source: `setting.source` whole (it shares no (user, item) pair with the target; checked).
    """
    _check_protocol_fraction(fraction, "target_fraction_split")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"target_fraction_split: seed={seed!r}; expected an int")
    base = holdout_per_user(setting.target.interactions, test_fraction=test_fraction, seed=seed)
    n = len(base.train)
    n_keep = n if fraction == 1.0 else max(1, int(math.floor(fraction * n + 1e-9)))
    order = np.random.default_rng([int(seed), _FRACTION_STREAM]).permutation(n)
    train = base.train.iloc[np.sort(order[:n_keep])].reset_index(drop=True)
    test_users = base.test["user_id"].unique()
    cold = np.setdiff1d(test_users, train["user_id"].to_numpy())
    split = Split(
        train,
        base.test,
        name=protocol_name(setting.name, fraction, setting.relatedness),
        seed=int(seed),
        notes=setting.notes
        + (
            f"target_fraction_split: train = {n_keep} of {n} target training rows "
            f"(fraction={fraction}), test = {len(base.test)} rows (test_fraction="
            f"{test_fraction}), source = {len(setting.source)} rows",
            f"target_fraction_split: {len(cold)} of {len(test_users)} test users have no "
            f"target training rows; they stay in the test (cold users: only the source "
            f"informs them)",
        ),
        source=setting.source,
    ).check()
    _disjoint_from_source(split)
    return split


def _disjoint_from_source(split: Split) -> None:
    """Raise SplitError if a (user_id, item_id) of train or test is also a source pair."""
    source = split.source
    if source is None or not len(source):
        return
    for part in ("train", "test"):
        both = split.parts()[part].merge(source[["user_id", "item_id"]], on=["user_id", "item_id"])
        if len(both):
            raise SplitError(
                f"split {split.name!r}: {len(both)} {part} pair(s) also in the source, e.g. "
                f"(user_id, item_id) = ({both['user_id'].iat[0]}, {both['item_id'].iat[0]})"
            )


# ----------------------------------------------------------------------------- names


def protocol_name(setting_name: str, fraction: float, relatedness: float | None = None) -> str:
    """The protocol column's name, e.g. "xdomain-genre@frac=0.01" or
    "xdomain-synthetic@rel=0.5,frac=0.1": relatedness is required for the synthetic setting
    and refused for the others."""
    if setting_name not in SETTINGS:
        raise ValueError(
            f"protocol_name: setting_name={setting_name!r}; expected one of {SETTINGS}"
        )
    _check_protocol_fraction(fraction, "protocol_name")
    if setting_name == SYNTHETIC:
        if relatedness is None or isinstance(relatedness, bool):
            raise ValueError(f"protocol_name: {SYNTHETIC} needs relatedness in [0, 1]")
        rel = float(relatedness)
        if not 0.0 <= rel <= 1.0:
            raise ValueError(f"protocol_name: relatedness={relatedness!r}; expected [0, 1]")
        return f"{setting_name}@rel={rel!r},frac={float(fraction)!r}"
    if relatedness is not None:
        raise ValueError(f"protocol_name: relatedness={relatedness!r} given for {setting_name}")
    return f"{setting_name}@frac={float(fraction)!r}"


_NAME = re.compile(r"(?P<setting>[a-z0-9-]+)@(?:rel=(?P<rel>[^,]+),)?frac=(?P<frac>.+)")


def parse_protocol(name: str) -> tuple[str, float, float | None]:
    """(setting_name, fraction, relatedness or None) of a `protocol_name`; ValueError for
    anything else, including non-canonical spellings ("frac=0.10" for "frac=0.1")."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"parse_protocol: {name!r} is not a transfer protocol name; expected "
            f"'<setting>@frac=<f>' or '{SYNTHETIC}@rel=<r>,frac=<f>'"
        )
    try:
        fraction = float(match["frac"])
        rel = None if match["rel"] is None else float(match["rel"])
    except ValueError as e:
        raise ValueError(f"parse_protocol: {name!r}: {e}") from e
    canonical = protocol_name(match["setting"], fraction, rel)
    if canonical != name:
        raise ValueError(f"parse_protocol: {name!r} is not canonical; expected {canonical!r}")
    return match["setting"], fraction, rel


def _check_protocol_fraction(fraction: float, where: str) -> None:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float | np.integer | np.floating)
        or not 0.0 < float(fraction) <= 1.0
    ):
        raise ValueError(f"{where}: fraction={fraction!r}; expected a number in (0, 1]")
