"""Where a search's wall time goes: the fraction spent in network calls (issue "a search a real
model can afford", point 5; target >= 80 % on a GPU).

Runs one search (NFE 5; today's defaults, `--s3-only` the S³ search alone as measured on
2026-12-04, `--quick` QUICK) on a model whose network is timed call by call — on a GPU with
CUDA events around each call (no synchronisation inside the search; the events are read once at the
end), on the CPU with the wall clock — and prints the network's share of the search's wall time and
the rest (predictor fits, proposals, probes, combinations, logging).

    python bench/search_fraction.py --model digits --device cuda --out out/fraction.json
    python bench/search_fraction.py --model cifar-unet --device cuda      # random diffusers UNet2DModel, 3x32x32
    python bench/search_fraction.py --model digits --device cuda --quick  # QUICK: the solve stage's time apart

With a solve stage (the defaults, `--quick`, or `--solve N`) the stage's own wall time and the network's time
inside it are printed too (issue "Learned solver coefficients", GPU acceptance point: the solve
stage's wall time next to the network's).

`cifar-unet` is a randomly initialised diffusers `UNet2DModel` of DDPM's CIFAR-10 size (35.7 M
parameters, 32x32): its speed, not its samples, is what this measures.
"""
import argparse
import json
import os
import tempfile
import time

import torch

import usf_fast
from usf_fast.models import embedded_model
from usf_fast.search import QUICK, s3_search
from usf_fast.search.config import S3_ONLY
from usf_fast.search.s3 import S3Search


def cifar_unet(device):
    from diffusers import UNet2DModel

    from usf_fast.adapters.diffusers import wrap_unet
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).to(device).eval()
    config = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
              "prediction_type": "epsilon"}
    model = wrap_unet(unet, config)
    model.sample_shape = (3, 32, 32)
    return model


class Timed:
    """The network of `model`, timed per call (CUDA events on a GPU, the wall clock on the CPU)."""

    def __init__(self, model, device):
        self.cuda = torch.device(device).type == "cuda"
        self.events, self.seconds, self.calls = [], 0.0, 0
        net = model.net

        def timed(x, t, *rest):
            self.calls += 1
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                out = net(x, t, *rest)
                b.record()
                self.events.append((a, b))
                return out
            t0 = time.perf_counter()
            out = net(x, t, *rest)
            self.seconds += time.perf_counter() - t0
            return out
        model.net = timed

    def total(self, since: int = 0) -> float:
        """Seconds in network calls; with `since`, only the calls after the first `since`
        (on the CPU only the total is kept)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.events[since:]) / 1000.0
        return self.seconds


def time_solve_stage(timer: Timed) -> dict:
    """Wraps `S3Search.solve` so that its wall time and the network's time inside it are recorded
    (the stage ends with a synchronisation on a GPU)."""
    spent = {"solve_wall_s": 0.0, "solve_network_s": 0.0, "solve_calls": 0}
    inner = S3Search.solve

    def solve(self, finalists):
        if timer.cuda:
            torch.cuda.synchronize()
        calls, seconds, t0 = timer.calls, timer.seconds, time.perf_counter()
        out = inner(self, finalists)
        if timer.cuda:
            torch.cuda.synchronize()
        spent["solve_wall_s"] += time.perf_counter() - t0
        spent["solve_network_s"] += timer.total(calls) if timer.cuda else timer.seconds - seconds
        spent["solve_calls"] += timer.calls - calls
        return out
    S3Search.solve = solve
    return spent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits", help="an embedded model or cifar-unet")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--budget", type=int, default=None, help="default: SearchConfig's")
    ap.add_argument("--quick", action="store_true", help="the QUICK setting (a solve stage, <= 60,000 rows at NFE 5)")
    ap.add_argument("--s3-only", action="store_true", help="the S3 search alone (search.S3_ONLY, the defaults until 2026-12-05)")
    ap.add_argument("--solve", type=int, default=None, help="solve-stage trials (0: none; default: the setting's)")
    ap.add_argument("--out", default=None, help="append the result to this JSON file")
    args = ap.parse_args()
    model = cifar_unet(args.device) if args.model == "cifar-unet" else embedded_model(args.model)
    timer = Timed(model, args.device)
    spent = time_solve_stage(timer)
    if args.quick and args.s3_only:
        raise SystemExit("--quick, --s3-only: give one of them")
    opts = dict(QUICK) if args.quick else dict(S3_ONLY) if args.s3_only else {}
    opts.update({k: v for k, v in (("budget", args.budget), ("solve", args.solve)) if v is not None})
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = s3_search(model, args.nfe, device=args.device, chunk=args.chunk, progress=False,
                        log_path=os.path.join(d, "log.jsonl"), **opts)
        if timer.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    net = timer.total()
    row = {"model": args.model, "device": str(args.device),
           "gpu": torch.cuda.get_device_name() if timer.cuda else None, "nfe": args.nfe, "chunk": args.chunk,
           "rows": res.cost["total"], "calls": timer.calls, "wall_s": wall, "network_s": net,
           "network_fraction": net / wall, "options": opts,
           "setting": "quick" if args.quick else "s3-only" if args.s3_only else "default",
           **(spent if res.cost.get("solve") else {}), "improvement": res.improvement, "torch": torch.__version__,
           "usf_fast": usf_fast.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    print(f"{args.model} on {args.device}: {wall:.1f} s wall, {net:.1f} s in {timer.calls} network calls "
          f"({net / wall:.0%}); {res.cost['total']:,} rows")
    if res.cost.get("solve"):
        print(f"  solve stage: {spent['solve_wall_s']:.1f} s wall, {spent['solve_network_s']:.1f} s in "
              f"{spent['solve_calls']} network calls ({spent['solve_network_s'] / spent['solve_wall_s']:.0%}); "
              f"{res.cost['solve']:,} rows")
    if args.out:
        rows = json.load(open(args.out)) if os.path.exists(args.out) else []
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows + [row], f, indent=1)


if __name__ == "__main__":
    main()
