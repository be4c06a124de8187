"""`Schedule`: every decision of a USF solver (docs/design.md, "The decision space"), as data.

Points are numbered 0..N: point 0 is x_T at timesteps[0]; step i (1..N) computes the state at
timesteps[i] from an earlier *start* point, using model outputs M_j at earlier *active points*.
The model is evaluated at every point 0..N−1 (point 0 analytically when `afs`), and at point N
only when the last step has a corrector or `denoise_to_zero` asks for it.

Per step:
    prediction  "data" (x̂0) | "noise" (ε̂)
    order       expansion order n, 1..4 (n = 1 is DDIM)
    start       start point index (i−1 = multistep; earlier = singlestep)
    points      active points for the derivatives (≥ n−1 of them, each < i and ≠ start)
    relax       first-derivative relaxation (coefficients.RELAX_KINDS), relax_coef for "linear"
    d2_scale    multiplier on the second derivative (0.5 reproduces DPM-Solver's 3M update)
    corrector   "none" | "pseudo" (UniC: same start, order n+1, points + [i], no extra NFE) |
                "implicit" (pseudo, then re-evaluate the model at the corrected state: +1 NFE)
    corrector_relax, corrector_relax_coef   relaxation used by the corrector
    weights     None (the USF formula's weights, the default), or the step's own weights
                (a, w_start, w_p1, …) on x/α (k-diffusion's x, the same for every noise schedule
                of the same λ(t)): x_i/α_i = a·x_start/α_start + w_start·M_start + Σ_j w_pj·M_pj
                over the start and the active points in `points` order (learned coefficients:
                `usf_fast.search.solve`); relax, d2_scale then only record the initialisation
    corrector_weights   likewise for the corrector: (a, w_start, w_p…, w_i), the step's own
                target i the last active point
Global: afs (analytical first step: x̂0 = data mean at t_max, saves one NFE), denoise_to_zero
(return x̂0 of the final state: +1 NFE unless the last step's implicit corrector already has it).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .coefficients import RELAX_KINDS
from .files import atomic_write, printable
from .walk import count_evaluations, evaluation_points

__all__ = ["Step", "Schedule", "SCHEDULE_FORMAT", "SCHEDULE_VERSION"]

SCHEDULE_FORMAT = "usf_fast.schedule"
SCHEDULE_VERSION = 2   # version 2 adds the steps' optional `weights`/`corrector_weights`
READ_VERSIONS = (1, 2)   # a schedule without weights is written as version 1 (older readers read it)
MAX_WEIGHT = 1e6   # |weight| bound of explicit step weights (the formula's are O(1) to O(100))
PREDICTIONS = ("data", "noise")
CORRECTORS = ("none", "pseudo", "implicit")
MAX_ORDER = 4
MAX_RELAX_COEF = 1e3
MAX_FILE_BYTES = 4_000_000   # a 1,000-step schedule with every field spelled out is ~0.4 MB
MAX_STEPS = 1000   # steps per schedule (so NFE <= about 1,000): covers real use, bounds the work of a bad file


@dataclass(frozen=True)
class Step:
    """Decisions of one step. `start=None`/`points=None` mean the multistep defaults, resolved by
    `Schedule` (start = i−1, points = the latest order−1 points before i other than start)."""

    prediction: str = "data"
    order: int = 1
    start: int | None = None
    points: tuple[int, ...] | None = None
    relax: str = "taylor"
    relax_coef: float = 0.0
    d2_scale: float = 1.0
    corrector: str = "none"
    corrector_relax: str = "taylor"
    corrector_relax_coef: float = 0.0
    weights: tuple[float, ...] | None = None
    corrector_weights: tuple[float, ...] | None = None

    def replace(self, **changes) -> "Step":
        return dataclasses.replace(self, **changes)


_STEP_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Step))
_STEP_FIELDS = set(_STEP_FIELD_NAMES)


def _short(v) -> str:
    """repr(v) cut to a readable length (a 400-digit number in a file is still named)."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _finite(x) -> bool:
    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:   # an integer too large for a float
        return False


