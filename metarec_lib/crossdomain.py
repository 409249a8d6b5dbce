"""Transfer experiments: every method on every (setting, target fraction, seed), then the
target-data curves, the paired tests against `TargetOnly` and the "data saved".

Hyperparameters, stated plainly: the transfer methods share one architecture (`models.transfer`)
and its hyperparameters are tuned for `TargetOnly` once per (setting, target fraction), on a
validation carve-out of THAT fraction's target training data (the test part is never seen), with
the same budget everywhere. Every method then uses them at that fraction; what differs is only
how the source is used (method-specific knobs keep their defaults). Tuning per fraction matters:
hyperparameters tuned on all the target data under-regularise a 1% model, and then anything
that regularises it (even a source whose users are shuffled) beats it for that reason alone.
A fraction's epoch budget is `epochs_for(default epochs, fraction)` (about the same number of
training samples at every fraction, up to `MAX_EPOCHS`: with 30 default epochs the cap binds
below 3%, and at 1% allows a third of them) and early stopping on the carve-out picks the
epochs. The
`UNSCALED` methods, whose epochs pass over the source, take the full-data (fraction 1) epochs.
The references (`REFERENCES`) are tuned per fraction the same way with their own budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from metarec_lib.data.dataset import Dataset
from metarec_lib.io import atomic_write_csv
from metarec_lib.leaderboard import leaderboard, versus_reference
from metarec_lib.models.registry import get_model, model_class
from metarec_lib.notebook import NotebookConfig
from metarec_lib.runner import Experiment, Run
from metarec_lib.stats import aggregate_frame
from metarec_lib.study import SMOKE_EPOCHS, request_for, tune_all
from metarec_lib.transfer import (
    FRACTIONS,
    SYNTHETIC,
    TransferSetting,
    genre_setting,
    parse_protocol,
    protocol_name,
    synthetic_setting,
    target_fraction_split,
    xdata_setting,
)

METHODS = ("TargetOnly", "SourceOnly", "PretrainFinetune", "FrozenFinetune", "JointTraining",
           "EMCDR")  # fmt: skip
BASELINE = "TargetOnly"
# Non-transfer references: EASE, the best tuned model of 20_collaborative on ML-100K 75/25, and
# MostPop, which needs no target taste at all (with little target data it is the one to beat).
REFERENCES = ("EASE", "MostPop")
MAX_EPOCHS = 1000
UNSCALED = ("SourceOnly", "JointTraining")  # an epoch there is (mostly) a pass over the source
SAVED_AT = 0.1  # "data saved": where TargetOnly matches PretrainFinetune at this fraction
SMOKE_SYNTHETIC = {"n_users": 120, "n_items": 80, "density": 0.2, "min_ratings": 8}


def build_settings(data: Mapping[str, Dataset], relatedness: Sequence[float], *,
                   smoke: bool = False) -> list[TransferSetting]:  # fmt: skip
    """The settings the loaded data allow: xdata (needs ML-100K and ml-latest-small), genre
    (ML-100K) and one synthetic setting per `relatedness` value (when "synthetic" is loaded)."""
    out = []
    if "ml-100k" in data and "ml-latest-small" in data:
        out.append(xdata_setting(data["ml-100k"], data["ml-latest-small"]))
    if "ml-100k" in data:
        out.append(genre_setting(data["ml-100k"]))
    if "synthetic" in data:
        options = SMOKE_SYNTHETIC if smoke else {}
        out += [synthetic_setting(float(r), seed=0, **options) for r in relatedness]
    return out


def epochs_for(epochs: int, fraction: float) -> int:
    """Epochs at a target fraction: `epochs / fraction` (the same samples), at most MAX_EPOCHS."""
    return int(min(MAX_EPOCHS, max(1, math.ceil(epochs / fraction))))


def run_transfer(
    config: NotebookConfig,
    settings: Sequence[TransferSetting],
    *,
    methods: Sequence[str] = METHODS,
    references: Sequence[str] = REFERENCES,
    fractions: Sequence[float] = FRACTIONS,
    budget: int = 8,
    reference_budget: int = 20,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tune per setting (see the module docstring), then run every method and the reference at
    every fraction and seed; returns (metric rows, chosen hyperparameters) and writes the results
    contract plus `tables/hyperparameters.csv` through the runner."""
    exp = Experiment(config.stem, config.results_dir, progress=not config.smoke)
    epochs = int(model_class(BASELINE).defaults["epochs"])
    # Every (setting, fraction) and what is tuned there; 1.0 first: the UNSCALED methods' epochs.
    boards, requests = [], []
    for setting in settings:
        for fraction in sorted({*map(float, fractions), 1.0}, reverse=True):
            protocol = protocol_name(setting.name, fraction, setting.relatedness)
            split = lambda seed, s=setting, f=fraction: target_fraction_split(s, f, seed)  # noqa: E731
            boards.append((setting, fraction, protocol, split))
            for name, n_configs, fixed in (
                (BASELINE, budget, {"epochs": epochs_for(epochs, fraction)}),
                *((ref, reference_budget, {}) for ref in references),
            ):
                requests.append(request_for(config, setting.target, protocol, name, n_configs,
                                            fixed, split))  # fmt: skip
    searches = iter(tune_all(config, requests))  # every search as one batch
    tuned_rows, runs, full_epochs = [], [], {}
    for setting, fraction, protocol, split in boards:
        chosen = {}
        for name in (BASELINE, *references):
            t = next(searches)
            chosen[name] = t.params
            tuned_rows.append({"setting": setting.name, "relatedness": setting.relatedness,
                               "fraction": fraction, "dataset": setting.target.name,
                               "model": name, "validation_metric": t.metric,
                               "validation_score": t.score, "configurations": len(t.trials),
                               "params": str(sorted(t.params.items()))})  # fmt: skip
        full_epochs.setdefault(id(setting), int(chosen[BASELINE]["epochs"]))
        if not any(np.isclose(fraction, f) for f in fractions):
            continue  # tuned only for the UNSCALED methods' epochs
        models = {ref: get_model(ref, device=config.device, **chosen[ref])
                  for ref in references}  # fmt: skip
        smoke_caps = {"source_epochs": SMOKE_EPOCHS} if config.smoke else {}
        for name in methods:
            models[name] = method_at(name, chosen[BASELINE], full_epochs[id(setting)],
                                     config.device, **smoke_caps)  # fmt: skip
        runs.append(Run(setting.target, protocol, split, models, list(config.seeds)))
    exp.prefetch(runs)  # every cell of every setting and fraction as one batch
    with exp.deferred_tables():  # the tables once, complete (an interruption leaves the old)
        frames = [exp.run(r.dataset, r.protocol, r.split, r.models, r.seeds) for r in runs]
    tuned = pd.DataFrame(tuned_rows)
    atomic_write_csv(config.out / "tables" / "hyperparameters.csv", tuned)
    return pd.concat(frames, ignore_index=True), tuned


