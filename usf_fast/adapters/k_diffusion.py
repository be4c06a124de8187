"""k-diffusion / ComfyUI samplers: a usf_fast preset or searched schedule behind k-diffusion's
sampler signature.

    from usf_fast.adapters import k_diffusion as ukd
    sample_fn = ukd.sampler(preset="dpm_solver_pp", order=2)      # on whatever σ grid it is handed
    x0 = sample_fn(denoiser, noise * sigmas[0], sigmas)           # k-diffusion's (model, x, sigmas, ...)
    sample_fn = ukd.sampler(schedule=Schedule.from_json("best.json"))
    x0 = sample_fn(denoiser, noise * ukd.sigmas(schedule)[0], ukd.sigmas(schedule))

k-diffusion's denoisers D(x, σ) live on x_σ = x_0 + σ·ε (α = 1, λ = −log σ): usf_fast's
`NoiseScheduleEDM` form. A VP model wrapped for k-diffusion (ComfyUI wraps every model so) sees
σ = σ_t/α_t and x/α_t; every USF decision is a function of λ, so a schedule searched on the VP
model runs unchanged at σ = e^{−λ(t)} of its own times (`sigmas`), and gives the same sample
scaled by 1/α.
"""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

from .. import presets as P
from ..api import sample
from ..model import DiffusionModel
from ..checks import check_inputs, check_noise_schedule, initial_state, warn_if_not_finite
from ..executor import execute
from ..plan import cached_plan
from ..noise_schedules import NoiseSchedule, NoiseScheduleEDM, noise_schedule_from_dict
from ..schedule import Schedule

__all__ = ["sampler", "sigmas"]


