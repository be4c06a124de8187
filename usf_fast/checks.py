"""Input checks shared by every executor: the schedule fits the model, the start state, NaN/inf.

Errors name the field and what is allowed (docs/design.md, "Errors").
"""
from __future__ import annotations

import warnings

import torch

from .model import DiffusionModel
from .noise_schedules import NoiseSchedule
from .schedule import Schedule

__all__ = ["check_inputs", "check_schedule_range", "check_noise_schedule", "initial_state", "warn_if_not_finite"]


def check_inputs(model, schedule) -> None:
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule: must be a usf_fast.Schedule, got {type(schedule).__name__}")
    check_noise_schedule(schedule, model.noise_schedule)
    check_schedule_range(schedule, model.noise_schedule)


def check_schedule_range(schedule: Schedule, ns: NoiseSchedule) -> None:
    lo, hi = ns.t_min, ns.t_max
    tol = 1e-9 * hi
    for i, t in enumerate(schedule.timesteps):
        if not (lo - tol <= t <= hi + tol):
            raise ValueError(f"timesteps[{i}]={t!r}: outside the noise schedule's range "
                             f"[{lo!r}, {hi!r}] ({ns.time_name}); was the schedule made for another noise schedule?")


def check_noise_schedule(schedule: Schedule, ns: NoiseSchedule) -> None:
    """A schedule that records the noise schedule it was made for (presets and searches do) must
    be run on that noise schedule: its times mean something else on another one."""
    theirs = (schedule.meta or {}).get("noise_schedule")
    mine = ns.fingerprint()
    if theirs is not None and theirs != mine:
        raise ValueError(f"schedule was made for noise schedule {theirs}, but the model's is {mine} (schedule "
                         f"{schedule.name or 'unnamed'}); rebuild it for this model (e.g. usf_fast.presets.unipc(model.noise_schedule, nfe), "
                         "or search again)")


def initial_state(ns: NoiseSchedule, schedule: Schedule, noise=None, shape=None, generator=None,
                  dtype=None, device=None) -> torch.Tensor:
    """x_T = prior_std(timesteps[0]) · ε (1 for VP, σ_max for EDM); ε = `noise` or fresh N(0, I)."""
    if noise is None:
        if shape is None:
            raise ValueError("sample: give noise= (a tensor) or shape= (and optionally generator=)")
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ValueError(f"shape={shape!r}: must be a sequence of ints") from None
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"shape={shape!r}: need a batch dimension and positive sizes")
        noise = torch.randn(shape, generator=generator, dtype=dtype or torch.float32, device=device or "cpu")
    else:
        if not isinstance(noise, torch.Tensor):
            raise ValueError(f"noise: must be a torch.Tensor, got {type(noise).__name__}")
        if not noise.is_floating_point():
            raise ValueError(f"noise: must be a real floating tensor, got dtype {noise.dtype}")
        if noise.dim() < 1:
            raise ValueError("noise: needs a batch dimension")
        if dtype is not None or device is not None:
            noise = noise.to(dtype=dtype or noise.dtype, device=device or noise.device)
        noise = noise.contiguous()   # e.g. a transposed view: the kernels read flat memory
    return noise * ns.prior_std(schedule.timesteps[0])


def warn_if_not_finite(result: torch.Tensor, schedule: Schedule) -> None:
    """One host read, after the loop."""
    if not bool(torch.isfinite(result).all()):
        bad = int((~torch.isfinite(result)).sum())
        warnings.warn(f"sample: {bad} of {result.numel()} output values are NaN/inf "
                      f"(schedule {schedule.name or ''} NFE {schedule.nfe})", RuntimeWarning, stacklevel=3)
