"""MovieLens loader: sources, verification, parsing, downloads, the package-index mirror.

Tiny hand-made data sets (fake specs) exercise the machinery; the real files are read from
$METAREC_DATA_DIR when it is set (never copied into the project; copies go to tmp_path only).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec_lib.data import download as dl
from metarec_lib.data import movielens as ml
from metarec_lib.data.dataset import DataError, interactions_digest
from metarec_lib.data.movielens import (
    ENV_VAR,
    SPECS,
    DataUnavailable,
    MovieLensSpec,
    load_movielens,
    load_recbole_wheel,
    remove_stale,
)
from tests.test_download import closed_port_url, make_zip, serve_folder

LATEST_DIGEST = "60e56751e432434c3b5ab3744888113b7f45c0248ccd3a2e11aa7ed8fc3270ac"
OFFLINE = ("data_dir", "cache")

# ---------------------------------------------------------------- tiny fake data sets

FAKE_100K = {
    "u.data": "1\t10\t5\t874965758\n1\t20\t3\t876893171\n2\t10\t4\t888550871\n"
    "2\t30\t1\t881250949\n3\t20\t2\t884182806\n",
    "u.item": "10|Toy Story (1995)|01-Jan-1995||http://x/10|0|0|1\n"
    "20|Misérables, Les (1995)|22-Mar-1996||http://x/20|0|1|1\n"
    "30|unknown||||1|0|0\n",
    "u.genre": "unknown|0\nAction|1\nDrama|2\n\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|T8H1N\n",
    "u.occupation": "technician\nother\nwriter\n",
    "u1.test": "1\t10\t5\t874965758\n2\t30\t1\t881250949\n",
    "u2.test": "1\t20\t3\t876893171\n2\t10\t4\t888550871\n3\t20\t2\t884182806\n",
}
FAKE_LATEST = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
    "2,1,0.5,964982224\n",
    "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
    '2,"American President, The (1995)",Comedy|Drama|Romance\n3,Babylon 5,(no genres listed)\n',
    "tags.csv": "userId,movieId,tag,timestamp\n2,1,Pixar,5\n3,1,fun,2\n4,1, pixar ,3\n"
    "2,1,pixar,1\n",
    "links.csv": "movieId,imdbId,tmdbId\n1,0114709,862\n2,0112346,\n3,0105946,12\n",
}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        # u.item is latin-1 in the real data; everything else here is ASCII or UTF-8
        (folder / name).write_bytes(text.encode("latin-1" if name == "u.item" else "utf-8"))
    return folder


def spec_for(folder: Path, name: str, layout: str = "100k", **kw) -> MovieLensSpec:
    """A spec whose digests are those of the files in `folder`."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    if layout == "latest":
        kw = {"rating_scale": (0.5, 5.0), "rating_step": 0.5, **kw}
    return MovieLensSpec(name=name, archive_folder=name, files=files, layout=layout, **kw)


@pytest.fixture
def fake100k(tmp_path) -> tuple[Path, MovieLensSpec]:
    """(data dir holding fake-100k/, its spec)."""
    folder = write_files(tmp_path / "data" / "fake-100k", FAKE_100K)
    return tmp_path / "data", spec_for(folder, "fake-100k")


@pytest.fixture
def fakelatest(tmp_path) -> tuple[Path, MovieLensSpec]:
    folder = write_files(tmp_path / "data" / "fake-latest", FAKE_LATEST)
    return tmp_path / "data", spec_for(folder, "fake-latest", "latest")


