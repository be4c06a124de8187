"""A search over several processes (torchrun): where each process computes, its rank in the job,
and the process group around a run, with a peer that died or stalled reported as one clear error.

Chunks of candidates are spread over the processes and gathered (`S3Search._evaluate_new`); gloo
on CPUs, nccl with one GPU per process.
"""
from __future__ import annotations

import datetime
import math
import os
import time
from typing import Callable

import torch

__all__ = ["rank_and_world", "search_device", "in_process_group", "peer_failure", "process_sum", "past"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def process_sum(device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that sums a tensor over the processes of the job (all-reduce on `device`, then
    rank 0's result sent to every process, so that all hold the same bits and take the same
    decisions after it); the tensor comes back on its own device. The solve stage splits its
    training noise over the processes with it (`search.solve.fit_step`)."""
    import torch.distributed as dist

    def total(t: torch.Tensor) -> torch.Tensor:
        u = t.to(device=device, copy=True).contiguous()
        dist.all_reduce(u)
        dist.broadcast(u, 0)
        return u.to(t.device)
    return total


def past(deadline: float, total: Callable | None = None) -> bool:
    """`time.perf_counter()` is past `deadline` — on any of the processes `total` (`process_sum`)
    sums over, so that they all stop at the same point (each process's own clock and deadline
    differ a little; a process that stopped alone would leave the others waiting in a collective)."""
    over = time.perf_counter() > deadline
    if total is None:
        return over
    return bool(total(torch.tensor([float(over)], dtype=torch.float64))[0] > 0)


def search_device(spec: str) -> str:
    """--device: 'auto' = the GPU when there is one; under torchrun each process takes the GPU of its
    LOCAL_RANK (an explicit index is kept)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        spec = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu (or auto)")
        if dev.index is not None:   # torchrun's processes: each its own GPU (nccl needs it current)
            torch.cuda.set_device(dev)
    return spec


def peer_failure(e: BaseException) -> bool:
    """A collective that failed because another process is gone or silent (not a local error)."""
    import torch.distributed as dist
    if isinstance(e, getattr(dist, "DistBackendError", ())) or isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e).lower()
    return any(k in text for k in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                                   "peer", "gloo", "nccl"))


def in_process_group(run, device: str, timeout_s: float) -> int:
    """`run(rank)` in this process: directly outside torchrun (WORLD_SIZE unset or 1), else inside
    the job's process group (made here unless one exists), all processes waiting for each other
    before they leave it. A peer that is gone or silent for `timeout_s` is a ValueError."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run(0)
    import torch.distributed as dist  # launched by torchrun
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"--dist-timeout {timeout_s}: must be a number of seconds > 0")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    try:
        code = run(dist.get_rank())
        dist.barrier()   # rank 0 writes the outputs; no process leaves the group while another still uses it
    except RuntimeError as e:   # gloo / nccl: a peer died, was stopped, or never answered
        if not peer_failure(e):
            raise   # the network's own error, out of memory, ...: reported as it is
        first = " ".join(str(e).split())[:200]
        raise ValueError(f"a peer process of this torchrun job is gone or stalled (no answer within --dist-timeout "
                         f"{timeout_s:g} s: {first}); the log keeps the evaluations made: rerun with --resume") from e
    finally:
        if owned:
            try:
                dist.destroy_process_group()
            except RuntimeError:
                pass
    return code
