"""The S³ search space: multistep USF schedules of an exact NFE, their encoding, and the
evolutionary operators that keep them valid.

A candidate *is* a `Schedule` restricted to multistep steps (start = i−1, the latest order−1
active points): per step the target time (continuous, as a fraction of the λ range), prediction
type, expansion order, first-derivative relaxation (kind and coefficient), second-derivative
scale and pseudo-corrector with its own relaxation; globally the analytical first step. The NFE
is exact: N = nfe + afs − (implicit correctors) steps, no corrector on the last step.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import presets as P
from ..noise_schedules import NoiseSchedule
from ..program import check_conditioning
from ..schedule import Schedule, Step
from .probe import PROBE_SCALES, gaussian_probe

__all__ = ["SearchSpace"]

RELAX_ONEHOT = ("taylor", "linear", "midpoint", "bh1")  # bh2 == midpoint


@dataclass
class SearchSpace:
    """Args:
        noise_schedule: the model's noise schedule (the times live in its range).
        nfe: exact evaluation budget of every candidate (≥ 1).
        orders: allowed expansion orders.
        predictions: allowed prediction types.
        correctors: allow the pseudo-corrector.
        afs: allow the analytical first step.
        relax_range: bound of the linear relaxation coefficient c (ρ = 1 + c·h).
        t_start, t_end: time range (default: the noise schedule's).
        extra_points: a step may estimate its derivatives from one more earlier point than its
            order needs (USF's derivative estimation with more active points: the higher-order
            fit through them, truncated to the step's order).
        singlestep: a step of order >= 2 may start two points back, using the point between as an
            active point (the second half of a singlestep solver's step).
        implicit: a step's corrector may be implicit (the model re-evaluated at the corrected state,
            +1 NFE); such a schedule has one step fewer per implicit corrector, so the NFE stays exact.
    """

    noise_schedule: NoiseSchedule
    nfe: int
    orders: tuple = (1, 2, 3, 4)
    predictions: tuple = ("data", "noise")
    correctors: bool = True
    afs: bool = True
    relax_range: float = 2.0
    t_start: float | None = None
    t_end: float | None = None
    extra_points: bool = False
    singlestep: bool = False
    implicit: bool = False
    _lam: tuple = field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.nfe, int) or isinstance(self.nfe, bool) or self.nfe < 1:
            raise ValueError(f"nfe={self.nfe!r}: must be an integer >= 1")
        bad = [o for o in self.orders if o not in (1, 2, 3, 4)]
        if bad or not self.orders:
            raise ValueError(f"orders={self.orders!r}: must be a non-empty subset of 1..4")
        bad = [p for p in self.predictions if p not in ("data", "noise")]
        if bad or not self.predictions:
            raise ValueError(f"predictions={self.predictions!r}: must be a non-empty subset of ('data', 'noise')")
        ns = self.noise_schedule
        self.t_start = ns.t_max if self.t_start is None else float(self.t_start)
        self.t_end = ns.t_min if self.t_end is None else float(self.t_end)
        self._lam = (float(ns.marginal_lambda(self.t_start)), float(ns.marginal_lambda(self.t_end)))

    # ---- times <-> λ fractions --------------------------------------------------------------
    def times_from_fractions(self, u) -> np.ndarray | None:
        l0, l1 = self._lam
        u = np.sort(np.asarray(u, dtype=np.float64))
        ts = np.asarray(self.noise_schedule.inverse_lambda(l0 + np.concatenate([[0.0], u, [1.0]]) * (l1 - l0)),
                        dtype=np.float64)
        ts[0], ts[-1] = self.t_start, self.t_end
        if np.any(np.diff(ts) >= 0) or not np.all(np.isfinite(ts)):
            return None
        return ts

    def fractions(self, schedule: Schedule) -> np.ndarray:
        l0, l1 = self._lam
        lam = np.asarray(self.noise_schedule.marginal_lambda(np.asarray(schedule.timesteps)), dtype=np.float64)
        return (lam - l0) / (l1 - l0)

    # ---- validity ---------------------------------------------------------------------------
    def make(self, u, steps, afs: bool) -> Schedule | None:
        """Schedule from interior λ-fractions u (N−1), N steps and afs; repaired to the space's
        rules (order ≤ available history, no corrector on the last step, multistep)."""
        n = self.nfe + int(afs) - self._implicit_count(steps)
        if n < 1 or len(steps) != n or len(u) != n - 1:
            return None
        ts = self.times_from_fractions(np.clip(u, 1e-4, 1 - 1e-4))
        if ts is None:
            return None
        fixed = []
        for i, st in enumerate(steps, 1):
            order = max(1, min(st.order, i, max(self.orders)))
            corr = st.corrector if (self.correctors and i < n) else "none"
            start, points = self._start_and_points(st, i, order)
            relax, coef = st.relax, st.relax_coef
            if relax == "linear":
                coef = float(np.clip(coef, -self.relax_range, self.relax_range))
            cr, ccoef = st.corrector_relax, st.corrector_relax_coef
            if cr == "linear":
                ccoef = float(np.clip(ccoef, -self.relax_range, self.relax_range))
            if corr != "none":
                corr = "implicit" if (corr == "implicit" and self.implicit) else "pseudo"
            fixed.append(Step(prediction=st.prediction, order=order, start=start, points=points, relax=relax,
                              relax_coef=coef, d2_scale=st.d2_scale, corrector=corr,
                              corrector_relax=cr, corrector_relax_coef=ccoef))
        try:
            s = Schedule(ts, fixed, afs=afs, meta={"search": True})
            check_conditioning(s, self.noise_schedule)   # nearly coincident points: not a proposal
        except ValueError:
            return None
        return s if s.nfe == self.nfe else None

    def _implicit_count(self, steps) -> int:
        """Implicit correctors that count (+1 NFE each): on any step but the last, when allowed."""
        if not (self.implicit and self.correctors):
            return 0
        return sum(st.corrector == "implicit" for st in steps[:-1])

    def _start_and_points(self, st: Step, i: int, order: int):
        """(start, points) of step i: the multistep defaults (None, None), or with the options a
        start two points back (singlestep) and one extra active point, kept where still valid."""
        back = 1 if (self.singlestep and st.start is not None and st.start <= i - 2 and order >= 2 and i >= 2) else 0
        start = i - 1 - back
        extra = 1 if (self.extra_points and st.points is not None and len(st.points) > st.order - 1) else 0
        if not back and not extra:
            return None, None
        avail = [j for j in range(i - 1, -1, -1) if j != start]
        want = order - 1 + extra
        if len(avail) < want:
            want = order - 1
        if len(avail) < want:
            return None, None
        return start, tuple(avail[:want])

    def contains(self, s: Schedule) -> bool:
        return (not s.denoise_to_zero and s.nfe == self.nfe and s.timesteps[0] == self.t_start
                and s.timesteps[-1] == self.t_end
                and all(st.start == i - 1 and st.points == tuple(range(i - 2, i - 1 - st.order, -1))
                        and st.corrector != "implicit" for i, st in enumerate(s.steps, 1)))

    # ---- seeds ------------------------------------------------------------------------------
    def seeds(self) -> list[Schedule]:
        """Multistep presets (DDIM, DPM-Solver++ 2M/3M, UniPC bh1/bh2, data and noise prediction)
        over every spacing, with and without AFS — the hand-designed starting population."""
        out = []
        variants = [("ddim", {}), ("dpm_solver_pp", {"order": 2}), ("dpm_solver_pp", {"order": 3}),
                    ("dpm_solver_pp", {"order": 2, "solver_type": "taylor"}),
                    ("unipc", {"order": 2, "variant": "bh1"}), ("unipc", {"order": 3, "variant": "bh1"}),
                    ("unipc", {"order": 2, "variant": "bh2"}), ("unipc", {"order": 3, "variant": "bh2"}),
                    ("unipc", {"order": 3, "variant": "bh2", "prediction": "noise"})]
        for name, opts in variants:
            for sp in P.spacings_for(self.noise_schedule):
                for afs in ((False, True) if self.afs else (False,)):
                    try:
                        with warnings.catch_warnings():   # a diverging seed scores badly; the search says which
                            warnings.simplefilter("ignore", P.DivergenceWarning)
                            s = P.get(name, self.noise_schedule, self.nfe, spacing=sp, afs=afs,
                                      t_start=self.t_start, t_end=self.t_end, **opts)
                    except ValueError:
                        continue
                    if self.contains(s) and all(st.order in self.orders for st in s.steps) \
                            and all(st.prediction in self.predictions for st in s.steps) \
                            and (self.correctors or all(st.corrector == "none" for st in s.steps)):
                        out.append(s)
        return out

    # ---- encoding ---------------------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return 1 + (self.nfe + 1) * self._step_width

    @property
    def _step_width(self) -> int:
        return 13 + int(self.extra_points) + int(self.singlestep) + int(self.implicit)

    def encode(self, s: Schedule) -> np.ndarray:
        """Fixed-length vector: afs, then per step slot (N ≤ nfe + 1, zero-padded): target λ-fraction,
        step size, noise?, order/4, corrector?, relax one-hot(4), relax coef, corrector-relax
        linear?/bh?, coef, d2_scale − 1."""
        v = np.zeros(self.encoding_size)
        v[0] = float(s.afs)
        fr = self.fractions(s)
        w = self._step_width
        for i, st in enumerate(s.steps):
            o = 1 + w * i
            kind = "midpoint" if st.relax == "bh2" else st.relax
            ck = "midpoint" if st.corrector_relax == "bh2" else st.corrector_relax
            v[o:o + 13] = [fr[i + 1], fr[i + 1] - fr[i], st.prediction == "noise", st.order / 4,
                           st.corrector != "none", *(kind == k for k in RELAX_ONEHOT),
                           st.relax_coef / self.relax_range, ck == "linear", ck in ("midpoint", "bh1"),
                           st.corrector_relax_coef / self.relax_range]
            v[o + 12] = st.d2_scale - 1.0 if st.order >= 3 else 0.0
            k = o + 13
            if self.extra_points:
                v[k] = float(len(st.points) > st.order - 1)
                k += 1
            if self.singlestep:
                v[k] = float(st.start < i)   # step i + 1 (1-based) starts before point i
                k += 1
            if self.implicit:
                v[k] = float(st.corrector == "implicit")
        return v

    @property
    def feature_size(self) -> int:
        return self.encoding_size + len(PROBE_SCALES)

    def features(self, s: Schedule, probe: np.ndarray | None = None) -> np.ndarray:
        """The predictor's input: the encoding, then the Gaussian-probe errors (`probe.gaussian_probe`,
        log10, scaled by 1/4 to the encoding's range; pass `probe` if already computed)."""
        probe = gaussian_probe(s, self.noise_schedule) if probe is None else probe
        return np.concatenate([self.encode(s), probe / 4.0])

    # ---- evolution ----------------------------------------------------------------------------
    def random(self, rng: np.random.Generator) -> Schedule:
        for _ in range(100):
            afs = bool(self.afs and rng.random() < 0.5)
            n = self.nfe + int(afs)
            u = np.sort(rng.random(n - 1))
            steps = [self._random_step(rng, i) for i in range(1, n + 1)]
            s = self.make(u, steps, afs)
            if s is not None:
                return s
        raise RuntimeError("SearchSpace.random: could not draw a valid schedule")

    def _random_step(self, rng, i) -> Step:
        relax = rng.choice(["taylor", "linear", "midpoint", "bh1"])
        cr = rng.choice(["taylor", "linear", "midpoint", "bh1"])
        return Step(prediction=str(rng.choice(self.predictions)), order=int(rng.choice(self.orders)),
                    relax=str(relax), relax_coef=float(rng.normal(0, 0.5)) if relax == "linear" else 0.0,
                    corrector="pseudo" if (self.correctors and rng.random() < 0.5) else "none",
                    corrector_relax=str(cr), corrector_relax_coef=float(rng.normal(0, 0.5)) if cr == "linear" else 0.0)

    def mutate(self, s: Schedule, rng: np.random.Generator) -> Schedule:
        """One to three random edits; returns a valid schedule (the parent if every try fails)."""
        for _ in range(20):
            u = list(self.fractions(s)[1:-1])
            steps = list(s.steps)
            afs = s.afs
            options = [o for o, on in (("extra", self.extra_points), ("back", self.singlestep),
                                          ("implicit", self.implicit and self.correctors)) if on]
            for _ in range(int(rng.integers(1, 4))):
                op = rng.integers(0, 9 + len(options))
                i = int(rng.integers(0, len(steps)))
                st = steps[i]
                if op >= 9:                                         # the space's options
                    steps, u = self._option_edit(options[op - 9], steps, u, i, rng)
                elif op == 0 and u:                                 # move one time
                    j = int(rng.integers(0, len(u)))
                    u[j] = float(np.clip(u[j] + rng.normal(0, 0.08), 1e-3, 1 - 1e-3))
                elif op == 1 and u:                                 # move all times a little
                    u = list(np.clip(np.asarray(u) + rng.normal(0, 0.02, len(u)), 1e-3, 1 - 1e-3))
                elif op == 2 and len(self.predictions) > 1:
                    steps[i] = st.replace(prediction="noise" if st.prediction == "data" else "data")
                elif op == 3:
                    order = int(np.clip(st.order + rng.choice([-1, 1]), min(self.orders), max(self.orders)))
                    if self.extra_points:   # keep the step's extra-point choice across the new order
                        extra = st.points is not None and len(st.points) > st.order - 1
                        steps[i] = st.replace(order=order, points=tuple(range(order)) if extra else None)
                    else:
                        steps[i] = st.replace(order=order)
                elif op == 4 and self.correctors:
                    steps[i] = st.replace(corrector="none" if st.corrector != "none" else "pseudo")
                elif op == 5:
                    if st.relax == "linear" and rng.random() < 0.7:
                        steps[i] = st.replace(relax_coef=float(st.relax_coef + rng.normal(0, 0.3)))
                    else:
                        kind = str(rng.choice(["taylor", "linear", "midpoint", "bh1"]))
                        steps[i] = st.replace(relax=kind, relax_coef=float(rng.normal(0, 0.3)) if kind == "linear" else 0.0)
                elif op == 6:
                    if st.corrector_relax == "linear" and rng.random() < 0.7:
                        steps[i] = st.replace(corrector_relax_coef=float(st.corrector_relax_coef + rng.normal(0, 0.3)))
                    else:
                        kind = str(rng.choice(["taylor", "linear", "midpoint", "bh1"]))
                        steps[i] = st.replace(corrector_relax=kind,
                                              corrector_relax_coef=float(rng.normal(0, 0.3)) if kind == "linear" else 0.0)
                elif op == 7 and st.order >= 3:
                    steps[i] = st.replace(d2_scale=float(np.clip(st.d2_scale + rng.normal(0, 0.25), 0.0, 2.0)))
                elif op == 8 and self.afs:                          # toggle AFS: one step more / fewer
                    if afs and len(steps) > 1:
                        steps, u, afs = steps[1:], u[1:], False
                    elif not afs:
                        first = float(u[0]) if u else 1.0
                        steps, u, afs = [steps[0]] + steps, [first * float(rng.uniform(0.2, 0.8))] + u, True
            out = self.make(u, steps, afs)
            if out is not None and out != s:
                return out
        return s

    def _option_edit(self, option: str, steps: list, u: list, i: int, rng) -> tuple[list, list]:
        """One edit of an option of the space at step i: toggle its extra active point ("extra"),
        its singlestep start ("back"), or its implicit corrector ("implicit": one step fewer / more)."""
        st = steps[i]
        if option == "implicit":
            return self._toggle_implicit(steps, u, i, rng)
        steps = list(steps)
        if option == "extra":
            more = not (st.points is not None and len(st.points) > st.order - 1)
            steps[i] = st.replace(points=tuple(range(st.order)) if more else None, start=st.start)
        else:
            back = not (st.start is not None and st.start <= i - 1)
            steps[i] = st.replace(start=max(0, i - 1) if back else None, points=st.points)
        return steps, u

    @staticmethod
    def _shifted(steps: list, by: int) -> list:
        """Steps moved `by` positions: explicit starts and active points (absolute point indices)
        move with them, so a singlestep start stays one (`make` reads them relative to the step)."""
        return [st if st.start is None else
                st.replace(start=max(0, st.start + by), points=tuple(max(0, p + by) for p in st.points or ()))
                for st in steps]

    def _toggle_implicit(self, steps: list, u: list, i: int, rng) -> tuple[list, list]:
        """Make step i's corrector implicit and drop another step (its target time goes; the NFE is
        unchanged), or make an implicit one pseudo and split its step at a new time between its
        ends (the first half a plain multistep step). Later steps keep their relative starts. The
        last step never gets a corrector; too few steps: unchanged."""
        n = len(steps)
        if i >= n - 1:
            return steps, u
        st = steps[i]
        if st.corrector == "implicit":
            fr = [0.0] + list(u) + [1.0]
            new_u = fr[i] + float(rng.uniform(0.3, 0.7)) * (fr[i + 1] - fr[i])
            first = st.replace(corrector="none", start=None, points=None)
            second = self._shifted([st.replace(corrector="pseudo")], 1)
            return (steps[:i] + [first] + second + self._shifted(steps[i + 1:], 1),
                    list(u[:i]) + [new_u] + list(u[i:]))
        others = [j for j in range(n - 1) if j != i]
        if not others:
            return steps, u
        j = int(rng.choice(others))
        steps = list(steps)
        steps[i] = st.replace(corrector="implicit")
        return steps[:j] + self._shifted(steps[j + 1:], -1), list(u[:j]) + list(u[j + 1:])

    def crossover(self, a: Schedule, b: Schedule, rng: np.random.Generator) -> Schedule:
        """Uniform per-step crossover (same AFS and step count), times blended; falls back to
        mutating `a`."""
        if a.afs != b.afs or len(a.steps) != len(b.steps):
            return self.mutate(a, rng)
        ua, ub = self.fractions(a)[1:-1], self.fractions(b)[1:-1]
        w = rng.random()
        u = w * ua + (1 - w) * ub
        steps = [sa if rng.random() < 0.5 else sb for sa, sb in zip(a.steps, b.steps)]
        out = self.make(u, steps, a.afs)
        return out if out is not None else self.mutate(a, rng)


def schedule_key(s: Schedule) -> str:
    """Stable identity for logs and caches (exact: the JSON of the schedule without its name)."""
    d = s.to_dict()
    d.pop("name", None)
    d.pop("meta", None)
    return json.dumps(d, sort_keys=True)
