"""S³: predictor-based solver-schedule search on the fast paths.

    result = s3_search(model, nfe=5, budget=600)
    result.best            # the Schedule with the lowest metric on held-out noise (searched or preset)

Loop (DESIGN.md §3): seed the population with the presets; each generation proposes many
candidates by mutation and crossover of the best ones; the MLP predictor, retrained on every real
evaluation so far, screens them and only the most promising few are evaluated for real (batched:
one dense-program batch per chunk of candidates). Stage 1 works on few samples; the survivors are
re-evaluated on more samples and evolution continues there. The final choice is made — and every
reported number measured — on a held-out noise set the search never saw, against every preset over
every spacing, so the result is never worse than the best preset.

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
from .log import SearchLog
from .predictor import Predictor
from .space import SearchSpace, schedule_key

__all__ = ["s3_search", "SearchResult"]


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


def preset_candidates(ns, nfe: int, t_start=None, t_end=None) -> list[tuple[str, Schedule]]:
    """Every standard preset variant over every spacing (the baseline the search must beat)."""
    return [(f"{label} [{sp}]", s) for label, sp, s in P.standard_schedules(ns, nfe, t_start=t_start, t_end=t_end)]


def s3_search(model: DiffusionModel, nfe: int, *, metric="ref", metric_options: dict | None = None,
              seed: int = 0, budget: int = 600, samples: tuple = (64, 256), heldout: int = 1024,
              stage_split: float = 0.75, population: int = 16, proposals: int = 512, per_generation: int = 16,
              use_predictor: bool = True, screen: int = 4, space: SearchSpace | None = None, shape=None,
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
        screen: with the predictor, each generation's real evaluations are drawn from the best
            1/screen of the proposals as the predictor ranks them.
        shape: per-sample shape (default: `model.sample_shape`, set for the embedded models).
        log_path / resume / max_minutes: persistence and a wall-clock stop (the log keeps
            everything; resuming continues).
    """
    t_begin = time.perf_counter()
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model: must be a usf_fast.DiffusionModel, got {type(model).__name__}")
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe={nfe!r}: must be an integer >= 1")
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
    rank, world = _dist()
    t_range = (space.t_start, space.t_end)
    sets = {"s1": NoiseSet(shape, samples[0], 1000 * seed + 1, "s1"),
            "s2": NoiseSet(shape, samples[1], 1000 * seed + 2, "s2"),
            "heldout": NoiseSet(shape, heldout, 1000 * seed + 3, "heldout")}
    header = {"nfe": nfe, "seed": seed, "metric": getattr(metric_fn, "name", str(metric)),
              "space": repr((space.orders, space.predictions, space.correctors, space.afs, space.relax_range,
                             samples, heldout, budget, use_predictor, population, proposals, per_generation)),
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
    predictor = Predictor(space.encoding_size, seed=seed)
    curve: list = []
    taus: list = []

    def evolve(pool: list, fid: str, stage: str, until: int):
        """pool: list of (schedule, metric) at fidelity fid; grows in place."""
        known = {schedule_key(s) for s, _ in pool}
        while counters["requested"] < until:
            if deadline is not None and time.perf_counter() > deadline:
                return
            ranked = sorted((p for p in pool if math.isfinite(p[1])), key=lambda p: p[1])
            if not ranked:
                ranked = pool
            parents = [s for s, _ in ranked[:population]]
            props, pkeys = [], set()
            for _ in range(proposals * 3):
                if len(props) >= proposals:
                    break
                r = rng.random()
                if r < 0.6 or len(parents) < 2:
                    child = space.mutate(parents[int(rng.integers(0, len(parents)))], rng)
                elif r < 0.9:
                    a, b = rng.choice(len(parents), 2, replace=False)
                    child = space.crossover(parents[int(a)], parents[int(b)], rng)
                else:
                    child = space.random(rng)
                k = schedule_key(child)
                if k in known or k in pkeys:
                    continue
                props.append(child)
                pkeys.add(k)
            if not props:
                return
            n_pick = min(per_generation, until - counters["requested"], len(props))
            if use_predictor and len(pool) >= 16:
                predictor.fit(np.stack([space.encode(s) for s, _ in pool]), [m for _, m in pool])
                taus.append(predictor.tau)
                scores = predictor.predict(np.stack([space.encode(s) for s in props]))
                # screen, don't chase: draw from the predicted best quarter. Taking the argmin
                # follows the predictor's extrapolation errors (out-of-distribution proposals);
                # sampling the top quarter keeps the gain (bad mutations are dropped) and diversity.
                order = np.argsort(scores)
                top = order[: max(n_pick, len(order) // screen)]
                picks = [props[i] for i in rng.choice(top, n_pick, replace=False)]
            else:
                picks = [props[i] for i in rng.choice(len(props), n_pick, replace=False)]
            vals = evaluate(picks, fid, stage)
            pool.extend(zip(picks, vals))
            known.update(schedule_key(s) for s in picks)
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
