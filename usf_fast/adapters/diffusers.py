"""diffusers drop-in scheduler: run any usf_fast `Schedule` inside an existing pipeline.

    from usf_fast.adapters.diffusers import USFScheduler
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=my_schedule)   # or preset="unipc"
    images = pipe(num_inference_steps=my_schedule.nfe).images

The schedule runs as its compiled plan (`usf_fast.plan`, the lowering `usf_fast.sample` runs): `timesteps`
are the schedule's evaluation times in the pipeline's convention (DDPM index on VP configs, float:
searched schedules need not land on integers; σ·1000 on flow configs; c_noise on EDM ones), and each
`step` stores the evaluation's input and (guided) output and runs the plan's fused combinations up
to the next model input — after the last evaluation, the result. Coefficients go to the latents'
device once per run; `step` does no device-to-host reads.
"""
from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .. import presets as P
from ..checks import check_noise_schedule, check_schedule_range
from ..backends import coefficient_dtype, get_combine
from ..executor import PlanRun, coefficient_tables
from ..plan import Const, Eval, Plan, compile_plan
from ..model import DiffusionModel
from ..noise_schedules import NoiseScheduleEDM, NoiseScheduleFlow
from ..schedule import Schedule
from .diffusers_config import (LEARNED_VARIANCE, PREDICTION, SAMPLER_FIELDS, check_prediction, config_kind,
                               flow_grid_of, noise_schedule_from_diffusers_config, read_source_config,
                               source_class_defaults, source_spacing, source_timesteps)
from .edm import edm_coefficients
from .networks import wrap_transformer, wrap_unet   # noqa: F401  (public here since the first release)

__all__ = ["USFScheduler", "noise_schedule_from_diffusers_config", "wrap_transformer", "wrap_unet"]

