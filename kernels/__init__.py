"""Triton kernels of usf_fast (installed as `usf_fast.kernels`)."""
