"""Build script. Metadata lives in pyproject.toml.

Compiled extensions (both optional: if a build fails, the install still succeeds and says why):
  usf_fast._C_cpu   csrc/combine_cpu.cpp   C++ / OpenMP, built everywhere
  usf_fast._C_cuda  csrc/combine_cuda.cu   CUDA, built where nvcc and a CUDA build of torch exist
                                           (arch list: $TORCH_CUDA_ARCH_LIST, default "8.0;9.0")
Set USF_FAST_NO_EXT=1 to skip both, USF_FAST_NO_CUDA=1 to skip the CUDA one.
"""
import os
import sys

from setuptools import setup

# usf_fast.weights is a data package (the digits networks' .pt files); usf_fast.kernels is the link
# usf_fast/kernels -> ../kernels (the Triton sources keep their top-level folder, which is not a
# package so it never shadows PyPI's `kernels`: kernels/README.md); both are namespace packages
PACKAGES = ["usf_fast", "usf_fast.kernels", "usf_fast.search", "usf_fast.adapters", "usf_fast.models", "usf_fast.weights"]


def _extensions():
    if os.environ.get("USF_FAST_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except ImportError:
        print("usf_fast: torch is not installed at build time; skipping the compiled backends", file=sys.stderr)
        return [], {}

    exts = [ce.CppExtension("usf_fast._C_cpu", ["csrc/combine_cpu.cpp"],
                            extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])]
    why_not = None
    if os.environ.get("USF_FAST_NO_CUDA") == "1":
        why_not = "USF_FAST_NO_CUDA=1"
    elif torch.version.cuda is None:
        why_not = "torch is a CPU-only build"
    elif ce.CUDA_HOME is None:
        why_not = "nvcc not found (set CUDA_HOME)"
    if why_not is None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(ce.CUDAExtension("usf_fast._C_cuda", ["csrc/combine_cuda.cu"], include_dirs=_cuda_library_headers(ce),
                                     extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]}))
    else:
        print(f"usf_fast: not building the CUDA backend: {why_not}", file=sys.stderr)

    class OptionalBuildExt(ce.BuildExtension):
        failed: set = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # an optional backend must not break the install
                self.failed.add(ext.name)
                print(f"usf_fast: WARNING: building {ext.name} failed ({type(e).__name__}: {e}); "
                      f"that backend will be unavailable (see `usf-fast info`)", file=sys.stderr)

        def _built(self):
            return [e for e in self.extensions if e.name not in self.failed]

        def copy_extensions_to_source(self):
            self.extensions = self._built()
            super().copy_extensions_to_source()

        def get_outputs(self):
            self.extensions = self._built()
            return super().get_outputs()

        def get_output_mapping(self):
            self.extensions = self._built()
            return super().get_output_mapping()

    return exts, {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


def _cuda_library_headers(ce):
    """torch's CUDA headers include cuSPARSE/cuBLAS headers that pip-installed CUDA wheels ship
    under site-packages/nvidia/*/include rather than in CUDA_HOME."""
    if os.path.exists(os.path.join(ce.CUDA_HOME, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        for sub in sorted(os.listdir(root)):
            inc = os.path.join(root, sub, "include")
            if os.path.exists(os.path.join(inc, "cusparse.h")):
                dirs.append(inc)
    return dirs


ext_modules, cmdclass = _extensions()
setup(packages=PACKAGES, package_data={"usf_fast.weights": ["*.pt"]},
      ext_modules=ext_modules, cmdclass=cmdclass)
