"""Real evaluation of candidate schedules: many candidates of one NFE in one batch, then a metric.

Candidates share the dense program of their NFE (`usf_fast.dense`), so a chunk of G candidates
× S noise samples is one batch: per-sample times go to the model and per-sample coefficients to
the combination kernel. Chunks always hold the same candidates whatever the number of processes,
so results do not depend on how the work is sharded.

Metrics (lower is better), pluggable: `ReferenceDistance` (default: RMS distance to a
high-accuracy solution from the same noise), `ExactFrechet` (the embedded models' own Fréchet
distance: exact moments for the mixtures, the feature network for digits), `FID`
(pytorch-fid Inception features against dataset statistics), or any callable
`f(samples) -> float`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..dense import dense_program, device_tables, run_dense, stack_programs
from ..metrics import reference_distance, reference_samples
from ..model import DiffusionModel
from ..schedule import Schedule

__all__ = ["NoiseSet", "ReferenceDistance", "ExactFrechet", "FID", "CallableMetric", "make_metric",
           "evaluate_schedules", "METRICS"]


class NoiseSet:
    """Standard-normal noise of one fidelity (seeded), with lazily computed reference samples."""

    def __init__(self, shape, n: int, seed: int, name: str):
        self.name, self.n, self.seed = name, n, seed
        self.noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self._ref = None

    def reference(self, model: DiffusionModel, t_start: float, t_end: float, device="cpu") -> torch.Tensor:
        """The high-accuracy solution from this noise (float64, solved on `device`, kept on the CPU)."""
        if self._ref is None:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ref = reference_samples(model, self.noise.to(device), t_start, t_end, batch_size=512).cpu()
            if not bool(torch.isfinite(ref).all()):
                raise ValueError(f"the high-accuracy reference solution ({self.name} noise) has NaN/inf: the model "
                                 f"returns NaN/inf somewhere in t ∈ [{t_end}, {t_start}]; metric 'ref' needs a finite model")
            self._ref = ref
        return self._ref


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
            import os
            if not os.path.exists(weights):
                raise ValueError(f"fid weights {weights!r}: file not found")
            original = inc.load_state_dict_from_url
            inc.load_state_dict_from_url = lambda *a, **k: torch.load(weights, map_location="cpu")
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
        owner = getattr(net, "gmm", None)
        if owner is None and metric == "fd" and hasattr(net, "frechet_distance"):
            owner = net
        if owner is None:
            raise ValueError("metric='exact': only the embedded analytic models (gmm-*) have exact moments" if metric == "exact"
                             else "metric='fd': only the embedded models (gmm-*, digits) carry a Fréchet distance to their data")
        return ExactFrechet(owner, metric)
    if metric == "fid":
        if not options.get("stats"):
            raise ValueError("metric='fid': needs fid_stats= (--fid-stats: an .npz with mu and sigma of the dataset's Inception features)")
        return FID(options["stats"], options.get("weights"), options.get("device", "cpu"))
    raise ValueError(f"metric={metric!r}: must be one of {', '.join(METRICS)} or a callable f(samples) -> float")


def evaluate_schedules(model: DiffusionModel, schedules: list[Schedule], noise_set: NoiseSet, metric,
                       t_range: tuple[float, float], chunk: int = 8, dtype=torch.float32, backend: str = "auto",
                       device="cpu") -> list[float]:
    """Metric of every schedule (same NFE) on `noise_set`; NaN/inf samples score +inf."""
    if not schedules:
        return []
    ref = noise_set.reference(model, *t_range, device=device) if getattr(metric, "needs_reference", False) else None
    eps = noise_set.noise
    s = eps.shape[0]
    out: list[float] = []
    for c0 in range(0, len(schedules), chunk):
        group = schedules[c0:c0 + chunk]
        progs = [dense_program(sch, model) for sch in group]
        assign = np.repeat(np.arange(len(group)), s)
        times, A, F = stack_programs(progs, assign)
        t, a_list, f = device_tables(times, A, F, dtype, device)
        x_t = eps.repeat(len(group), *([1] * (eps.dim() - 1))).to(dtype=dtype, device=device)
        with torch.no_grad():
            x = run_dense(model, x_t, t, a_list, f, backend=backend).cpu()
        for k in range(len(group)):
            xs = x[k * s:(k + 1) * s]
            if not bool(torch.isfinite(xs).all()):
                out.append(math.inf)
                continue
            v = metric(xs, ref)
            out.append(v if math.isfinite(v) else math.inf)
    return out
