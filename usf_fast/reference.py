"""The reference sampler: runs any `Schedule` step by step in eager PyTorch.

This is the oracle every fast path is compared with, so it is deliberately plain and independent
of the lowerings: it runs the schedule's walk (`usf_fast.walk`) on plain tensors, with all step
weights computed on the host in float64 before the loop (`usf_fast.program.step_weights`); the
loop only does model calls and weighted sums of stored tensors — no device-to-host reads.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_inputs, initial_state, warn_if_not_finite
from .model import DiffusionModel
from .program import step_weights
from .schedule import Schedule
from .walk import walk

__all__ = ["reference_sample"]


def reference_sample(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor | None = None,
                     shape=None, generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None,
                     device=None, callback: Callable | None = None, progress: bool = False,
                     check_finite: bool = True) -> torch.Tensor:
    """Sample x_0 with `schedule`, step by step: the oracle behind `usf_fast.sample(backend="reference")`;
    arguments as in `usf_fast.sample`.

        callback: called as callback(i, t, x) after step i (1-based) with the state at time t.
        progress: show a tqdm bar over steps.
        check_finite: warn if the result has NaN/inf.
    Returns:
        x_0 estimate, same shape/dtype/device as the noise.
    """
    check_inputs(model, schedule)
    ns = model.noise_schedule
    weights = step_weights(schedule, ns)
    ts = schedule.timesteps
    x = initial_state(ns, schedule, noise, shape, generator, dtype, device)

    def evaluate(j, xj):
        e, o = model.predict(xj, ts[j])
        return xj, e, o

    steps = range(1, len(schedule.steps) + 1)
    if progress:
        steps = tqdm(steps, desc="sampling", unit="step")
    result = walk(schedule, weights, x, evaluate, lambda x_: model.analytic_first(x_, ts[0]), steps=steps,
                  callback=callback)
    if check_finite:
        warn_if_not_finite(result, schedule)
    return result