def sigmas(schedule: Schedule, noise_schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """The schedule's σ grid for k-diffusion / ComfyUI (a SIGMAS input): σ = e^{−λ} at each of its
    points, then 0 when it ends with the jump to σ = 0 (denoise_to_zero), float64. The noise
    schedule is the one the schedule was made for: read from its meta, or given (diffusers
    models' discrete schedules are recorded by fingerprint only: pass `model.noise_schedule`)."""
    lam = _lambdas(schedule, noise_schedule)
    out = np.exp(-lam)
    if schedule.denoise_to_zero:
        out = np.append(out, 0.0)
    return torch.tensor(out, dtype=torch.float64)


def _lambdas(schedule: Schedule, ns: NoiseSchedule | None) -> np.ndarray:
    meta = schedule.meta.get("noise_schedule")
    if ns is not None:
        check_noise_schedule(schedule, ns)
    else:
        try:
            ns = noise_schedule_from_dict(meta)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ValueError("noise_schedule: needed to turn this schedule's times into σ's (its meta records "
                             f"{meta!r}, not the whole noise schedule): pass noise_schedule=model.noise_schedule"
                             ) from None
    return np.asarray(ns.marginal_lambda(np.asarray(schedule.timesteps, dtype=np.float64)), dtype=np.float64)


def sampler(schedule: Schedule | None = None, preset: str | None = None, *, noise_schedule: NoiseSchedule | None = None,
            **options) -> Callable:
    """A k-diffusion sampler function `(model, x, sigmas, extra_args=None, callback=None,
    disable=None)` for a denoiser `model(x, sigma, **extra_args) -> x̂0`.

    preset (+ options, e.g. order=2): runs that preset on the σ grid it is handed — one
        evaluation per σ before the last, and a final σ = 0 is the jump to the denoised sample
        (as k-diffusion's own samplers). preset="ddim" is `sample_euler`, "dpm_solver_pp" with
        order=2 is `sample_dpmpp_2m`.
    schedule: a searched (or any) schedule on its own grid: the sigmas handed in must be
        `sigmas(schedule, noise_schedule)`, or a tail of it (img2img / partial denoise: the
        schedule continues from that point, `Schedule.tail`). noise_schedule: as for `sigmas`.
    The state x is the k-diffusion one (noise·sigmas[0], or a partly noised latent for a tail).
    An analytical first step (AFS) takes the data mean as 0, as in diffusers pipelines.
    `callback` gets k-diffusion's dict once per network evaluation, after the denoiser, as
    k-diffusion's samplers call it: {"x": the state at σ_i, "i": i, "sigma": σ_i, "sigma_hat": σ_i,
    "denoised": D(x, σ_i)}; the sampler stays on the fused path with a callback. `disable` is
    accepted (no progress bar).
    """
    if (schedule is None) == (preset is None):
        raise ValueError("sampler: give exactly one of schedule= (a searched schedule) or preset= (a preset name)")
    if preset is not None:
        if preset not in P.PRESETS:
            raise ValueError(f"preset={preset!r}: must be one of {', '.join(P.PRESETS)}")
        options = P.on_fixed_grid(preset, options)
        fixed = sorted({"timesteps", "spacing", "t_start", "t_end", "denoise_to_zero", "afs"} & set(options))
        if fixed:
            raise ValueError(f"sampler: options {fixed}: the sigmas passed to the sampler fix the grid; drop them")
    elif options:
        raise ValueError(f"sampler: options {sorted(options)} are for presets; a schedule carries its own decisions")
    elif not isinstance(schedule, Schedule):
        raise ValueError(f"schedule: must be a usf_fast.Schedule, got {type(schedule).__name__}")
    else:
        sigmas(schedule, noise_schedule)   # the σ's exist: fail here, not inside a sampling call

    @torch.no_grad()
    def sample_usf(model, x, sigmas_, extra_args=None, callback=None, disable=None):
        extra = dict(extra_args or {})
        sig = np.asarray(torch.as_tensor(sigmas_).detach().cpu().double().numpy(), dtype=np.float64)
        if sig.ndim != 1 or len(sig) < 2 or not np.all(np.isfinite(sig)) or np.any(np.diff(sig) >= 0) or sig[-1] < 0:
            raise ValueError(f"sigmas: need at least 2 strictly decreasing values >= 0, got {sig.tolist()}")
        if len(sig) == 2 and sig[-1] == 0 and preset is not None:   # one step to σ = 0: the denoised sample itself
            s0 = torch.full((x.shape[0],), float(sig[0]), dtype=x.dtype, device=x.device)
            denoised = model(x, s0, **extra)
            if callback is not None:
                callback({"x": x, "i": 0, "sigma": s0[0], "sigma_hat": s0[0], "denoised": denoised})
            return denoised
        run = _preset_run(preset, options, sig) if preset is not None else _schedule_run(schedule, sig, noise_schedule)
        ns = _edm_range(sig[sig > 0])
        net = DiffusionModel(lambda x_, s_: model(x_, s_, **extra), ns, "x0", "sigma")
        run = run.replace(meta={**run.meta, "noise_schedule": ns.fingerprint()})
        noise = x / float(run.timesteps[0])   # the start state is ε·σ_0
        if callback is None:
            return sample(net, run, noise)
        check_inputs(net, run)
        start = initial_state(ns, run, noise)

        def on_eval(k, t, state, denoised):   # k-diffusion's dict, once per evaluation, after the denoiser
            s = torch.as_tensor(t, dtype=state.dtype, device=state.device)
            # the state is one of the run's buffers, written again later: the callback gets its own
            # copy, as k-diffusion's (a new tensor every step); the denoiser's output is never written
            callback({"x": state.clone(), "i": k, "sigma": s, "sigma_hat": s, "denoised": denoised})
        out = execute(cached_plan(run, net), net, start, "auto", on_eval=on_eval)   # the fused path
        warn_if_not_finite(out, run)
        return out

    sample_usf.__name__ = f"sample_usf_{preset or (schedule.name or 'schedule')}".replace(" ", "_")
    return sample_usf


def _edm_range(positive: np.ndarray) -> NoiseScheduleEDM:
    """The EDM schedule (σ = t) spanning these σ's; one σ alone (sigmas [σ, 0]) gets a range below it."""
    hi = float(positive.max())
    lo = float(positive.min())
    return NoiseScheduleEDM(lo if lo < hi else hi / 2, hi)


def _preset_run(preset: str, options: dict, sig: np.ndarray) -> Schedule:
    """The preset on exactly these σ's. Without a final σ = 0 (ComfyUI's SplitSigmas) the last step
    keeps its order, as k-diffusion's samplers do (no lower-order final step)."""
    dtz = sig[-1] == 0
    times = sig[:-1] if dtz else sig
    nfe = len(sig) - 1
    if not dtz and "lower_order_final" in inspect.signature(P.PRESETS[preset]).parameters:
        options = {"lower_order_final": False, **options}
    return P.get(preset, _edm_range(times), nfe, timesteps=times.tolist(), denoise_to_zero=bool(dtz), **options)


def _schedule_run(schedule: Schedule, sig: np.ndarray, ns) -> Schedule:
    """The schedule as σ's (times of an EDM schedule), or its tail when the sigmas are one."""
    mine = sigmas(schedule, ns).numpy()
    p = len(mine) - len(sig)
    if p < 0 or not np.allclose(sig, mine[p:], rtol=1e-5, atol=0):
        raise ValueError(f"sigmas: a searched schedule runs on its own grid; pass usf_fast.adapters.k_diffusion."
                         f"sigmas(schedule) = {np.round(mine, 6).tolist()} (or a tail of it), got {sig.tolist()}")
    as_sigma = schedule.replace(timesteps=np.exp(-_lambdas(schedule, ns)).tolist())
    if p == 0:
        return as_sigma
    pts = as_sigma.evaluation_points()
    if p not in pts:
        raise ValueError(f"sigmas: the tail starting at σ={sig[0]:.6g} starts at a point this schedule never evaluates "
                         "(an analytical first step); start one point later")
    return as_sigma.tail(len(pts) - 1 - pts[::-1].index(p))   # the last evaluation there (after an implicit corrector)
