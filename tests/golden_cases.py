"""Golden outputs of every executor, recorded before the redesign of the solver program and
reproduced bit for bit after it (tests/test_golden.py).

    python tests/golden_cases.py --write     # record tests/golden.json (only when the math changes on purpose)

Cases: every standard preset over every spacing at NFE 3, 5 and 8, and a fixed set of random
schedules that use every decision (singlestep starts, extra active points, relaxations, pseudo
and implicit correctors, AFS, denoise-to-zero), on the embedded 2-D mixture (VP linear, ε, x0 and v
prediction); plus a fixed-seed search. Values are stored as float.hex strings, so "equal" means
bit-identical.

Bit-identical holds on one kind of CPU: float64 library math (exp, log, reductions) takes other
vector paths on another (e.g. AVX-512 vs AVX2), which moves last bits (~1e-13 relative) and the
float32 kernel's ill-conditioned cases more. So the file holds one record per CPU (`machine()`):
on a CPU with a record the test is bit for bit; against the other CPUs' records it allows
float-rounding differences (tests/test_golden.py). `--write` adds or replaces this CPU's record.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from strategies import random_schedule

import usf_fast
from usf_fast import presets as P
from usf_fast.models import embedded_model
from usf_fast.search import s3_search

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")
def cases():
    """(case name, model, schedule)."""
    ns = usf_fast.NoiseScheduleVP("linear")
    models = {p: embedded_model("gmm-2d", ns, p) for p in ("eps", "x0", "v")}
    out = []
    for nfe in (3, 5, 8):
        for label, sp, s in P.standard_schedules(ns, nfe, afs=False):   # the cases recorded before AFS presets
            out.append((f"preset nfe{nfe} {label} [{sp}]", models["eps"], s))
    rng = np.random.default_rng(20261202)
    for k in range(60):
        pred = ("eps", "x0", "v")[k % 3]
        out.append((f"random {k} {pred}", models[pred], random_schedule(ns, rng)))
    return out


def _hex(x: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in x.double().reshape(-1).tolist()]


def run_case(model, schedule, noise) -> dict:
    """Result of every executor on one schedule: reference (float64), plan on the torch backend
    (float64), plan on the C++ backend (float32), dense program through the graph runner (float64)."""
    out = {"nfe": schedule.nfe}
    out["reference"] = _hex(usf_fast.sample(model, schedule, noise, backend="reference", check_finite=False))
    out["plan_torch64"] = _hex(usf_fast.sample(model, schedule, noise, backend="torch", check_finite=False))
    if "cpu" in usf_fast.backends.available_backends("cpu"):
        out["plan_cpu32"] = _hex(usf_fast.sample(model, schedule, noise.float(), backend="cpu", check_finite=False))
    g = usf_fast.GraphSampler(model, schedule.nfe, noise.shape, dtype=torch.float64, backend="torch")
    out["dense_torch64"] = _hex(g.run(schedule, noise))
    return out


def search_case() -> dict:
    model = embedded_model("gmm-2d")
    # every setting pinned, so a change of the defaults does not move the record
    r = s3_search(model, 4, budget=40, samples=(32, 64), heldout=64, proposals=64, progress=False, seed=0,
                  stage_split=0.75, finalists=4, heldout_presets=None, reference_nfe=200, solve=0)
    return {"best": r.best.to_dict(), "best_metric": float(r.best_metric).hex(), "evaluations": r.evaluations}


def machine() -> dict:
    """The CPU a record was computed on: vendor and model name (/proc/cpuinfo) and torch's version."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "model name") and key.strip() not in info:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    import platform
    return {"vendor": info.get("vendor_id", platform.machine()), "model": info.get("model name", platform.processor()),
            "torch": torch.__version__}


def records() -> list[dict]:
    """The recorded results, one per CPU. The first file format (one record written on an Intel
    Xeon before per-CPU records existed) reads as a record of that CPU."""
    with open(GOLDEN) as f:
        data = json.load(f)
    if "records" in data:
        return data["records"]
    return [{"machine": {"vendor": "GenuineIntel", "model": "Intel Xeon", "torch": "2.14.1+cu130"}, **data}]


def compute() -> dict:
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return {"cases": {name: run_case(m, s, noise) for name, m, s in cases()}, "search": search_case()}


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/golden_cases.py --write")
    here = machine()
    kept = [r for r in records() if r["machine"] != here]
    with open(GOLDEN, "w") as f:
        json.dump({"records": kept + [{"machine": here, **compute()}]}, f, indent=0, sort_keys=True)
    print(f"wrote {GOLDEN}: {len(kept) + 1} record(s), this CPU's: {here}")
