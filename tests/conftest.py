import sys
from pathlib import Path

import pytest
import torch

CHECKOUT = Path(__file__).resolve().parents[1]
if str(CHECKOUT) not in sys.path:  # the benchmark runners (benchmarks/runners) live outside the package
    sys.path.insert(0, str(CHECKOUT))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
