"""Does the solve stage over-fit its training noise, and what does the ridge do? (issue "Learned
solver coefficients", point 5; docs/experiments.md, "Generalisation of the solve").

For every embedded model: the preset that scores best on the training noise (as `solve_presets`
picks one: RMS of its final state to the teacher's), solved on `--train` noises of each
`--train-seeds` seed (a `--teacher`-step dense teacher) with every `--ridges` value — weights
only (one student pass), and weights with `--trials` Nelder–Mead trials of the times (the solve
stage as `--quick` runs it) — then its training error (RMS of the final state to the teacher's on the
training noise) next to its error on the evaluation set no search sees (1,024 noises, seed 99,999,
the 200-step float64 reference; as bench/cost_study.py).

    python bench/solve_generalisation.py --models gmm-image,gmm-image:flow,digits,digits-flow --out out/solve-gen.json
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from usf_fast.reference import reference_sample
from usf_fast.search import evaluate_schedules, make_metric
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.s3 import preset_candidates
from usf_fast.search.solve import DenseTeacher, _solve, tune_times

from acceleration import model_from_spec, save_rows   # bench/ is on the path when this runs as a script


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gmm-image,gmm-image:flow,digits,digits-flow")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--ridges", default="1e-6,1e-4,1e-3,1e-2,1e-1")
    ap.add_argument("--train", type=int, default=128)
    ap.add_argument("--train-seeds", default="6,7")
    ap.add_argument("--trials", type=int, default=23)
    ap.add_argument("--teacher", type=int, default=50)
    ap.add_argument("--out", default="out/solve-gen.json")
    args = ap.parse_args()
    ridges = [float(r) for r in args.ridges.split(",")]
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {(r["model"], r["train_seed"]) for r in rows}
    for spec in args.models.split(","):
        model = model_from_spec(spec)
        ns = model.noise_schedule
        t_range = (ns.t_max, ns.t_min)
        ev = NoiseSet(model.sample_shape, 1024, 99_999, "evaluation")
        metric = make_metric("ref", model)
        presets = preset_candidates(ns, args.nfe)
        for seed in [int(s) for s in args.train_seeds.split(",")]:
            if (spec, seed) in done:
                continue
            t0 = time.time()
            noise = torch.randn((args.train, *model.sample_shape), generator=torch.Generator().manual_seed(seed),
                                dtype=torch.float64)
            teacher = DenseTeacher(model, noise, *t_range, steps=args.teacher)
            target = teacher.states([t_range[1]])[0]
            with torch.no_grad():
                train_err = [float((reference_sample(model, s, noise, check_finite=False) - target).pow(2).mean()
                                   .sqrt()) for _, s in presets]
            k = int(np.nanargmin(train_err))
            label, preset = presets[k]
            solved = {"formula": (preset, train_err[k])}
            for ridge in ridges:
                solved[f"weights ridge={ridge:g}"] = _solve(model, preset, noise, teacher, ridge, torch.float64)
                solved[f"weights+times ridge={ridge:g}"] = tune_times(model, preset, noise, teacher,
                                                                      evaluations=args.trials, ridge=ridge)
            evals = evaluate_schedules(model, [s for s, _ in solved.values()], ev, metric, t_range)
            row = {"model": spec, "train_seed": seed, "train": args.train, "preset": label, "trials": args.trials,
                   "teacher": args.teacher, "seconds": time.time() - t0,
                   "results": {name: {"train": tr, "eval": e} for (name, (_, tr)), e in zip(solved.items(), evals)}}
            rows.append(row)
            save_rows(rows, args.out)
    names = list(dict.fromkeys(n for r in rows for n in r["results"]))
    print("| model | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for spec in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == spec]
        cells = []
        for n in names:
            tr = np.mean([r["results"][n]["train"] for r in sel if n in r["results"]])
            e = np.mean([r["results"][n]["eval"] for r in sel if n in r["results"]])
            cells.append(f"{tr:.4f} / {e:.4f}")
        print(f"| {spec} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
