"""`usf-fast show`, `info` and `presets`: what a schedule file, this installation and the
presets are."""
from __future__ import annotations

import json
import os
import sys

import torch

from .. import presets as P
from .._version import __version__
from ..backends import BACKENDS, backend_status, resolve_backend
from ..models import EMBEDDED_MODELS
from ..schedule import Schedule


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
