"""`usf_fast.sample`: compile the schedule to a plan and run it on the fastest usable backend."""
from __future__ import annotations

import weakref
from typing import Callable

import torch

from .checks import check_inputs, initial_state, warn_if_not_finite
from .executor import execute
from .graph import GraphSampler
from .model import DiffusionModel
from .plan import cached_plan
from .reference import reference_sample
from .schedule import Schedule

__all__ = ["sample"]


def sample(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor | None = None, shape=None,
           generator: torch.Generator | None = None, *, backend: str = "auto", dtype: torch.dtype | None = None,
           device=None, callback: Callable | None = None, progress: bool = False,
           check_finite: bool = True, cuda_graph: bool = False) -> torch.Tensor:
    """Sample x_0 with `schedule`.

    Args:
        model: a `DiffusionModel`.
        schedule: a `Schedule` (preset or searched); its timesteps must lie in the model's
            noise-schedule range.
        noise: standard-normal ε of shape (B, ...); the start state is ε·prior_std (1 for VP,
            timesteps[0] for EDM). Or give `shape` (+ `generator`, `dtype`, `device`).
        backend: "auto" (fastest usable for the tensors' device and dtype), "torch", "cpu",
            "triton", "cuda", or "reference" (the step-by-step oracle).
        callback: callback(i, t, x) after every step i with the state at time t (runs the
            reference path, where every state exists).
        progress: tqdm bar over steps (reference path).
        check_finite: warn if the result has NaN/inf (one host read after the loop).
        cuda_graph: run through a cached `GraphSampler` for this model, NFE and shape (the whole
            loop captured once as a CUDA graph on CUDA tensors; the same static program eagerly
            elsewhere); later calls with any schedule of the same NFE replay it.
    Returns:
        x_0 estimate with the noise's shape, dtype and device.
    """
    if backend == "reference" or callback is not None or progress:
        return reference_sample(model, schedule, noise, shape, generator, dtype=dtype, device=device,
                                callback=callback, progress=progress, check_finite=check_finite)
    check_inputs(model, schedule)
    if cuda_graph:
        eps = initial_state(model.noise_schedule, schedule, noise, shape, generator, dtype, device)
        eps = eps / model.noise_schedule.prior_std(schedule.timesteps[0])
        runner = _graph_sampler(model, schedule.nfe, eps, backend)
        result = runner.run(schedule, eps)
        if check_finite:
            warn_if_not_finite(result, schedule)
        return result
    x = initial_state(model.noise_schedule, schedule, noise, shape, generator, dtype, device)
    plan = cached_plan(schedule, model)
    result = execute(plan, model, x, backend)
    if check_finite:
        warn_if_not_finite(result, schedule)
    return result


_GRAPH_SAMPLERS: "weakref.WeakKeyDictionary[DiffusionModel, dict]" = weakref.WeakKeyDictionary()


def _graph_sampler(model: DiffusionModel, nfe: int, like: torch.Tensor, backend: str) -> GraphSampler:
    per_model = _GRAPH_SAMPLERS.setdefault(model, {})
    key = (nfe, tuple(like.shape), like.dtype, str(like.device), backend)
    if key not in per_model:
        per_model[key] = GraphSampler(model, nfe, like.shape, dtype=like.dtype, device=like.device, backend=backend)
    return per_model[key]
