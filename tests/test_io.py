import pandas as pd
import pytest

from metarec_lib import io


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    io.atomic_write_csv(path, pd.DataFrame({"a": [1]}))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken)
    with pytest.raises(OSError):
        io.atomic_write_csv(path, pd.DataFrame({"a": [2]}))
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left


def test_gzip_csv_is_byte_reproducible(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4]})
    a = io.atomic_write_csv(tmp_path / "a.csv.gz", frame).read_bytes()
    b = io.atomic_write_csv(tmp_path / "sub" / "b.csv.gz", frame).read_bytes()
    assert a == b
    assert pd.read_csv(tmp_path / "a.csv.gz").equals(frame)
