"""Suite-wide setup: one tokenised-data cache per test session, offline Hugging Face, quiet DCP warnings."""

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("data-cache")
    old = os.environ.get("TURNOUT_DATA_CACHE")
    os.environ["TURNOUT_DATA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TURNOUT_DATA_CACHE", None)
    else:
        os.environ["TURNOUT_DATA_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is faster and steadier (OpenMP threads on a
    busy box turn microseconds into seconds). Test modules opt in with pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
