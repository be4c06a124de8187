"""A search's host work, by phase, on a network that costs nothing (issue "Search numbers you can
trust", point 5: at most 10 s for a default NFE-5 search).

The network is the exact denoiser of Gaussian data N(0, s²) in 3x16x16 (ε̂ = σ x / (α² s² + σ²):
one multiply), so everything the wall clock shows besides it is the search's own work. Each phase's
time is exclusive (a phase called inside another is counted once, in the inner one):

    network     the network's calls
    sampling    the solver loops and the metric around the network (`evaluate_schedules`)
    reference   the reference solves (`reference_samples`) less their network calls
    probe       the Gaussian-probe features of proposals (`gaussian_probe`)
    propose     mutation, crossover, novelty filtering (`S3Search.propose`)
    predictor   the GP's fit and expected-improvement picks (`S3Search.choose`)
    log         the JSON-lines log (`SearchLog.add`)
    import      modules imported during the search (first use)
    other       the rest (bookkeeping, the final table's host work, ...)

It prints one JSON line (phases in seconds, the rows, a fingerprint of the search's evaluations:
the same fingerprint before and after a speed-up means the search made the same choices) and a
table.

    python bench/host_overhead.py --nfe 5 --seed 0
    python bench/host_overhead.py --nfe 5 --seed 0 --model gmm-image     # the embedded mixture's net
"""
import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time

import torch

import usf_fast
from usf_fast.model import DiffusionModel
from usf_fast.noise_schedules import NoiseScheduleVP

PHASES = ("network", "sampling", "reference", "probe", "propose", "predictor", "log", "import", "other")


class Phases:
    """Exclusive wall time per phase: a phase entered inside another pauses the outer one."""

    def __init__(self):
        self.seconds = {p: 0.0 for p in PHASES}
        self.stack = []   # (phase, start of its current uninterrupted stretch)

    def enter(self, phase):
        now = time.perf_counter()
        if self.stack:
            outer, t0 = self.stack[-1]
            self.seconds[outer] += now - t0
        self.stack.append((phase, now))

    def leave(self):
        now = time.perf_counter()
        phase, t0 = self.stack.pop()
        self.seconds[phase] += now - t0
        if self.stack:
            self.stack[-1] = (self.stack[-1][0], now)

    def wrap(self, owner, name, phase):
        fn = getattr(owner, name)

        def timed(*a, **k):
            self.enter(phase)
            try:
                return fn(*a, **k)
            finally:
                self.leave()
        setattr(owner, name, timed)


def free_model() -> DiffusionModel:
    """Exact ε̂ of N(0, 0.5²) data on VP linear: a network that costs one multiply."""
    ns = NoiseScheduleVP()
    s2 = 0.25

    def net(x, t):
        shape = (-1,) + (1,) * (x.dim() - 1)
        a, s = ns.marginal_alpha(t).view(shape), ns.marginal_std(t).view(shape)
        return x * s / (a * a * s2 + s * s)
    return DiffusionModel(net, ns, "eps", sample_shape=(3, 16, 16))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="free", help="free (default: the Gaussian denoiser) or an embedded model")
    ap.add_argument("--nfe", type=int, default=5, help="default 5")
    ap.add_argument("--seed", type=int, default=0, help="the search's seed (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--solve", action="store_true",
                    help="today's default search (with its solve stage); default: the S3 search alone (search.S3_ONLY, "
                         "the defaults until 2026-12-05, what docs/benchmarks.md's table measured)")
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from usf_fast.models import embedded_model
    from usf_fast.search import s3_search
    model = free_model() if args.model == "free" else embedded_model(args.model)

    ph = Phases()
    net = model.net

    def timed_net(*a):
        ph.enter("network")
        try:
            return net(*a)
        finally:
            ph.leave()
    model.net = timed_net
    s3 = importlib.import_module("usf_fast.search.s3")
    log = importlib.import_module("usf_fast.search.log")
    metrics = importlib.import_module("usf_fast.metrics")
    evaluate = importlib.import_module("usf_fast.search.evaluate")
    ph.wrap(s3, "evaluate_schedules", "sampling")
    ph.wrap(s3, "gaussian_probe", "probe")
    ph.wrap(s3.S3Search, "propose", "propose")
    ph.wrap(s3.S3Search, "choose", "predictor")
    ph.wrap(log.SearchLog, "add", "log")
    ph.wrap(metrics, "reference_samples", "reference")
    ph.wrap(evaluate, "reference_samples", "reference")
    real_import = __builtins__.__import__ if hasattr(__builtins__, "__import__") else __import__
    before = set(sys.modules)

    def timed_import(name, *a, **k):
        if name in sys.modules:
            return real_import(name, *a, **k)
        ph.enter("import")
        try:
            return real_import(name, *a, **k)
        finally:
            ph.leave()
    import builtins
    builtins.__import__ = timed_import

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log.jsonl")
        ph.enter("other")
        t0 = time.perf_counter()
        from usf_fast.search.config import S3_ONLY
        res = s3_search(model, args.nfe, progress=False, log_path=path, seed=args.seed, **({} if args.solve else S3_ONLY))
        wall = time.perf_counter() - t0
        ph.leave()
        builtins.__import__ = real_import
        lines = [json.loads(line) for line in open(path)]
    evals = [(r["key"], r["fidelity"], r["metric"]) for r in lines if r.get("type") == "eval"]
    fingerprint = hashlib.sha256(json.dumps(evals).encode()).hexdigest()[:16]
    secs = {k: round(v, 2) for k, v in ph.seconds.items()}
    host = wall - ph.seconds["network"] - ph.seconds["sampling"] - ph.seconds["reference"]
    row = {"model": args.model, "nfe": args.nfe, "seed": args.seed, "threads": args.threads, "wall_s": round(wall, 2),
           "host_s": round(host, 2), "phases_s": secs, "rows": res.cost["total"], "evaluations": len(evals),
           "improvement": res.improvement, "fingerprint": fingerprint, "modules_imported": len(set(sys.modules) - before),
           "usf_fast": usf_fast.__version__, "torch": torch.__version__}
    print(json.dumps(row), flush=True)
    print(f"{'phase':10s} {'seconds':>8s}")
    for k in PHASES:
        print(f"{k:10s} {ph.seconds[k]:8.2f}")
    print(f"{'wall':10s} {wall:8.2f}   host work (wall less network, sampling, reference): {host:.2f} s; "
          f"{res.cost['total']:,} rows, {len(evals)} evaluations, fingerprint {fingerprint}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
