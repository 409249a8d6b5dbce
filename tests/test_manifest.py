"""The results manifest: what it lists, what `check` catches, and metrics comparison."""

import hashlib
import json

import pandas as pd
import pytest

from metarec_lib import manifest as mf

METRICS = (
    "dataset,protocol,family,model,seed,metric,value\n"
    "synthetic,holdout,mf,ALS,42,ndcg@10,0.25\n"
    "synthetic,holdout,mf,ALS,42,recall@10,0.5\n"
    "synthetic,holdout,mf,ALS,43,ndcg@10,\n"
)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A small results tree with a cache folder, a hidden file and a stale manifest.json."""
    monkeypatch.setattr("metarec_lib.pipeline.environment", lambda: {"python": "test"})
    root = tmp_path / "results"
    (root / "10_x" / "figures").mkdir(parents=True)
    (root / "10_x" / "metrics.csv").write_text(METRICS)
    (root / "10_x" / "figures" / "a.png").write_bytes(b"\x89PNG tiny")
    (root / "run.json").write_bytes(b"{}")
    (root / "manifest.json").write_text('{"files": {}}')
    (root / ".cache" / "deep").mkdir(parents=True)
    (root / ".cache" / "deep" / "blob.bin").write_bytes(b"cached")
    (root / "10_x" / ".10_x.ipynb").write_text("running")
    (root / "10_x" / "manifest.json").write_text("not the top-level manifest")
    return root


def test_manifest_lists_files_with_hashes(results):
    m = mf.build_manifest(results, datasets=["synthetic"])
    assert sorted(m["files"]) == [
        "10_x/figures/a.png", "10_x/manifest.json", "10_x/metrics.csv", "run.json",
    ]  # fmt: skip
    png = m["files"]["10_x/figures/a.png"]
    assert png == {"sha256": hashlib.sha256(b"\x89PNG tiny").hexdigest(), "bytes": 9}
    assert m["files"]["run.json"]["sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert m["environment"] == {"python": "test"}
    assert set(m["git"]) == {"commit", "dirty"}
    synthetic = m["datasets"]["synthetic"]
    assert len(synthetic["digest"]) == 64 and synthetic["n_interactions"] > 0
    assert m["created"].endswith("+00:00")


def test_write_excludes_itself_and_records_missing_data(results, monkeypatch):
    from metarec_lib.data import DataUnavailable

    def unavailable(name, **kw):
        raise DataUnavailable(f"{name}: no files here")

    monkeypatch.setattr("metarec_lib.data.load_dataset", unavailable)
    path = mf.write_manifest(results, datasets=["ml-100k"])
    assert path == results / "manifest.json"
    m = json.loads(path.read_text())
    assert m["datasets"] == {"ml-100k": {"missing": "DataUnavailable: ml-100k: no files here"}}
    # Rewriting lists the same files: the top-level manifest never lists itself.
    assert sorted(mf.build_manifest(results, datasets=[])["files"]) == sorted(m["files"])
    assert mf.check_manifest(results) == []


def test_check_catches_tampering_deletion_and_addition(results):
    mf.write_manifest(results, datasets=[])
    metrics = results / "10_x" / "metrics.csv"
    metrics.write_text(METRICS.replace("0.25", "0.26"))
    (results / "run.json").unlink()
    (results / "10_x" / "extra.csv").write_text("a\n1\n")
    (results / ".cache" / "new.bin").write_bytes(b"ignored")
    (results / "10_x" / ".hidden").write_bytes(b"ignored")
    problems = mf.check_manifest(results)
    assert len(problems) == 3
    assert problems[0] == "unlisted: 10_x/extra.csv"
    assert problems[1].startswith("changed: 10_x/metrics.csv (sha256 ")
    assert problems[2] == "missing: run.json"


def test_check_errors_name_the_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        mf.check_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        mf.check_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"git": {}}')
    with pytest.raises(ValueError, match='manifest.json: no "files"'):
        mf.check_manifest(tmp_path)


def test_cli_write_and_check_exit_codes(results, capsys):
    assert mf.main(["write", str(results), "--datasets"]) == 0
    assert "manifest: 4 files, commit" in capsys.readouterr().out
    assert mf.main(["check", str(results)]) == 0
    assert "OK, 4 files" in capsys.readouterr().out
    (results / "run.json").write_bytes(b"{ }")
    assert mf.main(["check", str(results)]) == 1
    out = capsys.readouterr().out
    assert "changed: run.json" in out and "1 problem(s)" in out


def _pair(tmp_path, fresh_text):
    committed, fresh = tmp_path / "committed.csv", tmp_path / "fresh.csv"
    committed.write_text(METRICS)
    fresh.write_text(fresh_text)
    return committed, fresh


def test_compare_identical_and_within_atol(tmp_path):
    assert mf.compare_metrics(*_pair(tmp_path, METRICS)).empty  # NaN == NaN
    near = METRICS.replace("0.25", "0.2500000005")
    assert mf.compare_metrics(*_pair(tmp_path, near)).empty


def test_compare_reports_a_changed_value(tmp_path):
    diffs = mf.compare_metrics(*_pair(tmp_path, METRICS.replace("0.25", "0.251")))
    assert len(diffs) == 1
    row = diffs.iloc[0]
    assert (row["problem"], row["metric"], row["seed"]) == ("differs", "ndcg@10", "42")
    assert (row["committed"], row["fresh"]) == (0.25, 0.251)
    assert row["abs_diff"] == pytest.approx(1e-3)
    assert mf.compare_metrics(*_pair(tmp_path, METRICS.replace("0.25", "0.251")), atol=2e-3).empty


def test_compare_one_sided_rows(tmp_path):
    extra = METRICS + "synthetic,holdout,mf,ALS,44,ndcg@10,0.3\n"
    diffs = mf.compare_metrics(*_pair(tmp_path, extra))
    assert diffs[["seed", "problem"]].values.tolist() == [["44", "only in fresh"]]
    assert pd.isna(diffs.loc[0, "committed"]) and diffs.loc[0, "fresh"] == 0.3
    fewer = "\n".join(METRICS.splitlines()[:3]) + "\n"
    diffs = mf.compare_metrics(*_pair(tmp_path, fewer))
    assert diffs[["seed", "problem"]].values.tolist() == [["43", "only in committed"]]


def test_compare_missing_column_names_file_and_column(tmp_path):
    no_seed = "\n".join(",".join(p for i, p in enumerate(line.split(",")) if i != 4)
                        for line in METRICS.splitlines())  # fmt: skip
    committed, fresh = _pair(tmp_path, no_seed)
    with pytest.raises(ValueError, match=r"fresh\.csv: missing column\(s\) \['seed'\]"):
        mf.compare_metrics(committed, fresh)


def test_cli_compare(tmp_path, capsys):
    committed, fresh = _pair(tmp_path, METRICS.replace("0.5", "0.6"))
    assert mf.main(["compare", str(committed), str(fresh)]) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "1 of 3 metric values differ beyond atol=1e-06" in out
    assert mf.main(["compare", str(committed), str(fresh), "--atol", "0.2"]) == 0
    assert "0 of 3 metric values differ beyond atol=0.2" in capsys.readouterr().out
