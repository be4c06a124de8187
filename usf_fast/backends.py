"""Combination backends: one contract, several implementations.

    combine(inputs, coefs, out, coefs2=None, out2=None)
        out[b, ...]  = Σ_k coefs[k] · inputs[k][b, ...]       coefs: (K,) or per-sample (B, K)
        out2[b, ...] = Σ_k coefs2[k] · inputs[k][b, ...]      (optional second output)

inputs, out and out2 share shape, dtype (float32 / float16 / bfloat16; the torch backend also
takes float64) and device; accumulation is float32 (float64 for float64 storage). `out` may be
one of the inputs (the update is elementwise). Coefficients live in tensors on the device so no
backend reads them on the host.

    torch   eager PyTorch, any device and dtype (the reference for the others)
    cpu     C++ / OpenMP extension usf_fast._C_cpu (csrc/combine_cpu.cpp)
    triton  Triton kernel (kernels/combine.py, installed as usf_fast.kernels)
    cuda    CUDA C++ extension usf_fast._C_cuda (csrc/combine_cuda.cu)
"""
from __future__ import annotations

import functools
import os

import torch

from .contract import KERNEL_DTYPES, check_combine_args, coefficient_dtype

__all__ = ["coefficient_dtype", "BACKENDS", "available_backends", "backend_status", "get_combine", "combine_torch", "resolve_backend"]

BACKENDS = ("torch", "cpu", "triton", "cuda")
CUDA_MAX_INPUTS = 32  # csrc/combine_cuda.cu kMaxInputs


def _per_sample(c: torch.Tensor, k: int, ref: torch.Tensor) -> torch.Tensor:
    if c.dim() == 1:
        return c[k]
    return c[:, k].reshape((-1,) + (1,) * (ref.dim() - 1))


def combine_torch(inputs, coefs, out, coefs2=None, out2=None):
    check_combine_args(inputs, coefs, out, coefs2, out2)
    acc_dtype = coefficient_dtype(out.dtype)
    c1 = coefs.to(acc_dtype)
    acc = _per_sample(c1, 0, out) * inputs[0].to(acc_dtype)
    for k in range(1, len(inputs)):
        acc = acc + _per_sample(c1, k, out) * inputs[k].to(acc_dtype)
    if out2 is not None:
        c2 = coefs2.to(acc_dtype)
        acc2 = _per_sample(c2, 0, out2) * inputs[0].to(acc_dtype)
        for k in range(1, len(inputs)):
            acc2 = acc2 + _per_sample(c2, k, out2) * inputs[k].to(acc_dtype)
        out2.copy_(acc2)
    out.copy_(acc)
    return out


def _checked(ext_combine):
    """The extension behind the contract's errors. The extension checks every argument itself, so
    the Python checks run only to name the argument when it refuses (a call costs ~1 us, not ~6)."""
    def combine(inputs, coefs, out, coefs2=None, out2=None):
        if not isinstance(inputs, (list, tuple)) or not inputs:
            check_combine_args(inputs, coefs, out, coefs2, out2, dtypes=KERNEL_DTYPES)
        if len(inputs) > CUDA_MAX_INPUTS and getattr(out, "is_cuda", False):
            # the kernel's pointer table holds 32; wider combinations (rare: order 4 with many
            # active points) take the eager path rather than failing
            return combine_torch(inputs, coefs, out, coefs2, out2)
        try:
            return ext_combine(list(inputs), coefs, out, coefs2, out2)
        except (RuntimeError, TypeError):
            check_combine_args(inputs, coefs, out, coefs2, out2, dtypes=KERNEL_DTYPES)
            raise
    return combine


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """(combine function or None, reason it is unavailable)."""
    if name == "torch":
        return combine_torch, ""
    if name == "cpu":
        try:
            from . import _C_cpu
        except ImportError as e:
            return None, f"C++ extension usf_fast._C_cpu not built ({e}); reinstall with `pip install -e .`"
        return _checked(_C_cpu.combine), ""
    if name == "cuda":
        try:
            from . import _C_cuda
        except ImportError as e:
            return None, f"CUDA extension usf_fast._C_cuda not built ({e}); needs nvcc and a CUDA build of torch at install"
        return _checked(_C_cuda.combine), ""
    if name == "triton":
        try:
            from .kernels.combine import combine_triton
        except ImportError as e:
            return None, f"triton not importable ({e})"
        return combine_triton, ""
    raise ValueError(f"backend={name!r}: must be one of auto, reference, {', '.join(BACKENDS)}")


def _runs_on(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "torch":
        return True, ""
    if name == "cpu":
        return (device.type == "cpu", "the cpu backend runs on CPU tensors only")
    if name == "cuda":
        return (device.type == "cuda", "the cuda backend needs CUDA tensors")
    if name == "triton":
        if device.type == "cuda":
            return True, ""
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return True, ""
        return False, "triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors, slow: for tests)"
    return False, ""


def backend_status(device: torch.device | str = "cpu") -> dict[str, tuple[bool, str]]:
    """name → (usable on `device`, why not)."""
    device = torch.device(device)
    out = {}
    for name in BACKENDS:
        fn, why = _load(name)
        if fn is None:
            out[name] = (False, why)
        else:
            ok, why = _runs_on(name, device)
            out[name] = (ok, why)
    return out


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    return [k for k, (ok, _) in backend_status(device).items() if ok]


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Pick `auto`'s backend, or check an explicit one; clear errors for unusable choices."""
    if backend == "auto":
        if dtype not in KERNEL_DTYPES:
            return "torch"
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
        status = backend_status(device)
        return next(b for b in order if status[b][0])
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of auto, reference, {', '.join(BACKENDS)}")
    ok, why = backend_status(device)[backend]
    if not ok:
        raise ValueError(f"backend={backend!r} is not usable for {device.type} tensors here: {why}")
    if backend != "torch" and dtype not in KERNEL_DTYPES:
        raise ValueError(f"backend={backend!r}: dtype {dtype} not supported; kernels store float32, float16 "
                         "or bfloat16 (use backend='torch' or 'reference' for float64)")
    return backend


def get_combine(name: str):
    fn, why = _load(name)
    if fn is None:
        raise ValueError(f"backend={name!r} unavailable: {why}")
    return fn
