"""Every sample-quality metric, and `make_metric` (lower is better).

    ReferenceDistance   RMS distance to a high-accuracy solution of the same probability-flow ODE
                        from the same noise (the default: it isolates the solver's error from the
                        model's and needs no weights); `reference_samples` computes that solution
    ExactFrechet        a model's own Fréchet distance to its data (exact moments for the embedded
                        mixtures, the feature network for the digits model)
    FID                 pytorch-fid Inception features against dataset statistics
    CallableMetric      any f(samples) -> float
`frechet_distance` is the Fréchet formula they share; `reference_solution` is an adaptive DOP853
solve of the ODE, the check on `reference_samples`.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import DiffusionModel
from .presets import unipc
from .reference import reference_sample

__all__ = ["reference_samples", "reference_spacing", "reference_distance", "frechet_distance", "reference_solution", "ReferenceDistance",
           "ExactFrechet", "FID", "CallableMetric", "METRICS", "make_metric", "sample_metrics"]


def reference_spacing(noise_schedule) -> str:
    """The time spacing of the reference solve, per noise schedule: logSNR on VP, Karras (ρ = 7) on
    EDM, time-quadratic on rectified flow. The embedded image mixture, 128 samples, 50 steps against
    800 (RMS; the worst sample): VP logSNR 5e-4; EDM Karras 1.4e-3 (0.013) where logSNR gives 2.2e-2
    (0.25: a trajectory that ends in another mixture component); flow time-quadratic 2.8e-2 (0.24,
    one sample; 64 steps: 4.8e-4) where logSNR gives 3.3e-2 (0.28). Rare trajectories like these
    are why a search measures its reference (`search.S3Search.check_reference`)."""
    return {"edm": "karras", "flow": "time_quadratic"}.get(noise_schedule.kind, "logSNR")


def reference_samples(model: DiffusionModel, noise: torch.Tensor, t_start: float, t_end: float,
                      nfe: int = 200, batch_size: int | None = None, progress: bool = False,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """High-accuracy ODE solution from the same noise: UniPC-3 with `nfe` steps on
    `reference_spacing` (logSNR; Karras on EDM, time-quadratic on flow), in `dtype` (float64 by default).
    At 200 NFE in float64 it agrees with an adaptive DOP853 solve to < 1e-6 RMS on the embedded
    models (the tests check it), at a fraction of the cost; a search measures the error of its
    cheaper reference (`search.S3Search.check_reference`)."""
    schedule = unipc(model.noise_schedule, nfe, order=3, t_start=t_start, t_end=t_end, lower_order_final=False,
                     spacing=reference_spacing(model.noise_schedule))
    chunks = noise.split(batch_size or noise.shape[0])
    chunks = tqdm(chunks, desc=f"reference solve ({str(dtype).replace('torch.', '')}, {nfe} NFE)", unit="chunk",
                  disable=not progress)
    with torch.no_grad():
        out = [reference_sample(model, schedule, noise=c.to(dtype)) for c in chunks]
    return torch.cat(out).to(noise.dtype)


def reference_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square difference per element (float64)."""
    if samples.shape != reference.shape:
        raise ValueError(f"samples shape {tuple(samples.shape)} != reference shape {tuple(reference.shape)}")
    return float((samples.double() - reference.double()).pow(2).mean().sqrt())


class ReferenceDistance:
    """RMS distance to the high-accuracy ODE solution from the same noise (needs no weights)."""

    name = "ref"
    needs_reference = True

    def __call__(self, samples: torch.Tensor, reference: torch.Tensor) -> float:
        return reference_distance(samples, reference)


class ExactFrechet:
    """The model's own Fréchet distance of the samples to its data: exact moments for the analytic
    mixtures (`gmm`), the feature-network distance for the digits model."""

    needs_reference = False

    def __init__(self, owner, name: str = "exact"):
        """owner: anything with `frechet_distance(samples) -> float` (a model's net)."""
        self.owner, self.name = owner, name

    def __call__(self, samples, reference=None) -> float:
        return self.owner.frechet_distance(samples)


