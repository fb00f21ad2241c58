import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's tensor math on one intra-op thread; the previous setting is restored after.

    The models in these tests are tiny, so threads buy nothing, and on a machine whose cores are
    busy (a training run beside the tests) OpenMP's spinning workers make a 20 ms step take
    seconds. Module-scoped, so that module-scoped fixtures which train can ask for it too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
