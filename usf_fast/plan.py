"""Plan compiler: Schedule + noise schedule + model parameterisation → straight-line program.

A `Plan` is a list of ops over numbered buffer slots:

    Eval(state, point, out)                      slots[out] ← net output at slots[state], t = timesteps[point]
    Combine(inputs, coefs, out, coefs2, out2)    slots[out] ← Σ_k coefs[k] · slots[inputs[k]]  (and out2)

Every USF quantity is linear in the stored states and *raw* model outputs: ε̂_j and x̂0_j are
d_x·x_j + d_o·out_j (prediction-type conversion and CFG folded in), derivative estimates and
relaxations are weights on those, and a pseudo-corrected state is one more such combination. The
compiler keeps each quantity as a sparse linear expression over materialised buffers and only
materialises what the model must see (the state it is evaluated at) or what later steps read.
A pseudo-corrected state is never computed on its own: it is folded into the next step's
combination, which writes it as a second output only when a later op still reads it.

All coefficients are float64 on the host; executors cast them once per plan.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Union


from .model import DiffusionModel
from .sampler import step_weights, check_schedule_range
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


# ---- compilation ------------------------------------------------------------------------------

def _add(acc: dict, expr: dict, scale: float) -> None:
    if scale == 0.0:
        return
    for b, c in expr.items():
        acc[b] = acc.get(b, 0.0) + scale * c


def compile_plan(schedule: Schedule, model: DiffusionModel) -> Plan:
    """Compile `schedule` for `model` (its noise schedule and parameterisation)."""
    ns = model.noise_schedule
    check_schedule_range(schedule, ns)
    ts = schedule.timesteps
    n = len(schedule.steps)
    weights = step_weights(schedule, ns)

    ops: list = []            # ops over *buffer* ids; slots are assigned at the end
    n_buffers = [0]

    def new_buffer() -> int:
        n_buffers[0] += 1
        return n_buffers[0] - 1

    x_t = new_buffer()
    state: dict[int, dict] = {0: {x_t: 1.0}}   # state each point's successors start from
    eval_state: dict[int, int] = {}            # buffer the model saw at point j
    out_buf: dict[int, int | None] = {}        # raw output buffer of point j
    conv: dict[int, tuple] = {}                # (e_x, e_o, d_x, d_o) of point j

    def needed_after(p: int, step: int, phase: str) -> bool:
        """Does any op after this one read state[p]? (phase: the op is step's "pred" or "corr"
        materialisation, or the "final" output.)"""
        if phase == "final":
            return False
        if p == n:
            return True
        later = any(st.start == p for st in schedule.steps[step:])
        own = schedule.steps[step - 1]
        return later or (phase == "pred" and own.start == p and own.corrector != "none")

    def model_output(j: int, prediction: str) -> dict:
        e_x, e_o, d_x, d_o = conv[j]
        cx, co = (e_x, e_o) if prediction == "noise" else (d_x, d_o)
        expr: dict = {}
        if cx != 0.0:
            expr[eval_state[j]] = cx
        if co != 0.0 and out_buf[j] is not None:
            expr[out_buf[j]] = expr.get(out_buf[j], 0.0) + co
        return expr

    def linear(sw) -> dict:
        expr: dict = {}
        _add(expr, state[sw.start], sw.a)
        for j, w in zip(sw.points, sw.w):
            _add(expr, model_output(j, sw.prediction), w)
        # terms that cancel to round-off (e.g. a·x_s against the x_s part of w·x̂0_s) cost a read
        # and carry nothing
        big = max((abs(c) for c in expr.values()), default=0.0)
        return {b: c for b, c in expr.items() if abs(c) > 1e-14 * big}

    def materialise(expr: dict, step: int, phase: str) -> int:
        """Buffer holding `expr`. A symbolic (pseudo-corrected) state that later ops still read
        rides along as the combination's second output, so it is written once and never
        recomputed; in the rare case of several, the others get their own combination."""
        if _is_buffer(expr) and phase != "final":
            return next(iter(expr))
        pending = [p for p, e in sorted(state.items()) if not _is_buffer(e) and needed_after(p, step, phase)]
        for p in pending[1:]:
            b = new_buffer()
            ops.append(("combine", state[p], b, None, None, step))
            state[p] = {b: 1.0}
        out = new_buffer()
        if pending:
            p = pending[0]
            b2 = new_buffer()
            ops.append(("combine", expr, out, state[p], b2, step))
            state[p] = {b2: 1.0}
        else:
            ops.append(("combine", expr, out, None, None, step))
        return out

    def evaluate(j: int, buf: int) -> None:
        eval_state[j] = buf
        out_buf[j] = new_buffer()
        conv[j] = model.conversion(ts[j])
        ops.append(("eval", buf, j, out_buf[j]))

    # point 0
    if schedule.afs:
        a0, s0 = float(ns.marginal_alpha(ts[0])), float(ns.marginal_std(ts[0]))
        eval_state[0] = x_t
        if model.has_zero_mean:
            out_buf[0] = None
        else:
            out_buf[0] = new_buffer()
            ops.append(("const", out_buf[0]))
        conv[0] = (1.0 / s0, -a0 / s0, 0.0, 1.0)  # the "output" is x̂0 = data mean
    else:
        evaluate(0, x_t)

    for i in range(1, n + 1):
        st = schedule.steps[i - 1]
        pred_w, corr_w = weights[i - 1]
        pred = linear(pred_w)
        if st.corrector != "none":
            evaluate(i, materialise(pred, i, "pred"))
            state[i] = linear(corr_w)
            if st.corrector == "implicit" or (i == n and schedule.denoise_to_zero):
                buf = materialise(state[i], i, "corr")
                state[i] = {buf: 1.0}
                evaluate(i, buf)
        elif i < n or schedule.denoise_to_zero:
            buf = materialise(pred, i, "pred")
            state[i] = {buf: 1.0}
            evaluate(i, buf)
        else:
            state[i] = pred

    final = model_output(n, "data") if schedule.denoise_to_zero else state[n]
    result = next(iter(final)) if _is_buffer(final) else materialise(final, n + int(schedule.denoise_to_zero), "final")

    return _assign_slots(ops, n_buffers[0], x_t, result, schedule)


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


def _is_buffer(expr: dict) -> bool:
    return len(expr) == 1 and next(iter(expr.values())) == 1.0


def _assign_slots(raw_ops, n_buffers, x_t, result, schedule) -> Plan:
    """Greedy linear-scan slot assignment; a combination may overwrite an input it reads last
    (the update is elementwise), so slots are reused as soon as a buffer dies."""
    def reads(op):
        if op[0] == "eval":
            return [op[1]]
        if op[0] == "combine":
            r = list(op[1])
            if op[3] is not None:
                r += list(op[3])
            return r
        return []

    last = {x_t: -1}
    for k, op in enumerate(raw_ops):
        for b in reads(op):
            last[b] = k
    last[result] = len(raw_ops)

    slot_of = {x_t: 0}
    free: list[int] = []
    n_slots = 1
    live = {x_t}

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
        if op[0] == "eval":
            _, st, point, out = op
            release(k - 1)
            alloc(out)          # the model writes a new tensor: it cannot share the state's slot
            ops.append(Eval(slot_of[st], point, schedule.timesteps[point], slot_of[out]))
        elif op[0] == "const":
            release(k - 1)
            alloc(op[1])
            ops.append(Const(slot_of[op[1]]))
        else:
            _, expr, out, expr2, out2, step = op
            inputs = list(expr)
            if expr2 is not None:
                inputs += [b for b in expr2 if b not in expr]
            slots_in = tuple(slot_of[b] for b in inputs)
            release(k)          # inputs read last here may be overwritten in place
            alloc(out)
            if out2 is not None:
                alloc(out2)
            coefs = tuple(float(expr.get(b, 0.0)) for b in inputs)
            coefs2 = tuple(float(expr2.get(b, 0.0)) for b in inputs) if expr2 is not None else None
            ops.append(Combine(slots_in, coefs, slot_of[out], coefs2, slot_of[out2] if out2 is not None else None, step))
    return Plan(ops, n_slots, 0, slot_of[result], schedule.nfe, schedule)
