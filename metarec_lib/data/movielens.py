"""MovieLens 100K and latest-small: found or downloaded, verified by SHA-256, parsed to `Dataset`.

Sources, tried in this order (`sources` selects and orders a subset):

1. "data_dir": the `data_dir` argument, else $METAREC_DATA_DIR: a folder holding `<name>/`
   with the raw files (what unzipping the official archive there gives);
2. "cache": `<cache_dir>/<name>/`, by default `platformdirs.user_cache_dir("metarec")`
   (honours XDG_CACHE_HOME), where downloads land so the next load is offline;
3. "official": the GroupLens zip; 4. "backup": Microsoft Recommenders' byte-identical copy on the
   Hugging Face hub (ML-100K only);
5. "mirror" (ML-100K only): RecBole's converted copy inside the `recbole==1.2.1` wheel on the
   package index, fetched with the user's own pip; it has no u1..u5 folds.

Every file read is checked against the digests in the spec. A file that is there but wrong is a
`DataError` (never skipped in favour of another source); a source that is absent moves on. When
every source fails, one `DataUnavailable` lists them all (within ~60 s: short timeouts).
Data: GroupLens (Harper & Konstan 2015, ACM TiiS 5(4)); never redistributed by this project.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import platformdirs

from metarec_lib.data import download as dl
from metarec_lib.data.dataset import DataError, Dataset, interactions_digest, validate_interactions
from metarec_lib.data.download import DataUnavailable, SourceAbsent, verify_file

__all__ = [
    "ENV_VAR",
    "SOURCES",
    "SPECS",
    "DataUnavailable",
    "MovieLensSpec",
    "default_cache_dir",
    "load_movielens",
    "load_recbole_wheel",
    "remove_stale",
]

ENV_VAR = "METAREC_DATA_DIR"
SOURCES = ("data_dir", "cache", "official", "backup", "mirror")
TIME_BUDGET_S = 55.0  # all sources together; leaves margin under the promised 60 s
# A hidden staging or set-aside folder this old is left by a killed load (a load gives up
# after TIME_BUDGET_S), so the next download removes it.
STALE_AFTER_S = 24 * 3600.0
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
HF_BACKUP = "https://huggingface.co/datasets/Recommenders/MovieLens/resolve/main"
# interactions_digest of ML-100K u.data; the package-index mirror must convert to the same
ML100K_DIGEST = "d8864484853ca1053766a43f96887c517412b7d2c9e2495c7d01fb44b890e650"
MONTHS = {
    m: f"{i:02d}"
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
DATE = "datetime64[s]"  # release dates, day precision
RAW = {"dtype": str, "keep_default_na": False, "quoting": csv.QUOTE_NONE}  # read text as is


@dataclass(frozen=True)
class MovieLensSpec:
    """One MovieLens data set: where to get it and the SHA-256 of every file read.

    archive_folder: the folder inside the zip that holds the files (e.g. "ml-100k").
    files: file name -> SHA-256; the files parsed (the layout's required ones must be listed;
        u1..u5.test, tags.csv and links.csv are read when listed).
    urls: the official archive first, then byte-identical backups.
    mirror_digest: `interactions_digest` of the package-index mirror's ratings (None: no mirror);
        mirror_files: SHA-256 of the mirror's files, keyed by base name.
    layout: "100k" (u.data, u.item, u.user, u.genre, ...) or "latest" (ratings.csv, movies.csv).
    rating_step: ratings must be multiples of it (1 for ML-100K, 0.5 for half stars).
    """

    name: str
    archive_folder: str
    files: dict[str, str]
    urls: tuple[str, ...] = ()
    mirror_digest: str | None = None
    layout: Literal["100k", "latest"] = "100k"
    rating_scale: tuple[float, float] = (1.0, 5.0)
    rating_step: float = 1.0
    mirror_files: dict[str, str] = field(default_factory=dict)
    mirror_requirement: str = "recbole==1.2.1"
    mirror_member: str = "recbole/dataset_example/ml-100k/ml-100k"  # + .inter/.item/.user


SPECS: dict[str, MovieLensSpec] = {
    "ml-100k": MovieLensSpec(
        name="ml-100k",
        archive_folder="ml-100k",
        files={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
            "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
            "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
            "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
            "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
            "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
            "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
            "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
            "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
            "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
        },
        urls=(f"{GROUPLENS}/ml-100k.zip", f"{HF_BACKUP}/ml-100k.zip"),
        mirror_digest=ML100K_DIGEST,
        mirror_files={
            "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        },
    ),
    "ml-latest-small": MovieLensSpec(
        name="ml-latest-small",
        archive_folder="ml-latest-small",
        files={
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
            "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
            "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
        },
        urls=(f"{GROUPLENS}/ml-latest-small.zip",),  # no backup is hosted for latest-small
        layout="latest",
        rating_scale=(0.5, 5.0),
        rating_step=0.5,
    ),
}


def default_cache_dir() -> Path:
    """The user cache folder for downloads (XDG_CACHE_HOME/metarec on Linux)."""
    return Path(platformdirs.user_cache_dir("metarec"))


def load_movielens(
    name: Literal["ml-100k", "ml-latest-small"],
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    sources: Sequence[str] | None = None,
    timeout: float = 10.0,
    spec: MovieLensSpec | None = None,
) -> Dataset:
    """Load a MovieLens data set from the first source that has it, verified (see module doc).

    timeout: seconds per network connect/read; `spec` replaces the built-in one (tests).
    Raises DataError for a present but wrong file, DataUnavailable when no source has the data.
    """
    if spec is None:
        if name not in SPECS:
            raise ValueError(f"unknown MovieLens data set {name!r}; expected one of {list(SPECS)}")
        spec = SPECS[name]
    elif spec.name != name:
        raise ValueError(f"spec is for {spec.name!r} but {name!r} was requested")
    order = tuple(SOURCES if sources is None else sources)
    unknown = [s for s in order if s not in SOURCES]
    if unknown or not order:
        raise ValueError(f"unknown source(s) {unknown}; expected a non-empty subset of {SOURCES}")
    ctx = _Context(
        spec,
        data_dir,
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
        timeout,
        time.monotonic() + TIME_BUDGET_S,
    )
    failures: list[str] = []
    for source in order:
        try:
            ds = _LOADERS[source](ctx)
        except SourceAbsent as e:
            failures.append(f"{source}: {e}")
            continue
        return replace(ds, notes=ds.notes + tuple(f"skipped {f}" for f in failures))
    raise DataUnavailable(_unavailable_message(spec, failures))


def load_recbole_wheel(wheel: str | Path, *, spec: MovieLensSpec | None = None) -> Dataset:
    """Read ML-100K from a RecBole wheel (a zip) without installing anything.

    Converts ml-100k.inter/.item/.user to our schema and checks the ratings' digest.
    """
    spec = spec or SPECS["ml-100k"]
    with tempfile.TemporaryDirectory(prefix="metarec-recbole-") as tmp:
        _extract_recbole(Path(wheel), spec, Path(tmp))
        return _read_recbole(spec, Path(tmp), source=str(wheel))


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Context:
    spec: MovieLensSpec
    data_dir: str | Path | None
    cache_root: Path
    timeout: float
    deadline: float

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceAbsent(f"not tried: the {TIME_BUDGET_S:.0f} s time budget is spent")
        return left

    def staging(self) -> Path:
        """A fresh temporary folder inside the cache, so the final rename is atomic. Folders
        that killed loads of this data set left there are removed first."""
        try:
            self.cache_root.mkdir(parents=True, exist_ok=True)
            remove_stale(self.cache_root, f".{self.spec.name}")
            return Path(tempfile.mkdtemp(prefix=f".{self.spec.name}-", dir=self.cache_root))
        except OSError as e:
            raise SourceAbsent(f"cannot write to the cache folder {self.cache_root}: {e}") from e


def remove_stale(cache_root: Path, prefix: str, *, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the folders in `cache_root` named `prefix*` (hidden: staging folders and copies
    `install_dir` set aside) untouched for `older_than` seconds; return them. A load that is
    killed (SIGKILL, power loss) cannot clean up after itself; a live one is minutes old."""
    if not prefix.startswith("."):
        raise ValueError(f"prefix {prefix!r}: only hidden folders are removed")
    cutoff = time.time() - older_than
    removed = []
    for path in cache_root.glob(f"{prefix}*"):
        if path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _from_data_dir(ctx: _Context) -> Dataset:
    root = ctx.data_dir if ctx.data_dir is not None else os.environ.get(ENV_VAR)
    if not root:
        raise SourceAbsent(f"no data_dir given and {ENV_VAR} is not set")
    how = "data_dir" if ctx.data_dir is not None else ENV_VAR
    return _load_folder(ctx.spec, Path(root).expanduser() / ctx.spec.name, f"folder ({how})")


