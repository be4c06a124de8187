"""The acceleration claim, measured (docs/experiments.md, "Acceleration"): is the searched NFE-n
schedule at least as good as the best preset at 2n NFE, on noise no search saw?

For every embedded model and n: one search at NFE n (settings `--variant`: a variant of bench/cost_study.py;
"default" = `SearchConfig`'s defaults), then on 1,024 fresh noise samples (seed 99,999) the searched
schedule, the best preset at NFE n and the best preset at 2n (every method over every spacing),
all with the search's metric.

    python bench/acceleration.py --out out/accel.json [--models gmm-2d,gmm-image,gmm-image:flow,digits,digits-flow] [--n 4,5]

With `--results` the searches are not run again: the schedules that `bench/cost_study.py` stored
(every seed of `--variant` in each file; their NFE is n) are measured on the same evaluation set,
and the table gives their mean over the seeds and the worst seed against the best preset at 2n:

    python bench/acceleration.py --models digits --results out/c27/digits.json,out/c27/digits-nfe4.json --variant va --out out/accel-digits.json
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from usf_fast.models import embedded_model
from usf_fast.noise_schedules import NoiseScheduleFlow
from usf_fast.schedule import Schedule
from usf_fast.search import evaluate_schedules, make_metric, s3_search
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.s3 import preset_candidates

from cost_study import VARIANTS, variant_options   # bench/ is on the path when this runs as a script


def model_from_spec(spec):
    name, _, kind = spec.partition(":")
    return embedded_model(name, NoiseScheduleFlow() if kind == "flow" else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gmm-2d,gmm-image,gmm-image:flow,digits,digits-flow")
    ap.add_argument("--n", default="4,5")
    ap.add_argument("--variant", default="default",
                    help=f"one of {', '.join(sorted(VARIANTS))}; with --results a comma-separated list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/accel.json")
    ap.add_argument("--results", default=None,
                    help="comma-separated bench/cost_study.py --out files of this one model: their stored schedules "
                         "instead of new searches")
    args = ap.parse_args()
    if args.results:
        return from_results(args)
    if args.variant not in VARIANTS:
        raise SystemExit(f"--variant {args.variant!r}: must be one of {', '.join(sorted(VARIANTS))}")
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {(r["model"], r["n"]) for r in rows}
    for spec in args.models.split(","):
        model = model_from_spec(spec)
        ns = model.noise_schedule
        ev = NoiseSet(model.sample_shape, 1024, 99_999, "evaluation")
        metric = make_metric("ref", model)
        t_range = (ns.t_max, ns.t_min)
        for n in [int(v) for v in args.n.split(",")]:
            if (spec, n) in done:
                continue
            t0 = time.time()
            with tempfile.TemporaryDirectory() as d:
                res = s3_search(model, n, seed=args.seed, progress=False, log_path=os.path.join(d, "log.jsonl"),
                                **variant_options(args.variant, ns, n))
            secs = time.time() - t0
            searched = evaluate_schedules(model, [res.best], ev, metric, t_range)[0]
            best = _best_presets(model, n, ev, metric, t_range)
            row = {"model": spec, "n": n, "searched": searched, "best_preset_n": best[n][0],
                   "best_preset_n_label": best[n][1], "best_preset_2n": best[2 * n][0],
                   "best_preset_2n_label": best[2 * n][1], "holds": searched <= best[2 * n][0],
                   "rows": res.cost["total"], "seconds": secs, "variant": args.variant}
            rows.append(row)
            save_rows(rows, args.out)
    print("| model | n | searched at n | best preset at n | best preset at 2n | holds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['n']} | {r['searched']:.4g} | {r['best_preset_n']:.4g} | {r['best_preset_2n']:.4g} "
              f"({r['best_preset_2n_label']}) | {'yes' if r['holds'] else 'no'} |")


def _best_presets(model, n, ev, metric, t_range) -> dict:
    """{nfe: (metric, label)} of the best preset (every method over every spacing) at n and 2n."""
    best = {}
    for nfe in (n, 2 * n):
        cands = preset_candidates(model.noise_schedule, nfe)
        vals = evaluate_schedules(model, [s for _, s in cands], ev, metric, t_range)
        best[nfe] = min(zip(vals, [lbl for lbl, _ in cands]))
    return best


def save_rows(rows: list, out: str) -> None:
    """Print the newest row and write every row so far (an interrupted run keeps them)."""
    print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


def from_results(args):
    """The acceleration table from schedules `bench/cost_study.py` stored (all seeds of `--variant`)."""
    if "," in args.models:
        raise SystemExit("--results: give the one model the files are of (--models M)")
    model = model_from_spec(args.models)
    ns = model.noise_schedule
    ev = NoiseSet(model.sample_shape, 1024, 99_999, "evaluation")
    metric = make_metric("ref", model)
    t_range = (ns.t_max, ns.t_min)
    variants = args.variant.split(",")
    by_n = {}   # n -> variant -> [(seed, schedule)]
    for path in args.results.split(","):
        for r in json.load(open(path)):
            if r["variant"] in variants and "schedule" in r:
                s = Schedule.from_dict(r["schedule"])
                by_n.setdefault(s.nfe, {}).setdefault(r["variant"], []).append((r["seed"], s))
    if not by_n:
        raise SystemExit(f"--results {args.results}: no rows of variants {args.variant} carry a schedule")
    rows = []
    for n in sorted(by_n):
        best = _best_presets(model, n, ev, metric, t_range)
        for variant, stored in by_n[n].items():
            rows.append(_acceleration_row(args.models, n, variant, stored,
                                          evaluate_schedules(model, [s for _, s in stored], ev, metric, t_range), best))
            save_rows(rows, args.out)
    print("| model | variant | n | searched at n (mean over seeds; worst) | best preset at n | best preset at 2n | holds (mean) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['n']} | {r['searched']:.4g} ({r['searched_worst']:.4g}; seeds "
              f"{','.join(map(str, r['seeds']))}) | {r['best_preset_n']:.4g} | {r['best_preset_2n']:.4g} "
              f"({r['best_preset_2n_label']}) | {'yes' if r['holds'] else 'no'} |")


def _acceleration_row(model, n, variant, stored, searched, best) -> dict:
    return {"model": model, "n": n, "variant": variant, "seeds": [k for k, _ in stored],
            "searched_per_seed": searched, "searched": float(np.mean(searched)), "searched_worst": max(searched),
            "best_preset_n": best[n][0], "best_preset_n_label": best[n][1], "best_preset_2n": best[2 * n][0],
            "best_preset_2n_label": best[2 * n][1], "holds": float(np.mean(searched)) <= best[2 * n][0]}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
