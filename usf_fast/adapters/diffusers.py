"""diffusers drop-in scheduler: run any usf_fast `Schedule` inside an existing pipeline.

    from usf_fast.adapters.diffusers import USFScheduler
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=my_schedule)   # or preset="unipc"
    images = pipe(num_inference_steps=my_schedule.nfe).images

The schedule runs as its dense program (`usf_fast.dense`): `timesteps` are the schedule's
evaluation times (in the DDPM index space, float: searched schedules need not land on integers),
each `step` appends the model input and the (guided) raw output to the basis and returns the next
model input — after the last evaluation, the result. All coefficients are host floats computed in
`set_timesteps`; `step` does no device-to-host reads.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .. import presets as P
from ..checks import check_noise_schedule, check_schedule_range
from ..dense import dense_program, input_width
from ..model import DiffusionModel
from ..noise_schedules import NoiseSchedule, NoiseScheduleEDM, NoiseScheduleFlow, NoiseScheduleVP
from ..schedule import Schedule
from .edm import edm_coefficients, edm_precond

__all__ = ["USFScheduler", "noise_schedule_from_diffusers_config", "wrap_unet"]

PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas):
    n = num_train_timesteps
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float32)
    raise ValueError(f"beta_schedule={beta_schedule!r}: USFScheduler supports VP schedules 'linear', "
                     "'scaled_linear', 'squaredcos_cap_v2' or trained_betas")


EDM_PREDICTION = ("epsilon", "v_prediction")  # EDM preconditioned outputs F, as diffusers' EDM schedulers
FLOW_UNSUPPORTED = ("invert_sigmas", "shift_terminal", "stochastic_sampling")


def _is_flow(cfg: dict) -> bool:
    """FlowMatchEuler-style configs (a `shift`, no betas) and the flow modes of DPM-Solver / UniPC."""
    return bool(cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction"
                or ("shift" in cfg and "beta_schedule" not in cfg and cfg.get("sigma_data") is None))


def config_kind(config) -> str:
    """"vp" (beta configs: DDPM, DDIM, DPM-Solver, UniPC, Euler, ...), "edm" (sigma_data configs:
    EDMEuler, EDMDPMSolverMultistep) or "flow" (FlowMatchEuler, and DPM-Solver / UniPC with
    use_flow_sigmas); anything else is a ValueError naming what it is. Keys are read by value
    (diffusers gives VP DPM-Solver configs a use_dynamic_shifting=False key)."""
    cfg = dict(config)
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if cfg.get(key):
            raise ValueError(f"scheduler config has {key}=True; USFScheduler runs its own timesteps on the "
                             "model's noise schedule (drop that option, or pass a usf_fast karras-spaced schedule)")
    if _is_flow(cfg):
        for key in FLOW_UNSUPPORTED:
            if cfg.get(key):
                raise ValueError(f"scheduler config has {key}={cfg[key]!r}: not supported by USFScheduler's flow mode")
        return "flow"
    if cfg.get("sigma_data") is not None:
        return "edm"
    if "sigma_max" in cfg and "beta_schedule" not in cfg:
        raise ValueError("scheduler config is a variance-exploding (score SDE) config without sigma_data: not VP or "
                         "EDM; wrap such a model with usf_fast.adapters.edm.edm_model instead")
    return "vp"


def noise_schedule_from_diffusers_config(config) -> NoiseSchedule:
    """The noise schedule of a diffusers scheduler config: discrete VP (the same float32 betas) or
    EDM (sigma_min, sigma_max)."""
    cfg = dict(config)
    kind = config_kind(cfg)
    if kind == "edm":
        return NoiseScheduleEDM(cfg.get("sigma_min", 0.002), cfg.get("sigma_max", 80.0))
    if kind == "flow":
        return NoiseScheduleFlow()
    betas = _betas(cfg.get("num_train_timesteps", 1000), cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02),
                   cfg.get("beta_schedule", "linear"), cfg.get("trained_betas"))
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).double()
    return NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)


def _check_prediction(prediction_type: str, kind: str) -> None:
    allowed = {"vp": tuple(PREDICTION), "edm": EDM_PREDICTION, "flow": ("flow_prediction",)}[kind]
    if prediction_type not in allowed:
        hint = " (a flow config: kind='flow', or USFScheduler.from_config(<a flow scheduler's config>))" \
            if prediction_type == "flow_prediction" else ""
        raise ValueError(f"prediction_type={prediction_type!r}: must be one of {', '.join(allowed)}"
                         + {"vp": "", "edm": " for an EDM config", "flow": " for a flow-matching config"}[kind] + hint)


def _flow_grid_of(cfg: dict) -> str:
    """Which diffusers flow scheduler a config came from (its default grid): UniPC and DPM-Solver
    flow configs carry their solver fields, FlowMatchEuler's neither."""
    if "flow_grid" in cfg:
        return cfg["flow_grid"]
    if "predict_x0" in cfg or "disable_corrector" in cfg:
        return "flow_unipc"
    return "flow_dpm" if "algorithm_type" in cfg else "flow_euler"


