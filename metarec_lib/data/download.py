"""Fetch and verify: SHA-256 (cached per process), HTTP download, safe unzip, atomic install.

Generic helpers for the MovieLens loader. Two kinds of failure are kept apart on purpose:
`SourceAbsent` (nothing there: no folder, no network, HTTP 404) lets the caller try the next
source; `DataError` (something there but wrong: bad digest, not a zip, a malicious member) stops,
because silently using another copy would hide a corrupt or tampered file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from pathlib import Path, PureWindowsPath

from tqdm import tqdm

from metarec_lib.data.dataset import DataError

__all__ = [
    "DataUnavailable",
    "SourceAbsent",
    "download",
    "file_sha256",
    "install_dir",
    "pip_download",
    "safe_extract",
    "verify_file",
]

CHUNK = 1 << 20
MAX_EXTRACT_BYTES = 1 << 30  # MovieLens archives unpack to < 20 MB; more is a zip bomb

# (resolved path, inode, mtime_ns, ctime_ns, size) -> hex digest: each file is hashed once per
# process. ctime is in the key because `os.utime` can put an edited file's mtime back, not its
# ctime; a replaced file has a new inode.
_HASHES: dict[tuple[str, int, int, int, int], str] = {}


class DataUnavailable(DataError):
    """No source could provide the data; the message lists every source tried and why."""


class SourceAbsent(Exception):
    """A source is simply not there (no folder, no network, HTTP error): try the next one."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, cached by (path, inode, mtime, ctime, size) so reloads are
    cheap and an edit in place is still seen."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    digest = _HASHES.get(key)
    if digest is None:
        h = hashlib.sha256()
        with p.open("rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        digest = _HASHES[key] = h.hexdigest()
    return digest


def verify_file(
    path: str | Path, expected: str, *, label: str | None = None, hint: str = ""
) -> None:
    """Raise DataError naming the file, the expected and the actual SHA-256 when they differ.

    `label` replaces the path in the message (e.g. "ml-100k/u.data in <url>" for a file that
    only existed in a temporary folder); `hint` says what to do about it.
    """
    actual = file_sha256(path)
    if actual != expected.lower():
        hint = hint or "replace it with the official file"
        raise DataError(
            f"{label or path}: SHA-256 mismatch: expected {expected.lower()}, got {actual}. "
            f"The file is truncated, altered or a different version; {hint}."
        )


def download(url: str, dest: str | Path, *, timeout: float, desc: str | None = None) -> Path:
    """Download `url` to `dest` with a progress bar; SourceAbsent on any network failure.

    `timeout` bounds each connect and read. A body shorter than its Content-Length, or a TLS
    error while reading it, counts as a network failure (the transfer broke), not as corrupt
    data.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "metarec-lib"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with (
                dest.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=desc or url.rsplit("/", 1)[-1],
                    leave=False,  # TQDM_DISABLE=1 turns it off for batch runs
                ) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise SourceAbsent(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise SourceAbsent(f"unreachable: {e.reason}") from e
    except TimeoutError as e:
        raise SourceAbsent(f"timed out after {timeout:g} s") from e
    except (ConnectionError, http.client.HTTPException, ssl.SSLError) as e:
        # ssl.SSLError: a TLS record broken mid-body (during the handshake urllib wraps it
        # in URLError); either way the transfer broke, so the next source is tried.
        raise SourceAbsent(f"transfer failed: {type(e).__name__}: {e}") from e
    if total is not None and done != total:
        raise SourceAbsent(f"transfer broke: got {done} of {total} bytes")
    return dest


def _member_problem(info: zipfile.ZipInfo, root: Path) -> str | None:
    """Why a zip member may not be extracted under `root` (None when it is safe)."""
    name = info.filename
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if not (root / name).resolve().is_relative_to(root):
        return "path outside the target folder"
    return None


def safe_extract(
    archive: str | Path, target: str | Path, *, max_bytes: int = MAX_EXTRACT_BYTES
) -> list[Path]:
    """Extract a zip archive into `target`, refusing it whole if any member is unsafe.

    Every member is checked before anything is written: absolute paths, symlinks and names
    whose resolved path falls outside `target` (e.g. "../evil.txt") raise DataError naming
    the archive and the member. Members are written to exactly the checked path. Returns the
    files written. A corrupt member can still fail midway, so extract into a temporary folder.
    """
    archive, root = Path(archive), Path(target).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive}: not a zip archive ({e}); expected a .zip file") from e
    with zf:
        infos = zf.infolist()
        for info in infos:
            problem = _member_problem(info, root)
            if problem:
                raise DataError(
                    f"{archive}: refused to extract member {info.filename!r} ({problem}); "
                    "the archive is not the official one"
                )
        size = sum(info.file_size for info in infos)
        if size > max_bytes:
            raise DataError(
                f"{archive}: unpacks to {size} bytes, more than the {max_bytes} allowed"
            )
        written = []
        try:
            for info in infos:
                path = (root / info.filename).resolve()
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, path.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                written.append(path)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DataError(f"{archive}: corrupt member {info.filename!r}: {e}") from e
        except OSError as e:  # e.g. a member "a" and a member "a/b": not a real archive
            raise DataError(f"{archive}: cannot extract member {info.filename!r}: {e}") from e
    return written


def install_dir(staged: str | Path, dest: str | Path) -> Path:
    """Move a fully written, verified folder to `dest` by renaming (no half-written state).

    An existing `dest` (e.g. an incomplete copy) is renamed aside first and removed after.
    If another process installed `dest` meanwhile, its copy is kept and `staged` discarded.
    """
    staged, dest = Path(staged), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    try:
        os.replace(staged, dest)
    except OSError:
        if not dest.exists():
            if old is not None:
                os.replace(old, dest)
            raise
        shutil.rmtree(staged, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def pip_download(requirement: str, dest: str | Path, *, timeout: float, limit: float) -> Path:
    """`pip download` one pure-Python wheel into `dest`; return its path.

    Runs the current interpreter's pip, so the user's pip configuration (index, proxy,
    certificates) applies; `timeout` is pip's per-connection timeout, `limit` bounds the
    whole run. Any failure is SourceAbsent with pip's last error line.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--no-binary", ":none:", "--only-binary", ":all:",
        "--disable-pip-version-check", "--no-input",
        "--timeout", f"{timeout:g}", "--retries", "1",
        requirement, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as e:
        raise SourceAbsent(f"pip download did not finish within {limit:.0f} s") from e
    except OSError as e:
        raise SourceAbsent(f"cannot run pip: {e}") from e
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["(no output)"]
        raise SourceAbsent(f"pip download failed (exit {proc.returncode}): {lines[-1].strip()}")
    name = requirement.split("==")[0].strip().replace("-", "_").lower()
    wheels = sorted(p for p in Path(dest).glob("*.whl") if p.name.lower().startswith(name))
    if not wheels:
        raise SourceAbsent(f"pip download of {requirement} produced no wheel")
    return wheels[0]
