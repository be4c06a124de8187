"""Random schedules over the whole decision space, shared by the tests: hypothesis strategies
(`schedules` on a noise schedule's λ grid, `fuzz_schedules` with free times) and a seeded numpy
generator (`random_schedule`, behind the golden outputs)."""
from __future__ import annotations

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from usf_fast.noise_schedules import NoiseScheduleVP
from usf_fast.program import check_conditioning
from usf_fast.schedule import Schedule, Step

RELAX = ("taylor", "linear", "midpoint", "bh1", "bh2")
CORRECTORS = ("none", "pseudo", "implicit")


def _times(ns, fractions) -> list[float]:
    """Times at these fractions of the λ range (0 = t_max, 1 = t_min), the ends exact."""
    lo, hi = ns.marginal_lambda(ns.t_max), ns.marginal_lambda(ns.t_min)
    ts = [float(ns.inverse_lambda(lo + f * (hi - lo))) for f in fractions]
    ts[0], ts[-1] = ns.t_max, ns.t_min
    return ts


@st.composite
def steps(draw, i: int) -> Step:
    """Step i (1-based) with any start, order, active points, relaxation and corrector."""
    start = draw(st.integers(max(0, i - 2), i - 1))
    avail = [j for j in range(i) if j != start]
    order = draw(st.integers(1, min(4, len(avail) + 1)))
    n_points = draw(st.integers(order - 1, min(len(avail), order)))
    points = tuple(draw(st.permutations(avail))[:n_points])
    relax = draw(st.sampled_from(RELAX))
    corrector = draw(st.sampled_from(CORRECTORS))
    return Step(prediction=draw(st.sampled_from(("data", "noise"))), order=order, start=start, points=points,
                relax=relax, relax_coef=draw(st.floats(-1.5, 1.5)) if relax == "linear" else 0.0,
                d2_scale=draw(st.sampled_from((1.0, 0.5))), corrector=corrector,
                corrector_relax=draw(st.sampled_from(("taylor", "bh1"))) if corrector != "none" else "taylor")


@st.composite
def schedules(draw, ns, max_steps: int = 6) -> Schedule:
    """A valid schedule of 2..max_steps steps on `ns`; interior times on a grid of 1 % of the λ
    range (nearly coincident times are another question: their derivative system is ill-conditioned)."""
    n = draw(st.integers(2, max_steps))
    inner = sorted(draw(st.lists(st.integers(1, 99), min_size=n - 1, max_size=n - 1, unique=True)))
    ts = _times(ns, [0.0] + [k / 100 for k in inner] + [1.0])
    return Schedule(ts, [draw(steps(i)) for i in range(1, n + 1)], afs=draw(st.booleans()),
                    denoise_to_zero=draw(st.booleans()), name="random")


def random_schedule(ns, rng: np.random.Generator) -> Schedule:
    """A random valid schedule over the whole decision space from a seeded generator."""
    n = int(rng.integers(2, 7))
    lam = np.sort(rng.uniform(ns.marginal_lambda(ns.t_max), ns.marginal_lambda(ns.t_min), n + 1))
    lam[0], lam[-1] = ns.marginal_lambda(ns.t_max), ns.marginal_lambda(ns.t_min)
    ts = [float(ns.inverse_lambda(v)) for v in lam]
    ts[0], ts[-1] = ns.t_max, ns.t_min
    out = []
    for i in range(1, n + 1):
        start = int(rng.integers(max(0, i - 2), i)) if rng.random() < 0.3 else i - 1
        avail = [j for j in range(i) if j != start]
        order = int(rng.integers(1, min(4, len(avail) + 1) + 1))
        extra = int(rng.integers(0, 2)) if len(avail) > order - 1 else 0
        points = (tuple(sorted(rng.choice(avail, order - 1 + extra, replace=False).tolist(), reverse=True))
                  if order > 1 or extra else ())
        relax = RELAX[int(rng.integers(0, len(RELAX)))]
        corr = CORRECTORS[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
        out.append(Step(prediction=("data", "noise")[int(rng.integers(0, 2))], order=order, start=start,
                        points=points, relax=relax, relax_coef=float(rng.normal()) if relax == "linear" else 0.0,
                        d2_scale=float(rng.choice([1.0, 0.5])), corrector=corr,
                        corrector_relax="bh1" if corr != "none" and rng.random() < 0.3 else "taylor"))
    return Schedule(ts, out, afs=bool(rng.random() < 0.3), denoise_to_zero=bool(rng.random() < 0.2), name="random")


@st.composite
def fuzz_schedules(draw):
    """Any valid schedule with times anywhere in [1e-3, 1] (VP range): any start, any active points,
    any relaxation and corrector."""
    n = draw(st.integers(1, 7))
    raw = sorted(draw(st.lists(st.floats(1e-3, 1.0, allow_nan=False), min_size=n + 1, max_size=n + 1, unique=True)),
                 reverse=True)
    # times closer than this coincide in λ to float precision: the sampler refuses them by name
    # (test_coincident_derivative_points_are_a_value_error_naming_them), so they are not valid input here
    assume(all(a - b > 1e-6 for a, b in zip(raw, raw[1:])))
    steps = []
    for i in range(1, n + 1):
        start = draw(st.integers(0, i - 1))
        others = [j for j in range(i) if j != start]
        points = draw(st.lists(st.sampled_from(others), unique=True, max_size=min(4, len(others)))) if others else []
        order = draw(st.integers(1, min(4, len(points) + 1)))
        relax = draw(st.sampled_from(["taylor", "linear", "midpoint", "bh1", "bh2"]))
        coef = draw(st.floats(-2, 2, allow_nan=False)) if relax == "linear" else 0.0
        steps.append(Step(prediction=draw(st.sampled_from(["data", "noise"])), order=order, start=start,
                          points=tuple(points), relax=relax, relax_coef=coef,
                          d2_scale=draw(st.floats(0, 2, allow_nan=False)),
                          corrector=draw(st.sampled_from(["none", "pseudo", "implicit"]))))
    s = Schedule(raw, steps, afs=draw(st.booleans()), denoise_to_zero=draw(st.booleans()))
    # points nearly coincident for a step's size are refused by every path (program.check_conditioning;
    # tests/test_fuzz.py draws them on purpose): not valid input here
    try:
        check_conditioning(s, NoiseScheduleVP("linear"))
    except ValueError:
        assume(False)
    return s
