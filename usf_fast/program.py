"""The solver program: a schedule traced to a linear program of model evaluations and linear
combinations, the one thing both lowerings (`usf_fast.plan`, `usf_fast.dense`) compile.

Every USF update is linear in the stored states and the raw model outputs (docs/design.md, "The
math"): ε̂_j and x̂0_j are d_x·x_j + d_o·out_j for the model's parameterisation, derivative
estimates and relaxations are weights on those (`step_weights`), and a pseudo-corrected state is
one more such combination. `trace` runs the schedule's walk (`usf_fast.walk`) over symbols and
records the program in SSA form:

    node 0   start   x_T (the prior-scaled noise)
    node 1   mean    the data mean (used by the analytical first step)
    state    Σ_k c_k · node_k        a state the walk keeps (predicted or corrected), point i
    eval     net(node, t_j)          a model evaluation, point j

The NFE of a schedule is the number of eval nodes. All coefficients are float64 on the host.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .coefficients import update_weights
from .noise_schedules import NoiseSchedule
from .walk import analytic_first_step, walk

__all__ = ["MIN_GAP_RATIO", "check_conditioning", "StepWeights", "step_weights", "with_formula_weights", "Expr", "Node", "Program", "trace", "START", "MEAN"]

START, MEAN = 0, 1


@dataclass(frozen=True)
class StepWeights:
    """x_target = a·x[start] + Σ_j w[j]·M[j]; M is ε̂ (prediction "noise") or x̂0 ("data")."""

    prediction: str
    start: int
    a: float
    points: tuple[int, ...]   # start first, then the active points
    w: tuple[float, ...]

    def apply(self, states: dict, eps: dict, x0: dict):
        """a·states[start] + Σ w_j·M_j over whatever the dicts hold (tensors, arrays, `Expr`s)."""
        m = eps if self.prediction == "noise" else x0
        out = self.a * states[self.start]
        for j, w in zip(self.points, self.w):
            out = out + w * m[j]
        return out


def _weights(tables, target: int, step, corrector: bool) -> StepWeights:
    lam, alpha, sigma = tables
    s = step.start
    pts = tuple(step.points) + ((target,) if corrector else ())
    given = step.corrector_weights if corrector else step.weights
    if given is not None:   # the step's own (learned) weights, on x/α (`Step`): back to x
        return StepWeights(step.prediction, s, given[0] * alpha[target] / alpha[s], (s,) + pts,
                           tuple(w * alpha[target] for w in given[1:]))
    order = step.order + (1 if corrector else 0)
    relax, coef = ((step.corrector_relax, step.corrector_relax_coef) if corrector
                   else (step.relax, step.relax_coef))
    a, w_s, w_p = _update_weights(lam[s], lam[target], tuple(lam[j] for j in pts), alpha[s], sigma[s], alpha[target],
                                  sigma[target], step.prediction, order, relax, coef,
                                  1.0 if corrector else step.d2_scale)
    return StepWeights(step.prediction, s, a, (s,) + pts, (w_s,) + w_p)


@functools.lru_cache(maxsize=1 << 14)
def _update_weights(lam_s, lam_t, lam_points, alpha_s, sigma_s, alpha_t, sigma_t, prediction, order, relax, coef,
                    d2_scale) -> tuple:
    """`update_weights` on plain floats, remembered: a search's schedules share most of their steps
    (a mutation moves one time or changes one step), so their weights are computed once."""
    a, w_s, w_p = update_weights(lam_s, lam_t, lam_points, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t,
                                 sigma_t=sigma_t, prediction=prediction, order=order, relax=relax, relax_coef=coef,
                                 d2_scale=d2_scale)
    return a, w_s, tuple(float(v) for v in w_p)


#: Derivative estimates divide differences of model outputs by λ-gaps between the points a step
#: combines. Rounding errors of relative size u in those outputs reach the result amplified by about
#: h/g (h: the step's λ-size, g: the smallest gap between its points). Float32 outputs carry
#: u ≈ 6e-8, so g >= 1e-4·h keeps that part below ~6e-4 of the outputs, under the method error of a
#: few-step solver; points closer than this are refused (in float64 the same bound leaves the
#: rounding part below 1e-11). docs/design.md, "Errors".
MIN_GAP_RATIO = 1e-4


def check_conditioning(schedule, noise_schedule: NoiseSchedule, lam=None) -> None:
    """ValueError naming the step whose derivative estimate uses points closer in λ than
    `MIN_GAP_RATIO` of its size (nearly coincident times): its coefficients would blow up rounding
    errors instead of sampling."""
    if lam is None:
        lam = np.asarray(noise_schedule.marginal_lambda(np.asarray(schedule.timesteps, dtype=np.float64)))
    for i, st in enumerate(schedule.steps, 1):
        own = st.weights is not None and (st.corrector == "none" or st.corrector_weights is not None)
        if (st.order == 1 and st.corrector == "none") or own:
            continue   # no derivative estimate (or the step's own weights: no formula to condition)
        # the points the derivative estimate divides by: start and active points, and the target
        # when a corrector uses it as one more active point (plain floats: the search checks
        # thousands of schedules, numpy's per-call cost would dominate)
        pts = sorted({st.start, *st.points} | ({i} if st.corrector != "none" else set()))
        vals = sorted(float(lam[j]) for j in pts)
        h = abs(float(lam[i]) - float(lam[st.start]))
        gap = min(b - a for a, b in zip(vals, vals[1:])) if len(vals) > 1 else h
        if any(math.isnan(v) for v in vals):   # (sorted() leaves a NaN anywhere; numpy's sort put it last)
            gap = math.nan
        if not gap >= MIN_GAP_RATIO * h:
            raise ValueError(f"steps[{i - 1}]: its points {pts} (times {[schedule.timesteps[j] for j in pts]}) are "
                             f"nearly coincident: a λ-gap of {gap:.3g} against a step of {h:.3g} (need >= "
                             f"{MIN_GAP_RATIO:g} of it) makes the derivative estimate amplify rounding errors; "
                             "move the times apart or lower this step's order")


def step_weights(schedule, noise_schedule: NoiseSchedule) -> list:
    """Per step: (predictor weights, corrector weights or None), host float64. The corrector is
    UniC's: the same start, order n + 1, the step's own target as one more active point."""
    t = np.asarray(schedule.timesteps, dtype=np.float64)
    tables = tuple([float(v) for v in f(t)] for f in (noise_schedule.marginal_lambda, noise_schedule.marginal_alpha,
                                                       noise_schedule.marginal_std))
    check_conditioning(schedule, noise_schedule, tables[0])
    out = []
    for i, st in enumerate(schedule.steps, 1):
        pred = _weights(tables, i, st, corrector=False)
        corr = _weights(tables, i, st, corrector=True) if st.corrector != "none" else None
        out.append((pred, corr))
    return out


def with_formula_weights(schedule, noise_schedule: NoiseSchedule):
    """`schedule` with every step's weights written out (`Step.weights`, `corrector_weights`): the
    USF formula's, on x/α. It samples as `schedule` does (to rounding); the start of a solve."""
    t = np.asarray(schedule.timesteps, dtype=np.float64)
    alpha = [float(v) for v in noise_schedule.marginal_alpha(t)]
    steps = []
    for i, (st, (pred, corr)) in enumerate(zip(schedule.steps, step_weights(schedule, noise_schedule)), 1):
        steps.append(st.replace(weights=normalised(pred, alpha[st.start], alpha[i]),
                                corrector_weights=None if corr is None else normalised(corr, alpha[st.start], alpha[i])))
    return schedule.replace(steps=steps)


