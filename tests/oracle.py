"""Shared set-up for tests that compare with diffusers' schedulers (the independent oracle)."""
from __future__ import annotations

import torch

import usf_fast
from usf_fast.models.mixture import gmm_image

N_TRAIN = 1000


def diffusers_betas() -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float32)


def discrete_setup(prediction: str = "eps"):
    """Same discrete VP schedule and exact GMM model for usf_fast and diffusers.

    Returns (usf model, net taking integer timesteps for diffusers, alphas_cumprod float64).
    """
    alphas_cumprod = torch.cumprod(1.0 - diffusers_betas(), 0).double()
    ns = usf_fast.NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)
    gmm = gmm_image(shape=(3, 8, 8), components=3, rank=3)
    model = gmm.as_model(ns, prediction=prediction)

    def diffusers_net(x, timestep):
        t = torch.as_tensor(timestep, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return model.net(x, (t + 1.0) / N_TRAIN)

    return model, diffusers_net, alphas_cumprod


def run_diffusers(scheduler, net, noise: torch.Tensor, num_inference_steps: int) -> tuple[torch.Tensor, list[int]]:
    """Drive a diffusers scheduler with float64 coefficients; return (x0, timesteps used)."""
    scheduler.set_timesteps(num_inference_steps)
    if hasattr(scheduler, "sigmas"):
        # diffusers rounds its sigma table to float32; recompute it in float64 from the same
        # alphas_cumprod so the comparison measures the algorithms, not that rounding.
        ac = scheduler.alphas_cumprod.double()
        ts = scheduler.timesteps.long()
        sig = ((1 - ac[ts]) / ac[ts]) ** 0.5
        last = scheduler.sigmas[-1].double()
        if float(last) != 0.0:
            last = ((1 - ac[0]) / ac[0]) ** 0.5
        scheduler.sigmas = torch.cat([sig, last.reshape(1)])
    x = noise.clone() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = net(x, t)
        x = scheduler.step(out, t, x).prev_sample
    return x, [int(t) for t in scheduler.timesteps]


def usf_times(int_timesteps, final: str = "t_min") -> list[float]:
    ts = [(t + 1.0) / N_TRAIN for t in int_timesteps]
    if final == "t_min":
        ts.append(1.0 / N_TRAIN)
    return ts


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def k_diffusion_sampling():
    """k-diffusion's sampling module (the oracle for k-diffusion-style samplers), imported without
    running k_diffusion/__init__, which loads its training stack (wandb, CLIP, kornia; installed
    without dependencies by the Makefile, like torchsde and torchdiffeq)."""
    import importlib
    import importlib.util
    import sys
    import types

    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: run `make setup` (it installs the oracle packages)")
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    return importlib.import_module("k_diffusion.sampling")
