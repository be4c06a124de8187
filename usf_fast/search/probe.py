"""Solver-physics features for the S³ predictor: how accurately a schedule solves the diffusion ODE
of Gaussian data, at several data scales, in closed form.

For data N(0, s²) the model is linear (ε̂ = σ x / (α² s² + σ²)), so a schedule maps x_T to a
multiple G(s)·x_T that the schedule's walk (`usf_fast.walk`) gives exactly with arrays over the scales,
and the ODE's exact map is std_0/std_T with std_t² = α_t² s² + σ_t². The features are
log10 |G/G_exact − 1| over a grid of scales: a linear test problem, the classical probe of an ODE
solver's accuracy (the role Dahlquist's test equation plays for ODE solvers), here with the
model's own noise schedule. They cost no model evaluations (~0.5 ms per schedule) and tell the
predictor what an encoding alone would need hundreds of real evaluations to learn: how step
sizes, orders, relaxations and correctors combine into error.
"""
from __future__ import annotations

import numpy as np

from ..noise_schedules import NoiseSchedule
from ..program import step_weights
from ..schedule import Schedule
from ..walk import analytic_first_step, walk

__all__ = ["gaussian_probe", "PROBE_SCALES"]

PROBE_SCALES = tuple(float(v) for v in np.geomspace(0.03, 3.0, 8))
_FLOOR, _CEIL = -8.0, 2.0   # log10 relative error is clipped to this range (exact ... diverged)


def gaussian_probe(schedule: Schedule, ns: NoiseSchedule, scales=PROBE_SCALES) -> np.ndarray:
    """log10 relative error of `schedule`'s final state on Gaussian data N(0, s²), per scale s
    (clipped to [-8, 2]; a schedule whose weights cannot be computed gets the ceiling)."""
    s2 = np.asarray(scales, dtype=np.float64) ** 2
    ts = np.asarray(schedule.timesteps, dtype=np.float64)
    alpha = np.asarray(ns.marginal_alpha(ts), dtype=np.float64)
    sigma = np.asarray(ns.marginal_std(ts), dtype=np.float64)
    try:
        weights = step_weights(schedule, ns)
    except ValueError:   # e.g. derivative points that coincide in λ
        return np.full(len(s2), _CEIL)

    def evaluate(j, x):
        e = sigma[j] * x / (alpha[j] ** 2 * s2 + sigma[j] ** 2)
        return x, e, (x - sigma[j] * e) / alpha[j]

    # the Gaussian data have mean 0
    final = walk(schedule, weights, np.ones_like(s2), evaluate,
                 lambda x: analytic_first_step(x, np.zeros_like(s2), alpha[0], sigma[0]))
    std = np.sqrt(alpha[[0, -1]][:, None] ** 2 * s2 + sigma[[0, -1]][:, None] ** 2)
    exact = (alpha[-1] * s2 / std[1] ** 2 * std[1] if schedule.denoise_to_zero else std[1]) / std[0]
    with np.errstate(all="ignore"):
        err = np.log10(np.abs(final / exact - 1.0) + 10.0 ** _FLOOR)
    return np.clip(np.nan_to_num(err, nan=_CEIL, posinf=_CEIL), _FLOOR, _CEIL)
