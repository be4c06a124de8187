"""Per-step solver update: fused backends vs diffusers' scheduler step, eager PyTorch and the
memory floor, on the same tensors, in the same run.

    pytest bench/test_solver_step.py --benchmark-only [--benchmark-json out/step.json]
    python bench/report.py out/step.json          # ratio table for docs/benchmarks.md

Cases (steady-state step of an NFE-10 schedule on an ε-model, as a real sampler runs it):
    dpmpp2m / dpmpp3m   DPM-Solver++ multistep order 2 / 3 (data prediction)
    unipc3              UniPC bh2 order 3 with the UniC corrector (predictor + corrector in one pass)
Implementations (one pytest-benchmark group per case × shape):
    fused-<backend>     one combination from the compiled plan (reads K slots, writes 1 or 2)
    eager               the same combination as a PyTorch expression (the torch backend)
    diffusers           DPMSolverMultistepScheduler.step / UniPCMultistepScheduler.step
    copy-floor          Tensor.copy_ moving the same bytes as the fused pass ((K + outputs) · numel · itemsize)
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

import usf_fast
from usf_fast.backends import available_backends, get_combine
from usf_fast.plan import compile_plan

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = [(64, 3, 32, 32), (16, 4, 64, 64), (1, 4, 128, 128), (4, 3, 256, 256)]
if DEVICE.type == "cuda":  # on a GPU the shapes above are launch-bound; this one measures bandwidth (67 MB a tensor)
    SHAPES.append((64, 4, 256, 256))
NFE = 10
STEP = 6  # a steady-state step: full order, corrector active
NS = usf_fast.NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
CASES = {
    "dpmpp2m": (lambda ts: usf_fast.presets.dpm_solver_pp(NS, NFE, order=2, timesteps=ts),
                lambda: DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=2, final_sigmas_type="sigma_min")),
    "dpmpp3m": (lambda ts: usf_fast.presets.dpm_solver_pp(NS, NFE, order=3, timesteps=ts),
                lambda: DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=3, final_sigmas_type="sigma_min")),
    "unipc3": (lambda ts: usf_fast.presets.unipc(NS, NFE, order=3, timesteps=ts),
               lambda: UniPCMultistepScheduler(beta_schedule="linear", solver_order=3, final_sigmas_type="sigma_min")),
}
IMPLS = [f"fused-{b}" for b in available_backends(DEVICE) if b != "torch"] + ["eager", "diffusers", "copy-floor"]


def _diffusers_and_times(case):
    sched = CASES[case][1]()
    sched.set_timesteps(NFE, device=DEVICE)
    ts = [(int(t) + 1) / 1000 for t in sched.timesteps] + [1 / 1000]
    return sched, ts


def _combine_op(case, shape):
    _, ts = _diffusers_and_times(case)
    model = usf_fast.DiffusionModel(lambda x, t: x, NS, prediction="eps", time_input="discrete")
    plan = compile_plan(CASES[case][0](ts), model)
    return next(op for op in plan.combines if op.step == STEP)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_step(benchmark, impl, case, shape):
    benchmark.group = f"step {case} {'x'.join(map(str, shape))} {DEVICE.type}"
    g = torch.Generator().manual_seed(0)
    op = _combine_op(case, shape)
    k, outs = len(op.inputs), 1 + (op.out2 is not None)
    numel = torch.Size(shape).numel()
    benchmark.extra_info.update(K=k, outputs=outs, bytes=(k + outs) * numel * 4, numel=numel)

    def sync():
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    if impl.startswith("fused-") or impl == "eager":
        name = "torch" if impl == "eager" else impl.split("-", 1)[1]
        combine = get_combine(name)
        inputs = [torch.randn(shape, generator=g).to(DEVICE) for _ in range(k)]
        c1 = torch.tensor(op.coefs, dtype=torch.float32, device=DEVICE)
        c2 = torch.tensor(op.coefs2, dtype=torch.float32, device=DEVICE) if op.coefs2 else None
        out = torch.empty(shape, device=DEVICE)
        out2 = torch.empty(shape, device=DEVICE) if c2 is not None else None

        def run():
            combine(inputs, c1, out, c2, out2)
            sync()
        benchmark(run)
    elif impl == "copy-floor":
        src = torch.randn((k + outs) * numel // 2, generator=g).to(DEVICE)
        dst = torch.empty_like(src)

        def run():
            dst.copy_(src)
            sync()
        benchmark(run)
    else:
        sched, _ = _diffusers_and_times(case)
        sample = torch.randn(shape, generator=g).to(DEVICE)
        history = [torch.randn(shape, generator=g).to(DEVICE) for _ in range(STEP)]
        t_now = sched.timesteps[STEP - 1]
        # prime the multistep state with STEP − 1 real steps, then time step STEP again and again
        x = sample.clone()
        for i in range(STEP - 1):
            x = sched.step(history[i], sched.timesteps[i], x).prev_sample
        state = {k_: (list(v) if isinstance(v, list) else v) for k_, v in vars(sched).items()
                 if k_ in ("model_outputs", "lower_order_nums", "_step_index", "last_sample", "this_order",
                           "timestep_list")}

        def reset():
            for k_, v in state.items():
                setattr(sched, k_, list(v) if isinstance(v, list) else v)
            return (history[STEP - 1], t_now, x), {}

        def run(mo, t, s):
            sched.step(mo, t, s)
            sync()
        benchmark.pedantic(run, setup=reset, rounds=200, warmup_rounds=5)
