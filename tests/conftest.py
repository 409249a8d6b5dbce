"""Shared fixtures: real MovieLens data when METAREC_DATA_DIR is set, else the test skips."""

import os

import pytest


@pytest.fixture(scope="session")
def ml100k_holdout():
    """(train, test) Interactions of ML-100K's per-user 75/25 holdout with seed 42."""
    if not os.environ.get("METAREC_DATA_DIR"):
        pytest.skip("METAREC_DATA_DIR is not set (MovieLens files)")
    from metarec_lib.data import load_dataset
    from metarec_lib.splits import holdout_per_user

    ds = load_dataset("ml-100k")
    split = holdout_per_user(ds.interactions, test_fraction=0.25, seed=42)
    enc = ds.encoder()
    return enc.encode(split.train), enc.encode(split.test)


@pytest.fixture
def one_torch_thread():
    """Tiny networks: extra intra-op threads only add overhead (and stall badly when the two
    cores are shared), so a test runs torch single-threaded and restores the count after.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
