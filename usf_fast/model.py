"""`DiffusionModel`: a network plus its parameterisation, turned into ε̂ and x̂0.

Every parameterisation is linear in (x, raw output) with scalar coefficients that depend only on
t (docs/design.md, "The math"), so the wrapper exposes them (`conversion`) for the fast paths, and `predict`
for the reference sampler.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .noise_schedules import NoiseSchedule
from .walk import analytic_first_step

__all__ = ["DiffusionModel", "PREDICTIONS", "TIME_INPUTS"]

PREDICTIONS = ("eps", "x0", "v", "score", "flow")
TIME_INPUTS = ("continuous", "discrete", "sigma")


def _check_prediction(prediction: str, ns: NoiseSchedule) -> None:
    """The velocity of rectified flow and the v of VP models are defined on their own paths only."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}: must be one of {', '.join(PREDICTIONS)}")
    if prediction == "flow" and ns.kind != "flow":
        raise ValueError(f"prediction='flow': the velocity v = ε − x0 needs a NoiseScheduleFlow, got {ns!r} "
                         "(eps, x0, v, score on VP/EDM schedules)")
    if prediction == "v" and ns.kind == "flow":   # a flow model's "v" is ε − x0: never silently the other one
        raise ValueError(f"prediction='v': v = α·ε − σ·x0 is not a flow model's velocity, got {ns!r}; "
                         "flow models (SD3, FLUX) predict v = ε − x0: prediction='flow'")


