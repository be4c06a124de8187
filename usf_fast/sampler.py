"""Reference sampler: runs any `Schedule` step by step in eager PyTorch.

This is the oracle every fast path is compared with, so it is deliberately plain: all step
weights are computed on the host in float64 before the loop (`step_weights`), and the loop only
does model calls and weighted sums of stored tensors — no device-to-host reads inside it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .coefficients import update_weights
from .model import DiffusionModel
from .noise_schedules import NoiseSchedule
from .schedule import Schedule, Step

__all__ = ["reference_sample", "walk", "step_weights", "StepWeights", "check_schedule_range", "initial_state"]


@dataclass(frozen=True)
class StepWeights:
    """x_target = a·x[start] + Σ_j w[j]·M[j]; M is ε̂ (prediction "noise") or x̂0 ("data")."""

    prediction: str
    start: int
    a: float
    points: tuple[int, ...]   # start first, then the active points
    w: tuple[float, ...]

    def apply(self, states: dict, eps: dict, x0: dict):
        """a·states[start] + Σ w_j·M_j over whatever the dicts hold (tensors, or the dense
        program's basis vectors)."""
        m = eps if self.prediction == "noise" else x0
        out = self.a * states[self.start]
        for j, w in zip(self.points, self.w):
            out = out + w * m[j]
        return out


def _weights(tables, target: int, step: Step, corrector: bool) -> StepWeights:
    lam, alpha, sigma = tables
    s = step.start
    pts = tuple(step.points) + ((target,) if corrector else ())
    order = step.order + (1 if corrector else 0)
    relax, coef = ((step.corrector_relax, step.corrector_relax_coef) if corrector
                   else (step.relax, step.relax_coef))
    a, w_s, w_p = update_weights(
        lam[s], lam[target], [lam[j] for j in pts],
        alpha_s=alpha[s], sigma_s=sigma[s], alpha_t=alpha[target], sigma_t=sigma[target],
        prediction=step.prediction, order=order, relax=relax, relax_coef=coef,
        d2_scale=1.0 if corrector else step.d2_scale)
    return StepWeights(step.prediction, s, a, (s,) + pts, (w_s,) + tuple(float(v) for v in w_p))


def step_weights(schedule: Schedule, noise_schedule: NoiseSchedule):
    """Per step: (predictor weights, corrector weights or None), host float64."""
    t = np.asarray(schedule.timesteps, dtype=np.float64)
    tables = tuple([float(v) for v in f(t)] for f in (noise_schedule.marginal_lambda, noise_schedule.marginal_alpha,
                                                       noise_schedule.marginal_std))
    out = []
    for i, st in enumerate(schedule.steps, 1):
        pred = _weights(tables, i, st, corrector=False)
        corr = _weights(tables, i, st, corrector=True) if st.corrector != "none" else None
        out.append((pred, corr))
    return out


def check_schedule_range(schedule: Schedule, ns: NoiseSchedule) -> None:
    lo, hi = ns.t_min, ns.t_max
    tol = 1e-9 * hi
    for i, t in enumerate(schedule.timesteps):
        if not (lo - tol <= t <= hi + tol):
            raise ValueError(f"timesteps[{i}]={t!r}: outside the noise schedule's range "
                             f"[{lo!r}, {hi!r}] ({ns.time_name}); was the schedule made for another noise schedule?")


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
            raise ValueError(f"noise: must be a floating tensor, got dtype {noise.dtype}")
        if noise.dim() < 1:
            raise ValueError("noise: needs a batch dimension")
        if dtype is not None or device is not None:
            noise = noise.to(dtype=dtype or noise.dtype, device=device or noise.device)
    return noise * ns.prior_std(schedule.timesteps[0])


def walk(schedule: Schedule, weights, x, evaluate: Callable, analytic_first: Callable, steps=None,
         callback: Callable | None = None):
    """The walk every executor of a schedule shares — which combinations and which model
    evaluations, in which order — over any values the weights can combine (tensors, numpy arrays,
    the dense program's basis vectors).

        weights: `step_weights(schedule, ns)`; x: the start state.
        evaluate(j, x) -> (stand-in for x from now on, ε̂_j, x̂0_j): the model at point j.
        analytic_first(x) -> (ε̂_0, x̂0_0): the analytical first step (AFS schedules).
        steps: an iterable over 1..N (e.g. wrapped in a progress bar); callback(i, t_i, x_i).
    Returns x_0: the final state, or the final x̂0 with denoise_to_zero.
    """
    ts = schedule.timesteps
    n = len(schedule.steps)
    states, eps, x0 = {0: x}, {}, {}
    if schedule.afs:
        eps[0], x0[0] = analytic_first(x)
    else:
        states[0], eps[0], x0[0] = evaluate(0, x)
    for i in steps if steps is not None else range(1, n + 1):
        st = schedule.steps[i - 1]
        pred_w, corr_w = weights[i - 1]
        xi = pred_w.apply(states, eps, x0)
        if st.corrector != "none":
            states[i], eps[i], x0[i] = evaluate(i, xi)  # the corrector's x_i^p and its output
            xi = corr_w.apply(states, eps, x0)
            if st.corrector == "implicit" or (i == n and schedule.denoise_to_zero):
                xi, eps[i], x0[i] = evaluate(i, xi)
        elif i < n or schedule.denoise_to_zero:
            xi, eps[i], x0[i] = evaluate(i, xi)
        states[i] = xi
        if callback is not None:
            callback(i, ts[i], xi)
    return x0[n] if schedule.denoise_to_zero else states[n]


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
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="sampling", unit="step")
    result = walk(schedule, weights, x, evaluate, lambda x_: model.analytic_first(x_, ts[0]), steps=steps,
                  callback=callback)
    if check_finite:
        warn_if_not_finite(result, schedule)
    return result


def check_inputs(model, schedule) -> None:
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule: must be a usf_fast.Schedule, got {type(schedule).__name__}")
    check_noise_schedule(schedule, model.noise_schedule)
    check_schedule_range(schedule, model.noise_schedule)


def check_noise_schedule(schedule: Schedule, ns: NoiseSchedule) -> None:
    """A schedule that records the noise schedule it was made for (presets and searches do) must
    be run on that noise schedule: its times mean something else on another one."""
    theirs = (schedule.meta or {}).get("noise_schedule")
    mine = ns.fingerprint()
    if theirs is not None and theirs != mine:
        raise ValueError(f"schedule was made for noise schedule {theirs}, but the model's is {mine} (schedule "
                         f"{schedule.name or 'unnamed'}); rebuild it for this model (e.g. usf_fast.presets.unipc(model.noise_schedule, nfe), "
                         "or search again)")


def warn_if_not_finite(result: torch.Tensor, schedule: Schedule) -> None:
    """One host read, after the loop."""
    if not bool(torch.isfinite(result).all()):
        bad = int((~torch.isfinite(result)).sum())
        warnings.warn(f"sample: {bad} of {result.numel()} output values are NaN/inf "
                      f"(schedule {schedule.name or ''} NFE {schedule.nfe})", RuntimeWarning, stacklevel=3)
