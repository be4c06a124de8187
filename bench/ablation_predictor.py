"""Predictor ablation for S³ (README numbers): predictor-guided evolution vs plain evolution.

For each seed, both run the same stage-1 search (same seeds, operators, budget) on the embedded
image model; quality = best stage-1 metric so far. Reported: the evaluations the predictor-guided
search needs to reach the final quality of plain evolution.

    python bench/ablation_predictor.py [--nfe 5] [--budget 600] [--seeds 0,1,2]
"""
import argparse
import json
import os
import time

import torch

from usf_fast.analytic import embedded_model
from usf_fast.search import s3_search


def evals_to_reach(curve, target):
    for n, best in curve:
        if best <= target:
            return n
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="gmm-image", help="embedded model (gmm-image, digits, ...)")
    ap.add_argument("--screen", type=int, default=4)
    ap.add_argument("--heldout", type=int, default=1024, help="held-out samples of the final comparison "
                                                              "(not part of the ablation's curves)")
    ap.add_argument("--population", type=int, default=16, help="parents per generation, guided arm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--logs", help="folder for the JSONL logs of both arms (guided_<seed>, plain_<seed>; "
                                   "bench/predictor_study.py reads the plain ones); runs the plain arm again")
    ap.add_argument("--out", default="out/ablation.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = embedded_model(args.model)
    rows = []
    # the plain arm does not depend on the predictor's options: cache its curve per (model, nfe, budget, seed)
    cache_path = os.path.join(os.path.dirname(args.out) or ".", "ablation_plain_cache.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        # stage_split=1: the whole budget is stage 1, where the curve is measured
        guided = s3_search(model, args.nfe, seed=seed, budget=args.budget, use_predictor=True, stage_split=1.0,
                           heldout=args.heldout,
                           progress=False, screen=args.screen, population=args.population,
                           log_path=os.path.join(args.logs, f"guided_{seed}.jsonl") if args.logs else None)
        t_guided = time.time() - t0
        key = f"{args.model}/{args.nfe}/{args.budget}/{seed}" + (f"/h{args.heldout}" if args.heldout != 1024 else "")
        if key not in cache or args.logs:
            t0 = time.time()
            plain = s3_search(model, args.nfe, seed=seed, budget=args.budget, use_predictor=False, stage_split=1.0,
                              heldout=args.heldout,
                              progress=False,
                              log_path=os.path.join(args.logs, f"plain_{seed}.jsonl") if args.logs else None)
            cache[key] = {"curve": plain.curve, "heldout": plain.best_metric, "seconds": time.time() - t0}
            os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
            with open(cache_path, "w") as f:
                json.dump(cache, f)
        plain = cache[key]
        plain_final = plain["curve"][-1][1]
        need = evals_to_reach(guided.curve, plain_final)
        rows.append({"seed": seed, "plain_final": plain_final, "plain_evals": plain["curve"][-1][0],
                     "guided_final": guided.curve[-1][1], "guided_evals_to_plain_final": need,
                     "guided_heldout": guided.best_metric, "plain_heldout": plain["heldout"],
                     "tau_last": guided.taus[-1] if guided.taus else None,
                     "seconds": [t_guided, plain["seconds"]]})
        print(json.dumps(rows[-1]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print("| seed | plain evolution: best after all evals | predictor-guided: evals to reach it | ratio | guided final | Kendall τ |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        need = r["guided_evals_to_plain_final"]
        ratio = f"{need / r['plain_evals']:.2f}" if need else "not reached"
        print(f"| {r['seed']} | {r['plain_final']:.5f} ({r['plain_evals']} evals) | {need} | {ratio} | "
              f"{r['guided_final']:.5f} | {r['tau_last']:.2f} |")


if __name__ == "__main__":
    main()
