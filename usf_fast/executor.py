"""Run a compiled `Plan` with one of the combination backends."""
from __future__ import annotations

from typing import Callable

import torch

from .backends import coefficient_dtype, get_combine, resolve_backend
from .model import DiffusionModel
from .plan import Const, Eval, Plan

__all__ = ["execute", "coefficient_tables", "PlanRun"]


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


class PlanRun:
    """One run of a compiled `Plan`, stopped at each network evaluation: `next_input()` runs the
    combinations up to the next evaluation and returns its (input, time), `feed(output)` hands the
    network's raw output to it, `result` is the sample once every op ran. The run is plain data
    (slots, position, coefficient tables, the backend's name): keeping the object keeps the run,
    and it pickles and deep-copies. `sample` (through `execute`), `USFScheduler.step` (one `feed`
    per pipeline step) and the k-diffusion sampler run plans through it.

    tables: the per-combination coefficient tensors (`coefficient_tables`), made here if not given.
    mean: mean(x_t) -> the data mean broadcast like x_t for `Const` ops (the analytical first
        step); zeros if not given (diffusers pipelines).
    fresh: every combination writes a new tensor (a caller may still hold an earlier state);
        otherwise buffers this run allocated are reused per slot.
    poison: fill every buffer the run allocates with NaN first (tests: an element a backend forgets
        to write shows up as NaN in the result).
    """

    def __init__(self, plan: Plan, x_t: torch.Tensor, backend: str = "auto", *, tables: list | None = None,
                 mean: Callable | None = None, fresh: bool = False, poison: bool = False):
        self.plan = plan
        self.x_t = x_t
        self.backend = resolve_backend(backend, x_t.device, x_t.dtype)
        self.tables = tables if tables is not None else coefficient_tables(plan, coefficient_dtype(x_t.dtype),
                                                                             x_t.device)
        self.mean, self.fresh, self.poison = mean, fresh, poison
        self.slots: list = [None] * plan.num_slots
        self.slots[plan.input_slot] = x_t
        self.owned: dict[int, torch.Tensor] = {}   # buffers this run allocated, reused per slot (fresh=False)
        self.pos = 0             # the next op
        self.combines = 0        # combinations run
        self.evaluations = 0     # outputs fed

    @property
    def done(self) -> bool:
        return self.pos == len(self.plan.ops)

    @property
    def pending(self) -> Eval | None:
        """The evaluation waiting for its output (after `next_input`), or None."""
        op = self.plan.ops[self.pos] if not self.done else None
        return op if isinstance(op, Eval) else None

    def next_input(self) -> tuple[torch.Tensor, float] | None:
        """Run the ops up to the next evaluation; its (input state, time), or None at the end."""
        ops, slots = self.plan.ops, self.slots
        combine = None
        while self.pos < len(ops):
            op = ops[self.pos]
            if isinstance(op, Eval):
                return slots[op.state], op.t
            if isinstance(op, Const):
                slots[op.out] = self.mean(self.x_t) if self.mean is not None else torch.zeros_like(self.x_t)
            else:
                combine = combine or get_combine(self.backend)
                c1, c2 = self.tables[self.combines]
                inputs = [slots[s] for s in op.inputs]
                dst = self._buffer(op.out, op.inputs)
                dst2 = self._buffer(op.out2, op.inputs) if op.out2 is not None else None
                combine(inputs, c1, dst, c2, dst2)
                slots[op.out] = dst
                if dst2 is not None:
                    slots[op.out2] = dst2
                self.combines += 1
            self.pos += 1
        return None

    def feed(self, out: torch.Tensor, state: torch.Tensor | None = None) -> None:
        """The raw network output for the pending evaluation; `state`, if given, replaces the input
        the run computed for it (a pipeline's own latents there: inpainting blends them)."""
        op = self.pending
        if op is None:
            raise ValueError("feed: no evaluation is pending (call next_input first; the run may be finished)")
        if state is not None:
            self.slots[op.state] = state
        self.slots[op.out] = out
        self.pos += 1
        self.evaluations += 1

    @property
    def result(self) -> torch.Tensor:
        if not self.done:
            raise ValueError(f"result: the run is at op {self.pos} of {len(self.plan.ops)} (evaluations fed: "
                             f"{self.evaluations} of {self.plan.nfe})")
        return self.slots[self.plan.output_slot]

    def _buffer(self, slot: int, input_slots) -> torch.Tensor:
        like = self.x_t
        if self.fresh:
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        return _buffer(self.owned, self.slots, slot, like, input_slots, self.poison)


def execute(plan: Plan, model: DiffusionModel, x_t: torch.Tensor, backend: str = "auto",
            poison: bool = False, on_eval: Callable | None = None) -> torch.Tensor:
    """Run `plan` from the start state x_t (already scaled by the prior std) with `PlanRun`.

    poison: fill every buffer the executor allocates with NaN first (tests: an element a
    backend forgets to write shows up as NaN in the result).
    on_eval: on_eval(k, t, x, out) after the k-th network evaluation (0-based) at time t, with
    its input x and raw output; the tensors are the run's own buffers (valid until the next
    combination writes them). The fused path stays the fused path.
    """
    run = PlanRun(plan, x_t, backend, mean=model.mean_like, poison=poison)
    while (nxt := run.next_input()) is not None:
        x, t = nxt
        out = model.raw(x, t)
        if any(out.data_ptr() == b.data_ptr() for b in run.owned.values()) or out.data_ptr() == x_t.data_ptr():
            out = out.clone()  # the net returned one of our buffers: keep ours private
        run.feed(out)
        if on_eval is not None:
            on_eval(run.evaluations - 1, t, x, out)
    return run.result


def _buffer(owned, slots, slot, like, input_slots, poison) -> torch.Tensor:
    buf = owned.get(slot)
    if buf is None or (slot in input_slots and slots[slot] is not buf):
        # never write into a tensor we do not own (the noise, a model output)
        buf = torch.full_like(like, float("nan")) if poison else torch.empty_like(like)
        owned[slot] = buf
    elif poison and slot not in input_slots:
        buf.fill_(float("nan"))
    return buf
