"""Real evaluation of candidate schedules: many candidates of one NFE in one batch, then a metric.

Candidates share the dense program of their NFE (`usf_fast.dense`), so a chunk of G candidates
× S noise samples is one batch: per-sample times go to the model and per-sample coefficients to
the combination kernel. Chunks always hold the same candidates whatever the number of processes,
so results do not depend on how the work is sharded.

Metrics (lower is better) come from `usf_fast.metrics.make_metric`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..dense import dense_program, device_tables, run_dense, stack_programs
from ..metrics import (FID, METRICS, CallableMetric, ExactFrechet, ReferenceDistance, make_metric, reference_distance,
                       reference_samples)
from ..model import DiffusionModel
from ..schedule import Schedule

__all__ = ["NoiseSet", "evaluate_schedules", "ReferenceDistance", "ExactFrechet", "FID", "CallableMetric",
           "make_metric", "METRICS"]


class NoiseSet:
    """Standard-normal noise of one fidelity (seeded), with lazily computed reference samples."""

    def __init__(self, shape, n: int, seed: int, name: str, reference_nfe: int = 200,
                 reference_dtype: torch.dtype = torch.float64):
        self.name, self.n, self.seed = name, n, seed
        self.noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.reference_nfe, self.reference_dtype = reference_nfe, reference_dtype
        self.reference_rows = 0   # network rows the reference solve took
        self._ref = None
        self._finer = None        # (steps, solution) of the last `reference_error` over every sample

    def set_reference_nfe(self, nfe: int) -> None:
        """Solve the reference with `nfe` steps from now on (a solved one is dropped)."""
        if nfe != self.reference_nfe:
            self.reference_nfe, self._ref = nfe, None

    @property
    def pending_reference_rows(self) -> int:
        """Rows per network pass (samples × steps) the reference solve will take if it is asked for
        (0 once solved; an upper bound: a finer solve already made may serve it)."""
        return 0 if self._ref is not None else self.n * self.reference_nfe

    def _solve(self, model: DiffusionModel, noise: torch.Tensor, t_start: float, t_end: float, nfe: int,
               device) -> torch.Tensor:
        rows0 = model.rows
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows = model.cond_rows   # chunks of a multiple of the prompts: sample r keeps prompt r mod P
            out = reference_samples(model, noise.to(device), t_start, t_end, nfe=nfe,
                                    batch_size=max(1, 512 // rows) * rows, dtype=self.reference_dtype).cpu()
        self.reference_rows += model.rows - rows0
        return out

    def reference_error(self, model: DiffusionModel, t_start: float, t_end: float, device="cpu",
                        samples: int = 16) -> float:
        """The reference's own error, measured: RMS distance of its first `samples` samples (a
        multiple of the prompts) to a solve with twice the steps. Slightly high as an estimate of
        the error itself: it includes the finer solve's, about 2⁻³ as large for UniPC-3."""
        ref = self.reference(model, t_start, t_end, device)
        rows = model.cond_rows
        k = min(self.n, max(rows, samples // rows * rows))
        fine = self._solve(model, self.noise[:k], t_start, t_end, 2 * self.reference_nfe, device)
        if k == self.n:   # the reference itself once the steps are doubled: not solved again
            self._finer = (2 * self.reference_nfe, fine)
        return reference_distance(ref[:k], fine)

    def reference(self, model: DiffusionModel, t_start: float, t_end: float, device="cpu") -> torch.Tensor:
        """The high-accuracy solution from this noise (UniPC-3 at `reference_nfe` steps on
        `metrics.reference_spacing` in `reference_dtype`; solved on `device`, kept on the CPU)."""
        if self._ref is None:
            if self._finer is not None and self._finer[0] == self.reference_nfe:
                ref = self._finer[1]
            else:
                ref = self._solve(model, self.noise, t_start, t_end, self.reference_nfe, device)
            if not bool(torch.isfinite(ref).all()):
                raise ValueError(f"the high-accuracy reference solution ({self.name} noise) has NaN/inf: the model "
                                 f"returns NaN/inf somewhere in t ∈ [{t_end}, {t_start}]; metric 'ref' needs a finite model")
            self._ref = ref
        return self._ref


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
