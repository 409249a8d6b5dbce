"""A manifest of the committed results: `python -m metarec_lib.manifest write|check|compare`.

`results/manifest.json` records what a run produced and what produced it, so a reader can check
the committed results against the code that made them:

- "git": the commit of the code and whether the checkout (results/ aside) had local changes;
- "environment": package versions, Python, CPU/GPU (`metarec_lib.pipeline.environment`);
- "datasets": the digest and size of each data set's interactions, or why it was missing;
- "files": SHA-256 and size of every file under results/ (hidden files and folders, such as
  results/.cache, and the manifest itself excepted);
- "created": when the manifest was written (ISO-8601, UTC).

`check` reports any file missing, changed or not listed since the manifest was written;
`compare` compares a committed metrics.csv with a fresh one, value by value within a tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec_lib.io import atomic_write_text

MANIFEST = "manifest.json"
DATASETS = ("ml-100k", "ml-latest-small", "synthetic")
METRIC_COLUMNS = ("dataset", "protocol", "family", "model", "seed", "metric", "value")
KEY_COLUMNS = [c for c in METRIC_COLUMNS if c != "value"]
ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks. Not `data.download.file_sha256`: that one
    caches digests by (path, mtime, size), and a check must read what is on disk now."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def result_files(results_dir: Path) -> list[str]:
    """Relative posix paths of the files a manifest covers, sorted.

    Every regular file under `results_dir`, except manifest.json at the top, files whose name
    starts with "." (running notebooks, atomic-write temp files) and anything inside a folder
    whose name starts with "." (caches).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: no such results folder")
    found = []
    for folder, subdirs, names in os.walk(results_dir):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in names:
            path = Path(folder, name)
            if name.startswith(".") or not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(results_dir).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """{"commit", "dirty"} of the checkout at `root`; None values where git cannot tell."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30
        )
        status = subprocess.run(
            # results/ holds outputs: a run over committed results is still a clean checkout.
            ["git", "status", "--porcelain", "--", ".", ":!results"],
            cwd=root, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None, "dirty": bool(status.stdout.strip())}


def dataset_entries(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Digest and interaction count per data set, or {"missing": reason} where it cannot load."""
    from metarec_lib.data import DataError, load_dataset

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            ds = load_dataset(name)
        except (DataError, OSError) as err:
            out[name] = {"missing": f"{type(err).__name__}: {err}"}
            continue
        out[name] = {"digest": ds.digest, "n_interactions": int(len(ds.interactions))}
    return out