def test_fake_100k_parses_to_the_hand_worked_frames(fake100k, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    data_dir, spec = fake100k
    ds = load_movielens("fake-100k", data_dir=data_dir, cache_dir=tmp_path / "c", spec=spec)
    expected = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3],
            "item_id": [10, 20, 10, 30, 20],
            "rating": [5.0, 3.0, 4.0, 1.0, 2.0],
            "timestamp": [874965758, 876893171, 888550871, 881250949, 884182806],
        }
    )
    pd.testing.assert_frame_equal(ds.interactions, expected)
    assert ds.rating_scale == (1.0, 5.0) and ds.source == str(data_dir / "fake-100k")
    items = ds.items
    assert items.index.name == "item_id" and items.index.tolist() == [10, 20, 30]
    assert items["title"].tolist() == ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    assert items["year"].tolist()[:2] == [1995, 1996] and items["year"].isna().tolist()[2]
    assert str(items["year"].dtype) == "Int64"
    assert items["genres"].tolist() == ["Drama", "Action|Drama", "unknown"]
    assert items.loc[20, "release_date"] == pd.Timestamp("1996-03-22")
    assert pd.isna(items.loc[30, "release_date"])
    assert ds.users.index.name == "user_id"
    assert ds.users.loc[3].tolist() == [23, "M", "writer", "T8H1N"]
    assert ds.users["age"].dtype == np.int64
    folds = ds.canonical_folds
    assert folds is not None and len(folds) == 2
    assert folds[0].to_dict("list") == {"user_id": [1, 2], "item_id": [10, 30]}
    assert any("data_dir" in n for n in ds.notes)


def test_fake_latest_parses_to_the_hand_worked_frames(fakelatest, tmp_path):
    data_dir, spec = fakelatest
    ds = load_movielens(spec.name, data_dir=data_dir, cache_dir=tmp_path / "c", spec=spec)
    assert ds.interactions["rating"].tolist() == [4.0, 4.5, 0.5]
    assert ds.interactions["item_id"].tolist() == [1, 3, 1]
    items = ds.items
    assert items["title"].tolist() == [
        "Toy Story (1995)",
        "American President, The (1995)",
        "Babylon 5",
    ]
    assert items["year"].tolist()[:2] == [1995, 1995] and pd.isna(items["year"].iloc[2])
    assert items["genres"].tolist() == ["Adventure|Animation", "Comedy|Drama|Romance", ""]
    assert items["tags"].tolist() == ["fun|pixar", "", ""]
    # user 2 gave "pixar" twice (at 5 as "Pixar", at 1): one event, at its first time
    assert ds.tag_events.to_dict("list") == {"user_id": [3, 2, 4], "item_id": [1, 1, 1],
                                             "tag": ["fun", "pixar", "pixar"],
                                             "timestamp": [2, 1, 3]}  # fmt: skip
    assert items["imdb_id"].tolist() == [114709, 112346, 105946]
    assert items["tmdb_id"].isna().tolist() == [False, True, False]
    assert ds.users.empty and ds.users.index.name == "user_id" and list(ds.users.columns) == []
    assert ds.canonical_folds is None and ds.rating_scale == (0.5, 5.0)


# ---------------------------------------------------------------- bad inputs


BAD_100K = [
    ("u.data", "1\t10\t5\n", r"u\.data: found 3 column\(s\); expected 4"),
    ("u.data", "1\t10\t5\t874965758\n\t20\t3\t876893171\n", r"u\.data: column 'user_id'.*nan"),
    ("u.data", "1\t10.5\t5\t874965758\n", r"u\.data: column 'item_id'.*non-integer.*10\.5"),
    (
        "u.data",
        "1\t10\t6\t874965758\n",
        r"u\.data: column 'rating'.*outside the scale \[1.0, 5.0\]",
    ),
    ("u.data", "1\t10\t4.5\t874965758\n", r"u\.data: column 'rating' must be a multiple of 1"),
    ("u.data", "1\t10\t5\tyesterday\n", r"u\.data: column 'timestamp'.*unparseable.*'yesterday'"),
    ("u.data", "1\t10\t5\t1\n1\t10\t4\t2\n", r"u\.data: \(user_id, item_id\) = \(1, 10\) appears"),
    (
        "u.data",
        "1\t99\t5\t1\n",
        r"u\.data: column 'item_id' has 1 id\(s\) not in .*u\.item, e\.g\. 99",
    ),
    ("u.item", "10|T (1995)|01-Jan-1995||u|0|0|2\n", r"u\.item: genre flag for 'Drama'.* is '2'"),
    ("u.item", "10|T (1995)|1995-01-01||u|0|0|1\n", r"u\.item: field 3 \(release date\).*1995-01"),
    ("u.item", "10|T (1995)|29-Feb-1995||u|0|0|1\n", r"u\.item: field 3 .*not a date.*29-Feb"),
    ("u.item", "10|T|||u|0|1\n", r"u\.item: found 7 column\(s\); expected 8"),
    ("u.item", "x|T|||u|0|0|1\n", r"u\.item: column 'movie id \(field 1\)'.*'x'"),
    ("u.item", "10|A|||u|0|0|1\n10|B|||u|0|0|1\n", r"u\.item: item_id 10 appears more than once"),
    ("u.user", "1|24|X|other|1\n", r"u\.user: column 'gender' must be M or F.*'X'"),
    ("u.user", "1|24|M|pirate|1\n", r"u\.user: column 'occupation' must be listed in .*pirate"),
    ("u.user", "1|old|M|other|1\n", r"u\.user: column 'age'.*'old'"),
]
BAD_LATEST = [
    ("ratings.csv", "userId,movieId,rating\n1,1,4\n", r"ratings\.csv: missing column\(s\) \['time"),
    ("ratings.csv", "userId,movieId,rating,timestamp\nx,1,4,1\n", r"ratings\.csv.*'user_id'.*'x'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.25,1\n", r"multiple of 0\.5.*4\.25"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,0,1\n", r"'rating'.*\[0\.5, 5\.0\]"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,noon\n", r"'timestamp'.*'noon'"),
    ("movies.csv", "movieId,title\n1,Toy Story (1995)\n", r"movies\.csv: missing column.*genres"),
    ("links.csv", "movieId,imdbId,tmdbId\n1,tt01,\n", r"links\.csv: column 'imdbId'.*'tt01'"),
    ("tags.csv", "userId,movieId,tag,timestamp\n1,one,x,1\n", r"tags\.csv: column 'movieId'"),
    ("tags.csv", "userId,movieId,tag,timestamp\n1,1,x,soon\n", r"tags\.csv: .*'timestamp'.*'soon'"),
]


