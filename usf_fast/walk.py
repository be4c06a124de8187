"""The step order of a schedule: one walk, over any values the step weights can combine.

Which states exist, when the model is evaluated, the analytical first step, the correctors and
denoise-to-zero (docs/design.md, "The decision space") are decided here and nowhere else. The
same walk runs on tensors (the reference sampler), on symbols (`usf_fast.program.trace`, whose
linear program the plan and the dense program lower) and on numpy arrays (the Gaussian probe of
the search); with no weights it only counts model evaluations (`Schedule.nfe`).
"""
from __future__ import annotations

from typing import Callable

__all__ = ["walk", "analytic_first_step", "count_evaluations"]


def analytic_first_step(x, mean, alpha, sigma):
    """(ε̂, x̂0) of the analytical first step at t_max: x̂0 = the data mean, ε̂ = (x − α·x̂0)/σ
    (USF's AFS: the first model evaluation is replaced by its data-mean estimate)."""
    return (x - alpha * mean) / sigma, mean


def _keep(i, x):
    return x


def walk(schedule, weights, x, evaluate: Callable, analytic_first: Callable, steps=None,
         callback: Callable | None = None, state: Callable = _keep):
    """Run `schedule`'s steps over values of any kind.

        weights: per step (predictor, corrector or None) objects with `apply(states, eps, x0)`
            (`usf_fast.program.step_weights`); None walks the order only (values stay None).
        x: the start state x_T.
        evaluate(j, x) -> (stand-in for x from now on, ε̂_j, x̂0_j): the model at point j.
        analytic_first(x) -> (ε̂_0, x̂0_0): the analytical first step (AFS schedules).
        steps: an iterable over 1..N (e.g. wrapped in a progress bar); callback(i, t_i, x_i).
        state(i, x) -> x: called on every state the walk keeps without evaluating the model
            there (pseudo-corrected states, the last predicted state); the tracer names them.
    Returns x_0: the final state, or the final x̂0 with denoise_to_zero.
    """
    ts = schedule.timesteps
    n = len(schedule.steps)
    states, eps, x0 = {0: x}, {}, {}
    if schedule.afs:
        eps[0], x0[0] = analytic_first(x)
    else:
        states[0], eps[0], x0[0] = evaluate(0, x)
    for i in steps if steps is not None else range(1, n + 1):
        st = schedule.steps[i - 1]
        pred_w, corr_w = weights[i - 1] if weights is not None else (None, None)
        xi = pred_w.apply(states, eps, x0) if pred_w is not None else None
        if st.corrector != "none":
            states[i], eps[i], x0[i] = evaluate(i, xi)  # the corrector's x_i^p and its output
            xi = corr_w.apply(states, eps, x0) if corr_w is not None else None
            if st.corrector == "implicit" or (i == n and schedule.denoise_to_zero):
                xi, eps[i], x0[i] = evaluate(i, xi)
            else:
                xi = state(i, xi)
        elif i < n or schedule.denoise_to_zero:
            xi, eps[i], x0[i] = evaluate(i, xi)
        else:
            xi = state(i, xi)
        states[i] = xi
        if callback is not None:
            callback(i, ts[i], xi)
    return x0[n] if schedule.denoise_to_zero else states[n]


def count_evaluations(schedule) -> int:
    """Model evaluations of `schedule`: the evaluations its walk makes."""
    return len(evaluation_points(schedule))


def evaluation_points(schedule) -> tuple[int, ...]:
    """The point index of each evaluation the walk makes, in order."""
    calls = []

    def evaluate(j, x):
        calls.append(j)
        return None, None, None

    walk(schedule, None, None, evaluate, lambda x: (None, None))
    return tuple(calls)
