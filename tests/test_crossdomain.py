"""Transfer experiment plumbing: epochs per fraction, curves, data saved, paired tests, and a
smoke run of the whole grid on tiny synthetic domains."""

import numpy as np
import pandas as pd
import pytest

from metarec_lib import crossdomain
from metarec_lib.notebook import validate_parameters


def test_epochs_keep_the_samples_seen_and_are_capped():
    assert crossdomain.epochs_for(10, 1.0) == 10
    assert crossdomain.epochs_for(10, 0.25) == 40
    assert crossdomain.epochs_for(3, 0.1) == 30
    assert crossdomain.epochs_for(20, 0.01) == crossdomain.MAX_EPOCHS


def test_method_at_shares_tuned_values_and_unscaled_methods_take_full_epochs():
    tuned = {"epochs": 120, "factors": 16, "learning_rate": 0.004, "reg": 0.02}
    pft = crossdomain.method_at("PretrainFinetune", tuned, 6, "cpu")
    assert pft.params["epochs"] == 120 and pft.params["factors"] == 16
    assert pft.params["reg"] == 0.02
    for name in ("SourceOnly", "JointTraining"):  # epochs over the source: the full-data ones
        assert crossdomain.method_at(name, tuned, 6, "cpu").params["epochs"] == 6
    capped = crossdomain.method_at("PretrainFinetune", tuned, 6, "cpu", source_epochs=2)
    assert capped.params["source_epochs"] == 2
    # A cap for a parameter the method does not have is ignored.
    assert (
        "source_epochs"
        not in crossdomain.method_at("TargetOnly", tuned, 6, "cpu", source_epochs=2).params
    )


def _table(rows):
    """curves-like table from (setting, relatedness, model, fraction, mean)."""
    frame = pd.DataFrame(rows, columns=["setting", "relatedness", "model", "fraction", "mean"])
    return frame.assign(ci_low=frame["mean"] - 0.01, ci_high=frame["mean"] + 0.01)


def test_data_saved_by_hand():
    target_only = [("s", np.nan, "TargetOnly", f, m)
                   for f, m in ((0.01, 0.05), (0.1, 0.10), (0.25, 0.20), (1.0, 0.30))]  # fmt: skip
    table = _table([*target_only, ("s", np.nan, "PretrainFinetune", 0.1, 0.15)])
    row = crossdomain.data_saved(table).iloc[0]
    assert row["target_only_fraction"] == 0.25
    # 0.15 lies halfway between 0.10 (at 0.1) and 0.20 (at 0.25) on a log-fraction axis.
    assert row["target_only_fraction_interpolated"] == pytest.approx(np.sqrt(0.1 * 0.25))
    assert "1.6x" in row["saved"]
    never = _table([*target_only, ("s", np.nan, "PretrainFinetune", 0.1, 0.5)])
    assert np.isnan(crossdomain.data_saved(never).iloc[0]["target_only_fraction"])
    assert "never reaches" in crossdomain.data_saved(never).iloc[0]["saved"]
    none = _table([*target_only, ("s", np.nan, "PretrainFinetune", 0.1, 0.08)])
    assert crossdomain.data_saved(none).iloc[0]["saved"].startswith("none")


def test_transfer_grid_runs_and_its_tables_are_consistent(tmp_path):
    """A tiny smoke grid: every method at two fractions on two synthetic settings, written per
    the results contract; the readers give one curve point per method and fraction."""
    config = validate_parameters("50_x", datasets=["synthetic"], seeds=[1, 2], smoke=True,
                                 results_dir=tmp_path, device="cpu")  # fmt: skip
    settings = crossdomain.build_settings({"synthetic": None}, [0.0, 1.0], smoke=True)
    rows, tuned = crossdomain.run_transfer(config, settings, fractions=[0.1, 1.0], budget=1,
                                           reference_budget=1)  # fmt: skip
    assert set(rows["family"]) == {"transfer", "collaborative"}
    # Tuned per (setting, fraction): 2 settings x 2 fractions x 3 models.
    assert set(tuned["model"]) == {"TargetOnly", "EASE", "MostPop"} and len(tuned) == 12
    assert set(tuned["fraction"]) == {0.1, 1.0}
    metrics = pd.read_csv(tmp_path / "50_x" / "metrics.csv")
    protocols = set(metrics["protocol"])
    assert protocols == {f"xdomain-synthetic@rel={r},frac={f}" for r in ("0.0", "1.0")
                         for f in ("0.1", "1.0")}  # fmt: skip
    table = crossdomain.curves(metrics)
    assert len(table) == 2 * 2 * (len(crossdomain.METHODS) + len(crossdomain.REFERENCES))
    assert set(table["relatedness"]) == {0.0, 1.0} and set(table["fraction"]) == {0.1, 1.0}
    versus = crossdomain.versus_target_only(tmp_path / "50_x", metrics)
    assert set(versus["reference"]) == {"TargetOnly"}
    assert not set(crossdomain.REFERENCES) & set(versus["model"])
    assert set(versus["outcome"]) <= {"wins", "loses", "tie"}
    text = crossdomain.narrative(crossdomain.data_saved(table), versus)
    assert "Data saved" in text and "Negative transfer" in text


def test_relatedness_effect_and_references_lead_by_hand():
    rows = []
    for rel, target, joint in ((0.0, 0.40, 0.35), (1.0, 0.40, 0.46)):
        for model, family, mean in (("TargetOnly", "transfer", target),
                                    ("JointTraining", "transfer", joint),
                                    ("MostPop", "collaborative", 0.30)):  # fmt: skip
            rows.append(("xdomain-synthetic", rel, model, 1.0, mean, family))
    rows += [("xdomain-genre", np.nan, "TargetOnly", 0.1, 0.10, "transfer"),
             ("xdomain-genre", np.nan, "JointTraining", 0.1, 0.12, "transfer"),
             ("xdomain-genre", np.nan, "MostPop", 0.1, 0.15, "collaborative")]  # fmt: skip
    table = pd.DataFrame(rows, columns=["setting", "relatedness", "model", "fraction", "mean",
                                        "family"])  # fmt: skip
    effect = crossdomain.relatedness_effect(table).set_index("relatedness")
    assert effect.loc[0.0, "JointTraining"] == pytest.approx(-0.05)  # negative transfer
    assert effect.loc[1.0, "JointTraining"] == pytest.approx(0.06)
    assert effect.loc[0.0, "TargetOnly"] == pytest.approx(0.40)
    lead = crossdomain.references_lead(table)
    assert len(lead) == 1  # only the genre point is at a fraction <= 0.1
    row = lead.iloc[0]
    assert (row["best_reference"], row["best_transfer"]) == ("MostPop", "JointTraining")
    text = crossdomain.narrative(pd.DataFrame(columns=["setting", "relatedness",
                                                       "pretrain_finetune_at", "goal", "saved"]),
                                 pd.DataFrame(), table)  # fmt: skip
    assert "relatedness 0: TargetOnly 0.400; JointTraining -0.050" in text
    assert "on 1 of 1 (setting, fraction) points: MostPop 0.150 vs JointTraining 0.120" in text
