"""Run a compiled `Plan` with one of the combination backends."""
from __future__ import annotations

from typing import Callable

import torch

from .backends import coefficient_dtype, get_combine, resolve_backend
from .model import DiffusionModel
from .plan import Const, Eval, Plan

__all__ = ["execute", "coefficient_tables"]


def coefficient_tables(plan: Plan, dtype: torch.dtype, device) -> list:
    """Per Combine: (coefs, coefs2 or None) as device tensors, made with one host→device copy."""
    flat = []
    for op in plan.combines:
        flat.extend(op.coefs)
        if op.coefs2 is not None:
            flat.extend(op.coefs2)
    table = torch.tensor(flat, dtype=dtype).to(device, non_blocking=True)
    out, pos = [], 0
    for op in plan.combines:
        k = len(op.inputs)
        c1 = table[pos:pos + k]
        pos += k
        c2 = None
        if op.coefs2 is not None:
            c2 = table[pos:pos + k]
            pos += k
        out.append((c1, c2))
    return out


def execute(plan: Plan, model: DiffusionModel, x_t: torch.Tensor, backend: str = "auto",
            poison: bool = False, on_eval: Callable | None = None) -> torch.Tensor:
    """Run `plan` from the start state x_t (already scaled by the prior std).

    poison: fill every buffer the executor allocates with NaN first (tests: an element a
    backend forgets to write shows up as NaN in the result).
    on_eval: on_eval(k, t, x, out) after the k-th network evaluation (0-based) at time t, with
    its input x and raw output; the tensors are the run's own buffers (valid until the next
    combination writes them). The fused path stays the fused path.
    """
    name = resolve_backend(backend, x_t.device, x_t.dtype)
    combine = get_combine(name)
    tables = iter(coefficient_tables(plan, coefficient_dtype(x_t.dtype), x_t.device))
    slots: list = [None] * plan.num_slots
    owned: dict[int, torch.Tensor] = {}   # buffers this executor allocated, reused per slot
    slots[plan.input_slot] = x_t
    evals = 0
    for op in plan.ops:
        if isinstance(op, Eval):
            out = model.raw(slots[op.state], op.t)
            if any(out.data_ptr() == b.data_ptr() for b in owned.values()) or out.data_ptr() == x_t.data_ptr():
                out = out.clone()  # the net returned one of our buffers: keep ours private
            slots[op.out] = out
            if on_eval is not None:
                on_eval(evals, op.t, slots[op.state], out)
            evals += 1
        elif isinstance(op, Const):
            slots[op.out] = model.mean_like(x_t)
        else:
            c1, c2 = next(tables)
            inputs = [slots[s] for s in op.inputs]
            dst = _buffer(owned, slots, op.out, x_t, op.inputs, poison)
            dst2 = _buffer(owned, slots, op.out2, x_t, op.inputs, poison) if op.out2 is not None else None
            combine(inputs, c1, dst, c2, dst2)
            slots[op.out] = dst
            if dst2 is not None:
                slots[op.out2] = dst2
    return slots[plan.output_slot]


def _buffer(owned, slots, slot, like, input_slots, poison) -> torch.Tensor:
    buf = owned.get(slot)
    if buf is None or (slot in input_slots and slots[slot] is not buf):
        # never write into a tensor we do not own (the noise, a model output)
        buf = torch.full_like(like, float("nan")) if poison else torch.empty_like(like)
        owned[slot] = buf
    elif poison and slot not in input_slots:
        buf.fill_(float("nan"))
    return buf
