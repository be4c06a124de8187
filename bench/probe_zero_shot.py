"""How well the Gaussian probe alone ranks real evaluations (docs/experiments.md: the probe warm start).

For each search log, Kendall τ between a summary of each stage-1 candidate's Gaussian-probe errors
(mean, max or log-sum-exp of the 8 scales' log10 errors) and its real metric — over all candidates,
and among the best quarter.

    python bench/probe_zero_shot.py out/abl/logs/plain_gmm-image_nfe5_b600_n256_s*.jsonl
"""
import argparse

import numpy as np
from scipy.stats import kendalltau

from usf_fast import Schedule
from usf_fast.noise_schedules import noise_schedule_from_dict
from usf_fast.search.log import read_evaluations
from usf_fast.search.probe import gaussian_probe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+", help="S³ JSON-lines logs")
    args = ap.parse_args()
    for path in args.logs:
        records = [(Schedule.from_dict(r["schedule"]), r["metric"]) for r in read_evaluations(path, "s1")
                   if np.isfinite(r["metric"] if r["metric"] is not None else np.inf)]
        # the presets at the start of every log carry the model's noise schedule
        ns = noise_schedule_from_dict(next(s.meta["noise_schedule"] for s, _ in records if "noise_schedule" in s.meta))
        probes = [gaussian_probe(s, ns) for s, _ in records]
        metrics = [m for _, m in records]
        p, m = np.stack(probes), np.asarray(metrics)
        summaries = {"mean": p.mean(1), "max": p.max(1), "lse": np.log10((10.0 ** p).sum(1))}
        best = np.argsort(m)[: len(m) // 4]
        cells = [f"{k} {kendalltau(v, m).statistic:.2f} (best quarter {kendalltau(v[best], m[best]).statistic:.2f})"
                 for k, v in summaries.items()]
        print(f"{path}: n={len(m)}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