def _key_of(values, name: str):
    """A hashable copy of a pipeline's sigmas / timesteps (a list, an array or any tensor)."""
    if values is None:
        return None
    try:
        arr = np.asarray(values.detach().cpu().double() if torch.is_tensor(values) else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"set_timesteps: {name}= must be a list of numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"set_timesteps: {name}= must be a flat list of numbers, got shape {arr.shape}")
    return tuple(arr.tolist())


def _identity(x, t):
    """The scheduler's stand-in network (conversions only: the pipeline calls the real one); a
    module-level function so the scheduler pickles."""
    return x


def _flow_shift(cfg, mu) -> float:
    """The flow grid's shift: the static `shift`, or from the pipeline's `mu` with dynamic shifting
    (e^mu for the exponential time shift FLUX uses, mu for the linear one)."""
    if not cfg.use_dynamic_shifting:
        return float(cfg.shift)
    if mu is None:
        raise ValueError("set_timesteps: this flow scheduler uses dynamic shifting (use_dynamic_shifting=True) and "
                         "needs mu= (the FLUX pipeline passes it)")
    if isinstance(mu, bool) or not isinstance(mu, (int, float, np.floating, np.integer)) or not math.isfinite(mu):
        raise ValueError(f"set_timesteps: mu={mu!r} must be a finite number")
    if cfg.time_shift_type == "linear":
        if mu <= 0:
            raise ValueError(f"set_timesteps: mu={mu!r} with time_shift_type='linear' is the shift itself and must be "
                             "> 0 (σ' = mu·σ / (1 + (mu − 1)·σ))")
        return float(mu)
    if mu > 700:   # e^mu overflows a float64; the shifted grid would be σ = 1 everywhere
        raise ValueError(f"set_timesteps: mu={mu!r}: e^mu overflows and every shifted σ would be 1; FLUX-style "
                         "pipelines give mu of order 1")
    return math.exp(mu)


class USFScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a usf_fast `Schedule` (preset or searched).

    Args (config): the VP fields of diffusers schedulers (num_train_timesteps, beta_start,
    beta_end, beta_schedule, trained_betas, prediction_type), the EDM ones (sigma_min, sigma_max,
    sigma_data; set `sigma_data` for an EDM config) or the flow ones (kind="flow", shift,
    use_dynamic_shifting, time_shift_type, flow_grid; prediction_type "flow_prediction"), plus
    `schedule` (a `Schedule` or its dict) or `preset` + `preset_options` (built in `set_timesteps`
    for the requested steps; on flow configs on the pipeline's `sigmas` or, without them, on the
    grid of the scheduler the config came from — `flow_grid`, see `presets.diffusers_flow_sigmas` —
    or on a `spacing` given in preset_options).
    `from_config` reads the kind from any diffusers scheduler config.
    """

    config_name = "scheduler_config.json"
    order = 1
    _compatibles = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 schedule=None, preset: str = "unipc", preset_options: dict | None = None,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float | None = None,
                 kind: str | None = None, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", flow_grid: str = "flow_euler", source_spacing: str | None = None,
                 source_alphas_cumprod: list | None = None, variance_type: str | None = None,
                 source_grid: dict | None = None):
        self.kind = kind or ("edm" if sigma_data is not None else "vp")
        if self.kind not in ("vp", "edm", "flow"):
            raise ValueError(f"kind={kind!r}: must be 'vp', 'edm' or 'flow'")
        self.edm, self.flow = self.kind == "edm", self.kind == "flow"
        check_prediction(prediction_type, self.kind)
        if self.flow:
            if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
                raise ValueError(f"shift={shift!r}: must be a finite number > 0")
            if time_shift_type not in ("exponential", "linear"):
                raise ValueError(f"time_shift_type={time_shift_type!r}: must be 'exponential' or 'linear'")
            if flow_grid not in P.DIFFUSERS_FLOW_GRIDS:
                raise ValueError(f"flow_grid={flow_grid!r}: must be one of {', '.join(P.DIFFUSERS_FLOW_GRIDS)}")
            self.noise_schedule = NoiseScheduleFlow()
        elif self.edm:
            self.noise_schedule = NoiseScheduleEDM(sigma_min, sigma_max)
        else:
            self.noise_schedule = noise_schedule_from_diffusers_config(   # our own config: no source to consult
                {**{k: v for k, v in self.config.items() if k not in ("sigma_min", "sigma_max", "sigma_data")},
                 "_class_name": "USFScheduler"})
        if isinstance(schedule, Schedule):  # keep the config JSON-serialisable
            self.register_to_config(schedule=schedule.to_dict())
            schedule = schedule.to_dict()
        self._schedule = Schedule.from_dict(schedule) if schedule is not None else None
        if self._schedule is not None:
            self._check_schedule(self._schedule)
        elif preset not in P.PRESETS:
            raise ValueError(f"preset={preset!r}: must be one of {', '.join(P.PRESETS)}")
        # conversions only: the pipeline calls the network itself. EDM: step() turns the
        # preconditioned output F into D = c_skip x + c_out F, a data prediction.
        if self.edm:
            self._model = DiffusionModel(_identity, self.noise_schedule, "x0", "sigma")
        elif self.flow:
            self._model = DiffusionModel(_identity, self.noise_schedule, "flow", "continuous")
        else:
            self._model = DiffusionModel(_identity, self.noise_schedule, PREDICTION[prediction_type], "discrete")
        self.init_noise_sigma = float(self.noise_schedule.prior_std(self.noise_schedule.t_max))
        self.timesteps = None
        self.num_inference_steps = None
        self._times = None
        self._begin_index = self._shift = self._e = 0
        self._full = self._active = None
        self._schedules, self._tables_cache = {}, {}   # set_timesteps arguments -> schedule; schedule -> tables
        self._stopped, self._handoff = None, False
        self._begin_explicit, self._final = False, None
        self._first_input = None   # "scaled" (scale_model_input ran) or the AFS factor first_input used

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' `from_config`, with the source scheduler as the oracle (`read_source_config`):
        a config naming its class is completed with that class's defaults (diffusers drops keys left
        at their defaults when a config moves between classes) and its noise schedule; the kind (VP,
        EDM or flow) is read from all its keys. Fields that change the network's noise schedule or
        time input are honoured or refused by name; the source's sampler fields (its order, grid,
        final step) are replaced by the schedule or preset and not passed on."""
        cfg = read_source_config(config if config is not None else {})
        kind = config_kind(cfg)
        spacing = source_spacing(cfg, kind) if cfg.get("_class_name") != "USFScheduler" else None
        if spacing is not None:
            kwargs.setdefault("source_spacing", spacing)
        if kind == "edm":
            for key, default in (("sigma_min", 0.002), ("sigma_max", 80.0), ("sigma_data", 0.5)):
                kwargs.setdefault(key, cfg.get(key, default))
            kwargs.setdefault("prediction_type", cfg.get("prediction_type", "epsilon"))
        elif kind == "flow":   # FlowMatchEuler names it shift, DPM-Solver / UniPC flow_shift
            kwargs.setdefault("kind", "flow")
            kwargs.setdefault("prediction_type", cfg.get("prediction_type", "flow_prediction"))
            kwargs.setdefault("shift", cfg.get("shift", cfg.get("flow_shift", 1.0)))
            kwargs.setdefault("use_dynamic_shifting", bool(cfg.get("use_dynamic_shifting", False)))
            kwargs.setdefault("time_shift_type", cfg.get("time_shift_type", "exponential"))
            kwargs.setdefault("flow_grid", flow_grid_of(cfg))
        if cfg.get("_class_name") in (None, "USFScheduler"):
            return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)
        mine = set(inspect.signature(cls.__init__).parameters) - {"self"}
        defaults = source_class_defaults(cfg["_class_name"])
        # a field this adapter does not know (a newer diffusers' option) is refused unless it is left at
        # its class's default, where it changes nothing
        unknown = sorted(k for k in cfg if not k.startswith("_") and k not in mine and k not in SAMPLER_FIELDS
                         and not (k in defaults and cfg[k] == defaults[k]))
        if unknown:
            raise ValueError(f"scheduler config of {cfg['_class_name']}: field(s) {', '.join(unknown)} are not ones "
                             "USFScheduler knows whether to honour; drop them from the config if they only set the "
                             "source's sampler")
        given = {k: v for k, v in cfg.items() if k in mine}
        return super().from_config(given, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _check_schedule(self, s: Schedule):
        check_noise_schedule(s, self.noise_schedule)
        check_schedule_range(s, self.noise_schedule)

    @property
    def schedule(self) -> Schedule | None:
        return self._schedule

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu: float | None = None,
                      timesteps=None):
        """Build the program of the configured schedule, or of the preset for `num_inference_steps`
        evaluations. Flow configs: the preset runs on the pipeline's `sigmas`, or on the grid of the
        scheduler the config came from (`flow_grid`), shifted by `shift` (e^mu / mu with dynamic
        shifting), ending with the jump to σ = 0 (denoise-to-zero) as diffusers' flow schedulers do.
        Custom `timesteps=` (the pipeline's convention: DDPM index on VP configs, σ·1000 on flow
        configs) or `sigmas=` (k-diffusion σ on VP / EDM configs, flow σ before the shift on flow
        configs) run the preset on those times; a configured schedule has its own times."""
        if not self.flow and mu is not None:
            raise ValueError("set_timesteps: mu= is a flow-matching pipeline's; this USFScheduler has a "
                             f"{self.kind} config (use the pipeline's own scheduler config: "
                             "USFScheduler.from_config(pipe.scheduler.config, ...))")
        if timesteps is not None and sigmas is not None:
            raise ValueError("set_timesteps: give timesteps= or sigmas=, not both")
        if num_inference_steps is not None:
            n = num_inference_steps
            if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)) or \
                    not float(n).is_integer() or n < 1:
                raise ValueError(f"set_timesteps: num_inference_steps={n!r} must be a positive integer")
            num_inference_steps = int(n)
        key = (num_inference_steps, _key_of(sigmas, "sigmas"), mu, _key_of(timesteps, "timesteps"))
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._pick_schedule(num_inference_steps, sigmas, mu, timesteps)
            self._schedules[key] = schedule
        # a run stopped part-way (the SDXL base with denoising_end) can be continued by
        # set_begin_index on this object, history included (see set_begin_index)
        stopped = self._run_state() if self._times is not None and 0 < self._e < len(self._times) else None
        self._full = schedule
        self._device_arg = device
        self._use(schedule, device)
        self._begin_explicit = False   # set_begin_index sets it; else the first timestep locates the start
        self._stopped = stopped if stopped is not None and stopped["_full"] == schedule else None

    # a run stopped part-way: the plan's own run (PlanRun) and where the pipeline stands in it
    _RUN_STATE = ("_full", "_active", "_tables", "_times", "_e", "_shift", "_plan_run", "_edm_coefs", "_last_out",
                  "_begin_index")

    def _run_state(self) -> dict:
        return {k: getattr(self, k) for k in self._RUN_STATE}

    def _use(self, schedule: Schedule, device=None, begin: int = 0):
        """Lower `schedule` to its dense tables (cached per schedule) and reset the step counter."""
        self._active = schedule
        tables = self._tables_cache.get(schedule)
        if tables is None:
            if len(self._tables_cache) >= 32:
                self._tables_cache.clear()
            tables = self._tables_cache[schedule] = _StepPlan(compile_plan(schedule, self._model_for(schedule)), self,
                                                              schedule)
        self._tables = tables
        self._times = tables.times
        self._begin_index = self._shift = begin
        if begin == 0:
            self.init_noise_sigma = float(self.noise_schedule.prior_std(schedule.timesteps[0]))
            self.timesteps = self._pipeline_timesteps(np.asarray(tables.times), device)
            self._timesteps_host = self.timesteps.cpu().double().numpy()
            self.num_inference_steps = len(tables.times)
        self._e = 0
        self._plan_run = self._edm_coefs = None
        self._first_from_pipeline = False   # the first evaluation's input is the pipeline's latents
        self._last_out = None
        self._stopped = None
        self._handoff = False   # only set_begin_index's restore of a stopped run sets it
        self._final = None

    def _pipeline_timesteps(self, times: np.ndarray, device) -> torch.Tensor:
        """The evaluation times in the pipeline's convention (what it hands the net)."""
        if self.edm:  # the network's noise input c_noise = log(σ)/4, as diffusers' EDM schedulers
            vals = [edm_coefficients(t, self.config.sigma_data, False)[3] for t in times]
        elif self.flow:  # σ·num_train_timesteps, as diffusers' flow schedulers
            vals = times * self.config.num_train_timesteps
        else:
            n_train = self.noise_schedule.total_N
            vals = (times - 1.0 / n_train) * n_train
        return torch.tensor(np.asarray(vals, dtype=np.float64), dtype=torch.float32, device=device)

    @property
    def active_schedule(self) -> Schedule | None:
        """The schedule the last `set_timesteps` built (a preset on this run's grid, or the configured
        one); after `set_begin_index(k)`, the part it continues with."""
        return getattr(self, "_active", None)

    @property
    def sigmas(self) -> torch.Tensor | None:
        """σ at each evaluation then 0, as diffusers' schedulers: the flow σ (= t) on flow configs,
        the k-diffusion σ = σ_t/α_t on VP and EDM configs."""
        if self._times is None:
            return None
        ns = self.noise_schedule
        sig = [float(t) if self.flow else float(ns.edm_sigma(t)) for t in self._full_times]
        return torch.tensor(sig + [0.0], dtype=torch.float32)

    @property
    def _full_times(self) -> list[float]:
        if self._full is self._active:
            return self._tables.times   # (not self._times: the final-jump mode keeps one time)
        tables = self._tables_cache.get(self._full)
        return tables.times if tables is not None else [op.t for op in compile_plan(self._full,
                                                                                    self._model_for(self._full)).ops
                                                         if isinstance(op, Eval)]

    @property
    def begin_index(self) -> int | None:
        """The evaluation the pipeline starts at (`set_begin_index`), as diffusers."""
        return None if self._times is None else self._begin_index

    @property
    def step_index(self) -> int | None:
        """The index into `timesteps` of the next `step`, as diffusers."""
        return None if self._times is None else self._shift + self._e

    def set_begin_index(self, begin_index: int = 0):
        """Start part-way (img2img / inpainting `strength`, the SDXL refiner's `denoising_start`): the
        pipeline runs `timesteps[begin_index:]` from a state it supplies. Presets are rebuilt on the
        rest of their grid; a configured schedule continues with `Schedule.tail` (the same times,
        history cleared, orders warmed up again); either way the evaluations happen at exactly the
        pipeline's `timesteps[begin_index:]`."""
        if self._times is None:
            raise ValueError("set_begin_index: call set_timesteps first")
        full = self._full
        n = full.nfe
        if not isinstance(begin_index, (int, np.integer)) or isinstance(begin_index, bool) or not 0 <= begin_index < n:
            raise ValueError(f"set_begin_index: begin_index={begin_index!r} must be an evaluation index 0..{n - 1}")
        k = int(begin_index)
        self._begin_explicit = True
        stopped = self._stopped
        if k == 0:
            if self._begin_index:
                self._use(full, getattr(self, "_device_arg", None))
            return
        if stopped is not None and stopped["_shift"] == 0 and stopped["_e"] == k:
            # this object ran evaluations 0..k-1 of the same schedule (the SDXL base with
            # denoising_end): continue with its history if the pipeline hands back what step returned
            for name, value in stopped.items():
                setattr(self, name, value)
            self._begin_index, self._handoff, self._stopped = k, True, None
            return
        pts = full.evaluation_points()
        if full.denoise_to_zero and pts[k] == full.num_steps:
            # only the jump to σ = 0 is left (img2img at a low strength): one evaluation, then x̂0
            t = self._full_times[k]
            self._use(full, getattr(self, "_device_arg", None))
            self._times, self._begin_index, self._shift = [t], k, k
            self._final = self._model.conversion(t)[2:]
            return
        tail = self._preset_tail(full, k) if self._schedule is None else None
        tail = full.tail(k) if tail is None else tail
        want = self._full_times[k:]
        self._use(tail, begin=k)
        self._handoff = False
        if not np.allclose(self._times, want, rtol=1e-12, atol=0):   # never evaluate off the pipeline's times
            raise RuntimeError(f"set_begin_index({k}): the continued schedule's times {self._times} differ from "
                               f"the pipeline's {want}")

    def _preset_tail(self, full: Schedule, k: int) -> Schedule | None:
        """The configured preset on the rest of its grid (multistep presets), or None."""
        opts = dict(full.meta.get("options") or {})
        if opts.get("method", "multistep") != "multistep":
            return None
        p = full.evaluation_points()[k]
        for key in ("nfe", "spacing", "afs", "t_start", "t_end", "rho", "shift"):
            opts.pop(key, None)
        return P.get(full.meta["preset"], self._ns_of(full), full.nfe - k, timesteps=list(full.timesteps[p:]),
                     afs=False, **opts)

    def _pick_schedule(self, num_inference_steps, sigmas, mu, timesteps) -> Schedule:
        s = self._schedule
        if s is not None:
            if timesteps is not None or (sigmas is not None and not self.flow):
                raise ValueError(f"set_timesteps: custom {'timesteps' if timesteps is not None else 'sigmas'}= with "
                                 "a configured (searched) schedule: it runs at its own times; drop them, or use a "
                                 "preset= to run on custom times")
            if num_inference_steps is not None and int(num_inference_steps) != s.nfe:
                raise ValueError(f"set_timesteps: num_inference_steps={num_inference_steps} but the configured "
                                 f"schedule has NFE {s.nfe}; call the pipeline with num_inference_steps={s.nfe}")
            if sigmas is not None or mu is not None:
                warnings.warn("set_timesteps: the configured schedule runs at its own times; the pipeline's "
                              f"{'sigmas' if sigmas is not None else 'mu'} are not used", RuntimeWarning, stacklevel=3)
            return s
        custom = sigmas if sigmas is not None else timesteps
        if custom is not None:
            name = "sigmas" if sigmas is not None else "timesteps"
            custom = np.asarray(_key_of(custom, name), dtype=np.float64)
            if len(custom) < 1 or not np.all(np.isfinite(custom)):
                raise ValueError(f"set_timesteps: {name}= must be a non-empty list of finite numbers")
            num_inference_steps = len(custom) if num_inference_steps is None else num_inference_steps
            if int(num_inference_steps) != len(custom):
                raise ValueError(f"set_timesteps: {len(custom)} {name} for num_inference_steps={num_inference_steps}")
        if num_inference_steps is None:
            raise ValueError("set_timesteps: give num_inference_steps (the NFE) when no schedule is configured")
        opts = dict(self.config.preset_options or {})
        n = int(num_inference_steps)
        if timesteps is not None or (sigmas is not None and not self.flow):
            return self._preset_on_times(n, self._custom_times(custom, "sigmas" if sigmas is not None else "timesteps"),
                                         opts)
        if not self.flow:
            if self.config.source_spacing is not None:   # the source config's Karras / exponential sigmas
                opts.setdefault("spacing", self.config.source_spacing)
            if "spacing" in opts or self.config.source_grid is None:
                return P.get(self.config.preset, self.noise_schedule, n, **opts)
            # the grid of the scheduler the config came from, point for point (AFS: one more), ending
            # with the jump to σ = 0, as the flow configs
            opts = P.on_fixed_grid(self.config.preset, opts)
            clash = sorted({"timesteps", "denoise_to_zero", "t_start", "t_end"} & set(opts))
            if clash:
                raise ValueError(f"preset_options {clash}: the preset runs on the source scheduler's grid, multistep "
                                 "and ending with the jump to σ = 0; drop these options, give a spacing, or "
                                 "configure a schedule= instead")
            idx = source_timesteps(self.config.source_grid, n + int(bool(opts.get("afs", False))))
            ts = self._custom_times(idx, "timesteps")
            return P.get(self.config.preset, self.noise_schedule, n, timesteps=ts, denoise_to_zero=True, **opts)
        shift = _flow_shift(self.config, mu)
        if sigmas is None and "spacing" in opts:   # the user's spacing on the shifted scale
            opts.setdefault("shift", shift)
            opts.setdefault("denoise_to_zero", True)
            return P.get(self.config.preset, self.noise_schedule, n, **opts)
        opts = P.on_fixed_grid(self.config.preset, opts)
        fixed = {"timesteps", "denoise_to_zero"} | ({"afs", "shift", "spacing"} if sigmas is not None else set())
        clash = sorted(fixed & set(opts))
        if clash:
            raise ValueError(f"preset_options {clash}: the {'pipeline' if sigmas is not None else 'scheduler'}'s "
                             "grid is multistep and ends with the jump to σ = 0; drop these options, or configure "
                             "a schedule= instead")
        if sigmas is None:   # the grid of the scheduler this config came from, point for point (AFS: one more)
            ts = P.diffusers_flow_sigmas(self.config.flow_grid, n + int(bool(opts.get("afs", False))), shift,
                                         dynamic=bool(self.config.use_dynamic_shifting),
                                         num_train_timesteps=self.config.num_train_timesteps)
            ts[0] = min(ts[0], self.noise_schedule.t_max)
        else:
            ts = self._flow_times(sigmas, shift)
        return P.get(self.config.preset, self._flow_ns(ts), n, timesteps=list(ts), denoise_to_zero=True, **opts)

    def _flow_ns(self, ts) -> "NoiseScheduleFlow":
        """The flow noise schedule a grid runs on: ours, or, where the grid goes below its t_min
        (a shift < 1 or a negative mu moves diffusers' last σ = 1/1000 lower), the same schedule
        (α = 1 − σ, σ = t: the range is all t_min changes) reaching down to the grid's last σ."""
        low = float(np.min(ts))
        ns = self.noise_schedule
        if low >= ns.t_min:
            return ns
        if not low > 0:
            raise ValueError(f"set_timesteps: the flow grid reaches σ = {low!r}; every evaluation needs σ > 0")
        return NoiseScheduleFlow(t_min=low, t_max=ns.t_max)

    def _ns_of(self, schedule: Schedule):
        """The noise schedule `schedule` was built on: ours, or a flow schedule with a lower t_min
        (`_flow_ns`)."""
        fp = (schedule.meta or {}).get("noise_schedule")
        mine = self.noise_schedule
        if self.flow and isinstance(fp, dict) and fp.get("type") == "flow" and fp != mine.fingerprint():
            return NoiseScheduleFlow(t_min=fp["t_min"], t_max=fp["t_max"])
        return mine

    def _model_for(self, schedule: Schedule) -> DiffusionModel:
        ns = self._ns_of(schedule)
        if ns is self.noise_schedule:
            return self._model
        return DiffusionModel(_identity, ns, "flow", "continuous")

    def _custom_times(self, values: np.ndarray, name: str) -> list[float]:
        """A pipeline's custom timesteps / sigmas as times of the noise schedule."""
        ns = self.noise_schedule
        if name == "timesteps":
            if self.edm:
                raise ValueError("set_timesteps: timesteps= on an EDM config are its c_noise values; pass sigmas= instead")
            ts = values / self.config.num_train_timesteps if self.flow else (values + 1.0) / ns.total_N
        else:   # VP / EDM: the k-diffusion σ = e^{−λ}
            if np.any(values <= 0):
                raise ValueError(f"sigmas: must be > 0 (the final σ = 0 is the scheduler's own), got {values.tolist()}")
            ts = np.asarray(ns.inverse_lambda(-np.log(values)), dtype=np.float64)
        # float32 σ values: the ends may round just outside the range
        if not (np.all(np.diff(ts) < 0) and ts[0] <= ns.t_max * (1 + 1e-6) and ts[-1] >= ns.t_min * (1 - 1e-6)):
            raise ValueError(f"{name}: need strictly decreasing values within the noise schedule's range "
                             f"[{ns.t_min}, {ns.t_max}] (as times), got times {ts.tolist()}")
        return np.clip(ts, ns.t_min, ns.t_max).tolist()

    def _preset_on_times(self, n: int, ts: list[float], opts: dict) -> Schedule:
        """The preset evaluated at exactly these n times: the grid's n points, then the jump to
        σ = 0 (denoise-to-zero), as diffusers' schedulers end."""
        opts = P.on_fixed_grid(self.config.preset, opts)
        clash = sorted({"timesteps", "denoise_to_zero", "afs", "spacing", "t_start", "t_end"} & set(opts))
        if clash:
            raise ValueError(f"preset_options {clash}: custom timesteps / sigmas fix the grid (multistep, ending with "
                             "the jump to σ = 0); drop these options")
        if len(ts) < 2 and n > 1:
            raise ValueError("set_timesteps: need at least 2 custom times")
        return P.get(self.config.preset, self.noise_schedule, n, timesteps=ts, denoise_to_zero=True, **opts)

    def _flow_times(self, sigmas, shift: float) -> list[float]:
        """The pipeline's σ's, shifted as diffusers does; σ = 1 becomes t_max = 1 − 1e-6 (at σ = 1, α = 0:
        NoiseScheduleFlow)."""
        sig = np.asarray(_key_of(sigmas, "sigmas"), dtype=np.float64)
        if not (np.all(np.isfinite(sig)) and np.all(sig > 0) and np.all(sig <= 1)):
            raise ValueError(f"sigmas: flow σ's must lie in (0, 1] (the final σ = 0 is the scheduler's own), got "
                             f"{sig.tolist()}")
        ts = P.flow_shift(sig, shift)
        ns = self.noise_schedule
        ts[0] = min(ts[0], ns.t_max)
        if not np.all(np.diff(ts) < 0):
            raise ValueError(f"sigmas: need strictly decreasing values after the shift ({shift!r}), got {ts.tolist()}")
        return ts.tolist()

    def _afs_first(self) -> bool:
        """Does the first evaluation see something other than the start state (an AFS schedule)?"""
        return self._active.afs

    def _edm(self, e: int):
        return edm_coefficients(self._times[e], self.config.sigma_data, self.config.prediction_type == "v_prediction")

    def _index_of(self, timestep, caller: str) -> int | None:
        """The position of `timestep` in `self.timesteps`, as diffusers' `index_for_timestep`. A view of
        `self.timesteps` (what `for t in scheduler.timesteps[k:]` hands back, expanded or not) is
        located from its storage offset: no device-to-host read. Any other value is compared with
        the grid (one host read of a device tensor, as diffusers does): equal up to float32
        rounding, or the grid value cast to an integer (pipelines that pass `int(t)`). A copy on a GPU
        is read at the start of a run only (None after that: the position is the step count, as in
        diffusers), so no step synchronises with the host."""
        ts = self.timesteps
        if torch.is_tensor(timestep):
            if timestep.numel() == 0:
                raise ValueError(f"{caller}: timestep is an empty tensor")
            if (timestep.device == ts.device and timestep.dtype == ts.dtype and ts.stride(0) > 0
                    and timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()):
                off = timestep.storage_offset() - ts.storage_offset()
                if off % ts.stride(0) == 0 and 0 <= off // ts.stride(0) < len(ts):
                    return off // ts.stride(0)
            if timestep.device.type != "cpu" and self._e > 0:
                return None   # a device copy mid-run: reading it would synchronise every step; the count holds
            value = float(timestep.detach().reshape(-1)[0])
        else:
            try:
                value = float(timestep)
            except (TypeError, ValueError):
                raise ValueError(f"{caller}: timestep={timestep!r} must be a number or a tensor holding one of "
                                 "scheduler.timesteps") from None
        grid = self._timesteps_host
        close = (np.abs(grid - value) <= 1e-6 * np.maximum(1.0, np.abs(grid)) + 1e-4) | (np.floor(grid) == value) \
            | (np.round(grid) == value)
        if close.any():   # a repeated time (an implicit corrector evaluates twice there): the expected one
            j = self._shift + self._e
            return j if j < len(grid) and close[j] else int(np.flatnonzero(close)[0])
        raise ValueError(f"{caller}: timestep={value!r} is not one of this scheduler's timesteps "
                         f"{np.round(grid, 4).tolist()} (pass the values of scheduler.timesteps)")

    def _locate(self, timestep, caller: str) -> None:
        """Check that `timestep` is the run's next evaluation. At the start of a run that
        `set_begin_index` did not place, a later timestep starts the run there (pipelines that loop
        over `timesteps[t_start:]` without set_begin_index: Kandinsky img2img, video-to-video);
        anywhere else a timestep that is not the next one is an error, never a silent wrong step."""
        if timestep is None:
            return
        k = self._index_of(timestep, caller)
        j = self._shift + self._e
        if k is None or k == j:
            return
        if self._e == 0 and not self._handoff and not self._begin_explicit and self._final is None:
            self.set_begin_index(k)
            self._begin_explicit = False
            return
        where = (f"evaluation {j} (set_begin_index({self._begin_index}))" if self._e == 0
                 else f"evaluation {j} (step_index: {self._e} steps of this run done)")
        raise ValueError(f"{caller}: timestep {float(self._timesteps_host[k])!r} is timesteps[{k}] but the run is at "
                         f"{where}, timestep {float(self._timesteps_host[j]) if j < len(self._timesteps_host) else None!r}; "
                         "a run goes through timesteps in order (set_timesteps starts a new one)")

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network input: before the first evaluation of an AFS schedule the model input is already
        a step away from the noise; EDM configs scale it by c_in(σ). Identity otherwise."""
        if self._times is None:
            raise ValueError("scale_model_input: call set_timesteps first")
        if self._e < len(self._times):
            self._locate(timestep, "scale_model_input")
        x = sample
        if self._e == 0 and self._afs_first():
            if isinstance(self._first_input, float):
                raise ValueError("scale_model_input: the latents came from first_input(noise), which is already the "
                                 "AFS step's state; in a pipeline that calls scale_model_input pass the plain noise")
            x = sample * (self._tables.first_scale / self.init_noise_sigma)   # A_0·ε; the data mean is 0
            self._first_input = "scaled"
        if self.edm and self._e < len(self._times):
            x = x * self._edm(self._e)[2]
        return x

    def first_input(self, noise: torch.Tensor) -> torch.Tensor:
        """The latents to hand a pipeline that never calls `scale_model_input` (SD3, FLUX, DDPM, DDIM)
        when the schedule starts with the analytical first step: the net's first input is then the
        AFS state, a multiple of the noise, e.g. `pipe(..., latents=sched.first_input(noise))` (FLUX:
        packed noise). `step` recovers the noise from it. Without AFS this is `noise·init_noise_sigma`.
        Needs the evaluation times: a configured schedule, or after `set_timesteps`."""
        if self._times is None:
            if self._schedule is None:
                raise ValueError("first_input: a preset's times are known after set_timesteps; call it first, "
                                 "or configure a schedule=")
            self._full = self._schedule
            self._use(self._schedule)
        if not self._afs_first():
            return noise * self.init_noise_sigma
        self._first_input = self._tables.first_scale   # x_0 = A_0·ε: the data mean is 0 in pipelines
        return noise * self._first_input

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = α_t·x_0 + σ_t·ε at the given timesteps (values of `self.timesteps`, as img2img and
        inpainting pass them): diffusers' add_noise on VP and EDM configs, scale_noise on flow ones."""
        t = self._times_of(timesteps, original_samples)
        ns = self.noise_schedule
        alpha = torch.as_tensor(ns.marginal_alpha(t), dtype=original_samples.dtype, device=original_samples.device)
        sigma = torch.as_tensor(ns.marginal_std(t), dtype=original_samples.dtype, device=original_samples.device)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return alpha.reshape(shape) * original_samples + sigma.reshape(shape) * noise.to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow img2img (SD3, FLUX): σ·noise + (1 − σ)·sample at the timestep, as FlowMatchEuler."""
        if not self.flow:
            raise ValueError(f"scale_noise: a flow-matching pipeline's call; this USFScheduler has a {self.kind} config")
        if noise is None:
            raise ValueError("scale_noise: noise= is required")
        return self.add_noise(sample, noise, timestep)

    def _times_of(self, timesteps, like: torch.Tensor) -> np.ndarray:
        """Times of the noise schedule for `self.timesteps` values (one per sample, or one for all)."""
        if self._times is None:
            raise ValueError("add_noise: call set_timesteps first")
        vals = np.atleast_1d(np.asarray(timesteps.detach().cpu().double() if torch.is_tensor(timesteps) else timesteps,
                                        dtype=np.float64))
        mine = self._timesteps_host
        full = np.asarray(self._full_times)
        idx = np.abs(vals[:, None] - mine[None, :]).argmin(axis=1)
        on_grid = np.isclose(mine[idx], vals, rtol=1e-6, atol=1e-6)
        t = np.where(on_grid, full[idx], self._time_of_timestep(vals))   # grid values keep their exact times
        if len(t) == 1:
            t = np.repeat(t, like.shape[0])
        if len(t) != like.shape[0]:
            raise ValueError(f"add_noise: {len(t)} timesteps for a batch of {like.shape[0]}")
        return t

    def _time_of_timestep(self, vals: np.ndarray) -> np.ndarray:
        """Noise-schedule times of values in the pipeline's timestep convention (any training
        timestep, as diffusers' add_noise takes: DDPM index on VP, σ·num_train_timesteps on flow,
        c_noise = ln(σ)/4 on EDM); outside the schedule's range an error."""
        ns = self.noise_schedule
        if self.edm:
            t = np.exp(4.0 * vals)
        elif self.flow:
            t = vals / self.config.num_train_timesteps
        else:
            t = (vals + 1.0) / ns.total_N
        lo, hi = (ns.t_min, ns.t_max) if not self.flow else (0.0, 1.0)
        bad = ~((t >= lo * (1 - 1e-6)) & (t <= hi * (1 + 1e-6)) & np.isfinite(t)) | (self.flow & (t <= 0))
        if bad.any():
            raise ValueError(f"add_noise: timesteps {vals[bad].tolist()} are outside this noise schedule's range "
                             f"(as times [{lo}, {hi}])")
        return np.clip(t, lo if not self.flow else 0.0, hi)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ at the training timesteps, float32, as diffusers' VP schedulers (SAG, DiffEdit and
        LEDITS++ read it); VP configs only."""
        if self.kind != "vp":
            raise AttributeError(f"alphas_cumprod: a {self.kind} config has no discrete ᾱ table")
        ns = self.noise_schedule
        t = torch.arange(1, ns.total_N + 1, dtype=torch.float64) / ns.total_N
        return (torch.as_tensor(ns.marginal_alpha(t), dtype=torch.float64) ** 2).float()

    @property
    def betas(self) -> torch.Tensor:
        """β_i = 1 − ᾱ_i/ᾱ_{i−1} (β_0 = 1 − ᾱ_0), float32; VP configs only."""
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)
        return (1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).float()

    @property
    def alphas(self) -> torch.Tensor:
        """1 − β, float32; VP configs only."""
        return 1.0 - self.betas

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             generator=None, eta: float = 0.0, **kwargs) -> SchedulerOutput | tuple:
        """Append the evaluation's input and output to the basis and return the next model input
        (after the last evaluation, the result). This is an ODE sampler: `eta` must be 0 and other
        stochastic options are refused; `generator` is accepted (DDPM/DDIM pipelines always pass
        one) and unused."""
        if self._times is None:
            raise ValueError("step: call set_timesteps first")
        if eta != 0:
            raise ValueError(f"step: eta={eta!r}: USFScheduler is a deterministic ODE sampler; eta must be 0")
        active = sorted(k for k, v in kwargs.items() if v is not None and v is not False and v != 0)
        if active:   # e.g. DDIMPipeline passes use_clipped_model_output=False: off is fine
            raise ValueError(f"step: {', '.join(f'{k}={kwargs[k]!r}' for k in active)}: not supported by "
                             "USFScheduler (a deterministic ODE sampler)")
        if self._e >= len(self._times):
            raise ValueError(f"step: all {len(self._times)} evaluations of the schedule are done "
                             "(set_timesteps starts a new run)")
        self._locate(timestep, "step")
        model_output = self._checked_output(model_output, sample)
        e = self._e
        if self._final is not None:   # set_begin_index at the last evaluation: x̂0 from it
            x = sample.contiguous()
            out = model_output.to(x.dtype)
            if self.edm:
                c_skip, c_out, _, _ = self._edm(0)
                out = c_skip * x + c_out * out
            d_x, d_o = self._final
            nxt = d_x * x + d_o * out
            self._e += 1
            self._last_out = nxt
            return (nxt,) if not return_dict else SchedulerOutput(prev_sample=nxt)
        if e == 0 or self._handoff:
            sample = self._start(sample)
            e = self._e
        run = self._plan_run
        # the pipeline's state at this evaluation (inpainting may have blended it); the first one is
        # the run's own where scale_model_input handed the net the AFS state
        state = sample.contiguous() if e or self._first_from_pipeline else None
        x_e = state if state is not None else run.slots[run.pending.state]
        out = model_output.to(x_e.dtype).contiguous()
        if self.edm:  # preconditioned output F -> denoised D = c_skip·x + c_out·F, the data prediction
            out = get_combine(run.backend)([x_e, out], self._edm_coefs[e], torch.empty_like(x_e))
        run.feed(out, state=state)
        nxt = run.next_input()   # the plan's combinations up to the next model input, or the result
        nxt = nxt[0] if nxt is not None else run.result
        self._e += 1
        self._last_out = nxt
        if not return_dict:
            return (nxt,)
        return SchedulerOutput(prev_sample=nxt)

    def _checked_output(self, model_output, sample) -> torch.Tensor:
        """The network's output as the plan takes it: the first C channels of a 2C-channel output of a
        learned-variance network (variance_type 'learned' / 'learned_range': DeepFloyd IF, guided
        diffusion), as diffusers' schedulers; shapes and dtypes checked with the names a pipeline
        knows."""
        for name, v in (("model_output", model_output), ("sample", sample)):
            if not torch.is_tensor(v) or not v.is_floating_point():
                raise ValueError(f"step: {name} must be a floating-point tensor, got "
                                 f"{v.dtype if torch.is_tensor(v) else type(v).__name__}")
        if (self.config.variance_type in LEARNED_VARIANCE and model_output.dim() >= 2 and sample.dim() >= 2
                and model_output.shape[1] == 2 * sample.shape[1]):
            model_output = model_output[:, :sample.shape[1]]
        if model_output.shape != sample.shape:
            hint = (" (a learned-variance network's 2C channels: the config's variance_type must be 'learned' or "
                    "'learned_range')" if model_output.dim() >= 2 and sample.dim() >= 2
                    and model_output.shape[1] == 2 * sample.shape[1] else "")
            raise ValueError(f"step: model_output has shape {tuple(model_output.shape)} but sample has "
                             f"{tuple(sample.shape)}{hint}")
        if self._e and self._plan_run is not None and not self._handoff:   # (a hand-off may restart: _start)
            run = self._plan_run.x_t
            if run.shape != sample.shape or run.device != sample.device:
                raise ValueError(f"step: sample has shape {tuple(sample.shape)} on {sample.device} but this run's "
                                 f"latents have {tuple(run.shape)} on {run.device} (the batch changed mid-run?); "
                                 "set_timesteps starts a new run")
        return model_output

    def _start(self, sample: torch.Tensor) -> torch.Tensor:
        """First step of a run: the plan's start state from the pipeline's latents, coefficients on
        their device, the ops before the first evaluation."""
        if self._handoff:
            self._handoff = False
            last = self._last_out
            same = last is not None and sample.shape == last.shape and sample.dtype == last.dtype and (
                sample.data_ptr() == last.data_ptr() or torch.equal(sample, last))
            if same:
                return sample
            k = self._begin_index   # not the latents this object returned: start fresh from them
            self._use(self._tail(k), begin=k)
        mode, self._first_input = self._first_input, None
        p = self._tables
        x_start = sample.contiguous()
        if self._active.afs:
            if isinstance(mode, float):   # first_input(noise): the latents are x_0 = A_0·ε itself
                if not math.isclose(mode, p.first_scale, rel_tol=1e-12):
                    raise ValueError("step: the latents came from first_input(noise) for other times than this run's "
                                     "(set_timesteps changed the grid): call first_input after set_timesteps")
                x_start = x_start * (self.init_noise_sigma / mode)   # back to x_T = σ_T·ε
            elif mode != "scaled":        # scale_model_input saw x_T = ε·init_noise_sigma: the latents
                raise ValueError("step: this schedule starts with the analytical first step (afs=True), so the "
                                 "network's first input is the AFS state, but the pipeline did not call "
                                 "scale_model_input (diffusers' SD3, FLUX, DDPM and DDIM pipelines do not): pass "
                                 "latents=scheduler.first_input(noise) to the pipeline, or use a schedule with afs=False")
        tables, self._edm_coefs = p.coefficients(sample.dtype, sample.device)
        # the plan's run: each combination one fused pass (usf_fast.backends: float32 accumulation,
        # coefficients already on the latents' device, so no host synchronisation); every output a
        # new tensor (the pipeline may still hold a state a reused buffer held); the data mean is 0
        self._plan_run = PlanRun(p.plan, x_start, "auto", tables=tables, fresh=True)
        self._plan_run.next_input()   # the ops before the first evaluation
        # the net's first input was the pipeline's latents themselves, except where scale_model_input
        # handed it the AFS state computed from them
        self._first_from_pipeline = not self._active.afs or isinstance(mode, float)
        return sample

    def _tail(self, k: int) -> Schedule:
        tail = self._preset_tail(self._full, k) if self._schedule is None else None
        return self._full.tail(k) if tail is None else tail

    def __len__(self):
        return self.config.num_train_timesteps


class _StepPlan:
    """A compiled `Plan` (usf_fast.plan: the minimal-slot lowering `sample` runs) and what the
    scheduler needs beside it: the evaluation times, EDM's per-evaluation (c_skip, c_out), the AFS
    factor of the first input, and the coefficient tables per dtype and device. `step` runs it
    through a `PlanRun` up to each next model input; each combination reads the few buffers that
    are still live, so a step's cost does not grow with the NFE."""

    def __init__(self, plan: Plan, sched: "USFScheduler", schedule: Schedule):
        self.plan = plan
        self.evals = [op for op in plan.ops if isinstance(op, Eval)]
        self.times = [op.t for op in self.evals]
        self.edm = None
        if sched.edm:
            v = sched.config.prediction_type == "v_prediction"
            self.edm = [edm_coefficients(t, sched.config.sigma_data, v)[:2] for t in self.times]
        # x_T = prior_std·ε (σ_max for EDM): A_0 per unit of ε
        self.first_scale = self._first_scale() * float(sched.noise_schedule.prior_std(schedule.timesteps[0]))
        self._device = {}

    def _first_scale(self) -> float:
        """The first evaluation's input per unit of the start state x_T (data mean 0), float64."""
        slots = [None] * self.plan.num_slots
        slots[self.plan.input_slot] = torch.ones(1, dtype=torch.float64)
        for op in self.plan.ops:
            if isinstance(op, Eval):
                break
            if isinstance(op, Const):
                slots[op.out] = torch.zeros(1, dtype=torch.float64)
            else:
                val = sum(c * slots[j] for c, j in zip(op.coefs, op.inputs))
                slots[op.out] = val
                if op.out2 is not None:
                    slots[op.out2] = sum(c * slots[j] for c, j in zip(op.coefs2, op.inputs))
        return float(slots[self.evals[0].state]) if self.evals else 1.0

    def coefficients(self, dtype: torch.dtype, device) -> tuple:
        """(per combination (coefs, coefs2) on `device`, per evaluation EDM's (c_skip, c_out)):
        made with one host-to-device copy per table, once per dtype and device."""
        key = (dtype, str(device))
        hit = self._device.get(key)
        if hit is None:
            cdt = coefficient_dtype(dtype)
            edm = (list(torch.tensor(self.edm, dtype=cdt).to(device).unbind(0)) if self.edm else None)
            hit = self._device[key] = (coefficient_tables(self.plan, cdt, device), edm)
        return hit
