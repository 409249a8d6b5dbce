"""The study as a whole, read only from the result files under `results/`.

Every family notebook writes `results/<stem>/metrics.csv`, `costs.csv` and per-user files. Where
two notebooks ran the same (data set, protocol) they used the same splits (same seeds), so their
models can share one board. On each board this module keeps the best model of every family
(mean over seeds), tests it against the overall best on the same users (Wilcoxon signed-rank on
per-user values averaged over seeds, Holm over the families of the board), and puts its median
costs beside it. The claims table applies one written rule per claim to those boards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec_lib.leaderboard import (
    COST_COLUMNS,
    family_verdict,
    higher_is_better,
    median_costs,
    per_user_means,
    share_verdict,
)
from metarec_lib.stats import aggregate_frame, compare_to_best

FAMILIES = ("content", "collaborative", "deep", "multitask", "transfer", "meta")
TRADITIONAL = ("content", "collaborative")
ALPHA = 0.05
SUMMARY_STEM = "90_summary"
# The document's claims in English (ids C1-C11, Q1-Q5), found wherever the kernel runs.
CLAIMS_MD = Path(__file__).resolve().parent.parent / "docs" / "CLAIMS.md"
# Each is the reference its family's notebook tests the family's methods against (issues 5
# and 6 file it under the family), not one of those methods: SingleTask is two single-task
# networks, TargetOnly the target-only factorisation. A family's best on a board is chosen
# without it, so that "the multi-task family's best" is a multi-task model. (They are
# `mtl.BASELINE` and `crossdomain.BASELINE`; a test checks that, so this module needs no torch.)
FAMILY_BASELINES = {"multitask": "SingleTask", "transfer": "TargetOnly"}


def notebook_dirs(results: str | Path) -> list[Path]:
    """Result folders with a metrics.csv, family notebooks first (00_data's floors last, so a
    model a family notebook tuned wins a duplicate), the summary itself excluded."""
    dirs = [p.parent for p in sorted(Path(results).glob("*/metrics.csv"))]
    dirs = [d for d in dirs if d.name != SUMMARY_STEM]
    return [d for d in dirs if not d.name.startswith("00")] + [
        d for d in dirs if d.name.startswith("00")
    ]


def board_metric(protocol: str) -> tuple[str, ...]:
    """The metrics a protocol's boards use: rmse for rating protocols, ndcg@10 for ranking ones,
    both for multi-task and cold-start ones (models of both kinds run there)."""
    if protocol.startswith("rating"):
        return ("rmse",)
    if protocol.startswith(("mtl", "coldstart")):
        return ("ndcg@10", "rmse")
    if protocol == "algo-selection" or protocol.startswith("scale"):
        return ()  # per-user selection; 95_scale's fixed-pass fits are costs, not contenders
    return ("ndcg@10",)


def load_all(results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, costs) of every notebook with a `notebook` column; a (dataset, protocol, model)
    run by two notebooks is kept from the first (see `notebook_dirs`)."""
    metrics, costs = [], []
    for d in notebook_dirs(results):
        m = pd.read_csv(d / "metrics.csv").assign(notebook=d.name)
        c = pd.read_csv(d / "costs.csv").assign(notebook=d.name)
        metrics.append(m)
        costs.append(c)
    if not metrics:
        raise FileNotFoundError(f"{results}: no <notebook>/metrics.csv under it")
    m, c = pd.concat(metrics, ignore_index=True), pd.concat(costs, ignore_index=True)
    owner = m.drop_duplicates(["dataset", "protocol", "model"])[
        ["dataset", "protocol", "model", "notebook"]
    ]
    m = m.merge(owner, on=["dataset", "protocol", "model", "notebook"])
    c = c.merge(owner, on=["dataset", "protocol", "model", "notebook"])
    return m, c


