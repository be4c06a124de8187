"""Where does a cheap search lose (docs/experiments.md, "Why the cheap settings lost on the digits
UNet")? One search at a variant of bench/cost_study.py, then every stage-2 candidate and the 30 best
stage-1-only ones scored on cost_study's 1,024-sample evaluation set: rank correlations of the
stages' values with it, the best candidate the search ever evaluated, the one it chose.

    python bench/cost_diagnosis.py digits v233k 0 [OUT_DIR]
"""
import json
import os
import sys
import time

import numpy as np
from cost_study import EVAL_SEED, variant_options   # bench/ is on the path when this runs as a script
from scipy.stats import spearmanr

from usf_fast.models import embedded_model
from usf_fast.schedule import Schedule
from usf_fast.search import evaluate_schedules, make_metric, s3_search
from usf_fast.search.evaluate import NoiseSet
from usf_fast.search.log import read_evaluations
from usf_fast.search.s3 import preset_candidates


def main():
    model_name, variant, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out_dir = sys.argv[4] if len(sys.argv) > 4 else "out/diagnosis"
    os.makedirs(out_dir, exist_ok=True)
    model = embedded_model(model_name)
    ev = NoiseSet(model.sample_shape, 1024, EVAL_SEED, "evaluation")
    metric = make_metric("ref", model)
    t_range = (model.noise_schedule.t_max, model.noise_schedule.t_min)
    log = os.path.join(out_dir, f"{model_name}-{variant}-{seed}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    t0 = time.time()
    res = s3_search(model, 5, seed=seed, progress=False, log_path=log, **variant_options(variant, model.noise_schedule, 5))
    print(f"search {time.time() - t0:.0f} s, cost {res.cost}, its held-out improvement {res.improvement:+.1%}")
    by_key: dict = {}
    for r in read_evaluations(log):
        by_key.setdefault(r["key"], {"schedule": r["schedule"]})[r["fidelity"]] = r["metric"]
    s2 = [v for v in by_key.values() if "s2" in v]
    s1_top = sorted((v for v in by_key.values() if "s1" in v and "s2" not in v), key=lambda v: v["s1"])[:30]
    vals = evaluate_schedules(model, [Schedule.from_dict(v["schedule"]) for v in s2 + s1_top], ev, metric, t_range)
    best_preset = min(evaluate_schedules(model, [s for _, s in preset_candidates(model.noise_schedule, 5)], ev,
                                         metric, t_range))
    chosen = evaluate_schedules(model, [res.best], ev, metric, t_range)[0]
    s2_m, s2_ev = np.array([v["s2"] for v in s2]), np.array(vals[:len(s2)])
    s1_ev = np.array(vals[len(s2):])
    survivors = [(v["s1"], e) for v, e in zip(s2, s2_ev) if "s1" in v]
    print(f"chosen: {1 - chosen / best_preset:+.1%} over the best preset on the evaluation set")
    print(f"best stage-2 candidate: {1 - s2_ev.min() / best_preset:+.1%}, ranked {int((s2_m < s2_m[s2_ev.argmin()]).sum())}"
          f" by stage 2; Spearman stage 2 vs evaluation set {spearmanr(s2_m, s2_ev).statistic:.2f} (n={len(s2)})")
    print(f"Spearman stage 1 vs evaluation set among the survivors "
          f"{spearmanr([a for a, _ in survivors], [b for _, b in survivors]).statistic:.2f} (n={len(survivors)})")
    if len(s1_ev):
        print(f"best stage-1-only candidate: {1 - s1_ev.min() / best_preset:+.1%}")
    top8 = np.argsort(s2_m)[:8]
    print("the 8 best by stage 2 on the evaluation set:", [f"{1 - s2_ev[i] / best_preset:+.1%}" for i in top8])
    with open(os.path.join(out_dir, f"{model_name}-{variant}-{seed}.json"), "w") as f:
        json.dump({"s2": s2_m.tolist(), "eval_s2": s2_ev.tolist(), "eval_s1_top": s1_ev.tolist(),
                   "best_preset": best_preset, "chosen": chosen, "cost": res.cost}, f)


if __name__ == "__main__":
    main()
