"""`usf-fast` command line: sample, compare, search, generate, show, info, presets."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time

import torch
from tqdm.auto import tqdm

from . import presets as P
from ._version import __version__
from .api import sample
from .backends import BACKENDS, backend_status, resolve_backend
from .files import atomic_write, printable
from .metrics import reference_distance, reference_samples, sample_metrics
from .model import DiffusionModel
from .models import EMBEDDED_MODELS, embedded_model
from .noise_schedules import NoiseScheduleEDM, NoiseScheduleFlow, NoiseScheduleVP
from .pictures import write_compare_grid, write_samples_picture
from .schedule import Schedule
from .search.config import THOROUGH, SearchConfig

NOISE_SCHEDULES = ("linear", "cosine", "edm", "flow")


def _noise_schedule(name: str | None):
    """--noise-schedule: None = the model's own (VP linear; flow for digits-flow)."""
    if name is None:
        return None
    if name == "edm":
        return NoiseScheduleEDM()
    if name == "flow":   # rectified flow; the embedded mixtures then predict the velocity
        return NoiseScheduleFlow()
    return NoiseScheduleVP(name)


def _parse_options(items) -> dict:
    """KEY=VALUE pairs; values parsed as JSON when possible (numbers, true/false), else strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _ints(flag: str, text: str, minimum: int = 1) -> list[int]:
    """A comma-separated list of integers >= minimum, or a ValueError naming the flag."""
    try:
        vals = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: must be comma-separated integers") from None
    for v in vals:
        if v < minimum:
            raise ValueError(f"{flag} {v}: must be >= {minimum}")
    return vals


def _search_defaults() -> dict:
    """SearchConfig's field defaults (usf_fast.search.config: cheap, unlike the search itself)."""
    return {f.name: f.default for f in dataclasses.fields(SearchConfig)}


def _thorough_flags() -> dict:
    """search.THOROUGH as flag values."""
    t = THOROUGH
    return {"budget": t["budget"], "samples": t["samples"][0], "samples2": t["samples"][1], "heldout": t["heldout"],
            "heldout_presets": "all" if t["heldout_presets"] is None else str(t["heldout_presets"]),
            "reference_nfe": t["reference_nfe"]}


def _check_counts(args, *flags) -> None:
    """Integer flags that must be >= 1 (sample counts, budgets)."""
    for flag in flags:
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None and v < 1:
            raise ValueError(f"{flag} {v}: must be >= 1")


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


def load_model(spec: str, noise_schedule: str | None = None):
    """An embedded model name, or 'package.module:factory' (a callable returning a DiffusionModel)."""
    if spec in EMBEDDED_MODELS:
        return embedded_model(spec, _noise_schedule(noise_schedule))
    if ":" not in spec:
        raise ValueError(f"--model {spec!r}: use an embedded model ({', '.join(EMBEDDED_MODELS)}) "
                         "or package.module:factory")
    mod_name, fn_name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--model {spec!r}: cannot load ({e})") from None
    model = factory()
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"--model {spec!r}: the factory returned {type(model).__name__}, not a usf_fast.DiffusionModel")
    return model


def cmd_search(args) -> int:
    device = _search_device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _search(args, 0, device)
    import datetime

    import torch.distributed as dist  # launched by torchrun
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise ValueError(f"--dist-timeout {args.dist_timeout}: must be a number of seconds > 0")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=args.dist_timeout))
    try:
        code = _search(args, dist.get_rank(), device)
        dist.barrier()   # rank 0 writes the outputs; no process leaves the group while another still uses it
    except RuntimeError as e:   # gloo / nccl: a peer died, was stopped, or never answered
        if not _peer_failure(e):
            raise   # the network's own error, out of memory, ...: reported as it is
        raise ValueError(f"a peer process of this torchrun job is gone or stalled (no answer within --dist-timeout "
                         f"{args.dist_timeout:g} s: {_one_line(e)[:200]}); the log keeps the evaluations made: rerun "
                         "with --resume") from e
    finally:
        if owned:
            try:
                dist.destroy_process_group()
            except RuntimeError:
                pass
    return code


