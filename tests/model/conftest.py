"""Model-test setup: HF offline and quiet, a fixed seed and one intra-op thread per test.

One thread: the models here are tiny, and on a shared 2-core machine a busy neighbour makes 2-thread OpenMP
barriers 10-20x slower (measured), while 1 thread barely notices.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
