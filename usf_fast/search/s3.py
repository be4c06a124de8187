"""S³: predictor-based solver-schedule search on the fast paths.

    result = s3_search(model, nfe=5, budget=600)
    result.best            # the searched schedule, or the best preset where the search was credibly worse

Loop (docs/search.md): seed the population with the presets; each generation proposes many
candidates by mutation and crossover of the best ones (niched: near-copies of a better schedule
are not parents) and drops proposals that are functional near-copies of an evaluated schedule
(same Gaussian-probe errors, `search.probe`); the predictor (by default a Gaussian process),
retrained on every real evaluation so far on the schedules' encodings and probe errors, screens
them, and only the most promising are evaluated for real (the GP: a batch by expected improvement,
each pick believed before the next; batched evaluation: one dense-program batch per chunk of
candidates); the first generations are screened by the probe alone, one child per parent.
Stage 1 works on few samples; the survivors are re-evaluated on more samples and evolution
continues there.
The final choice is made on half of a held-out noise set the search never saw, against every
preset over every spacing with and without AFS, and the winner's gain measured on the other half
(a searched winner that is credibly worse there gives the best preset back); metric ref's reference solve
has its own error measured first (`check_reference`).

Every real evaluation is appended to a JSON-lines log; the search is deterministic for a seed, so
`resume=True` replays the logged evaluations (no re-evaluation) and continues where it stopped; a
finished search's log ends with its result, which a resume reads back.
Under torchrun, chunks of candidates are spread over the processes and gathered, giving the same
result as one process.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import presets as P
from ..metrics import reference_spacing
from ..model import DiffusionModel
from ..schedule import Schedule
from .config import PREDICTORS, WARM_PAIRS, SearchConfig
from .distributed import past, process_sum, rank_and_world
from .evaluate import NoiseSet, ReferenceDistance, evaluate_schedules, make_metric
from .evolution import diverse_parents as _diverse_parents
from .evolution import pick_per_parent as _pick_per_parent
from .gp import GPPredictor
from .log import SearchLog
from .predictor import ImprovementPredictor, Predictor
from .probe import gaussian_probe
from .solve import DenseTeacher, TimeUp, solve_times, twin
from .space import SearchSpace, schedule_key

FRECHET_METRICS = ("fd", "fid", "exact")   # distances between sample sets: biased and noisy on few samples
FRECHET_MIN_SAMPLES = 256
# metric ref: the reference solve's own error (against twice the steps, on stage 1's samples: a rare
# trajectory that the coarse solve sends elsewhere dominates it, so every sample is checked) must stay
# within REFERENCE_TOLERANCE of the best seed's metric; the steps double until it does, up to
# REFERENCE_MAX_FACTOR × reference_nfe (docs/search.md, "The reference")
REFERENCE_TOLERANCE = 0.05
REFERENCE_MAX_FACTOR = 8
DIVERGED = 10.0   # metric ref: a preset this many times the reference's RMS away from it has blown up

__all__ = ["s3_search", "S3Search", "SearchConfig", "SearchResult", "PREDICTORS", "preset_candidates", "describe"]


@dataclass
class SearchResult:
    best: Schedule
    best_metric: float                      # on the report set: held-out noise the choice never saw
    best_source: str                        # "search" or the preset's label
    nfe: int
    table: list                             # (label, metric on the choice set), best first: finalists + presets
    best_preset: tuple                      # (label, metric on the report set): the preset best on the choice set
    evaluations: int                        # real evaluations requested by the search (cached or not)
    new_evaluations: int                    # evaluations actually run by this call (the rest came from the log)
    seconds: float
    curve: list = field(default_factory=list)   # (evaluations used, best stage-1 metric so far)
    taus: list = field(default_factory=list)    # predictor Kendall τ per generation (held-out split)
    log_path: str | None = None
    heldout_evaluations: int = 0            # the final comparison's (finalists and presets)
    cost: dict = field(default_factory=dict)    # network rows run by this call, by phase (+ "total")
    presets_compared: int = 0               # presets in the held-out table (heldout_presets)
    best_label: str = ""                    # the winner's row of `table`: what it is (`describe`) or the preset
    reference: dict = field(default_factory=dict)   # metric ref: the solve used (steps, spacing) and its measured error
    dropped_presets: list = field(default_factory=list)   # left out of the baseline: their samples diverged
    improvement_ci: tuple | None = None     # 95% paired bootstrap interval of `improvement` (metric ref)
    report_samples: int = 0                 # size of the report set (and `heldout` − it, of the choice set)
    note: str = ""                          # when the chosen searched schedule lost the report: returned or kept, and why

    @property
    def improvement(self) -> float:
        """Relative improvement of the result over the best preset on the report set (held-out
        noise neither the search nor the choice of the winner saw)."""
        return 1.0 - self.best_metric / self.best_preset[1]

    def summary(self) -> str:
        lines = [f"S3 search, NFE {self.nfe}: {self.evaluations} search evaluations and {self.heldout_evaluations} "
                 f"held-out ones; {self.new_evaluations} distinct evaluations of both kinds run now (the rest read from the log), "
                 f"{self.seconds:.0f} s",
                 f"best: {self.best_label or self.best_source}  metric {self.best_metric:.5g} on the report set",
                 f"best preset{f' (of the {self.presets_compared} compared)' if self.presets_compared else ''}: "
                 f"{self.best_preset[0]}  {self.best_preset[1]:.5g}  (improvement {self.improvement:+.1%}"
                 + (f", 95% CI {self.improvement_ci[0]:+.1%} … {self.improvement_ci[1]:+.1%}" if self.improvement_ci else "")
                 + f"; both chosen on the choice set, measured on {self.report_samples} report samples)",
                 *([self.note] if self.note else []), "", "metric on the choice set (lower is better):"]
        if self.cost:
            lines.insert(1, "network rows run now: " + ", ".join(f"{k} {v:,}" for k, v in self.cost.items()))
        if self.reference:
            r = self.reference
            raised = f", raised from {r['requested']} steps" if r["steps"] != r["requested"] else ""
            lines.insert(3, f"reference: UniPC-3, {r['steps']} {r['spacing']} steps{raised}; its own error "
                            f"{r['error']:.3g} RMS = {r['error'] / self.best_preset[1]:.1%} of the best preset's metric")
        if self.dropped_presets:
            lines.insert(4, f"presets left out (their samples diverged): {', '.join(self.dropped_presets)}")
        width = max(len(lbl) for lbl, _ in self.table[:15])
        lines += [f"  {lbl:{width}s}  {v:.5g}" for lbl, v in self.table[:15]]
        return "\n".join(lines)


def _resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                         "use device='cpu'")
    return dev


def _check_model(model: DiffusionModel, shape: tuple, device: torch.device, dtype: torch.dtype, t: float) -> list:
    """One model call on one fixed sample before the search starts, so a network on another device or
    a wrong `shape` is a clear message instead of a failure inside the first batch. Returns the
    network's fingerprint: mean and std of that call's output (the log's header records it, so
    a log of another network is never resumed; docs/search.md)."""
    n = model.cond_rows   # every prompt once
    ns = model.noise_schedule
    # the fingerprint's time: where signal and noise are even (λ = 0), inside the range; at the start
    # an ε-network returns about x/σ whatever it learned
    t_mid = float(np.clip(ns.inverse_lambda(0.0), ns.t_min, ns.t_max)) if math.isfinite(t) else t
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    try:
        with torch.no_grad():
            x_mid = float(ns.marginal_alpha(t_mid)) * 0.5 * x + float(ns.marginal_std(t_mid)) * x.flip(0)
            out = model.raw(x_mid.to(dtype=dtype, device=device), torch.full((n,), t_mid, dtype=dtype, device=device))
    except Exception as e:   # the user's network: any error it raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model: a test call on one sample of shape {shape} ({dtype}, device {device}) failed: "
                         f"{first}. The network must accept tensors on the search's device (device=, --device) "
                         "and the per-sample shape (shape=, --shape)") from e
    out = out.double()
    stats = [float(out.mean()), float(out.std()) if out.numel() > 1 else 0.0,
             float(model.guidance_scale) if model.guidance_scale is not None else 0.0]
    return [v if math.isfinite(v) else None for v in stats]   # a NaN network: the search says so later


def preset_candidates(ns, nfe: int, t_start=None, t_end=None) -> list[tuple[str, Schedule]]:
    """Every standard preset variant over every spacing (the baseline the search must beat), each
    distinct schedule once: variants that coincide at this NFE (at NFE 2 DPM-Solver++ 2M and 3M are
    DDIM) share one entry labelled by the first, naming the others."""
    out, where, same = [], {}, {}
    for label, sp, s in P.standard_schedules(ns, nfe, t_start=t_start, t_end=t_end):
        k = schedule_key(s)
        if k in where:
            same[k].append(label if f"[{sp}]" in out[where[k]][0] else f"{label} [{sp}]")
            continue
        where[k], same[k] = len(out), []
        out.append((f"{label} [{sp}]", s))
    return [(lbl + (f" (= {', '.join(same[k])})" if same[k] else ""), s)
            for (lbl, s), k in zip(out, where)]


@dataclass
class _Proposals:
    """One generation's candidates: the schedules, their keys, and the parent each came from
    (len(parents) for immigrants)."""
    schedules: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    owner: list = field(default_factory=list)


class S3Search:
    """One S³ search of `config.nfe` evaluations for `model`; `run()` returns the `SearchResult`.

    The state the loop keeps between generations lives here: the evaluation cache (backed by the
    log), the predictors, the per-schedule probe errors and predictor rows, the (parent, child)
    lineage the improvement predictors learn from, and the counters."""

    def __init__(self, model: DiffusionModel, config: SearchConfig, space: SearchSpace | None = None):
        if not isinstance(model, DiffusionModel):
            raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
        c = self.config = config
        self.t_begin = time.perf_counter()
        self._phase_start = (model.rows if isinstance(model, DiffusionModel) else 0, 0)   # the model check counts
        self._estimate = None   # the printed cost bound (`cost_estimate`) by phase, and the seeds: set by `run`
        self.model, self.ns = model, model.noise_schedule
        self.metric = make_metric(c.metric, model, **(c.metric_options or {}))
        if space is not None and not isinstance(space, SearchSpace):
            raise ValueError(f"space: must be a usf_fast.search.SearchSpace, got {type(space).__name__}")
        self.space = space or SearchSpace(self.ns, c.nfe)
        if self.space.nfe != c.nfe:
            raise ValueError(f"space.nfe={self.space.nfe} differs from nfe={c.nfe}")
        self.shape = self._shape(c.shape, model)
        self.device = _resolve_device(c.device)
        fingerprint = _check_model(model, self.shape, self.device, c.dtype, self.space.t_start)
        self.rank, self.world = rank_and_world()
        self._sum = process_sum(self.device) if self.world > 1 else None   # a sum over torchrun's processes
        self.sets = self._noise_sets(c, model.cond_rows)
        self.metric_name = getattr(self.metric, "name", str(c.metric))
        if self.metric_name in FRECHET_METRICS and min(c.samples) < FRECHET_MIN_SAMPLES:
            warnings.warn(f"metric {self.metric_name}: a Fréchet distance on {min(c.samples)} samples per evaluation "
                          "ranks schedules poorly (at 96/256 samples a digits UNet search did not beat the best "
                          f"preset, docs/experiments.md); give samples of at least {FRECHET_MIN_SAMPLES} per stage "
                          "(search.THOROUGH, usf-fast search --thorough)", stacklevel=3)
        # the model's noise schedule, parameterisation and sample shape are part of what a log is
        # about: another model's log is never reused
        header = dict(self.config.identity(self.space, self.metric_name), shape=list(self.shape),
                      model={"noise_schedule": self.ns.fingerprint(), "prediction": model.prediction,
                             "output": fingerprint})
        self.log = SearchLog(c.log_path, header, resume=c.resume, writer=(self.rank == 0))
        self.cache = self.log.cached()
        self._twins_dropped = 0   # other predictions `to_solve` left out (diverged): their trials go to the others
        self.requested = self.new = 0
        self.deadline = None if c.max_minutes is None else self.t_begin + 60.0 * c.max_minutes
        self.rng = np.random.default_rng(c.seed)
        width = self.space.feature_size if c.probe else self.space.encoding_size
        self.regressor = Predictor(width, seed=c.seed)
        self.improver = ImprovementPredictor(2 * width, seed=c.seed)
        self.gp = GPPredictor()
        self.probes: dict = {}    # schedule_key -> Gaussian-probe errors
        self.rows: dict = {}      # schedule_key -> predictor input
        self.lineage: list = []   # (parent row, parent metric, child row, child metric), one fidelity per pair
        self.curve: list = []
        self.taus: list = []
        self.cost: dict = {}
        self.bar = None
        self._bar_rows = 0
        self.stopped_early = False   # max_minutes ran out
        self.ref_tag = ""            # the reference's steps in the fidelity names once raised ("@ref100")
        self.dropped: list = []      # presets left out of the baseline: their samples diverged
        self.reference: dict = {}

    def _noise_sets(self, c: SearchConfig, rows: int) -> dict:
        """The search's noise sets: stage 1, stage 2, the held-out samples in two (the winner is
        chosen on "choose", its gain measured on "report"), stage 3. Noise seeds 1000·seed + 1, 2,
        3 for stage 1, stage 2 and the choice half (the held-out set's before it was split), + 4 for
        stage 3, + 5 for the report half. Each half holds every one of the `rows` prompts."""
        if c.heldout < 2 * rows:
            raise ValueError(f"heldout={c.heldout}: must be at least {2 * rows}, two of each of the {rows} prompts (half "
                             "the held-out samples choose the winner, half measure its gain)")
        self.report_n = max(rows, c.heldout // 2 // rows * rows)
        named = [("s1", c.samples[0], 1), ("s2", c.samples[1], 2), ("choose", c.heldout - self.report_n, 3),
                 ("report", self.report_n, 5)]
        named += [(f"s{i + 1}", n, i + 2) for i, n in enumerate(c.samples[2:], 2)]
        return {name: NoiseSet(self.shape, n, 1000 * c.seed + k, name, c.reference_nfe, c.reference_dtype)
                for name, n, k in named}

    @functools.cached_property
    def presets(self) -> list[tuple[str, Schedule]]:
        """`preset_candidates` for this search's NFE and time range (built once)."""
        return preset_candidates(self.ns, self.config.nfe, self.space.t_start, self.space.t_end)

    @staticmethod
    def _shape(shape, model) -> tuple:
        if shape is None:
            if model.sample_shape is None:
                raise ValueError("shape: give the per-sample shape (e.g. (3, 32, 32)); this model does not record one "
                                 "(DiffusionModel(..., sample_shape=...))")
            shape = model.sample_shape
        return tuple(int(v) for v in shape)

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, schedules: list[Schedule], fidelity: str, stage: str, count: bool = True) -> list[float]:
        """Metric of every schedule on the `fidelity` noise set; cached (and logged) by schedule key.
        `count`: the evaluations count against the budget (the held-out comparison does not)."""
        keys = [schedule_key(s) for s in schedules]
        fid = fidelity + self.ref_tag
        todo, seen = [], set()
        for s, k in zip(schedules, keys):
            if (k, fid) not in self.cache and k not in seen:
                todo.append((s, k))
                seen.add(k)
        if todo:
            self._evaluate_new(todo, fidelity, stage)
        if count:
            self.requested += len(schedules)
        if self.bar is not None and self.model.rows != self._bar_rows:
            self.bar.update(self.model.rows - self._bar_rows)
            self._bar_rows = self.model.rows
        return [self.cache[(k, fid)] for k in keys]

    def _evaluate_new(self, todo: list, fidelity: str, stage: str) -> None:
        """Run the uncached ones, chunk by chunk; under torchrun each process takes every world-th
        chunk and the results are gathered (chunks are the same whatever the number of processes)."""
        c = self.config
        chunks = [todo[i:i + c.chunk] for i in range(0, len(todo), c.chunk)]
        mine = {}
        for ci, part in enumerate(chunks):
            if ci % self.world != self.rank:
                continue
            t0 = time.perf_counter()
            vals = evaluate_schedules(self.model, [s for s, _ in part], self.sets[fidelity], self.metric,
                                      (self.space.t_start, self.space.t_end), chunk=c.chunk, dtype=c.dtype,
                                      backend=c.backend, device=self.device)
            dt = (time.perf_counter() - t0) / len(part)
            mine[ci] = [(k, v, dt) for (_, k), v in zip(part, vals)]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, mine)
            for d in gathered:
                mine.update(d)
        by_key = {k: (v, dt) for ci in sorted(mine) for k, v, dt in mine[ci]}
        for s, k in todo:
            v, dt = by_key[k]
            self.cache[(k, fidelity + self.ref_tag)] = v
            self.log.add(k, s.to_dict(), fidelity + self.ref_tag, v, dt, stage)
        self.new += len(todo)

    # ---- what the predictors see ------------------------------------------------------------
    def probe_of(self, s: Schedule, k: str) -> np.ndarray:
        if k not in self.probes:
            self.probes[k] = gaussian_probe(s, self.ns)
        return self.probes[k]

    def row_of(self, s: Schedule, k: str) -> np.ndarray:
        """The predictor's input for schedule s of key k (computed once per schedule)."""
        if k not in self.rows:
            self.rows[k] = self.space.features(s, self.probe_of(s, k)) if self.config.probe else self.space.encode(s)
        return self.rows[k]

    def _rows(self, props: _Proposals) -> np.ndarray:
        return np.stack([self.row_of(s, k) for s, k in zip(props.schedules, props.keys)])

    # ---- evolution -------------------------------------------------------------------------
    def propose(self, parents: list, known: set, known_p: np.ndarray) -> _Proposals:
        """Up to `proposals` new children by mutation (60 %), crossover (30 %) and immigration;
        none already evaluated, none a functional near-copy (Gaussian-probe errors within `novelty`
        of an evaluated schedule's or another proposal's)."""
        c, rng, space = self.config, self.rng, self.space
        out = _Proposals()
        keys = set()
        props_p = np.empty((c.proposals, known_p.shape[1]))
        for _ in range(c.proposals * 3):
            if len(out.schedules) >= c.proposals:
                break
            r = rng.random()
            if r < 0.6 or len(parents) < 2:
                a = int(rng.integers(0, len(parents)))
                child = space.mutate(parents[a], rng)
            elif r < 0.9:
                a, b = (int(v) for v in rng.choice(len(parents), 2, replace=False))
                child = space.crossover(parents[a], parents[b], rng)
            else:
                a, child = len(parents), space.random(rng)
            k = schedule_key(child)
            if k in known or k in keys:
                continue
            if c.novelty > 0:
                pc = self.probe_of(child, k)
                near = np.abs(np.concatenate([known_p, props_p[:len(out.schedules)]]) - pc).max(axis=1)
                if near.min() < c.novelty:
                    continue
                props_p[len(out.schedules)] = pc
            out.schedules.append(child)
            out.owner.append(a)
            out.keys.append(k)
            keys.add(k)
        return out

    def choose(self, props: _Proposals, parents: list, parent_keys: list, pool: list, n_pick: int) -> list[int]:
        """Indices of the proposals to evaluate, by the configured predictor (or at random)."""
        c = self.config
        scores = None
        guided = c.use_predictor
        if guided and c.predictor == "improve" and len(self.lineage) >= WARM_PAIRS:
            fp = np.stack([p for p, _, _, _ in self.lineage])
            fc = np.stack([ch for _, _, ch, _ in self.lineage])
            self.improver.fit(np.concatenate([fc, fc - fp], 1), [mc for _, _, _, mc in self.lineage],
                              [mp for _, mp, _, _ in self.lineage])
            self.taus.append(self.improver.tau)
            fx = self._rows(props)
            fpar = np.stack([self.row_of(parents[o], parent_keys[o]) if o < len(parents) else fx[i]
                             for i, o in enumerate(props.owner)])
            scores = self.improver.predict(np.concatenate([fx, fx - fpar], 1))
        elif guided and c.predictor == "gp" and len(self.lineage) >= WARM_PAIRS:
            self.gp.fit(np.stack([self.row_of(s, k) for s, _, k in pool]), [m for _, m, _ in pool])
            self.taus.append(self.gp.tau)
            # one batch for the whole generation by expected improvement over the best so far (as
            # the GP sees it), each pick believed before the next (docs/search.md)
            return self.gp.batch_expected_improvement(self._rows(props), float(self.gp.targets.min()), n_pick)
        elif guided and c.predictor in ("improve", "gp") and c.probe:
            # before the predictor has its pairs: a child whose closed-form error (mean log10 over
            # the probe's scales) rises above its parent's is unlikely to beat it
            pm = np.array([self.probe_of(s, k).mean() for s, k in zip(props.schedules, props.keys)])
            ppar = np.array([self.probe_of(parents[o], parent_keys[o]).mean() if o < len(parents) else pm[i]
                             for i, o in enumerate(props.owner)])
            scores = pm - ppar
        elif guided and c.predictor == "metric" and len(pool) >= 16:
            self.regressor.fit(np.stack([self.row_of(s, k) for s, _, k in pool]), [m for _, m, _ in pool])
            self.taus.append(self.regressor.tau)
            scores = self.regressor.predict(self._rows(props))
        return _pick_per_parent(props.owner, n_pick, self.rng, scores, c.screen_for_picks)

    def evolve(self, pool: list, fidelity: str, stage: str, until: int) -> None:
        """Generations on `fidelity` until `until` evaluations are requested. pool: list of
        (schedule, metric, key), grown in place."""
        c = self.config
        known = {k for _, _, k in pool}
        known_p = np.stack([self.probe_of(s, k) for s, _, k in pool])
        while self.requested < until:
            if self.deadline is not None and past(self.deadline, self._sum):   # every process stops together
                self.stopped_early = True
                return
            ranked = sorted((p for p in pool if math.isfinite(p[1])), key=lambda p: p[1]) or pool
            parents = _diverse_parents([(s, m) for s, m, _ in ranked], c.population, self.space)
            key_of = {id(s): k for s, _, k in pool}   # every pool schedule is alive here
            metric_of = {id(s): m for s, m, _ in pool}
            parent_keys = [key_of[id(s)] for s in parents]
            props = self.propose(parents, known, known_p)
            if not props.schedules:
                return
            n_pick = min(c.per_generation, until - self.requested, len(props.schedules))
            chosen = self.choose(props, parents, parent_keys, pool, n_pick)
            picks = [props.schedules[i] for i in chosen]
            pick_keys = [props.keys[i] for i in chosen]
            vals = self.evaluate(picks, fidelity, stage)
            if c.use_predictor and c.predictor in ("improve", "gp"):
                for i, k, v in zip(chosen, pick_keys, vals):
                    if props.owner[i] < len(parents):
                        par = parents[props.owner[i]]
                        self.lineage.append((self.row_of(par, parent_keys[props.owner[i]]), metric_of[id(par)],
                                             self.row_of(props.schedules[i], k), v))
            pool.extend(zip(picks, vals, pick_keys))
            known.update(pick_keys)
            known_p = np.concatenate([known_p, np.stack([self.probe_of(s, k) for s, k in zip(picks, pick_keys)])])
            if fidelity == "s1":
                self.curve.append((self.requested, min(m for _, m, _ in pool)))

    # ---- cost: network rows by phase ----------------------------------------------------------
    def cost_estimate(self, seeds: list) -> dict:
        """`SearchConfig.cost_estimate` for this model, metric and space (an upper bound)."""
        presets_ = self.presets
        seeded = {schedule_key(s) for s in seeds}
        return self.config.cost_estimate(len(presets_), guided=self.model.guidance_scale is not None,
                                         needs_reference=getattr(self.metric, "needs_reference", False),
                                         n_unseeded=sum(schedule_key(s) not in seeded for _, s in presets_),
                                         check_rows=self.model.cond_rows, processes=self.world)

    def _rows_now(self) -> tuple[int, int]:
        return self.model.rows, sum(ns.reference_rows for ns in self.sets.values())

    def _end_phase(self, name: str) -> None:
        """Rows since the last phase ended; the reference solves are counted apart."""
        rows, ref = self._rows_now()
        r0, f0 = self._phase_start
        self.cost[name] = self.cost.get(name, 0) + (rows - r0) - (ref - f0)
        self.cost["reference"] = self.cost.get("reference", 0) + (ref - f0)
        self._phase_start = (rows, ref)

    def _cost_total(self) -> dict:
        stages = [f"stage{i + 1}" for i in range(len(self.config.samples))]
        cost = {k: self.cost.get(k, 0) for k in (*stages, *(["solve"] if self.config.solve else []), "heldout",
                                                  "reference")}
        if self.world > 1:   # each process ran its share of the chunks
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, cost)
            cost = {k: sum(g[k] for g in gathered) for k in cost}
        cost["total"] = sum(cost.values())
        return cost

    # ---- the stages ------------------------------------------------------------------------
    def _pool(self, schedules: list[Schedule], fidelity: str, stage: str) -> list:
        return [(s, m, schedule_key(s)) for s, m in zip(schedules, self.evaluate(schedules, fidelity, stage))]

    def run(self) -> SearchResult:
        """Stage 1: the presets, then evolution on few samples; each later stage: the last one's
        survivors on more samples, evolution continues there; final: the finalists and the
        presets on held-out noise."""
        c = self.config
        if self.requested or self.new:
            raise ValueError("S3Search.run: a search object runs once; make a new S3Search (its log resumes it)")
        if self.log.result is not None:   # a finished search: read back, nothing replayed
            self._end_phase("stage1")      # the network check
            return _result_from_record(self.log.result, self)
        seeds = self.seeds()
        est = self.cost_estimate(seeds)
        self._estimate = dict(est, seeds=len(seeds))
        if c.progress and self.rank == 0:
            phases = ", ".join(f"{k.replace('stage', 'stage ').replace('heldout', 'held-out table')} {v:,}"
                               for k, v in est.items() if k != "total")
            print(f"S3 NFE {c.nfe}: {c.budget} search evaluations ({len(seeds)} of them preset seeds), at most "
                  f"{est['total']:,} network rows ({phases}); what the log holds is not rerun", flush=True)
            # counted in network rows (the held-out table and the references included), so the ETA
            # is the whole search's
            self.bar = tqdm(total=est["total"], desc=f"S3 NFE {c.nfe}", unit="row", unit_scale=True)
            self._bar_rows = self.model.rows
        pool1 = self._pool(seeds, "s1", "seed")
        if not any(math.isfinite(m) for _, m, _ in pool1):
            raise ValueError(f"every preset schedule at NFE {c.nfe} produced NaN/inf samples (or metric values): the "
                             "model returns NaN/inf, or the metric fails; the evaluations are in the log")
        if isinstance(self.metric, ReferenceDistance):   # its error is an RMS distance, like the metric
            pool1 = self.check_reference(seeds, pool1)
        self.curve.append((self.requested, min(m for _, m, _ in pool1)))
        pool = pool1
        for i, (end, share) in enumerate(zip(c.stage_ends(), c.stage_shares())):
            fidelity, stage = f"s{i + 1}", f"stage{i + 1}"
            # a stage spends at most its own share (an earlier stage that ran out of proposals
            # does not hand its rest to this one's dearer samples: the printed bound holds)
            until = min(end, self.requested + share) if i else end
            if i == len(c.samples) - 1:   # a raised reference's rows, when no solve stage pays for them
                until -= self._last_stage_cut()
            if i:   # the best of the last stage, re-evaluated on this stage's (more) samples
                survivors = [s for s, _, _ in sorted(pool, key=lambda p: p[1])[:c.survivors(i)]]
                pool = self._pool(survivors, fidelity, stage)
            self.evolve(pool, fidelity, stage, until)
            self._end_phase(stage)
        result = self.final([s for s, _, _ in sorted(pool, key=lambda p: p[1])[:c.finalists]])
        if not self.stopped_early:   # a search cut by max_minutes is continued by a resume, not read back
            self.log.finish(_result_record(result))
        if self.bar is not None:
            self.bar.total = self.bar.n   # the estimate is an upper bound
            self.bar.close()
        return result

    def check_reference(self, seeds: list[Schedule], pool: list) -> list:
        """Metric ref: measure the reference solve's own error (`NoiseSet.reference_error`) against
        the metric it serves (the best seed's on stage 1); while it exceeds `REFERENCE_TOLERANCE`
        of that, double the reference's steps (every noise set; the seeds are evaluated again
        against the finer reference, not counted in the budget) up to `REFERENCE_MAX_FACTOR` ×
        reference_nfe, beyond which the search is refused naming reference_nfe. Returns the seeds'
        pool on the reference kept."""
        c = self.config
        s1, (t0, t1) = self.sets["s1"], (self.space.t_start, self.space.t_end)
        steps = c.reference_nfe
        while True:
            err = s1.reference_error(self.model, t0, t1, self.device, s1.n)
            scale = min((m for _, m, _ in pool if math.isfinite(m)), default=math.inf)
            if err <= REFERENCE_TOLERANCE * scale:
                break
            if 2 * steps > REFERENCE_MAX_FACTOR * c.reference_nfe:
                raise ValueError(
                    f"reference_nfe={c.reference_nfe}: the reference solve is not accurate enough for this model even "
                    f"at {steps} steps: its own error {err:.3g} RMS is {err / scale:.0%} of the best preset's metric "
                    f"{scale:.3g} on stage 1 (at most {REFERENCE_TOLERANCE:.0%}); give a larger reference_nfe "
                    "(--reference-nfe), or another metric")
            steps *= 2
            self.ref_tag = f"@ref{steps}"
            for noise_set in self.sets.values():
                noise_set.set_reference_nfe(steps)
            pool = [(s, m, k) for s, m, k in zip(seeds, self.evaluate(seeds, "s1", "seed", count=False),
                                                 (schedule_key(s) for s in seeds))]
        self.reference = {"steps": steps, "requested": c.reference_nfe, "error": err,
                          "spacing": reference_spacing(self.ns), "dtype": str(c.reference_dtype).replace("torch.", "")}
        if steps != c.reference_nfe:
            warnings.warn(f"reference_nfe={c.reference_nfe}: the reference solve's own error was more than "
                          f"{REFERENCE_TOLERANCE:.0%} of the best preset's metric; raised to {steps} steps (error "
                          f"{err:.3g} RMS)", RuntimeWarning, stacklevel=4)
        return pool

    def seeds(self) -> list[Schedule]:
        """The search space's preset seeds, or when stage 1's share of the budget is smaller, that
        many of them with the lowest Gaussian-probe error (`search.probe`; in their own order), so
        the budget bounds every evaluation."""
        seeds = self.space.seeds()
        room = self.config.stage_ends()[0]
        if len(seeds) <= room:
            return seeds
        err = [float(self.probe_of(s, schedule_key(s)).mean()) for s in seeds]
        keep = sorted(np.argsort(err, kind="stable")[:room])
        return [seeds[i] for i in keep]

    def table_presets(self) -> list[tuple[str, Schedule]]:
        """The presets of the held-out table: every preset over every spacing, or with
        `heldout_presets` = k the k that score best on stage 1's noise (read from the search's
        evaluations; presets the search did not seed with are evaluated there first)."""
        c = self.config
        presets_ = self.presets
        if c.heldout_presets is None or c.heldout_presets >= len(presets_):
            return presets_
        _, ranked = self._preset_ranking()
        return [presets_[i] for i in sorted(ranked[:c.heldout_presets])]

    def _preset_ranking(self) -> tuple[list[float], list[int]]:
        """Every preset's metric on stage 1's noise (read from the search's evaluations; presets the
        search did not seed with are evaluated there first), and the indices of those that did not
        diverge (`_drop_diverged`), best first."""
        presets_ = self.presets
        screen = self.evaluate([s for _, s in presets_], "s1", "final", count=False)
        bad = self._drop_diverged([lbl for lbl, _ in presets_], screen, "s1")
        return screen, sorted((i for i in range(len(presets_)) if i not in bad), key=lambda i: screen[i])

    def _drop_diverged(self, labels: list[str], values: list[float], fidelity: str) -> set[int]:
        """Indices of the presets whose samples diverged on this noise: metric NaN/inf, or (metric
        ref) a distance to the reference over `DIVERGED` × the reference samples' own RMS (no
        accuracy, the samples blew up), else over 1000 × the presets' median. Dropped from the
        baseline, with a warning naming them."""
        bad = self._diverged(values, fidelity)
        if len(bad) == len(values):   # every preset: the model or the metric is the problem, not the presets
            return set()
        new = [labels[i] for i in sorted(bad) if labels[i] not in self.dropped]
        if new:
            self.dropped += new
            warnings.warn(f"{len(new)} preset(s) diverged (samples NaN/inf or blown up) and are left out of the "
                          f"baseline: {', '.join(new)}", RuntimeWarning, stacklevel=4)
        return bad

    def _diverged(self, values: list[float], fidelity: str, baseline: list[float] | None = None) -> set[int]:
        """Indices of `values` (metrics on the noise set `fidelity`) whose samples diverged: NaN/inf,
        or (metric ref) over `DIVERGED` × the reference samples' own RMS, else over 1000 × the
        median of `baseline` (default: of `values` themselves)."""
        if isinstance(self.metric, ReferenceDistance):
            ref = self.sets[fidelity].reference(self.model, self.space.t_start, self.space.t_end, self.device)
            limit = DIVERGED * float(ref.double().pow(2).mean().sqrt())
        else:   # another metric: only a value far beyond the others' (and NaN/inf) counts
            finite = [v for v in (values if baseline is None else baseline) if math.isfinite(v)]
            median = float(np.median(finite)) if finite else math.inf
            limit = 1000.0 * median if median > 0 else math.inf
        return {i for i, v in enumerate(values) if not math.isfinite(v) or v > limit}

    def final(self, finalists: list[Schedule]) -> SearchResult:
        """The finalists and the presets (`table_presets`) on the choice half of the held-out noise
        (not counted in the budget) choose the winner and the best preset; both are measured on the
        report half (`report`), and a searched winner that is worse than the preset there — by the
        whole 95% paired interval with metric ref, by its value with other metrics — gives the
        preset back (docs/search.md, "Numbers you can trust")."""
        c = self.config
        solved = self.solve(self.to_solve(finalists)) if c.solve else []
        presets_ = self.table_presets()
        # a finalist that is a preset is that preset, labelled so (in the table, or added to it)
        in_table = {schedule_key(s) for _, s in presets_}
        every = {schedule_key(s): lbl for lbl, s in self.presets}
        presets_ = presets_ + [(every[schedule_key(s)], s) for s in finalists
                               if schedule_key(s) in every and schedule_key(s) not in in_table]
        finalists = [s for s in finalists if schedule_key(s) not in every] + solved
        labels = _finalist_labels(finalists) + [lbl for lbl, _ in presets_]
        cands = finalists + [s for _, s in presets_]
        held = self.evaluate(cands, "choose", "final", count=False)
        bad = {len(finalists) + i for i in self._drop_diverged([lbl for lbl, _ in presets_], held[len(finalists):], "choose")}
        labels, cands, held = ([v for i, v in enumerate(xs) if i not in bad] for xs in (labels, cands, held))
        presets_ = [p for i, p in enumerate(presets_) if len(finalists) + i not in bad]
        table = sorted(zip(labels, held), key=lambda p: p[1])
        win = int(np.argmin(held))
        pre = min(range(len(finalists), len(cands)), key=lambda i: held[i])
        report, ci = self.report([cands[win], cands[pre]] if win != pre else [cands[pre]])
        note = ""
        # the searched schedule lost the report: not finite there, or no better than a finite preset
        if win != pre and (not math.isfinite(report[0]) or (math.isfinite(report[1]) and report[0] >= report[1])):
            lost = (f"the searched schedule chosen on the choice set ({labels[win]}, {held[win]:.5g} there) did not beat "
                    f"{labels[pre]} on the report set ({report[0]:.5g} vs {report[1]:.5g})")
            if ci is None or not ci[1] >= 0:   # credibly worse (or no interval to tell): the choice was lucky
                note = lost + (": the preset is returned" if ci is None else
                               f", worse by the whole 95% interval ({ci[0]:+.1%} … {ci[1]:+.1%}): the preset is returned")
                win, report, ci = pre, report[1:], None
            else:   # a loss the report set cannot tell from its noise: the choice set's pick stands
                note = (lost + f", but within its noise (95% interval {ci[0]:+.1%} … {ci[1]:+.1%}): the searched "
                        "schedule is kept and its improvement reported as measured")
        self._end_phase("heldout")
        best_preset = (labels[pre], report[-1])
        best = cands[win]
        best = best.replace(name=f"s3 NFE {c.nfe}" if win < len(finalists) else best.name,
                            meta=dict(best.meta, search={"metric": self.metric_name, "heldout_metric": report[0],
                                                         "best_preset": list(best_preset), "seed": c.seed},
                                      noise_schedule=self.ns.fingerprint()))
        return SearchResult(best=best, best_metric=report[0],
                            best_source="search" if win < len(finalists) else labels[win], nfe=c.nfe,
                            table=table, best_preset=best_preset, evaluations=self.requested,
                            new_evaluations=self.new, seconds=time.perf_counter() - self.t_begin, curve=self.curve,
                            taus=self.taus, log_path=self.log.path, heldout_evaluations=len(cands) + len(report),
                            cost=self._cost_total(), presets_compared=len(presets_), best_label=labels[win],
                            reference=dict(self.reference), dropped_presets=list(self.dropped), improvement_ci=ci,
                            report_samples=self.report_n, note=note)

    def to_solve(self, finalists: list[Schedule]) -> list[Schedule]:
        """The schedules the solve stage fits: the best `solve_finalists` finalists, then the
        `solve_presets` presets that score best on stage 1's noise (read from the search's
        evaluations, as `table_presets` ranks them; diverged presets left out), then, with
        `solve_other_prediction`, each of those presets' `twin` (UniPC-3 with the other prediction
        at the preset's times; left out where it diverges on stage 1's noise: UniPC's noise
        prediction on a flow model), each structure once: at most `SearchConfig.schedules_solved`."""
        c = self.config
        out = list(finalists[:c.solve_finalists])
        if c.presets_solved:
            every = [s for _, s in self.presets]
            screen, ranked = self._preset_ranking()
            if c.heldout_presets is not None and c.heldout_presets < len(every):
                self._end_phase("heldout")   # the held-out table's own screen (`table_presets` reads it back)
            ranked = [i for i in ranked if math.isfinite(screen[i])]   # (all diverged: none is dropped)
            seen = {schedule_key(s) for s in out}
            chosen = _unseen((every[i] for i in ranked), seen, c.presets_solved)
            out += chosen
            if c.solve_other_prediction:   # each twin once, none that is a finalist or a preset solved already
                twins = _unseen((twin(p, self.ns) for p in chosen), seen)
                if twins:   # one that diverges on stage 1's noise is not worth its trials: they go to the others
                    bad = self._diverged(self.evaluate(twins, "s1", "final", count=False), "s1",
                                         baseline=[screen[i] for i in ranked])
                    out += [t for i, t in enumerate(twins) if i not in bad]
                    self._twins_dropped = len(bad)
        return out

    def solve(self, finalists: list[Schedule]) -> list[Schedule]:
        """The solve stage: each of `finalists` with its step weights fitted to a teacher along its
        own trajectory and its times tuned by Nelder–Mead (`solve.solve_times`, `solve` trials), on
        noise of its own (seed 1000·seed + 6; the held-out halves stay unseen). One teacher solve
        serves every finalist. Each solved schedule goes to the log as it is finished, and a resumed
        search reads it back (no network row); a schedule whose trials `max_minutes` cut short is
        left out and not logged (the search has stopped early: a resume solves it again). Under
        torchrun the noise is split over the processes in whole blocks of the prompts' rows, each
        solves its part's teacher and trajectories, and the fits and scores are summed over them
        (`distributed.process_sum`): every process runs the same trials to the same schedules, and
        `max_minutes` stops them all at the same trial."""
        c = self.config
        rows = self.model.cond_rows
        n = max(rows, c.solve_samples // rows * rows)
        noise = torch.randn((n, *self.shape), generator=torch.Generator().manual_seed(1000 * c.seed + 6),
                            dtype=torch.float64)
        total = None
        if self.split_solve(n):   # block b (rows b·P … b·P + P − 1, one per prompt) to process b mod world
            mine = [b * rows + j for b in range(self.rank, n // rows, self.world) for j in range(rows)]
            noise, total = noise[mine], self._sum
        noise = noise.to(self.device)
        trials = self._affordable_trials(len(finalists), n)
        out, teacher = [], None
        deadline = self.deadline if self.world == 1 or total is not None else None
        for s in finalists:
            done = self.log.solved.get(schedule_key(s))
            if done is not None and done["trials"] == trials:
                try:
                    out.append(Schedule.from_dict(done["schedule"]))
                except (ValueError, KeyError, TypeError) as e:
                    nth = list(self.log.solved).index(done["key"]) + 1
                    raise ValueError(f"log {self.log.path}: its line {nth} of type 'solved' holds no valid schedule "
                                     f"({e}); delete that line and resume (the schedule is solved again)") from None
                continue
            if deadline is not None and past(deadline, total):
                self.stopped_early = True
                break
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if teacher is None:
                    teacher = DenseTeacher(self.model, noise, self.space.t_start, self.space.t_end, steps=c.solve_teacher,
                                           dtype=c.reference_dtype)
                try:   # the student's trajectories in the search's dtype: how the schedule will be run
                    solved = solve_times(self.model, s, noise, teacher, evaluations=trials, ridge=c.solve_ridge,
                                         deadline=deadline, total=total, dtype=c.dtype)
                except TimeUp:
                    self.stopped_early = True
                    break
            self.log.add_solved(schedule_key(s), trials, solved.to_dict(), time.perf_counter() - t0)
            out.append(solved)
        if self.bar is not None and self.model.rows != self._bar_rows:
            self.bar.update(self.model.rows - self._bar_rows)
            self._bar_rows = self.model.rows
        self._end_phase("solve")
        return out

    def split_solve(self, n: int) -> bool:
        """Whether the solve stage's `n` noises are split over the processes: under torchrun, when
        every process gets at least one block of the prompts' rows (otherwise every process runs
        the whole stage, as `SearchConfig.cost_estimate` counts it)."""
        return self.world > 1 and n // self.model.cond_rows >= self.world

    def _reference_overrun(self) -> int:
        """Network rows the search makes beyond its printed bound (`cost_estimate`) because the
        reference check raised the reference's steps: the references' rows beyond the estimate's
        (those still to come counted at the raised steps) and stage 1's seeds evaluated again
        against each finer reference; 0 when the reference kept its steps. Computed from the steps
        and the estimate, not from rows spent, so a resumed search makes the same cuts. Under
        torchrun 0 (each process counts its own rows)."""
        c = self.config
        s1 = self.sets.get("s1")
        if self._estimate is None or self.world > 1 or s1 is None or s1.reference_nfe == c.reference_nfe:
            return 0
        k = self._pass_rows
        later = getattr(self.metric, "needs_reference", False)   # the noise sets' references still to come
        refs = (sum(ns.reference_rows for ns in self.sets.values())
                + later * sum(ns.pending_reference_rows for ns in self.sets.values()) * k)
        doublings = int(round(math.log2(s1.reference_nfe / c.reference_nfe)))
        again = doublings * self._estimate["seeds"] * s1.n * c.nfe * k
        return max(0, refs - self._estimate["reference"]) + again

    @property
    def _pass_rows(self) -> int:
        """Network rows per sample and evaluation: 2 under classifier-free guidance."""
        return 2 if self.model.guidance_scale is not None else 1

    def _cut_note(self, within: bool) -> str:
        """The end of a raised reference's warning: whether the cut keeps the search within its bound."""
        how = "so that the search stays within" if within else "and the search still passes"
        return (f"{how} its bound of {self._estimate['total']:,} network rows (the reference solve took "
                f"{self.sets['s1'].reference_nfe} steps, not reference_nfe={self.config.reference_nfe})")

    def _last_stage_cut(self) -> int:
        """Evaluations the last stage gives up so that a search without a solve stage stays within
        its printed bound when the reference check raised the reference's steps
        (`_reference_overrun`; with a solve stage its trials pay instead, `_affordable_trials`),
        with a warning; at most the stage's evolution (its re-evaluated survivors stay)."""
        c = self.config
        over = self._reference_overrun()
        if c.solve or over <= 0:
            return 0
        last = len(c.samples) - 1
        per_evaluation = c.samples[last] * c.nfe * self._pass_rows
        room = c.stage_shares()[last] - (c.survivors(last) if last else self._estimate["seeds"])
        cut = min(max(0, room), math.ceil(over / per_evaluation))
        warnings.warn(f"budget={c.budget}: {cut} fewer evaluations in stage {last + 1}, "
                      f"{self._cut_note(cut * per_evaluation >= over)}", RuntimeWarning, stacklevel=4)
        return cut

    def _affordable_trials(self, schedules: int, n: int) -> int:
        """The solve stage's trials per schedule: `solve`, and the trials of the other predictions
        `to_solve` left out because they diverged shared by the `schedules` it does fit, or fewer where the
        search would otherwise pass its printed bound (`cost_estimate`): the rows of a raised
        reference (`_reference_overrun`) come out of the solve's trials (with a warning; at least one
        trial, the weights at the schedule's own times)."""
        c = self.config
        if not schedules:
            return c.solve
        share = c.solve * (schedules + self._twins_dropped) // schedules
        per_trial = n * c.nfe * self._pass_rows
        # schedules not solved (fewer finalists or presets than asked for) and the rounding leave rows unspent
        spare = (c.solve * max(c.schedules_solved, schedules) - share * schedules) * per_trial
        over = self._reference_overrun() - spare
        trials = share if over <= 0 else max(1, share - math.ceil(over / (per_trial * schedules)))
        if trials < share:
            warnings.warn(f"solve={c.solve}: {trials} trials per solved schedule instead of {share}, "
                          f"{self._cut_note(over <= (share - 1) * per_trial * schedules)}", RuntimeWarning,
                          stacklevel=4)
        return trials

    def report(self, schedules: list[Schedule]) -> tuple[list[float], tuple | None]:
        """The metric of the chosen schedule and the best preset (or the preset alone) on the report
        set, and with metric ref a 95% paired bootstrap interval of the improvement (the same
        resampled noise for both)."""
        if not isinstance(self.metric, ReferenceDistance) or len(schedules) < 2:
            return self.evaluate(schedules, "report", "final", count=False), None
        errors = _PerSampleErrors()
        vals = evaluate_schedules(self.model, schedules, self.sets["report"], errors, (self.space.t_start, self.space.t_end),
                                  chunk=self.config.chunk, dtype=self.config.dtype, backend=self.config.backend,
                                  device=self.device)
        if len(errors.per_sample) != 2 or not all(math.isfinite(v) for v in vals):
            return vals, None
        e_w, e_p = errors.per_sample
        idx = np.random.default_rng(self.config.seed).integers(0, len(e_w), size=(2000, len(e_w)))
        gains = 1.0 - np.sqrt(e_w[idx].mean(axis=1) / e_p[idx].mean(axis=1))
        return vals, (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))


class _PerSampleErrors(ReferenceDistance):
    """metric ref that also keeps each sample's mean squared error (for the bootstrap)."""

    def __init__(self):
        self.per_sample = []

    def __call__(self, samples, reference):
        d = (samples.double() - reference.double()).pow(2).reshape(samples.shape[0], -1).mean(dim=1)
        self.per_sample.append(d.numpy())
        return float(d.mean().sqrt())


def describe(schedule: Schedule) -> str:
    """What a schedule is, in a few words: prediction type, the steps' orders, corrector, AFS."""
    preds = sorted({st.prediction for st in schedule.steps})
    correctors = sorted({st.corrector for st in schedule.steps} - {"none"})
    parts = [f"{'/'.join(preds)} prediction", "orders " + "-".join(str(st.order) for st in schedule.steps)]
    parts += [f"{c} corrector" for c in correctors] + (["AFS"] if schedule.afs else [])
    parts += ["learned weights"] if schedule.has_weights else []
    return ", ".join(parts)


def _unseen(schedules, seen: set, most: int | None = None) -> list[Schedule]:
    """The first `most` (default all) of `schedules` whose key is not in `seen`, each structure once;
    their keys are added to `seen`."""
    out = []
    for s in schedules:
        if most is not None and len(out) >= most:
            break
        if schedule_key(s) not in seen:
            seen.add(schedule_key(s))
            out.append(s)
    return out


def _finalist_labels(finalists: list[Schedule]) -> list[str]:
    """'searched (what it is)' per finalist, numbered where two read the same (they differ in times)."""
    text = [f"searched ({describe(s)})" for s in finalists]
    return [t + (f" #{text[:i + 1].count(t)}" if text.count(t) > 1 else "") for i, t in enumerate(text)]


def _number(v: float):
    return v if math.isfinite(v) else None   # JSON has no inf: a schedule whose samples were NaN/inf


def _result_record(r: SearchResult) -> dict:
    """What a finished search's log keeps of its result (`SearchLog.finish`)."""
    return {"best": r.best.to_dict(), "best_metric": _number(r.best_metric), "best_source": r.best_source,
            "table": [[lbl, _number(v)] for lbl, v in r.table], "best_preset": [r.best_preset[0], _number(r.best_preset[1])],
            "evaluations": r.evaluations, "heldout_evaluations": r.heldout_evaluations, "curve": r.curve,
            "taus": [float(t) for t in r.taus], "presets_compared": r.presets_compared, "seconds": r.seconds,
            "best_label": r.best_label, "reference": r.reference, "dropped_presets": r.dropped_presets,
            "improvement_ci": list(r.improvement_ci) if r.improvement_ci else None, "report_samples": r.report_samples,
            "note": r.note}


def _result_from_record(rec: dict, search: "S3Search") -> SearchResult:
    """The `SearchResult` a finished search recorded, as this call returns it (no evaluation run now)."""
    inf = lambda v: math.inf if v is None else float(v)   # noqa: E731
    try:
        return SearchResult(best=Schedule.from_dict(rec["best"]), best_metric=inf(rec["best_metric"]),
                            best_source=rec["best_source"], nfe=search.config.nfe,
                            table=[(lbl, inf(v)) for lbl, v in rec["table"]],
                            best_preset=(rec["best_preset"][0], inf(rec["best_preset"][1])),
                            evaluations=rec["evaluations"], new_evaluations=0,
                            seconds=time.perf_counter() - search.t_begin, curve=[tuple(p) for p in rec["curve"]],
                            taus=rec["taus"], log_path=search.log.path, heldout_evaluations=rec["heldout_evaluations"],
                            cost=search._cost_total(), presets_compared=rec["presets_compared"],
                            best_label=rec.get("best_label", ""), reference=rec.get("reference") or {},
                            dropped_presets=rec.get("dropped_presets") or [],
                            improvement_ci=tuple(rec["improvement_ci"]) if rec.get("improvement_ci") else None,
                            report_samples=rec.get("report_samples", 0), note=rec.get("note", ""))
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"log {search.log.path}: its result line is damaged ({type(e).__name__}: {e}); remove that "
                         "last line and --resume replays the search from its evaluations") from None


def s3_search(model: DiffusionModel, nfe: int, *, space: SearchSpace | None = None, **options) -> SearchResult:
    """Search the best schedule of exactly `nfe` evaluations for `model`.

    Args (the fields of `SearchConfig`):
        metric: "ref" (RMS distance to a high-accuracy solution from the same noise; default),
            "exact" (analytic models), "fid" (metric_options: stats=, weights=), or a callable.
        budget: every search evaluation (candidate × fidelity): the preset seeds (the ones with the
            lowest Gaussian-probe error when stage 1's share is smaller), each stage's re-evaluated
            survivors and the evolution; the held-out comparison comes on top (and, if the
            reference is raised, the seeds once more).
        samples: noise samples per evaluation in stage 1, stage 2 (and a stage 3, successive
            halving: each stage re-evaluates the last one's `population` best on more samples and
            evolution continues there); heldout: the final comparison, split in two: the winner is
            chosen on one half and its gain over the best preset measured on the other.
        stage_split: fraction of the budget spent when each later stage starts (a number for two
            stages, two increasing numbers for three).
        finalists: stage 2's best schedules that go to the held-out comparison (default 4).
        heldout_presets: presets in the held-out comparison: None = every preset over every
            spacing; k = the k best on stage 1's noise (a cheaper table; the best preset is
            almost always among them, docs/experiments.md).
        use_predictor: False = plain evolution (the ablation baseline).
        predictor: "gp" (default: Gaussian process on the metric, `GPPredictor`; each generation's
            evaluations are one batch chosen by expected improvement over the best so far, each
            pick believed before the next: `GPPredictor.batch_expected_improvement`), "improve"
            (P(child beats its parent), `ImprovementPredictor`, trained on the search's (parent,
            child) pairs) or "metric" (regression on the metric, `Predictor`).
        probe: feed the predictor the Gaussian-probe errors of each schedule (`search.probe`) besides
            its encoding (False = the encoding alone, as in the paper); with predictor "gp" or "improve"
            the probe also screens the first generations, until the search has `WARM_PAIRS` (48)
            (parent, child) pairs (children whose probe error rises above their parent's come last).
        novelty: proposals whose Gaussian-probe errors all lie within this (log10) of an evaluated
            schedule's or another proposal's are functional near-copies and never evaluated
            (e.g. a relaxation edit on a first-order step); 0 disables.
        screen: where children are picked one per parent (the MLPs; the probe's first generations),
            each parent's evaluated child is drawn from the best 1/screen of that parent's proposals
            as they rank them; default 4 for "improve" and "metric" (their arg-min would chase their
            extrapolation errors), the arg-max for "gp" (its probe warm start).
        shape: per-sample shape (default: `model.sample_shape`, set for the embedded models).
        log_path / resume / max_minutes: persistence and a wall-clock stop (the log keeps
            everything; resuming continues).
        chunk: candidates evaluated in one batch (chunk × samples rows through the model).
        reference_nfe, reference_dtype: the reference solve of metric "ref" (UniPC-3, 50 steps on
            `metrics.reference_spacing`, float64 by default); its own error is measured against
            twice the steps and the steps raised while it exceeds 5% of the best seed's metric
            (`check_reference`); float32 makes it cheaper on a real network.
        solve: Nelder–Mead trials of the solve stage per schedule (default 64; 0: none): the best
            `solve_finalists` finalists (default 1; 0: none), the `solve_presets` presets best on
            stage 1's noise (None, the default: 1 with a solve stage) and, with
            `solve_other_prediction` (default True), each of those presets' twin (`solve.twin`:
            UniPC-3 with the other prediction, data <-> noise, at the preset's times; left out where
            it diverges on stage 1's noise, its trials shared by the others) get their step weights
            fitted to a teacher along their own
            trajectory and their times tuned (`usf_fast.search.solve`; docs/search.md, "The solve
            stage"), on `solve_samples` noises with a `solve_teacher`-step teacher and ridge
            `solve_ridge`; the solved schedules join the finalists in the held-out table. Costs
            (solve_teacher + 1 + solve × (solve_finalists + solve_presets × 2) × NFE) × solve_samples
            rows (× 1 for the presets without solve_other_prediction);
            each solved schedule is logged when finished (a resume reads it back).
        The defaults cost about 290,000 network rows at NFE 5, nine tenths of them in the solve stage;
        `**S3_ONLY` gives the S³ search alone at about the same rows (the defaults until
        2026-12-05), `**THOROUGH` the earlier ones (about 2.0 million), `**QUICK` at most 60,000.
        device: where the samples are computed (the reference solve too); the model's network
            must accept tensors there (the embedded models follow their input).
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(SearchConfig)}
    if unknown:
        raise ValueError(f"s3_search: unknown option(s) {sorted(unknown)}; the options are SearchConfig's fields: "
                         + ", ".join(f.name for f in dataclasses.fields(SearchConfig) if f.name != "nfe"))
    search = S3Search(model, SearchConfig(nfe=nfe, **options), space)
    finished = False
    try:
        result = search.run()
        finished = not search.stopped_early
        return result
    finally:
        search.log.close(finished=finished)