def normalised(w: StepWeights, alpha_s: float, alpha_t: float) -> tuple[float, ...]:
    """A step's weights (a, w...) on x as `Step.weights` stores them, on x/α: x_t/α_t =
    (a·α_s/α_t)·x_s/α_s + Σ (w_j/α_t)·M_j. On x/α a schedule means the same on every noise
    schedule with the same λ(t) (a VP model seen through k-diffusion's σ = e^{−λ} runs it as is)."""
    return (w.a * alpha_s / alpha_t,) + tuple(v / alpha_t for v in w.w)


class Expr(dict):
    """A linear expression over program nodes: {node: coefficient}, in the order terms arrive
    (the lowerings sum in that order, so it fixes the floating-point result)."""

    def __rmul__(self, c: float) -> "Expr":
        if c == 0.0:   # a zero weight adds no term (and no position in the order)
            return Expr()
        return Expr({k: c * v for k, v in self.items()})

    __mul__ = __rmul__

    def __add__(self, other: "Expr") -> "Expr":
        out = Expr(self)
        for k, v in other.items():
            out[k] = out.get(k, 0.0) + v
        return out

    def __sub__(self, other: "Expr") -> "Expr":
        return self + Expr({k: -v for k, v in other.items()})

    def __truediv__(self, c: float) -> "Expr":
        return Expr({k: v / c for k, v in self.items()})

    def node(self) -> int | None:
        """The node this expression is, if it is one node with coefficient 1."""
        if len(self) == 1:
            (k, v), = self.items()
            return k if v == 1.0 else None
        return None

    @staticmethod
    def of(*terms) -> "Expr":
        """Σ c·node over the terms with c ≠ 0."""
        return Expr({k: c for k, c in terms if c != 0.0})


