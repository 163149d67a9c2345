"""Suite-wide setup: one tokenised-data cache per test session, offline Hugging Face, quiet DCP warnings."""

import os
import warnings

import pytest

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
