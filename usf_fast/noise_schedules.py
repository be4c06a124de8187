"""Noise schedules: x_t = α_t x_0 + σ_t ε.

Every schedule gives log α_t, α_t, σ_t, the half log-SNR λ_t = log α_t − log σ_t and the inverse
of λ. Host math (Python floats, numpy arrays) is float64; torch tensors are computed in their own
dtype on their own device without host reads, so a network may call these inside a captured graph.

The time variable is t for VP schedules, σ for EDM (`NoiseScheduleEDM`: α = 1, σ = t) and for
rectified flow (`NoiseScheduleFlow`: α = 1 − t, σ = t).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

__all__ = ["NoiseSchedule", "NoiseScheduleVP", "NoiseScheduleEDM", "NoiseScheduleFlow", "noise_schedule_from_dict"]


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _as_host(x):
    """Python scalars and sequences become float64 numpy; tensors pass through."""
    if _is_torch(x):
        return x
    return np.asarray(x, dtype=np.float64)


def _interp(x, xp: np.ndarray, fp: np.ndarray, copies: dict | None = None):
    """Piecewise-linear interpolation with linear extrapolation (xp increasing).

    numpy for host arrays, torch (same dtype/device as x, no host reads) for tensors. `copies`
    (one dict per table) keeps the table's tensors per dtype and device, so they are copied to a
    GPU once, not on every call: a CUDA graph cannot capture a copy from pageable host memory.
    """
    if _is_torch(x):
        key = (x.dtype, x.device)
        tables = None if copies is None else copies.get(key)
        if tables is None:
            tables = (torch.as_tensor(xp, dtype=x.dtype, device=x.device),
                      torch.as_tensor(fp, dtype=x.dtype, device=x.device))
            if copies is not None:
                copies[key] = tables
        xp_t, fp_t = tables
        idx = torch.searchsorted(xp_t, x.contiguous()).clamp(1, len(xp) - 1)
        x0, x1 = xp_t[idx - 1], xp_t[idx]
        y0, y1 = fp_t[idx - 1], fp_t[idx]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    idx = np.clip(np.searchsorted(xp, x), 1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _ops(x):
    return torch if _is_torch(x) else np


class NoiseSchedule:
    """Common interface. Subclasses define `marginal_log_mean_coeff` and `inverse_lambda`."""

    kind: str = "base"
    t_min: float
    t_max: float
    #: Time variable name shown to users: "t" (VP) or "sigma" (EDM, flow).
    time_name: str = "t"

    def marginal_log_mean_coeff(self, t):  # log α_t
        raise NotImplementedError

    def marginal_alpha(self, t):
        t = _as_host(t)
        return _ops(t).exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t):  # σ_t
        raise NotImplementedError

    def marginal_lambda(self, t):
        t = _as_host(t)
        return self.marginal_log_mean_coeff(t) - _ops(t).log(self.marginal_std(t))

    def inverse_lambda(self, lamb):
        raise NotImplementedError

    def edm_sigma(self, t):
        """σ_t / α_t = e^{−λ_t}: the noise level of the equivalent variance-exploding process."""
        t = _as_host(t)
        return _ops(t).exp(-self.marginal_lambda(t))

    def prior_std(self, t) -> float:
        """Std of x_t when x_0 is ignored (σ of the prior at t); the sampler scales ε by it."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """Short JSON-able identity (schedule files record it; `sample` checks it)."""
        d = self.to_dict()
        if "alphas_cumprod" in d:
            arr = np.asarray(d.pop("alphas_cumprod"), dtype=np.float64)
            d["N"] = len(arr)
            d["sha1"] = hashlib.sha1(arr.tobytes()).hexdigest()[:16]
        return d

    def __eq__(self, other) -> bool:
        return isinstance(other, NoiseSchedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        d = self.to_dict()
        d.pop("alphas_cumprod", None)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in d.items())})"


class NoiseScheduleVP(NoiseSchedule):
    """Variance-preserving schedules (α² + σ² = 1).

    schedule="linear": ScoreSDE, log α_t = −(β1−β0) t²/4 − β0 t/2, t ∈ [1e-3, 1].
    schedule="discrete": DDPM `betas` or `alphas_cumprod` (N values); log α is piecewise linear in
        t over t_n = (n+1)/N, as in DPM-Solver, so t = (n+1)/N is exactly training step n.
        t ∈ [1/N, 1].
    schedule="cosine": improved DDPM, t ∈ [1e-3, 0.9946].
    """

    kind = "vp"

    def __init__(self, schedule: str = "linear", *, betas=None, alphas_cumprod=None,
                 continuous_beta_0: float = 0.1, continuous_beta_1: float = 20.0,
                 cosine_s: float = 0.008, t_min: float | None = None, t_max: float | None = None):
        if schedule not in ("linear", "discrete", "cosine"):
            raise ValueError(f"schedule={schedule!r}: must be one of 'linear', 'discrete', 'cosine'")
        self.schedule = schedule
        if schedule == "discrete":
            if (betas is None) == (alphas_cumprod is None):
                raise ValueError("schedule='discrete' needs exactly one of betas= or alphas_cumprod=")
            if betas is not None:
                b = np.asarray(_to_numpy(betas), dtype=np.float64)
                if b.ndim != 1 or len(b) < 2 or not np.all((b > 0) & (b < 1)):
                    raise ValueError("betas: must be a 1-D sequence of at least 2 values in (0, 1)")
                a = np.exp(np.cumsum(np.log1p(-b)))
            else:
                a = np.asarray(_to_numpy(alphas_cumprod), dtype=np.float64)
                if a.ndim != 1 or len(a) < 2 or not np.all((a > 0) & (a < 1)):
                    raise ValueError("alphas_cumprod: must be a 1-D sequence of at least 2 values in (0, 1)")
                if np.any(np.diff(a) >= 0):
                    raise ValueError("alphas_cumprod: must be strictly decreasing")
            # keep ᾱ itself so to_dict/from_dict round-trip bit-exactly
            self._alphas_cumprod = a
            log_alphas = 0.5 * np.log(a)
            self.total_N = len(log_alphas)
            self._t_array = np.linspace(0.0, 1.0, self.total_N + 1)[1:]
            self._log_alpha_array = log_alphas
            self._reversed = (log_alphas[::-1].copy(), self._t_array[::-1].copy())   # inverse_lambda's table
            self._copies = ({}, {})   # the two tables on devices (`_interp`)
            default_min, default_max = 1.0 / self.total_N, 1.0
        elif schedule == "linear":
            if not (0 < continuous_beta_0 < continuous_beta_1):
                raise ValueError("continuous_beta_0/continuous_beta_1: need 0 < beta_0 < beta_1")
            self.total_N = 1000
            self.beta_0, self.beta_1 = float(continuous_beta_0), float(continuous_beta_1)
            default_min, default_max = 1e-3, 1.0
        else:
            self.total_N = 1000
            self.cosine_s = float(cosine_s)
            self._cos_log_alpha_0 = math.log(math.cos(self.cosine_s / (1.0 + self.cosine_s) * math.pi / 2.0))
            default_min, default_max = 1e-3, 0.9946
        self.t_min = float(default_min if t_min is None else t_min)
        self.t_max = float(default_max if t_max is None else t_max)
        if not (default_min <= self.t_min < self.t_max <= default_max):
            raise ValueError(f"t_min={self.t_min}, t_max={self.t_max}: need "
                             f"{default_min} <= t_min < t_max <= {default_max} for schedule={schedule!r}")

    def __getstate__(self) -> dict:
        """Pickled without the tables' device copies (a cache; a CUDA tensor would tie the pickle to
        a GPU)."""
        state = dict(self.__dict__)
        if "_copies" in state:
            state["_copies"] = ({}, {})
        return state

    def marginal_log_mean_coeff(self, t):
        t = _as_host(t)
        if self.schedule == "discrete":
            return _interp(t, self._t_array, self._log_alpha_array, self._copies[0])
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        ops = _ops(t)
        return ops.log(ops.cos((t + self.cosine_s) / (1.0 + self.cosine_s) * math.pi / 2.0)) - self._cos_log_alpha_0

    def marginal_std(self, t):
        t = _as_host(t)
        ops = _ops(t)
        return ops.sqrt(-ops.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def inverse_lambda(self, lamb):
        lamb = _as_host(lamb)
        ops = _ops(lamb)
        log_alpha = -0.5 * ops.logaddexp(-2.0 * lamb, 0.0 * lamb)
        if self.schedule == "linear":
            tmp = 2.0 * (self.beta_1 - self.beta_0) * ops.logaddexp(-2.0 * lamb, 0.0 * lamb)
            delta = self.beta_0 ** 2 + tmp
            return tmp / (ops.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            return _interp(log_alpha, *self._reversed, self._copies[1])
        arccos = torch.arccos if _is_torch(lamb) else np.arccos
        t = arccos(ops.exp(log_alpha + self._cos_log_alpha_0)) * 2.0 * (1.0 + self.cosine_s) / math.pi
        return t - self.cosine_s

    def prior_std(self, t) -> float:
        return 1.0

    def to_dict(self) -> dict:
        d = {"type": "vp", "schedule": self.schedule, "t_min": self.t_min, "t_max": self.t_max}
        if self.schedule == "linear":
            d.update(beta_0=self.beta_0, beta_1=self.beta_1)
        elif self.schedule == "cosine":
            d.update(cosine_s=self.cosine_s)
        else:
            d.update(alphas_cumprod=self._alphas_cumprod.tolist())
        return d


class NoiseScheduleEDM(NoiseSchedule):
    """EDM / variance-exploding form: α_t = 1, σ_t = t, λ_t = −log t; t is the noise level σ."""

    kind = "edm"
    time_name = "sigma"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not (0 < sigma_min < sigma_max) or not all(map(math.isfinite, (sigma_min, sigma_max))):
            raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max}: need 0 < sigma_min < sigma_max < inf")
        self.t_min = self.sigma_min = float(sigma_min)
        self.t_max = self.sigma_max = float(sigma_max)
        self.total_N = 1000

    def marginal_log_mean_coeff(self, t):
        t = _as_host(t)
        return 0.0 * t

    def marginal_std(self, t):
        return _as_host(t) * 1.0

    def marginal_lambda(self, t):
        t = _as_host(t)
        return -_ops(t).log(t)

    def inverse_lambda(self, lamb):
        lamb = _as_host(lamb)
        return _ops(lamb).exp(-lamb)

    def prior_std(self, t) -> float:
        return float(t)

    def to_dict(self) -> dict:
        return {"type": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class NoiseScheduleFlow(NoiseSchedule):
    """Rectified flow ("flow matching": SD3, FLUX, Wan, Sana): x_t = (1 − t)·x_0 + t·ε, so α = 1 − t,
    σ = t, λ = log((1 − t)/t) and t = 1/(1 + e^λ); t is the flow models' σ. The prior std is 1.

    t_max < 1: at t = 1, α = 0 and λ = −∞, where only a first-order data-prediction step has a
    limit (x_t = t·x_1 + (1 − t)·x̂0); every derivative estimate and noise-prediction step is
    undefined there. The default t_max = 1 − 1e-6 (diffusers' UniPC flow grid starts there too)
    starts from x_T = ε with an error of 1e-6·|x_0|, far below a sampler's at any NFE.
    """

    kind = "flow"
    time_name = "sigma"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-6):
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name}={v!r}: must be a finite number")
        if t_max >= 1.0:
            raise ValueError(f"t_max={t_max!r}: must be < 1 (at t = 1, α = 0 and λ = −∞: only a first-order "
                             "data-prediction step has a limit there); the default is 1 − 1e-6")
        if not 0.0 < t_min < t_max:
            raise ValueError(f"t_min={t_min!r}, t_max={t_max!r}: need 0 < t_min < t_max < 1")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.total_N = 1000

    def marginal_log_mean_coeff(self, t):
        t = _as_host(t)
        return _ops(t).log1p(-t)

    def marginal_alpha(self, t):   # exact, not exp(log1p(−t)): α ≈ 1e-6 at the start
        return 1.0 - _as_host(t)

    def marginal_std(self, t):
        return _as_host(t) * 1.0

    def marginal_lambda(self, t):
        t = _as_host(t)
        ops = _ops(t)
        return ops.log1p(-t) - ops.log(t)

    def inverse_lambda(self, lamb):
        lamb = _as_host(lamb)
        return 1.0 / (1.0 + _ops(lamb).exp(lamb))

    def prior_std(self, t) -> float:
        return 1.0

    def to_dict(self) -> dict:
        return {"type": "flow", "t_min": self.t_min, "t_max": self.t_max}


def _to_numpy(x):
    if _is_torch(x):
        return x.detach().cpu().double().numpy()
    return x


def noise_schedule_from_dict(d: dict) -> NoiseSchedule:
    """Inverse of `NoiseSchedule.to_dict` (used by schedule files and the CLI)."""
    kind = d.get("type")
    if kind == "edm":
        return NoiseScheduleEDM(sigma_min=d["sigma_min"], sigma_max=d["sigma_max"])
    if kind == "flow":
        return NoiseScheduleFlow(t_min=d["t_min"], t_max=d["t_max"])
    if kind == "vp":
        s = d["schedule"]
        if s == "linear":
            return NoiseScheduleVP("linear", continuous_beta_0=d["beta_0"], continuous_beta_1=d["beta_1"],
                                   t_min=d["t_min"], t_max=d["t_max"])
        if s == "cosine":
            return NoiseScheduleVP("cosine", cosine_s=d["cosine_s"], t_min=d["t_min"], t_max=d["t_max"])
        return NoiseScheduleVP("discrete", alphas_cumprod=d["alphas_cumprod"], t_min=d["t_min"], t_max=d["t_max"])
    raise ValueError(f"noise_schedule.type={kind!r}: must be 'vp', 'edm' or 'flow'")
