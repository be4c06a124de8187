"""EDM and k-diffusion denoisers `D(x, σ)` as `usf_fast.DiffusionModel`s.

    from usf_fast.adapters.edm import edm_model
    model = edm_model(lambda x, sigma: net(x, sigma, class_labels), sigma_min=0.002, sigma_max=80)
    x = usf_fast.sample(model, usf_fast.presets.dpm_solver_pp(model.noise_schedule, 5, spacing="karras"),
                        shape=(16, 3, 64, 64))

EDM's form is x_σ = x_0 + σ ε (α = 1, t = σ, λ = −log σ), and a denoiser returns x̂0, so the
wrapper is a data-prediction model with σ as its time input on `NoiseScheduleEDM`. NVlabs' EDM
networks (`EDMPrecond`: `net(x, sigma, class_labels)`) and k-diffusion's `Denoiser`/`Karras*`
wrappers (`model(x, sigma, **extra_args)`) are both of this form; `edm_precond` builds one from a
raw network F with the EDM preconditioning (Karras et al. 2022, Table 1).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..model import DiffusionModel
from ..noise_schedules import NoiseScheduleEDM

__all__ = ["edm_model", "k_diffusion_model", "edm_precond", "edm_coefficients"]


def edm_model(denoiser: Callable, sigma_min: float = 0.002, sigma_max: float = 80.0, *, cond=None, uncond=None,
              guidance_scale: float | None = None, data_mean=0.0) -> DiffusionModel:
    """Wrap `denoiser(x, sigma[, cond]) -> x̂0` (sigma a (B,) tensor) for sampling and search on
    σ ∈ [sigma_min, sigma_max]. cond/uncond/guidance_scale: classifier-free guidance in one batched
    call (see `DiffusionModel`)."""
    if not callable(denoiser):
        raise ValueError("denoiser: must be callable as denoiser(x, sigma) or denoiser(x, sigma, cond)")
    return DiffusionModel(denoiser, NoiseScheduleEDM(sigma_min, sigma_max), "x0", "sigma", cond=cond,
                          uncond=uncond, guidance_scale=guidance_scale, data_mean=data_mean)


def _float_attr(model, name: str):
    v = getattr(model, name, None)
    if v is None:
        return None
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def k_diffusion_model(model: Callable, sigma_min: float | None = None, sigma_max: float | None = None,
                      **extra_args) -> DiffusionModel:
    """Wrap a k-diffusion denoiser `model(x, sigma, **extra_args)`; the σ range defaults to the
    model's own `sigma_min` / `sigma_max` attributes (k-diffusion's discrete wrappers have them)."""
    lo = sigma_min if sigma_min is not None else _float_attr(model, "sigma_min")
    hi = sigma_max if sigma_max is not None else _float_attr(model, "sigma_max")
    if lo is None or hi is None:
        raise ValueError("k_diffusion_model: the model has no sigma_min/sigma_max attributes; pass sigma_min= and "
                         "sigma_max= (the noise levels it was trained on, e.g. 0.002 and 80 for EDM)")
    return edm_model(lambda x, sigma: model(x, sigma, **extra_args), lo, hi)


def edm_coefficients(sigma, sigma_data: float, v_prediction: bool = False):
    """(c_skip, c_out, c_in, c_noise) of EDM preconditioning (Karras et al. 2022, Table 1) for σ a
    float or a tensor: c_skip = σd²/(σ²+σd²), c_out = σ σd/√(σ²+σd²) (negated for v-prediction,
    as diffusers' EDM schedulers do), c_in = 1/√(σ²+σd²), c_noise = ln(σ)/4."""
    norm = (sigma * sigma + sigma_data * sigma_data) ** 0.5
    log_sigma = sigma.log() if isinstance(sigma, torch.Tensor) else math.log(sigma)
    sign = -1.0 if v_prediction else 1.0
    return sigma_data * sigma_data / (norm * norm), sign * sigma * sigma_data / norm, 1.0 / norm, 0.25 * log_sigma


def edm_precond(net: Callable, sigma_data: float = 0.5, v_prediction: bool = False) -> Callable:
    """D(x, σ, *args) = c_skip x + c_out F(c_in x, c_noise, *args) from a raw network F, with the
    coefficients of `edm_coefficients` (computed in float64)."""
    if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
        raise ValueError(f"sigma_data={sigma_data!r}: must be a positive number")
    sd = float(sigma_data)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, *args) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.to(torch.float64), sd, v_prediction)
        shp = (-1,) + (1,) * (x.dim() - 1)
        c_skip, c_out, c_in = (c.to(x.dtype).reshape(shp) for c in (c_skip, c_out, c_in))
        return c_skip * x + c_out * net(c_in * x, c_noise.to(x.dtype), *args)

    return denoiser
