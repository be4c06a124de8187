"""A Gaussian-process predictor for S³: exact GP regression on the (capped log) metric with a
Matérn-5/2 kernel and one length scale per input feature (ARD), hyperparameters fitted by Adam on
the log marginal likelihood (warm-started from the previous fit, so refitting every generation is
cheap). It gives a predictive mean *and* a standard deviation, so a child can be scored by its
expected improvement over its parent: bold children the GP is unsure about are not ranked below
timid near-copies, which is what made screening by a predicted metric lose to plain evolution.

On the search's own data it ranks the next candidates better than the MLP ensemble of
`predictor.Predictor` (`bench/predictor_study.py`), at a few hundred evaluations (the search's
regime) where an MLP is data-starved. n ≤ a few thousand: the fit is O(n³) in float64 on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import kendalltau, norm

from .predictor import Predictor

__all__ = ["GPPredictor"]


class GPPredictor:
    """fit(x, y) on features x (n, d) and metric values y (n,) (lower is better); `predict(x)` →
    (mean, std) of the GP's target (capped log metric, `Predictor._target`); `expected_improvement`
    scores proposals against reference target values. `tau`: Kendall τ of the leave-one-out means
    against the targets (closed form, no refit), the held-out rank correlation of the last fit."""

    def __init__(self, steps: int = 150, warm_steps: int = 40, lr: float = 0.05, noise_floor: float = 1e-4):
        self.steps, self.warm_steps, self.lr, self.noise_floor = steps, warm_steps, lr, noise_floor
        self.params = None       # log length scales (d,), log output scale, log noise (standardised units)
        self.tau: float | None = None

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        log_ls, log_scale, _ = self.params
        ls = torch.exp(log_ls)
        r = math.sqrt(5.0) * torch.cdist(a / ls, b / ls)
        return torch.exp(log_scale) * (1.0 + r + r * r / 3.0) * torch.exp(-r)

    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.exp(self.params[2]) + self.noise_floor
        return self._kernel(x, x) + noise * torch.eye(len(x), dtype=x.dtype)

    @staticmethod
    def _cholesky(k: torch.Tensor) -> torch.Tensor:
        """Cholesky factor of k; if rounding leaves k not quite positive definite (near-duplicate
        schedules), a growing jitter on the diagonal — never an exception in the middle of a search."""
        jitter = 0.0
        for _ in range(6):
            chol, info = torch.linalg.cholesky_ex(k + jitter * torch.eye(len(k), dtype=k.dtype))
            if int(info) == 0:
                return chol
            jitter = 1e-6 if jitter == 0.0 else 10.0 * jitter
        raise ValueError("GPPredictor: the kernel matrix is not positive definite even with jitter 0.1 "
                         "(non-finite features?)")

    def target(self, y) -> np.ndarray:
        """The regression target of metric values y: log metric capped at a quantile (as `Predictor`)."""
        return Predictor._target(y)

    def fit(self, x, y) -> GPPredictor:
        t = self.targets = self.target(y)   # kept: references (e.g. parents' values) must use the same cap
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        self.x_mean, self.x_scale = x.mean(0), x.std(0) + 1e-6   # constant features: any scale, no effect
        xs = (x - self.x_mean) / self.x_scale
        tt = torch.as_tensor(t)
        self.t_mean, self.t_scale = tt.mean(), tt.std() + 1e-9
        tn = (tt - self.t_mean) / self.t_scale
        warm = self.params is not None and len(self.params[0]) == x.shape[1]
        if not warm:
            self.params = [torch.full((x.shape[1],), math.log(3.0), dtype=torch.float64),
                           torch.zeros((), dtype=torch.float64), torch.tensor(math.log(0.05), dtype=torch.float64)]
        for p in self.params:
            p.requires_grad_(True)
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        for step in range(1, (self.warm_steps if warm else self.steps) + 1):
            chol = self._cholesky(self._gram(xs))
            alpha = torch.cholesky_solve(tn[:, None], chol)
            nll = 0.5 * (tn[:, None] * alpha).sum() + torch.log(torch.diagonal(chol)).sum()
            grads = torch.autograd.grad(nll, self.params)
            with torch.no_grad():
                _adam_step(self.params, grads, moments, step, self.lr)
                # keep the fit well-posed: no collapse to interpolation or to a constant
                self.params[0].clamp_(math.log(0.05), math.log(100.0))
                self.params[1].clamp_(math.log(1e-2), math.log(1e2))
                self.params[2].clamp_(math.log(1e-4), 0.0)
        with torch.no_grad():
            for p in self.params:
                p.requires_grad_(False)
            self.chol = self._cholesky(self._gram(xs))
            self.alpha = torch.cholesky_solve(tn[:, None], self.chol).squeeze(-1)
            self.xs = xs
            if len(tn) >= 10:   # leave-one-out means: t_i − α_i / (K⁻¹)_ii
                k_inv_diag = torch.diagonal(torch.cholesky_inverse(self.chol))
                loo = tn - self.alpha / k_inv_diag
                tau = kendalltau(loo.numpy(), tn.numpy()).statistic
                self.tau = float(tau) if np.isfinite(tau) else 0.0
        return self

    def _at(self, x, caller: str):
        """(standardised x, kernel to the training points, K⁻¹ times its transpose, predictive mean in
        target units) at features x."""
        if self.params is None:
            raise RuntimeError(f"GPPredictor.{caller} before fit")
        xs = (torch.as_tensor(np.asarray(x, dtype=np.float64)) - self.x_mean) / self.x_scale
        ks = self._kernel(xs, self.xs)
        return xs, ks, torch.cholesky_solve(ks.T, self.chol), ks @ self.alpha * self.t_scale + self.t_mean

    def predict(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation of the target (capped log metric) at features x."""
        with torch.no_grad():
            _, ks, v, mean = self._at(x, "predict")
            var = torch.exp(self.params[1]) - (ks * v.T).sum(1)
            return mean.numpy(), (var.clamp_min(1e-12).sqrt() * self.t_scale).numpy()

    def posterior(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean (n,) and joint covariance (n, n) of the latent target at features x."""
        with torch.no_grad():
            xs, ks, v, mean = self._at(x, "posterior")
            return mean.numpy(), ((self._kernel(xs, xs) - ks @ v) * self.t_scale ** 2).numpy()

    def batch_expected_improvement(self, x, reference: float, n_pick: int, believe_best: bool = True) -> list[int]:
        """Indices of n_pick distinct rows of x, chosen one after another by expected improvement
        over `reference` (the best target so far), each pick "believed" (kriging believer): the GP
        is conditioned on the pick at its own predicted mean, which leaves every mean as it was and
        shrinks the variances of the pick's neighbours, and the reference falls to the pick's mean
        when that is lower (the believed value is the best so far). So a batch spreads over
        different ideas instead of spending its evaluations on variations of one. believe_best=False
        keeps the reference (then copies of a pick predicted better than it still rank high)."""
        mean, cov = self.posterior(x)
        noise = float(torch.exp(self.params[2]) + self.noise_floor) * float(self.t_scale) ** 2
        ref = float(reference)
        free = np.ones(len(mean), dtype=bool)
        picks: list[int] = []
        for _ in range(min(n_pick, len(mean))):
            std = np.sqrt(np.clip(np.diag(cov), 1e-24, None))
            ei = np.where(free, _ei(ref, mean, std), -np.inf)
            j = int(np.argmax(ei))
            picks.append(j)
            free[j] = False
            cov = cov - np.outer(cov[:, j], cov[j, :]) / (cov[j, j] + noise)
            if believe_best:
                ref = min(ref, float(mean[j]))
        return picks

    def expected_improvement(self, x, reference) -> np.ndarray:
        """E[max(reference − f(x), 0)] under the GP, per row of x against reference target values
        (e.g. each proposal's parent's; higher is better)."""
        mean, std = self.predict(x)
        return _ei(np.asarray(reference, dtype=np.float64), mean, std)


def _adam_step(params, grads, moments, step: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam update (Kingma & Ba 2015) in place, operation for operation as `torch.optim.Adam`
    on the CPU (its single-tensor path), without it: building a torch optimiser imports
    torch._dynamo, ~1–5 s the first time, longer than all of a search's GP fits."""
    b1, b2 = betas
    bias1, bias2 = 1 - b1 ** step, 1 - b2 ** step
    for p, g, (m, v) in zip(params, grads, moments):
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m, (v.sqrt() / bias2 ** 0.5).add_(eps), value=-(lr / bias1))


def _ei(reference, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Expected improvement E[max(reference − f, 0)] of f ~ N(mean, std²), elementwise."""
    z = (reference - mean) / std
    return (reference - mean) * norm.cdf(z) + std * norm.pdf(z)
