"""The minimal-slot lowering of a schedule's program (`usf_fast.program`), run by `sample`.

A `Plan` is a list of ops over numbered buffer slots:

    Eval(state, point, out)                      slots[out] ← net output at slots[state], t = timesteps[point]
    Combine(inputs, coefs, out, coefs2, out2)    slots[out] ← Σ_k coefs[k] · slots[inputs[k]]  (and out2)
    Const(out)                                   slots[out] ← the data mean (analytical first step)

The lowering keeps each program value as a sparse linear expression over materialised buffers and
only materialises what the model must see (the state it is evaluated at) or what later ops read.
A pseudo-corrected state is never computed on its own: it is folded into the combinations that
read it, and written as a second output of another combination only when a later op still reads
it. Slots are reused as soon as a buffer dies, so a step reads few buffers (the dense lowering,
`usf_fast.dense`, reads every earlier one).

All coefficients are float64 on the host; executors cast them once per plan.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Union

from .checks import check_schedule_range
from .model import DiffusionModel
from .program import MEAN, START, Program, trace
from .schedule import Schedule

__all__ = ["Eval", "Combine", "Const", "Plan", "compile_plan", "cached_plan"]


@dataclass(frozen=True)
class Eval:
    state: int
    point: int
    t: float
    out: int


@dataclass(frozen=True)
class Combine:
    inputs: tuple[int, ...]
    coefs: tuple[float, ...]
    out: int
    coefs2: tuple[float, ...] | None = None
    out2: int | None = None
    step: int = 0  # 1-based step this combination belongs to (N + 1 for the final output)


@dataclass(frozen=True)
class Const:
    """slots[out] ← the model's data mean broadcast to the sample shape (analytical first step)."""
    out: int


Op = Union[Eval, Combine, Const]


@dataclass
class Plan:
    ops: list
    num_slots: int
    input_slot: int
    output_slot: int
    nfe: int
    schedule: Schedule = field(repr=False)

    @property
    def combines(self) -> list[Combine]:
        return [op for op in self.ops if isinstance(op, Combine)]

    def bytes_per_step(self, numel: int, itemsize: int) -> dict[int, int]:
        """Bytes each step's combinations move: (reads + writes) · numel · itemsize."""
        out: dict[int, int] = {}
        for op in self.combines:
            n = len(op.inputs) + 1 + (op.out2 is not None)
            out[op.step] = out.get(op.step, 0) + n * numel * itemsize
        return out

    def summary(self) -> str:
        lines = [f"Plan: {len(self.ops)} ops, {self.num_slots} slots, NFE {self.nfe}, "
                 f"max inputs per combine {max((len(c.inputs) for c in self.combines), default=0)}"]
        for op in self.ops:
            if isinstance(op, Eval):
                lines.append(f"  EVAL    s{op.out} <- net(s{op.state}, t={op.t:.6g})   [point {op.point}]")
            elif isinstance(op, Const):
                lines.append(f"  CONST   s{op.out} <- data mean")
            else:
                terms = " + ".join(f"{c:+.4g}*s{i}" for i, c in zip(op.inputs, op.coefs))
                lines.append(f"  COMBINE s{op.out} <- {terms}" + (f"   (+ s{op.out2})" if op.out2 is not None else "")
                             + f"   [step {op.step}]")
        return "\n".join(lines)


# ---- lowering ---------------------------------------------------------------------------------

@dataclass
class _Emit:
    """An op over buffer ids, before slots are assigned."""
    kind: str                        # "eval" | "const" | "combine"
    out: int
    expr: dict | None = None         # combine: Σ c·buffer; eval: {state buffer: 1}
    expr2: dict | None = None        # combine: the optional second output's expression
    out2: int | None = None
    point: int = 0                   # eval: schedule point
    step: int = 0                    # combine: the step it belongs to

    def reads(self) -> list[int]:
        return list(self.expr or ()) + list(self.expr2 or ())


def _add(acc: dict, expr: dict, scale: float) -> None:
    if scale == 0.0:
        return
    for b, c in expr.items():
        acc[b] = acc.get(b, 0.0) + scale * c


def _is_buffer(expr: dict) -> bool:
    return len(expr) == 1 and next(iter(expr.values())) == 1.0


