"""The `usf-fast` argument parser: every flag with its help and default, one-line errors."""
from __future__ import annotations

import argparse

from .. import presets as P
from .._version import __version__
from ..models import EMBEDDED_MODELS
from .info import cmd_info, cmd_presets, cmd_show
from ..search.config import QUICK, S3_ONLY, THOROUGH
from .options import NOISE_SCHEDULES, _flag_text, _one_line, _search_defaults
from .sample import cmd_compare, cmd_sample
from .search import cmd_generate, cmd_search


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
                   help=f"the earlier defaults, about 7x the network calls: {_flag_text(THOROUGH)} (flags given win)")
    q.add_argument("--s3-only", action="store_true",
                   help="the S3 search alone, no learned coefficients (the defaults until 2026-12-05, about the "
                        f"defaults' network rows): {_flag_text(S3_ONLY)} (flags given win)")
    q.add_argument("--quick", action="store_true",
                   help="a search a real model can afford, at most 60,000 network rows at NFE 5 (a raised "
                        f"reference is paid for by fewer solve trials): {_flag_text(QUICK)} (flags given win)")
    q.add_argument("--solve", type=int, default=None,
                   help="Nelder-Mead trials of the solve stage per solved schedule: its step weights fitted to a "
                        f"teacher along its own trajectory and its times tuned (default {d['solve']}; 0 = no solve stage)")
    q.add_argument("--solve-presets", type=int, default=None,
                   help="presets (best on stage 1's noise) the solve stage fits besides the finalists "
                        "(default 1 with a solve stage)")
    q.add_argument("--solve-finalists", type=int, default=None,
                   help=f"the search's best finalists the solve stage fits (default {d['solve_finalists']}; 0 = the "
                        "presets alone)")
    q.add_argument("--solve-other-prediction", action=argparse.BooleanOptionalAction, default=None,
                   help="also solve each preset's twin, UniPC-3 with the other prediction (data <-> noise) at the "
                        "preset's times, unless it diverges on stage 1's noise; --solve trials each (default on; "
                        "--quick: off)")
    q.add_argument("--solve-teacher", type=int, default=None,
                   help=f"steps of the solve stage's teacher solve (default {d['solve_teacher']})")
    q.add_argument("--solve-samples", type=int, default=None,
                   help=f"noise samples of the solve stage (default {d['solve_samples']})")
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