def _peer_failure(e: BaseException) -> bool:
    """A collective that failed because another process is gone or silent (not a local error)."""
    import torch.distributed as dist
    if isinstance(e, getattr(dist, "DistBackendError", ())) or isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e).lower()
    return any(k in text for k in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                                   "peer", "gloo", "nccl"))


def _search_device(spec: str) -> str:
    """--device: 'auto' = the GPU when there is one; under torchrun each process takes the GPU of its
    LOCAL_RANK (an explicit index is kept)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        spec = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu (or auto)")
        if dev.index is not None:   # torchrun's processes: each its own GPU (nccl needs it current)
            torch.cuda.set_device(dev)
    return spec


PIPELINE_FLAGS = ("prompts", "guidance", "height", "width", "max_batch")


def _pipeline_model(args, device: str):
    """--model diffusers:DIR: the saved pipeline's network on its latents (prompts encoded once)."""
    from .adapters.pipeline import load_pipeline, pipeline_model, read_prompts
    prompts = read_prompts(args.prompts) if args.prompts else None
    pipe = load_pipeline(args.model[len("diffusers:"):], device=device)
    pm = pipeline_model(pipe, prompts=prompts, guidance=args.guidance, height=args.height, width=args.width,
                        max_batch=args.max_batch)
    if prompts:
        for flag, n in (("--samples", args.samples), ("--samples2", args.samples2), ("--samples3", args.samples3 or 0),
                        ("--heldout", args.heldout)):
            if n % len(prompts):
                raise ValueError(f"{flag} {n}: must be a multiple of the {len(prompts)} prompts (sample r uses prompt "
                                 f"r mod {len(prompts)})")
    return pm.model, pm.shape


def _fill_search_defaults(args) -> None:
    """The search flags the user left out (None): SearchConfig's defaults, or with --thorough the
    earlier ones (search.THOROUGH); flags given always win."""
    d = _search_defaults()
    default = {"budget": d["budget"], "samples": d["samples"][0], "samples2": d["samples"][1], "heldout": d["heldout"],
               "heldout_presets": "all" if d["heldout_presets"] is None else str(d["heldout_presets"]),
               "reference_nfe": d["reference_nfe"]}
    thorough = _thorough_flags()
    for name, value in default.items():
        if getattr(args, name) is None:
            setattr(args, name, thorough[name] if args.thorough else value)
    if args.stage_split is None:   # three stages: the fractions measured in docs/experiments.md (h3)
        args.stage_split = "0.6,0.9" if args.samples3 else f"{d['stage_split']:g}"


def _stage_split(args):
    """--stage-split as SearchConfig takes it: one fraction for two stages, two for three."""
    try:
        fr = tuple(float(v) for v in args.stage_split.split(","))
    except ValueError:
        raise ValueError(f"--stage-split {args.stage_split}: must be one fraction (two stages) or two comma-separated "
                         "increasing fractions (three stages, with --samples3) in (0, 1]") from None
    want = 2 if args.samples3 else 1
    if len(fr) != want or any(not 0 < f <= 1 for f in fr) or (want == 2 and fr[1] <= fr[0]):
        raise ValueError(f"--stage-split {args.stage_split}: must be {'two increasing fractions' if want == 2 else 'one fraction'} "
                         f"in (0, 1] for {want + 1} stages" + ("" if args.samples3 else " (a third stage needs --samples3)"))
    return fr[0] if want == 1 else fr


def _check_search_args(args) -> None:
    """Every number a search takes, checked before anything is loaded or written."""
    _fill_search_defaults(args)
    _check_counts(args, "--budget", "--samples", "--samples2", "--samples3", "--heldout", "--chunk", "--reference-nfe",
                  "--finalists")
    split = _stage_split(args)
    # the budget against the stages (SearchConfig's own check), before anything is loaded or written
    SearchConfig(nfe=1, budget=args.budget, stage_split=split,
                 samples=(args.samples, args.samples2) + ((args.samples3,) if args.samples3 else ()))
    if args.heldout_presets != "all":
        try:
            ok = int(args.heldout_presets) >= 1
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"--heldout-presets {args.heldout_presets}: must be 'all' or an integer >= 1")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: must be >= 0")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes >= 0):
        raise ValueError(f"--max-minutes {args.max_minutes}: must be a finite number >= 0")
    if args.metric in ("exact", "fd", "fid"):
        for flag in ("--samples", "--samples2", "--samples3", "--heldout"):
            if getattr(args, flag[2:]) is not None and getattr(args, flag[2:]) < 2:
                raise ValueError(f"{flag} {getattr(args, flag[2:])}: metric {args.metric} (a Fréchet distance) needs "
                                 "at least 2 samples")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: exists and is not a folder")