def build_manifest(results_dir: Path, datasets: Sequence[str] = DATASETS) -> dict[str, Any]:
    """The manifest of `results_dir`: git, environment, data sets, files and creation time."""
    from metarec_lib.pipeline import environment

    results_dir = Path(results_dir)
    files = {
        rel: {"sha256": file_sha256(results_dir / rel), "bytes": (results_dir / rel).stat().st_size}
        for rel in result_files(results_dir)
    }
    return {
        "git": git_state(),
        "environment": environment(),
        "datasets": dataset_entries(datasets),
        "files": files,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifest(results_dir: Path, datasets: Sequence[str] = DATASETS) -> Path:
    """Build the manifest and write it atomically to `results_dir/manifest.json`."""
    manifest = build_manifest(results_dir, datasets)
    text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
    return atomic_write_text(Path(results_dir) / MANIFEST, text)


def read_manifest(results_dir: Path) -> dict[str, Any]:
    """The manifest of `results_dir`; FileNotFoundError if absent, ValueError if malformed."""
    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (run `python -m metarec_lib.manifest write`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f'{path}: no "files" object; expected a manifest from `write`')
    return manifest


def check_manifest(results_dir: Path) -> list[str]:
    """Problems of `results_dir` against its manifest, one line each; empty when all match.

    "missing: PATH" (listed, not there), "changed: PATH (sha256 ...)" (listed, other bytes),
    "unlisted: PATH" (there, not listed), in path order.
    """
    results_dir = Path(results_dir)
    listed = read_manifest(results_dir)["files"]
    present = set(result_files(results_dir))
    problems = []
    for rel in sorted(present | set(listed)):
        if rel not in listed:
            problems.append(f"unlisted: {rel}")
        elif rel not in present:
            problems.append(f"missing: {rel}")
        else:
            expected = (listed[rel] or {}).get("sha256")
            found = file_sha256(results_dir / rel)
            if found != expected:
                problems.append(f"changed: {rel} (sha256 {found}, manifest has {expected})")
    return problems


def _read_metrics(path: Path) -> pd.DataFrame:
    """A metrics.csv with string keys and float values; ValueError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    frame = pd.read_csv(path, dtype={c: str for c in KEY_COLUMNS})
    missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected the results contract "
            f"{list(METRIC_COLUMNS)}"
        )
    frame = frame[list(METRIC_COLUMNS)].copy()
    frame[KEY_COLUMNS] = frame[KEY_COLUMNS].fillna("")
    try:
        frame["value"] = pd.to_numeric(frame["value"]).astype(np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: column 'value' is not numeric ({err})") from err
    dup = frame.duplicated(KEY_COLUMNS)
    if dup.any():
        first = frame.loc[dup, KEY_COLUMNS].iloc[0].to_dict()
        raise ValueError(f"{path}: {int(dup.sum())} duplicate key row(s), e.g. {first}")
    return frame


def compare_metrics(committed: Path, fresh: Path, *, atol: float = 1e-6) -> pd.DataFrame:
    """Rows where two metrics.csv files disagree; an empty frame when they match.

    Rows are joined on every contract column but `value`. A row is reported when both values
    differ by more than `atol` (NaN equals NaN) as "differs", or when its key is in one file
    only ("only in committed" / "only in fresh"). Columns: the keys, problem, committed, fresh,
    abs_diff (NaN for a one-sided row).
    """
    left, right = _read_metrics(committed), _read_metrics(fresh)
    joined = left.merge(
        right, on=KEY_COLUMNS, how="outer", suffixes=("_c", "_f"), indicator=True, sort=False
    )
    c = joined["value_c"].to_numpy(np.float64)
    f = joined["value_f"].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(c - f)
        same = (c == f) | (np.isnan(c) & np.isnan(f)) | (diff <= atol)
    problem = np.select(
        [joined["_merge"].eq("left_only"), joined["_merge"].eq("right_only"), ~same],
        ["only in committed", "only in fresh", "differs"],
        default="",
    )
    out = joined[KEY_COLUMNS].copy()
    out["problem"] = problem
    out["committed"], out["fresh"] = c, f
    out["abs_diff"] = np.where(problem == "differs", diff, np.nan)
    result = out[out["problem"] != ""].reset_index(drop=True)
    result.attrs["n_compared"] = len(joined)  # how many values were compared, for the summary
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metarec_lib.manifest", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write RESULTS/manifest.json")
    w.add_argument("results", type=Path)
    w.add_argument("--datasets", nargs="*", default=list(DATASETS), help="data sets to digest")
    c = sub.add_parser("check", help="check RESULTS against its manifest.json")
    c.add_argument("results", type=Path)
    m = sub.add_parser("compare", help="compare a committed metrics.csv with a fresh one")
    m.add_argument("committed", type=Path)
    m.add_argument("fresh", type=Path)
    m.add_argument("--atol", type=float, default=1e-6)
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            path = write_manifest(args.results, args.datasets)
            manifest = json.loads(path.read_text(encoding="utf-8"))
            print(f"manifest: {len(manifest['files'])} files, commit {manifest['git']['commit']}")
            return 0
        if args.command == "check":
            problems = check_manifest(args.results)
            for line in problems:
                print(line)
            if problems:
                print(f"manifest check: {len(problems)} problem(s) in {args.results}")
                return 1
            n = len(read_manifest(args.results)["files"])
            print(f"manifest check: OK, {n} files in {args.results} match the manifest")
            return 0
        diffs = compare_metrics(args.committed, args.fresh, atol=args.atol)
        if len(diffs):
            with pd.option_context("display.width", 200, "display.max_columns", None):
                print(diffs.head(20).to_string(index=False))
            if len(diffs) > 20:
                print(f"... and {len(diffs) - 20} more")
        n = diffs.attrs["n_compared"]
        print(f"{len(diffs)} of {n} metric values differ beyond atol={args.atol:g}")
        return 1 if len(diffs) else 0
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