@pytest.mark.parametrize(("fname", "text", "pattern"), BAD_100K + BAD_LATEST)
def test_bad_file_content_is_a_clear_data_error(tmp_path, fname, text, pattern):
    layout, files = ("latest", FAKE_LATEST) if fname.endswith(".csv") else ("100k", FAKE_100K)
    folder = write_files(tmp_path / "data" / "bad", {**files, fname: text})
    spec = spec_for(folder, "bad", layout)  # digests match: the parser must catch the problem
    with pytest.raises(DataError, match=pattern) as e:
        load_movielens("bad", data_dir=tmp_path / "data", cache_dir=tmp_path / "c", spec=spec)
    assert str(folder / fname) in str(e.value)  # the message names the file with its path


def test_digest_mismatch_names_the_file_and_both_digests_and_is_never_skipped(fake100k, tmp_path):
    data_dir, spec = fake100k
    good_cache = tmp_path / "cache"
    shutil.copytree(data_dir / "fake-100k", good_cache / "fake-100k")
    u_data = data_dir / "fake-100k" / "u.data"
    u_data.write_bytes(u_data.read_bytes().replace(b"874965758", b"874965759"))  # one byte
    actual = hashlib.sha256(u_data.read_bytes()).hexdigest()
    with pytest.raises(DataError) as e:  # a good copy in the cache must not hide the bad one
        load_movielens(spec.name, data_dir=data_dir, cache_dir=good_cache, spec=spec)
    msg = str(e.value)
    assert str(u_data) in msg and spec.files["u.data"] in msg and actual in msg
    assert not isinstance(e.value, DataUnavailable)


def test_absent_sources_move_on_and_are_noted(fake100k, tmp_path, monkeypatch):
    data_dir, spec = fake100k
    cache = tmp_path / "cache"
    shutil.copytree(data_dir / "fake-100k", cache / "fake-100k")
    (data_dir / "fake-100k" / "u1.test").unlink()  # an incomplete folder is absent, not corrupt
    ds = load_movielens(spec.name, data_dir=data_dir, cache_dir=cache, spec=spec)
    assert ds.source == str(cache / "fake-100k")
    assert any(n.startswith("skipped data_dir:") and "lacks u1.test" in n for n in ds.notes)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    ds = load_movielens(spec.name, cache_dir=cache, spec=spec)
    assert any("nowhere/fake-100k does not exist" in n for n in ds.notes)