def family_boards(results: str | Path) -> pd.DataFrame:
    """One row per (dataset, protocol, metric, family): the family's best model, its mean and
    95% CI over seeds, the Holm-corrected Wilcoxon p against the board's overall best, whether
    it is the best (`is_best`) or not significantly worse (`tied`), whether the board's paired
    tests ran at all (`tested`: every family's best has per-user values, on common users), and
    its median costs.
    A family's own baseline (`FAMILY_BASELINES`) is not a candidate."""
    results = Path(results)
    metrics, costs = load_all(results)
    own_baseline = metrics["model"] == metrics["family"].map(FAMILY_BASELINES)
    metrics = metrics[~own_baseline]
    rows = []
    for (dataset, protocol), sel in metrics.groupby(["dataset", "protocol"], sort=True):
        for metric in board_metric(protocol):
            part = sel[sel["metric"] == metric]
            if part.empty:
                continue
            table = aggregate_frame(part, by=["family", "model", "notebook"])
            better = higher_is_better(metric)
            table = table.sort_values("mean", ascending=not better, kind="stable")
            best = table.drop_duplicates("family").reset_index(drop=True)
            vectors = {
                r.model: per_user_means(results / r.notebook, dataset, protocol, r.model, metric)
                for r in best.itertuples(index=False)
            }
            tests = pd.DataFrame()
            if len(best) >= 2 and all(len(v) for v in vectors.values()):
                users = sorted(set.intersection(*(set(v.index) for v in vectors.values())))
                if users:
                    aligned = {m: v.reindex(users).to_numpy() for m, v in vectors.items()}
                    tests = compare_to_best(aligned, higher_is_better=better,
                                            best=best["model"].iloc[0], alpha=ALPHA)  # fmt: skip
            cost = median_costs(costs, dataset, protocol)
            for r in best.itertuples(index=False):
                row = {
                    "dataset": dataset,
                    "protocol": protocol,
                    "metric": metric,
                    "family": r.family,
                    "model": r.model,
                    "notebook": r.notebook,
                    "mean": r.mean,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "n": r.n,
                }
                mine = (part["model"] == r.model) & (part["notebook"] == r.notebook)
                model_rows = part[mine].sort_values("seed")
                row["seeds"] = json.dumps({str(k): float(v) for k, v in
                                           zip(model_rows["seed"], model_rows["value"],
                                               strict=True)})  # fmt: skip
                row["is_best"] = r.model == best["model"].iloc[0]
                p, worse = np.nan, False
                if not tests.empty:
                    test = tests.set_index("model").loc[r.model]
                    p, worse = test["wilcoxon_p_holm"], bool(test["significant"])
                row["p_holm"] = p
                # Significantly worse, not merely different: the best is ranked by the mean of
                # the seeds' values, the test pairs per-user means, and the two can disagree.
                row["tied"] = bool(row["is_best"] or not worse)
                row["tested"] = not tests.empty
                for col in COST_COLUMNS:
                    row[col] = cost[col].get(r.model, np.nan) if col in cost else np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def leaderboard_view(boards: pd.DataFrame) -> pd.DataFrame:
    """A readable board per (dataset, protocol, metric): family, model, mean ± CI half-width,
    p vs best (Holm), median fit seconds, peak memory and parameters."""
    view = boards[["dataset", "protocol", "metric", "family", "model"]].copy()
    half = boards["ci_high"] - boards["mean"]
    view["mean ± 95% CI"] = [
        f"{m:.4f} ± {h:.4f}" if np.isfinite(h) else f"{m:.4f}"
        for m, h in zip(boards["mean"], half, strict=True)
    ]
    view["p vs best (Holm)"] = [
        "best" if b else ("n/a" if pd.isna(p) else f"{p:.2g}")
        for b, p in zip(boards["is_best"], boards["p_holm"], strict=True)
    ]
    view["fit s"] = boards["fit_seconds"].round(2)
    view["peak MB"] = boards["peak_memory_mb"].round(0)
    view["params"] = boards["n_parameters"].round().astype("Int64")
    return view