class _PlanLowering:
    """Lower a traced `Program` to buffers: every eval input and the result are materialised; a
    state no model sees (a pseudo-corrected state) stays a symbolic expression over buffers and is
    folded into the combinations that read it, unless a later op still reads it when another
    combination is written — then it rides along as that combination's second output, written
    once and never recomputed."""

    def __init__(self, program: Program, model: DiffusionModel):
        self.program = program
        self.readers = program.readers()
        self.ops: list[_Emit] = []
        self.symbolic: set[int] = set()   # state nodes that may still be unmaterialised expressions
        self.n_buffers = 0
        self.value: dict[int, dict] = {START: {self.new_buffer(): 1.0}}   # node → expression over buffers
        if not program.schedule.afs or model.has_zero_mean:
            self.value[MEAN] = {}   # a zero mean contributes nothing
        else:
            self.value[MEAN] = {self.emit(_Emit("const", self.new_buffer())).out: 1.0}

    def new_buffer(self) -> int:
        self.n_buffers += 1
        return self.n_buffers - 1

    def emit(self, op: _Emit) -> _Emit:
        self.ops.append(op)
        return op

    def inline(self, terms, filtered: bool) -> dict:
        expr: dict = {}
        for node, c in terms:
            _add(expr, self.value[node], c)
        if not filtered:
            return expr
        # terms that cancel to round-off (e.g. a·x_s against the x_s part of w·x̂0_s) cost a read
        # and carry nothing
        big = max((abs(c) for c in expr.values()), default=0.0)
        return {b: c for b, c in expr.items() if abs(c) > 1e-14 * big}

    def pending(self, now: int, exclude: int) -> list[int]:
        """Symbolic states that an op after node `now` still reads, by point. Only the symbolic
        states seen so far are candidates, and one no later op reads leaves them for good (`now`
        only grows), so a long schedule compiles in linear time."""
        nodes = self.program.nodes
        for k in [k for k in self.symbolic if not any(r > now for r in self.readers.get(k, ()))]:
            self.symbolic.discard(k)
        out = [k for k in self.symbolic if k != exclude and not _is_buffer(self.value[k])]
        return sorted(out, key=lambda k: (nodes[k].point, k))

    def materialise(self, expr: dict, step: int, pending: list[int]) -> int:
        for k in pending[1:]:
            b = self.emit(_Emit("combine", self.new_buffer(), self.value[k], step=step)).out
            self.value[k] = {b: 1.0}
        if not pending:
            return self.emit(_Emit("combine", self.new_buffer(), expr, step=step)).out
        k = pending[0]
        op = self.emit(_Emit("combine", self.new_buffer(), expr, self.value[k], self.new_buffer(), step=step))
        self.value[k] = {op.out2: 1.0}
        return op.out

    def lower(self) -> tuple[list[_Emit], int]:
        """(ops over buffers, result buffer)."""
        for k, node in enumerate(self.program.nodes):
            if node.kind == "state":
                self.value[k] = self.inline(node.terms, filtered=True)
                if not _is_buffer(self.value[k]):
                    self.symbolic.add(k)
            elif node.kind == "eval":
                src = self.value[node.source]
                if not _is_buffer(src):
                    src = {self.materialise(src, node.point, self.pending(k, node.source)): 1.0}
                    self.value[node.source] = src
                out = self.emit(_Emit("eval", self.new_buffer(), src, point=node.point)).out
                self.value[k] = {out: 1.0}
        final = self.inline(self.program.output, filtered=False)
        if _is_buffer(final):
            return self.ops, next(iter(final))
        sch = self.program.schedule
        return self.ops, self.materialise(final, len(sch.steps) + int(sch.denoise_to_zero), [])


def compile_plan(schedule: Schedule, model: DiffusionModel) -> Plan:
    """Compile `schedule` for `model` (its noise schedule and parameterisation): the minimal-slot
    lowering of the schedule's program (`usf_fast.program.trace`)."""
    check_schedule_range(schedule, model.noise_schedule)
    ops, result = _PlanLowering(trace(schedule, model), model).lower()
    return _assign_slots(ops, result, schedule)


_CACHE: "OrderedDict[tuple, Plan]" = OrderedDict()
_CACHE_SIZE = 256


def cached_plan(schedule: Schedule, model: DiffusionModel) -> Plan:
    """`compile_plan` memoised on what the plan depends on: the schedule, the noise schedule,
    the parameterisation and whether the data mean is zero (a sampling loop compiles once)."""
    ns = model.noise_schedule
    key = (json.dumps(schedule.to_dict(), sort_keys=True), json.dumps(ns.fingerprint(), sort_keys=True),
           model.prediction, model.has_zero_mean)
    plan = _CACHE.get(key)
    if plan is None:
        plan = compile_plan(schedule, model)
        _CACHE[key] = plan
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return plan


def _assign_slots(raw_ops: list[_Emit], result: int, schedule: Schedule) -> Plan:
    """Greedy linear-scan slot assignment; a combination may overwrite an input it reads last
    (the update is elementwise), so slots are reused as soon as a buffer dies."""
    x_t = 0
    last = {x_t: -1}
    for k, op in enumerate(raw_ops):
        for b in op.reads():
            last[b] = k
    last[result] = len(raw_ops)
    slot_of = {x_t: 0}
    free: list[int] = []
    live = {x_t}
    n_slots = 1

    def release(k):
        for b in list(live):
            if last.get(b, -1) <= k:
                live.discard(b)
                free.append(slot_of[b])

    def alloc(b):
        nonlocal n_slots
        if free:
            s = min(free)
            free.remove(s)
        else:
            s = n_slots
            n_slots += 1
        slot_of[b] = s
        live.add(b)

    release(-1)
    ops: list = []
    for k, op in enumerate(raw_ops):
        if op.kind == "combine":
            ops.append(_combine_op(op, slot_of, release, alloc, k))
            continue
        release(k - 1)
        alloc(op.out)          # the model writes a new tensor: it cannot share the state's slot
        ops.append(Const(slot_of[op.out]) if op.kind == "const" else
                   Eval(slot_of[next(iter(op.expr))], op.point, schedule.timesteps[op.point], slot_of[op.out]))
    return Plan(ops, n_slots, 0, slot_of[result], schedule.nfe, schedule)


def _combine_op(op: _Emit, slot_of: dict, release, alloc, k: int) -> Combine:
    inputs = list(op.expr)
    if op.expr2 is not None:
        inputs += [b for b in op.expr2 if b not in op.expr]
    slots_in = tuple(slot_of[b] for b in inputs)
    release(k)          # inputs read last here may be overwritten in place
    alloc(op.out)
    if op.out2 is not None:
        alloc(op.out2)
    coefs = tuple(float(op.expr.get(b, 0.0)) for b in inputs)
    coefs2 = tuple(float(op.expr2.get(b, 0.0)) for b in inputs) if op.expr2 is not None else None
    return Combine(slots_in, coefs, slot_of[op.out], coefs2, slot_of[op.out2] if op.out2 is not None else None, op.step)
