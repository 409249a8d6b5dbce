"""Execute the study's notebooks in order with papermill: `python -m metarec_lib.pipeline`.

Each `notebooks/<stem>.ipynb` runs into `results/<stem>/<stem>.ipynb` with a `run.json` beside it
(parameters, seeds, git commit, package versions, hardware, wall time, notices). A notebook runs
into a temporary file that is renamed on success, so a failure never leaves a half-executed
notebook in place of a good one; the failed one is kept as `<stem>.failed.ipynb`, and the
pipeline stops naming the notebook and the cell that failed. A notebook's run.json is removed
when it starts and written when it completes: the tables a failed or interrupted run wrote are
never described by an earlier run's record (`manifest check` then reports run.json missing).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from metarec_lib import __version__
from metarec_lib.io import atomic_write_json

PACKAGES = (
    "numpy", "scipy", "pandas", "scikit-learn", "torch", "matplotlib", "seaborn", "papermill",
    "ipykernel", "nbconvert", "tqdm",
)  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent


class NotebookFailed(RuntimeError):
    """A notebook raised: carries the notebook path and the failing cell."""


class UnknownParameter(ValueError):
    """A `-p` parameter that no notebook of the run defines."""


def environment() -> dict[str, Any]:
    """Git commit, package versions and hardware, for run.json and the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                # Results are outputs: a rerun over committed results is still a clean checkout.
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                cwd=ROOT,
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    gpu, bfloat16 = None, False
    try:
        import torch

        from metarec_lib.models.losses import native_bfloat16

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        bfloat16 = native_bfloat16()
    except ImportError:  # pragma: no cover
        pass
    return {
        "metarec_version": __version__,
        "git_commit": commit or None,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "packages": versions,
        "hardware": {
            "machine": platform.machine(),
            "processor": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "gpu": gpu,
            # the sequence models' softmax products run in bfloat16 ("auto": losses.product_dtype)
            "bfloat16_products": bfloat16,
        },
        "platform": platform.platform(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def notebook_defaults(notebook: str | Path) -> dict[str, Any]:
    """The default values of a notebook's `parameters` cell (what runs when none is given)."""
    import papermill as pm

    out = {}
    for name, spec in pm.inspect_notebook(str(notebook)).items():
        try:
            out[name] = ast.literal_eval(spec["default"])
        except (ValueError, SyntaxError):
            out[name] = spec["default"]
    return out


def run_notebook(
    notebook: str | Path,
    *,
    results_dir: str | Path = "results",
    parameters: dict[str, Any] | None = None,
    timeout: int = 4 * 3600,
) -> Path:
    """Execute one notebook into `results_dir/<stem>/<stem>.ipynb` and write its run.json."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    stem = notebook.stem
    out_dir = Path(results_dir).resolve() / stem
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"results_dir": str(Path(results_dir).resolve()), **(parameters or {})}
    running = out_dir / f".{stem}.running.ipynb"
    final, failed = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.failed.ipynb"
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress updates would be saved as outputs
    os.environ.setdefault("MPLBACKEND", "Agg")
    (out_dir / "run.json").unlink(missing_ok=True)  # its tables are about to be rewritten
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(running), parameters=params, kernel_name="python3",
            cwd=str(ROOT), execution_timeout=timeout, progress_bar=False, log_output=False,
        )  # fmt: skip
    except PapermillExecutionError as err:
        os.replace(running, failed)
        raise NotebookFailed(
            f"{notebook.name} failed at cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\n  executed notebook kept at {failed}"
        ) from None
    except BaseException:
        running.unlink(missing_ok=True)
        raise
    wall = time.perf_counter() - start
    os.replace(running, final)
    failed.unlink(missing_ok=True)
    notices_path = out_dir / "notices.json"
    notices = json.loads(notices_path.read_text()) if notices_path.exists() else []
    effective = notebook_defaults(notebook) | params | {"results_dir": str(results_dir)}
    run = {
        "notebook": f"notebooks/{notebook.name}",
        "parameters": effective,
        "seeds": effective.get("seeds"),
        "wall_seconds": round(wall, 2),
        "notices": notices,
        **environment(),
    }
    atomic_write_json(out_dir / "run.json", run)
    return final


def run_pipeline(
    notebooks: Sequence[str | Path],
    *,
    results_dir: str | Path = "results",
    smoke: bool = False,
    strict: bool = False,
    seeds: Sequence[int] | None = None,
    timeout: int = 4 * 3600,
    extra: dict[str, Any] | None = None,
) -> list[tuple[str, float]]:
    """Run notebooks in the order given; stop at the first failure. Returns (stem, seconds).

    `extra` parameters go to every notebook whose parameters cell defines them; one that no
    notebook defines is an error (a misspelt name would otherwise be dropped without a word),
    raised before any notebook runs.
    """
    defaults = {nb: notebook_defaults(Path(nb)) for nb in notebooks}
    unused = sorted(set(extra or {}) - {name for known in defaults.values() for name in known})
    if unused:
        stems = ", ".join(Path(nb).stem for nb in notebooks)
        raise UnknownParameter(f"parameter(s) {unused} are defined by none of the notebooks "
                               f"({stems})")  # fmt: skip
    times = []
    for nb in notebooks:
        params: dict[str, Any] = {"smoke": smoke, "strict": strict}
        if seeds:
            params["seeds"] = list(seeds)
        known = defaults[nb]
        params.update({k: v for k, v in (extra or {}).items() if k in known})
        start = time.perf_counter()
        print(f"[metarec] {Path(nb).stem}: running{' (smoke)' if smoke else ''} ...", flush=True)
        run_notebook(nb, results_dir=results_dir, parameters=params, timeout=timeout)
        took = time.perf_counter() - start
        times.append((Path(nb).stem, took))
        print(f"[metarec] {Path(nb).stem}: done in {took:.1f} s", flush=True)
    total = sum(t for _, t in times)
    print(f"[metarec] {len(times)} notebook(s) in {total:.1f} s", flush=True)
    return times


def run_order(notebooks: Sequence[str | Path]) -> list[str | Path]:
    """Notebooks by file name, except that a summary notebook (stem ending in "summary") runs
    last: it reads the other notebooks' results (95_scale's included)."""
    return sorted(notebooks, key=lambda p: (Path(p).stem.endswith("summary"), Path(p).name))


def parse_param(text: str) -> tuple[str, Any]:
    """ "name=value" -> (name, value): the value as JSON when it parses, else the string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise ValueError(f"-p {text!r}: expected NAME=VALUE with NAME a Python identifier")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the study's notebooks with papermill.")
    parser.add_argument("notebooks", nargs="+", help="notebooks to run, in order")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--smoke", action="store_true", help="tiny data, seconds per notebook")
    parser.add_argument("--strict", action="store_true", help="fail when a data set is missing")
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated seeds overriding each notebook's default",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=4 * 3600,
        help="seconds per cell (a family notebook runs its grid in one cell)",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a notebook parameter; VALUE is JSON (e.g. -p 'sequential_datasets=[\"ml-100k\"]'), "
        "else a string; given to the notebooks that define NAME",
    )
    args = parser.parse_args(argv)
    try:
        extra = dict(parse_param(p) for p in args.param)
    except ValueError as err:
        parser.error(str(err))
    try:
        run_pipeline(
            run_order(args.notebooks), results_dir=args.results,
            smoke=args.smoke, strict=args.strict, seeds=args.seeds, timeout=args.timeout,
            extra=extra,
        )  # fmt: skip
    except NotebookFailed as err:
        print(f"[metarec] FAILED: {err}", file=sys.stderr)
        return 1
    except UnknownParameter as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