def pareto_front(
    points: pd.DataFrame, cost: str, quality: str, *, better: str = "higher"
) -> pd.Series:
    """Boolean mask: the points no other point beats on both cost (lower) and quality
    (`better`), i.e. the ones worth their price."""
    c = points[cost].to_numpy(float)
    q = points[quality].to_numpy(float)
    q = q if better == "higher" else -q
    mask = np.ones(len(points), bool)
    for i in range(len(points)):
        dominated = (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        mask[i] = not dominated.any()
    return pd.Series(mask, index=points.index)


def cost_quality(results: str | Path, dataset: str, protocol: str, metric: str) -> pd.DataFrame:
    """Every model of a (combined) board: family, model, mean and CI over seeds, median costs,
    and whether it is on the Pareto front of fit seconds (`front_fit`) and of peak memory
    (`front_memory`) against the metric."""
    metrics, costs = load_all(results)
    sel = metrics[
        (metrics["dataset"] == dataset)
        & (metrics["protocol"] == protocol)
        & (metrics["metric"] == metric)
    ]
    if sel.empty:
        return pd.DataFrame()
    table = aggregate_frame(sel, by=["family", "model"])
    cost = median_costs(costs, dataset, protocol)
    table = table.merge(cost, left_on="model", right_index=True, how="left")
    better = "higher" if higher_is_better(metric) else "lower"
    for column, name in (("fit_seconds", "front_fit"), ("peak_memory_mb", "front_memory")):
        ok = table[column].notna()
        table[name] = False
        table.loc[ok, name] = pareto_front(table[ok], column, "mean", better=better)
    table.insert(0, "metric", metric)
    table.insert(0, "protocol", protocol)
    table.insert(0, "dataset", dataset)
    return table.sort_values("mean", ascending=better == "lower").reset_index(drop=True)


def best_per_family(curves: pd.DataFrame) -> pd.DataFrame:
    """Rows of a curve table (`coldstart.curves`, `crossdomain.curves`) for the best model of
    each family per data set (highest mean over the curve's points; lowest for rmse-like)."""
    if curves.empty:
        return curves
    better = higher_is_better(str(curves["metric"].iloc[0]))
    means = curves.groupby(["dataset", "family", "model"])["mean"].mean().reset_index()
    means = means.sort_values("mean", ascending=not better)
    keep = means.drop_duplicates(["dataset", "family"])[["dataset", "model"]]
    return curves.merge(keep, on=["dataset", "model"])


def activity_quintiles(
    results: str | Path,
    dataset: str = "ml-100k",
    protocol: str = "topn-75-25",
    metric: str = "ndcg@10",
) -> pd.DataFrame:
    """Who benefits: the per-user metric of each family's best model on one board, by quintile
    of user activity. Activity is the user's number of test items: the 75/25 holdout keeps a
    quarter of every user's ratings, so it is proportional to the user's ratings. Returns
    columns family, model, quintile (1 = least active), users, mean."""
    results = Path(results)
    boards = family_boards(results)
    sel = boards[
        (boards["dataset"] == dataset)
        & (boards["protocol"] == protocol)
        & (boards["metric"] == metric)
    ]
    if sel.empty:
        return pd.DataFrame(columns=["family", "model", "quintile", "users", "mean"])
    test = _first_test_split(results, dataset, protocol)
    if test is None:
        return pd.DataFrame(columns=["family", "model", "quintile", "users", "mean"])
    activity = test.groupby("user_id").size()
    ranks = activity.rank(method="first")
    quintile = pd.qcut(ranks, 5, labels=[1, 2, 3, 4, 5]).astype(int)
    rows = []
    for r in sel.itertuples(index=False):
        per_user = per_user_means(results / r.notebook, dataset, protocol, r.model, metric)
        joined = pd.DataFrame({"value": per_user}).join(quintile.rename("quintile"), how="inner")
        for q, part in joined.groupby("quintile"):
            rows.append(
                {
                    "family": r.family,
                    "model": r.model,
                    "quintile": int(q),
                    "users": len(part),
                    "mean": float(part["value"].mean()),
                }
            )
    return pd.DataFrame(rows)


def _first_test_split(results: Path, dataset: str, protocol: str) -> pd.DataFrame | None:
    """The first seed's test split of a board (any notebook's copy; None if none was saved)."""
    for d in notebook_dirs(results):
        paths = sorted((d / "splits").glob(f"{dataset}__{protocol}__seed*__test.csv.gz"))
        if paths:
            return pd.read_csv(paths[0])
    return None


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Evidence:
    """What a rule found: the verdict, the numbers in words, and the experiment it read."""

    verdict: str
    numbers: str
    experiment: str


def outcome(boards: pd.DataFrame, family: str) -> pd.DataFrame:
    """Per board with `family` and at least one other family: "win" when the family is best and
    every other family is significantly worse, "tie" when no family is significantly better
    than it, "loss" when one is; "untested" when the board's paired tests could not run (no
    per-user values), where `tied` says nothing."""
    rows = []
    for key, board in boards.groupby(["dataset", "protocol", "metric"], sort=True):
        mine = board[board["family"] == family]
        if mine.empty or len(board) < 2:
            continue
        me = mine.iloc[0]
        others = board[board["family"] != family]
        if not _tested(board):
            result = "untested"
        elif me["is_best"] and not others["tied"].any():
            result = "win"
        elif me["tied"]:
            result = "tie"
        else:
            result = "loss"
        rows.append(
            dict(zip(("dataset", "protocol", "metric"), key, strict=True))
            | {"family": family, "model": me["model"], "outcome": result}
        )
    return pd.DataFrame(
        rows, columns=["dataset", "protocol", "metric", "family", "model", "outcome"]
    )


def _tested(board: pd.DataFrame) -> bool:
    """Whether a board's paired tests ran (boards built without the column: yes)."""
    return "tested" not in board or bool(board["tested"].all())


def _untested_note(n: int) -> str:
    return f"; {n} board(s) without per-user values to test left out" if n else ""


def family_wins(
    boards: pd.DataFrame,
    family: str,
    claim: str,
    where: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> Evidence:
    """The family is better: the claim holds on a board the family wins and fails on one it
    loses or ties (a tie is no evidence that it is better). A board whose paired tests could
    not run is left out, as the family notebooks' `leaderboard.versus_reference` leaves it."""
    sel = boards if where is None else boards[where(boards)]
    table = outcome(sel, family)
    counts = table["outcome"].value_counts()
    wins, ties, losses, untested = (
        int(counts.get(k, 0)) for k in ("win", "tie", "loss", "untested")
    )
    n = wins + ties + losses
    return Evidence(
        share_verdict(wins, ties + losses, n),
        f"{family} wins {wins}, ties {ties}, loses {losses} of {n} boards"
        + _untested_note(untested),
        claim,
    )


# Peak memory is the growth of a process's resident set over a block (`costs.measure`, which
# first returns the memory freed before to the system). A median under 1 MB is at the
# resolution of that measurement (pages, the sampler's interval), and a ratio over it says
# nothing: before `measure` returned freed memory, blocks that reused it read 0.004 MB, and
# Q3's ratio went from 1.62 to 342 between two runs of the same code.
MEMORY_FLOOR_MB = 1.0


def cost_ratio(
    boards: pd.DataFrame,
    family: str,
    column: str,
    where: Callable[[pd.DataFrame], pd.Series] | None = None,
    floor: float = 0.0,
) -> pd.DataFrame:
    """Per board: the family's best model's `column` over the median of the other families'
    best models'. Boards where either is missing, or the median is not above `floor` (no ratio
    can be read from a denominator the measurement does not resolve), are left out."""
    sel = boards if where is None else boards[where(boards)]
    rows = []
    for key, board in sel.groupby(["dataset", "protocol", "metric"], sort=True):
        mine = board.loc[board["family"] == family, column]
        others = board.loc[board["family"] != family, column].dropna()
        if mine.empty or others.empty or pd.isna(mine.iloc[0]) or others.median() <= floor:
            continue
        rows.append(
            dict(zip(("dataset", "protocol", "metric"), key, strict=True))
            | {"ratio": float(mine.iloc[0] / others.median())}
        )
    return pd.DataFrame(rows, columns=["dataset", "protocol", "metric", "ratio"])


def costlier(
    boards: pd.DataFrame,
    family: str,
    column: str,
    claim: str,
    where: Callable[[pd.DataFrame], pd.Series] | None = None,
    floor: float = 0.0,
) -> Evidence:
    """The family costs more in `column`: holds on a board where its ratio is > 1 (boards
    whose other families' median is not above `floor` are left out and counted)."""
    ratios = cost_ratio(boards, family, column, where, floor)["ratio"]
    n = len(ratios)
    numbers = (
        (
            f"{family}'s best model / median of the other families' best: median ratio "
            f"{ratios.median():.3g} (range {ratios.min():.3g}-{ratios.max():.3g}), > 1 on "
            f"{int((ratios > 1).sum())} of {n} boards"
        )
        if n
        else f"no board with {column}"
    )
    if floor > 0:
        total = len(cost_ratio(boards, family, column, where))
        numbers += (f"; {total - n} board(s) left out, where the other families' median is "
                    f"{floor:g} or less (below what the measurement resolves)")  # fmt: skip
    return Evidence(
        share_verdict(int((ratios > 1).sum()), int((ratios < 1).sum()), n), numbers, claim
    )


def _coldstart(boards: pd.DataFrame) -> pd.Series:
    return boards["protocol"].str.startswith("coldstart")


def _coldstart_k(boards: pd.DataFrame, ks: Sequence[int], pooled: bool = False) -> pd.Series:
    protocol = boards["protocol"]
    k = protocol.str.extract(r"k=(\d+)")[0].astype(float)
    has_pool = protocol.str.contains("pool=")
    return _coldstart(boards) & k.isin(ks) & (has_pool if pooled else ~has_pool)


def _pool_boards(boards: pd.DataFrame) -> pd.Series:
    """The warm-user pool sweep: k = 5 at pool 0.1/0.25/0.5 and the full pool, on the data
    sets that have a sweep (another data set's plain k = 5 board is no sweep)."""
    swept = boards.loc[boards["protocol"].str.contains("pool="), "dataset"].unique()
    return (_coldstart(boards) & boards["protocol"].str.contains(r"k=5(?:,|$)")
            & boards["dataset"].isin(swept))  # fmt: skip


# The boards each of the meta family's quality claims reads, in the report and in 60_meta's
# verdict (any frame with dataset and protocol columns).
CLAIM_BOARDS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "C3": lambda b: _coldstart_k(b, (10, 20)),
    "C4": lambda b: _coldstart_k(b, (1, 3, 5)),
    "C5": _pool_boards,
}


def claim_verdicts(
    comparisons: pd.DataFrame, family: str, ids: Sequence[str], claims_md: str | Path = CLAIMS_MD
) -> str:
    """Markdown for a family notebook: `leaderboard.family_verdict` of each claim in `ids` on
    the boards the report reads for it (`CLAIM_BOARDS`; every board for a claim it does not
    name), headed by the claim's id and wording in `claims_md`. The verdict follows the
    report's rule (`share_verdict`) on the report's boards, but not its comparison: here the
    family's best model is tested against the best other model by mean (Holm over the
    family's models), in the report against every other family's best (`family_boards`, Holm
    over the families). The two can disagree where another family is closer per user than
    the best by mean; `claims.csv` holds the report's verdict."""
    wording = read_claims(claims_md).set_index("id")["claim"]
    parts = []
    for cid in ids:
        where = CLAIM_BOARDS.get(cid)
        rows = (
            comparisons if where is None or comparisons.empty else comparisons[where(comparisons)]
        )
        parts.append(family_verdict(rows, family, f"{cid}: {wording[cid]}"))
    return "\n\n".join(parts)


def data_need(boards: pd.DataFrame, claim: str) -> Evidence:
    """Meta needs more data: from the full warm-user pool to the smallest one, the best meta
    method loses a larger share of its quality than the best other family does (ndcg@10,
    averaged over the data sets with a pool sweep; within 1 point: mixed).

    Where the boards carry each model's per-seed values (`seeds`, as `family_boards` writes
    them), the same share is computed per seed for the same models, and a verdict other than
    mixed also needs every seed to lean its way: at 5315b47 FOMAML, the best meta-learner on
    ML-100K's full and 10% pools, lost +36%, +18% and -42% of its ndcg@10 in the three seeds
    (EASE 4-5% in each), so the seeds' mean alone decided on noise."""
    sel = boards[_pool_boards(boards) & (boards["metric"] == "ndcg@10")].copy()
    sel["pool"] = sel["protocol"].str.extract(r"pool=([0-9.]+)")[0].astype(float).fillna(1.0)
    drops: dict[str, list[float]] = {"meta": [], "other": []}
    seed_drops: dict[str, list[pd.Series]] = {"meta": [], "other": []}
    for _, part in sel.groupby("dataset"):
        pools = sorted(part["pool"].unique())
        if len(pools) < 2:
            continue
        for side, mask in (("meta", part["family"] == "meta"), ("other", part["family"] != "meta")):
            rows = part[mask & part["pool"].isin([pools[0], pools[-1]])]
            best = rows.loc[rows.groupby("pool")["mean"].idxmax()].set_index("pool")
            if len(best) < 2 or not best.loc[pools[-1], "mean"] > 0:
                continue
            drops[side].append(1 - best.loc[pools[0], "mean"] / best.loc[pools[-1], "mean"])
            if "seeds" in best.columns:
                small, full = (pd.Series(json.loads(best.loc[p, "seeds"]), dtype=float)
                               for p in (pools[0], pools[-1]))  # fmt: skip
                seed_drops[side].append(1 - small / full)
    if not drops["meta"] or not drops["other"]:
        return Evidence("not testable here", "no warm-user pool sweep in the results", claim)
    meta, other = float(np.mean(drops["meta"])), float(np.mean(drops["other"]))
    numbers = (f"ndcg@10 lost from the full to the smallest warm-user pool: "
               f"meta {meta:.1%}, best other family {other:.1%}")  # fmt: skip
    verdict = (
        "mixed" if abs(meta - other) < 0.01 else "supported" if meta > other else "not supported"
    )
    if seed_drops["meta"] and len(seed_drops["meta"]) == len(seed_drops["other"]):
        # Per seed, averaged over the data sets like the means: meta's loss minus the other's.
        per_seed = (pd.concat(seed_drops["meta"], axis=1).mean(axis=1)
                    - pd.concat(seed_drops["other"], axis=1).mean(axis=1)).dropna()  # fmt: skip
        numbers += "; per seed, meta minus other: " + ", ".join(
            f"{d * 100:+.1f} points" for d in per_seed)  # fmt: skip
        lean = np.sign(meta - other)
        if verdict != "mixed" and not (np.sign(per_seed.to_numpy()) == lean).all():
            verdict = "mixed"
            numbers += " (the seeds disagree)"
    return Evidence(verdict, numbers, claim)


def compute_buys_quality(boards: pd.DataFrame, claim: str) -> Evidence:
    """More compute, better results: per board, the Spearman correlation between the families'
    best models' fit seconds and their quality (sign flipped for lower-is-better metrics);
    supported when the median over boards is >= 0.5, not supported when <= 0."""
    rhos = []
    for (_, _, metric), board in boards.groupby(["dataset", "protocol", "metric"]):
        b = board.dropna(subset=["fit_seconds"])
        if len(b) < 3:
            continue
        sign = 1.0 if higher_is_better(metric) else -1.0
        rho = b["fit_seconds"].rank().corr((sign * b["mean"]).rank())
        if pd.notna(rho):
            rhos.append(rho)
    if not rhos:
        return Evidence("not testable here", "no board with three families and costs", claim)
    med = float(np.median(rhos))
    verdict = "supported" if med >= 0.5 else "not supported" if med <= 0 else "mixed"
    return Evidence(
        verdict, f"median Spearman(fit seconds, quality) over {len(rhos)} boards: {med:.2f}", claim
    )


def _not_traditional_best(boards: pd.DataFrame) -> Evidence:
    """C1: traditional recommenders lose: on boards with a traditional and a deep or meta
    family, the best traditional model is significantly worse than the overall best."""
    rows, untested = [], 0
    for _, board in boards.groupby(["dataset", "protocol", "metric"]):
        trad = board[board["family"].isin(TRADITIONAL)]
        if trad.empty or not board["family"].isin(("deep", "meta")).any():
            continue
        if not _tested(board):
            untested += 1
            continue
        rows.append(bool(trad["tied"].any()))
    n, held = len(rows), sum(rows)
    return Evidence(
        share_verdict(n - held, held, n),
        f"the best traditional model is best or tied on {held} of {n} boards with a deep or "
        f"meta family" + _untested_note(untested),
        "every board with a traditional and a deep or meta family (10, 20, 30, 60)",
    )


CLAIM_RULES: dict[str, tuple[str, Callable[[pd.DataFrame], Evidence]]] = {
    "C1": (
        "supported when the best traditional (content/collaborative) model is significantly "
        "worse than the overall best on >= 2/3 of the boards with a deep or meta family; not "
        "supported when it is best or tied on >= 2/3 (the cost half: 95_scale's growth "
        "exponents are listed; cost grows with data for every family, so it does not decide)",
        _not_traditional_best,
    ),
    "C2": (
        "supported when the deep family wins (best, every other family significantly worse) "
        ">= 2/3 of its boards; not supported when it ties or loses >= 2/3",
        lambda b: family_wins(
            b,
            "deep",
            "30_deep boards (topn-75-25, topn-temporal, "
            "loo-temporal) with 10/20's models on the same splits",
        ),
    ),
    "C3": (
        "as C2 for the meta family on the cold-start boards with k >= 10 support ratings "
        "(enough of a user's data to learn relations from)",
        lambda b: family_wins(
            b, "meta", "60_meta cold-start boards, k = 10, 20", CLAIM_BOARDS["C3"]
        ),
    ),
    "C4": (
        "as C2 for the meta family on the cold-start boards with k <= 5 (adapting to a new "
        "user from a few ratings)",
        lambda b: family_wins(
            b, "meta", "60_meta cold-start boards, k = 1, 3, 5", CLAIM_BOARDS["C4"]
        ),
    ),
    "C5": (
        "as C2 for the meta family on the warm-user pool sweep (k = 5 with 10%, 25%, 50% "
        "and all of the meta-train and meta-valid users): generalising to unseen users from "
        "fewer training users",
        lambda b: family_wins(b, "meta", "60_meta pool sweep", CLAIM_BOARDS["C5"]),
    ),
    "C6": (
        "supported when the best meta model's median fit seconds exceed the median of the "
        "other families' best models on >= 2/3 of the cold-start boards",
        lambda b: costlier(
            b, "meta", "fit_seconds", "60_meta cold-start boards, costs.csv", _coldstart
        ),
    ),
    "C7": (
        "as C6 with the number of parameters",
        lambda b: costlier(
            b, "meta", "n_parameters", "60_meta cold-start boards, costs.csv", _coldstart
        ),
    ),
    "C8": (
        "supported when the best meta method loses a larger share of its ndcg@10 than the "
        "best other family from the full to the smallest warm-user pool, on the seeds' means "
        "and in every seed (within 1 point, or seeds that disagree: mixed)",
        lambda b: data_need(b, "60_meta pool sweep"),
    ),
    "C9": (
        "not testable here: the document sets no threshold for 'too high'; the numbers are "
        "the meta family's fit-time ratio (as C6)",
        lambda b: Evidence(
            "not testable here",
            costlier(b, "meta", "fit_seconds", "", _coldstart).numbers,
            "60_meta costs.csv",
        ),
    ),
    "C10": (
        "the converse of C5: supported when the meta family ties or loses >= 2/3 of the "
        "pool-sweep and cold-start boards of both data sets",
        lambda b: _converse(
            family_wins(b, "meta", "60_meta cold-start and pool boards", _coldstart)
        ),
    ),
    "C11": (
        "supported when, across families, more fit seconds go with better quality: median "
        "Spearman >= 0.5 over boards (<= 0: not supported); GPU runs are issue 9's",
        lambda b: compute_buys_quality(b, "every board, costs.csv"),
    ),
    "Q1": (
        "as C8 (how much data meta-learning needs relative to the other families)",
        lambda b: data_need(b, "60_meta pool sweep and support size k"),
    ),
    "Q2": (
        "'a lot' = more than the other families: as C6 (fit seconds)",
        lambda b: costlier(b, "meta", "fit_seconds", "60_meta costs.csv", _coldstart),
    ),
    "Q3": (
        f"as C6 with peak memory (MB), on the boards where the other families' median exceeds "
        f"{MEMORY_FLOOR_MB:g} MB (a smaller peak is noise of the resident-set sampler)",
        lambda b: costlier(
            b, "meta", "peak_memory_mb", "60_meta costs.csv", _coldstart, floor=MEMORY_FLOOR_MB
        ),  # fmt: skip
    ),
    "Q4": (
        "as C6 with predict (adaptation and scoring) seconds",
        lambda b: costlier(b, "meta", "predict_seconds", "60_meta costs.csv", _coldstart),
    ),
    "Q5": (
        "as C7 (the parameters a model holds of its own; a meta-learner's kept copies of values "
        "that adaptation left unchanged do not count, though its pickle stores them)",
        lambda b: costlier(b, "meta", "n_parameters", "60_meta costs.csv", _coldstart),
    ),
}


def _converse(e: Evidence) -> Evidence:
    flip = {"supported": "not supported", "not supported": "supported"}
    return Evidence(flip.get(e.verdict, e.verdict), e.numbers, e.experiment)


def read_claims(path: str | Path) -> pd.DataFrame:
    """id and wording of each claim (C*) and question (Q*) from CLAIMS.md's tables."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0][:1] in ("C", "Q") and cells[0][1:].isdigit():
            wording = cells[2] if cells[0].startswith("C") else cells[1]
            rows.append({"id": cells[0], "claim": wording})
    if not rows:
        raise ValueError(f"{path}: no claim rows (| C1 | section | claim |) found")
    return pd.DataFrame(rows)


def scale_growth(results: str | Path) -> str:
    """ "; fit time grows as n^e with the data (95_scale): model e (family), ..." from
    results/95_scale/tables/exponents.csv and its costs.csv; "" when 95_scale did not run."""
    folder = Path(results) / "95_scale"
    path = folder / "tables" / "exponents.csv"
    if not path.exists() or not (folder / "costs.csv").exists():
        return ""
    slopes = pd.read_csv(path).dropna(subset=["fit_exponent"])
    family = pd.read_csv(folder / "costs.csv").groupby("model")["family"].first()
    parts = [f"{r.model} {r.fit_exponent:.2f} ({family.get(r.model, '?')})"
             for r in slopes.itertuples(index=False)]  # fmt: skip
    return (
        "; fit time grows as n^e with the interactions (95_scale): " + ", ".join(parts)
        if parts
        else ""
    )


def claims_table(
    results: str | Path, claims_md: str | Path, boards: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per claim and question: id, claim, experiment, numbers, verdict, rule."""
    boards = family_boards(results) if boards is None else boards
    claims = read_claims(claims_md)
    rows = []
    for r in claims.itertuples(index=False):
        if r.id not in CLAIM_RULES:
            raise ValueError(f"{claims_md}: {r.id} has no rule in summary.CLAIM_RULES")
        rule, fn = CLAIM_RULES[r.id]
        e = fn(boards)
        if r.id == "C1":
            e = Evidence(e.verdict, e.numbers + scale_growth(results), e.experiment)
        rows.append(
            {
                "id": r.id,
                "claim": r.claim,
                "experiment": e.experiment,
                "numbers": e.numbers,
                "verdict": e.verdict,
                "rule": rule,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the summary


@dataclass
class Section:
    """One part of the summary and the report: a title, Markdown with the numbers, and the
    table and figure it saved (paths relative to the summary folder; None when absent)."""

    title: str
    text: str
    table: pd.DataFrame | None = None
    table_path: str | None = None
    figure_path: str | None = None
    latex: bool = False


def verdict_counts(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    return ", ".join(
        f"{v} {int(counts.get(v, 0))}"
        for v in ("supported", "not supported", "mixed", "not testable here")
    )


def build(results: str | Path, claims_md: str | Path, out: str | Path) -> dict[str, Section]:
    """Compute every table and figure of the summary from the CSVs under `results`, save them
    under `out` (tables/, figures/) with `outline.json` for the report, and return the sections
    in report order."""
    from metarec_lib import plots
    from metarec_lib.io import atomic_write_csv, atomic_write_json

    results, out = Path(results), Path(out)
    boards = family_boards(results)
    sections: dict[str, Section] = {}

    def table(name: str, frame: pd.DataFrame) -> str:
        atomic_write_csv(out / "tables" / name, frame)
        return f"tables/{name}"

    def figure(name: str, fig) -> str:
        plots.save(fig, out / "figures" / name)
        return f"figures/{name}"

    claims = claims_table(results, claims_md, boards)
    sections["claims"] = Section(
        "Claims versus evidence",
        f"Each claim (C) and question (Q) of the document (`{Path(claims_md).name}`), the "
        f"experiment that tests it, the numbers and a verdict computed from the CSVs by the "
        f"rule beside it. A board is one (data set, protocol, metric) with its own best model "
        f"per family: a cold-start protocol is two boards, ndcg@10 and rmse. "
        f"Verdicts: {verdict_counts(claims)}.",
        claims,
        table("claims.csv", claims),
        latex=True,
    )
    view = leaderboard_view(boards)
    atomic_write_csv(out / "tables" / "family_boards.csv", boards)
    sections["leaderboard"] = Section(
        "Leaderboard: the best model of each family",
        "Per data set, protocol and metric: each family's best model, mean ± 95% CI over "
        "seeds, the Holm-corrected Wilcoxon p against the board's best on the same users "
        "(per-user values averaged over seeds), median fit seconds, peak memory and "
        f"parameters. {_board_wins(boards)}",
        view,
        table("leaderboard.csv", view),
        latex=True,
    )
    for key, dataset, protocol, metric in (
        ("pareto_topn", "ml-100k", "topn-75-25", "ndcg@10"),
        ("pareto_rating", "ml-100k", "rating-5fold", "rmse"),
    ):
        cq = cost_quality(results, dataset, protocol, metric)
        if cq.empty:
            continue
        name = f"pareto__{dataset}__{protocol}"
        fig = plots.cost_quality(cq, metric, title=f"{dataset} · {protocol}", front="front_fit")
        front = cq.loc[cq["front_fit"], "model"].tolist()
        memory = cq.loc[cq["front_memory"], "model"].tolist()
        sections[key] = Section(
            f"Cost versus quality: {dataset}, {protocol}, {metric}",
            f"Every model on the board: median fit seconds (log) against {metric}. On the "
            f"Pareto front of fit seconds: {', '.join(front)}; of peak memory: "
            f"{', '.join(memory)}. A model off the front is beaten on both quality and cost "
            f"by one on it.",
            cq,
            table(f"{name}.csv", cq),
            figure(f"{name}.png", fig),
        )
        fig = plots.cost_quality(cq, metric, title=f"{dataset} · {protocol}",
                                 cost="peak_memory_mb", front="front_memory")  # fmt: skip
        sections[f"{key}_memory"] = Section(
            f"Memory versus quality: {dataset}, {protocol}, {metric}",
            f"The same models: median peak memory of fit or prediction (MB, log) against "
            f"{metric}, with the Pareto front of peak memory ({', '.join(memory)}).",
            None,
            None,
            figure(f"{name}__memory.png", fig),
        )
    meta_tables = results / "60_meta" / "tables"
    for key, path, x, label in (
        ("coldstart", meta_tables / "coldstart_curve__ndcg@10.csv", "k", "support size k"),
        ("pool", meta_tables / "coldstart_pool__ndcg@10.csv", "pool", "meta-train pool"),
    ):
        if not path.exists():
            continue
        every = pd.read_csv(path)
        curve = best_per_family(every)
        if curve.empty:
            continue
        fig = plots.coldstart_curves(curve, x=x, xlabel=label)
        title = (
            "Cold-start curves: the best model of every family"
            if key == "coldstart"
            else "Data size: meta-train users"
        )
        sections[key] = Section(
            title,
            f"ndcg@10 of new users against the {label} (from 60_meta), the best model of "
            f"each family per data set, mean and 95% CI over seeds. {_curve_best(curve, every, x)}",
            curve,
            table(f"{key}_best_per_family.csv", curve),
            figure(f"{key}_best_per_family.png", fig),
        )
    fractions = results / "50_transfer" / "tables" / "target_fraction_curves.csv"
    if fractions.exists():
        curve = pd.read_csv(fractions)
        fig = plots.target_fraction_curves(curve)
        sections["fractions"] = Section(
            "Data size: target-domain data for transfer",
            "ndcg@10 against the share of the target's training data (from 50_transfer), "
            "every transfer method and the non-transfer references.",
            None,
            None,
            figure("target_fraction_curves.png", fig),
        )
    activity = activity_quintiles(results)
    if not activity.empty:
        fig = plots.quintiles(activity, title="ml-100k · topn-75-25")
        sections["activity"] = Section(
            "Who benefits: users by activity",
            "ndcg@10 of each family's best model on ML-100K 75/25 by quintile of user "
            "activity (test items per user, a quarter of the user's ratings). NDCG rises with "
            "activity partly because active users have more relevant test items, so compare "
            f"families within a quintile. {_activity_text(activity)}",
            activity,
            table("activity_quintiles.csv", activity),
            figure("activity_quintiles.png", fig),
        )
    times = notebook_times(results)
    if not times.empty:
        sections["times"] = Section(
            "Wall time per notebook",
            f"The canonical run (run.json of each notebook): {times['wall_seconds'].sum():.0f} "
            f"s in all. A notebook rerun from the cell cache records only what it recomputed.",
            times,
            table("notebook_times.csv", times),
        )
    outline = {
        "title": "metarec: do meta-learning recommenders adapt better, and at what cost?",
        "intro": (
            "Every number below was computed from the result files under `results/` by "
            "`notebooks/90_summary.ipynb`; rerun the study with `make reproduce`. "
            f"Claims: {verdict_counts(claims)}."
        ),
        "sections": [
            {
                "title": s.title,
                "text": s.text,
                "table": s.table_path,
                "figure": s.figure_path,
                "latex": s.latex,
            }
            for s in sections.values()
        ],
    }
    atomic_write_json(out / "outline.json", outline)
    return sections


def notebook_times(results: str | Path) -> pd.DataFrame:
    """notebook, wall_seconds, seeds from each notebook's run.json (the summary's excluded)."""
    import json

    rows = []
    for path in sorted(Path(results).glob("*/run.json")):
        if path.parent.name == SUMMARY_STEM:
            continue
        run = json.loads(path.read_text())
        rows.append(
            {
                "notebook": path.parent.name,
                "wall_seconds": run.get("wall_seconds"),
                "seeds": str(run.get("seeds")),
                "git_commit": run.get("git_commit"),
            }
        )
    return pd.DataFrame(rows)


def _board_wins(boards: pd.DataFrame) -> str:
    best = boards[boards["is_best"]]
    counts = best["family"].value_counts()
    parts = ", ".join(f"{f} {int(n)}" for f, n in counts.items())
    return f"Boards won (best mean) by family: {parts} of {len(best)}."


def _curve_best(plotted: pd.DataFrame, every: pd.DataFrame, x: str) -> str:
    """The best plotted model at each point of a curve, and where a model that is not plotted
    (each family's plotted model is its best over the whole curve) is best at that point."""
    parts = []
    for dataset, part in plotted.groupby("dataset"):
        top = part.loc[part.groupby(x)["mean"].idxmax()]
        winners = ", ".join(f"{v:g}: {m}" for v, m in zip(top[x], top["model"], strict=True))
        text = f"{dataset}, best of the plotted models at each {x}: {winners}."
        rows = every[every["dataset"] == dataset]
        best = rows.loc[rows.groupby(x)["mean"].idxmax()]
        other = best[~best["model"].isin(part["model"])]
        if len(other):
            named = zip(other[x], other["model"], other["family"], strict=True)
            points = ", ".join(f"{v:g}: {m} ({f})" for v, m, f in named)
            text += f" Best of all models, where it is not plotted: {points}."
        parts.append(text)
    return " ".join(parts)


def _activity_text(activity: pd.DataFrame) -> str:
    wide = activity.pivot_table(index="quintile", columns="model", values="mean")
    best = wide.idxmax(axis=1)
    return "Best model per quintile: " + ", ".join(f"{q}: {m}" for q, m in best.items()) + "."


def show(section: Section, out: str | Path) -> list:
    """What a notebook cell displays for a section (`out`: the summary folder): its text,
    table and figure."""
    from IPython.display import Image, Markdown

    items: list = [Markdown(section.text)]
    if section.table is not None:
        items.append(section.table)
    if section.figure_path is not None:
        items.append(Image(filename=str(Path(out) / section.figure_path)))
    return items
