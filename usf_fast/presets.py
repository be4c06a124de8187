"""Hand-designed solvers as points of the USF decision space.

Each preset is a function `(noise_schedule, nfe, **options) -> Schedule`; there is no solver code
per method. The step-order patterns (warm-up, lower order at the end) mirror the reference
implementations (diffusers' schedulers, the DPM-Solver code), so that the same model, noise and
timesteps give the same sample — the tests check this.

Common options:
    spacing: "logSNR" (uniform in λ), "time_uniform", "time_quadratic", "karras" (uniform in
        σ^{1/ρ}, σ = e^{−λ}; `rho`, default 7); on a NoiseScheduleFlow also "flow_shift" (uniform in σ,
        then SD3/FLUX's shift σ' = s·σ/(1 + (s − 1)·σ); `shift`, default 3) and diffusers' own shifted
        grids "flow_euler" (FlowMatchEulerDiscreteScheduler), "flow_dpm" (DPMSolverMultistep with
        use_flow_sigmas), "flow_unipc" (UniPCMultistep with use_flow_sigmas), point for point
        (`diffusers_flow_sigmas`; they fix their own ends: no t_start / t_end).
    timesteps: explicit N+1 decreasing times instead of `spacing` (multistep presets).
    t_start, t_end: time range (default: the noise schedule's t_max, t_min).
    afs: analytical first step (one NFE fewer per schedule, so one step more for the same NFE).
    denoise_to_zero: finish with x̂0 at the last point (+1 NFE, so one step fewer).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from .noise_schedules import NoiseSchedule
from .schedule import Schedule, Step

__all__ = ["ALL_SPACINGS", "DIFFUSERS_FLOW_GRIDS", "FLOW_SPACINGS", "diffusers_flow_sigmas", "flow_shift", "spacings_for", "SPACINGS", "timesteps", "ddim", "dpm_solver", "dpm_solver_pp", "unipc", "PRESETS",
           "get", "describe", "on_fixed_grid", "standard_variants", "standard_schedules"]

SPACINGS = ("logSNR", "time_uniform", "time_quadratic", "karras")
MAX_NFE = 1000
DIFFUSERS_FLOW_GRIDS = ("flow_euler", "flow_dpm", "flow_unipc")
FLOW_SPACINGS = ("flow_shift",) + DIFFUSERS_FLOW_GRIDS
ALL_SPACINGS = SPACINGS + FLOW_SPACINGS


def spacings_for(noise_schedule: NoiseSchedule) -> tuple[str, ...]:
    """The spacings a comparison on this noise schedule includes (flow models: the shifted grid too)."""
    return ALL_SPACINGS if noise_schedule.kind == "flow" else SPACINGS


def flow_shift(sigma, shift: float):
    """σ' = s·σ / (1 + (s − 1)·σ): the timestep shift of SD3 (s = 3) and FLUX-dev. diffusers'
    dynamic shifting with `mu` is the same map with s = e^mu (exponential time shift) or s = mu
    (linear)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def diffusers_flow_sigmas(grid: str, num_points: int, shift: float = 3.0, *, dynamic: bool = False,
                          num_train_timesteps: int = 1000) -> np.ndarray:
    """The σ's (float64, before the final σ = 0) that diffusers' flow schedulers evaluate the net at
    for `num_points` steps with this shift (with dynamic shifting, shift = e^mu or mu):

    - "flow_euler": FlowMatchEulerDiscreteScheduler, shift(linspace(1, σ_min, N)) with
      σ_min = 1/T, itself shifted once more when the shift is static (so its last point is shifted twice);
    - "flow_dpm": DPMSolverMultistepScheduler(use_flow_sigmas), shift(flip(1 − linspace(1, 1/T, N + 1))[:-1]),
      i.e. from shift(1 − 1/T) down to shift((1 − 1/T)/N);
    - "flow_unipc": UniPCMultistepScheduler(use_flow_sigmas), shift(linspace(1, 1/T, N + 1)[:-1]), a
      first point at σ = 1 moved to 1 − 1e-6 as UniPC does.

    FlowMatchEuler's first point σ = 1 is returned as is; the presets move it to the noise
    schedule's t_max (1 − 1e-6 by default).
    """
    if grid not in DIFFUSERS_FLOW_GRIDS:
        raise ValueError(f"grid={grid!r}: must be one of {', '.join(DIFFUSERS_FLOW_GRIDS)}")
    _check_shift(shift)
    T, n = int(num_train_timesteps), int(num_points)
    if grid == "flow_euler":
        s_min = 1.0 / T if dynamic else flow_shift(1.0 / T, shift)
        u = np.linspace(1.0, float(np.float32(s_min)), n)  # diffusers keeps σ_min as a float32 value
    elif grid == "flow_dpm":
        u = np.flip(1.0 - np.linspace(1.0, 1.0 / T, n + 1))[:-1]
    else:
        u = np.linspace(1.0, 1.0 / T, n + 1)[:-1]
    sigmas = flow_shift(np.asarray(u, dtype=np.float64), shift)
    if grid == "flow_unipc" and abs(sigmas[0] - 1.0) < 1e-6:
        sigmas[0] -= 1e-6
    return sigmas


