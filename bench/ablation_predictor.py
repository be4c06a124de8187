"""Predictor ablation for S³ (docs/experiments.md): predictor-guided evolution vs plain evolution.

For each seed, both arms run the same stage-1 search (same presets, operators, budget, noise) on an
embedded model; plain evolution draws its real evaluations at random from the proposals (a child
per parent), the guided search takes the predictor's picks (the search's default: a batch over all
proposals by expected improvement under the GP, each pick believed before the next; `--screen`,
`--predictor` for the others). Quality after n evaluations is measured two ways:

- held-out (the headline): the metric, on 1,024 fresh noise samples shared by every run, of the
  schedule the search would return after n evaluations (its best on its own stage-1 samples, 256
  by default like the search, `--samples`).
  This is the quality a user gets; the stage-1 metric itself overfits its samples (with 64, a
  schedule can score 0.011 there and 0.042 on fresh noise).
- in-sample: the best stage-1 metric so far (what the search optimises).

Reported per seed: the evaluations the guided search needs to reach — and stay at — the final
quality of plain evolution (600 evaluations), and the ratio to 600.

    python bench/ablation_predictor.py [--nfe 5] [--budget 600] [--seeds 0,1,2] [--model gmm-image]
    python bench/ablation_predictor.py --report out/a.json,out/b.json    # tables + plot of earlier runs

Also reported: the mean over seeds of each arm's curve, and where the guided mean reaches plain's
mean final quality; `--plot` draws every seed's held-out curve and the two means.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch

from usf_fast.models import embedded_model
from usf_fast.schedule import Schedule
from usf_fast.search import evaluate_schedules, make_metric, s3_search
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.log import read_evaluations
from usf_fast.search.s3 import PREDICTORS

QUALITY_SEED = 99_999  # the held-out noise of the quality curves (distinct from every search's noise)


def stage1_evaluations(log_path):
    """(key, schedule dict, metric) of every stage-1 evaluation, in the order the search made them."""
    return [(r["key"], r["schedule"], r["metric"]) for r in read_evaluations(log_path, "s1")]


def incumbents(evals):
    """[(n, key, schedule dict, stage-1 metric)] at every change of the best stage-1 metric."""
    out, best = [], math.inf
    for n, (key, sched, m) in enumerate(evals, 1):
        if m < best:
            best = m
            out.append((n, key, sched, m))
    return out


def evals_to_reach(curve, target):
    """First n from which the step curve [(n, value)] stays at or below target (None if it ends above)."""
    reach = None
    for n, v in curve:
        if v <= target:
            reach = reach or n
        else:
            reach = None
    return reach


def step_values(curve, n_max):
    """The step curve [(n, value)] as values after 1..n_max evaluations (nan before its first point)."""
    out, j, v = np.full(n_max, np.nan), 0, np.nan
    for n in range(1, n_max + 1):
        while j < len(curve) and curve[j][0] <= n:
            v = curve[j][1]
            j += 1
        out[n - 1] = v
    return out


def mean_curves(rows, name):
    """Mean over seeds of each arm's quality after n evaluations (n = 1..shortest plain run)."""
    n_max = min(r["evals"][0] for r in rows)
    return [np.mean([step_values(r[name]["curves"][arm], n_max) for r in rows], axis=0) for arm in (0, 1)]


