from metarec_lib import code_fingerprint, digest_sources


def test_digest_follows_python_sources_only(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    first = digest_sources(tmp_path)
    assert len(first) == 16 and digest_sources(tmp_path) == first
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "pkg" / "a.pyc").write_bytes(b"\0")
    assert digest_sources(tmp_path) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert digest_sources(tmp_path) != first
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").rename(tmp_path / "pkg" / "b.py")  # same content, other place
    assert digest_sources(tmp_path) != first


def test_cache_keys_carry_the_code_fingerprint(monkeypatch):
    import metarec_lib.runner as runner
    from metarec_lib.data import load_dataset
    from metarec_lib.models.registry import get_model

    data = load_dataset("synthetic", n_users=20, n_items=10, density=0.3, seed=1)
    exp = runner.Experiment("x", progress=False)
    key = exp._key(data, "p", "MostPop", get_model("MostPop"), 1, "topn", 10)
    assert len(code_fingerprint()) == 16
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "0" * 16)
    assert exp._key(data, "p", "MostPop", get_model("MostPop"), 1, "topn", 10) != key
