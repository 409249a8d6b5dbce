"""Fetch-and-verify helpers: hashing cache, HTTP download, safe unzip, atomic install, pip."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import stat
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec_lib.data import download as dl
from metarec_lib.data.dataset import DataError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(self.path)
        if self.path == "/short":  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve `root` over HTTP on 127.0.0.1; yields (base URL, list of requested paths)."""
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url(path: str = "x.zip") -> str:
    """A URL on a local port nobody listens on: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def make_zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


# ---------------------------------------------------------------- hashing


def test_file_sha256_matches_hashlib_and_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello")
    assert dl.file_sha256(f) == hashlib.sha256(b"hello").hexdigest()
    st_ = f.stat()
    with monkeypatch.context() as m:  # an unchanged file is not read again
        m.setattr(Path, "open", lambda *a, **k: pytest.fail("read a file whose digest is known"))
        assert dl.file_sha256(f) == hashlib.sha256(b"hello").hexdigest()
    # Edited in place with the same size and its mtime put back: the edit is still seen.
    f.write_bytes(b"HELLO")
    os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    assert f.stat().st_mtime_ns == st_.st_mtime_ns and f.stat().st_size == st_.st_size
    assert dl.file_sha256(f) == hashlib.sha256(b"HELLO").hexdigest()


def test_verify_file_names_file_expected_and_actual(tmp_path):
    f = tmp_path / "u.data"
    f.write_bytes(b"1\t2\t3\t4\n")
    good = hashlib.sha256(b"1\t2\t3\t4\n").hexdigest()
    dl.verify_file(f, good)
    dl.verify_file(f, good.upper())  # digests compare case-insensitively
    wrong = "0" * 64
    with pytest.raises(DataError) as e:
        dl.verify_file(f, wrong)
    msg = str(e.value)
    assert str(f) in msg and wrong in msg and good in msg
    with pytest.raises(DataError, match="^ml/u.data in http://x: SHA-256 mismatch"):
        dl.verify_file(f, wrong, label="ml/u.data in http://x")


# ---------------------------------------------------------------- HTTP download


def test_download_writes_the_served_bytes(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    payload = os.urandom(3 * dl.CHUNK + 17)  # several chunks
    (root / "f.bin").write_bytes(payload)
    with serve_folder(root) as (base, requests):
        out = dl.download(f"{base}/f.bin", tmp_path / "out.bin", timeout=5)
    assert out.read_bytes() == payload
    assert requests == ["/f.bin"]


def test_download_failures_are_source_absent(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as (base, _):
        with pytest.raises(dl.SourceAbsent, match="HTTP 404"):
            dl.download(f"{base}/missing.zip", tmp_path / "a", timeout=5)
        with pytest.raises(dl.SourceAbsent, match="got 10 of 1000 bytes|transfer"):
            dl.download(f"{base}/short", tmp_path / "b", timeout=5)
    t0 = time.monotonic()
    with pytest.raises(dl.SourceAbsent, match="unreachable"):
        dl.download(closed_port_url(), tmp_path / "c", timeout=5)
    assert time.monotonic() - t0 < 5


def test_a_tls_error_mid_body_is_source_absent(tmp_path, monkeypatch):
    """ssl.SSLError is an OSError, not a ConnectionError: raised by a read after the handshake
    it must still let the caller try the next source."""
    import ssl

    class _BrokenTLS:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            raise ssl.SSLError("decryption failed or bad record mac")

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda request, timeout: _BrokenTLS())
    with pytest.raises(dl.SourceAbsent, match="SSLError"):
        dl.download("https://example.invalid/x.zip", tmp_path / "x", timeout=5)


# ---------------------------------------------------------------- safe extraction


def test_safe_extract_writes_members_under_target(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"d/x.txt": b"x", "d/sub/y.txt": b"yy", "d/": b""})
    written = dl.safe_extract(archive, tmp_path / "out")
    out = (tmp_path / "out").resolve()
    assert sorted(written) == [out / "d/sub/y.txt", out / "d/x.txt"]
    assert (out / "d/sub/y.txt").read_bytes() == b"yy"


@pytest.mark.parametrize(
    ("members", "symlinks", "why"),
    [
        ({"ok.txt": b"1", "../evil.txt": b"x"}, None, "outside the target"),
        ({"ok.txt": b"1", "d/../../evil.txt": b"x"}, None, "outside the target"),
        ({"ok.txt": b"1", "ABSOLUTE": b"x"}, None, "absolute path"),
        ({"ok.txt": b"1"}, {"link": "../../evil.txt"}, "symbolic link"),
    ],
)
def test_safe_extract_refuses_unsafe_archives_and_writes_nothing(tmp_path, members, symlinks, why):
    absolute = tmp_path / "abs_evil.txt"
    members = {(str(absolute) if k == "ABSOLUTE" else k): v for k, v in members.items()}
    archive = make_zip(tmp_path / "bad.zip", members, symlinks=symlinks)
    target = tmp_path / "a" / "b"
    target.mkdir(parents=True)
    with pytest.raises(DataError, match=f"refused to extract member .*{why}") as e:
        dl.safe_extract(archive, target)
    assert "bad.zip" in str(e.value)
    assert list(target.iterdir()) == []  # checked before anything is written
    assert not list(tmp_path.rglob("*evil*")) and not absolute.exists()


def test_safe_extract_rejects_non_zip_and_zip_bombs(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="junk.zip: not a zip archive"):
        dl.safe_extract(junk, tmp_path / "out")
    big = make_zip(tmp_path / "big.zip", {"a": b"0" * 1000})
    with pytest.raises(DataError, match="unpacks to 1000 bytes"):
        dl.safe_extract(big, tmp_path / "out", max_bytes=999)


_SEGMENTS = st.sampled_from(["a", "b", "..", ".", "c.txt"])


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.lists(_SEGMENTS, min_size=1, max_size=4), min_size=1, max_size=4))
def test_safe_extract_never_writes_outside_target(names):
    """Property: whatever the member names, extraction refuses or stays inside the target."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        target = root / "x" / "y" / "target"
        target.mkdir(parents=True)
        members = {}
        for i, parts in enumerate(names):
            name = "/".join(parts)
            if name.endswith((".", "/")) or name in members:
                name = f"{name}/f{i}"  # a file name, not a folder
            members[name] = str(i).encode()
        archive = make_zip(root / "t.zip", members)
        try:
            written = dl.safe_extract(archive, target)
        except DataError:
            written = []
        outside = [
            p
            for p in root.rglob("*")
            if p.is_file() and p != archive and not p.resolve().is_relative_to(target.resolve())
        ]
        assert outside == []
        assert all(p.is_relative_to(target.resolve()) for p in written)


