"""USFScheduler.step (the fused step of the diffusers adapter) against diffusers' own multistep
schedulers and the same-bytes copy floor, in the same run.

    pytest bench/test_scheduler_step.py --benchmark-only [--benchmark-json out/sched.json]

One round is a whole sampling loop of NFE steps on precomputed network outputs (set_timesteps,
then `step` per evaluation), so the time per step is the round's time / NFE, averaged over the
growing history; "flat in NFE" means the per-step time does not grow with NFE.
Cases: DPM-Solver++ multistep order 2 and 3, UniPC bh2 order 3 (with its corrector), each as our
preset through USFScheduler and as diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler.
copy-floor: Tensor.copy_ moving the bytes a step must move at least (its mean inputs + 1 output).
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from usf_fast.adapters.diffusers import USFScheduler

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = [(1, 4, 64, 64), (16, 4, 64, 64), (4, 4, 128, 128)]
NFES = [5, 10, 20]
CONFIG = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
CASES = {
    "dpmpp2m": (lambda: DPMSolverMultistepScheduler.from_config(CONFIG, solver_order=2), "dpm_solver_pp", {"order": 2}),
    "dpmpp3m": (lambda: DPMSolverMultistepScheduler.from_config(CONFIG, solver_order=3), "dpm_solver_pp", {"order": 3}),
    "unipc3": (lambda: UniPCMultistepScheduler.from_config(CONFIG, solver_order=3), "unipc", {"order": 3}),
}


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("nfe", NFES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["usf", "diffusers", "copy-floor"])
def test_scheduler_loop(benchmark, impl, case, shape, nfe):
    benchmark.group = f"scheduler step {case} {'x'.join(map(str, shape))} nfe{nfe} {DEVICE.type}"
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(shape, generator=g).to(DEVICE) for _ in range(nfe)]
    noise = torch.randn(shape, generator=g).to(DEVICE)
    make, preset, opts = CASES[case]
    sched = make() if impl == "diffusers" else USFScheduler.from_config(CONFIG, preset=preset, preset_options=opts)
    sched.set_timesteps(nfe, device=DEVICE)
    numel = torch.Size(shape).numel()
    if impl == "copy-floor":
        plan = sched._tables.plan   # the bytes the plan's combinations move: inputs read + outputs written
        mean_k = sum(len(op.inputs) + (2 if op.out2 is not None else 1) - 1 for op in plan.combines) / nfe
        src = torch.empty(int((mean_k + 1) * numel / 2) * nfe, device=DEVICE)
        dst = torch.empty_like(src)
        benchmark.extra_info.update(nfe=nfe, mean_inputs=mean_k)

        def run():
            dst.copy_(src)
            _sync()
    else:
        def run():
            sched.set_timesteps(nfe, device=DEVICE)
            x = noise
            for i, t in enumerate(sched.timesteps):
                x = sched.step(outputs[i], t, x, return_dict=False)[0]
            _sync()
    benchmark.extra_info.update(nfe=nfe, numel=numel)
    benchmark.pedantic(run, rounds=30 if numel * nfe < 5_000_000 else 10, warmup_rounds=2)