def _check_shift(shift) -> None:
    if not (isinstance(shift, (int, float, np.floating)) and not isinstance(shift, bool) and math.isfinite(shift)
            and shift > 0):
        raise ValueError(f"shift={shift!r}: must be a finite number > 0 (SD3: 3.0; FLUX dynamic shifting: e^mu)")


def timesteps(noise_schedule: NoiseSchedule, num_steps: int, spacing: str = "logSNR", *,
              t_start: float | None = None, t_end: float | None = None, rho: float = 7.0, shift: float = 3.0) -> np.ndarray:
    """num_steps + 1 decreasing times from t_start to t_end (float64)."""
    ns = noise_schedule
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}: must be an integer >= 1")
    t0 = ns.t_max if t_start is None else float(t_start)
    t1 = ns.t_min if t_end is None else float(t_end)
    if not (ns.t_min <= t1 < t0 <= ns.t_max):
        raise ValueError(f"t_start={t0}, t_end={t1}: need {ns.t_min} <= t_end < t_start <= {ns.t_max}")
    u = np.linspace(0.0, 1.0, num_steps + 1)
    if spacing == "logSNR":
        l0, l1 = float(ns.marginal_lambda(t0)), float(ns.marginal_lambda(t1))
        ts = ns.inverse_lambda(l0 + u * (l1 - l0))
    elif spacing == "time_uniform":
        ts = t0 + u * (t1 - t0)
    elif spacing == "time_quadratic":
        ts = (math.sqrt(t0) + u * (math.sqrt(t1) - math.sqrt(t0))) ** 2
    elif spacing == "flow_shift":
        ts = _flow_shift_grid(ns, t0, t1, u, shift)
    elif spacing in DIFFUSERS_FLOW_GRIDS:
        return _diffusers_flow_grid(ns, spacing, num_steps + 1, shift, t_start, t_end)
    elif spacing == "karras":
        if not (isinstance(rho, (int, float)) and rho > 0):
            raise ValueError(f"rho={rho!r}: must be > 0")
        s0, s1 = float(ns.edm_sigma(t0)), float(ns.edm_sigma(t1))
        sig = (s0 ** (1 / rho) + u * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
        ts = ns.inverse_lambda(-np.log(sig))
    else:
        raise ValueError(f"spacing={spacing!r}: must be one of {', '.join(ALL_SPACINGS)}")
    ts = np.asarray(ts, dtype=np.float64).copy()
    ts[0], ts[-1] = t0, t1  # exact ends (no round-off outside the range)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"spacing={spacing!r} with {num_steps} steps gives non-decreasing times on this "
                         "noise schedule (too many steps for its resolution?)")
    return ts