def _search_space(args, model, nfe: int):
    """The search space the flags ask for, or None for the default one."""
    if not (args.extra_points or args.singlestep_starts or args.implicit_corrector):
        return None
    from .search import SearchSpace
    return SearchSpace(model.noise_schedule, nfe, extra_points=args.extra_points, singlestep=args.singlestep_starts,
                       implicit=args.implicit_corrector)


def _with_pipeline_meta(schedule: Schedule, args) -> Schedule:
    """The pipeline settings a schedule was searched with, for `generate`."""
    return schedule.replace(meta=dict(schedule.meta, pipeline={"guidance": args.guidance, "height": args.height,
                                                               "width": args.width}))


def _search(args, rank: int, device: str) -> int:
    _check_search_args(args)
    # imported here: the search (scipy.stats, the predictors) adds 0.4 s to every other command's start
    from .search import s3_search
    from .search.report import plot_metric_vs_nfe, plot_schedule
    if args.model.startswith("diffusers:"):
        model, shape = _pipeline_model(args, device)
    else:
        given = [f"--{f.replace('_', '-')}" for f in PIPELINE_FLAGS if getattr(args, f) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for --model diffusers:DIR (a saved diffusers pipeline)")
        model, shape = load_model(args.model, args.noise_schedule), None
    if args.shape:
        shape = tuple(_ints("--shape", args.shape))
    nfes = _ints("--nfe", args.nfe)
    metric_options = {"stats": args.fid_stats, "weights": args.fid_weights, "device": device} if args.metric == "fid" else None
    logs = [os.path.join(args.out, f"log_nfe{n}.jsonl") for n in nfes]
    if args.resume and not any(os.path.exists(p) for p in logs):
        raise ValueError(f"--resume: no search log (log_nfe<N>.jsonl) in {args.out}; nothing to resume "
                         "(run without --resume to start a search)")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    t0 = time.time()
    for n in nfes:
        remaining = None if args.max_minutes is None else max(0.0, args.max_minutes - (time.time() - t0) / 60)
        log_path = os.path.join(args.out, f"log_nfe{n}.jsonl")
        # --resume on a multi-NFE search: an NFE the killed run never reached starts here
        resume = args.resume and os.path.exists(log_path)
        res = s3_search(model, n, space=_search_space(args, model, n), metric=args.metric, metric_options=metric_options, seed=args.seed,
                        budget=args.budget, heldout=args.heldout, finalists=args.finalists,
                        samples=(args.samples, args.samples2) + ((args.samples3,) if args.samples3 else ()),
                        stage_split=_stage_split(args),
                        heldout_presets=None if args.heldout_presets == "all" else int(args.heldout_presets),
                        use_predictor=not args.no_predictor, predictor=args.predictor, shape=shape, log_path=log_path,
                        resume=resume,
                        max_minutes=remaining, progress=rank == 0, chunk=args.chunk, device=device,
                        reference_nfe=args.reference_nfe,
                        reference_dtype={"float64": torch.float64, "float32": torch.float32}[args.reference_dtype])
        if args.model.startswith("diffusers:"):   # generate then runs it on the network it was searched on
            res.best = _with_pipeline_meta(res.best, args)
        results[n] = res
        if rank == 0:
            res.best.to_json(os.path.join(args.out, f"best_nfe{n}.json"))
            print(res.summary() + "\n")
    if rank != 0:
        return 0
    last = results[nfes[-1]]
    last.best.to_json(os.path.join(args.out, "best.json"))
    lines = [f"{'NFE':>4s}  {'search':>10s}  {'best preset':>11s}  {'improvement':>11s}  best preset", ]
    for n, r in results.items():
        lines.append(f"{n:4d}  {r.best_metric:10.5g}  {r.best_preset[1]:11.5g}  {r.improvement:+11.1%}  {r.best_preset[0]}")
    table = "\n".join(lines)
    print(f"held-out {args.metric} metric, lower is better:\n{table}")
    atomic_write(os.path.join(args.out, "summary.txt"),
                 table + "\n\n" + "\n\n".join(r.summary() for r in results.values()) + "\n")
    plot_metric_vs_nfe(results, os.path.join(args.out, "metric_vs_nfe.png"), args.metric)
    plot_schedule(last.best, model.noise_schedule, os.path.join(args.out, "schedule.png"))
    print(f"wrote {args.out}/best.json, summary.txt, metric_vs_nfe.png, schedule.png, log_nfe*.jsonl "
          f"({time.time() - t0:.0f} s)")
    return 0


def cmd_generate(args) -> int:
    """Images from a saved pipeline with a schedule file; with --compare, the same noise through a
    preset at the same NFE and a side-by-side grid."""
    from .adapters.pipeline import generate, generate_preset, load_pipeline, read_prompts
    schedule = Schedule.from_json(args.schedule)
    prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    if args.compare is not None and args.compare not in P.PRESETS:
        raise ValueError(f"--compare {args.compare!r}: must be one of {', '.join(P.PRESETS)}")
    if not args.model.startswith("diffusers:"):
        raise ValueError(f"--model {args.model!r}: generate runs a saved pipeline: diffusers:DIR")
    device = _search_device(args.device)
    pipe = load_pipeline(args.model[len("diffusers:"):], device=device)
    searched = schedule.meta.get("pipeline") if isinstance(schedule.meta.get("pipeline"), dict) else {}
    guidance = args.guidance
    if guidance is None and "guidance" in searched:   # the guidance the schedule was searched with (none: 1)
        guidance = searched["guidance"] if searched["guidance"] is not None else 1.0
    kw = dict(prompts=prompts or None, guidance=guidance, num_images=args.num_images, seed=args.seed,
              height=args.height or searched.get("height"), width=args.width or searched.get("width"))
    t0 = time.perf_counter()
    images = generate(pipe, schedule, **kw)
    _prepare_out_dir(args.out)
    paths = []
    for i, img in enumerate(images):
        paths.append(os.path.join(args.out, f"image_{i}.png"))
        atomic_write(paths[-1], lambda f, img=img: img.save(f, format="PNG"))
    print(f"{len(images)} images, NFE {schedule.nfe} ({schedule.name or 'schedule'}), {time.perf_counter() - t0:.1f} s: "
          f"{args.out}/image_*.png")
    if args.compare:
        other = generate_preset(pipe, args.compare, schedule.nfe, **kw)
        path = os.path.join(args.out, "compare.png")
        write_compare_grid([(f"{schedule.name or 'schedule'}\nNFE {schedule.nfe}", images),
                            (f"{args.compare}\nNFE {schedule.nfe}", other)], path,
                           f"the same noise per column; top: {schedule.name or 'the schedule'}, bottom: preset {args.compare}")
        print(f"{path}: top row the schedule, bottom row {args.compare} at NFE {schedule.nfe}, the same noise")
    return 0


def _prepare_out_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path}: exists and is not a folder")
    os.makedirs(path, exist_ok=True)