def test_env_var_and_xdg_cache_home_are_honoured(fake100k, tmp_path, monkeypatch):
    data_dir, spec = fake100k
    monkeypatch.setenv(ENV_VAR, str(data_dir))
    ds = load_movielens(spec.name, spec=spec, sources=["data_dir"])
    assert ds.source == str(data_dir / "fake-100k") and ENV_VAR in ds.notes[0]
    if sys.platform != "linux":
        pytest.skip("XDG_CACHE_HOME applies on Linux only")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ml.default_cache_dir() == tmp_path / "xdg" / "metarec"
    shutil.copytree(data_dir / "fake-100k", tmp_path / "xdg" / "metarec" / "fake-100k")
    ds = load_movielens(spec.name, spec=spec, sources=["cache"])
    assert ds.source == str(tmp_path / "xdg" / "metarec" / "fake-100k")


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown MovieLens data set 'ml-1m'"):
        load_movielens("ml-1m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['ftp'\]"):
        load_movielens("ml-100k", sources=["cache", "ftp"])
    with pytest.raises(ValueError, match="spec is for 'ml-100k'"):
        load_movielens("ml-latest-small", spec=SPECS["ml-100k"])


# ---------------------------------------------------------------- downloads (local HTTP server)


def zip_folder(folder: Path, archive: Path, prefix: str, extra: dict[str, bytes] | None = None):
    members = {f"{prefix}/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}
    members[f"{prefix}/README"] = b"licence text"
    return make_zip(archive, {**members, **(extra or {})})


@pytest.fixture
def www(tmp_path, fake100k):
    """A served folder with good.zip (the fake data set), and the fake spec."""
    data_dir, spec = fake100k
    root = tmp_path / "www"
    root.mkdir()
    zip_folder(data_dir / "fake-100k", root / "good.zip", "fake-100k")
    with serve_folder(root) as (base, requests):
        yield root, base, requests, spec


def test_download_lands_in_cache_and_next_load_is_offline(www, tmp_path):
    root, base, requests, spec = www
    spec = replace(spec, urls=(f"{base}/good.zip",))
    cache = tmp_path / "cache"
    ds = load_movielens(spec.name, data_dir=tmp_path / "none", cache_dir=cache, spec=spec)
    assert ds.source == f"{base}/good.zip" and requests == ["/good.zip"]
    assert sorted(p.name for p in cache.iterdir()) == ["fake-100k"]  # no staging left behind
    assert (cache / "fake-100k" / "README").read_bytes() == b"licence text"
    (root / "good.zip").unlink()  # the server no longer has it: the next load must not ask
    again = load_movielens(spec.name, data_dir=tmp_path / "none", cache_dir=cache, spec=spec)
    assert again.source == str(cache / "fake-100k") and requests == ["/good.zip"]
    assert again.digest == ds.digest
    pd.testing.assert_frame_equal(again.items, ds.items)


def test_a_download_removes_what_killed_loads_left_in_the_cache(www, tmp_path):
    root, base, requests, spec = www
    spec = replace(spec, urls=(f"{base}/good.zip",))
    cache = tmp_path / "cache"
    day_ago = time.time() - 25 * 3600
    left = {}
    for name in (".fake-100k-x1y2", ".fake-100k.old-1234", ".fake-100k-live", ".other-x1y2"):
        (cache / name).mkdir(parents=True)
        (cache / name / "archive.zip").write_bytes(b"partial")
        left[name] = cache / name
    for name in (".fake-100k-x1y2", ".fake-100k.old-1234", ".other-x1y2"):
        os.utime(left[name], (day_ago, day_ago))  # killed a day ago; ".fake-100k-live" runs
    load_movielens(spec.name, data_dir=tmp_path / "none", cache_dir=cache, spec=spec)
    kept = sorted(p.name for p in cache.iterdir())
    assert kept == [".fake-100k-live", ".other-x1y2", "fake-100k"]  # another data set's: kept
    with pytest.raises(ValueError, match="only hidden folders"):
        remove_stale(cache, "fake-100k", older_than=0)


def test_backup_is_used_when_the_official_url_is_missing(www, tmp_path):
    _, base, requests, spec = www
    spec = replace(spec, urls=(f"{base}/gone.zip", f"{base}/good.zip"))
    ds = load_movielens(
        spec.name, cache_dir=tmp_path / "c", spec=spec, sources=["official", "backup"]
    )
    assert ds.source == f"{base}/good.zip" and requests == ["/gone.zip", "/good.zip"]
    assert any(n.startswith("skipped official:") and "HTTP 404" in n for n in ds.notes)


def _bad_archives(root: Path, folder: Path, tmp_path: Path) -> None:
    altered = {"fake-100k/u.data": (folder / "u.data").read_bytes()[:-3] + b"99\n"}
    zip_folder(folder, root / "altered.zip", "fake-100k", altered)
    (root / "junk.zip").write_bytes(b"<html>not a zip</html>")
    zip_folder(folder, root / "traversal.zip", "fake-100k", {"../evil.txt": b"x"})
    zip_folder(folder, root / "absolute.zip", "fake-100k", {str(tmp_path / "evil.txt"): b"x"})
    members = {
        f"fake-100k/{p.name}": p.read_bytes() for p in folder.iterdir() if p.name != "u.user"
    }
    make_zip(root / "incomplete.zip", members)


@pytest.mark.parametrize(
    ("archive", "pattern"),
    [
        ("altered.zip", r"fake-100k/u\.data in http://.*/altered\.zip: SHA-256 mismatch: "
         r"expected [0-9a-f]{64}, got [0-9a-f]{64}"),
        ("junk.zip", r"http://.*/junk\.zip: .*not a zip archive"),
        ("traversal.zip", r"traversal\.zip: .*refused to extract member '\.\./evil\.txt'"),
        ("absolute.zip", r"absolute\.zip: .*refused to extract member '/.*evil\.txt' \(absolute"),
        ("incomplete.zip", r"incomplete\.zip: the archive lacks \['fake-100k/u\.user'\]"),
    ],
)  # fmt: skip
def test_bad_archives_are_refused_and_leave_no_files(www, tmp_path, archive, pattern):
    root, base, requests, spec = www
    _bad_archives(root, tmp_path / "data" / "fake-100k", tmp_path)
    urls = (f"{base}/{archive}", f"{base}/good.zip")  # a good backup must NOT be used instead
    spec = replace(spec, urls=urls)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=pattern):
        load_movielens(spec.name, data_dir=tmp_path / "none", cache_dir=cache, spec=spec)
    assert requests == [f"/{archive}"]
    assert list(cache.iterdir()) == []  # nothing half-written in the cache
    assert not list(tmp_path.rglob("evil.txt"))