def _flow_shift_grid(ns, t0: float, t1: float, u: np.ndarray, shift: float) -> np.ndarray:
    """Uniform in the unshifted σ, mapped by `flow_shift`; the ends land exactly on t0 and t1."""
    if ns.kind != "flow":
        raise ValueError(f"spacing='flow_shift': the shifted σ grid of flow models needs a NoiseScheduleFlow, got {ns!r}")
    _check_shift(shift)
    unshift = lambda s: s / (shift - (shift - 1.0) * s)  # noqa: E731  (the inverse of flow_shift)
    return flow_shift(unshift(t0) + u * (unshift(t1) - unshift(t0)), shift)


def _diffusers_flow_grid(ns, spacing: str, num_points: int, shift: float, t_start, t_end) -> np.ndarray:
    """`diffusers_flow_sigmas` on a NoiseScheduleFlow: the first point clipped to t_max."""
    if ns.kind != "flow":
        raise ValueError(f"spacing={spacing!r}: diffusers' flow grid needs a NoiseScheduleFlow, got {ns!r}")
    if t_start is not None or t_end is not None:
        raise ValueError(f"spacing={spacing!r} fixes its own ends (as diffusers does): drop t_start / t_end")
    ts = diffusers_flow_sigmas(spacing, num_points, shift)
    ts[0] = min(ts[0], ns.t_max)
    if not (np.all(np.diff(ts) < 0) and ts[-1] >= ns.t_min):
        raise ValueError(f"spacing={spacing!r} with {num_points} points ends at {ts[-1]:.3g}, below this noise "
                         f"schedule's t_min={ns.t_min} (use a NoiseScheduleFlow with a smaller t_min)")
    return ts


def _num_steps(nfe, afs: bool, denoise_to_zero: bool, name: str) -> int:
    if not isinstance(nfe, (int, np.integer)) or isinstance(nfe, bool):
        raise ValueError(f"{name}: nfe={nfe!r} must be an integer")
    for field, v in (("afs", afs), ("denoise_to_zero", denoise_to_zero)):
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name}: {field}={v!r} must be true or false")
    if nfe > MAX_NFE:
        raise ValueError(f"{name}: nfe={nfe} is more than {MAX_NFE} (the most a schedule may have; few-step "
                         "sampling needs far fewer)")
    n = int(nfe) + int(afs) - int(denoise_to_zero)
    if nfe < 1 or n < 1:
        raise ValueError(f"{name}: nfe={nfe} is too small (needs at least {1 + int(denoise_to_zero) - int(afs)} "
                         f"with afs={afs}, denoise_to_zero={denoise_to_zero})")
    return n


def _grid(ns, n, spacing, timesteps_, t_start, t_end, rho, shift, name):
    if timesteps_ is None:
        return timesteps(ns, n, spacing, t_start=t_start, t_end=t_end, rho=rho, shift=shift)
    ts = np.asarray(timesteps_, dtype=np.float64)
    if ts.ndim != 1 or len(ts) != n + 1:
        raise ValueError(f"{name}: timesteps has {ts.size} values; this NFE needs {n + 1} (steps + 1)")
    return ts


def _meta(ns, name, **options):
    opts = {k: v for k, v in options.items() if k != "timesteps"}
    return {"preset": name, "options": opts, "noise_schedule": ns.fingerprint()}


def _multistep(ns, name, nfe, orders_fn, step_fn, *, spacing, timesteps_, t_start, t_end, rho, shift, afs,
               denoise_to_zero, options):
    n = _num_steps(nfe, afs, denoise_to_zero, name)
    ts = _grid(ns, n, spacing, timesteps_, t_start, t_end, rho, shift, name)
    # Denoise-to-zero is a final first-order jump to σ = 0 (diffusers' final_sigmas_type="zero"),
    # so the order pattern is that of n + 1 steps whose last one is the jump.
    n_orders = n + int(denoise_to_zero)
    steps = [step_fn(i, orders_fn(i, n_orders), n) for i in range(1, n + 1)]
    label = f"{name}({', '.join(f'{k}={v}' for k, v in options.items() if k != 'timesteps')})"
    return Schedule(ts, steps, afs=afs, denoise_to_zero=denoise_to_zero, name=label,
                    meta=_meta(ns, name, nfe=nfe, spacing=spacing, afs=afs,
                               denoise_to_zero=denoise_to_zero, **options))