def method_at(name: str, tuned: Mapping, full_epochs: int, device: str, **caps: int):
    """A transfer method with the hyperparameters TargetOnly was tuned to at a fraction (those
    the method has), except that `UNSCALED` methods, whose epochs pass over the source (SourceOnly
    trains on it alone; a JointTraining epoch covers both domains), take `full_epochs`, the
    epochs tuned on all the target data; `caps` set parameters the method has (smoke runs cap
    `source_epochs`)."""
    cls = model_class(name)
    params = {k: v for k, v in tuned.items() if k in cls.defaults}
    params.update({k: v for k, v in caps.items() if k in cls.defaults})
    if "epochs" in params and name in UNSCALED:
        params["epochs"] = int(full_epochs)
    return get_model(name, device=device, **params)


# ----------------------------------------------------------------------------- reading


def curves(metrics: pd.DataFrame, metric: str = "ndcg@10") -> pd.DataFrame:
    """Mean and 95% CI over seeds per (setting, relatedness, fraction, model): the data of the
    target-fraction figure."""
    sel = metrics[metrics["metric"] == metric]
    table = aggregate_frame(sel, by=["dataset", "protocol", "family", "model"])
    parsed = table["protocol"].map(parse_protocol)
    table["setting"] = [p[0] for p in parsed]
    table["fraction"] = [p[1] for p in parsed]
    table["relatedness"] = [p[2] for p in parsed]
    table["metric"] = metric
    return table.sort_values(["setting", "relatedness", "model", "fraction"],
                             na_position="first").reset_index(drop=True)  # fmt: skip


