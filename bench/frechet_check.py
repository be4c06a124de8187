"""Does a searched schedule's lower RMS error show in its samples' distribution? The Fréchet
distance on 2,000 fresh samples (docs/experiments.md, "Learned coefficients: the Fréchet distance")
of the schedules that `bench/cost_study.py` stored, next to the same schedule with the formula's
weights at its times (where the solve stage fitted weights), the best preset on the evaluation set,
and the high-accuracy reference solution from the same noise.

Every schedule runs on the same 2,000 noises (seed 99,998: neither a search's nor the evaluation
set's), so the comparisons are paired; the distance is the embedded model's own (`make_metric("fd")`:
the digits feature network's for the UNets, the exact moments for the mixtures).

    python bench/frechet_check.py --model digits --results out/c27/digits.json --variants default,quick-live,va --out out/c27/digits-fd.json
"""
import argparse
import json
import os

import numpy as np
import torch

from usf_fast.metrics import make_metric, reference_samples
from usf_fast.models import embedded_model
from usf_fast.reference import reference_sample
from usf_fast.schedule import Schedule
from usf_fast.search.s3 import preset_candidates

FD_SEED = 99_998


def formula_weights(schedule: Schedule) -> Schedule:
    """The same structure and times with the USF formula's weights (what the solve started from)."""
    return schedule.replace(steps=[st.replace(weights=None, corrector_weights=None) for st in schedule.steps])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits")
    ap.add_argument("--noise-schedule", default=None)
    ap.add_argument("--results", required=True, help="a bench/cost_study.py --out file (rows with 'schedule')")
    ap.add_argument("--variants", default="default,quick-live,va")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ns_arg = None
    if args.noise_schedule == "flow":
        from usf_fast import NoiseScheduleFlow
        ns_arg = NoiseScheduleFlow()
    model = embedded_model(args.model, ns_arg)
    fd = make_metric("fd", model)
    ns = model.noise_schedule
    noise = torch.randn((args.samples, *model.sample_shape), generator=torch.Generator().manual_seed(FD_SEED),
                        dtype=torch.float64)

    def fd_of(schedule: Schedule) -> float:
        with torch.no_grad():
            return fd(reference_sample(model, schedule, noise, check_finite=False))

    rows = [r for r in json.load(open(args.results)) if "schedule" in r and r["variant"] in args.variants.split(",")]
    if not rows:
        raise SystemExit(f"--results {args.results}: no rows of variants {args.variants} carry a schedule")
    out = {"model": args.model, "samples": args.samples, "seed": FD_SEED}
    with torch.no_grad():
        ref = reference_samples(model, noise, ns.t_max, ns.t_min, nfe=args.reference_nfe)
    out["reference"] = {"nfe": args.reference_nfe, "fd": fd(ref)}
    nfe = Schedule.from_dict(rows[0]["schedule"]).nfe
    presets = dict(preset_candidates(ns, nfe))
    label = rows[0]["eval_best_preset"]
    out["best_preset"] = {"label": label, "fd": fd_of(presets[label])}
    print(f"reference ({args.reference_nfe} steps) FD {out['reference']['fd']:.4f}; best preset {label} FD "
          f"{out['best_preset']['fd']:.4f}", flush=True)
    out["rows"] = []
    for r in rows:
        s = Schedule.from_dict(r["schedule"])
        rec = {"variant": r["variant"], "seed": r["seed"], "eval_metric": r["eval_metric"], "fd": fd_of(s)}
        if s.has_weights:
            rec["fd_formula_weights"] = fd_of(formula_weights(s))
        out["rows"].append(rec)
        print(json.dumps(rec), flush=True)
    for v in args.variants.split(","):
        sel = [x for x in out["rows"] if x["variant"] == v]
        if not sel:
            continue
        f = np.array([x["fd"] for x in sel])
        line = f"{v:12s} n={len(sel)}  FD {f.mean():.4f} (sd {f.std(ddof=1) if len(f) > 1 else 0:.4f})"
        fw = [x["fd_formula_weights"] for x in sel if "fd_formula_weights" in x]
        if fw:
            line += f"  same times, formula weights {np.mean(fw):.4f}"
        print(line + f"  RMS {np.mean([x['eval_metric'] for x in sel]):.4f}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
