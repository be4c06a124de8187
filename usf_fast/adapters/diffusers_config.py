"""Reading a diffusers scheduler config: what noise schedule the network was trained on, what time
input it takes, and which of the config's fields a usf_fast schedule replaces.

The source scheduler is the oracle (docs/design.md, §5 "Configs"): a config that names its class
(`_class_name`, as every saved or live diffusers config does) is completed by instantiating that
class, so fields left at that class's defaults — which diffusers drops when a config moves between
classes — take that class's values, and the noise schedule is the one the instance computes after
every option it applies (CogVideoX's `snr_shift_scale`, for example). Every field is then either
honoured, replaced by the usf_fast schedule (the source's own sampler choices: its order, its grid
spacing, its clipping), or refused by name.
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch

from ..noise_schedules import NoiseSchedule, NoiseScheduleEDM, NoiseScheduleFlow, NoiseScheduleVP

__all__ = ["config_kind", "noise_schedule_from_diffusers_config", "read_source_config"]

PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
EDM_PREDICTION = ("epsilon", "v_prediction")  # EDM preconditioned outputs F, as diffusers' EDM schedulers
FLOW_UNSUPPORTED = ("invert_sigmas", "shift_terminal", "stochastic_sampling")
#: flow-grid options of FlowMatchEuler that have no usf_fast equivalent on a flow grid
FLOW_SPACING_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

#: source classes whose network takes the DDPM index of a discrete VP schedule (or, with
#: use_flow_sigmas, σ·1000 of a flow schedule)
VP_SOURCES = (
    "DDPMScheduler", "DDPMParallelScheduler", "DDIMScheduler", "DDIMParallelScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
    "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
    "PNDMScheduler", "SASolverScheduler", "TCDScheduler", "UniPCMultistepScheduler", "UnCLIPScheduler",
    "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler",
)
#: classes whose evaluations interleave extra points with a base grid, and the class of that grid:
#: KDPM2 and DPM-Solver SDE add σ midpoints to Euler's; PNDM's Runge–Kutta warm-up adds half steps
#: to DDIM's
BASE_GRID = {"KDPM2DiscreteScheduler": "EulerDiscreteScheduler", "KDPM2AncestralDiscreteScheduler":
             "EulerDiscreteScheduler", "DPMSolverSDEScheduler": "EulerDiscreteScheduler",
             "PNDMScheduler": "DDIMScheduler"}
#: source classes whose network takes c_noise = ln(σ)/4 (EDM preconditioning)
EDM_SOURCES = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
#: source classes whose network takes σ·1000 of a rectified-flow schedule
FLOW_SOURCES = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
SOURCES = VP_SOURCES + EDM_SOURCES + FLOW_SOURCES

#: classes refused with the reason (any class not in SOURCES is refused; these say why)
REFUSED = {
    "CosineDPMSolverMultistepScheduler": "Stable Audio's cosine σ schedule: its network gets c_noise = "
                                         "atan(σ)·2/π, not EDM's ln(σ)/4",
    "LTXEulerAncestralRFScheduler": "a rectified-flow ancestral sampler without a flow config (no shift); use "
                                    "FlowMatchEulerDiscreteScheduler's config of the same pipeline",
    "DDPMWuerstchenScheduler": "Würstchen's continuous cosine schedule: its network gets the ratio t in [0, 1], "
                               "not a DDPM index",
    "CMStochasticIterativeScheduler": "consistency-model sampling: the network maps any σ to the data in one call",
    "ScoreSdeVeScheduler": "a variance-exploding score SDE config, not VP or EDM; wrap such a model with "
                           "usf_fast.adapters.edm.edm_model instead",
    "KarrasVeScheduler": "a variance-exploding score SDE config, not VP or EDM; wrap such a model with "
                         "usf_fast.adapters.edm.edm_model instead",
    "IPNDMScheduler": "its own trigonometric schedule without betas",
    "RePaintScheduler": "RePaint's resampling jumps (undo_step), not an ODE solve",
    "DDIMInverseScheduler": "an inversion (data to noise), not sampling",
    "DPMSolverMultistepInverseScheduler": "an inversion (data to noise), not sampling",
}

#: fields the usf_fast schedule replaces: the source's own sampler (order, grid, final step,
#: clipping of x̂0 by DDPM/DDIM). A USFScheduler runs its `schedule=` or `preset=` instead.
SAMPLER_FIELDS = frozenset({
    "algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final", "final_sigmas_type",
    "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range", "sample_max_value",
    "dynamic_thresholding_ratio", "skip_prk_steps", "predict_x0", "disable_corrector", "solver_p",
    "interpolation_type", "original_inference_steps", "timestep_scaling", "noise_sampler_seed",
    "lambda_min_clipped", "corrector_order", "predictor_order", "tau_func", "base_shift", "max_shift",
    "base_image_seq_len", "max_image_seq_len", "snr_shift_scale", "use_lu_lambdas", "use_karras_sigmas",
    "use_exponential_sigmas", "use_beta_sigmas", "sigma_schedule", "rho", "timestep_type", "thresholding",
    "rescale_betas_zero_snr", "use_flow_sigmas", "flow_shift", "invert_sigmas", "shift_terminal",
    "stochastic_sampling", "source_grid",
})
LEARNED_VARIANCE = ("learned", "learned_range")


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
    if _is_flow(cfg):
        for key in FLOW_UNSUPPORTED + FLOW_SPACING_OPTIONS:
            if cfg.get(key):
                raise ValueError(f"scheduler config has {key}={cfg[key]!r}: not supported by USFScheduler's flow mode "
                                 f"(it has no such grid on a flow schedule); set {key}=False, or pass the pipeline's "
                                 "sigmas= / a schedule=")
        return "flow"
    if cfg.get("use_beta_sigmas"):
        raise ValueError("scheduler config has use_beta_sigmas=True: no usf_fast spacing matches it; drop that "
                         "option (USFScheduler runs its preset's own spacing) or pass a schedule=")
    if cfg.get("sigma_data") is not None:
        return "edm"
    if "sigma_max" in cfg and "beta_schedule" not in cfg:
        raise ValueError("scheduler config is a variance-exploding (score SDE) config without sigma_data: not VP or "
                         "EDM; wrap such a model with usf_fast.adapters.edm.edm_model instead")
    return "vp"


def _refuse_fields(cfg: dict, source: str) -> None:
    """Fields that change what the network was trained on or what the pipeline expects, and that
    USFScheduler does not implement: refused by name with the value that works."""
    where = f" ({source})" if source else ""
    if cfg.get("thresholding"):
        raise ValueError(f"scheduler config{where} has thresholding=True (dynamic thresholding of x̂0, DeepFloyd IF): "
                         "not implemented by USFScheduler; set thresholding=False (the samples change) or keep the "
                         "pipeline's scheduler")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"scheduler config{where} has rescale_betas_zero_snr=True: ᾱ_T = 0 (zero terminal SNR) has no "
                         "finite log-SNR at t = T and USFScheduler's VP schedules need one; keep the pipeline's "
                         "scheduler, or set rescale_betas_zero_snr=False if the network was not trained with it")
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"scheduler config{where} has timestep_type={cfg['timestep_type']!r}: the network takes "
                         "0.25·ln σ (Stable Video Diffusion); USFScheduler hands VP networks the DDPM index "
                         "(timestep_type='discrete' only)")
    if cfg.get("sigma_data") is not None and cfg.get("sigma_schedule", "karras") == "karras" \
            and float(cfg.get("rho", 7.0)) != 7.0:
        raise ValueError(f"scheduler config{where} has rho={cfg['rho']!r}: USFScheduler's Karras spacing from a config "
                         "uses ρ = 7; pass preset_options={'spacing': 'karras', 'rho': ...} instead")
    if cfg.get("sigma_schedule", "karras") not in ("karras", "exponential"):
        raise ValueError(f"scheduler config{where} has sigma_schedule={cfg['sigma_schedule']!r}: must be 'karras' or "
                         "'exponential'")


@functools.lru_cache(maxsize=1)
def _init_keys() -> dict:
    """frozenset of __init__ parameters -> the diffusers scheduler classes that take exactly those."""
    import diffusers.schedulers as schedulers   # the scheduler modules only, not every pipeline's
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import DummyObject
    out: dict = {}
    for n in dir(schedulers):
        if not n.endswith("Scheduler"):
            continue
        try:
            c = getattr(schedulers, n)
        except Exception:   # noqa: BLE001 - an optional scheduler whose imports fail is not one a config names
            continue
        if inspect.isclass(c) and issubclass(c, SchedulerMixin) and c is not SchedulerMixin \
                and not isinstance(c, DummyObject):
            keys = frozenset(inspect.signature(c.__init__).parameters) - {"self", "kwargs"}
            out.setdefault(keys, []).append(n)
    return out


def _class_by_keys(cfg: dict) -> str | None:
    """The class of a live config (`pipe.scheduler.config` carries no `_class_name`): the diffusers
    scheduler whose __init__ takes exactly its keys. Classes with the same keys and the same noise
    schedule (DDIM / DDIMParallel, ...) are one; a tie between a class read here and one refused is
    refused."""
    keys = frozenset(k for k in cfg if not k.startswith("_"))
    if not keys:
        return None
    names = _init_keys().get(keys, [])   # (a live USFScheduler config has all of USFScheduler's keys: no match)
    ours = [n for n in names if n in SOURCES]
    if ours and len(ours) < len(names):
        raise ValueError(f"scheduler config with the fields of {' or '.join(names)}: USFScheduler reads "
                         f"{', '.join(ours)} but not {', '.join(n for n in names if n not in ours)}, and a live config "
                         "does not say which it is; pass the scheduler itself (USFScheduler.from_config(pipe.scheduler))"
                         " or its saved config (with _class_name)")
    return (ours or names or [None])[0]


def source_class_defaults(name: str) -> dict:
    """A diffusers scheduler class's __init__ defaults (for fields USFScheduler does not know: one
    left at its default changes nothing)."""
    import diffusers
    cls = getattr(diffusers, name)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def read_source_config(config) -> dict:
    """The config of the scheduler a pipeline ships, completed and checked (module docstring).

    A config that names a diffusers scheduler class gets that class's defaults for the fields it
    leaves out, and, on VP configs, a `source_alphas_cumprod` entry when the class's noise schedule is
    not the one its betas give (CogVideoX's SNR shift). A class outside `SOURCES`, or a field the
    adapters cannot honour, is a ValueError naming it."""
    if hasattr(config, "config") and hasattr(config, "set_timesteps"):   # a scheduler object: its class is known
        cfg = dict(config.config)
        cfg["_class_name"] = type(config).__name__
    else:
        cfg = dict(config if config is not None else {})
    name = cfg.get("_class_name") or _class_by_keys(cfg)
    if not isinstance(name, str) or name == "USFScheduler":
        _refuse_fields(cfg, "")
        return cfg
    if name not in SOURCES:
        why = REFUSED.get(name, "its noise schedule or network time input is not one USFScheduler reproduces")
        raise ValueError(f"scheduler config of {name}: {why}. USFScheduler reads the configs of VP schedulers "
                         f"({', '.join(VP_SOURCES)}), EDM ones ({', '.join(EDM_SOURCES)}) and flow ones "
                         f"({', '.join(FLOW_SOURCES)})")
    import diffusers
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"scheduler config of {name}: this diffusers ({diffusers.__version__}) has no such class")
    _refuse_fields(cfg, name)   # before the class runs its own checks on them
    given = {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}
    try:
        source = cls.from_config(given)
    except (ValueError, NotImplementedError, TypeError) as e:
        raise ValueError(f"scheduler config of {name}: {name} itself refuses it: {e}") from None
    full = {k: v for k, v in source.config.items() if not k.startswith("_")}
    full["_class_name"] = name
    for k, v in cfg.items():   # fields this class does not know (USFScheduler's own, or a newer diffusers')
        full.setdefault(k, v)
    _refuse_fields(full, name)
    if config_kind(full) == "vp" and name in VP_SOURCES:   # its inference grid, for presets (source_timesteps)
        full["source_grid"] = {"class": name, "config": {k: v for k, v in source.config.items()
                                                         if not k.startswith("_")}}
    if config_kind(full) == "vp" and getattr(source, "alphas_cumprod", None) is not None:
        theirs = source.alphas_cumprod.double()
        if not bool(torch.isfinite(theirs).all()) or float(theirs.min()) <= 0 or float(theirs.max()) >= 1:
            raise ValueError(f"scheduler config of {name}: its alphas_cumprod leave (0, 1) (zero terminal SNR or "
                             "an invalid schedule): USFScheduler's VP schedules need a finite log-SNR everywhere")
        mine = torch.cumprod(1.0 - _betas(full.get("num_train_timesteps", 1000), full.get("beta_start", 1e-4),
                                          full.get("beta_end", 0.02), full.get("beta_schedule", "linear"),
                                          full.get("trained_betas")), 0).double()
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-6, atol=0):
            full["source_alphas_cumprod"] = theirs.tolist()
    return full


def noise_schedule_from_diffusers_config(config) -> NoiseSchedule:
    """The noise schedule of a diffusers scheduler config (`read_source_config` first): discrete VP
    (the same float32 betas, or the source's `alphas_cumprod` where it applies options to them),
    EDM (sigma_min, sigma_max) or flow."""
    cfg = read_source_config(config)
    kind = config_kind(cfg)
    if kind == "edm":
        return NoiseScheduleEDM(cfg.get("sigma_min", 0.002), cfg.get("sigma_max", 80.0))
    if kind == "flow":
        return NoiseScheduleFlow()
    if cfg.get("source_alphas_cumprod") is not None:
        ac = torch.as_tensor(np.asarray(cfg["source_alphas_cumprod"], dtype=np.float64))
        if ac.ndim != 1 or len(ac) < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac.diff() < 0).all()):
            raise ValueError("source_alphas_cumprod: must be a decreasing list of numbers in (0, 1)")
        return NoiseScheduleVP("discrete", alphas_cumprod=ac)
    betas = _betas(cfg.get("num_train_timesteps", 1000), cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02),
                   cfg.get("beta_schedule", "linear"), cfg.get("trained_betas"))
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).double()
    return NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)


def check_prediction(prediction_type: str, kind: str) -> None:
    allowed = {"vp": tuple(PREDICTION), "edm": EDM_PREDICTION, "flow": ("flow_prediction",)}[kind]
    if prediction_type not in allowed:
        hint = " (a flow config: kind='flow', or USFScheduler.from_config(<a flow scheduler's config>))" \
            if prediction_type == "flow_prediction" else ""
        raise ValueError(f"prediction_type={prediction_type!r}: must be one of {', '.join(allowed)}"
                         + {"vp": "", "edm": " for an EDM config", "flow": " for a flow-matching config"}[kind] + hint)


def source_timesteps(source_grid: dict, num_points: int) -> np.ndarray:
    """The DDPM-index timesteps (float64, decreasing, distinct) the source scheduler evaluates its
    network at for `num_points` steps: the class itself, `set_timesteps(num_points)` (its
    `timestep_spacing`, `steps_offset`, ...); Heun repeats its points (each is taken once); the
    classes in `BASE_GRID` add points to another class's grid (that grid is taken)."""
    import diffusers
    name = source_grid.get("class")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or name not in VP_SOURCES:
        raise ValueError(f"source_grid: class {name!r} is not a VP scheduler USFScheduler reads")
    cfg = dict(source_grid.get("config") or {})
    if name in BASE_GRID:   # the grid their extra points are added to
        base = getattr(diffusers, BASE_GRID[name])
        cfg = {k: v for k, v in cfg.items() if k in inspect.signature(base.__init__).parameters}
        cls = base
    src = cls.from_config(cfg)
    try:
        src.set_timesteps(num_points)
    except Exception as e:   # noqa: BLE001 - whatever the class raises (UnCLIP divides by zero at 1 step)
        raise ValueError(f"set_timesteps: the source scheduler {name} makes no grid of {num_points} points ({e}); "
                         "pass preset_options={'spacing': ...} for one of usf_fast's spacings") from None
    ts = np.asarray(src.timesteps.detach().cpu().double().numpy(), dtype=np.float64)
    keep = np.r_[True, ts[1:] != ts[:-1]]
    ts = ts[keep]
    if len(ts) != num_points or np.any(np.diff(ts) >= 0):
        raise ValueError(f"set_timesteps: the source scheduler {name} gives timesteps {ts.tolist()} for "
                         f"{num_points} points; pass preset_options={{'spacing': ...}} for one of usf_fast's spacings")
    return ts


def source_spacing(cfg: dict, kind: str) -> str | None:
    """The source's grid spacing as a usf_fast spacing, where one matches: Karras σ -> "karras",
    exponential σ or Lu's λ (uniform in λ) -> "logSNR"; EDM's sigma_schedule likewise."""
    if kind == "flow":
        return None   # flow pipelines hand over their own sigmas
    if kind == "edm":   # only a source's own sigma_schedule (our configs carry source_spacing itself)
        return {"karras": "karras", "exponential": "logSNR"}.get(cfg.get("sigma_schedule"))
    if cfg.get("use_karras_sigmas"):
        return "karras"
    if cfg.get("use_exponential_sigmas") or cfg.get("use_lu_lambdas"):
        return "logSNR"
    return None


def flow_grid_of(cfg: dict) -> str:
    """Which diffusers flow scheduler a config came from (its default grid): UniPC and DPM-Solver
    flow configs carry their solver fields, FlowMatchEuler's neither."""
    if "flow_grid" in cfg:
        return cfg["flow_grid"]
    if "predict_x0" in cfg or "disable_corrector" in cfg:
        return "flow_unipc"
    return "flow_dpm" if "algorithm_type" in cfg else "flow_euler"
