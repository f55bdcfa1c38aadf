"""Shared fixtures of the detmodels tests."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on the shared 2-core CI machine small models run far faster on one
    thread than on contended ones (measured up to ~30×)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