@dataclass(frozen=True)
class Node:
    kind: str                                   # "start" | "mean" | "state" | "eval"
    point: int                                  # schedule point the value belongs to
    terms: tuple[tuple[int, float], ...] = ()   # state: Σ c·node over earlier nodes
    source: int = -1                            # eval: the node the model sees
    t: float = float("nan")                     # eval: host time of the evaluation


@dataclass(frozen=True)
class Program:
    """The straight-line linear program of one schedule for one model parameterisation."""

    nodes: tuple[Node, ...]
    output: tuple[tuple[int, float], ...]        # the result, Σ c·node
    schedule: object                             # the `Schedule` it was traced from

    @property
    def nfe(self) -> int:
        return sum(n.kind == "eval" for n in self.nodes)

    def readers(self) -> dict[int, list[int]]:
        """node → the nodes that read it (len(nodes) stands for the output)."""
        out: dict[int, list[int]] = {}
        for k, n in enumerate(self.nodes):
            for r in ([src for src, _ in n.terms] + ([n.source] if n.kind == "eval" else [])):
                out.setdefault(r, []).append(k)
        for r, _ in self.output:
            out.setdefault(r, []).append(len(self.nodes))
        return out


def trace(schedule, model) -> Program:
    """Run `schedule`'s walk over symbols for `model` (its noise schedule and parameterisation:
    `model.conversion(t)` gives ε̂ and x̂0 as e_x·x + e_o·out, d_x·x + d_o·out)."""
    ns = model.noise_schedule
    ts = schedule.timesteps
    nodes = [Node("start", 0), Node("mean", 0)]

    def add(node: Node) -> Expr:
        nodes.append(node)
        return Expr({len(nodes) - 1: 1.0})

    def keep(i: int, x: Expr) -> Expr:
        return x if x.node() is not None else add(Node("state", i, tuple(x.items())))

    def evaluate(j: int, x: Expr):
        x = keep(j, x)
        src = x.node()
        out = add(Node("eval", j, source=src, t=ts[j])).node()
        e_x, e_o, d_x, d_o = model.conversion(ts[j])
        return x, Expr.of((src, e_x), (out, e_o)), Expr.of((src, d_x), (out, d_o))

    a0, s0 = float(ns.marginal_alpha(ts[0])), float(ns.marginal_std(ts[0]))
    final = walk(schedule, step_weights(schedule, ns), Expr({START: 1.0}), evaluate,
                 lambda x: analytic_first_step(x, Expr({MEAN: 1.0}), a0, s0), state=keep)
    return Program(tuple(nodes), tuple(final.items()), schedule)