def _search_log_header(path: str) -> dict | None:
    """The header of a search log (a JSON-lines file whose first line is one), else None."""
    try:
        with open(path, "rb") as f:
            first = json.loads(f.readline(1 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return first if isinstance(first, dict) and first.get("type") == "header" else None


def cmd_show(args) -> int:
    head = _search_log_header(args.schedule)
    if head is not None:
        nfe = head.get("nfe")
        best = os.path.join(os.path.dirname(args.schedule) or ".", f"best_nfe{nfe}.json")
        raise ValueError(f"{args.schedule}: is a search log (NFE {nfe}, metric {head.get('metric')}), not a schedule; "
                         f"its search's best schedule is {best} (usf-fast show {best})")
    s = Schedule.from_json(args.schedule)
    time_name = "sigma" if (s.meta.get("noise_schedule") or {}).get("type") in ("edm", "flow") else "t"
    print(s.summary(time_name))
    return 0


#: the distributions `usf-fast info` reports (what a bug report needs; constraints.txt pins them)
INFO_DISTRIBUTIONS = ("torch", "triton", "numpy", "scipy", "scikit-learn", "tqdm", "matplotlib", "diffusers",
                      "transformers", "kernels", "k-diffusion", "pytorch-fid", "torchvision")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for name in INFO_DISTRIBUTIONS:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def cmd_info(args) -> int:
    print(f"usf_fast {__version__}, torch {torch.__version__} "
          f"(CUDA build: {torch.version.cuda or 'no'}), threads {torch.get_num_threads()}")
    print(f"Python {sys.version.split()[0]}; {_versions()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    for dev in devices:
        status = backend_status(dev)
        print(f"{dev} tensors:")
        for name in BACKENDS:
            ok, why = status[name]
            print(f"  {name:7s} {'usable' if ok else 'not usable'}" + ("" if ok else f"  ({why})"))
    print("auto picks: " + ", ".join(f"{d}/float32 -> {resolve_backend('auto', torch.device(d), torch.float32)}"
                                     for d in devices))
    return 0


def cmd_presets(args) -> int:
    for name, doc in P.describe():
        print(f"{name:14s} {doc}")
    print(f"\nspacings: {', '.join(P.SPACINGS)} (flow models also: {', '.join(P.FLOW_SPACINGS)})")
    print("embedded models: " + ", ".join(f"{k} ({v[1]})" for k, v in EMBEDDED_MODELS.items()))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`usf-fast <command>: error: …`, exit status 2) instead of
    the usage block, like every other error of the CLI."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless it already names one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default %(default)s)"
        return text


EXAMPLES = """examples:
  usf-fast sample --model gmm-image --preset unipc --nfe 5       a preset: NFE and metrics
  usf-fast compare --model digits --nfe 4,5,6                    every preset at each NFE
  usf-fast search --model gmm-image --nfe 4,5,6 --out out/search  the best schedule per NFE
  usf-fast generate --model diffusers:DIR --schedule out/search/best.json --prompt "a cat" --out images
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="usf-fast", description="Few-step diffusion sampling (USF) and solver-schedule search (S3).",
                epilog=EXAMPLES, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"usf_fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command = sub.add_parser   # every command's help shows the defaults
    sub.add_parser = lambda name, **kw: add_command(name, formatter_class=_HelpFormatter, **kw)

    def model_args(q, default_n):
        q.add_argument("--model", default="gmm-image", choices=sorted(EMBEDDED_MODELS),
                       help="embedded model (default gmm-image)")
        q.add_argument("--noise-schedule", choices=NOISE_SCHEDULES,
                       help="default: the model's own (linear; flow for digits-flow)")
        q.add_argument("--num-samples", type=int, default=default_n, help="noise samples drawn")
        q.add_argument("--seed", type=int, default=0, help="seed of the noise")

    q = sub.add_parser("sample", help="sample with a preset or a schedule file and print NFE and metrics")
    model_args(q, 1000)
    q.add_argument("--preset", choices=sorted(P.PRESETS), help="the solver (default unipc; not with --schedule)")
    q.add_argument("--nfe", type=int, help="model evaluations (default 5; with --schedule: the file's own)")
    q.add_argument("--order", type=int, help="the preset's order (default: the preset's own)")
    q.add_argument("--spacing", choices=P.ALL_SPACINGS, help="the preset's time spacing (default: the preset's own)")
    q.add_argument("--option", action="append", metavar="KEY=VALUE", help="extra preset option (repeatable)")
    q.add_argument("--schedule", help="schedule JSON file (instead of --preset)")
    q.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="precision of the sampling")
    q.add_argument("--backend", default="auto", choices=("auto", "reference", "torch", "cpu", "triton", "cuda"),
                   help="executor: auto picks the fastest usable here (usf-fast info)")
    q.add_argument("--out", help="write samples, schedule and metrics (torch.save) here")
    q.add_argument("--save-schedule", help="write the schedule JSON here")
    q.add_argument("--grid", "--plot", dest="grid", metavar="PNG",
                   help="write a PNG of the samples: an image grid (scatter over the data for gmm-2d)")
    q.add_argument("--grid-size", type=int, default=64, help="images in the grid (default 64)")
    q.add_argument("--no-reference", action="store_true", help="skip the high-accuracy reference solve")
    q.set_defaults(func=cmd_sample)

    q = sub.add_parser("compare", help="table of every preset (best spacing) at several NFEs")
    model_args(q, 500)
    q.add_argument("--nfe", default="4,5,6,8", help="comma-separated NFE values")
    q.add_argument("--spacings", help="comma-separated (default: every spacing of the noise schedule)")
    q.add_argument("--progress", action="store_true", help="show a progress bar over the preset runs")
    q.set_defaults(func=cmd_compare)

    def pipeline_args(q):
        q.add_argument("--prompts", help="diffusers:DIR text-to-image: a file with one prompt per line")
        q.add_argument("--guidance", type=float, help="diffusers:DIR: classifier-free guidance scale")
        q.add_argument("--height", type=int, help="diffusers:DIR: image height in pixels (default: the model's)")
        q.add_argument("--width", type=int, help="diffusers:DIR: image width in pixels (default: the model's)")

    q = sub.add_parser("search", help="S3 search for the best schedule at an NFE budget")
    q.add_argument("--model", default="gmm-image",
                   help=f"embedded model ({', '.join(sorted(EMBEDDED_MODELS))}), package.module:factory, or "
                        "diffusers:DIR (a saved diffusers pipeline)")
    q.add_argument("--noise-schedule", choices=NOISE_SCHEDULES,
                   help="for embedded models (default: the model's own: linear; flow for digits-flow)")
    q.add_argument("--nfe", default="5", help="NFE budget, or a comma-separated list (one search each)")
    q.add_argument("--shape", help="per-sample shape D1,D2,... (optional for embedded models)")
    q.add_argument("--out", required=True, help="output folder (logs, best.json, summary, plots)")
    q.add_argument("--max-minutes", type=float, help="wall-clock limit; the log keeps everything for --resume")
    q.add_argument("--metric", default="ref", choices=("ref", "exact", "fd", "fid"),
                   help="ref: distance to a high-accuracy solution (default); exact: exact Fréchet (gmm-*); "
                        "fd: the model's Fréchet distance (gmm-*, digits); fid: pytorch-fid")
    q.add_argument("--fid-stats", help="metric fid: .npz with mu and sigma of the data's Inception features")
    q.add_argument("--fid-weights", help="metric fid: local pytorch-fid Inception weights (.pth)")
    d = _search_defaults()
    q.add_argument("--budget", type=int, default=None,
                   help=f"search evaluations per NFE, the preset seeds and each stage's re-evaluations included; the "
                        f"held-out table comes on top (default {d['budget']})")
    q.add_argument("--samples", type=int, default=None,
                   help=f"noise samples per stage-1 evaluation (default {d['samples'][0]})")
    q.add_argument("--samples2", type=int, default=None,
                   help=f"noise samples per stage-2 evaluation (default {d['samples'][1]})")
    q.add_argument("--samples3", type=int, default=d["samples"][2] if len(d["samples"]) > 2 else None,
                   help="noise samples per evaluation in a third stage (successive halving; default: "
                        + (str(d["samples"][2]) if len(d["samples"]) > 2 else "two stages") + ")")
    split = d["stage_split"] if isinstance(d["stage_split"], tuple) else (d["stage_split"],)
    q.add_argument("--stage-split", default=None,
                   help="fraction of the budget spent when each later stage starts: one number for two stages, "
                        f"two for three (default {','.join(f'{f:g}' for f in split)}; with --samples3 0.6,0.9)")
    q.add_argument("--heldout", type=int, default=None,
                   help=f"held-out noise samples for the final comparison (default {d['heldout']})")
    q.add_argument("--thorough", action="store_true",
                   help="the earlier defaults, about 7x the network calls: --budget 600 --samples 256 --samples2 1024 "
                        "--heldout 1024 --heldout-presets all --reference-nfe 200 (flags given win)")
    q.add_argument("--finalists", type=int, default=d["finalists"],
                   help=f"stage 2's best schedules compared on held-out noise (default {d['finalists']})")
    q.add_argument("--heldout-presets", default=None,
                   help="presets in the held-out comparison: all, or the N best on stage 1's noise (default "
                        f"{'all' if d['heldout_presets'] is None else d['heldout_presets']})")
    q.add_argument("--seed", type=int, default=0, help="seed of the search (its noise sets and its proposals)")
    q.add_argument("--no-predictor", action="store_true", help="plain evolution (ablation)")
    q.add_argument("--predictor", default="gp", choices=["gp", "improve", "metric"],
                   help="gp: Gaussian process, a batch by expected improvement (default); "
                        "improve: P(child beats its parent); metric: regression on the metric")
    q.add_argument("--resume", action="store_true", help="continue the search whose logs are in --out")
    q.add_argument("--device", default="auto",
                   help="where samples are computed: auto (the GPU if there is one; under torchrun the process's "
                        "LOCAL_RANK GPU), cpu, cuda, cuda:N; the model's network must accept tensors there")
    q.add_argument("--chunk", type=int, default=8,
                   help="candidates evaluated in one batch (chunk x samples rows through the model; default 8, "
                        "larger is faster on a GPU for small models)")
    q.add_argument("--extra-points", action="store_true",
                   help="search space: a step may fit its derivatives to one more earlier point than its order needs")
    q.add_argument("--singlestep-starts", action="store_true",
                   help="search space: a step of order >= 2 may start two points back (singlestep-style)")
    q.add_argument("--implicit-corrector", action="store_true",
                   help="search space: a step's corrector may re-evaluate the model (+1 NFE; one step fewer)")
    q.add_argument("--dist-timeout", type=float, default=300.0,
                   help="under torchrun: seconds to wait for a peer process before stopping with an error (default 300)")
    q.add_argument("--reference-nfe", type=int, default=None,
                   help=f"steps of the reference solve (metric ref; default {d['reference_nfe']})")
    q.add_argument("--reference-dtype", default=str(d["reference_dtype"]).replace("torch.", ""),
                   choices=("float64", "float32"), help="precision of the reference solve (default "
                   f"{str(d['reference_dtype']).replace('torch.', '')})")
    pipeline_args(q)
    q.add_argument("--max-batch", type=int, help="diffusers:DIR: rows per network call (micro-batches)")
    q.set_defaults(func=cmd_search)

    q = sub.add_parser("generate", help="images from a saved diffusers pipeline with a schedule file")
    q.add_argument("--model", required=True, help="diffusers:DIR, a pipeline saved with save_pretrained")
    q.add_argument("--schedule", required=True, help="schedule JSON (e.g. best.json of a search on this pipeline)")
    q.add_argument("--prompt", action="append", help="a prompt (repeatable); or --prompts FILE")
    pipeline_args(q)
    q.add_argument("--num-images", type=int, default=4, help="images to generate")
    q.add_argument("--seed", type=int, default=0, help="seed of the initial latents")
    q.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:N")
    q.add_argument("--out", required=True, help="folder for image_<i>.png (and compare.png)")
    q.add_argument("--compare", metavar="PRESET", help="also run this preset at the same NFE on the same noise, and "
                                                        "write a side-by-side grid compare.png")
    q.set_defaults(func=cmd_generate)

    q = sub.add_parser("show", help="print a schedule file one line per step")
    q.add_argument("schedule", help="a schedule JSON file (best.json, best_nfe<N>.json, --save-schedule)")
    q.set_defaults(func=cmd_show)

    q = sub.add_parser("info", help="which backends are built and usable here")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("presets", help="list presets, spacings and embedded models")
    q.set_defaults(func=cmd_presets)
    return p


def _one_line(text: str) -> str:
    """An error message as one printable line: newlines folded, control characters escaped."""
    return printable(" ".join(str(text).split()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"usf-fast {args.command}: interrupted (a search's log keeps its evaluations: --resume continues it)",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:   # bad input, and files: missing, a folder, read-only, ...
        print(f"usf-fast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:   # anything else a user's input reached: still one line (the traceback on request)
        if os.environ.get("USF_FAST_TRACEBACK"):
            raise
        print(f"usf-fast {args.command}: error: {type(e).__name__}: {_one_line(e)} "
              "(USF_FAST_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
