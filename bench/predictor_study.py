"""How well does a predictor rank the *next* candidates of a search? (docs/experiments.md, predictor ablation)

The predictor's Kendall τ that the search reports is measured on a random 20% of the evaluated
pool, which spans presets of very different quality and is easy to rank. What the search needs is
to rank the next proposals: children of the best schedules, close to each other. This fits a
predictor on the first n stage-1 evaluations of a plain-evolution log and measures, on the next
150, Kendall τ and the overlap of the predicted-best quarter with the actual best quarter
(0.25 = chance). Models: the MLP ensemble of `Predictor` on the encoding alone and on the encoding
plus the Gaussian-probe errors (`usf_fast.search.probe`, the search's input), the Gaussian process of
`usf_fast.search.gp` (ARD Matérn-5/2) on the same input, and scikit-learn tree ensembles for contrast.

    python bench/ablation_predictor.py                # writes out/abl/logs/plain_gmm-image_nfe5_b600_n256_s<seed>.jsonl
    python bench/predictor_study.py out/abl/logs/plain_gmm-image_nfe5_b600_n256_s0.jsonl
"""
import argparse

import numpy as np
import torch
from scipy.stats import kendalltau

from usf_fast.noise_schedules import noise_schedule_from_dict
from usf_fast.schedule import Schedule
from usf_fast.search.gp import GPPredictor
from usf_fast.search.log import read_evaluations
from usf_fast.search.predictor import Predictor
from usf_fast.search.space import SearchSpace


def load(path):
    """Encodings, encodings + Gaussian-probe errors (the search's predictor input), metrics."""
    xs, fs, ys, space = [], [], [], None
    for r in read_evaluations(path, "s1"):
        s = Schedule.from_dict(r["schedule"])
        if space is None:
            space = SearchSpace(noise_schedule_from_dict(s.meta["noise_schedule"]) if "noise_schedule" in s.meta
                                else __import__("usf_fast").NoiseScheduleVP("linear"), s.nfe)
        xs.append(space.encode(s))
        fs.append(space.features(s))
        ys.append(r["metric"])
    return np.stack(xs), np.stack(fs), np.array(ys)


def mlp(x, y, xt):
    return Predictor(x.shape[1], seed=0).fit(x, y).predict(xt)


def gp(x, y, xt):
    return GPPredictor().fit(x, y).predict(xt)[0]


def extra_trees(x, y, xt):
    from sklearn.ensemble import ExtraTreesRegressor
    return ExtraTreesRegressor(300, min_samples_leaf=2, random_state=0, n_jobs=1).fit(x, Predictor._target(y)).predict(xt)


def boosted_trees(x, y, xt):
    from sklearn.ensemble import HistGradientBoostingRegressor
    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0).fit(
        x, Predictor._target(y)).predict(xt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--at", default="150,300,450", help="pool sizes n to fit on (the next 150 are tested)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for path in args.logs:
        enc, feat, y = load(path)
        print(f"{path}: {len(y)} stage-1 evaluations; cells are (Kendall τ, top-quarter overlap) on the next 150")
        for name, fn, x in (("MLP, encoding", mlp, enc), ("MLP, encoding + probe", mlp, feat),
                            ("GP, encoding + probe", gp, feat),
                            ("extra trees, encoding", extra_trees, enc), ("boosted trees, encoding", boosted_trees, enc)):
            cells = []
            for n in (int(v) for v in args.at.split(",")):
                if n + 20 > len(y):
                    continue
                yt = y[n:n + 150]
                s = fn(x[:n], y[:n], x[n:n + 150])
                fin = np.isfinite(yt)
                tau = kendalltau(s[fin], yt[fin]).statistic
                q = len(yt) // 4
                overlap = len(set(np.argsort(s)[:q]) & set(np.argsort(np.where(fin, yt, np.inf))[:q])) / q
                cells.append(f"n={n}: ({tau:.2f}, {overlap:.2f})")
            print(f"  {name:24s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