def _check_choice(name, field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}: {field}={value!r} must be one of {', '.join(map(str, allowed))}")


def ddim(noise_schedule: NoiseSchedule, nfe: int, *, prediction: str = "data", spacing: str = "logSNR",
         timesteps: Sequence[float] | None = None, t_start=None, t_end=None, rho: float = 7.0, shift: float = 3.0,
         afs: bool = False, denoise_to_zero: bool = False) -> Schedule:
    """DDIM (η = 0): first order everywhere (noise and data prediction coincide at order 1)."""
    _check_choice("ddim", "prediction", prediction, ("data", "noise"))
    return _multistep(noise_schedule, "ddim", nfe, lambda i, n: 1,
                      lambda i, o, n: Step(prediction=prediction, order=1),
                      spacing=spacing, timesteps_=timesteps, t_start=t_start, t_end=t_end, rho=rho, shift=shift,
                      afs=afs, denoise_to_zero=denoise_to_zero, options={"prediction": prediction})


def _solver_type(name, solver_type):
    aliases = {"dpmsolver": "midpoint", "midpoint": "midpoint", "heun": "heun", "taylor": "taylor"}
    if solver_type not in aliases:
        raise ValueError(f"{name}: solver_type={solver_type!r} must be one of midpoint, dpmsolver, heun, taylor")
    return aliases[solver_type]


def _dpm_multistep_orders(order, lower_order_final):
    def orders(i, n):
        o = min(order, i)  # warm-up: step i has i−1 earlier outputs besides its start
        # diffusers' DPMSolverMultistepScheduler lowers the last two steps when fewer than 15 steps
        if lower_order_final and n < 15:
            if i == n:
                o = 1
            elif i == n - 1:
                o = min(o, 2)
        return o
    return orders


def _dpm_step(prediction, solver_type):
    def step(i, o, n):
        relax = "midpoint" if (o == 2 and solver_type == "midpoint") else "taylor"
        # DPM-Solver's 3M update weights its second-derivative term by 1/2 relative to the Taylor
        # expansion (diffusers and the DPM-Solver code agree); "taylor" uses the exact term.
        d2 = 0.5 if (o == 3 and solver_type != "taylor") else 1.0
        return Step(prediction=prediction, order=o, relax=relax, d2_scale=d2)
    return step