def plot(rows, path, samples, nfe):
    """Held-out quality vs real evaluations: each seed faint, the mean over seeds bold, plain's mean
    final quality and the half-budget mark as guides."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    means = mean_curves(rows, "heldout")
    n_max = len(means[0])
    x = np.arange(1, n_max + 1)
    for arm, (color, label) in enumerate((("tab:gray", "plain evolution"), ("tab:blue", "predictor-guided"))):
        for r in rows:
            ax.plot(x, step_values(r["heldout"]["curves"][arm], n_max), color=color, alpha=0.18, lw=0.8)
        ax.plot(x, means[arm], color=color, lw=2.2, label=f"{label}, mean of {len(rows)} seeds")
    plain_final = means[0][-1]
    ax.axhline(plain_final, color="tab:gray", ls="--", lw=1, label="plain's mean final quality")
    ax.axvline(n_max / 2, color="k", ls=":", lw=1, label="half the evaluations")
    lo = np.nanmin([np.nanmin(c) for c in means])
    ax.set_ylim(0.9 * lo, 2.2 * plain_final)
    ax.set_xlabel("real evaluations (stage 1)")
    ax.set_ylabel("held-out RMS of the search's current best")
    ax.set_title(f"S³ predictor ablation (NFE {nfe}, {samples} samples per evaluation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows, samples, nfe, plot_path=None):
    """Per-seed tables (held-out and in-sample), the mean over seeds, and the plot."""
    for name, title in (("heldout", "held-out RMS (1,024 fresh samples) of the schedule each search would return"),
                        ("insample", f"in-sample: best stage-1 metric ({samples} samples) so far")):
        print(f"\n{title}\n")
        print("| seed | plain: final | guided: evals to reach and stay there | ratio | guided: final |")
        print("|---|---|---|---|---|")
        ratios = []
        for r in rows:
            d = r[name]
            need = d["guided_evals_to_plain_final"]
            ratios.append(need / r["evals"][0] if need else math.inf)
            ratio = f"{need / r['evals'][0]:.2f}" if need else "not reached"
            print(f"| {r['seed']} | {d['plain_final']:.5f} | {need or '—'} | {ratio} | {d['guided_final']:.5f} |")
        better = sum(r[name]["guided_final"] < r[name]["plain_final"] for r in rows)
        print(f"median ratio {np.median(ratios):.2f}; seeds at ≤ 0.5: {sum(x <= 0.5 for x in ratios)}/{len(ratios)}; "
              f"guided final better in {better}/{len(rows)}")
        plain_mean, guided_mean = mean_curves(rows, name)
        need = evals_to_reach(list(enumerate(guided_mean, 1)), plain_mean[-1])
        print(f"mean over seeds: plain after {len(plain_mean)} {plain_mean[-1]:.5f}, guided {guided_mean[-1]:.5f}; "
              f"guided mean reaches and stays at plain's final after "
              + (f"{need} evaluations (ratio {need / len(plain_mean):.2f})" if need else "— (not reached)")
              + "; guided mean at half the evaluations "
              f"{guided_mean[len(guided_mean) // 2 - 1]:.5f}")
    if plot_path:
        plot(rows, plot_path, samples, nfe)
        print(f"plot: {plot_path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="gmm-image", help="embedded model (gmm-image, digits, ...)")
    ap.add_argument("--screen", type=int, default=None, help="guided arm: evaluate a child from the predictor's best "
                                                             "1/screen of a parent's proposals (default: the search's)")
    ap.add_argument("--population", type=int, default=16, help="parents per generation, guided arm")
    ap.add_argument("--predictor", default="gp", choices=PREDICTORS,
                    help="guided arm's predictor: gp (Gaussian process, expected improvement; the search's default), "
                         "improve (P(child beats parent)) or metric (regression on the metric)")
    ap.add_argument("--no-probe", action="store_true", help="predictor on the encoding alone (no Gaussian-probe features)")
    ap.add_argument("--samples", type=int, default=256, help="noise samples per (stage-1) evaluation (the search default)")
    ap.add_argument("--quality-samples", type=int, default=1024, help="held-out samples of the quality curves")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--logs", default="out/abl/logs", help="JSONL logs of both arms (plain ones are reused: "
                                                          "resuming a complete log replays it without evaluating)")
    ap.add_argument("--out", default="out/ablation.json")
    ap.add_argument("--plot", default="out/ablation.png", help="PNG of the held-out curves (empty: none)")
    ap.add_argument("--report", default="", help="comma-separated JSON files of earlier runs (--out): print their "
                                                 "tables and plot together, run nothing")
    args = ap.parse_args()
    if args.report:
        rows = []
        for path in args.report.split(","):
            with open(path) as f:
                rows += json.load(f)
        report(sorted(rows, key=lambda r: r["seed"]), args.samples, args.nfe, args.plot)
        return
    torch.set_num_threads(args.threads)
    model = embedded_model(args.model)
    metric = make_metric("ref", model)
    ns = model.noise_schedule
    quality_set = NoiseSet(model.sample_shape, args.quality_samples, QUALITY_SEED, "quality")
    heldout_cache = {}
    os.makedirs(args.logs, exist_ok=True)

    def heldout_curve(evals):
        inc = incumbents(evals)
        todo = [(k, s) for _, k, s, _ in inc if k not in heldout_cache]
        vals = evaluate_schedules(model, [Schedule.from_dict(s) for _, s in todo], quality_set, metric,
                                  (ns.t_max, ns.t_min))
        heldout_cache.update({k: v for (k, _), v in zip(todo, vals)})
        return [(n, heldout_cache[k]) for n, k, _, _ in inc]

    common = dict(budget=args.budget, stage_split=1.0, heldout=128, progress=False, samples=(args.samples, 256),
                  solve=0, heldout_presets=8)   # the S3 search alone, as before 2026-12-05: the predictor is compared
    tag = f"{args.model}_nfe{args.nfe}_b{args.budget}" + (f"_n{args.samples}" if args.samples != 64 else "")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        plain_log = os.path.join(args.logs, f"plain_{tag}_s{seed}.jsonl")
        s3_search(model, args.nfe, seed=seed, use_predictor=False, log_path=plain_log,
                  resume=os.path.exists(plain_log), **common)
        t_plain = time.time() - t0
        guided_log = os.path.join(args.logs, f"guided_{args.predictor}_{tag}_s{seed}.jsonl")
        if os.path.exists(guided_log):
            os.remove(guided_log)  # the guided arm depends on the predictor's code: always run it afresh
        t0 = time.time()
        guided = s3_search(model, args.nfe, seed=seed, use_predictor=True, predictor=args.predictor, screen=args.screen,
                           population=args.population, probe=not args.no_probe, log_path=guided_log, **common)
        t_guided = time.time() - t0
        pe, ge = stage1_evaluations(plain_log), stage1_evaluations(guided_log)
        row = {"seed": seed, "evals": [len(pe), len(ge)], "seconds": [t_plain, t_guided],
               "tau_last": guided.taus[-1] if guided.taus else None}
        for name, curves in (("heldout", (heldout_curve(pe), heldout_curve(ge))),
                             ("insample", ([(n, m) for n, _, _, m in incumbents(pe)],
                                           [(n, m) for n, _, _, m in incumbents(ge)]))):
            plain_final, guided_final = curves[0][-1][1], curves[1][-1][1]
            row[name] = {"plain_final": plain_final, "guided_final": guided_final,
                         "guided_evals_to_plain_final": evals_to_reach(curves[1], plain_final),
                         "curves": curves}
        rows.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "curves"})
                          for k, v in row.items()}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f)
    report(rows, args.samples, args.nfe, args.plot)


if __name__ == "__main__":
    main()
