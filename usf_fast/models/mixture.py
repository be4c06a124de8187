"""Embedded analytic model: a Gaussian mixture whose exact noise prediction is closed-form.

Data: x0 ~ Σ_k π_k N(μ_k, Σ_k) with low-rank-plus-isotropic covariances Σ_k = U_k U_kᵀ + s² I
(U_k: d×r). Under x_t = α x0 + σ ε, x_t ~ Σ_k π_k N(α μ_k, C_k), C_k = α² U_k U_kᵀ + (α² s² + σ²) I,
so the exact ε̂ = σ Σ_k w_k(x) C_k⁻¹ (x − α μ_k) with posterior weights w_k. Woodbury keeps every
solve r×r, so a 3×16×16 mixture samples quickly on a CPU.

The mixture also gives exact metrics: the Fréchet distance of samples to the true moments and the
exact log-likelihood.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..metrics import frechet_distance
from ..model import DiffusionModel
from ..noise_schedules import NoiseSchedule

__all__ = ["GaussianMixture", "MixtureNet", "gmm_image", "gmm_2d"]


class GaussianMixture(torch.nn.Module):
    """Mixture of K Gaussians in d = prod(shape) dimensions.

    Args:
        means: (K, d); factors: (K, d, r) low-rank covariance factors U_k; iso_std: s;
        weights: (K,) mixture weights (normalised here); shape: per-sample shape (prod = d).
    """

    def __init__(self, means, factors, iso_std: float, weights=None, shape=None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        factors = torch.as_tensor(factors, dtype=torch.float64)
        k, d = means.shape
        if factors.shape[:2] != (k, d):
            raise ValueError(f"factors: shape {tuple(factors.shape)} must be (K={k}, d={d}, r)")
        if not iso_std > 0:
            raise ValueError(f"iso_std={iso_std}: must be > 0")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or not torch.all(w > 0):
            raise ValueError(f"weights: need {k} positive values")
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape={self.shape}: product must equal d={d}")
        self.register_buffer("means", means)
        self.register_buffer("factors", factors)
        self.register_buffer("log_weights", torch.log(w / w.sum()))
        # Uᵀ U = Q Λ Qᵀ: with W = U Q every r×r solve of the Woodbury identity becomes a division.
        lam, q = torch.linalg.eigh(factors.transpose(1, 2) @ factors)
        self.register_buffer("proj", factors @ q)     # (K, d, r) = W
        self.register_buffer("eig", lam.clamp_min(0))  # (K, r) = Λ
        self.iso_var = float(iso_std) ** 2
        self.dim = d
        self.rank = factors.shape[2]

    # ---- the exact model ------------------------------------------------------------------
    def _on(self, x: torch.Tensor):
        """(means, W, Λ, log π) on x's device and dtype; copied once per device/dtype, not per call,
        so the model runs where its input lives (a CUDA sampler needs no `.to()` of the mixture)."""
        key = (x.device, x.dtype, self.means.data_ptr())
        cache = self.__dict__.setdefault("_param_cache", {})
        if key not in cache:
            cache[key] = tuple(p.to(x) for p in (self.means, self.proj, self.eig, self.log_weights))
        return cache[key]

    def _terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per-component pieces of the Woodbury solve, without any (B, K, d) intermediate.

        With v_k = x − α μ_k, C_k = c I + α² W_k Λ_k W_kᵀ (c = α² s² + σ²):
            C_k⁻¹ v_k = (v_k − α² W_k sol_k) / c,   sol_k = W_kᵀ v_k / (c + α² Λ_k)
        Returns (logw (B, K) = log π_k N(x; α μ_k, C_k) + d/2 log 2π, sol (B, K, r), c (B, 1)).
        """
        b = x.shape[0]
        xf = x.reshape(b, -1)
        a = alpha.to(x).reshape(b, 1)
        a2 = a * a
        c = a2 * self.iso_var + (sigma.to(x) ** 2).reshape(b, 1)            # (B, 1)
        mu, w, eig, logpi = self._on(x)
        diag = c.unsqueeze(-1) + a2.unsqueeze(-1) * eig                      # (B, K, r)
        wtv = torch.einsum("kdr,bd->bkr", w, xf) - a.unsqueeze(-1) * torch.einsum("kdr,kd->kr", w, mu)
        sol = wtv / diag
        vv = (xf * xf).sum(-1, keepdim=True) - 2 * a * (xf @ mu.T) + a2 * (mu * mu).sum(-1)   # |v_k|²
        quad = (vv - a2 * (wtv * sol).sum(-1)) / c                                          # v·C⁻¹v
        logdet = (self.dim - self.rank) * torch.log(c) + torch.log(diag).sum(-1)
        return logpi - 0.5 * quad - 0.5 * logdet, sol, c

    def eps(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact ε̂ = −σ ∇ log p_t(x) = σ Σ_k w_k C_k⁻¹ v_k for per-sample α, σ of shape (B,).

        Computed in float64 whatever x's dtype (|v|² expands with cancellation), returned in x's dtype.
        """
        out_dtype = x.dtype
        x, alpha, sigma = x.double(), alpha.double(), sigma.double()
        b = x.shape[0]
        logw, sol, c = self._terms(x, alpha, sigma)
        post = torch.softmax(logw, dim=-1)                                   # (B, K)
        a = alpha.to(x).reshape(b, 1)
        mu, w, _, _ = self._on(x)
        mix = x.reshape(b, -1) - a * (post @ mu) - a * a * torch.einsum("kdr,bkr->bd", w, post.unsqueeze(-1) * sol)
        return (sigma.to(x).reshape(b, 1) * mix / c).reshape(x.shape).to(out_dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the data distribution at x0 (B,)."""
        x0 = x0.double()
        b = x0.shape[0]
        one = torch.ones(b, dtype=x0.dtype, device=x0.device)
        logw, _, _ = self._terms(x0, one, 0 * one)
        return torch.logsumexp(logw, dim=-1) - 0.5 * self.dim * math.log(2 * math.pi)

    # ---- the data distribution ------------------------------------------------------------
    def sample_data(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.rank, dtype=torch.float64, generator=generator)
        e = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + torch.einsum("ndr,nr->nd", self.factors[k], z) + math.sqrt(self.iso_var) * e
        return x.reshape(n, *self.shape).to(dtype)

    def moments(self):
        """Exact mean (d,) and covariance (d, d) of the data, float64 numpy."""
        w = self.log_weights.exp().numpy()
        mu = self.means.numpy()
        u = self.factors.numpy()
        mean = w @ mu
        cov = np.zeros((self.dim, self.dim))
        for k in range(len(w)):
            dm = mu[k] - mean
            cov += w[k] * (u[k] @ u[k].T + np.outer(dm, dm))
        cov += self.iso_var * np.eye(self.dim)
        return mean, cov

    @property
    def data_mean(self) -> torch.Tensor:
        return (self.log_weights.exp() @ self.means).reshape(self.shape)

    def frechet_distance(self, samples: torch.Tensor) -> float:
        """Fréchet distance between the Gaussian fitted to `samples` and the true moments."""
        mean, cov = self.moments()
        x = samples.detach().reshape(samples.shape[0], -1).double().cpu().numpy()
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), mean, cov)

    def as_model(self, noise_schedule: NoiseSchedule, prediction: str = "eps") -> DiffusionModel:
        """`DiffusionModel` whose net returns the exact output for `prediction` (eps, x0, v, score;
        flow: the velocity ε − x0 on a `NoiseScheduleFlow`); the net takes continuous times (σ for
        EDM and flow) and computes α, σ on the tensor's device."""
        return DiffusionModel(MixtureNet(self, noise_schedule, prediction), noise_schedule, prediction=prediction,
                              time_input="continuous", data_mean=self.data_mean, sample_shape=self.shape)


