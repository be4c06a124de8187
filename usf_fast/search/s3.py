"""S³: predictor-based solver-schedule search on the fast paths.

    result = s3_search(model, nfe=5, budget=600)
    result.best            # the Schedule with the lowest metric on held-out noise (searched or preset)

Loop (DESIGN.md §3): seed the population with the presets; each generation proposes many
candidates by mutation and crossover of the best ones (niched: near-copies of a better schedule
are not parents) and drops proposals that are functional near-copies of an evaluated schedule
(same Gaussian-probe errors, `search.probe`); the predictor (by default a Gaussian process),
retrained on every real evaluation so far on the schedules' encodings and probe errors, screens
them, and only the most promising are evaluated for real (the GP: a batch by expected improvement,
each pick believed before the next; batched evaluation: one dense-program batch per chunk of
candidates); the first generations are screened by the probe alone, one child per parent.
Stage 1 works on few samples; the survivors are re-evaluated on more samples and evolution
continues there.
The final choice is made — and every reported number measured — on a held-out noise set the
search never saw, against every preset over every spacing, so the result is never worse than
the best preset.

Every real evaluation is appended to a JSON-lines log; the search is deterministic for a seed, so
`resume=True` replays the logged evaluations (no re-evaluation) and continues where it stopped.
Under torchrun, chunks of candidates are spread over the processes and gathered, giving the same
result as one process.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import presets as P
from ..model import DiffusionModel
from ..schedule import Schedule
from .evaluate import NoiseSet, evaluate_schedules, make_metric
from .gp import GPPredictor
from .log import SearchLog
from .predictor import ImprovementPredictor, Predictor
from .probe import gaussian_probe
from .space import SearchSpace, schedule_key

__all__ = ["s3_search", "SearchResult", "PREDICTORS"]

PREDICTORS = ("improve", "metric", "gp")
WARM_PAIRS = 48   # (parent, child) pairs evaluated before the predictor takes over from the probe


@dataclass
class SearchResult:
    best: Schedule
    best_metric: float                      # on held-out noise
    best_source: str                        # "search" or the preset's label
    nfe: int
    table: list                             # (label, held-out metric), best first: searched top + presets
    best_preset: tuple                      # (label, held-out metric)
    evaluations: int                        # real evaluations requested by the search (cached or not)
    new_evaluations: int                    # evaluations actually run by this call
    seconds: float
    curve: list = field(default_factory=list)   # (evaluations used, best stage-1 metric so far)
    taus: list = field(default_factory=list)    # predictor Kendall τ per generation (held-out split)
    log_path: str | None = None

    @property
    def improvement(self) -> float:
        """Relative improvement of the result over the best preset on held-out noise."""
        return 1.0 - self.best_metric / self.best_preset[1]

    def summary(self) -> str:
        lines = [f"S3 search, NFE {self.nfe}: {self.evaluations} evaluations ({self.new_evaluations} run now), "
                 f"{self.seconds:.0f} s",
                 f"best: {self.best_source}  held-out metric {self.best_metric:.5g}",
                 f"best preset: {self.best_preset[0]}  {self.best_preset[1]:.5g}  "
                 f"(improvement {self.improvement:+.1%})", "", "held-out metric (lower is better):"]
        width = max(len(lbl) for lbl, _ in self.table[:15])
        lines += [f"  {lbl:{width}s}  {v:.5g}" for lbl, v in self.table[:15]]
        return "\n".join(lines)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                         "use device='cpu'")
    return dev


def _check_model(model: DiffusionModel, shape: tuple, device: torch.device, dtype: torch.dtype, t: float) -> None:
    """One model call on one sample before the search starts, so a network on another device or a wrong
    `shape` is a clear message instead of a failure inside the first batch."""
    try:
        with torch.no_grad():
            model.predict(torch.zeros((1, *shape), dtype=dtype, device=device), t)
    except Exception as e:   # the user's network: any error it raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model: a test call on one sample of shape {shape} ({dtype}, device {device}) failed: "
                         f"{first}. The network must accept tensors on the search's device (device=, --device) "
                         "and the per-sample shape (shape=, --shape)") from e


def preset_candidates(ns, nfe: int, t_start=None, t_end=None) -> list[tuple[str, Schedule]]:
    """Every standard preset variant over every spacing (the baseline the search must beat)."""
    return [(f"{label} [{sp}]", s) for label, sp, s in P.standard_schedules(ns, nfe, t_start=t_start, t_end=t_end)]


def _structure(s: Schedule) -> tuple:
    return (s.afs,) + tuple((st.prediction, st.order, st.corrector, st.relax, st.corrector_relax) for st in s.steps)


def _diverse_parents(ranked: list, population: int, space: SearchSpace, per_structure: int = 4,
                     min_distance: float = 0.1) -> list:
    """The best `population` schedules of the ranked pool, with niching: at most `per_structure`
    of one discrete structure (AFS, per-step prediction, order, corrector, relaxations) and none
    within `min_distance` (encoding L2) of a better one. Without it the pool's best places fill
    with near-copies of the incumbent and evolution stalls in one basin (predictor-guided search
    first: its children are good, so they crowd the top); places left empty are filled in rank order."""
    chosen, enc, count = [], [], {}
    for s, _ in ranked:
        if len(chosen) == population:
            break
        st, e = _structure(s), space.encode(s)
        if count.get(st, 0) >= per_structure or any(np.linalg.norm(e - o) < min_distance for o in enc):
            continue
        chosen.append(s)
        enc.append(e)
        count[st] = count.get(st, 0) + 1
    if len(chosen) < population:
        ids = {id(s) for s in chosen}
        chosen += [s for s, _ in ranked if id(s) not in ids][:population - len(chosen)]
    return chosen


def _pick_per_parent(owner: list, n_pick: int, rng: np.random.Generator, scores=None, screen: int = 4) -> list:
    """Indices of the proposals to evaluate: one per parent in turn (best parent first, immigrants
    last), so every parent's line keeps being explored. Without scores the parent's proposal is
    drawn at random (plain evolution); with the predictor's scores it is drawn from the predicted
    best 1/screen of that parent's proposals — screening, not chasing: the argmin would follow the
    predictor's extrapolation errors, and one parent's best children would crowd out the rest."""
    groups: dict = {}
    for i, o in enumerate(owner):
        groups.setdefault(o, []).append(i)
    for o, idx in groups.items():
        if scores is not None:
            idx.sort(key=lambda i: scores[i])
            top = idx[:max(1, len(idx) // screen)]
            first = int(top[int(rng.integers(0, len(top)))])
            rest = [i for i in idx if i != first]
        else:
            perm = rng.permutation(len(idx))
            first, rest = idx[int(perm[0])], [idx[int(j)] for j in perm[1:]]
        groups[o] = [first] + rest
    picks, depth = [], 0
    while len(picks) < n_pick:
        for o in sorted(groups):
            if len(picks) < n_pick and depth < len(groups[o]):
                picks.append(groups[o][depth])
        depth += 1
    return picks


def s3_search(model: DiffusionModel, nfe: int, *, metric="ref", metric_options: dict | None = None,
              seed: int = 0, budget: int = 600, samples: tuple = (256, 1024), heldout: int = 1024,
              stage_split: float = 0.75, population: int = 16, proposals: int = 512, per_generation: int = 16,
              use_predictor: bool = True, predictor: str = "gp", probe: bool = True, novelty: float = 0.01,
              screen: int | None = None, space: SearchSpace | None = None, shape=None,
              log_path=None, resume: bool = False, max_minutes: float | None = None, progress: bool = True,
              chunk: int = 8, dtype: torch.dtype = torch.float32, backend: str = "auto", device="cpu") -> SearchResult:
    """Search the best schedule of exactly `nfe` evaluations for `model`.

    Args:
        metric: "ref" (RMS distance to a high-accuracy solution from the same noise; default),
            "exact" (analytic models), "fid" (metric_options: stats=, weights=), or a callable.
        budget: real evaluations (candidate × fidelity) for the search stages; the held-out
            comparison of finalists and presets comes on top.
        samples: noise samples per evaluation in stage 1 and stage 2; heldout: final comparison.
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
        device: where the samples are computed (the reference solve too); the model's network
            must accept tensors there (the embedded models follow their input).
    """
    t_begin = time.perf_counter()
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe={nfe!r}: must be an integer >= 1")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor={predictor!r}: must be one of {', '.join(PREDICTORS)}")
    if screen is None:
        screen = proposals if predictor == "gp" else 4
    if not isinstance(screen, int) or isinstance(screen, bool) or screen < 1:
        raise ValueError(f"screen={screen!r}: must be a positive integer (1 = any proposal of a parent)")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be a positive integer (candidates per batch)")
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget={budget!r}: must be a positive integer (real evaluations)")
    metric_fn = make_metric(metric, model, **(metric_options or {}))
    ns = model.noise_schedule
    space = space or SearchSpace(ns, nfe)
    if space.nfe != nfe:
        raise ValueError(f"space.nfe={space.nfe} differs from nfe={nfe}")
    if shape is None:
        if model.sample_shape is None:
            raise ValueError("shape: give the per-sample shape (e.g. (3, 32, 32)); this model does not record one "
                             "(DiffusionModel(..., sample_shape=...))")
        shape = model.sample_shape
    shape = tuple(int(v) for v in shape)
    device = _resolve_device(device)
    _check_model(model, shape, device, dtype, space.t_start)
    rank, world = _dist()
    t_range = (space.t_start, space.t_end)
    sets = {"s1": NoiseSet(shape, samples[0], 1000 * seed + 1, "s1"),
            "s2": NoiseSet(shape, samples[1], 1000 * seed + 2, "s2"),
            "heldout": NoiseSet(shape, heldout, 1000 * seed + 3, "heldout")}
    # the settings a resumed search must share (predictor and screen mean nothing to plain evolution;
    # "gp/batch-ei": the GP's batch acquisition, unlike the per-parent one of logs before it)
    header = {"nfe": nfe, "seed": seed, "metric": getattr(metric_fn, "name", str(metric)),
              "space": repr((space.orders, space.predictions, space.correctors, space.afs, space.relax_range,
                             samples, heldout, budget, use_predictor,
                             ({"gp": "gp/batch-ei"}.get(predictor, predictor) if use_predictor else None), probe,
                             novelty, population, proposals, per_generation, screen if use_predictor else None)),
              "shape": list(shape)}
    log = SearchLog(log_path, header, resume=resume, writer=(rank == 0))
    cache = log.cached()
    counters = {"requested": 0, "new": 0}
    deadline = None if max_minutes is None else t_begin + 60.0 * max_minutes

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=budget, desc=f"S3 NFE {nfe}", unit="eval")

    def evaluate(schedules: list[Schedule], fid: str, stage: str, count: bool = True) -> list[float]:
        keys = [schedule_key(s) for s in schedules]
        todo, seen = [], set()
        for s, k in zip(schedules, keys):
            if (k, fid) not in cache and k not in seen:
                todo.append((s, k))
                seen.add(k)
        if todo:
            chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
            mine = {}
            for ci, part in enumerate(chunks):
                if ci % world != rank:
                    continue
                t0 = time.perf_counter()
                vals = evaluate_schedules(model, [s for s, _ in part], sets[fid], metric_fn, t_range, chunk=chunk,
                                          dtype=dtype, backend=backend, device=device)
                dt = (time.perf_counter() - t0) / len(part)
                mine[ci] = [(k, v, dt) for (_, k), v in zip(part, vals)]
            if world > 1:
                gathered = [None] * world
                torch.distributed.all_gather_object(gathered, mine)
                for d in gathered:
                    mine.update(d)
            by_key = {k: (v, dt) for ci in sorted(mine) for k, v, dt in mine[ci]}
            for s, k in todo:
                v, dt = by_key[k]
                cache[(k, fid)] = v
                log.add(k, s.to_dict(), fid, v, dt, stage)
            counters["new"] += len(todo)
        if count:
            counters["requested"] += len(schedules)
            if bar is not None:
                bar.update(len(schedules))
        return [cache[(k, fid)] for k in keys]

    rng = np.random.default_rng(seed)
    regressor = Predictor(space.feature_size if probe else space.encoding_size, seed=seed)
    probes: dict = {}     # schedule_key -> Gaussian-probe errors
    rows: dict = {}       # schedule_key -> predictor input
    improver = ImprovementPredictor(2 * (space.feature_size if probe else space.encoding_size), seed=seed)
    gp = GPPredictor()
    lineage: list = []   # (parent input row, parent metric, child input row, child metric), one fidelity per pair

    def probe_of(s: Schedule, k: str) -> np.ndarray:
        if k not in probes:
            probes[k] = gaussian_probe(s, ns)
        return probes[k]

    def row_of(s: Schedule, k: str) -> np.ndarray:
        """The predictor's input for schedule s of key k (computed once per schedule)."""
        if k not in rows:
            rows[k] = space.features(s, probe_of(s, k)) if probe else space.encode(s)
        return rows[k]
    curve: list = []
    taus: list = []

    def evolve(pool: list, fid: str, stage: str, until: int):
        """pool: list of (schedule, metric) at fidelity fid; grows in place. Keys are computed once
        per schedule (`schedule_key` serialises the whole schedule) and kept beside the pool."""
        pool_keys = [schedule_key(s) for s, _ in pool]
        known = set(pool_keys)
        known_p = np.stack([probe_of(s, k) for (s, _), k in zip(pool, pool_keys)])
        while counters["requested"] < until:
            if deadline is not None and time.perf_counter() > deadline:
                return
            ranked = sorted((p for p in pool if math.isfinite(p[1])), key=lambda p: p[1])
            if not ranked:
                ranked = pool
            parents = _diverse_parents(ranked, population, space)
            key_of = {id(s): k for (s, _), k in zip(pool, pool_keys)}   # every pool schedule is alive here
            metric_of = {id(s): m for s, m in pool}
            parent_keys = [key_of[id(s)] for s in parents]
            props, owner, prop_keys = [], [], []
            pkeys = set()
            props_p = np.empty((proposals, known_p.shape[1]))
            for _ in range(proposals * 3):
                if len(props) >= proposals:
                    break
                r = rng.random()
                if r < 0.6 or len(parents) < 2:
                    a = int(rng.integers(0, len(parents)))
                    child = space.mutate(parents[a], rng)
                elif r < 0.9:
                    a, b = (int(v) for v in rng.choice(len(parents), 2, replace=False))
                    child = space.crossover(parents[a], parents[b], rng)
                else:
                    a, child = len(parents), space.random(rng)   # immigrants: a group of their own
                k = schedule_key(child)
                if k in known or k in pkeys:
                    continue
                if novelty > 0:   # functionally a copy of an evaluated schedule or of another proposal
                    pc = probe_of(child, k)
                    near = np.abs(np.concatenate([known_p, props_p[:len(props)]]) - pc).max(axis=1)
                    if near.min() < novelty:
                        continue
                    props_p[len(props)] = pc
                props.append(child)
                owner.append(a)
                prop_keys.append(k)
                pkeys.add(k)
            if not props:
                return
            n_pick = min(per_generation, until - counters["requested"], len(props))
            scores, chosen = None, None
            if use_predictor and predictor == "improve" and len(lineage) >= WARM_PAIRS:
                fp = np.stack([p for p, _, _, _ in lineage])
                fc = np.stack([c for _, _, c, _ in lineage])
                improver.fit(np.concatenate([fc, fc - fp], 1), [mc for _, _, _, mc in lineage],
                             [mp for _, mp, _, _ in lineage])
                taus.append(improver.tau)
                fx = np.stack([row_of(c, k) for c, k in zip(props, prop_keys)])
                fpar = np.stack([row_of(parents[o], parent_keys[o]) if o < len(parents) else fx[i]
                                 for i, o in enumerate(owner)])
                scores = improver.predict(np.concatenate([fx, fx - fpar], 1))
            elif use_predictor and predictor == "gp" and len(lineage) >= WARM_PAIRS:
                gp.fit(np.stack([row_of(s, k) for (s, _), k in zip(pool, pool_keys)]), [m for _, m in pool])
                taus.append(gp.tau)
                # one batch for the whole generation by expected improvement over the best so far (as
                # the GP sees it), each pick believed before the next; not one arg-max per parent
                # (that took 0.57 of plain evolution's evaluations in the ablation, this 0.41)
                chosen = gp.batch_expected_improvement(np.stack([row_of(c, k) for c, k in zip(props, prop_keys)]),
                                                       float(gp.targets.min()), n_pick)
            elif use_predictor and predictor in ("improve", "gp") and probe:
                # Before the predictor has its pairs: screen by the Gaussian probe alone — a child
                # whose closed-form error (mean log10 over the scales) rises above its parent's is
                # unlikely to beat it (zero-shot τ 0.41–0.52 against the real metric: bench/probe_zero_shot.py)
                pm = np.array([probe_of(c, k).mean() for c, k in zip(props, prop_keys)])
                ppar = np.array([probe_of(parents[o], parent_keys[o]).mean() if o < len(parents) else pm[i]
                                 for i, o in enumerate(owner)])
                scores = pm - ppar
            elif use_predictor and predictor == "metric" and len(pool) >= 16:
                regressor.fit(np.stack([row_of(s, k) for (s, _), k in zip(pool, pool_keys)]), [m for _, m in pool])
                taus.append(regressor.tau)
                scores = regressor.predict(np.stack([row_of(c, k) for c, k in zip(props, prop_keys)]))
            if chosen is None:
                chosen = _pick_per_parent(owner, n_pick, rng, scores, screen)
            picks = [props[i] for i in chosen]
            pick_keys = [prop_keys[i] for i in chosen]
            vals = evaluate(picks, fid, stage)
            if use_predictor and predictor in ("improve", "gp"):
                for i, k, v in zip(chosen, pick_keys, vals):
                    if owner[i] < len(parents):
                        par = parents[owner[i]]
                        lineage.append((row_of(par, parent_keys[owner[i]]), metric_of[id(par)], row_of(props[i], k), v))
            pool.extend(zip(picks, vals))
            pool_keys.extend(pick_keys)
            known.update(pick_keys)
            known_p = np.concatenate([known_p, np.stack([probe_of(s, k) for s, k in zip(picks, pick_keys)])])
            if fid == "s1":
                curve.append((counters["requested"], min(m for _, m in pool)))

    # stage 1: presets, then evolution on few samples
    seeds = space.seeds()
    pool1 = list(zip(seeds, evaluate(seeds, "s1", "seed")))
    if not any(math.isfinite(m) for _, m in pool1):
        raise ValueError(f"every preset schedule at NFE {nfe} produced NaN/inf samples (or metric values): the model "
                         "returns NaN/inf, or the metric fails; the evaluations are in the log")
    curve.append((counters["requested"], min(m for _, m in pool1)))
    budget1 = max(int(budget * stage_split), len(seeds))
    evolve(pool1, "s1", "stage1", budget1)

    # stage 2: survivors on more samples, evolution continues there
    survivors = [s for s, _ in sorted(pool1, key=lambda p: p[1])[:population]]
    pool2 = list(zip(survivors, evaluate(survivors, "s2", "stage2")))
    evolve(pool2, "s2", "stage2", budget)
    if bar is not None:
        bar.close()

    # final: finalists and every preset on held-out noise (not counted in the budget)
    finalists = [s for s, _ in sorted(pool2, key=lambda p: p[1])[:4]]
    presets_ = preset_candidates(ns, nfe, space.t_start, space.t_end)
    labels = [f"searched #{i + 1}" for i in range(len(finalists))] + [lbl for lbl, _ in presets_]
    cands = finalists + [s for _, s in presets_]
    held = evaluate(cands, "heldout", "final", count=False)
    table = sorted(zip(labels, held), key=lambda p: p[1])
    best_i = int(np.argmin(held))
    preset_vals = [(lbl, v) for lbl, v in zip(labels, held) if not lbl.startswith("searched")]
    best_preset = min(preset_vals, key=lambda p: p[1])
    best = cands[best_i]
    best = best.replace(name=f"s3 NFE {nfe}" if best_i < len(finalists) else best.name,
                        meta=dict(best.meta, search={"metric": header["metric"], "heldout_metric": held[best_i],
                                                      "best_preset": list(best_preset), "seed": seed},
                                  noise_schedule=ns.fingerprint()))
    return SearchResult(best=best, best_metric=held[best_i], best_source="search" if best_i < len(finalists) else labels[best_i],
                        nfe=nfe, table=table, best_preset=best_preset, evaluations=counters["requested"],
                        new_evaluations=counters["new"], seconds=time.perf_counter() - t_begin, curve=curve,
                        taus=taus, log_path=log.path)
