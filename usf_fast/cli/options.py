"""The values the CLI's flags take: parsing and checking them (each error names its flag), and
the search flags' defaults, read from `SearchConfig`."""
from __future__ import annotations

import dataclasses
import json
import math
import os

from ..files import printable
from ..noise_schedules import NoiseScheduleEDM, NoiseScheduleFlow, NoiseScheduleVP
from ..search.config import QUICK, S3_ONLY, THOROUGH, SearchConfig, presets_solved

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


def _check_counts(args, *flags) -> None:
    """Integer flags that must be >= 1 (sample counts, budgets)."""
    for flag in flags:
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None and v < 1:
            raise ValueError(f"{flag} {v}: must be >= 1")


def _one_line(text: str) -> str:
    """An error message as one printable line: newlines folded, control characters escaped."""
    return printable(" ".join(str(text).split()))


def _search_defaults() -> dict:
    """SearchConfig's field defaults (usf_fast.search.config: cheap, unlike the search itself)."""
    return {f.name: f.default for f in dataclasses.fields(SearchConfig)}


def _flags(t: dict) -> dict:
    """SearchConfig settings (its defaults, search.THOROUGH, S3_ONLY or QUICK) as flag values
    (solve_presets None: 1 with a solve stage, decided once --solve is known)."""
    d = _search_defaults()
    t = {**d, **t}
    return {"budget": t["budget"], "samples": t["samples"][0], "samples2": t["samples"][1], "heldout": t["heldout"],
            "heldout_presets": "all" if t["heldout_presets"] is None else str(t["heldout_presets"]),
            "reference_nfe": t["reference_nfe"], "solve": t["solve"], "solve_samples": t["solve_samples"],
            "solve_finalists": t["solve_finalists"], "solve_presets": t["solve_presets"],
            "solve_other_prediction": t["solve_other_prediction"],
            "solve_teacher": t["solve_teacher"]}


def _flag_text(t: dict) -> str:
    """search.THOROUGH, S3_ONLY or QUICK as the flags they set, for the help (a setting without a
    solve stage leaves the solve stage's other flags out)."""
    f = _flags(t)
    d = _flags({})
    off = (("solve_samples", "solve_finalists", "solve_presets", "solve_other_prediction", "solve_teacher")
           if not f["solve"] else ())
    shown = [(k, v) for k, v in f.items() if (v != d[k] or k in t) and k not in off]
    return " ".join(_flag(k, v) for k, v in shown)


def _flag(name: str, value) -> str:
    """A setting as the flag that gives it: `--name value`, a switch as `--name` or `--no-name`."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _thorough_flags() -> dict:
    """search.THOROUGH as flag values."""
    return _flags(THOROUGH)


def _fill_search_defaults(args) -> None:
    """The search flags the user left out (None): SearchConfig's defaults, or with --thorough the
    earlier ones (search.THOROUGH), with --s3-only search.S3_ONLY, with --quick search.QUICK; flags
    given always win."""
    named = [f for f, on in (("--thorough", args.thorough), ("--s3-only", getattr(args, "s3_only", False)),
                             ("--quick", args.quick)) if on]
    if len(named) > 1:
        raise ValueError(f"{', '.join(named)}: give one of them (--thorough: about 2 million network rows at NFE 5, "
                         "--s3-only: about 300,000 without a solve stage, --quick: at most 60,000)")
    chosen = _flags(THOROUGH if args.thorough else S3_ONLY if named == ["--s3-only"] else QUICK if args.quick else {})
    presets_given = args.solve_presets is not None
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not presets_given:   # a setting's own count (QUICK's 1) while its stage is on; else SearchConfig's default
        args.solve_presets = presets_solved(args.solve, args.solve_presets if args.solve else None)
    if args.stage_split is None:   # three stages: the fractions measured in docs/experiments.md (h3)
        args.stage_split = "0.6,0.9" if args.samples3 else f"{_search_defaults()['stage_split']:g}"


def _stage_split(args):
    """--stage-split as SearchConfig takes it: one fraction for two stages, two for three."""
    try:
        fr = tuple(float(v) for v in args.stage_split.split(","))
    except ValueError:
        raise ValueError(f"--stage-split {args.stage_split}: must be one fraction (two stages) or two comma-separated "
                         "increasing fractions (three stages, with --samples3) in (0, 1)") from None
    want = 2 if args.samples3 else 1
    if len(fr) != want or any(not 0 < f < 1 for f in fr) or (want == 2 and fr[1] <= fr[0]):
        raise ValueError(f"--stage-split {args.stage_split}: must be {'two increasing fractions' if want == 2 else 'one fraction'} "
                         f"in (0, 1) for {want + 1} stages" + ("" if args.samples3 else " (a third stage needs --samples3)"))
    return fr[0] if want == 1 else fr


def _check_search_args(args) -> None:
    """Every number a search takes, checked before anything is loaded or written."""
    given = [_flag(n, getattr(args, n))
             for n in ("solve_finalists", "solve_presets", "solve_other_prediction", "solve_teacher", "solve_samples")
             if getattr(args, n, None) is not None]
    switch = args.solve_other_prediction is not None
    _fill_search_defaults(args)
    _check_counts(args, "--budget", "--samples", "--samples2", "--samples3", "--heldout", "--chunk", "--reference-nfe",
                  "--finalists", "--solve-samples", "--solve-teacher")
    if args.solve < 0:
        raise ValueError(f"--solve {args.solve}: must be >= 0 (Nelder-Mead trials of the solve stage; 0 = none)")
    if args.solve_presets < 0:
        raise ValueError(f"--solve-presets {args.solve_presets}: must be >= 0 (presets solved besides the finalists)")
    if args.solve_finalists < 0:
        raise ValueError(f"--solve-finalists {args.solve_finalists}: must be >= 0 (the search's finalists solved; 0 = "
                         "the presets alone)")
    if switch and args.solve and args.solve_presets == 0:   # it would do nothing
        raise ValueError(f"{_flag('solve_other_prediction', args.solve_other_prediction)}: about the presets the solve "
                         "stage fits, and --solve-presets 0 fits none")
    if args.solve and args.solve_finalists == 0 and args.solve_presets == 0:
        raise ValueError("--solve-finalists 0, --solve-presets 0: the solve stage would fit nothing; give one of them "
                         ">= 1, or --solve 0")
    if given and args.solve == 0:   # they would do nothing
        raise ValueError(f"{', '.join(given)}: settings of the solve stage, which is off; give --solve N (N >= 1 "
                         "Nelder-Mead trials)")
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
    if args.heldout is not None and args.heldout < 2:
        raise ValueError(f"--heldout {args.heldout}: must be >= 2 (half chooses the winner, half measures its gain)")
    if args.metric in ("exact", "fd", "fid"):
        for flag, least in (("--samples", 2), ("--samples2", 2), ("--samples3", 2), ("--heldout", 4)):
            if getattr(args, flag[2:]) is not None and getattr(args, flag[2:]) < least:
                raise ValueError(f"{flag} {getattr(args, flag[2:])}: metric {args.metric} (a Fréchet distance) needs "
                                 f"at least {least} samples" + (" (2 in each half)" if least == 4 else ""))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: exists and is not a folder")


PIPELINE_FLAGS = ("prompts", "guidance", "height", "width", "max_batch")
