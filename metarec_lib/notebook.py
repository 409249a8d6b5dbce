"""What every notebook does right after its `parameters` cell: validate, then load the data.

Papermill only warns about an unknown parameter, so validation lives here and fails loudly.
A data set that cannot be obtained is skipped with a visible notice (shown in the notebook and
recorded in `results/<stem>/notices.json`, which the pipeline copies into `run.json`), unless
`strict`, when it is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metarec_lib.data import DATASETS, DataError, Dataset, load_dataset
from metarec_lib.executors import default_executor
from metarec_lib.io import atomic_write_csv, atomic_write_json

DEVICES = ("auto", "cpu", "cuda")
SMOKE_USERS = 60
SMOKE_ITEMS = 300  # and their most-rated items: a smoke run checks plumbing, not catalogues


@dataclass
class NotebookConfig:
    """Validated notebook parameters."""

    stem: str
    datasets: list[str]
    seeds: list[int]
    smoke: bool
    results_dir: Path
    device: str
    strict: bool = False
    models: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.results_dir / self.stem


def validate_parameters(
    stem: str,
    *,
    datasets: Sequence[str],
    seeds: Sequence[int],
    smoke: bool,
    results_dir: str | Path,
    device: str,
    strict: bool = False,
    models: Sequence[str] | None = None,
    known_models: Iterable[str] | None = None,
) -> NotebookConfig:
    """Check notebook parameters; an unknown data set, model or device is a clear error.

    Then, since the notebook is about to run, the parallel executor's workers start (see
    `executors.LocalExecutor.start`): they import while the notebook loads its data and
    prepares its first batch."""
    if isinstance(datasets, str) or not datasets:
        raise ValueError(f"{stem}: `datasets` must be a non-empty list, got {datasets!r}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(
            f"{stem}: unknown data set(s) {unknown}; expected some of {list(DATASETS)}"
        )
    if isinstance(seeds, (int, str)) or not seeds:
        raise ValueError(f"{stem}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or isinstance(s, bool)]
    if bad:
        raise ValueError(f"{stem}: `seeds` must be integers, got {bad}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{stem}: `seeds` has duplicates: {list(seeds)}")
    for name, value in (("smoke", smoke), ("strict", strict)):
        if not isinstance(value, bool):
            raise ValueError(f"{stem}: `{name}` must be True or False, got {value!r}")
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"{stem}: unknown device {device!r}; expected one of {list(DEVICES)}")
    models = list(models or [])
    if known_models is not None:
        known = set(known_models)
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ValueError(f"{stem}: unknown model(s) {unknown}; known: {sorted(known)}")
    config = NotebookConfig(
        stem=stem, datasets=list(datasets), seeds=[int(s) for s in seeds], smoke=smoke,
        results_dir=Path(results_dir), device=device, strict=bool(strict), models=models,
    )  # fmt: skip
    default_executor().start()
    return config


def load_datasets(config: NotebookConfig) -> dict[str, Dataset]:
    """Load the configured data sets; skip (with a notice) or fail on unavailable ones.

    In smoke mode MovieLens is cut to its first `SMOKE_USERS` users and their `SMOKE_ITEMS`
    most-rated items, and the synthetic data set is generated tiny, so a notebook runs in
    seconds.
    """
    loaded: dict[str, Dataset] = {}
    notices: list[dict[str, str]] = []
    for name in config.datasets:
        try:
            ds = _load(name, config.smoke)
        except DataError as err:
            if config.strict:
                raise
            notices.append({"dataset": name, "skipped": "data set unavailable", "detail": str(err)})
            print(f"NOTICE: skipping {name}: it could not be obtained.\n{err}\n")
            continue
        loaded[name] = ds
    atomic_write_json(config.out / "notices.json", notices)
    if not loaded:
        raise DataError(f"{config.stem}: none of the data sets {config.datasets} could be loaded")
    return loaded


def _load(name: str, smoke: bool) -> Dataset:
    if name == "synthetic":
        if smoke:
            return load_dataset("synthetic", n_users=120, n_items=80, density=0.1, seed=0)
        return load_dataset("synthetic")
    ds = load_dataset(name)
    return subsample_users(ds, SMOKE_USERS, SMOKE_ITEMS) if smoke else ds


def subsample_users(ds: Dataset, n_users: int, n_items: int | None = None) -> Dataset:
    """The data set restricted to its `n_users` lowest user ids and, with `n_items`, to the
    items those users rated most (ties to the lower id): a deterministic cut."""
    from dataclasses import replace

    keep = np.sort(ds.interactions["user_id"].unique())[:n_users]
    inter = ds.interactions[ds.interactions["user_id"].isin(keep)]
    if n_items is not None:
        counts = inter["item_id"].value_counts()
        order = np.lexsort((counts.index.to_numpy(), -counts.to_numpy()))
        inter = inter[inter["item_id"].isin(counts.index.to_numpy()[order[:n_items]])]
    inter = inter.reset_index(drop=True)
    users = ds.users[ds.users.index.isin(keep)] if len(ds.users.columns) else ds.users
    items = ds.items[ds.items.index.isin(inter["item_id"].unique())]
    return replace(
        ds, interactions=inter, users=users, items=items, canonical_folds=None,
        notes=ds.notes + (f"smoke: first {n_users} users"
                          + (f", their {n_items} most-rated items" if n_items else "") + " only",),
    )  # fmt: skip


def save_table(frame: pd.DataFrame, config: NotebookConfig, name: str) -> Path:
    """Save a table under `results/<stem>/tables/` (atomically) and return its path."""
    return atomic_write_csv(config.out / "tables" / name, frame)


def sources_markdown(data: dict[str, Dataset], config: NotebookConfig) -> str:
    """Which data sets were loaded from where, and which were skipped and why (for display)."""
    lines = [f"**Run**: seeds {config.seeds}, smoke={config.smoke}, device={config.device}.", ""]
    for name, ds in data.items():
        lines.append(f"- `{name}` from {ds.source or 'unknown source'}: "
                     f"{len(ds.interactions):,} ratings (digest `{ds.digest[:12]}`)")  # fmt: skip
    for name in config.datasets:
        if name not in data:
            lines.append(f"- `{name}` **skipped: not available** (see NOTICE above and "
                         f"`{config.out / 'notices.json'}`)")  # fmt: skip
    return "\n".join(lines)
