"""The compiled backends are built by `pip install -e .` (setup.py)."""
import os
import shutil

import pytest
import torch

# USF_FAST_NO_EXT=1 (set when installing) skips both backends on purpose: then these tests say so
# instead of failing; without it a missing extension is a failed build, and a failure here
NO_EXT = pytest.mark.skipif(os.environ.get("USF_FAST_NO_EXT") == "1",
                            reason="USF_FAST_NO_EXT=1: installed without the compiled backends on purpose")


@NO_EXT
def test_cpu_extension_is_built():
    from usf_fast import _C_cpu
    assert hasattr(_C_cpu, "combine")


def _cuda_toolchain() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return torch.version.cuda is not None and (shutil.which("nvcc") or os.path.exists(os.path.join(home, "bin", "nvcc")))


@NO_EXT
@pytest.mark.skipif(not _cuda_toolchain(), reason="needs nvcc and a CUDA build of torch (the install builds it there)")
def test_cuda_sources_compiled_into_an_importable_extension():
    """csrc/combine_cuda.cu compiled with nvcc against this torch; importing works without a GPU."""
    from usf_fast import _C_cuda
    assert hasattr(_C_cuda, "combine")
    assert "CUDA" in _C_cuda.__doc__
