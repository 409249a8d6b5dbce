"""Every notebook runs under papermill in smoke mode; sources are committed without outputs."""

import json
from pathlib import Path

import nbformat
import pytest

from metarec_lib.pipeline import NotebookFailed, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
REQUIRED = {"datasets", "seeds", "smoke", "results_dir", "device"}


def test_there_are_notebooks():
    assert [p.stem for p in NOTEBOOKS][:1] == ["00_data"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    names = {
        line.split("=")[0].strip()
        for line in tagged[0].source.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert REQUIRED <= names, f"{path.name}: parameters cell lacks {REQUIRED - names}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_smoke_mode(path, tmp_path):
    if path.stem == "90_summary":  # it reads the other notebooks' results: give it some
        _results_fixture(tmp_path)
    out = run_notebook(
        path, results_dir=tmp_path, parameters={"smoke": True, "seeds": [1, 2]}, timeout=300
    )
    assert out == tmp_path / path.stem / f"{path.stem}.ipynb" and out.exists()
    run = json.loads((tmp_path / path.stem / "run.json").read_text())
    assert run["parameters"]["smoke"] is True and run["seeds"] == [1, 2]
    assert "datasets" in run["parameters"]  # the notebook defaults are recorded too
    assert run["packages"]["numpy"] and run["wall_seconds"] > 0


def test_unknown_data_set_fails_naming_notebook_and_cell(tmp_path):
    path = ROOT / "notebooks" / "00_data.ipynb"
    (tmp_path / "00_data").mkdir()
    (tmp_path / "00_data" / "run.json").write_text("{}")  # an earlier run's record
    with pytest.raises(NotebookFailed) as err:
        run_notebook(path, results_dir=tmp_path, parameters={"datasets": ["ml-1b"], "smoke": True})
    msg = str(err.value)
    assert "00_data.ipynb failed at cell" in msg and "unknown data set(s) ['ml-1b']" in msg
    assert (tmp_path / "00_data" / "00_data.failed.ipynb").exists()
    assert not (tmp_path / "00_data" / "00_data.ipynb").exists()
    # whatever tables the failed run wrote, no earlier run's record describes them
    assert not (tmp_path / "00_data" / "run.json").exists()


def test_parse_param_reads_json_or_keeps_the_string():
    from metarec_lib.pipeline import parse_param

    assert parse_param('sequential_datasets=["ml-100k", "ml-latest-small"]') == (
        "sequential_datasets", ["ml-100k", "ml-latest-small"])  # fmt: skip
    assert parse_param("budget=4") == ("budget", 4)
    assert parse_param("device=cuda") == ("device", "cuda")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_param("no-equals-sign")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_param("1bad=3")


def test_extra_parameters_reach_only_the_notebooks_that_define_them(tmp_path, monkeypatch):
    from metarec_lib import pipeline

    # 00_data has no `budget`: passing one must not fail it (papermill would inject it blindly).
    given = {}

    def record(nb, **kw):
        given[Path(nb).stem] = kw["parameters"]

    monkeypatch.setattr(pipeline, "run_notebook", record)
    notebooks = [ROOT / "notebooks" / f"{stem}.ipynb" for stem in ("00_data", "10_content")]
    pipeline.run_pipeline(notebooks, results_dir=tmp_path, smoke=True,
                          extra={"budget": 1, "seeds": [3]})  # fmt: skip
    assert "budget" not in given["00_data"] and given["00_data"]["seeds"] == [3]
    assert given["10_content"]["budget"] == 1 and given["10_content"]["seeds"] == [3]


def _results_fixture(root: Path) -> None:
    """Two family notebooks' results on shared boards, enough for the summary's tables."""
    import numpy as np

    from metarec_lib.testing import write_results_tree

    users = np.arange(1, 31)
    base = np.linspace(0.1, 0.5, len(users))
    write_results_tree(root / "20_collaborative", {
        ("ml-100k", "topn-75-25", "collaborative", "EASE"): {"ndcg@10": base + 0.1},
        ("ml-100k", "rating-5fold", "collaborative", "BiasedMF"): {"rmse": base + 0.8},
    }, users)  # fmt: skip
    write_results_tree(root / "60_meta", {
        ("ml-100k", "coldstart-users@k=5", "meta", "MAML"): {"ndcg@10": base},
        ("ml-100k", "coldstart-users@k=5", "collaborative", "MostPop"): {"ndcg@10": base + 0.05},
    }, users)  # fmt: skip


def test_the_summary_runs_last():
    from metarec_lib.pipeline import run_order

    given = ["notebooks/95_scale.ipynb", "notebooks/90_summary.ipynb", "notebooks/00_data.ipynb",
             "notebooks/60_meta.ipynb"]  # fmt: skip
    assert [Path(p).stem for p in run_order(given)] == ["00_data", "60_meta", "95_scale",
                                                        "90_summary"]  # fmt: skip


def test_a_parameter_no_notebook_defines_is_an_error_before_anything_runs(tmp_path):
    from metarec_lib.pipeline import run_pipeline

    with pytest.raises(ValueError, match=r"\['budgett'\] are defined by none of the notebooks "
                                         r"\(00_data\)"):  # fmt: skip
        run_pipeline([ROOT / "notebooks" / "00_data.ipynb"], results_dir=tmp_path, smoke=True,
                     extra={"budgett": 1, "seeds": [3]})  # fmt: skip
    assert not (tmp_path / "00_data").exists()
