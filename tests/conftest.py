import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests use tiny models, which gain nothing from intra-op threads; and when other jobs
    share the 2 cores, OpenMP's spinning threads slow them 10× or more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