class MixtureNet:
    """net(x, t) of a `GaussianMixture`: its exact output for one parameterisation at continuous
    times t (σ for EDM), with α and σ computed on the tensor's device. Carries the mixture's
    Fréchet distance, which is exact (`frechet_is_exact`): the metrics find it here."""

    frechet_is_exact = True

    def __init__(self, gmm: GaussianMixture, noise_schedule: NoiseSchedule, prediction: str):
        self.gmm, self.noise_schedule, self.prediction = gmm, noise_schedule, prediction

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ns = self.noise_schedule
        if self.prediction == "flow":   # x̂0 divides by α ≈ 1e-6 near t = 1: float64 throughout
            return self._velocity(x.double(), t.double()).to(x.dtype)
        alpha, sigma = ns.marginal_alpha(t), ns.marginal_std(t)
        e = self.gmm.eps(x, alpha, sigma)
        shp = (-1,) + (1,) * (x.dim() - 1)
        a, s = alpha.reshape(shp), sigma.reshape(shp)
        if self.prediction == "eps":
            return e
        if self.prediction == "x0":
            return (x - s * e) / a
        if self.prediction == "v":
            return a * e - s * (x - s * e) / a
        return -e / s   # score

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = ε̂ − x̂0 on the rectified-flow path (α = 1 − t, σ = t)."""
        alpha, sigma = self.noise_schedule.marginal_alpha(t), self.noise_schedule.marginal_std(t)
        e = self.gmm.eps(x, alpha, sigma)
        shp = (-1,) + (1,) * (x.dim() - 1)
        a, s = alpha.reshape(shp), sigma.reshape(shp)
        return e - (x - s * e) / a

    def frechet_distance(self, samples: torch.Tensor) -> float:
        return self.gmm.frechet_distance(samples)

    def nll_per_dim(self, samples: torch.Tensor) -> float:
        """Exact negative log-likelihood of the samples under the data distribution, nats per dimension."""
        return float(-self.gmm.log_prob(samples.double()).mean()) / self.gmm.dim


# ---- embedded models ------------------------------------------------------------------------

def gmm_image(seed: int = 0, shape=(3, 16, 16), components: int = 6, rank: int = 6,
              iso_std: float = 0.1) -> GaussianMixture:
    """Image-shaped mixture: smooth coloured blob patterns as means, smooth low-rank variations."""
    g = torch.Generator().manual_seed(seed)
    c, hgt, wid = shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, hgt, dtype=torch.float64),
                            torch.linspace(-1, 1, wid, dtype=torch.float64), indexing="ij")

    def blob():
        cy, cx = (torch.rand(2, generator=g, dtype=torch.float64) * 1.4 - 0.7)
        width = 0.25 + 0.5 * torch.rand((), generator=g, dtype=torch.float64)
        return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))

    means, factors = [], []
    for _ in range(components):
        col = torch.rand(c, 1, 1, generator=g, dtype=torch.float64) * 1.6 - 0.8
        base = torch.rand(c, 1, 1, generator=g, dtype=torch.float64) * 0.6 - 0.3
        means.append((base + col * blob()).reshape(-1) * 0.9)
        fac = []
        for _ in range(rank):
            col = torch.randn(c, 1, 1, generator=g, dtype=torch.float64) * 0.25
            fac.append((col * blob()).reshape(-1))
        factors.append(torch.stack(fac, dim=1))
    return GaussianMixture(torch.stack(means), torch.stack(factors), iso_std, shape=shape)


def gmm_2d(seed: int = 0, components: int = 8, radius: float = 1.5, std: float = 0.12) -> GaussianMixture:
    """2-D ring of K anisotropic Gaussians (for plots)."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    tang = torch.stack([-torch.sin(ang), torch.cos(ang)], dim=1) * 0.35
    factors = tang.unsqueeze(-1)  # (K, 2, 1): stretched along the ring
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(means, factors, std, weights=weights, shape=(2,))
