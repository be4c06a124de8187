"""Peers of the search at equal network rows (issue "Learned solver coefficients", point 4): our
own implementations, from the papers' ideas, of

    ld3     LD3-style: UniPC-3 (time-quadratic steps, AFS) with only its times optimised (Tong et
            al., "Learning to Discretize Denoising Diffusion ODEs", 2024; derivative-free here:
            Nelder–Mead on the final state's distance to a teacher)
    dfo     a derivative-free AFS + per-step order + times search: every structure of a small grid
            (AFS on/off × UniPC orders 2 and 3 × data/noise prediction) is scored at its preset
            times, then the best two get the rest of the trials as Nelder–Mead over their times;
            the best on the training noise wins
    s4s     S4S-style: a coefficient solve on a fixed preset structure (UniPC-3, AFS,
            time-quadratic): every step's weights fitted along the student's trajectory with the
            times tuned (Frankel et al., "S4S: Solving for a Diffusion Model Solver", ICML 2025)

Each gets the rows of a default S³ search (`--rows`, 296,161 at NFE 5): one 50-step dense teacher
on `--train` noises, then Nelder–Mead trials of NFE × train rows each. Every result is scored on
the 1,024-sample evaluation set of `bench/cost_study.py` (seed 99,999, the 200-step reference,
solved again here), so the table lines up with cost_study's search variants.

    python bench/peers.py --model gmm-image --nfe 5 --seeds 0,1,2,3,4 --out out/peers.json
    python bench/peers.py --model gmm-image --noise-schedule flow --nfe 5 --seeds 0,1,2,3,4 --out out/peers-flow.json
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from usf_fast import presets as P
from usf_fast.metrics import reference_samples, reference_spacing
from usf_fast.models import embedded_model
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.solve import DenseTeacher, tune_times

EVAL_SEED = 99_999
TEACHER_STEPS = 50


def spacing(ns) -> str:
    return "time_quadratic" if ns.kind in ("vp", "flow") else reference_spacing(ns)


PEERS = ("ld3", "dfo", "s4s")


def peers(model, nfe: int, noise: torch.Tensor, teacher: DenseTeacher, trials: int, which=PEERS) -> dict:
    ns = model.noise_schedule
    sp = spacing(ns)
    out = {}
    start = P.unipc(ns, nfe, order=3, spacing=sp, afs=True)
    if "ld3" in which:
        out["ld3"] = tune_times(model, start, noise, teacher, evaluations=trials, weights=False)[0]
    if "s4s" in which:
        out["s4s"] = tune_times(model, start, noise, teacher, evaluations=trials)[0]
    if "dfo" not in which:
        return out
    grid = [P.unipc(ns, nfe, order=o, prediction=p, spacing=sp, afs=a)
            for a in (False, True) for o in (2, 3) for p in ("data", "noise") if not (p == "noise" and ns.kind == "flow")]
    screened = sorted(((tune_times(model, s, noise, teacher, evaluations=1, weights=False)[1], i)
                       for i, s in enumerate(grid)))
    rest = max(2, (trials - len(grid)) // 2)
    tried = [tune_times(model, grid[i], noise, teacher, evaluations=rest, weights=False) for _, i in screened[:2]]
    out["dfo"] = min(tried, key=lambda p: p[1])[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gmm-image")
    ap.add_argument("--noise-schedule", default=None, help="flow for the mixtures' rectified-flow version")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rows", type=int, default=296_161, help="network rows per peer (default: S3's at NFE 5)")
    ap.add_argument("--train", type=int, default=512, help="training noises (default 512)")
    ap.add_argument("--peers", default=",".join(PEERS), help="which peers (default: all three)")
    ap.add_argument("--out", default="out/peers.json")
    args = ap.parse_args()
    if not args.peers or set(args.peers.split(",")) - set(PEERS):
        ap.error(f"--peers {args.peers}: choose from {', '.join(PEERS)} (comma-separated)")
    ns_arg = None
    if args.noise_schedule == "flow":
        from usf_fast import NoiseScheduleFlow
        ns_arg = NoiseScheduleFlow()
    model = embedded_model(args.model, ns_arg)
    ns = model.noise_schedule
    t_range = (ns.t_max, ns.t_min)
    ev = NoiseSet(model.sample_shape, 1024, EVAL_SEED, "evaluation")
    ref = reference_samples(model, ev.noise, *t_range, nfe=200)

    def rms(s) -> float:
        from usf_fast import sample
        with torch.no_grad():
            return float((sample(model, s, ev.noise.clone(), backend="torch") - ref).pow(2).mean().sqrt())
    trials = (args.rows - (TEACHER_STEPS + 1) * args.train) // (args.nfe * args.train)
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    done = {r["seed"] for r in rows}
    for seed in [int(s) for s in args.seeds.split(",")]:
        if seed in done:
            continue
        noise = torch.randn((args.train, *model.sample_shape), generator=torch.Generator().manual_seed(1000 * seed + 6),
                            dtype=torch.float64)
        t0 = time.time()
        model.rows = 0
        teacher = DenseTeacher(model, noise, *t_range, steps=TEACHER_STEPS)
        got = peers(model, args.nfe, noise, teacher, trials, args.peers.split(","))
        row = {"seed": seed, "trials": trials, "train": args.train, "rows_budget": args.rows,
               "seconds": time.time() - t0, **{k: rms(s) for k, s in got.items()},
               "schedules": {k: s.to_dict() for k, s in got.items()}}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "schedules"}), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    for k in PEERS:
        v = np.array([r[k] for r in rows if k in r])
        if not len(v):
            continue
        print(f"{k}: mean {v.mean():.4f} ({', '.join(f'{x:.4f}' for x in v)})")


if __name__ == "__main__":
    main()