def _flow_shift(cfg, mu) -> float:
    """The flow grid's shift: the static `shift`, or from the pipeline's `mu` with dynamic shifting
    (e^mu for the exponential time shift FLUX uses, mu for the linear one)."""
    if not cfg.use_dynamic_shifting:
        return float(cfg.shift)
    if mu is None:
        raise ValueError("set_timesteps: this flow scheduler uses dynamic shifting (use_dynamic_shifting=True) and "
                         "needs mu= (the FLUX pipeline passes it)")
    return math.exp(mu) if cfg.time_shift_type == "exponential" else float(mu)


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
                 time_shift_type: str = "exponential", flow_grid: str = "flow_euler"):
        self.kind = kind or ("edm" if sigma_data is not None else "vp")
        if self.kind not in ("vp", "edm", "flow"):
            raise ValueError(f"kind={kind!r}: must be 'vp', 'edm' or 'flow'")
        self.edm, self.flow = self.kind == "edm", self.kind == "flow"
        _check_prediction(prediction_type, self.kind)
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
            self.noise_schedule = noise_schedule_from_diffusers_config(
                {k: v for k, v in self.config.items() if k not in ("sigma_min", "sigma_max", "sigma_data")})
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
            self._model = DiffusionModel(lambda x, t: x, self.noise_schedule, "x0", "sigma")
        elif self.flow:
            self._model = DiffusionModel(lambda x, t: x, self.noise_schedule, "flow", "continuous")
        else:
            self._model = DiffusionModel(lambda x, t: x, self.noise_schedule, PREDICTION[prediction_type], "discrete")
        self.init_noise_sigma = float(self.noise_schedule.prior_std(self.noise_schedule.t_max))
        self.timesteps = None
        self.num_inference_steps = None
        self._step_index = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' `from_config`, but the kind of the source config (VP, EDM or flow) is read from
        all its keys: diffusers drops keys left at their defaults when a config moves between classes."""
        cfg = dict(config or {})
        kind = config_kind(cfg)
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
            kwargs.setdefault("flow_grid", _flow_grid_of(cfg))
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

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
        shifting), ending with the jump to σ = 0 (denoise-to-zero) as diffusers' flow schedulers do."""
        if timesteps is not None:
            raise ValueError("set_timesteps: custom timesteps= are not supported by USFScheduler; pass a usf_fast "
                             "Schedule (schedule=) with the times you want")
        if not self.flow and (sigmas is not None or mu is not None):
            raise ValueError(f"set_timesteps: {'sigmas' if sigmas is not None else 'mu'}= is a flow-matching "
                             f"pipeline's; this USFScheduler has a {self.kind} config (use the pipeline's own "
                             "scheduler config: USFScheduler.from_config(pipe.scheduler.config, ...))")
        self._active = self._pick_schedule(num_inference_steps, sigmas, mu)
        prog = dense_program(self._active, self._model)
        self._A = [prog.A[e, :input_width(e)].tolist() for e in range(prog.nfe)]
        self._F = prog.F.tolist()
        self._times = prog.times.tolist()
        self.init_noise_sigma = float(self.noise_schedule.prior_std(self._active.timesteps[0]))
        if self.edm:  # the network's noise input c_noise = log(σ)/4, as diffusers' EDM schedulers
            self.timesteps = torch.tensor([self._edm(e)[3] for e in range(prog.nfe)], dtype=torch.float32, device=device)
        elif self.flow:  # σ·num_train_timesteps, as diffusers' flow schedulers
            self.timesteps = torch.tensor(prog.times * self.config.num_train_timesteps, dtype=torch.float32,
                                          device=device)
        else:
            n_train = self.noise_schedule.total_N
            self.timesteps = torch.tensor((prog.times - 1.0 / n_train) * n_train, dtype=torch.float32, device=device)
        self.num_inference_steps = prog.nfe
        self._step_index = 0
        self._basis = None
        self._first_input_scaled = False

    def _pick_schedule(self, num_inference_steps, sigmas, mu) -> Schedule:
        s = self._schedule
        if s is not None:
            if num_inference_steps is not None and int(num_inference_steps) != s.nfe:
                raise ValueError(f"set_timesteps: num_inference_steps={num_inference_steps} but the configured "
                                 f"schedule has NFE {s.nfe}; call the pipeline with num_inference_steps={s.nfe}")
            if sigmas is not None or mu is not None:
                warnings.warn("set_timesteps: the configured schedule runs at its own times; the pipeline's "
                              f"{'sigmas' if sigmas is not None else 'mu'} are not used", RuntimeWarning, stacklevel=3)
            return s
        if sigmas is not None:
            num_inference_steps = len(sigmas) if num_inference_steps is None else num_inference_steps
            if int(num_inference_steps) != len(sigmas):
                raise ValueError(f"set_timesteps: {len(sigmas)} sigmas for num_inference_steps={num_inference_steps}")
        if num_inference_steps is None:
            raise ValueError("set_timesteps: give num_inference_steps (the NFE) when no schedule is configured")
        opts = dict(self.config.preset_options or {})
        n = int(num_inference_steps)
        if not self.flow:
            return P.get(self.config.preset, self.noise_schedule, n, **opts)
        shift = _flow_shift(self.config, mu)
        if sigmas is None and "spacing" in opts:   # the user's spacing on the shifted scale
            opts.setdefault("shift", shift)
            opts.setdefault("denoise_to_zero", True)
            return P.get(self.config.preset, self.noise_schedule, n, **opts)
        fixed = {"timesteps", "denoise_to_zero", "method"} | ({"afs", "shift", "spacing"} if sigmas is not None else set())
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
        return P.get(self.config.preset, self.noise_schedule, n, timesteps=list(ts), denoise_to_zero=True, **opts)

    def _flow_times(self, sigmas, shift: float) -> list[float]:
        """The pipeline's σ's, shifted as diffusers does; the first clipped to t_max < 1."""
        ts = P.flow_shift(np.asarray(sigmas, dtype=np.float64), shift)
        ns = self.noise_schedule
        ts[0] = min(ts[0], ns.t_max)
        if not (np.all(np.diff(ts) < 0) and ts[-1] >= ns.t_min):
            raise ValueError(f"sigmas: need strictly decreasing values that stay >= {ns.t_min} after the shift, "
                             f"got {ts.tolist()}")
        return ts.tolist()

    def _afs_first(self) -> bool:
        """Does the first evaluation see something other than the noise (an AFS schedule)?"""
        return bool(self._A) and self._A[0] != [1.0, 0.0]

    @staticmethod
    def _combine(coefs, basis):
        out = None
        for c, b in zip(coefs, basis):
            if c != 0.0 and b is not None:
                out = c * b if out is None else out + c * b
        return out

    def _edm(self, e: int):
        return edm_coefficients(self._times[e], self.config.sigma_data, self.config.prediction_type == "v_prediction")

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network input: before the first evaluation of an AFS schedule the model input is already
        a step away from the noise; EDM configs scale it by c_in(σ). Identity otherwise."""
        if self._step_index is None:
            raise ValueError("scale_model_input: call set_timesteps first")
        x = sample
        if self._step_index == 0 and self._afs_first():
            x = self._combine(self._A[0], [sample / self.init_noise_sigma, None])
            self._first_input_scaled = True
        if self.edm and self._step_index < self.num_inference_steps:
            x = x * self._edm(self._step_index)[2]
        return x

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             **kwargs) -> SchedulerOutput | tuple:
        if self._step_index is None:
            raise ValueError("step: call set_timesteps first")
        e = self._step_index
        if e >= self.num_inference_steps:
            raise ValueError(f"step: all {self.num_inference_steps} evaluations of the schedule are done")
        if e == 0:
            if self._afs_first() and not self._first_input_scaled:
                raise ValueError("step: this schedule starts with the analytical first step (afs=True), so the network's "
                                 "first input is scale_model_input(latents), but the pipeline did not call "
                                 "scale_model_input (diffusers' DDPM/DDIM and flow pipelines do not): use a schedule "
                                 "with afs=False in this pipeline")
            self._basis = [sample / self.init_noise_sigma, None]  # ε; the data mean is 0 for pipelines
            x_e = self._combine(self._A[0], self._basis)
        else:
            x_e = sample
        out = model_output.to(x_e.dtype)
        if self.edm:  # preconditioned output F -> denoised D, the data prediction the program expects
            c_skip, c_out, _, _ = self._edm(e)
            out = c_skip * x_e + c_out * out
        self._basis += [x_e, out]
        self._step_index += 1
        if e + 1 < self.num_inference_steps:
            nxt = self._combine(self._A[e + 1], self._basis)
        else:
            nxt = self._combine(self._F, self._basis)
        if not return_dict:
            return (nxt,)
        return SchedulerOutput(prev_sample=nxt)

    def __len__(self):
        return self.config.num_train_timesteps


def _run_unet(unet, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
    """The UNet in its own dtype, the output in x's: the search's float64 reference solve (and a
    float32 sampler around a float16 UNet) then call it as they call any net."""
    dtype = getattr(unet, "dtype", x.dtype)
    return unet(x.to(dtype), t.float(), **kwargs).sample.to(x.dtype)   # timesteps stay float32, as in diffusers


def wrap_unet(unet, scheduler_config, *, cond=None, uncond=None, guidance_scale: float | None = None) -> DiffusionModel:
    """A diffusers UNet plus its scheduler config as a `DiffusionModel` for `usf_fast.sample` and
    the search. With `cond` (text embeddings) the UNet gets `encoder_hidden_states`; with
    `guidance_scale`, `uncond` too (classifier-free guidance in one batched call). EDM configs
    (sigma_data) get diffusers' EDM preconditioning around the UNet."""
    cfg = dict(scheduler_config)
    ns = noise_schedule_from_diffusers_config(cfg)
    ptype = cfg.get("prediction_type", "epsilon")
    edm = isinstance(ns, NoiseScheduleEDM)
    if ns.kind == "flow":
        raise ValueError("wrap_unet: a flow-matching config; flow networks (SD3/FLUX transformers) are wrapped as "
                         "usf_fast.DiffusionModel(fn, usf_fast.NoiseScheduleFlow(), prediction='flow', "
                         "time_input=lambda t: 1000 * t)")
    _check_prediction(ptype, ns.kind)
    if cond is None:
        raw = lambda x, t: _run_unet(unet, x, t)  # noqa: E731
    else:
        raw = lambda x, t, c: _run_unet(unet, x, t, encoder_hidden_states=c)  # noqa: E731
    if not edm:
        return DiffusionModel(raw, ns, PREDICTION[ptype], "discrete", guidance_scale=guidance_scale, cond=cond,
                              uncond=uncond)
    denoiser = edm_precond(raw, float(cfg.get("sigma_data", 0.5)), v_prediction=ptype == "v_prediction")
    return DiffusionModel(denoiser, ns, "x0", "sigma", guidance_scale=guidance_scale, cond=cond, uncond=uncond)