def test_unreachable_everywhere_gives_one_message_listing_every_source(fake100k, tmp_path):
    _, spec = fake100k
    spec = replace(spec, urls=(closed_port_url(), closed_port_url()))
    t0 = time.monotonic()
    with pytest.raises(DataUnavailable) as e:
        load_movielens(spec.name, data_dir=tmp_path / "none", cache_dir=tmp_path / "c", spec=spec)
    assert time.monotonic() - t0 < 30  # well within the promised 60 s
    msg = str(e.value)
    lines = re.findall(r"^  \d\. (\w+): (.*)$", msg, flags=re.M)
    assert [name for name, _ in lines] == list(ml.SOURCES)
    why = dict(lines)
    assert "none/fake-100k does not exist" in why["data_dir"]
    assert "unreachable" in why["official"] and "unreachable" in why["backup"]
    assert "has no fake-100k" in why["mirror"]
    assert f"set {ENV_VAR} to that folder" in msg and "u.data" in msg
    assert list((tmp_path / "c").iterdir()) == []


# ---------------------------------------------------------------- the package-index mirror

TINY_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t267\t1\t878887116\n"
)
TINY_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tToy Story\t1995\tAnimation Children's Comedy\n"
    "302\tMisérables, Les\t1995\tDrama Musical\n"
    "267\tunkonwn\tunkonwn\tunknown\n"
)
TINY_USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n"
)
TINY_DIGEST = interactions_digest(
    pd.DataFrame(
        {
            "user_id": [196, 186, 196],
            "item_id": [242, 302, 267],
            "rating": [3.0, 3.0, 1.0],
            "timestamp": [881250949, 891717742, 878887116],
        }
    )
)


def tiny_wheel(path: Path, inter: str = TINY_INTER) -> Path:
    base = "recbole/dataset_example/ml-100k/ml-100k"
    members = {f"{base}.inter": inter, f"{base}.item": TINY_ITEM, f"{base}.user": TINY_USER}
    members["recbole/__init__.py"] = ""
    return make_zip(path, {k: v.encode() for k, v in members.items()})


