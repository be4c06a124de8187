"""Predictor ablation for S³ (README numbers): predictor-guided evolution vs plain evolution.

For each seed, both run the same stage-1 search (same seeds, operators, budget) on the embedded
image model; quality = best stage-1 metric so far. Reported: the evaluations the predictor-guided
search needs to reach the final quality of plain evolution.

    python bench/ablation_predictor.py [--nfe 5] [--budget 600] [--seeds 0,1,2]
"""
import argparse
import json
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
    ap.add_argument("--out", default="out/ablation.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = embedded_model("gmm-image")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        res = {}
        for use in (True, False):
            t0 = time.time()
            # stage_split=1: the whole budget is stage 1, where the curve is measured
            r = s3_search(model, args.nfe, seed=seed, budget=args.budget, use_predictor=use, stage_split=1.0,
                          progress=False)
            res[use] = (r, time.time() - t0)
        plain_final = res[False][0].curve[-1][1]
        need = evals_to_reach(res[True][0].curve, plain_final)
        rows.append({"seed": seed, "plain_final": plain_final, "plain_evals": res[False][0].curve[-1][0],
                     "guided_final": res[True][0].curve[-1][1], "guided_evals_to_plain_final": need,
                     "guided_heldout": res[True][0].best_metric, "plain_heldout": res[False][0].best_metric,
                     "tau_last": res[True][0].taus[-1] if res[True][0].taus else None,
                     "seconds": [res[True][1], res[False][1]]})
        print(json.dumps(rows[-1]))
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