def map_cond(cond, fn):
    """`fn` applied to every tensor of a conditioning structure (a tensor, or dicts / tuples / lists
    of them), the structure kept; anything else is returned as is."""
    if isinstance(cond, dict):
        return {k: map_cond(v, fn) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(map_cond(v, fn) for v in cond)
    return fn(cond) if isinstance(cond, torch.Tensor) else cond


def _broadcast(cond, b: int):
    """P conditioning rows for a batch of b samples, b a multiple of P: sample r gets row r mod P
    (one prompt, or a few prompts, for every sample of a search)."""
    def rows(t):
        p = t.shape[0] if t.dim() >= 1 else b
        if p == b or p == 0:
            return t
        if p == 1:
            return t.expand(b, *t.shape[1:])
        if b % p:
            raise ValueError(f"cond: {p} conditioning rows for a batch of {b} samples; the batch must be a multiple "
                             f"of {p} (sample r uses row r mod {p})")
        return t.repeat(b // p, *([1] * (t.dim() - 1)))
    return map_cond(cond, rows)


def _tensors(cond) -> list:
    found = []
    map_cond(cond, found.append)
    return found


def _cat_cond(uncond, cond):
    """[uncond, cond] along the batch: tensors, or dicts / tuples of tensors member by member."""
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise ValueError(f"uncond: must be a dict with the keys of cond ({', '.join(map(str, cond))})")
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        if not isinstance(uncond, (tuple, list)) or len(uncond) != len(cond):
            raise ValueError(f"uncond: must be a tuple of {len(cond)} like cond")
        return type(cond)(_cat_cond(u, c) for u, c in zip(uncond, cond))
    return torch.cat([uncond, cond])


class DiffusionModel:
    """Wrap `net(x, t[, cond])` for sampling.

    Args:
        net: callable; x is (B, ...) and t is a (B,) tensor of per-sample times in the net's own
            time input (see `time_input`), same dtype and device as x.
        noise_schedule: a `NoiseScheduleVP`, `NoiseScheduleEDM` or `NoiseScheduleFlow`.
        prediction: what the net returns: "eps" (ε̂), "x0" (x̂0; EDM denoisers D(x, σ)),
            "v" (v = α ε − σ x0; not on flow schedules), "score" (∇_x log p_t) or "flow" (the velocity
            v = ε − x0 of SD3/FLUX/Wan, on a `NoiseScheduleFlow` only).
        time_input: "continuous" (t itself; σ for EDM), "discrete" (DDPM index (t − 1/N)·N, float),
            "sigma" (σ_t/α_t, the EDM noise level), or a callable mapping a t tensor to the input.
        guidance_scale: classifier-free guidance w; out = out_u + w·(out_c − out_u). Needs `cond`
            and `uncond` (batch dimension B, concatenated as [uncond, cond] so the net runs once).
        cond, uncond: conditioning passed as the net's third argument: a tensor, or a dict / tuple
            of tensors (e.g. SD3's encoder_hidden_states and pooled_projections), concatenated
            member by member under guidance. With `broadcast_cond = True` (the diffusers adapters
            set it) P rows serve a batch of any multiple of P samples, sample r using row r mod P
            (one or a few prompts for every sample of a search).
        data_mean: x̂0 used by the analytical first step (tensor broadcastable to x, or a float).
        sample_shape: the per-sample shape, if known (the search and the CLI use it as default).
    """

    def __init__(self, net: Callable, noise_schedule: NoiseSchedule, prediction: str = "eps",
                 time_input: str | Callable = "continuous", *, guidance_scale: float | None = None,
                 cond=None, uncond=None, data_mean=0.0, sample_shape=None):
        if not callable(net):
            raise ValueError("net: must be callable as net(x, t) or net(x, t, cond)")
        if not isinstance(noise_schedule, NoiseSchedule):
            raise ValueError("noise_schedule: must be a NoiseScheduleVP, NoiseScheduleEDM or NoiseScheduleFlow, got "
                             f"{type(noise_schedule).__name__}")
        _check_prediction(prediction, noise_schedule)
        if noise_schedule.kind == "flow" and time_input in ("discrete", "sigma"):
            raise ValueError(f"time_input={time_input!r}: not a flow model's time; use 'continuous' (σ itself, FLUX) or "
                             "a callable such as lambda t: 1000 * t (SD3, Wan)")
        if not callable(time_input) and time_input not in TIME_INPUTS:
            raise ValueError(f"time_input={time_input!r}: must be one of {', '.join(TIME_INPUTS)} or a callable")
        if guidance_scale is not None:
            if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)):
                raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number")
            if cond is None or uncond is None:
                raise ValueError("guidance_scale: classifier-free guidance needs both cond= and uncond=")
        self.net = net
        self.noise_schedule = noise_schedule
        self.prediction = prediction
        self.time_input = time_input
        self.guidance_scale = guidance_scale
        self.cond = cond
        self.uncond = uncond
        self.data_mean = data_mean
        self.sample_shape = tuple(int(v) for v in sample_shape) if sample_shape is not None else None
        self.rows = 0   # samples that went through the network so far (2 per sample under guidance)
        # cond rows are per-prompt rows to spread over any batch (the adapters set it); otherwise
        # cond goes to the net as given
        self.broadcast_cond = False

    @property
    def cond_rows(self) -> int:
        """Conditioning rows a batch is spread over (sample r uses row r mod P; 1 without)."""
        if not self.broadcast_cond:
            return 1
        rows = [v.shape[0] for v in _tensors(self.cond) + _tensors(self.uncond) if v.dim() >= 1]
        return max(rows, default=1)

    # ---- time input ------------------------------------------------------------------------
    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Map times t (tensor) to what the net expects."""
        if callable(self.time_input):
            return self.time_input(t)
        if self.time_input == "continuous":
            return t
        if self.time_input == "discrete":
            n = self.noise_schedule.total_N
            return (t - 1.0 / n) * n
        return self.noise_schedule.edm_sigma(t)

    # ---- raw network output ----------------------------------------------------------------
    def raw(self, x: torch.Tensor, t) -> torch.Tensor:
        """Guided network output at x and time t (float or (B,) tensor of per-sample times)."""
        b = x.shape[0]
        if isinstance(t, torch.Tensor):
            t_vec = t.to(dtype=x.dtype, device=x.device).expand(b) if t.dim() == 0 else t.to(dtype=x.dtype, device=x.device)
            if t_vec.shape != (b,):
                raise ValueError(f"t: per-sample times must have shape ({b},), got {tuple(t.shape)}")
        else:
            t_vec = torch.full((b,), float(t), dtype=x.dtype, device=x.device)
        t_in = self.net_time(t_vec)
        self.rows += b if self.guidance_scale is None else 2 * b
        cond, uncond = ((_broadcast(self.cond, b), _broadcast(self.uncond, b)) if self.broadcast_cond
                        else (self.cond, self.uncond))
        if self.guidance_scale is None:
            out = self.net(x, t_in) if cond is None else self.net(x, t_in, cond)
        else:
            both = self.net(torch.cat([x, x]), torch.cat([t_in, t_in]), _cat_cond(uncond, cond))
            out_u, out_c = both.chunk(2)
            out = out_u + self.guidance_scale * (out_c - out_u)
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"net: returned {type(out).__name__}, must return a torch.Tensor shaped like x")
        if out.shape != x.shape:
            raise ValueError(f"net output shape {tuple(out.shape)} differs from input shape {tuple(x.shape)}")
        if out.dtype != x.dtype:   # e.g. a float64 head on float32 samples: every path computes in x's dtype
            if not out.is_floating_point():
                raise ValueError(f"net: returned dtype {out.dtype}; it must return real floating-point values")
            out = out.to(x.dtype)
        return out.contiguous()  # e.g. out[:, :3] of a learned-variance net; the kernels read flat memory

    # ---- linear conversions ----------------------------------------------------------------
    def conversion(self, t: float):
        """Host float64 coefficients (e_x, e_o, d_x, d_o) with ε̂ = e_x·x + e_o·out and
        x̂0 = d_x·x + d_o·out at time t."""
        ns = self.noise_schedule
        a = float(ns.marginal_alpha(t))
        s = float(ns.marginal_std(t))
        p = self.prediction
        if p == "eps":
            e_x, e_o = 0.0, 1.0
        elif p == "x0":
            e_x, e_o = 1.0 / s, -a / s
        elif p == "v":
            n2 = a * a + s * s
            e_x, e_o = s / n2, a / n2
        elif p == "flow":   # v = ε − x0 and x = (1 − t)·x0 + t·ε: ε̂ = x + α·v, x̂0 = x − σ·v
            return 1.0, a, 1.0, -s
        else:  # score: ε̂ = −σ·∇log p
            e_x, e_o = 0.0, -s
        # x̂0 = (x − σ ε̂)/α
        d_x = (1.0 - s * e_x) / a
        d_o = -s * e_o / a
        if p == "x0":  # exact, avoids (1 − σ/σ)/α rounding
            d_x, d_o = 0.0, 1.0
        return e_x, e_o, d_x, d_o

    def predict(self, x: torch.Tensor, t: float):
        """(ε̂, x̂0) at state x and host time t."""
        out = self.raw(x, t)
        e_x, e_o, d_x, d_o = self.conversion(t)
        return e_x * x + e_o * out, d_x * x + d_o * out

    def analytic_first(self, x: torch.Tensor, t: float):
        """(ε̂, x̂0) of the analytical first step: x̂0 = data mean, ε̂ = (x − α x̂0)/σ."""
        ns = self.noise_schedule
        return analytic_first_step(x, self.mean_like(x), float(ns.marginal_alpha(t)), float(ns.marginal_std(t)))

    def mean_like(self, x: torch.Tensor) -> torch.Tensor:
        """The data mean broadcast to x's shape, dtype and device (a new tensor)."""
        return torch.zeros_like(x) + torch.as_tensor(self.data_mean).to(x)

    @property
    def has_zero_mean(self) -> bool:
        """True when the data mean is the scalar 0 (the analytical first step then needs no buffer)."""
        return isinstance(self.data_mean, (int, float)) and float(self.data_mean) == 0.0

    def __call__(self, x, t):
        return self.raw(x, t)
