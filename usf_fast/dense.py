"""Dense programs: one program shape per NFE, so one batch (or one captured graph) can run any mix
of schedules with the same NFE.

Everything a USF solver computes is linear in the noise ε, the data mean (analytical first step),
the model inputs x_e and the raw model outputs O_e (docs/design.md, "The program"). With the basis
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

from .backends import coefficient_dtype, get_combine, resolve_backend
from .checks import check_schedule_range
from .model import DiffusionModel
from .program import MEAN, START, trace
from .schedule import Schedule

__all__ = ["DenseProgram", "dense_program", "stack_programs", "device_tables", "run_dense", "input_width", "basis_width"]


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


def input_width(e: int) -> int:
    """Basis columns evaluation e's input reads: ε, mean, then (input, output) of evaluations < e."""
    return 2 + 2 * e


def basis_width(nfe: int) -> int:
    """Columns of the whole basis of an `nfe`-evaluation program (what the result reads)."""
    return 2 + 2 * nfe


def dense_program(schedule: Schedule, model: DiffusionModel) -> DenseProgram:
    """The dense lowering of the schedule's program (`usf_fast.program.trace`): every value
    expanded over the basis, float64."""
    ns = model.noise_schedule
    check_schedule_range(schedule, ns)
    program = trace(schedule, model)
    n_eval = program.nfe
    unit = np.eye(basis_width(n_eval))
    # column 0 is standard-normal ε; the start state x_T = prior_std(t_0)·ε (1 for VP, σ_max for
    # EDM) is folded in, so schedules with different start times can share a batch
    value = {START: ns.prior_std(schedule.timesteps[0]) * unit[0], MEAN: unit[1]}
    rows, times = [], []
    for k, node in enumerate(program.nodes):
        if node.kind == "state":
            value[k] = _expand(node.terms, value)
        elif node.kind == "eval":
            e = len(rows)
            rows.append(value[node.source].copy())
            times.append(node.t)
            # after evaluation e the state *is* its input column, the output its own column
            value[node.source], value[k] = unit[input_width(e)], unit[input_width(e) + 1]
    A = np.stack(rows) if rows else np.zeros((0, len(unit)))
    return DenseProgram(np.asarray(times, dtype=np.float64), A, _expand(program.output, value))


def _expand(terms, value: dict) -> np.ndarray:
    """Σ c·value[node] in the order of the terms."""
    if not terms:
        return np.zeros_like(value[START])
    (node, c), *rest = terms
    out = c * value[node]
    for node, c in rest:
        out = out + c * value[node]
    return out


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
    cdt = coef_dtype or coefficient_dtype(dtype)
    n = times.shape[1]
    t = torch.as_tensor(times, dtype=dtype).to(device)
    a_list = [torch.as_tensor(np.ascontiguousarray(A[:, e, :input_width(e)]), dtype=cdt).to(device) for e in range(n)]
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