# ---------------------------------------------------------------- atomic install


def test_install_dir_replaces_an_incomplete_copy(tmp_path):
    dest = tmp_path / "cache" / "ml"
    dest.mkdir(parents=True)
    (dest / "partial").write_text("old")
    staged = tmp_path / "cache" / ".staging"
    staged.mkdir()
    (staged / "u.data").write_text("new")
    assert dl.install_dir(staged, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["u.data"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml"]  # no leftovers


# ---------------------------------------------------------------- pip download failures


PYTHON = sys.executable  # the real one: the tests below patch sys.executable


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for `python -m pip ...`: runs `body` with the argv pip gets."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{PYTHON}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_pip_download_failures_are_source_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(dl.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(dl.SourceAbsent, match="cannot run pip"):
        dl.pip_download("recbole==1.2.1", tmp_path, timeout=1, limit=5)
    err = "sys.stderr.write('ERROR: No matching distribution found\\n'); sys.exit(1)"
    monkeypatch.setattr(dl.sys, "executable", _fake_python(tmp_path, err))
    with pytest.raises(dl.SourceAbsent, match="exit 1.*No matching distribution"):
        dl.pip_download("recbole==1.2.1", tmp_path, timeout=1, limit=5)
    monkeypatch.setattr(dl.sys, "executable", _fake_python(tmp_path, "time.sleep(30)"))
    t0 = time.monotonic()
    with pytest.raises(dl.SourceAbsent, match="did not finish within"):
        dl.pip_download("recbole==1.2.1", tmp_path, timeout=1, limit=0.5)
    assert time.monotonic() - t0 < 10
    monkeypatch.setattr(dl.sys, "executable", _fake_python(tmp_path, "pass"))
    with pytest.raises(dl.SourceAbsent, match="produced no wheel"):
        dl.pip_download("recbole==1.2.1", tmp_path, timeout=1, limit=5)


def test_pip_download_passes_a_pinned_binary_only_request(tmp_path, monkeypatch):
    log = tmp_path / "argv.txt"
    body = (
        f"open({str(log)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        "d = sys.argv[sys.argv.index('-d') + 1]\n"
        "open(d + '/recbole-1.2.1-py3-none-any.whl', 'wb').write(b'')"
    )
    monkeypatch.setattr(dl.sys, "executable", _fake_python(tmp_path, body))
    dest = tmp_path / "dl"
    dest.mkdir()
    wheel = dl.pip_download("recbole==1.2.1", dest, timeout=3, limit=5)
    assert wheel == dest / "recbole-1.2.1-py3-none-any.whl"
    argv = log.read_text()
    assert argv.startswith("-m pip download --no-deps")
    assert "--only-binary :all:" in argv and "--timeout 3 " in argv and "recbole==1.2.1" in argv