def _singlestep(ns, name, nfe, order, prediction, solver_type, *, spacing, t_start, t_end, rho, shift, afs,
                denoise_to_zero, lower_order_final, options):
    """DPM-Solver's singlestep pattern: K outer steps of orders summing to the step budget (lower
    orders last, as DPM-Solver; with lower_order_final=False the remainder comes first); inside
    an outer step of order 2 (3) the intermediate points sit at λ-fractions 1/2 (1/3, 2/3)."""
    total = _num_steps(nfe, afs, denoise_to_zero, name)
    if not lower_order_final:  # full-order outer steps at the end; the remainder goes first
        orders = ([total % order] if total % order else []) + [order] * (total // order)
    elif order == 3:
        k = total // 3 + 1
        orders = ([3] * (k - 2) + [2, 1] if total % 3 == 0 else
                  [3] * (k - 1) + [1] if total % 3 == 1 else [3] * (k - 1) + [2])
    elif order == 2:
        orders = [2] * (total // 2) + ([1] if total % 2 else [])
    else:
        orders = [1] * total
    orders = [o for o in orders if o > 0]
    if spacing in DIFFUSERS_FLOW_GRIDS:
        raise ValueError(f"{name}: spacing={spacing!r} is a multistep scheduler's grid; the singlestep method needs "
                         f"one of {', '.join(SPACINGS + ('flow_shift',))}")
    t0 = ns.t_max if t_start is None else t_start
    t1 = ns.t_min if t_end is None else t_end
    if spacing == "logSNR":
        outer = timesteps(ns, len(orders), spacing, t_start=t0, t_end=t1, rho=rho, shift=shift)
    else:  # as DPM-Solver: pick the outer times from the grid of all points
        grid = timesteps(ns, total, spacing, t_start=t0, t_end=t1, rho=rho, shift=shift)
        outer = grid[np.cumsum([0] + orders)]
    ts, steps = [float(outer[0])], []
    lam = ns.marginal_lambda
    for k, o in enumerate(orders):
        p = len(ts) - 1  # start point of this outer step
        l_s, l_t = float(lam(outer[k])), float(lam(outer[k + 1]))
        fracs = {1: [], 2: [0.5], 3: [1 / 3, 2 / 3]}[o]
        for r in fracs:
            ts.append(float(ns.inverse_lambda(l_s + r * (l_t - l_s))))
        ts.append(float(outer[k + 1]))
        if o >= 2:
            steps.append(Step(prediction=prediction, order=1, start=p, points=()))
        if o == 3:
            steps.append(Step(prediction=prediction, order=2, start=p, points=(p + 1,)))
        if o == 1:
            steps.append(Step(prediction=prediction, order=1, start=p, points=()))
        elif o == 2:
            steps.append(Step(prediction=prediction, order=2, start=p, points=(p + 1,),
                              relax="midpoint" if solver_type == "midpoint" else "taylor"))
        elif solver_type == "taylor":
            steps.append(Step(prediction=prediction, order=3, start=p, points=(p + 1, p + 2)))
        else:  # DPM-Solver-3: only the second intermediate point, Taylor second-order form
            steps.append(Step(prediction=prediction, order=2, start=p, points=(p + 2,)))
    label = f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"
    return Schedule(ts, steps, afs=afs, denoise_to_zero=denoise_to_zero, name=label,
                    meta=_meta(ns, name, nfe=nfe, spacing=spacing, afs=afs,
                               denoise_to_zero=denoise_to_zero, **options))


def dpm_solver(noise_schedule: NoiseSchedule, nfe: int, *, order: int = 3, method: str = "singlestep",
               solver_type: str = "dpmsolver", spacing: str = "logSNR", timesteps: Sequence[float] | None = None,
               t_start=None, t_end=None, rho: float = 7.0, shift: float = 3.0, lower_order_final: bool = True,
               afs: bool = False, denoise_to_zero: bool = False) -> Schedule:
    """DPM-Solver (noise prediction), singlestep orders 1–3 (default) or multistep."""
    return _dpm_family("dpm_solver", "noise", noise_schedule, nfe, order, method, solver_type, spacing,
                       timesteps, t_start, t_end, rho, shift, lower_order_final, afs, denoise_to_zero)


def dpm_solver_pp(noise_schedule: NoiseSchedule, nfe: int, *, order: int = 2, method: str = "multistep",
                  solver_type: str = "midpoint", spacing: str = "logSNR",
                  timesteps: Sequence[float] | None = None, t_start=None, t_end=None, rho: float = 7.0, shift: float = 3.0,
                  lower_order_final: bool = True, afs: bool = False,
                  denoise_to_zero: bool = False) -> Schedule:
    """DPM-Solver++ (data prediction): 2M/3M (method="multistep", order 2/3) or 2S/3S
    (method="singlestep"); solver_type "midpoint" (default, as diffusers), "heun" (Taylor form
    for second-order steps, as diffusers) or "taylor" (exact Taylor terms everywhere)."""
    return _dpm_family("dpm_solver_pp", "data", noise_schedule, nfe, order, method, solver_type, spacing,
                       timesteps, t_start, t_end, rho, shift, lower_order_final, afs, denoise_to_zero)


class DivergenceWarning(RuntimeWarning):
    """A preset used where it is known to diverge (its samples blow up)."""


def _warn_if_known_to_diverge(name: str, ns: NoiseSchedule, prediction: str, order: int, how: str) -> None:
    """Noise prediction of order >= 2 with a corrector (UniPC) or singlestep (DPM-Solver) on a
    rectified-flow schedule: from t_max = 1 − 1e-6 its first step spans up to 13 in λ, and ε̂'s
    expansion there blows the samples up (the embedded image mixture as a flow model, NFE 5:
    max |x| 50–1.7e5 where the data are O(1); multistep noise prediction without a corrector and
    every data-prediction preset stay bounded)."""
    if ns.kind == "flow" and prediction == "noise" and order >= 2:
        warnings.warn(f"{name} with noise prediction ({how}, order {order}) on a rectified-flow schedule is known to "
                      "diverge (samples of |x| up to 1e5); use data prediction (dpm_solver_pp, unipc's default)",
                      DivergenceWarning, stacklevel=3)


def _dpm_family(name, prediction, ns, nfe, order, method, solver_type, spacing, timesteps_, t_start, t_end,
                rho, shift, lower_order_final, afs, denoise_to_zero):
    _check_choice(name, "order", order, (1, 2, 3))
    _check_choice(name, "method", method, ("singlestep", "multistep"))
    if method == "singlestep":
        _warn_if_known_to_diverge(name, ns, prediction, order, "singlestep")
    st = _solver_type(name, solver_type)
    options = {"order": order, "method": method, "solver_type": solver_type, "lower_order_final": lower_order_final}
    if method == "singlestep":
        if timesteps_ is not None:
            raise ValueError(f"{name}: timesteps= is supported with method='multistep' only")
        return _singlestep(ns, name, nfe, order, prediction, st, spacing=spacing, t_start=t_start,
                           t_end=t_end, rho=rho, shift=shift, afs=afs, denoise_to_zero=denoise_to_zero,
                           lower_order_final=lower_order_final, options=options)
    return _multistep(ns, name, nfe, _dpm_multistep_orders(order, lower_order_final), _dpm_step(prediction, st),
                      spacing=spacing, timesteps_=timesteps_, t_start=t_start, t_end=t_end, rho=rho, shift=shift, afs=afs,
                      denoise_to_zero=denoise_to_zero, options=options)


def unipc(noise_schedule: NoiseSchedule, nfe: int, *, order: int = 3, variant: str = "bh2",
          prediction: str = "data", corrector: bool = True, spacing: str = "logSNR",
          timesteps: Sequence[float] | None = None, t_start=None, t_end=None, rho: float = 7.0, shift: float = 3.0,
          lower_order_final: bool = True, afs: bool = False, denoise_to_zero: bool = False) -> Schedule:
    """UniPC: multistep UniP predictor of order p plus the UniC pseudo-corrector (order p+1, no
    extra NFE) after every step but the last, as diffusers' UniPCMultistepScheduler.

    The order-2 predictor and the corrector after an order-1 predictor use UniPC's simplified
    coefficient (ρ = 1/2 of B(h)), which is the `bh1`/`bh2` first-derivative relaxation; higher
    orders solve UniPC's linear system exactly, which is the Taylor form.
    """
    _check_choice("unipc", "order", order, (1, 2, 3, 4))
    _check_choice("unipc", "variant", variant, ("bh1", "bh2"))
    _check_choice("unipc", "prediction", prediction, ("data", "noise"))
    if corrector:
        _warn_if_known_to_diverge("unipc", noise_schedule, prediction, order, "with the UniC corrector")

    def orders(i, n):
        o = min(order, i)
        if lower_order_final:
            o = min(o, n - i + 1)
        return o

    def step(i, o, n):
        return Step(prediction=prediction, order=o, relax=variant if o == 2 else "taylor",
                    corrector="pseudo" if (corrector and i < n) else "none",
                    corrector_relax=variant if o == 1 else "taylor")

    return _multistep(noise_schedule, "unipc", nfe, orders, step, spacing=spacing, timesteps_=timesteps,
                      t_start=t_start, t_end=t_end, rho=rho, shift=shift, afs=afs, denoise_to_zero=denoise_to_zero,
                      options={"order": order, "variant": variant, "prediction": prediction,
                               "corrector": corrector, "lower_order_final": lower_order_final})


PRESETS: dict[str, Callable[..., Schedule]] = {
    "ddim": ddim,
    "dpm_solver": dpm_solver,
    "dpm_solver_pp": dpm_solver_pp,
    "unipc": unipc,
}


def standard_variants() -> list[tuple[str, dict]]:
    """The hand-designed solvers a comparison should include: (preset name, options)."""
    return [
        ("ddim", {}),
        ("dpm_solver", {"order": 2}),
        ("dpm_solver", {"order": 3}),
        ("dpm_solver_pp", {"order": 2}),
        ("dpm_solver_pp", {"order": 3}),
        ("dpm_solver_pp", {"order": 2, "method": "singlestep"}),
        ("unipc", {"order": 2, "variant": "bh1"}),
        ("unipc", {"order": 2, "variant": "bh2"}),
        ("unipc", {"order": 3, "variant": "bh1"}),
        ("unipc", {"order": 3, "variant": "bh2"}),
    ]


def standard_schedules(noise_schedule: NoiseSchedule, nfe: int, spacings=None, **options) -> list[tuple[str, str, Schedule]]:
    """(variant label, spacing, schedule) for every `standard_variants` entry over `spacings`
    (default: `spacings_for(noise_schedule)`), each with and without the analytical first step
    (AFS: an option a user picks without searching; label suffix " afs"; `afs=` fixes it);
    combinations a preset cannot build at this NFE (e.g. a singlestep order) are skipped."""
    spacings = spacings_for(noise_schedule) if spacings is None else spacings
    afs_choices = (False, True) if "afs" not in options else (options.pop("afs"),)
    out = []
    for name, opts in standard_variants():
        for afs in afs_choices:
            label = name + "".join(f" {k}={v}" for k, v in opts.items()) + (" afs" if afs else "")
            for sp in spacings:
                try:
                    with warnings.catch_warnings():   # a comparison includes them; the caller says which diverged
                        warnings.simplefilter("ignore", DivergenceWarning)
                        out.append((label, sp, get(name, noise_schedule, nfe, spacing=sp, afs=afs, **opts, **options)))
                except ValueError:
                    continue
    return out


def get(name: str, noise_schedule: NoiseSchedule, nfe: int, **options) -> Schedule:
    """`PRESETS[name](noise_schedule, nfe, **options)` with a clear error for unknown names/options."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: must be one of {', '.join(PRESETS)}")
    fn = PRESETS[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("noise_schedule", "nfe")]
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"preset {name}: unknown option(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    return fn(noise_schedule, nfe, **options)


def on_fixed_grid(name: str, options: dict) -> dict:
    """`options` for running preset `name` at given times (`timesteps=`): the multistep method
    (dpm_solver's default is singlestep, which picks its own intermediate points); another
    method is a ValueError."""
    opts = dict(options)
    if name in PRESETS and "method" in inspect.signature(PRESETS[name]).parameters:
        if opts.setdefault("method", "multistep") != "multistep":
            raise ValueError(f"preset {name}: method={opts['method']!r}: on a given grid of times only 'multistep' "
                             "runs (singlestep places its own intermediate points)")
    return opts


def describe() -> list[tuple[str, str]]:
    """(name, the first paragraph of its docstring, on one line) for every preset."""
    return [(k, " ".join((v.__doc__ or "").strip().split("\n\n")[0].split())) for k, v in PRESETS.items()]