def tiny_spec(**kw) -> MovieLensSpec:
    return MovieLensSpec(
        name="tiny", archive_folder="tiny", files={}, mirror_digest=TINY_DIGEST, **kw
    )


def test_recbole_converter_on_a_tiny_wheel(tmp_path):
    ds = load_recbole_wheel(tiny_wheel(tmp_path / "r.whl"), spec=tiny_spec())
    assert ds.digest == TINY_DIGEST and ds.canonical_folds is None
    assert any("no canonical u1..u5 folds" in n for n in ds.notes)
    assert ds.interactions["rating"].tolist() == [3.0, 3.0, 1.0]
    items = ds.items
    assert items["title"].tolist() == ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    assert items["year"].tolist()[:2] == [1995, 1995] and pd.isna(items.loc[267, "year"])
    assert items["genres"].tolist() == ["Animation|Children's|Comedy", "Drama|Musical", "unknown"]
    assert ds.users.loc[186].tolist() == [39, "F", "executive", "00000"]  # zip stays text


def test_recbole_converter_checks_the_ratings_digest_and_file_digests(tmp_path):
    altered = TINY_INTER.replace("\t1\t878887116", "\t2\t878887116")
    with pytest.raises(DataError, match=r"ml-100k\.inter.*ratings digest [0-9a-f]{64}; expected"):
        load_recbole_wheel(tiny_wheel(tmp_path / "a.whl", altered), spec=tiny_spec())
    spec = tiny_spec(mirror_files={"ml-100k.user": "0" * 64})
    with pytest.raises(DataError, match=r"ml-100k\.user from .*b\.whl: SHA-256 mismatch"):
        load_recbole_wheel(tiny_wheel(tmp_path / "b.whl"), spec=spec)
    make_zip(tmp_path / "c.whl", {"recbole/__init__.py": b""})
    with pytest.raises(DataError, match=r"c\.whl: lacks recbole/dataset_example/ml-100k/ml-100k"):
        load_recbole_wheel(tmp_path / "c.whl", spec=tiny_spec())


def test_mirror_source_caches_the_converted_files(tmp_path, monkeypatch):
    calls = []

    def fake_pip(requirement, dest, *, timeout, limit):
        calls.append((requirement, timeout, limit))
        Path(dest).mkdir(parents=True)
        return tiny_wheel(Path(dest) / "recbole-1.2.1-py3-none-any.whl")

    monkeypatch.setattr(dl, "pip_download", fake_pip)
    cache = tmp_path / "cache"
    ds = load_movielens("tiny", spec=tiny_spec(), cache_dir=cache, sources=["mirror"], timeout=3)
    assert ds.source == "pip download recbole==1.2.1" and ds.digest == TINY_DIGEST
    assert calls[0][0] == "recbole==1.2.1" and calls[0][1] == 3 and calls[0][2] <= 60
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-recbole-1.2.1"]

    def no_network(*args, **kwargs):
        raise AssertionError("the cached mirror copy should be used")

    monkeypatch.setattr(dl, "pip_download", no_network)
    again = load_movielens("tiny", spec=tiny_spec(), cache_dir=cache, sources=["mirror"])
    assert "cached in" in again.source and again.digest == TINY_DIGEST
    pd.testing.assert_frame_equal(again.items, ds.items)


def test_mirror_is_for_ml_100k_only(tmp_path):
    with pytest.raises(DataUnavailable, match=r"mirror: the package-index mirror .* has no"):
        load_movielens("ml-latest-small", cache_dir=tmp_path, sources=["mirror"])
    with pytest.raises(DataUnavailable, match=r"backup: no backup copy is hosted"):
        load_movielens("ml-latest-small", cache_dir=tmp_path, sources=["backup"])


