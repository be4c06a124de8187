"""`usf-fast search` (embedded models, package.module:factory, saved diffusers pipelines; under
torchrun too) and `usf-fast generate` (a saved pipeline with a schedule file)."""
from __future__ import annotations

import contextlib
import importlib
import os
import time

import torch

from .. import presets as P
from ..files import atomic_write
from ..model import DiffusionModel
from ..models import EMBEDDED_MODELS, embedded_model
from ..pictures import write_compare_grid
from ..schedule import Schedule
from ..search.distributed import in_process_group, search_device
from .options import (
    PIPELINE_FLAGS,
    _check_search_args,
    _ints,
    _noise_schedule,
    _stage_split,
)


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
    device = search_device(args.device)
    return in_process_group(lambda rank: _search(args, rank, device), device, args.dist_timeout)


#: the pipeline functions' parameters as this command line's flags (adapters.pipeline.ParameterError)
PIPELINE_PARAMETER_FLAGS = {"max_batch": "--max-batch {}", "guidance": "--guidance {}", "height": "--height {}",
                            "width": "--width {}", "prompts": "--prompts", "num_images": "--num-images {}",
                            "schedule": "--schedule"}


@contextlib.contextmanager
def _as_flags(**flags):
    """A library error naming a parameter, re-raised naming its flag."""
    from ..adapters.pipeline import ParameterError
    try:
        yield
    except ParameterError as e:
        raise ValueError(e.for_flags({**PIPELINE_PARAMETER_FLAGS, **flags})) from None


def _pipeline_model(args, device: str):
    """--model diffusers:DIR: the saved pipeline's network on its latents (prompts encoded once)."""
    from ..adapters.pipeline import load_pipeline, pipeline_model, read_prompts
    with _as_flags(path="--prompts {}"):
        prompts = read_prompts(args.prompts) if args.prompts else None
    with _as_flags(path="--model diffusers:{}"):
        pipe = load_pipeline(args.model[len("diffusers:"):], device=device)
    with _as_flags():
        pm = pipeline_model(pipe, prompts=prompts, guidance=args.guidance, height=args.height, width=args.width,
                            max_batch=args.max_batch)
    if prompts:
        for flag, n in (("--samples", args.samples), ("--samples2", args.samples2), ("--samples3", args.samples3 or 0),
                        ("--heldout", args.heldout)):
            if n % len(prompts):
                raise ValueError(f"{flag} {n}: must be a multiple of the {len(prompts)} prompts (sample r uses prompt "
                                 f"r mod {len(prompts)})")
    args.guidance = pm.guidance   # what the network runs with (FLUX-dev: the pipeline's default): generate reuses it
    return pm.model, pm.shape


def _search_space(args, model, nfe: int):
    """The search space the flags ask for, or None for the default one."""
    if not (args.extra_points or args.singlestep_starts or args.implicit_corrector):
        return None
    from ..search import SearchSpace
    return SearchSpace(model.noise_schedule, nfe, extra_points=args.extra_points, singlestep=args.singlestep_starts,
                       implicit=args.implicit_corrector)


def _with_pipeline_meta(schedule: Schedule, args) -> Schedule:
    """The pipeline settings a schedule was searched with, for `generate`."""
    return schedule.replace(meta=dict(schedule.meta, pipeline={"guidance": args.guidance, "height": args.height,
                                                               "width": args.width}))


def _search(args, rank: int, device: str) -> int:
    _check_search_args(args)
    # imported here: the search (scipy.stats, the predictors) adds 0.4 s to every other command's start
    from ..search import s3_search
    from ..search.report import plot_metric_vs_nfe, plot_schedule
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
                        reference_nfe=args.reference_nfe, solve=args.solve, solve_samples=args.solve_samples,
                        solve_finalists=args.solve_finalists, solve_presets=args.solve_presets,
                        solve_other_prediction=args.solve_other_prediction,
                        solve_teacher=args.solve_teacher,
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
    from ..adapters.pipeline import (
        generate,
        generate_preset,
        load_pipeline,
        read_prompts,
    )
    schedule = Schedule.from_json(args.schedule)
    with _as_flags(path="--prompts {}"):
        prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    if args.compare is not None and args.compare not in P.PRESETS:
        raise ValueError(f"--compare {args.compare!r}: must be one of {', '.join(P.PRESETS)}")
    if not args.model.startswith("diffusers:"):
        raise ValueError(f"--model {args.model!r}: generate runs a saved pipeline: diffusers:DIR")
    device = search_device(args.device)
    with _as_flags(path="--model diffusers:{}"):
        pipe = load_pipeline(args.model[len("diffusers:"):], device=device)
    searched = schedule.meta.get("pipeline") if isinstance(schedule.meta.get("pipeline"), dict) else {}
    guidance = args.guidance
    if guidance is None and "guidance" in searched:   # the guidance the schedule was searched with (none: 1)
        guidance = searched["guidance"] if searched["guidance"] is not None else 1.0
    kw = dict(prompts=prompts or None, guidance=guidance, num_images=args.num_images, seed=args.seed,
              height=args.height or searched.get("height"), width=args.width or searched.get("width"))
    t0 = time.perf_counter()
    with _as_flags(prompts="--prompt"):
        images = generate(pipe, schedule, **kw)
    _prepare_out_dir(args.out)
    paths = []
    for i, img in enumerate(images):
        paths.append(os.path.join(args.out, f"image_{i}.png"))
        atomic_write(paths[-1], lambda f, img=img: img.save(f, format="PNG"))
    print(f"{len(images)} images, NFE {schedule.nfe} ({schedule.name or 'schedule'}), {time.perf_counter() - t0:.1f} s: "
          f"{args.out}/image_*.png")
    if args.compare:
        with _as_flags(prompts="--prompt"):
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
