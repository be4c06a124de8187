"""Graph runner: capture a whole fixed-NFE sampling loop once, swap schedules in place.

`GraphSampler(model, nfe, shape)` holds the dense program of `nfe` evaluations (`usf_fast.dense`)
in static buffers: the noise, the per-sample evaluation times, the coefficient tables, every model
input and the result. `run(schedule, noise)` rewrites the tables in place and replays, so any
schedule of that NFE — or a batch mixing several, one per sample — runs without re-capture.

On CUDA the loop (model evaluations and fused combinations) is captured as one CUDA graph after a
warm-up; a model that cannot be captured (host syncs, data-dependent shapes) gets a warning naming
the error and the sampler runs the same static-buffer program eagerly. On the CPU the program
always runs eagerly (same buffers, same code path), so its logic is tested everywhere.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from .backends import coefficient_dtype
from .dense import basis_width, dense_program, device_tables, input_width, run_dense, stack_programs
from .model import DiffusionModel
from .schedule import Schedule

__all__ = ["GraphSampler"]


class GraphSampler:
    """Args:
        model: a `DiffusionModel`.
        nfe: model evaluations of every schedule this sampler runs.
        shape: batch shape (B, ...) of the noise.
        dtype, device: of the static buffers (float32/float16/bfloat16 for kernel backends).
        backend: combination backend ("auto" as in `usf_fast.sample`).
        cuda_graph: capture a CUDA graph (default: when device is CUDA).
        warmup: eager iterations before capture (lets lazy initialisation happen outside it).
    """

    def __init__(self, model: DiffusionModel, nfe: int, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                 device=None, backend: str = "auto", cuda_graph: bool | None = None, warmup: int = 2):
        if not isinstance(model, DiffusionModel):
            raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ValueError(f"nfe={nfe!r}: must be an integer >= 1")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s <= 0 for s in shape):
            raise ValueError(f"shape={shape}: need a batch dimension and positive sizes")
        self.model, self.nfe, self.shape, self.dtype = model, nfe, shape, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda'")
        self.backend = backend
        self.cuda_graph = cuda_graph
        self.warmup = warmup
        b = shape[0]
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=self.device)  # noqa: E731
        cdt = coefficient_dtype(dtype)
        self._noise = z(*shape)
        self._mean = model.mean_like(self._noise)
        self._times = z(b, nfe)
        self._A = [torch.zeros(b, input_width(e), dtype=cdt, device=self.device) for e in range(nfe)]
        self._F = torch.zeros(b, basis_width(nfe), dtype=cdt, device=self.device)
        self._inputs = [z(*shape) for _ in range(nfe)]
        self._out = z(*shape)
        self._graph = None
        self._loaded = None   # (schedules, assignment) whose tables are in the buffers now
        self.captured = False
        self.fallback_reason: str | None = None

    # ---- tables ---------------------------------------------------------------------------
    def load(self, schedules: Schedule | Sequence[Schedule], assignment=None) -> None:
        """Write the tables of `schedules` into the static buffers (in place). Loading the schedule
        objects (and assignment) that are loaded already does nothing: repeated runs of one schedule
        cost no host work (measured: 0.4 ms of table building per NFE-5 run otherwise)."""
        if isinstance(schedules, Schedule):
            schedules = [schedules]
        schedules = list(schedules)
        if not schedules:
            raise ValueError("schedules: need at least one schedule")
        for k, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                raise ValueError(f"schedules[{k}]: must be a usf_fast.Schedule, got {type(s).__name__}")
            if s.nfe != self.nfe:
                raise ValueError(f"schedules[{k}] has NFE {s.nfe}; this GraphSampler was built for NFE {self.nfe} "
                                 "(make one GraphSampler per NFE)")
        b = self.shape[0]
        if assignment is None:
            if b % len(schedules):
                raise ValueError(f"assignment: batch {b} does not split evenly over {len(schedules)} schedules; "
                                 "pass assignment= (one schedule index per sample)")
            assignment = np.repeat(np.arange(len(schedules)), b // len(schedules))
        assignment = np.asarray(assignment)
        if assignment.shape != (b,):
            raise ValueError(f"assignment: need {b} schedule indices (one per sample), got shape {assignment.shape}")
        if (self._loaded is not None and len(self._loaded[0]) == len(schedules)
                and all(a is b for a, b in zip(self._loaded[0], schedules)) and np.array_equal(self._loaded[1], assignment)):
            return   # the same schedules (immutable values) are loaded: no host work, no copies
        progs = [dense_program(s, self.model) for s in schedules]
        times, A, F = stack_programs(progs, assignment)
        t, a_list, f = device_tables(times, A, F, self.dtype, "cpu", coef_dtype=self._F.dtype)
        nb = self.device.type == "cuda"
        self._times.copy_(t, non_blocking=nb)
        for dst, src in zip(self._A, a_list):
            dst.copy_(src, non_blocking=nb)
        self._F.copy_(f, non_blocking=nb)
        self._loaded = (tuple(schedules), assignment.copy())

    # ---- running --------------------------------------------------------------------------
    def _eager(self):
        return run_dense(self.model, self._noise, self._times, self._A, self._F, backend=self.backend,
                         mean=self._mean, out=self._out, inputs=self._inputs)

    def _capture(self):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self._eager()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._eager()
        except Exception as e:  # host syncs, data-dependent shapes, unsupported ops
            self.fallback_reason = f"{type(e).__name__}: {e}"
            warnings.warn(f"GraphSampler: the model cannot be captured in a CUDA graph ({self.fallback_reason}); "
                          "running the same program eagerly", RuntimeWarning, stacklevel=3)
            self.cuda_graph = False
            torch.cuda.synchronize(self.device)
            _unstick_generator(self.device)
            return None
        self.captured = True
        return graph

    def run(self, schedules: Schedule | Sequence[Schedule], noise: torch.Tensor, assignment=None) -> torch.Tensor:
        """Sample with `schedules` (one, or several spread over the batch) from standard-normal
        `noise` of the captured shape. Returns a new tensor (the static result is copied out)."""
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != self.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise: shape {got} differs from this GraphSampler's shape {self.shape}")
        self.load(schedules, assignment)
        self._noise.copy_(noise, non_blocking=self.device.type == "cuda")
        if self.cuda_graph and self._graph is None:
            self._graph = self._capture()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._eager()
        return self._out.clone()


def _unstick_generator(device) -> None:
    """A capture that fails part-way can leave the device's default CUDA generator in capture mode
    (seen with torch 2.11: the next random draw anywhere in the process raises "Offset increment
    outside graph capture encountered unexpectedly"). Probe it with one draw, its offset put back
    (so the stream of random numbers is unchanged); if the draw fails, give the generator a fresh
    state with the same seed and offset."""
    dev = torch.device(device)
    gen = torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
    offset = gen.get_offset()
    try:
        torch.empty(1, device=dev).uniform_(generator=gen)
    except RuntimeError:
        fresh = torch.Generator(device=dev)
        fresh.manual_seed(gen.initial_seed())
        gen.graphsafe_set_state(fresh.graphsafe_get_state())
    gen.set_offset(offset)
