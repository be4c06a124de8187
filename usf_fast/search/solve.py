"""Learned step coefficients: fit each step's weights to a teacher along the student's own
trajectory (the idea of S4S, "Solving for a Diffusion Model Solver", ICML 2025, and of GAS and
DyWeight; docs/search.md, "The solve stage").

A schedule's step i is linear in what it combines (docs/design.md, "The math"):
x_i = a·x_start + Σ_j w_j·M_j. Given a high-accuracy teacher's states x*_i at the schedule's times
on training noise, the weights of step 1 are fitted by least squares (x_i ≈ x*_i over all samples
and elements), the step is run with them, the model evaluated where the student actually is, and
step 2 fitted on *those* inputs, and so on: the fit corrects the errors the student really makes,
no gradient through the network is needed (any model), and each fit is a k×k system (k ≤ 6).
Ridge regularisation pulls the weights towards the USF formula's (their initialisation), relative
to each input's size, so a fit on few samples cannot wander far.

    teacher = teacher_states(model, schedule, noise)          # (N, B, ...) float64, the reference's states
    learned = solve_weights(model, schedule, noise, teacher)   # the schedule with Step.weights
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from ..checks import initial_state
from ..metrics import reference_spacing
from ..model import DiffusionModel
from ..presets import DivergenceWarning, unipc
from ..program import StepWeights, normalised, step_weights
from ..reference import reference_sample
from ..schedule import Schedule
from ..walk import walk
from .distributed import past

__all__ = ["teacher_states", "DenseTeacher", "solve_weights", "solve_times", "tune_times", "fit_step", "DEFAULT_RIDGE",
           "TimeUp", "other_prediction", "twin"]


class TimeUp(Exception):
    """`tune_times` reached its `deadline` (a search's max_minutes) before its trials were done."""

#: ridge strength relative to each input's mean square (docs/search.md, "The solve stage")
DEFAULT_RIDGE = 1e-3
#: Nelder–Mead's first move in `tune_times`: one gap between the times scaled by e^0.3 ≈ 1.35
TIME_STEP = 0.3


def teacher_grid(ns, schedule: Schedule, steps: int) -> tuple[list[float], list[int]]:
    """The reference's times (`reference_spacing`, `steps` steps) with the schedule's times merged
    in, a reference time closer than 0.3 of its own step (in λ) to a schedule time dropped; and the
    index in it of each schedule point."""
    ref = unipc(ns, steps, spacing=reference_spacing(ns), t_start=schedule.timesteps[0],
                t_end=schedule.timesteps[-1]).timesteps
    lam_ref = np.asarray(ns.marginal_lambda(np.asarray(ref, dtype=np.float64)))
    lam_s = np.asarray(ns.marginal_lambda(np.asarray(schedule.timesteps, dtype=np.float64)))
    gaps = np.abs(np.diff(lam_ref))
    local = np.minimum(gaps[:-1], gaps[1:])   # each interior reference time's own step (λ steps vary)
    keep = [t for t, lam, h in zip(ref[1:-1], lam_ref[1:-1], local) if np.min(np.abs(lam_s - lam)) >= 0.3 * h]
    grid = sorted(set(keep) | set(schedule.timesteps), reverse=True)
    where = {t: i for i, t in enumerate(grid)}
    return grid, [where[t] for t in schedule.timesteps]


def teacher_states(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor, steps: int = 100,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The teacher's states at the schedule's points 1..N, (N, B, ...) in `dtype`: UniPC-3 on the
    reference spacing with `steps` steps and the schedule's times merged in (about `steps` network
    rows per sample), from `noise` (x_T = prior std · noise, as `usf_fast.sample`)."""
    grid, idx = teacher_grid(model.noise_schedule, schedule, steps)
    ref = unipc(model.noise_schedule, len(grid) - 1, timesteps=grid, lower_order_final=False)
    want = {k: p for p, k in enumerate(idx) if p}
    out = [None] * (len(schedule.timesteps) - 1)

    def keep(i, t, x):
        if i in want:
            out[want[i] - 1] = x.clone()
    with torch.no_grad():
        reference_sample(model, ref, noise.to(dtype), callback=keep, check_finite=False)
    return torch.stack(out)


def fit_step(inputs: list[torch.Tensor], target: torch.Tensor, prior: np.ndarray, ridge: float,
             total: Callable | None = None) -> np.ndarray:
    """Weights c minimising ‖Σ_k c_k·inputs[k] − target‖² + ridge·Σ_k g_kk·(c_k − prior_k)² (g_kk:
    the squared norm of input k, so the pull is the same whatever the inputs' scale), float64. The
    inputs may be on any device; the k×k normal equations are solved on the host. `total`: the sum
    of a tensor over the processes that share the noise (`distributed.process_sum`): each holds its
    part of the samples, the normal equations are summed, every process gets the same weights."""
    cols = torch.stack([v.reshape(-1).double() for v in inputs], 1)
    gb = torch.cat([cols.T @ cols, (cols.T @ target.reshape(-1).double())[:, None]], 1)
    gb = (gb if total is None else total(gb)).cpu().numpy()
    g, b = gb[:, :-1], gb[:, -1]
    prior = np.asarray(prior, dtype=np.float64)
    out = prior.copy()
    live = np.diag(g) > 0   # an input that is zero (AFS's x̂0 = a zero data mean) keeps its prior weight
    if not live.any():
        return out
    b = b - g[:, ~live] @ prior[~live]
    g, b, p = g[np.ix_(live, live)], b[live], prior[live]
    d = np.diag(np.diag(g)) * ridge
    try:
        out[live] = np.linalg.solve(g + d, b + d @ p)
    except np.linalg.LinAlgError:   # inputs that are exactly dependent and ridge 0: keep the prior
        pass
    return out


def other_prediction(schedule: Schedule) -> Schedule:
    """`schedule` with every step's prediction switched (data <-> noise), its weights the USF
    formula's for that prediction. A fitted step combines x_s with the points' x̂0 — or with their
    ε̂; since x̂0_j = (x_j − σ_j·ε̂_j)/α_j, the two fits span different inputs (each x_j), and which one
    fits a model better is not told by the formula's error: on the digits UNet UniPC-3 fitted with
    noise prediction ends ~12% below its data-prediction fit, on the Gaussian-mixture images the
    other way round (docs/search.md, "The solve stage"). Only formula steps: a step with learned
    weights is refused."""
    if any(st.weights is not None or st.corrector_weights is not None for st in schedule.steps):
        raise ValueError("other_prediction: the schedule has learned weights (Step.weights), which belong to its "
                         "own prediction; switch the prediction of a formula schedule")
    flip = {"data": "noise", "noise": "data"}
    meta = dict(schedule.meta, other_prediction=True)
    opts = meta.get("options")
    if isinstance(opts, dict) and "prediction" in opts:   # the preset's own option, switched with it
        meta["options"] = dict(opts, prediction=flip.get(opts["prediction"], opts["prediction"]))
    elif "preset" in meta:   # a preset with one prediction (DPM-Solver++): its twin is no longer that preset
        meta = {k: v for k, v in meta.items() if k not in ("preset", "options")}
    return schedule.replace(steps=[st.replace(prediction=flip[st.prediction]) for st in schedule.steps],
                            name=f"{schedule.name or 'schedule'} (other prediction)", meta=meta)


def twin(schedule: Schedule, noise_schedule) -> Schedule:
    """What the solve stage fits beside a preset (`SearchConfig.solve_other_prediction`): UniPC-3
    bh2 — order 3 and the corrector on every step, the structure with the most weights to fit —
    with the other prediction (`other_prediction`: which prediction fits a model better is not told
    by the formula's error), at the preset's times, with its AFS. On the digits UNet the twin of
    DPM-Solver++ 3 as a preset, DPM-Solver 3, solves to 0.070 where this one solves to 0.060
    (docs/search.md, "The solve stage")."""
    with warnings.catch_warnings():   # noise prediction on a flow model: the search's check decides
        warnings.simplefilter("ignore", DivergenceWarning)
        rich = unipc(noise_schedule, schedule.nfe, order=3, variant="bh2", prediction=schedule.steps[-1].prediction,
                     timesteps=list(schedule.timesteps), afs=schedule.afs, denoise_to_zero=schedule.denoise_to_zero)
    out = other_prediction(rich)
    # named for what it is; the preset's spacing (unipc's meta names its own default for given times)
    pred = out.steps[-1].prediction
    opts = dict(out.meta.get("options") or {}, spacing=(schedule.meta.get("options") or {}).get("spacing"))
    return out.replace(name=f"unipc(order=3, variant=bh2, prediction={pred}) at the times of {schedule.name or 'a schedule'}",
                       meta=dict(out.meta, options=opts))


def _rms(diff: torch.Tensor, total: Callable | None) -> float:
    """RMS of `diff`, over every process's part of the samples when `total` sums over them."""
    if total is None:
        return float(diff.pow(2).mean().sqrt())
    both = total(torch.stack([diff.double().pow(2).sum(), torch.tensor(float(diff.numel()), dtype=torch.float64,
                                                                         device=diff.device)]))
    return float((both[0] / both[1]).sqrt())


class _Fitted:
    """A step's weights, fitted when the walk applies them (it hands over the student's states and
    model outputs so far); what `walk` calls `apply` on."""

    def __init__(self, formula: StepWeights, target: torch.Tensor, ridge: float, total: Callable | None = None):
        self.formula, self.target, self.ridge, self.total = formula, target, ridge, total
        self.fitted: StepWeights | None = None

    def apply(self, states: dict, eps: dict, x0: dict):
        f = self.formula
        m = eps if f.prediction == "noise" else x0
        inputs = [states[f.start]] + [m[j] for j in f.points]
        c = fit_step(inputs, self.target, np.array((f.a,) + f.w), self.ridge, self.total)
        self.fitted = StepWeights(f.prediction, f.start, float(c[0]), f.points, tuple(float(v) for v in c[1:]))
        return self.fitted.apply(states, eps, x0)


def solve_weights(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor, teacher, *,
                  ridge: float = DEFAULT_RIDGE, dtype: torch.dtype = torch.float64,
                  total: Callable | None = None) -> Schedule:
    """`schedule` with every step's weights (and corrector weights) fitted to `teacher`
    (`teacher_states` on the same noise) along the student's own trajectory; one student pass
    (the schedule's NFE network rows per sample). A step's corrector is fitted to the same
    teacher state as its predictor. The result carries `Step.weights` (on x/α). total: under
    torchrun, the sum over the processes, each holding its part of the noise (`fit_step`)."""
    return _solve(model, schedule, noise, teacher, ridge, dtype, total)[0]


def _solve(model, schedule, noise, teacher, ridge, dtype, total=None):
    """(solved schedule, RMS of its final state to the teacher's on the training noise)."""
    if isinstance(teacher, DenseTeacher):
        teacher = teacher.states(schedule.timesteps[1:])
    if teacher.shape[0] != schedule.num_steps or teacher.shape[1:] != noise.shape:
        raise ValueError(f"teacher: shape {tuple(teacher.shape)}, need ({schedule.num_steps}, *noise.shape) = "
                         f"({schedule.num_steps}, {', '.join(map(str, noise.shape))})")
    ns = model.noise_schedule
    ts = schedule.timesteps
    # the student runs in `dtype`; the targets keep the teacher's precision (the fit is in float64)
    fits = [(_Fitted(p, teacher[i], ridge, total), None if c is None else _Fitted(c, teacher[i], ridge, total))
            for i, (p, c) in enumerate(step_weights(schedule, ns))]
    x = initial_state(ns, schedule, noise.to(dtype))

    def evaluate(j, xj):
        e, o = model.predict(xj, ts[j])
        return xj, e, o
    with torch.no_grad():
        last = {}
        walk(schedule, fits, x, evaluate, lambda x_: model.analytic_first(x_, ts[0]),
             callback=lambda i, t, xi: last.update(x=xi))
        train_rms = _rms(last["x"].double() - teacher[-1].double(), total)
    alpha = [float(v) for v in ns.marginal_alpha(np.asarray(ts, dtype=np.float64))]
    steps = []
    for i, (st, (p, c)) in enumerate(zip(schedule.steps, fits), 1):
        steps.append(st.replace(weights=normalised(p.fitted, alpha[st.start], alpha[i]),
                                corrector_weights=None if c is None else normalised(c.fitted, alpha[st.start], alpha[i])))
    name = f"{schedule.name or 'schedule'} (solved)"
    return schedule.replace(steps=steps, name=name, meta={**schedule.meta, "solved": {"ridge": ridge}}), train_rms


def solve_times(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor, teacher: "DenseTeacher", *,
                evaluations: int = 30, ridge: float = DEFAULT_RIDGE, weights: bool = True,
                dtype: torch.dtype = torch.float64, deadline: float | None = None,
                total: Callable | None = None) -> Schedule:
    """`solve_weights` with the schedule's interior times tuned too: Nelder–Mead over the log-ratios
    of the gaps between consecutive λ-fractions to the last gap (the ends fixed; every point is an
    ordered time set, and a move scales a gap by the same factor whatever its size — on a flow
    schedule the interior fractions lie within a few hundredths of one another), each trial time
    set solved along its own trajectory and scored by its final state's RMS distance to the
    teacher's on the training noise; `evaluations` trials (the schedule's NFE network rows per
    sample each). Returns the best solved schedule.
    weights=False tunes the times of the formula's weights alone (an LD3-style solver: the
    schedule comes back without `Step.weights`). deadline: a `time.perf_counter()` value after
    which no further trial starts (`TimeUp` is raised). total: under torchrun, the sum over the
    processes, each holding its part of the noise (and its teacher): the fits and the scores are
    the whole noise's, so every process runs the same trials; the deadline stops them all when one
    process has reached it."""
    return tune_times(model, schedule, noise, teacher, evaluations=evaluations, ridge=ridge, weights=weights,
                      dtype=dtype, deadline=deadline, total=total)[0]


def tune_times(model: DiffusionModel, schedule: Schedule, noise: torch.Tensor, teacher: "DenseTeacher", *,
               evaluations: int = 30, ridge: float = DEFAULT_RIDGE, weights: bool = True,
               dtype: torch.dtype = torch.float64, deadline: float | None = None,
               total: Callable | None = None) -> tuple[Schedule, float]:
    """`solve_times`, and the best trial's training error (RMS of the final state to the teacher's)."""
    from scipy.optimize import minimize
    ns = model.noise_schedule
    ts = np.asarray(schedule.timesteps, dtype=np.float64)
    lam = np.asarray(ns.marginal_lambda(ts), dtype=np.float64)
    z0 = _gap_coordinates(lam)
    best = [np.inf, None]

    def run(s: Schedule) -> tuple[Schedule, float]:
        if weights:
            return _solve(model, s, noise, teacher, ridge, dtype, total)
        final = reference_sample(model, s, noise.to(dtype), check_finite=False)
        target = teacher.states([s.timesteps[-1]])[0] if isinstance(teacher, DenseTeacher) else teacher[-1]
        return s, _rms(final.double() - target.double(), total)

    trials = [0]

    def objective(z):
        if trials[0] >= evaluations:   # the budget is spent: Nelder–Mead may ask for more, none is run
            return 1e9
        if deadline is not None and past(deadline, total):
            raise TimeUp(f"{trials[0]} of {evaluations} trials run")
        t = _times_at(np.asarray(z, dtype=np.float64), lam, ts, ns)
        if t is None:
            return 1e9
        trials[0] += 1
        try:
            solved, err = run(schedule.replace(timesteps=t.tolist()))
        except ValueError:   # e.g. nearly coincident points
            return 1e9
        if not np.isfinite(err):
            return 1e9
        if err < best[0]:
            best[:] = [err, solved]
        return err
    if len(z0) and evaluations > 1:
        simplex = [z0] + [z0 + TIME_STEP * np.eye(len(z0))[k] for k in range(len(z0))]
        with torch.no_grad():
            minimize(objective, z0, method="Nelder-Mead",
                     options={"maxfev": evaluations, "initial_simplex": np.asarray(simplex), "xatol": 1e-4,
                              "fatol": 0.0})
    if best[1] is None:   # no trial ran (or every one failed): the schedule's own times
        return run(schedule)
    return best[1], best[0]


def _gap_coordinates(lam: np.ndarray) -> np.ndarray:
    """`tune_times`' coordinates of a time set with log-SNRs `lam`: the log-ratio of each gap between
    consecutive λ-fractions to the last gap (a gap of ~0, coincident times, stays below `_times_at`'s
    smallest gap: such a schedule keeps its times)."""
    gaps = np.maximum(np.diff((lam - lam[0]) / (lam[-1] - lam[0])), 1e-12)
    return np.log(gaps[:-1] / gaps[-1])


def _times_at(z: np.ndarray, lam: np.ndarray, ts: np.ndarray, ns) -> np.ndarray | None:
    """The times of coordinates `z` (`_gap_coordinates`) between the ends of `ts`, or None where
    two would (nearly) coincide or fall out of order."""
    logs = np.concatenate([z, [0.0]])
    gaps = np.exp(logs - logs.max())
    gaps /= gaps.sum()
    if not np.all(np.isfinite(gaps)) or gaps.min() <= 1e-4:
        return None
    u = np.concatenate([[0.0], np.cumsum(gaps)[:-1], [1.0]])
    t = np.asarray(ns.inverse_lambda(lam[0] + u * (lam[-1] - lam[0])), dtype=np.float64)
    t[0], t[-1] = ts[0], ts[-1]
    return t if np.all(np.diff(t) < 0) and np.all(np.isfinite(t)) else None


class DenseTeacher:
    """A teacher trajectory that gives its state at any time: a UniPC-3 solve on `steps` steps of
    the reference spacing, its states and data predictions kept at every node, and between nodes
    the cubic Hermite interpolant of y = x/σ in λ, whose slope along the ODE is dy/dλ = e^λ·x̂0
    (DPM-Solver++'s form of the probability-flow ODE): fourth order in the node spacing. One solve
    (`steps` network rows per sample) serves every candidate time set of a solve."""

    def __init__(self, model: DiffusionModel, noise: torch.Tensor, t_start: float, t_end: float, steps: int = 100,
                 dtype: torch.dtype = torch.float64):
        ns = self.ns = model.noise_schedule
        ref = unipc(ns, steps, spacing=reference_spacing(ns), t_start=t_start, t_end=t_end, lower_order_final=False)
        ts = np.asarray(ref.timesteps, dtype=np.float64)
        self.lam = np.asarray(ns.marginal_lambda(ts), dtype=np.float64)
        self.sigma = np.asarray(ns.marginal_std(ts), dtype=np.float64)
        n = len(ts)
        self.y, self.f = [None] * n, [None] * n
        x = initial_state(ns, ref, noise.to(dtype))

        def evaluate(j, xj):
            e, o = model.predict(xj, ref.timesteps[j])
            self.f[j] = o * float(np.exp(self.lam[j]))
            return xj, e, o

        def keep(i, t, xi):
            self.y[i] = xi / float(self.sigma[i])
        self.y[0] = x / float(self.sigma[0])
        with torch.no_grad():
            final = walk(ref, step_weights(ref, ns), x, evaluate, lambda x_: model.analytic_first(x_, ts[0]),
                         callback=keep)
            # the last node's slope: the model at the final state (one more row per sample)
            _, o = model.predict(final, ref.timesteps[-1])
        self.f[-1] = o * float(np.exp(self.lam[-1]))

    def states(self, times) -> torch.Tensor:
        """The teacher's states at `times` (host floats within the solve's range), (len, B, ...)."""
        lam = np.asarray(self.ns.marginal_lambda(np.asarray(times, dtype=np.float64)), dtype=np.float64)
        sig = np.asarray(self.ns.marginal_std(np.asarray(times, dtype=np.float64)), dtype=np.float64)
        out = []
        for lv, sv in zip(lam, sig):
            k = int(np.clip(np.searchsorted(self.lam, lv, side="right") - 1, 0, len(self.lam) - 2))
            h = self.lam[k + 1] - self.lam[k]
            s = float((lv - self.lam[k]) / h)
            h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
            y = h00 * self.y[k] + (h10 * h) * self.f[k] + h01 * self.y[k + 1] + (h11 * h) * self.f[k + 1]
            out.append(y * float(sv))
        return torch.stack(out)
