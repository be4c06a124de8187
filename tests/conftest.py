import os
import sys

import pytest
import torch
from hypothesis import settings


sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))

# No test depends on how busy the machine is: hypothesis' default 200 ms per-example deadline is a
# wall-clock assertion, so it is off for every test (tests/test_suite_rules.py keeps it so).
settings.register_profile("usf_fast", deadline=None)
settings.load_profile("usf_fast")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests are collected everywhere and skipped where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)

# Triton kernels run on the CPU through the interpreter when no GPU is present; the switch is
# read when triton.jit decorates, so it must be set before usf_fast.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
