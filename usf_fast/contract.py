"""The combination contract every backend implements (`usf_fast.backends`, `usf_fast.kernels`):

    combine(inputs, coefs, out, coefs2=None, out2=None)
        out[b, ...]  = Σ_k coefs[k] · inputs[k][b, ...]       coefs: (K,) or per-sample (B, K)
        out2[b, ...] = Σ_k coefs2[k] · inputs[k][b, ...]      (optional second output)

Here: its argument checks, the storage dtypes of the kernels and the one coefficient-dtype rule.
"""
from __future__ import annotations

import torch

__all__ = ["KERNEL_DTYPES", "coefficient_dtype", "check_combine_args"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def coefficient_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coefficients and accumulation: float64 for float64 storage, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_combine_args(inputs, coefs, out, coefs2=None, out2=None, dtypes=None) -> None:
    """ValueError naming the argument for anything a backend cannot take."""
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError("inputs: need a non-empty list of tensors")
    if not isinstance(out, torch.Tensor) or out.dim() < 1:
        raise ValueError("out: must be a tensor with a batch dimension")
    if dtypes is not None and out.dtype not in dtypes:
        raise ValueError(f"out: dtype {out.dtype} not supported; allowed: {', '.join(map(str, dtypes))}")
    for k, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor) or t.shape != out.shape or t.dtype != out.dtype or t.device != out.device:
            raise ValueError(f"inputs[{k}]: must match out (shape {tuple(out.shape)}, {out.dtype}, {out.device})")
        if not t.is_contiguous():
            raise ValueError(f"inputs[{k}]: must be contiguous")
    if not out.is_contiguous():
        raise ValueError("out: must be contiguous")
    k_in, b = len(inputs), out.shape[0]
    for name, c in (("coefs", coefs), ("coefs2", coefs2)):
        if c is None:
            continue
        if not isinstance(c, torch.Tensor) or c.device != out.device or not c.is_contiguous():
            raise ValueError(f"{name}: must be a contiguous tensor on {out.device}")
        if tuple(c.shape) not in ((k_in,), (b, k_in)):
            raise ValueError(f"{name}: shape {tuple(c.shape)} must be (K,)=({k_in},) or (B, K)=({b}, {k_in})")
        if dtypes is not None and c.dtype != torch.float32:
            raise ValueError(f"{name}: must be float32, got {c.dtype}")
    if (coefs2 is None) != (out2 is None):
        raise ValueError("coefs2 and out2 go together")
    if out2 is not None and (out2.shape != out.shape or out2.dtype != out.dtype or out2.device != out.device
                             or not out2.is_contiguous()):
        raise ValueError("out2: must match out (shape, dtype, device, contiguous)")
