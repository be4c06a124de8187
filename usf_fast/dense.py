"""Dense programs: one program shape per NFE, so one batch (or one captured graph) can run any mix
of schedules with the same NFE.

Everything a USF solver computes is linear in the noise ε, the data mean (analytical first step),
the model inputs x_e and the raw model outputs O_e (DESIGN.md §3). With the basis
[ε, mean, x_0, O_0, x_1, O_1, ...], evaluation e's input is x_e = A_e · basis[:2 + 2e] and the
result is F · basis. A schedule becomes (times τ_e, A_e, F); schedules of the same NFE share the
program "for e: x_e ← A_e·basis; O_e ← net(x_e, τ_e); result ← F·basis" and differ only in their
tables, which go per sample into the combination kernels and the net's time input.

The model inputs stay in the basis (rather than being expanded back to ε and the outputs) so each
combination uses the same local coefficients as a step-by-step sampler; fully expanded forms
cancel large coefficients against each other and lose ~50× more float32 precision. The price of
one shape for every schedule is reads: evaluation e reads 2 + 2e slots (the minimal `plan` reads
fewer), paid by the search and the graph runner, not by `sample`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backends import get_combine, resolve_backend
from .model import DiffusionModel
from .sampler import check_schedule_range, step_weights, walk
from .schedule import Schedule

__all__ = ["DenseProgram", "dense_program", "stack_programs", "device_tables", "run_dense"]


@dataclass(frozen=True)
class DenseProgram:
    """times: (n,) host times of the n evaluations; A: (n, 2n + 2) (row e uses its first 2 + 2e
    columns); F: (2n + 2,). Basis columns: 0 = standard-normal ε, 1 = data mean, 2 + 2e = model
    input of evaluation e, 3 + 2e = its raw output."""

    times: np.ndarray
    A: np.ndarray
    F: np.ndarray

    @property
    def nfe(self) -> int:
        return len(self.times)


def dense_program(schedule: Schedule, model: DiffusionModel) -> DenseProgram:
    """Run the schedule symbolically (vectors over the basis instead of tensors), float64."""
    ns = model.noise_schedule
    check_schedule_range(schedule, ns)
    ts = schedule.timesteps
    n_eval = schedule.nfe
    width = 2 * n_eval + 2
    weights = step_weights(schedule, ns)
    unit = np.eye(width)
    rows, times = [], []
    # column 0 is standard-normal ε; the start state x_T = prior_std(t_0)·ε (1 for VP, σ_max for
    # EDM) is folded in, so schedules with different start times can share a batch
    start = ns.prior_std(ts[0]) * unit[0]

    def evaluate(j, x):
        """Record x as evaluation e's input; afterwards the state *is* basis column 2 + 2e."""
        e = len(rows)
        rows.append(x.copy())
        times.append(ts[j])
        e_x, e_o, d_x, d_o = model.conversion(ts[j])
        return (unit[2 + 2 * e].copy(), e_x * unit[2 + 2 * e] + e_o * unit[3 + 2 * e],
                d_x * unit[2 + 2 * e] + d_o * unit[3 + 2 * e])

    def analytic_first(x):
        a0, s0 = float(ns.marginal_alpha(ts[0])), float(ns.marginal_std(ts[0]))
        return (x - a0 * unit[1]) / s0, unit[1].copy()

    final = walk(schedule, weights, start, evaluate, analytic_first)
    assert len(rows) == n_eval  # Schedule.nfe and this walk must agree
    return DenseProgram(np.asarray(times, dtype=np.float64), np.stack(rows) if rows else np.zeros((0, width)), final)


def stack_programs(programs: list[DenseProgram], assignment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample tables for a batch: sample b runs programs[assignment[b]].

    Returns (times (B, n), A (B, n, 2n + 2), F (B, 2n + 2)), float64. Column 0 multiplies the
    standard-normal noise ε (the prior std is folded in).
    """
    nfes = {p.nfe for p in programs}
    if len(nfes) != 1:
        raise ValueError(f"programs: all schedules in one batch need the same NFE, got {sorted(nfes)}")
    idx = np.asarray(assignment, dtype=np.int64)
    if idx.ndim != 1 or idx.min() < 0 or idx.max() >= len(programs):
        raise ValueError(f"assignment: need one program index 0..{len(programs) - 1} per sample")
    times = np.stack([p.times for p in programs])[idx]
    A = np.stack([p.A for p in programs])[idx]
    F = np.stack([p.F for p in programs])[idx]
    return times, A, F


def device_tables(times: np.ndarray, A: np.ndarray, F: np.ndarray, dtype: torch.dtype, device,
                  coef_dtype: torch.dtype | None = None):
    """Host tables → (times (B, n) in `dtype`, [A_e (B, 2 + 2e) contiguous], F (B, 2n + 2)) on `device`."""
    cdt = coef_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    n = times.shape[1]
    t = torch.as_tensor(times, dtype=dtype).to(device)
    a_list = [torch.as_tensor(np.ascontiguousarray(A[:, e, : 2 + 2 * e]), dtype=cdt).to(device) for e in range(n)]
    f = torch.as_tensor(np.ascontiguousarray(F), dtype=cdt).to(device)
    return t, a_list, f


def run_dense(model: DiffusionModel, x_t: torch.Tensor, times: torch.Tensor, A: list, F: torch.Tensor,
              backend: str = "auto", mean: torch.Tensor | None = None, out: torch.Tensor | None = None,
              inputs: list | None = None) -> torch.Tensor:
    """Execute per-sample dense tables made by `device_tables`.

    `inputs`/`out`: optional preallocated buffers (the graph runner passes static ones):
    inputs[e] receives the model input x_e of evaluation e; out receives the result.
    """
    name = resolve_backend(backend, x_t.device, x_t.dtype)
    combine = get_combine(name)
    if mean is None:
        mean = model.mean_like(x_t)
    slots = [x_t, mean]
    for e, a_e in enumerate(A):
        x_e = inputs[e] if inputs is not None else torch.empty_like(x_t)
        combine(slots, a_e, x_e)
        slots += [x_e, model.raw(x_e, times[:, e])]
    result = out if out is not None else torch.empty_like(x_t)
    combine(slots, F, result)
    return result
