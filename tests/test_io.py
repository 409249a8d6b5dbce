import pandas as pd
import pytest

from metarec_lib import io


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    io.atomic_write_csv(path, pd.DataFrame({"a": [1]}))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):  # failed at the rename, not before
        io.atomic_write_csv(path, pd.DataFrame({"a": [2]}))
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left


def test_gzip_csv_is_byte_reproducible(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4]})
    a = io.atomic_write_csv(tmp_path / "a.csv.gz", frame).read_bytes()
    b = io.atomic_write_csv(tmp_path / "sub" / "b.csv.gz", frame).read_bytes()
    assert a == b
    assert pd.read_csv(tmp_path / "a.csv.gz").equals(frame)


def test_a_written_file_gets_the_mode_open_would_give_not_mkstemps_0600(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = io.atomic_write_text(tmp_path / "r.md", "x")
        with open(tmp_path / "plain.md", "w") as fh:
            fh.write("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.md").stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io._UMASK


def test_a_figure_that_fails_to_save_leaves_neither_a_temp_file_nor_an_open_figure(
    tmp_path, monkeypatch
):
    import matplotlib.pyplot as plt

    from metarec_lib import plots

    fig, ax = plt.subplots()
    ax.plot([0, 1])

    def broken(target, **kwargs):
        target.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save(fig, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == [] and not plt.fignum_exists(fig.number)
