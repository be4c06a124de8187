"""USFScheduler against diffusers' own scheduler, interleaved: one sampling loop of each per round,
alternating, so a busy shared machine slows both alike; the ratio is the median of the per-round
ratios (with its quartiles). Complements bench/test_scheduler_step.py (pytest-benchmark runs each
implementation's rounds back to back, which on a noisy machine moves the ratio by 2×).

    python bench/scheduler_ratio.py [--cases dpmpp2m,unipc3] [--rounds 60] [--threads 2]

One round = set_timesteps + NFE steps on precomputed network outputs, as in the pytest benchmark
(the same cases, shapes and NFEs; our preset runs on the diffusers scheduler's own grid).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_scheduler_step import CASES, CONFIG, DEVICE, NFES, SHAPES, _sync  # noqa: E402

from usf_fast.adapters.diffusers import USFScheduler  # noqa: E402


def _loop(sched, outputs, noise, nfe):
    sched.set_timesteps(nfe, device=DEVICE)
    x = noise
    for i, t in enumerate(sched.timesteps):
        x = sched.step(outputs[i], t, x, return_dict=False)[0]
    _sync()


def measure(case: str, shape: tuple, nfe: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(shape, generator=g).to(DEVICE) for _ in range(nfe)]
    noise = torch.randn(shape, generator=g).to(DEVICE)
    make, preset, opts = CASES[case]
    theirs = make()
    ours = USFScheduler.from_config(CONFIG, preset=preset, preset_options=opts)
    times = {"usf": [], "diffusers": []}
    for _ in range(3):   # warm-up
        _loop(ours, outputs, noise, nfe)
        _loop(theirs, outputs, noise, nfe)
    for r in range(rounds):
        order = (("usf", ours), ("diffusers", theirs)) if r % 2 == 0 else (("diffusers", theirs), ("usf", ours))
        for name, sched in order:
            t0 = time.perf_counter()
            _loop(sched, outputs, noise, nfe)
            times[name].append(time.perf_counter() - t0)
    ratios = sorted(d / u for u, d in zip(times["usf"], times["diffusers"]))
    q = statistics.quantiles(ratios, n=4)
    return {"case": case, "shape": "x".join(map(str, shape)), "nfe": nfe,
            "usf_us": statistics.median(times["usf"]) * 1e6, "diffusers_us": statistics.median(times["diffusers"]) * 1e6,
            "ratio": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="dpmpp2m,unipc3", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"--cases {','.join(bad)}: must be among {', '.join(CASES)}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {args.threads} threads, "
          f"{DEVICE.type}, torch {torch.__version__}, {args.rounds} interleaved rounds")
    print("| case | latents | NFE | USFScheduler loop | diffusers loop | diffusers ÷ ours (median, quartiles) |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        for shape in SHAPES:
            for nfe in NFES:
                m = measure(case, shape, nfe, args.rounds)
                print(f"| {case} | {m['shape']} | {nfe} | {m['usf_us']:.0f} µs | {m['diffusers_us']:.0f} µs | "
                      f"{m['ratio']:.1f} ({m['ratio_q1']:.1f}–{m['ratio_q3']:.1f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
