"""Fused USF combination in Triton: out = Σ_k c_k · in_k (and optionally out2), float32 accumulation.

Kernel, wrapper and reference side by side (the reference is `usf_fast.backends.combine_torch`; the contract is `usf_fast.contract`).
The inputs are passed as a tuple of pointers and unrolled over K (a compile-time constant), so
one launch reads each input once and writes one or two outputs. Coefficients are a device
tensor, (K,) or per-sample (B, K): no host reads, replayable in a CUDA graph. Runs on the CPU
under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import triton
import triton.language as tl

from usf_fast.contract import KERNEL_DTYPES, check_combine_args

BLOCK = 1024


@triton.jit
def _combine_kernel(ptrs, c1_ptr, c2_ptr, out_ptr, out2_ptr, n, inner,
                    K: tl.constexpr, PER_SAMPLE: tl.constexpr, TWO: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if PER_SAMPLE:
        cbase = (offs // inner) * K
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.static_range(K):
        x = tl.load(ptrs[k] + offs, mask=mask, other=0.0).to(tl.float32)
        if PER_SAMPLE:
            c = tl.load(c1_ptr + cbase + k, mask=mask, other=0.0)
        else:
            c = tl.load(c1_ptr + k)
        acc += c * x
        if TWO:
            if PER_SAMPLE:
                c2 = tl.load(c2_ptr + cbase + k, mask=mask, other=0.0)
            else:
                c2 = tl.load(c2_ptr + k)
            acc2 += c2 * x
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if TWO:
        tl.store(out2_ptr + offs, acc2.to(out2_ptr.dtype.element_ty), mask=mask)


def combine_triton(inputs, coefs, out, coefs2=None, out2=None):
    """Same contract as `usf_fast.backends.combine_torch` (float32/float16/bfloat16 storage)."""
    check_combine_args(inputs, coefs, out, coefs2, out2, dtypes=KERNEL_DTYPES)
    n = out.numel()
    if n == 0:
        return out
    inner = n // out.shape[0]
    two = out2 is not None
    grid = (triton.cdiv(n, BLOCK),)
    _combine_kernel[grid](tuple(inputs), coefs, coefs2 if two else coefs, out, out2 if two else out, n, inner,
                          K=len(inputs), PER_SAMPLE=coefs.dim() == 2, TWO=two, BLOCK=BLOCK)
    return out