def _from_cache(ctx: _Context) -> Dataset:
    folder = ctx.cache_root / ctx.spec.name
    return _load_folder(ctx.spec, folder, "user cache", hint=f"delete {folder} to download again")


def _from_official(ctx: _Context) -> Dataset:
    if not ctx.spec.urls:
        raise SourceAbsent(f"no official URL for {ctx.spec.name}")
    return _from_url(ctx, ctx.spec.urls[0])


def _from_backup(ctx: _Context) -> Dataset:
    if len(ctx.spec.urls) < 2:
        raise SourceAbsent(f"no backup copy is hosted for {ctx.spec.name}")
    reasons = []
    for url in ctx.spec.urls[1:]:
        try:
            return _from_url(ctx, url)
        except SourceAbsent as e:
            reasons.append(str(e))
    raise SourceAbsent("; ".join(reasons))


def _from_url(ctx: _Context, url: str) -> Dataset:
    spec, timeout = ctx.spec, min(ctx.timeout, ctx.remaining())
    dest = ctx.cache_root / spec.name
    staging = ctx.staging()
    try:
        try:
            archive = dl.download(url, staging / "archive.zip", timeout=timeout, desc=spec.name)
        except SourceAbsent as e:
            raise SourceAbsent(f"{url}: {e}") from e
        try:
            dl.safe_extract(archive, staging / "unpacked")
        except DataError as e:
            raise DataError(f"{url}: {e}") from e
        folder = staging / "unpacked" / spec.archive_folder
        missing = [f for f in spec.files if not (folder / f).is_file()]
        if missing:
            raise DataError(
                f"{url}: the archive lacks {[f'{spec.archive_folder}/{f}' for f in missing]}; "
                "it is not the official archive. Nothing was written to the cache."
            )
        for fname, digest in spec.files.items():
            verify_file(
                folder / fname,
                digest,
                label=f"{spec.archive_folder}/{fname} in {url}",
                hint="the download is corrupt or not the official archive; nothing was cached",
            )
        dl.install_dir(folder, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ds = _load_folder(spec, dest, "user cache", hint=f"delete {dest} to download again")
    return replace(ds, source=url, notes=(f"downloaded from {url}, cached in {dest}", *ds.notes))


def _from_mirror(ctx: _Context) -> Dataset:
    spec = ctx.spec
    if spec.mirror_digest is None:
        raise SourceAbsent(
            f"the package-index mirror ({spec.mirror_requirement}) has no {spec.name}"
        )
    where = f"pip download {spec.mirror_requirement}"
    cached = ctx.cache_root / f"{spec.name}-{spec.mirror_requirement.replace('==', '-')}"
    if all((cached / f).is_file() for f in _recbole_names(spec)):
        return _read_recbole(spec, cached, source=f"{where} (cached in {cached})")
    limit = ctx.remaining()
    staging = ctx.staging()
    try:
        try:
            wheel = dl.pip_download(
                spec.mirror_requirement,
                staging / "wheel",
                timeout=min(ctx.timeout, limit),
                limit=limit,
            )
        except SourceAbsent as e:
            raise SourceAbsent(f"{where}: {e}") from e
        files = staging / "files"
        _extract_recbole(wheel, spec, files)
        ds = _read_recbole(spec, files, source=where)
        dl.install_dir(files, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return replace(ds, notes=(f"cached in {cached}", *ds.notes))


_LOADERS: dict[str, Callable[[_Context], Dataset]] = {
    "data_dir": _from_data_dir,
    "cache": _from_cache,
    "official": _from_official,
    "backup": _from_backup,
    "mirror": _from_mirror,
}


def _unavailable_message(spec: MovieLensSpec, failures: list[str]) -> str:
    tried = "\n".join(f"  {i}. {f}" for i, f in enumerate(failures, 1))
    url = spec.urls[0] if spec.urls else f"the official {spec.name} archive"
    listed = ", ".join(spec.files)
    return (
        f"{spec.name} is not available from any source (tried in order):\n{tried}\n"
        f"To use it offline: on a machine with internet access download {url}, unzip it into "
        f"a folder (giving {spec.name}/ with {listed}) and set {ENV_VAR} to that folder "
        f"(or pass data_dir=...). Only files matching the published SHA-256 digests are used."
    )


def _load_folder(spec: MovieLensSpec, folder: Path, how: str, hint: str = "") -> Dataset:
    """Verify and parse the raw files in `folder`; SourceAbsent when it or a file is missing."""
    if not folder.is_dir():
        raise SourceAbsent(f"{folder} does not exist")
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise SourceAbsent(f"{folder} lacks {', '.join(missing)}")
    official = spec.urls[0] if spec.urls else "GroupLens"
    hint = hint or f"replace it with the official file (from {official})"
    for fname, digest in spec.files.items():
        verify_file(folder / fname, digest, hint=hint)
    parse = _parse_100k if spec.layout == "100k" else _parse_latest
    ds = parse(spec, folder)
    return replace(
        ds,
        source=str(folder),
        notes=(f"read from {how} {folder}; {len(spec.files)} files SHA-256 verified", *ds.notes),
    )


# ---------------------------------------------------------------- parsing helpers


def _read_csv(path: Path, expected: str, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse ({e}); expected {expected}") from e


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; expected {list(columns)}, "
            f"found {list(map(str, frame.columns))}"
        )


def _first_bad(values: pd.Series, bad: np.ndarray) -> str:
    row = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} bad value(s), first at row {row}: {values.iloc[row]!r}"


def _int_ids(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Integer ids or times (int64 array); DataError naming file, column and the first bad
    value."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num != np.round(num))
    if bad.any():
        raise DataError(f"{path}: column {column!r} must hold integers; {_first_bad(values, bad)}")
    return num.astype(np.int64)


def _nullable_ints(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Integers or empty (-> NA) as Int64; DataError for anything else."""
    text = values.astype(str).str.strip()
    num = pd.to_numeric(text.mask(text == ""), errors="coerce")
    bad = ((text != "") & (num.isna() | (num != num.round()))).to_numpy(bool)
    if bad.any():
        raise DataError(
            f"{path}: column {column!r} must be an integer or empty; {_first_bad(values, bad)}"
        )
    return num.astype("Int64").reset_index(drop=True)


def _index(ids: np.ndarray, path: Path, name: str) -> pd.Index:
    index = pd.Index(ids, name=name)
    if not index.is_unique:
        raise DataError(f"{path}: {name} {index[index.duplicated()][0]} appears more than once")
    return index


def _check_interactions(
    frame: pd.DataFrame, spec: MovieLensSpec, path: Path, source: str
) -> pd.DataFrame:
    """validate_interactions (one row per (user, item) included) plus rating steps."""
    out = validate_interactions(frame, source=source, rating_scale=spec.rating_scale)
    steps = out["rating"].to_numpy() / spec.rating_step
    bad = steps != np.round(steps)
    if bad.any():
        raise DataError(
            f"{path}: column 'rating' must be a multiple of {spec.rating_step:g}; "
            f"{_first_bad(frame['rating'], bad)}"
        )
    return out


def _check_known(ids: pd.Series, known: pd.Index, path: Path, column: str, other: Path) -> None:
    unknown = ~np.isin(ids.to_numpy(), known.to_numpy())
    if unknown.any():
        raise DataError(
            f"{path}: column {column!r} has {int(unknown.sum())} id(s) not in "
            f"{other}, e.g. {ids.to_numpy()[unknown][0]}"
        )


def _read_tab_ratings(path: Path, spec: MovieLensSpec) -> pd.DataFrame:
    """u.data / u1.test: user, item, rating, timestamp, tab-separated, no header."""
    expected = "tab-separated user_id, item_id, rating, timestamp"
    frame = _read_csv(path, expected, sep="\t", header=None, quoting=csv.QUOTE_NONE)
    if frame.shape[1] != 4:
        raise DataError(f"{path}: found {frame.shape[1]} column(s); expected 4 ({expected})")
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    return _check_interactions(frame, spec, path, str(path))


# ---------------------------------------------------------------- ML-100K


def _parse_100k(spec: MovieLensSpec, folder: Path) -> Dataset:
    ratings = _read_tab_ratings(folder / "u.data", spec)
    items = _read_u_item(folder / "u.item", _read_genres(folder / "u.genre"))
    occupations = None
    if "u.occupation" in spec.files:
        occupations = _read_csv(
            folder / "u.occupation", "one occupation per line", header=None, **RAW
        )[0].str.strip()
    users = _read_u_user(folder / "u.user", occupations, folder / "u.occupation")
    _check_known(ratings["item_id"], items.index, folder / "u.data", "item_id", folder / "u.item")
    _check_known(ratings["user_id"], users.index, folder / "u.data", "user_id", folder / "u.user")
    folds = []
    for k in range(1, 6):
        if f"u{k}.test" in spec.files:
            test = _read_tab_ratings(folder / f"u{k}.test", spec)[["user_id", "item_id"]]
            folds.append(test)
    return Dataset(
        name=spec.name,
        interactions=ratings,
        items=items,
        users=users,
        rating_scale=spec.rating_scale,
        canonical_folds=tuple(folds) or None,
        notes=("items: year from u.item's release date (NA where it has none, e.g. item 267)",),
    )


def _read_genres(path: Path) -> list[str]:
    """u.genre: 'name|index' lines -> names in index order."""
    raw = _read_csv(path, "'name|index' lines", sep="|", header=None, **RAW)
    raw = raw[raw[0].str.strip() != ""]
    if raw.shape[1] != 2:
        raise DataError(f"{path}: found {raw.shape[1]} column(s); expected 2 (name|index)")
    index = _int_ids(raw[1], path, "index")
    if not np.array_equal(index, np.arange(len(raw))):
        raise DataError(f"{path}: genre indices {index.tolist()}; expected 0..{len(raw) - 1}")
    return raw[0].str.strip().tolist()


def _read_u_item(path: Path, genres: list[str]) -> pd.DataFrame:
    """u.item (latin-1, pipe-separated): id|title|release date|video date|url|genre flags."""
    n = 5 + len(genres)
    raw = _read_csv(
        path, f"{n} pipe-separated fields", sep="|", header=None, encoding="latin-1", **RAW
    )
    if raw.shape[1] != n:
        raise DataError(
            f"{path}: found {raw.shape[1]} column(s); expected {n} "
            f"(id|title|release date|video date|url|{len(genres)} genre flags)"
        )
    ids = _int_ids(raw[0], path, "movie id (field 1)")
    flags = raw.iloc[:, 5:]
    ok = flags.isin(["0", "1"]).to_numpy()
    if not ok.all():
        row, col = np.argwhere(~ok)[0]
        raise DataError(
            f"{path}: genre flag for {genres[col]!r} (field {col + 6}) at row {row} "
            f"is {flags.iat[row, col]!r}; expected 0 or 1"
        )
    names = np.array(genres, dtype=object)
    joined = ["|".join(names[row]) for row in flags.to_numpy() == "1"]
    date = raw[2].str.strip()
    parts = date.str.extract(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
    month = parts[1].str.title().map(MONTHS)
    bad = ((date != "") & month.isna()).to_numpy(bool)
    if bad.any():
        raise DataError(
            f"{path}: field 3 (release date) must look like 01-Jan-1995 or be empty; "
            f"{_first_bad(date, bad)}"
        )
    iso = parts[2] + "-" + month + "-" + parts[0].str.zfill(2)
    dates = pd.to_datetime(iso, format="%Y-%m-%d", errors="coerce")
    bad = ((date != "") & dates.isna()).to_numpy(bool)  # e.g. 32-Jan-1995, 29-Feb-1995
    if bad.any():
        raise DataError(f"{path}: field 3 (release date) is not a date; {_first_bad(date, bad)}")
    return pd.DataFrame(
        {
            "title": raw[1].str.strip().to_numpy(),
            "year": pd.to_numeric(parts[2]).astype("Int64").array,
            "genres": joined,
            "release_date": dates.astype(DATE).to_numpy(),
            "imdb_url": raw[4].str.strip().to_numpy(),
        },
        index=_index(ids, path, "item_id"),
    )


def _read_u_user(path: Path, occupations: pd.Series | None, occ_path: Path) -> pd.DataFrame:
    """u.user: id|age|gender|occupation|zip code."""
    raw = _read_csv(path, "id|age|gender|occupation|zip", sep="|", header=None, **RAW)
    if raw.shape[1] != 5:
        raise DataError(
            f"{path}: found {raw.shape[1]} column(s); expected 5 (id|age|gender|occupation|zip)"
        )
    raw.columns = ["user_id", "age", "gender", "occupation", "zip_code"]
    return _users_frame(raw, path, occupations, occ_path)


def _users_frame(
    raw: pd.DataFrame,
    path: Path,
    occupations: pd.Series | None = None,
    occ_path: Path | None = None,
) -> pd.DataFrame:
    ids = _int_ids(raw["user_id"], path, "user_id")
    age = _int_ids(raw["age"], path, "age")
    gender = raw["gender"].str.strip()
    bad = ~gender.isin(["M", "F"]).to_numpy()
    if bad.any():
        raise DataError(f"{path}: column 'gender' must be M or F; {_first_bad(gender, bad)}")
    occupation = raw["occupation"].str.strip()
    if occupations is not None:
        bad = ~occupation.isin(occupations).to_numpy()
        if bad.any():
            raise DataError(
                f"{path}: column 'occupation' must be listed in {occ_path}; "
                f"{_first_bad(occupation, bad)}"
            )
    return pd.DataFrame(
        {
            "age": age,
            "gender": gender.to_numpy(),
            "occupation": occupation.to_numpy(),
            "zip_code": raw["zip_code"].str.strip().to_numpy(),
        },
        index=_index(ids, path, "user_id"),
    )


# ---------------------------------------------------------------- ml-latest-small


def _parse_latest(spec: MovieLensSpec, folder: Path) -> Dataset:
    path = folder / "ratings.csv"
    frame = _read_csv(path, "CSV with header userId,movieId,rating,timestamp")
    _require_columns(frame, ["userId", "movieId", "rating", "timestamp"], path)
    frame = frame.rename(columns={"userId": "user_id", "movieId": "item_id"})
    ratings = _check_interactions(frame, spec, path, f"{path} (userId/movieId as user_id/item_id)")
    items = _read_movies(folder / "movies.csv")
    tag_events = None
    if "tags.csv" in spec.files:
        tag_events = _read_tags(folder / "tags.csv")
        items["tags"] = _joined_tags(tag_events).reindex(items.index, fill_value="")
    if "links.csv" in spec.files:
        items = items.join(_read_links(folder / "links.csv"))
    _check_known(ratings["item_id"], items.index, path, "movieId", folder / "movies.csv")
    users = pd.DataFrame(index=pd.Index([], dtype=np.int64, name="user_id"))
    return Dataset(
        name=spec.name,
        interactions=ratings,
        items=items,
        users=users,
        rating_scale=spec.rating_scale,
        notes=(
            "items: year from the title's trailing '(yyyy)' (NA where absent); "
            "tags lower-cased, unique, sorted; no user features",
            "tags a model sees: those of its training pairs and of unrated pairs "
            "(`Encoder.encode`), never a held-out pair's",
        ),
        tag_events=tag_events,
    )


def _read_movies(path: Path) -> pd.DataFrame:
    raw = _read_csv(path, "CSV with header movieId,title,genres", dtype=str, keep_default_na=False)
    _require_columns(raw, ["movieId", "title", "genres"], path)
    title = raw["title"].str.strip()
    genres = raw["genres"].str.strip()
    return pd.DataFrame(
        {
            "title": title.to_numpy(),
            "year": _nullable_ints(
                title.str.extract(r"\((\d{4})\)$")[0].fillna(""), path, "title"
            ).array,
            "genres": genres.mask(genres == "(no genres listed)", "").to_numpy(),
        },
        index=_index(_int_ids(raw["movieId"], path, "movieId"), path, "item_id"),
    )


def _read_tags(path: Path) -> pd.DataFrame:
    """tags.csv -> its tagging events: user_id, item_id, tag (stripped, lower-cased; empty
    tags dropped) and timestamp (a tag given more than once: its first time), sorted. The
    time lets a temporal protocol keep the tags given after its cut-off from the fit."""
    raw = _read_csv(
        path, "CSV with header userId,movieId,tag,timestamp", dtype=str, keep_default_na=False
    )
    _require_columns(raw, ["userId", "movieId", "tag", "timestamp"], path)
    tags = pd.DataFrame(
        {
            "user_id": _int_ids(raw["userId"], path, "userId"),
            "item_id": _int_ids(raw["movieId"], path, "movieId"),
            "tag": raw["tag"].str.strip().str.lower().to_numpy(),
            "timestamp": _int_ids(raw["timestamp"], path, "timestamp"),
        }
    )
    tags = tags[tags["tag"] != ""]
    key = ["item_id", "tag", "user_id"]
    first = tags.groupby(key, as_index=False, sort=True)["timestamp"].min()
    return first[["user_id", "item_id", "tag", "timestamp"]]


def _joined_tags(events: pd.DataFrame) -> pd.Series:
    """Per movie its '|'-joined unique tags (sorted), indexed by item_id."""
    tags = events[["item_id", "tag"]].drop_duplicates()
    return tags.groupby("item_id")["tag"].agg("|".join).rename("tags")


def _read_links(path: Path) -> pd.DataFrame:
    raw = _read_csv(path, "CSV with header movieId,imdbId,tmdbId", dtype=str, keep_default_na=False)
    _require_columns(raw, ["movieId", "imdbId", "tmdbId"], path)
    return pd.DataFrame(
        {
            "imdb_id": _nullable_ints(raw["imdbId"], path, "imdbId").array,
            "tmdb_id": _nullable_ints(raw["tmdbId"], path, "tmdbId").array,
        },
        index=_index(_int_ids(raw["movieId"], path, "movieId"), path, "item_id"),
    )


# ---------------------------------------------------------------- package-index mirror


def _recbole_names(spec: MovieLensSpec) -> list[str]:
    base = spec.mirror_member.rsplit("/", 1)[-1]
    return [f"{base}.inter", f"{base}.item", f"{base}.user"]


def _extract_recbole(wheel: Path, spec: MovieLensSpec, target: Path) -> None:
    """Copy the three RecBole files out of the wheel by their exact names (no paths from it)."""
    target.mkdir(parents=True, exist_ok=True)
    folder = spec.mirror_member.rsplit("/", 1)[0]
    try:
        with zipfile.ZipFile(wheel) as zf:
            for fname in _recbole_names(spec):
                try:
                    data = zf.read(f"{folder}/{fname}")
                except KeyError as e:
                    raise DataError(
                        f"{wheel}: lacks {folder}/{fname}; "
                        f"expected {spec.mirror_requirement}'s data"
                    ) from e
                (target / fname).write_bytes(data)
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: not a zip archive (wheel): {e}") from e


def _recbole_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header 'name:type'; types dropped."""
    raw = _read_csv(path, f"tab-separated RecBole columns {list(columns)}", sep="\t", **RAW)
    raw.columns = [str(c).split(":", 1)[0] for c in raw.columns]
    _require_columns(raw, columns, path)
    return raw


def _read_recbole(spec: MovieLensSpec, folder: Path, *, source: str) -> Dataset:
    """Verify and convert RecBole's ml-100k.inter/.item/.user to the u.data/u.item schema."""
    inter_p, item_p, user_p = (folder / f for f in _recbole_names(spec))
    for fname, digest in spec.mirror_files.items():
        verify_file(
            folder / fname,
            digest,
            label=f"{fname} from {source}",
            hint=f"delete {folder} to fetch it again",
        )
    raw = _recbole_table(inter_p, ["user_id", "item_id", "rating", "timestamp"])
    ratings = _check_interactions(raw, spec, inter_p, str(inter_p))
    digest = interactions_digest(ratings)
    if digest != spec.mirror_digest:
        raise DataError(
            f"{inter_p} (from {source}): ratings digest {digest}; expected "
            f"{spec.mirror_digest} (that of the official u.data)"
        )
    raw = _recbole_table(item_p, ["item_id", "movie_title", "release_year", "class"])
    year = _nullable_ints(
        raw["release_year"].where(raw["release_year"].str.fullmatch(r"\d{4}"), ""),
        item_p,
        "release_year",
    )
    title = raw["movie_title"].str.strip().replace("unkonwn", "unknown")  # RecBole's typo
    title = (title + " (" + year.astype(str).to_numpy() + ")").where(year.notna().to_numpy(), title)
    items = pd.DataFrame(
        {
            "title": title.to_numpy(),
            "year": year.array,
            "genres": raw["class"].str.split().str.join("|").to_numpy(),
            "release_date": np.full(len(raw), np.datetime64("NaT"), dtype=DATE),
            "imdb_url": pd.Series("", index=raw.index, dtype=str).to_numpy(),
        },
        index=_index(_int_ids(raw["item_id"], item_p, "item_id"), item_p, "item_id"),
    )
    raw = _recbole_table(user_p, ["user_id", "age", "gender", "occupation", "zip_code"])
    users = _users_frame(raw, user_p)
    _check_known(ratings["item_id"], items.index, inter_p, "item_id", item_p)
    _check_known(ratings["user_id"], users.index, inter_p, "user_id", user_p)
    return Dataset(
        name=spec.name,
        interactions=ratings,
        items=items,
        users=users,
        rating_scale=spec.rating_scale,
        source=source,
        canonical_folds=None,
        notes=(
            f"read from the package-index mirror ({spec.mirror_requirement}, RecBole's copy); "
            f"ratings digest verified equal to the official u.data",
            "no canonical u1..u5 folds in this source (canonical_folds is None)",
            "items: titles rebuilt as 'Title (year)' and year taken from the title, not the "
            "release date (differs for ~190 items); no release dates or IMDb URLs",
        ),
    )
