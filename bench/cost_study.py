"""Search cost vs quality (docs/experiments.md, "A cheaper default"): variants of the search's
sample counts and reference, each over several seeds, scored on one independent evaluation set.

For each variant and seed: run `s3_search` (a fresh log), read its cost in network rows
(`SearchResult.cost`), then evaluate its result and every preset over every spacing on 1,024 noise
samples no search saw (seed 99,999), against the 200-step float64 reference. The improvement is
over the best preset *on that set* (the most favourable baseline), so it is what a user gets.

    python bench/cost_study.py --model gmm-image --nfe 5 --seeds 0,1,2,3,4 --variants default,v289k --out out/cost.json
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from usf_fast.models import embedded_model
from usf_fast.search import SearchSpace, evaluate_schedules, make_metric, s3_search
from usf_fast.search.config import QUICK, S3_ONLY
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.s3 import preset_candidates

THOROUGH = dict(budget=600, samples=(256, 1024), heldout=1024, heldout_presets=None, reference_nfe=200)
#: every variant but "default" is written relative to the defaults until 2026-12-05 (the S3 search
#: alone, search.S3_ONLY, with a solve stage's old defaults where a variant turns one on)
OLD_DEFAULTS = dict(S3_ONLY, solve_presets=0, solve_samples=128, solve_other_prediction=False)
#: variants on today's defaults (a short S3 search and the solve stage, since 2026-12-05)
ON_TODAY = {"default", "new-default-d256", "default-one"}
VARIANTS = {
    "default": {},                 # today's defaults
    "new-default-d256": {},        # the same (since 2026-12-05 night 64 x 3 trials; "default-one" is 96 x 2)
    "s3-only": {},                 # the defaults until 2026-12-05: S3 alone (296,161 rows at NFE 5)
    # the solve stage (learned step weights and times, usf_fast.search.solve) on a leaner S3 search
    # (<= 300,000 rows at NFE 5), and the quick setting (<= 60,000 rows)
    "lean-solve": dict(budget=200, samples=(96, 192), solve=80),
    "solve": dict(solve=64),
    "quick": dict(budget=24, samples=(32, 64), heldout=128, heldout_presets=4, solve=48, solve_samples=64),
    "new-default": dict(budget=272, solve=80, solve_samples=64, solve_teacher=50),
    "va": dict(budget=200, samples=(96, 192), solve=80, solve_samples=128, solve_teacher=50),
    "vb": dict(budget=160, samples=(96, 192), solve=64, solve_finalists=2, solve_samples=128, solve_teacher=50),
    "vc": dict(budget=120, samples=(64, 128), solve=80, solve_finalists=2, solve_samples=128, solve_teacher=50),
    "vd": dict(budget=200, samples=(96, 192), solve=64, solve_finalists=2, solve_samples=128, solve_teacher=50),
    "ve": dict(budget=228, solve=80, solve_samples=128, solve_teacher=50),
    "quick-b40-128": dict(budget=40, samples=(16, 32), heldout=128, heldout_presets=4, solve=64, solve_samples=128,
                          solve_teacher=50),
    "quick-b16": dict(budget=16, samples=(16, 32), heldout=128, heldout_presets=4, solve=80, solve_samples=64,
                      solve_teacher=50),
    "quick-b40": dict(budget=40, samples=(16, 32), heldout=128, heldout_presets=4, solve=80, solve_samples=64,
                      solve_teacher=50),
    # the solve stage also fits the preset best on stage 1's noise (solve_presets=1)
    "qp64": dict(budget=40, samples=(16, 32), heldout=128, heldout_presets=4, solve=40, solve_presets=1,
                 solve_samples=64, solve_teacher=50),
    "qp128": dict(budget=24, samples=(16, 32), heldout=128, heldout_presets=4, solve=24, solve_presets=1,
                  solve_samples=128, solve_teacher=50),
    "qs96": dict(budget=16, samples=(16, 32), heldout=128, heldout_presets=4, solve=60, solve_samples=96,
                 solve_teacher=50),
    "qs96p": dict(budget=16, samples=(16, 32), heldout=128, heldout_presets=4, solve=32, solve_presets=1,
                  solve_samples=96, solve_teacher=50),
    "vap": dict(budget=200, samples=(96, 192), solve=48, solve_presets=1, solve_samples=128, solve_teacher=50),
    # QUICK with the twin (2026-12-05, night): its trials shared three ways, or the finalist left out (measured
    # when the twin was the preset's own switch, solve.other_prediction; it is UniPC-3 now, solve.twin)
    "quick-o15": dict(QUICK, solve=15, solve_other_prediction=True),
    "quick-o23p": dict(QUICK, solve_finalists=0, solve_other_prediction=True),
    # the default before the other prediction: finalist and best preset, 96 trials each
    "default-one": dict(solve=96, solve_other_prediction=False),
    "quick-live": QUICK,   # search.QUICK as it is now (qp128 with 23 trials per schedule since 2026-12-04)
    "qp128-t48": dict(budget=24, samples=(16, 32), heldout=128, heldout_presets=4, solve=24, solve_presets=1,
                      solve_samples=128, solve_teacher=48),
    "thorough": THOROUGH,   # the defaults before 2026-12-02
    # every setting written out, so that a change of the defaults does not change a variant
    "v289k": dict(THOROUGH, samples=(32, 128), heldout=256, reference_nfe=100),
    "v233k": dict(THOROUGH, budget=400, samples=(32, 128), heldout=256, reference_nfe=100),
    "v64": dict(THOROUGH, samples=(64, 256), heldout=256, reference_nfe=100),
    "v289k-f32": dict(THOROUGH, samples=(32, 128), heldout=256, reference_nfe=100, reference_dtype=torch.float32),
    # the held-out table of the 8 presets best on stage 1's noise, 512 held-out samples, 50-step reference
    "c64": dict(budget=380, samples=(64, 256), heldout=512, heldout_presets=8, reference_nfe=50),
    "c96": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50),
    "c128": dict(budget=200, samples=(128, 512), heldout=512, heldout_presets=8, reference_nfe=50),
    "c96g8": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50, per_generation=8),
    "c96p": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50, proposals=1024),
    # the decision-space options on c96 (docs/experiments.md, "The rest of the decision space")
    "c96-extra": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50,
                      space=dict(extra_points=True)),
    "c96-single": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50,
                       space=dict(singlestep=True)),
    "c96-implicit": dict(budget=320, samples=(96, 256), heldout=512, heldout_presets=8, reference_nfe=50,
                         space=dict(implicit=True)),
    # three stages (successive halving)
    "h3": dict(budget=360, samples=(32, 128, 512), stage_split=(0.6, 0.9), heldout=512, heldout_presets=8,
               reference_nfe=50),
    "h3b": dict(budget=240, samples=(64, 256, 512), stage_split=(0.6, 0.9), heldout=512, heldout_presets=8,
                reference_nfe=40),
}
EVAL_SEED = 99_999


def variant_options(name: str, noise_schedule, nfe: int) -> dict:
    """`s3_search` keywords of variant `name`: its settings, and its search space built."""
    opts = dict(VARIANTS[name]) if name in ON_TODAY else dict(OLD_DEFAULTS, **VARIANTS[name])
    return dict(opts, space=SearchSpace(noise_schedule, nfe, **opts.pop("space", {})))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gmm-image")
    ap.add_argument("--noise-schedule", default=None)
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--variants", default="default,v289k")
    ap.add_argument("--metric", default="ref")
    ap.add_argument("--out", default="out/cost.json")
    args = ap.parse_args()
    ns_arg = None
    if args.noise_schedule == "flow":
        from usf_fast import NoiseScheduleFlow
        ns_arg = NoiseScheduleFlow()
    model = embedded_model(args.model, ns_arg)
    shape = model.sample_shape
    ev = NoiseSet(shape, 1024, EVAL_SEED, "evaluation")
    metric = make_metric(args.metric, model)
    t_range = (model.noise_schedule.t_max, model.noise_schedule.t_min)
    # the evaluation set's reference and best preset, computed once per model, NFE and metric
    cache = f"{args.out}.eval-{args.model}-{args.noise_schedule}-{args.nfe}-{args.metric}.pt"
    if os.path.exists(cache):
        saved = torch.load(cache, weights_only=True)
        ev._ref, best_preset = saved["reference"], (saved["best"], saved["label"])
    else:
        presets = preset_candidates(model.noise_schedule, args.nfe)
        preset_vals = evaluate_schedules(model, [s for _, s in presets], ev, metric, t_range)
        best_preset = min(zip(preset_vals, [lbl for lbl, _ in presets]))
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        torch.save({"reference": ev._ref, "best": best_preset[0], "label": best_preset[1]}, cache)
    print(f"best preset on the evaluation set: {best_preset[1]} {best_preset[0]:.5g}", flush=True)
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {(r["variant"], r["seed"]) for r in rows}
    for name in args.variants.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (name, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as d:
                t0 = time.time()
                res = s3_search(model, args.nfe, seed=seed, metric=args.metric, progress=False,
                                log_path=os.path.join(d, "log.jsonl"),
                                **variant_options(name, model.noise_schedule, args.nfe))
                secs = time.time() - t0
            val = evaluate_schedules(model, [res.best], ev, metric, t_range)[0]
            row = {"variant": name, "seed": seed, "rows": res.cost["total"], "cost": res.cost, "seconds": secs,
                   "eval_metric": val, "best_preset": best_preset[0], "improvement": 1 - val / best_preset[0],
                   "search_heldout_improvement": res.improvement, "search_best_preset": res.best_preset[0],
                   "eval_best_preset": best_preset[1], "schedule": res.best.to_dict()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    for name in args.variants.split(","):
        sel = [r for r in rows if r["variant"] == name]
        if sel:
            imp = np.array([r["improvement"] for r in sel])
            print(f"{name:10s} rows {np.mean([r['rows'] for r in sel]):>10,.0f}  improvement {imp.mean():+.1%} "
                  f"(min {imp.min():+.1%}, max {imp.max():+.1%}, n={len(sel)})  {np.mean([r['seconds'] for r in sel]):.0f} s")


if __name__ == "__main__":
    main()