def setting_label(setting: str, relatedness: float | None) -> str:
    return setting if relatedness is None or pd.isna(relatedness) else \
        f"{setting} (relatedness {relatedness:g})"  # fmt: skip


def data_saved(table: pd.DataFrame, at: float = SAVED_AT) -> pd.DataFrame:
    """Per setting: PretrainFinetune's mean at fraction `at`, the smallest fraction at which
    TargetOnly's mean reaches it (NaN if none does), and that fraction linearly interpolated in
    log-fraction between the two grid points around the crossing; `saved` says in words."""
    rows = []
    keys = table[["setting", "relatedness"]].drop_duplicates().itertuples(index=False)
    for setting, rel in keys:
        same = table["relatedness"].isna() if pd.isna(rel) else table["relatedness"] == rel
        mine = table[(table["setting"] == setting) & same]
        pft = mine[(mine["model"] == "PretrainFinetune") & np.isclose(mine["fraction"], at)]
        base = mine[mine["model"] == BASELINE].sort_values("fraction")
        if pft.empty or base.empty:
            continue
        goal = float(pft["mean"].iloc[0])
        fr, means = base["fraction"].to_numpy(), base["mean"].to_numpy()
        reached = np.flatnonzero(means >= goal)
        grid = interp = float("nan")
        if len(reached):
            k = int(reached[0])
            grid = float(fr[k])
            if k == 0:
                interp = grid
            else:
                x0, x1, y0, y1 = np.log(fr[k - 1]), np.log(fr[k]), means[k - 1], means[k]
                interp = float(np.exp(x0 + (goal - y0) / (y1 - y0) * (x1 - x0)))
        if np.isnan(grid):
            saved = f"TargetOnly never reaches it, even with all target data (> {1 / at:.0f}x)"
        elif grid <= at:
            saved = "none: TargetOnly matches it with as little or less target data"
        else:
            saved = f"about {interp / at:.1f}x the target data (grid: {grid:g})"
        rows.append({"setting": setting, "relatedness": rel, "pretrain_finetune_at": at,
                     "goal": goal, "target_only_fraction": grid,
                     "target_only_fraction_interpolated": interp, "saved": saved})  # fmt: skip
    return pd.DataFrame(rows)


def versus_target_only(out, metrics: pd.DataFrame, metric: str = "ndcg@10") -> pd.DataFrame:
    """Every method against TargetOnly on every (data set, protocol): `versus_reference` rows
    (Holm over the methods of a board) plus setting, relatedness and fraction; a significant
    loss is negative transfer."""
    frames = []
    for dataset, protocol in (
        metrics[["dataset", "protocol"]].drop_duplicates().itertuples(index=False)
    ):
        board = leaderboard(out, dataset, protocol, metric)
        table = versus_reference(board, out, dataset, protocol, "transfer", metric=metric,
                                 reference=BASELINE)  # fmt: skip
        if not table.empty:
            setting, fraction, rel = parse_protocol(protocol)
            frames.append(table.assign(setting=setting, fraction=fraction, relatedness=rel))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def relatedness_effect(table: pd.DataFrame, fraction: float = 1.0) -> pd.DataFrame:
    """Synthetic settings at one fraction: per relatedness, TargetOnly's mean and each transfer
    method's mean minus it (negative: the source hurts)."""
    sel = table[(table["setting"] == SYNTHETIC) & np.isclose(table["fraction"], fraction)]
    if sel.empty:
        return pd.DataFrame()
    wide = sel.pivot_table(index="relatedness", columns="model", values="mean")
    methods = [m for m in METHODS if m in wide and m not in (BASELINE, "SourceOnly")]
    out = wide[methods].sub(wide[BASELINE], axis=0)
    out.insert(0, BASELINE, wide[BASELINE])
    return out.reset_index()