class FID:
    """FID with pytorch-fid: Inception pool features of the samples (assumed in [−1, 1]) against
    dataset statistics in an `.npz` with `mu` and `sigma`.

    weights: a local path to pytorch-fid's Inception weights (`pt_inception-2015-12-05-*.pth`);
    None uses pytorch-fid's own loader (its cache, or a download where the network allows).
    """

    name = "fid"
    needs_reference = False

    def __init__(self, stats_npz: str, weights: str | None = None, device="cpu", batch_size: int = 50):
        try:
            import pytorch_fid.inception as inc
            from pytorch_fid.fid_score import calculate_frechet_distance
        except ImportError as e:
            raise ValueError(f"metric 'fid' needs pytorch-fid (pip install pytorch-fid): {e}") from None
        try:
            stats = np.load(stats_npz)
            self.mu, self.sigma = stats["mu"], stats["sigma"]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"fid stats {stats_npz!r}: need an .npz with 'mu' and 'sigma' ({e})") from None
        if weights is not None:
            if not os.path.exists(weights):
                raise ValueError(f"fid weights {weights!r}: file not found")
            original = inc.load_state_dict_from_url
            inc.load_state_dict_from_url = lambda *a, **k: torch.load(weights, map_location="cpu", weights_only=True)
            try:
                self.net = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
            finally:
                inc.load_state_dict_from_url = original
        else:
            self.net = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        self.net = self.net.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self._frechet = calculate_frechet_distance

    @torch.no_grad()
    def features(self, samples: torch.Tensor) -> np.ndarray:
        x = samples.float()
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"fid: samples must be images (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feats = [self.net(((c.clamp(-1, 1) + 1) / 2).to(self.device))[0].squeeze(-1).squeeze(-1).cpu()
                 for c in x.split(self.batch_size)]
        return torch.cat(feats).double().numpy()

    def __call__(self, samples, reference=None) -> float:
        f = self.features(samples)
        return float(self._frechet(f.mean(0), np.cov(f, rowvar=False), self.mu, self.sigma))


class CallableMetric:
    needs_reference = False

    def __init__(self, fn: Callable, name: str = "custom"):
        self.fn, self.name = fn, name

    def __call__(self, samples, reference=None) -> float:
        return float(self.fn(samples))


METRICS = ("ref", "exact", "fd", "fid")


def make_metric(metric, model: DiffusionModel | None = None, **options):
    """'ref' | 'exact' (analytic models) | 'fd' (embedded models: exact, or digits features) |
    'fid' (options: stats=, weights=) | a callable | an object."""
    if callable(metric) and not isinstance(metric, str):
        return metric if hasattr(metric, "needs_reference") else CallableMetric(metric)
    if metric == "ref":
        return ReferenceDistance()
    if metric in ("exact", "fd"):
        net = getattr(model, "net", None)
        if metric == "exact" and not getattr(net, "frechet_is_exact", False):
            raise ValueError("metric='exact': only the embedded analytic models (gmm-*) have exact moments")
        if not hasattr(net, "frechet_distance"):
            raise ValueError("metric='fd': only the embedded models (gmm-*, digits) carry a Fréchet distance to their data")
        return ExactFrechet(net, metric)
    if metric == "fid":
        if not options.get("stats"):
            raise ValueError("metric='fid': needs fid_stats= (--fid-stats: an .npz with mu and sigma of the dataset's Inception features)")
        return FID(options["stats"], options.get("weights"), options.get("device", "cpu"))
    raise ValueError(f"metric={metric!r}: must be one of {', '.join(METRICS)} or a callable f(samples) -> float")


def sample_metrics(model: DiffusionModel, samples: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """The numbers `usf-fast sample` prints: ref_rmse (NaN without a reference), the model's Fréchet
    distance (the embedded models) and the exact negative log-likelihood per dimension in nats
    (models whose net has `nll_per_dim`: the mixtures)."""
    out = {"ref_rmse": reference_distance(samples, reference) if reference is not None else float("nan"),
           "frechet": make_metric("fd", model)(samples) if samples.shape[0] > 1 else float("nan")}
    nll = getattr(model.net, "nll_per_dim", None)
    if nll is not None:
        out["nll"] = nll(samples)
    return out


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ1−μ2‖² + tr(C1 + C2 − 2 (C1^{1/2} C2 C1^{1/2})^{1/2}), float64, via symmetric eigensolves."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    w1, v1 = np.linalg.eigh(cov1)
    s1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    mid = s1 @ cov2 @ s1
    wm = np.linalg.eigvalsh((mid + mid.T) / 2)
    tr_sqrt = np.sqrt(np.clip(wm, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def reference_solution(model: DiffusionModel, noise: torch.Tensor, t_start: float, t_end: float,
                       rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """High-accuracy probability-flow ODE solution from ε·prior_std(t_start) at t_start to t_end.

    Integrates y = x/α in λ, dy/dλ = −e^{−λ} ε̂(α y, t(λ)), with scipy's DOP853 in float64.
    """
    from scipy.integrate import solve_ivp  # 0.35 s to import: only this check needs it
    ns = model.noise_schedule
    shape = noise.shape
    x0 = noise.double().cpu() * ns.prior_std(t_start)
    l0, l1 = float(ns.marginal_lambda(t_start)), float(ns.marginal_lambda(t_end))

    def rhs(lam, y):
        t = float(ns.inverse_lambda(lam))
        a = float(ns.marginal_alpha(t))
        x = torch.from_numpy(a * y).reshape(shape)
        with torch.no_grad():
            e, _ = model.predict(x, t)
        return -math.exp(-lam) * e.reshape(-1).numpy()

    y0 = (x0 / float(ns.marginal_alpha(t_start))).reshape(-1).numpy()
    sol = solve_ivp(rhs, (l0, l1), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference_solution: ODE solver failed: {sol.message}")
    y1 = sol.y[:, -1]
    return torch.from_numpy(y1 * float(ns.marginal_alpha(t_end))).reshape(shape).to(device=noise.device, dtype=noise.dtype)
