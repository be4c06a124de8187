"""`usf-fast sample` and `usf-fast compare`: a preset or a schedule file on an embedded model."""
from __future__ import annotations

import math
import os
import time

import torch
from tqdm.auto import tqdm

from .. import presets as P
from ..api import sample
from ..files import atomic_write
from ..metrics import reference_distance, reference_samples, sample_metrics
from ..models import embedded_model
from ..pictures import write_samples_picture
from ..schedule import Schedule
from .options import _check_counts, _ints, _noise_schedule, _parse_options


def _build_schedule(args, ns) -> Schedule:
    if args.schedule:   # the file decides everything a preset flag would: a flag given with it is refused
        given = [f for f, v in (("--preset", args.preset), ("--order", args.order), ("--spacing", args.spacing),
                                ("--option", args.option)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with a preset, not with --schedule {args.schedule} (the file "
                             "fixes the solver)")
        s = Schedule.from_json(args.schedule)
        if args.nfe is not None and args.nfe != s.nfe:
            raise ValueError(f"--nfe {args.nfe}: the schedule {args.schedule} makes {s.nfe} model evaluations; "
                             f"leave --nfe out (or give {s.nfe})")
        return s
    opts = _parse_options(args.option)
    if args.order is not None:
        opts["order"] = args.order
    if args.spacing is not None:
        opts["spacing"] = args.spacing
    return P.get(args.preset or "unipc", ns, 5 if args.nfe is None else args.nfe, **opts)


def _model_and_noise(args):
    _check_counts(args, "--num-samples")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: must be >= 0")
    model = embedded_model(args.model, _noise_schedule(args.noise_schedule))
    ns = model.noise_schedule
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.num_samples, *model.sample_shape, generator=g, dtype=torch.float64)
    return ns, model, noise


def cmd_sample(args) -> int:
    if args.grid_size < 1:
        raise ValueError(f"--grid-size {args.grid_size}: must be >= 1")
    _check_output_files(args)
    ns, model, noise = _model_and_noise(args)
    schedule = _build_schedule(args, ns)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    t0 = time.perf_counter()
    with torch.no_grad():
        x = sample(model, schedule, noise=noise.to(dtype), backend=args.backend)
    print(schedule.summary(ns.time_name))
    print(f"model {args.model} ({_label(model.noise_schedule)}), {args.num_samples} samples, {args.dtype}, "
          f"backend {args.backend}, {time.perf_counter() - t0:.2f} s\nNFE {schedule.nfe}", flush=True)
    ref = None
    if not args.no_reference:
        print(f"computing the high-accuracy reference for ref_rmse (float64 UniPC-3, 200 NFE, {args.num_samples} "
              "samples; --no-reference skips it)", flush=True)
        ref = reference_samples(model, noise, schedule.timesteps[0], schedule.timesteps[-1],
                                batch_size=max(1, min(100, args.num_samples)), progress=True)
    m = sample_metrics(model, x, ref)
    _print_metrics(m, args.model)
    _write_outputs(args, model, schedule, x, m)
    return 0


def _print_metrics(m: dict, model_name: str) -> None:
    if m.get("ref_rmse") is not None and math.isfinite(m["ref_rmse"]):   # not with --no-reference
        print(f"ref_rmse {m['ref_rmse']:.6g}   (RMS distance to a high-accuracy ODE solution from the same noise)")
    space = "the digits feature network's space" if model_name.startswith("digits") else "the exact data moments"
    print(f"frechet  {m['frechet']:.6g}   (Fréchet distance of the samples to the data, in {space})")
    if "nll" in m:
        print(f"nll      {m['nll']:.6g}   (exact negative log-likelihood per dimension, nats)")


def _check_output_files(args) -> None:
    for flag, path in (("--out", args.out), ("--save-schedule", args.save_schedule), ("--grid", args.grid)):
        if path and os.path.isdir(path):
            raise ValueError(f"{flag} {path}: is a folder; give a file path")


def _write_outputs(args, model, schedule: Schedule, x: torch.Tensor, m: dict) -> None:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, lambda f: torch.save({"samples": x, "schedule": schedule.to_dict(), "metrics": m,
                                                    "nfe": schedule.nfe}, f))
        print(f"wrote {args.out}")
    if args.save_schedule:
        schedule.to_json(args.save_schedule)
        print(f"wrote {args.save_schedule}")
    if args.grid:
        gmm = getattr(model.net, "gmm", None)
        data = gmm.sample_data(x.shape[0], torch.Generator().manual_seed(1)) if gmm is not None and x.dim() == 2 else None
        write_samples_picture(x, args.grid, f"{schedule.name or 'schedule'}, NFE {schedule.nfe}", args.grid_size, data)
        print(f"wrote {args.grid}")


def cmd_compare(args) -> int:
    ns, model, noise = _model_and_noise(args)
    nfes = _ints("--nfe", args.nfe)
    spacings = args.spacings.split(",") if args.spacings else list(P.spacings_for(ns))
    for sp in spacings:
        if sp not in P.spacings_for(ns):
            raise ValueError(f"--spacings: {sp!r} must be among {', '.join(P.spacings_for(ns))}")
    ref = reference_samples(model, noise, ns.t_max, ns.t_min)
    rows = []
    jobs = [(n, label, sp, s) for n in nfes for label, sp, s in P.standard_schedules(ns, n, spacings)]
    results = {}
    for n, label, sp, s in tqdm(jobs, desc="presets", unit="run", disable=not args.progress):
        with torch.no_grad():
            x = sample(model, s, noise=noise.float(), check_finite=False)
        err = reference_distance(x, ref) if bool(torch.isfinite(x).all()) else float("inf")
        results.setdefault(label, {}).setdefault(n, []).append((err, sp))
    print(f"model {args.model} ({_label(model.noise_schedule)}), {args.num_samples} samples; "
          f"RMS distance to the high-accuracy ODE solution, best spacing next to it")
    width = max(len(k) for k in results)
    print(" " * width + "".join(f"  {'NFE ' + str(n):<24s}" for n in nfes))
    best = {n: (math.inf, "") for n in nfes}
    for label, per_n in results.items():
        cells = []
        for n in nfes:
            if n not in per_n:
                cells.append(f"  {'-':24s}")
                continue
            err, sp = min(per_n[n])
            if err < best[n][0]:
                best[n] = (err, f"{label} [{sp}]")
            cells.append(f"  {err:9.3e} {sp:14s}")
        rows.append(f"{label:{width}s}" + "".join(cells))
    print("\n".join(rows))
    for n in nfes:
        print(f"best at NFE {n}: {best[n][1]}  {best[n][0]:.3e}")
    return 0


def _label(ns) -> str:
    return getattr(ns, "schedule", ns.kind)