def references_lead(table: pd.DataFrame, upto: float = 0.1) -> pd.DataFrame:
    """Per setting and fraction <= `upto`: the best reference and the best transfer method
    (mean ndcg@10), so a reader sees when a non-transfer model is the one to beat."""
    sel = table[table["fraction"] <= upto + 1e-12]
    rows = []
    for (setting, rel, fraction), part in sel.groupby(["setting", "relatedness", "fraction"],
                                                      dropna=False):  # fmt: skip
        refs = part[part["model"].isin(REFERENCES)].sort_values("mean", ascending=False)
        trans = part[part["family"] == "transfer"].sort_values("mean", ascending=False)
        if refs.empty or trans.empty:
            continue
        ref, best = refs.iloc[0], trans.iloc[0]
        rows.append({"setting": setting, "relatedness": rel, "fraction": fraction,
                     "best_reference": ref["model"], "reference": ref["mean"],
                     "best_transfer": best["model"], "transfer": best["mean"]})  # fmt: skip
    return pd.DataFrame(rows)


def narrative(saved: pd.DataFrame, versus: pd.DataFrame,
              table: pd.DataFrame | None = None) -> str:  # fmt: skip
    """Markdown with the numbers: data saved per setting, where transfer helps or hurts, how
    relatedness changes it (synthetic, all target data) and where a reference leads."""
    lines = ["**Data saved** (the target fraction at which TargetOnly matches PretrainFinetune "
             f"at {SAVED_AT:g}):"]  # fmt: skip
    for row in saved.itertuples(index=False):
        label = setting_label(row.setting, row.relatedness)
        lines.append(f"- {label}: PretrainFinetune at {row.pretrain_finetune_at:g} scores "
                     f"{row.goal:.4f}; {row.saved}.")  # fmt: skip
    if not versus.empty:
        lines.append("")
        lines.append("**Against TargetOnly** (Holm-corrected Wilcoxon across users, p < 0.05), "
                     "per setting: fractions where each method wins / loses:")  # fmt: skip
        for (setting, rel), group in versus.groupby(["setting", "relatedness"], dropna=False,
                                                    sort=False):  # fmt: skip
            parts = []
            for model, rows in group.groupby("model", sort=False):
                wins = sorted(rows.loc[rows["outcome"] == "wins", "fraction"])
                losses = sorted(rows.loc[rows["outcome"] == "loses", "fraction"])
                parts.append(f"{model} wins at {_fractions(wins)}, loses at {_fractions(losses)}")
            lines.append(f"- {setting_label(setting, rel)}: " + "; ".join(parts) + ".")
        negative = versus[(versus["outcome"] == "loses") & (versus["model"] != "SourceOnly")]
        lines.append("")
        lines.append(
            "**Negative transfer** (a method that trains on the target too, significantly worse "
            "than TargetOnly): "
            + ("; ".join(f"{r.model} on {setting_label(r.setting, r.relatedness)} at {r.fraction:g}"
                         for r in negative.itertuples(index=False))
               if len(negative) else "none measured") + "."
        )  # fmt: skip
    if table is not None:
        effect = relatedness_effect(table)
        if not effect.empty:
            lines += ["", "**Relatedness** (xdomain-synthetic, all the target data; each "
                      "method's ndcg@10 minus TargetOnly's):"]  # fmt: skip
            for row in effect.itertuples(index=False):
                diffs = ", ".join(f"{m} {getattr(row, m):+.3f}" for m in effect.columns[2:])
                lines.append(f"- relatedness {row.relatedness:g}: TargetOnly "
                             f"{getattr(row, BASELINE):.3f}; {diffs}.")  # fmt: skip
        lead = references_lead(table)
        if not lead.empty:
            ahead = lead[lead["reference"] >= lead["transfer"]]
            lines += ["", f"**The references** at target fractions <= 0.1: a non-transfer model "
                      f"scores at least as high as the best transfer method on {len(ahead)} of "
                      f"{len(lead)} (setting, fraction) points"
                      + (": " + "; ".join(
                          f"{r.best_reference} {r.reference:.3f} vs {r.best_transfer} "
                          f"{r.transfer:.3f} on {setting_label(r.setting, r.relatedness)} at "
                          f"{r.fraction:g}" for r in ahead.itertuples(index=False))
                         if len(ahead) else "") + "."]  # fmt: skip
    return "\n".join(lines)


def _fractions(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) if len(values) else "none"
