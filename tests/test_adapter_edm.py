"""EDM / k-diffusion D(x, σ) wrapper against a hand-written EDM denoiser and sampler."""
import math

import numpy as np
import pytest
import torch

import usf_fast
from usf_fast.adapters.edm import edm_model, edm_precond, k_diffusion_model
from usf_fast.models import embedded_model
from usf_fast.models.mixture import gmm_2d
from usf_fast.metrics import reference_samples

GMM = gmm_2d()
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def hand_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + σ n = x] for the 2-D mixture, with dense covariances and plain solves
    (independent of GaussianMixture's Woodbury code)."""
    w = GMM.log_weights.exp()
    logps, means = [], []
    eye = torch.eye(2, dtype=torch.float64)
    for k in range(len(w)):
        u = GMM.factors[k]
        cov = u @ u.T + GMM.iso_var * eye
        m = GMM.means[k]
        logp, mean_k = [], []
        for b in range(x.shape[0]):
            c = cov + float(sigma[b]) ** 2 * eye
            v = x[b].double() - m
            sol = torch.linalg.solve(c, v)
            logp.append(math.log(float(w[k])) - 0.5 * float(v @ sol) - 0.5 * float(torch.logdet(c)))
            mean_k.append(m + cov @ sol)
        logps.append(torch.tensor(logp, dtype=torch.float64))
        means.append(torch.stack(mean_k))
    post = torch.softmax(torch.stack(logps, 1), dim=1)                 # (B, K)
    out = torch.einsum("bk,kbd->bd", post, torch.stack(means))
    return out.to(x.dtype)


def karras_sigmas(n: int, rho: float = 7.0) -> list[float]:
    i = np.arange(n)
    s = (SIGMA_MAX ** (1 / rho) + i / (n - 1) * (SIGMA_MIN ** (1 / rho) - SIGMA_MAX ** (1 / rho))) ** rho
    return [float(v) for v in s]


def hand_edm_sampler(denoise, noise: torch.Tensor, sigmas: list[float], heun: bool) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 1, deterministic (S_churn = 0), without the final step to σ = 0."""
    x = noise.double() * sigmas[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, torch.full((x.shape[0],), s, dtype=x.dtype))) / s
        x_next = x + (s_next - s) * d
        if heun:
            d2 = (x_next - denoise(x_next, torch.full((x.shape[0],), s_next, dtype=x.dtype))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x


NOISE = torch.randn(24, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_wrapped_denoiser_is_the_exact_posterior_mean():
    """The wrapper turns D into x̂0 unchanged and into ε̂ = (x − D)/σ; the embedded mixture in EDM
    form (whose x̂0 comes from the Woodbury ε̂) agrees with the hand-written denoiser."""
    model = edm_model(hand_denoiser, SIGMA_MIN, SIGMA_MAX)
    gmm_model = embedded_model("gmm-2d", usf_fast.NoiseScheduleEDM(SIGMA_MIN, SIGMA_MAX))
    for sigma in (0.01, 0.3, 2.0, 40.0):
        x = NOISE * math.sqrt(sigma ** 2 + 1.0)
        eps, x0 = model.predict(x, sigma)
        d = hand_denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float64))
        torch.testing.assert_close(x0, d, rtol=0, atol=1e-14)
        torch.testing.assert_close(eps, (x - d) / sigma, rtol=1e-12, atol=1e-12)
        _, x0_gmm = gmm_model.predict(x, sigma)
        torch.testing.assert_close(x0_gmm, d, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nfe", [5, 12])
def test_ddim_is_edm_euler(nfe):
    """First-order data prediction in EDM form is exactly EDM's Euler step: usf_fast's DDIM on
    Karras σ equals the hand-written Algorithm 1 without the Heun correction."""
    model = edm_model(hand_denoiser, SIGMA_MIN, SIGMA_MAX)
    s = usf_fast.presets.ddim(model.noise_schedule, nfe, spacing="karras")
    np.testing.assert_allclose(s.timesteps, karras_sigmas(nfe + 1), rtol=1e-12)
    ours = usf_fast.sample(model, s, noise=NOISE, backend="reference")
    hand = hand_edm_sampler(hand_denoiser, NOISE, karras_sigmas(nfe + 1), heun=False)
    torch.testing.assert_close(ours, hand, rtol=1e-11, atol=1e-11)
    fast = usf_fast.sample(model, s, noise=NOISE, backend="torch")
    torch.testing.assert_close(fast, hand, rtol=1e-11, atol=1e-11)


def test_high_order_schedules_converge_to_edm_heun():
    """EDM's own 2nd-order Heun sampler (many steps) and usf_fast's solvers through the wrapper
    solve the same ODE: the 200-NFE reference agrees with Heun at 400 steps, and UniPC-3 converges to it."""
    model = edm_model(hand_denoiser, SIGMA_MIN, SIGMA_MAX)
    noise = NOISE[:8]
    heun = hand_edm_sampler(hand_denoiser, noise, karras_sigmas(401), heun=True)
    ref = reference_samples(model, noise, SIGMA_MAX, SIGMA_MIN)
    assert float((ref - heun).abs().max()) < 1e-4
    errs = []
    for nfe in (10, 20, 40):  # asymptotic range (at 5 NFE the max error is not yet ordered)
        x = usf_fast.sample(model, usf_fast.presets.unipc(model.noise_schedule, nfe, order=3, spacing="karras"),
                            noise=noise, backend="reference")
        errs.append(float((x - heun).abs().max()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.01 * errs[0], errs


def test_k_diffusion_style_and_precond():
    class KDenoiser(torch.nn.Module):  # k-diffusion wrappers: model(x, sigma, **extra_args), sigma range attrs
        sigma_min = torch.tensor(SIGMA_MIN)
        sigma_max = torch.tensor(SIGMA_MAX)

        def forward(self, x, sigma, scale=1.0):
            return scale * hand_denoiser(x, sigma)

    model = k_diffusion_model(KDenoiser(), scale=1.0)
    lo = float(torch.tensor(SIGMA_MIN))  # the float32 attribute, as k-diffusion stores it
    assert model.noise_schedule == usf_fast.NoiseScheduleEDM(lo, SIGMA_MAX)
    s = usf_fast.presets.dpm_solver_pp(model.noise_schedule, 6, order=2, spacing="karras")
    ref = usf_fast.sample(edm_model(hand_denoiser, lo, SIGMA_MAX), s, noise=NOISE)
    torch.testing.assert_close(usf_fast.sample(model, s, noise=NOISE), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sigma_min= and sigma_max="):
        k_diffusion_model(lambda x, sigma: x)

    # EDM preconditioning: with F = (D − c_skip x)/c_out evaluated at the unscaled input, D comes back
    sd = 0.5

    def raw(x_in, c_noise):
        sigma = (4 * c_noise).exp().reshape(-1, 1)
        x = x_in * (sigma ** 2 + sd ** 2).sqrt()
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        return (hand_denoiser(x, sigma.flatten()) - c_skip * x) / c_out

    sig = torch.tensor([0.01, 0.5, 3.0, 60.0], dtype=torch.float64)
    x = NOISE[:4] * 2
    torch.testing.assert_close(edm_precond(raw, sd)(x, sig), hand_denoiser(x, sig), rtol=1e-10, atol=1e-10)
    flipped = edm_precond(lambda x_in, c_noise: -raw(x_in, c_noise), sd, v_prediction=True)
    torch.testing.assert_close(flipped(x, sig), hand_denoiser(x, sig), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="sigma_data"):
        edm_precond(raw, 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="denoiser"):
        edm_model("not a function")
    with pytest.raises(ValueError, match="sigma_min"):
        edm_model(hand_denoiser, 1.0, 0.5)
    model = edm_model(hand_denoiser, SIGMA_MIN, SIGMA_MAX)
    vp_schedule = usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 5)
    with pytest.raises(ValueError, match="noise schedule"):
        usf_fast.sample(model, vp_schedule, noise=NOISE)