class Schedule:
    """A complete solver schedule.

    Args:
        timesteps: N+1 strictly decreasing times in the noise schedule's time variable
            (t for VP, σ for EDM); timesteps[0] is where sampling starts.
        steps: N `Step`s (or dicts of Step fields); default: N first-order data-prediction steps.
        afs: analytical first step.
        denoise_to_zero: return x̂0 at the last point.
        name: free text shown in summaries.
        meta: free JSON-serialisable dict (e.g. the noise schedule the schedule was built for).
    """

    def __init__(self, timesteps: Sequence[float], steps: Iterable[Step | dict] | None = None, *,
                 afs: bool = False, denoise_to_zero: bool = False, name: str | None = None,
                 meta: dict | None = None):
        ts = _check_timesteps(timesteps)
        n_steps = len(ts) - 1
        if steps is None:
            steps = [Step() for _ in range(n_steps)]
        steps = list(steps)
        if len(steps) != n_steps:
            raise ValueError(f"steps: got {len(steps)} steps for {len(ts)} timesteps; need exactly "
                             f"len(timesteps) - 1 = {n_steps}")
        if not isinstance(afs, bool):
            raise ValueError(f"afs={_short(afs)}: must be True or False")
        if not isinstance(denoise_to_zero, bool):
            raise ValueError(f"denoise_to_zero={_short(denoise_to_zero)}: must be True or False")
        self.timesteps: tuple[float, ...] = ts
        self.steps: tuple[Step, ...] = tuple(_resolve_step(s, i + 1) for i, s in enumerate(steps))
        self.afs = afs
        self.denoise_to_zero = denoise_to_zero
        self.name = name
        self.meta = dict(meta or {})

    # ---- derived facts -------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        """Model evaluations `sample` makes, exactly: the evaluations of the schedule's walk."""
        return count_evaluations(self)

    def evaluation_points(self) -> tuple[int, ...]:
        """The point index of each model evaluation, in order (an implicit corrector's point twice)."""
        return evaluation_points(self)

    def tail(self, evaluation: int) -> "Schedule":
        """The schedule that continues this one from the point of its `evaluation`-th evaluation
        (0-based) with no history: what img2img (`strength`), inpainting and the SDXL refiner run
        when they start a pipeline part-way (docs/design.md, "Starting part-way"). Its state there
        is given (the noised image, or the base pipeline's latents), so there is no analytical
        first step; the steps are this schedule's from that point on, a reference to a point before
        it moves to the latest point, and orders are capped by the points available — a warm-up,
        as diffusers' multistep schedulers do after `set_begin_index`. It evaluates the model at
        the same times as evaluations `evaluation`.. of this schedule, so its NFE is the rest."""
        pts = self.evaluation_points()
        if not isinstance(evaluation, int) or isinstance(evaluation, bool) or not 0 <= evaluation < len(pts):
            raise ValueError(f"evaluation={_short(evaluation)}: must be an evaluation index 0..{len(pts) - 1}")
        if evaluation == 0 and not self.afs:
            return self
        p = pts[evaluation]
        if evaluation + 1 < len(pts) and pts[evaluation + 1] == p:
            raise ValueError(f"evaluation={evaluation}: is the predicted state of an implicit corrector at point {p}; "
                             f"start at evaluation {evaluation + 1} (its corrected state) instead")
        if p == self.num_steps:
            raise ValueError(f"evaluation={evaluation}: is the final denoise-to-zero evaluation; nothing is left to run")
        steps = []
        for i, st in enumerate(self.steps[p:], start=1):
            start, points = st.start - p, tuple(j - p for j in st.points)
            if start < 0 or any(j < 0 for j in points):   # history before the cut: latest point, warm-up order
                order = min(st.order, i)
                # (a step's own weights are for its old points: the warm-up is the formula's)
                steps.append(st.replace(start=None, points=None, order=order, weights=None, corrector_weights=None,
                                        **self._unipc_relax(st, order)))
            else:
                steps.append(st.replace(start=start, points=points))
        out = Schedule(self.timesteps[p:], steps, afs=False, denoise_to_zero=self.denoise_to_zero,
                       name=f"{self.name or 'schedule'}[from evaluation {evaluation}]", meta=self.meta)
        if out.nfe != len(pts) - evaluation:   # a corrector's evaluation order would not line up
            raise ValueError(f"evaluation={evaluation}: the rest of this schedule cannot start there "
                             f"({out.nfe} evaluations instead of {len(pts) - evaluation})")
        return out

    def _unipc_relax(self, st: Step, order: int) -> dict:
        """A UniPC step whose order the warm-up caps takes UniPC's relaxations for the new order:
        the B(h) variant where one difference term is left (the order-2 predictor, the corrector
        after an order-1 predictor), the exact (Taylor) form otherwise (Zhao et al. 2023, sec. 3.2;
        presets.unipc). A step is UniPC's when the schedule is the unipc preset, or when its pair of
        relaxations is UniPC's rule for its order; other steps keep theirs."""
        if order == st.order:
            return {}
        opts = self.meta.get("options") or {}
        variant = opts.get("variant") if self.meta.get("preset") == "unipc" else None
        if variant is None:   # read from the step; an order ≥ 3 step (Taylor both ways) does not say which
            matches = [v for v in ("bh1", "bh2") if st.corrector != "none" and (st.relax, st.corrector_relax) ==
                       (v if st.order == 2 else "taylor", v if st.order == 1 else "taylor")]
            variant = matches[0] if len(matches) == 1 else None
        if variant not in ("bh1", "bh2"):
            return {}
        return {"relax": variant if order == 2 else "taylor", "corrector_relax": variant if order == 1 else "taylor"}

    @property
    def has_weights(self) -> bool:
        """Whether any step carries its own weights (learned coefficients) instead of the formula's."""
        return any(st.weights is not None or st.corrector_weights is not None for st in self.steps)

    def evaluates_last_point(self) -> bool:
        return self.steps[-1].corrector != "none"

    # ---- comparison / copies -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_VERSION if self.has_weights else 1,
            "name": self.name,
            "timesteps": list(self.timesteps),
            "afs": self.afs,
            "denoise_to_zero": self.denoise_to_zero,
            "steps": [_step_to_dict(s) for s in self.steps],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Schedule":
        if not isinstance(d, dict):
            raise ValueError(f"schedule JSON: top level must be an object, got {type(d).__name__}")
        if d.get("format") != SCHEDULE_FORMAT:
            raise ValueError(f"schedule JSON: format={_short(d.get('format'))}, expected {SCHEDULE_FORMAT!r}")
        version = d.get("version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise ValueError(f"schedule JSON: version={_short(version)} is not supported "
                             f"(this usf_fast reads versions {', '.join(map(str, READ_VERSIONS))})")
        if version == 1 and any(isinstance(st, dict) and (st.get("weights") is not None
                                                         or st.get("corrector_weights") is not None)
                                for st in (d.get("steps") if isinstance(d.get("steps"), list) else [])):
            raise ValueError("schedule JSON: version=1 has no step weights; a schedule with 'weights' is version 2")
        unknown = set(d) - {"format", "version", "name", "timesteps", "afs", "denoise_to_zero", "steps", "meta"}
        if unknown:
            raise ValueError(f"schedule JSON: unknown field(s) {sorted(unknown)}")
        for key in ("timesteps", "steps"):
            if key not in d:
                raise ValueError(f"schedule JSON: missing field {key!r}")
        if not isinstance(d["steps"], list):
            raise ValueError("schedule JSON: steps must be a list of objects")
        if not isinstance(d["timesteps"], list):
            raise ValueError("schedule JSON: timesteps must be a list of numbers")
        if d.get("meta") is not None and not isinstance(d["meta"], dict):
            raise ValueError(f"schedule JSON: meta must be an object, got {type(d['meta']).__name__}")
        if d.get("name") is not None and not isinstance(d["name"], str):
            raise ValueError(f"schedule JSON: name must be a string, got {type(d['name']).__name__}")
        return cls(d["timesteps"], d["steps"], afs=d.get("afs", False),
                   denoise_to_zero=d.get("denoise_to_zero", False), name=d.get("name"),
                   meta=d.get("meta") or {})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Write the schedule to `path` (atomically) and return the JSON text."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "Schedule":
        """Read a schedule from a file path (or from JSON text starting with '{')."""
        s = os.fspath(path_or_text)
        if s.lstrip().startswith("{"):
            text = s
        else:
            if os.path.isdir(s):
                raise ValueError(f"schedule file {s}: is a folder, not a JSON file")
            if os.path.exists(s) and os.path.getsize(s) > MAX_FILE_BYTES:
                raise ValueError(f"schedule file {s}: {os.path.getsize(s):,} bytes, more than a schedule of "
                                 f"{MAX_STEPS} steps needs ({MAX_FILE_BYTES:,})")
            try:
                with open(s, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                raise ValueError(f"schedule file {s}: not UTF-8 text (a schedule is a JSON file)") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"schedule JSON: malformed ({e})") from None
        except RecursionError:
            raise ValueError("schedule JSON: nested too deeply to be a schedule") from None
        return cls.from_dict(d)

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def replace(self, **changes) -> "Schedule":
        kw = dict(timesteps=self.timesteps, steps=self.steps, afs=self.afs,
                  denoise_to_zero=self.denoise_to_zero, name=self.name, meta=self.meta)
        kw.update(changes)
        return Schedule(kw.pop("timesteps"), kw.pop("steps"), **kw)

    def with_step(self, index: int, **changes) -> "Schedule":
        """Copy with `steps[index]` (0-based) changed."""
        steps = list(self.steps)
        steps[index] = steps[index].replace(**changes)
        return self.replace(steps=steps)

    # ---- display -------------------------------------------------------------------------
    def summary(self, time_name: str = "t") -> str:
        """One line per step."""
        head = (f"Schedule {printable(self.name or '')}".rstrip() + f": {len(self.steps)} steps, NFE {self.nfe}"
                + (", AFS" if self.afs else "") + (", denoise-to-zero" if self.denoise_to_zero else ""))
        lines = [head, f"  point 0: {time_name}={self.timesteps[0]:.6g}"
                 + ("  (analytical first step)" if self.afs else "")]
        for i, s in enumerate(self.steps, 1):
            relax = s.relax if s.relax != "linear" else f"linear({s.relax_coef:+.3g})"
            extra = f" d2x{s.d2_scale:g}" if s.d2_scale != 1.0 else ""
            corr = s.corrector
            if s.corrector != "none" and s.corrector_relax != "taylor":
                cr = s.corrector_relax if s.corrector_relax != "linear" else f"linear({s.corrector_relax_coef:+.3g})"
                corr += f"/{cr}"
            pts = ",".join(map(str, s.points)) or "-"
            if s.weights is not None:   # the formula's relax/d2 do not apply
                relax, extra = "weights " + " ".join(f"{w:+.4g}" for w in s.weights), ""
            if s.corrector_weights is not None:
                corr += " weights " + " ".join(f"{w:+.4g}" for w in s.corrector_weights)
            lines.append(f"  step {i:2d}: {time_name} {self.timesteps[s.start]:.6g} -> {self.timesteps[i]:.6g}"
                         f"  {s.prediction:5s} order {s.order}  start {s.start}  points [{pts}]"
                         f"  relax {relax}{extra}  corrector {corr}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Schedule {self.name or ''} steps={len(self.steps)} nfe={self.nfe}>"


def _check_timesteps(timesteps) -> tuple[float, ...]:
    if isinstance(timesteps, (str, bytes, dict)) or not hasattr(timesteps, "__len__"):
        raise ValueError(f"timesteps: must be a list of numbers, got {type(timesteps).__name__}")
    if len(timesteps) - 1 > MAX_STEPS:
        raise ValueError(f"timesteps: {len(timesteps)} values, more than {MAX_STEPS} steps (the most a schedule may "
                         "have; few-step sampling needs far fewer)")
    try:
        ts = [float(t) for t in timesteps]
    except (TypeError, ValueError, OverflowError):
        raise ValueError("timesteps: must be a list of numbers (each within float range)") from None
    if any(isinstance(t, bool) for t in timesteps):
        raise ValueError("timesteps: must be numbers, not true/false")
    if len(ts) < 2:
        raise ValueError(f"timesteps: need at least 2 values (start and end), got {len(ts)}")
    for i, t in enumerate(ts):
        if not math.isfinite(t):
            raise ValueError(f"timesteps[{i}]={t}: must be finite")
        if t <= 0:
            raise ValueError(f"timesteps[{i}]={t}: must be > 0")
        if i and not t < ts[i - 1]:
            raise ValueError(f"timesteps[{i}]={t!r} >= timesteps[{i - 1}]={ts[i - 1]!r}: "
                             "timesteps must be strictly decreasing")
    return tuple(ts)


def _step_to_dict(s: Step) -> dict:
    # dataclasses.asdict would deep-copy field by field; every field is a scalar but `points`
    # (a search builds hundreds of thousands of these for its keys)
    d = {name: getattr(s, name) for name in _STEP_FIELD_NAMES}
    d["points"] = list(s.points)
    for name in ("weights", "corrector_weights"):   # absent when None: formula schedules keep their JSON (and keys)
        if d[name] is None:
            del d[name]
        else:
            d[name] = list(d[name])
    return d


def _resolve_step(s: Step | dict, i: int) -> Step:
    """Validate step i (1-based point index of its target) and fill in start/points."""
    where = f"steps[{i - 1}]"
    if isinstance(s, dict):
        unknown = set(s) - _STEP_FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_STEP_FIELDS)}")
        s = dict(s)
        for name in ("points", "weights", "corrector_weights"):
            if isinstance(s.get(name), list):
                s[name] = tuple(s[name])
        s = Step(**s)
    elif not isinstance(s, Step):
        raise ValueError(f"{where}: must be a Step or a dict, got {type(s).__name__}")
    if s.prediction not in PREDICTIONS:
        raise ValueError(f"{where}.prediction={_short(s.prediction)}: must be one of {', '.join(PREDICTIONS)}")
    if not isinstance(s.order, int) or isinstance(s.order, bool) or not 1 <= s.order <= MAX_ORDER:
        raise ValueError(f"{where}.order={_short(s.order)}: expansion order must be an integer 1..{MAX_ORDER}")
    start = i - 1 if s.start is None else s.start
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= i - 1:
        raise ValueError(f"{where}.start={_short(s.start)}: must be a point index 0..{i - 1}")
    if s.points is None:
        points = tuple(itertools.islice((j for j in range(i - 1, -1, -1) if j != start), s.order - 1))
        if len(points) < s.order - 1:
            raise ValueError(f"{where}.order={s.order}: needs {s.order - 1} earlier model outputs besides "
                             f"the start point, only {len(points)} available at this step "
                             f"(use a lower order here, e.g. a warm-up)")
    else:
        try:
            points = tuple(s.points)
        except TypeError:
            raise ValueError(f"{where}.points={_short(s.points)}: must be a list of point indices") from None
        for j in points:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j <= i - 1:
                raise ValueError(f"{where}.points: {j!r} is not a point index 0..{i - 1}")
            if j == start:
                raise ValueError(f"{where}.points: {j} is the start point; active points must differ from it")
        if len(set(points)) != len(points):
            raise ValueError(f"{where}.points={list(points)}: indices must be distinct")
        if len(points) < s.order - 1:
            raise ValueError(f"{where}.order={s.order}: needs at least {s.order - 1} active points, "
                             f"points={list(points)} has {len(points)}")
    for name in ("relax", "corrector_relax"):
        if getattr(s, name) not in RELAX_KINDS:
            raise ValueError(f"{where}.{name}={_short(getattr(s, name))}: must be one of {', '.join(RELAX_KINDS)}")
    for name, kind in (("relax_coef", s.relax), ("corrector_relax_coef", s.corrector_relax)):
        v = getattr(s, name)
        if not _finite(v):
            raise ValueError(f"{where}.{name}={_short(v)}: must be a finite number")
        if abs(v) > MAX_RELAX_COEF:
            raise ValueError(f"{where}.{name}={_short(v)}: |c| must be <= {MAX_RELAX_COEF:g} (the linear relaxation "
                             "ρ = 1 + c·h; the search explores |c| <= 2)")
        if kind != "linear" and v != 0:
            raise ValueError(f"{where}.{name}={_short(v)}: only used with relax 'linear'; set it to 0 or the kind to 'linear'")
    if not _finite(s.d2_scale):
        raise ValueError(f"{where}.d2_scale={_short(s.d2_scale)}: must be a finite number")
    if s.corrector not in CORRECTORS:
        raise ValueError(f"{where}.corrector={_short(s.corrector)}: must be one of {', '.join(CORRECTORS)}")
    weights = _check_weights(s.weights, f"{where}.weights", 2 + len(points), "a, w_start and one per active point")
    if s.corrector_weights is not None and s.corrector == "none":
        raise ValueError(f"{where}.corrector_weights: given for a step without a corrector (corrector='none')")
    corrector_weights = _check_weights(s.corrector_weights, f"{where}.corrector_weights", 3 + len(points),
                                       "a, w_start, one per active point and w_target")
    return s.replace(start=start, points=points, relax_coef=float(s.relax_coef), d2_scale=float(s.d2_scale),
                     corrector_relax_coef=float(s.corrector_relax_coef), weights=weights,
                     corrector_weights=corrector_weights)


def _check_weights(w, where: str, n: int, what: str) -> tuple[float, ...] | None:
    """Explicit step weights: None, or n finite numbers (as floats) of magnitude <= MAX_WEIGHT."""
    if w is None:
        return None
    if isinstance(w, (str, bytes, dict)) or not hasattr(w, "__len__"):
        raise ValueError(f"{where}: must be a list of {n} numbers ({what}), got {type(w).__name__}")
    if len(w) != n:
        raise ValueError(f"{where}: {len(w)} numbers, this step needs {n} ({what})")
    if any(isinstance(v, bool) or not _finite(v) for v in w):
        raise ValueError(f"{where}={_short(list(w))}: must be finite numbers")
    if any(abs(float(v)) > MAX_WEIGHT for v in w):
        raise ValueError(f"{where}={_short(list(w))}: |weight| must be <= {MAX_WEIGHT:g}")
    return tuple(float(v) for v in w)