def _pip_reaches_index() -> str | None:
    """None when pip can reach its index (a quick check), else the reason."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "recbole", "--timeout", "5"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"pip cannot reach its index: {e}"
    if proc.returncode != 0 or "1.2.1" not in proc.stdout:
        return f"pip cannot reach its index or it lacks recbole 1.2.1: {proc.stderr[-300:]}"
    return None


@pytest.mark.network
def test_mirror_from_the_real_package_index(tmp_path):
    reason = _pip_reaches_index()
    if reason:
        pytest.skip(reason)
    ds = load_movielens("ml-100k", cache_dir=tmp_path, sources=["mirror"], timeout=10)
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_000, 943, 1682)
    assert ds.digest == ml.ML100K_DIGEST and len(ds.items) == 1682 and len(ds.users) == 943
    assert ds.canonical_folds is None
    if os.environ.get(ENV_VAR):  # side information agrees with the official files too
        official = load_movielens("ml-100k", cache_dir=tmp_path, sources=["data_dir"])
        pd.testing.assert_frame_equal(ds.users, official.users)
        pd.testing.assert_series_equal(ds.items["genres"], official.items["genres"])
        differ = ds.items.index[ds.items["title"] != official.items["title"]]
        assert differ.tolist() == [1412]  # '... (1995) (V)' in u.item


# ---------------------------------------------------------------- the real files

needs_data = pytest.mark.skipif(
    not os.environ.get(ENV_VAR), reason=f"{ENV_VAR} is not set (points at the MovieLens files)"
)


def _real(name: str):
    return load_movielens(name, sources=["data_dir"])


@needs_data
def test_ml100k_from_data_dir():
    ds = _real("ml-100k")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_000, 943, 1682)
    assert len(ds.items) == 1682 and len(ds.users) == 943 and ds.rating_scale == (1.0, 5.0)
    assert ds.digest == ml.ML100K_DIGEST == SPECS["ml-100k"].mirror_digest
    assert set(ds.interactions["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy = ds.items.loc[1]
    assert (toy["title"], toy["year"], toy["genres"]) == (
        "Toy Story (1995)",
        1995,
        "Animation|Children's|Comedy",
    )
    assert ds.items.loc[267, "title"] == "unknown" and pd.isna(ds.items.loc[267, "year"])
    assert ds.items.loc[543, "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert ds.users.loc[1].tolist() == [24, "M", "technician", "85711"]
    folds = ds.canonical_folds
    assert folds is not None and [len(f) for f in folds] == [20_000] * 5
    keys = [f["user_id"].to_numpy() * 10_000 + f["item_id"].to_numpy() for f in folds]
    everything = ds.interactions["user_id"].to_numpy() * 10_000 + ds.interactions["item_id"]
    assert np.array_equal(np.sort(np.concatenate(keys)), np.sort(everything.to_numpy()))


@needs_data
def test_ml_latest_small_from_data_dir():
    ds = _real("ml-latest-small")
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_836, 610, 9724)
    assert len(ds.items) == 9742 and ds.users.empty and ds.rating_scale == (0.5, 5.0)
    assert ds.digest == LATEST_DIGEST
    assert ds.items.loc[1, "tags"] == "fun|pixar" and ds.items.loc[1, "year"] == 1995
    assert (ds.items["genres"] == "").sum() == 34  # "(no genres listed)"
    assert pd.isna(ds.items.loc[40697, "year"])  # "Babylon 5" has no year
    assert ds.interactions["rating"].min() == 0.5


@needs_data
def test_second_load_is_fast_and_equal():
    first = _real("ml-100k")
    t0 = time.perf_counter()
    again = _real("ml-100k")
    assert time.perf_counter() - t0 < 5
    assert again.digest == first.digest


def _copy_real(dest: Path) -> Path:
    src = Path(os.environ[ENV_VAR]) / "ml-100k"
    dest.mkdir(parents=True)
    for fname in SPECS["ml-100k"].files:
        shutil.copy2(src / fname, dest / fname)
    return dest


@needs_data
def test_real_copy_in_a_cache_dir_loads(tmp_path):
    _copy_real(tmp_path / "cache" / "ml-100k")
    ds = load_movielens("ml-100k", cache_dir=tmp_path / "cache", sources=["cache"])
    assert ds.source == str(tmp_path / "cache" / "ml-100k") and ds.digest == ml.ML100K_DIGEST


@needs_data
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_real_u_data_is_refused(tmp_path, damage):
    folder = _copy_real(tmp_path / "data" / "ml-100k")
    u_data = folder / "u.data"
    raw = bytearray(u_data.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[1000] = ord("9") if raw[1000] != ord("9") else ord("8")
    u_data.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_movielens("ml-100k", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert f"{u_data}: SHA-256 mismatch" in msg
    assert SPECS["ml-100k"].files["u.data"] in msg
    assert hashlib.sha256(bytes(raw)).hexdigest() in msg
