"""metarec: do meta-learning recommenders really adapt better, and at what cost?"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


def digest_sources(root: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of every `.py` file under `root`, by relative path and
    content (other files, caches and byte code do not count)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """`digest_sources` of this package: the cell and tuning caches key on it, so a result
    computed by other code is never reused (an interrupted run of the same code resumes)."""
    return digest_sources(Path(__file__).resolve().parent)
