"""Every executor of a schedule gives the reference sampler's result: the plan on each backend built
here (torch and C++ on a CPU; CUDA and Triton, and the captured graph, where a GPU exists), the dense
program, the graph runner and the diffusers scheduler, on the same presets and random schedules
(tests/strategies.py) over the whole decision space.

The model is an exact Gaussian mixture on diffusers' discrete VP schedule, so the diffusers
scheduler runs it too. float64 executors must agree to round-off, float32 ones to float32.
"""
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import HealthCheck, given, settings
from strategies import schedules

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config
from usf_fast.backends import available_backends
from usf_fast.dense import dense_program, device_tables, run_dense, stack_programs
from usf_fast.models import gmm_image

CONFIG = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon").config
NS = noise_schedule_from_diffusers_config(CONFIG)
MODEL = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
# diffusers pipelines take the data mean to be 0 (the analytical first step's x̂0)
ZERO_MEAN = usf_fast.DiffusionModel(MODEL.net, NS, data_mean=0.0)
N_TRAIN = CONFIG.num_train_timesteps


def _float32_timestep(t: torch.Tensor) -> torch.Tensor:
    """t as a diffusers pipeline hands it to the net: the DDPM index (t − 1/N)·N in a float32 tensor."""
    return (((t - 1.0 / N_TRAIN) * N_TRAIN).float().double() + 1.0) / N_TRAIN


# what the diffusers scheduler's loop computes: the net sees t rounded to a float32 timestep
PIPELINE_MODEL = usf_fast.DiffusionModel(lambda x, t: MODEL.net(x, _float32_timestep(t).to(x)), NS, data_mean=0.0)


def _noise(dtype):
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)


def plan(backend):
    def run(model, schedule, noise):
        return usf_fast.sample(model, schedule, noise, backend=backend, check_finite=False)
    return run


def dense(model, schedule, noise):
    prog = dense_program(schedule, model)
    times, A, F = stack_programs([prog], np.zeros(noise.shape[0], dtype=np.int64))
    t, a_list, f = device_tables(times, A, F, noise.dtype, "cpu")
    return run_dense(model, noise, t, a_list, f, backend="torch")   # the tables carry the prior std


def graph(model, schedule, noise):
    return usf_fast.GraphSampler(model, schedule.nfe, noise.shape, dtype=noise.dtype).run(schedule, noise)


def diffusers_scheduler(model, schedule, noise):
    """The diffusers loop: the scheduler's timesteps to the net, `step` for everything else."""
    sched = USFScheduler.from_config(CONFIG, schedule=schedule)
    sched.set_timesteps(schedule.nfe)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        t_cont = (torch.as_tensor(t, dtype=x.dtype).reshape(1).expand(x.shape[0]) + 1.0) / N_TRAIN
        out = MODEL.net(sched.scale_model_input(x, t), t_cont)
        x = sched.step(out, t, x).prev_sample
    return x


# name → (executor, storage dtype, relative tolerance against the float64 reference); float32
# executors must be as accurate as the eager reference sampler in float32 (a random schedule can
# amplify rounding a thousandfold: one step from t = 1 divides by α ≈ 0.006)
EXECUTORS = {
    "plan/torch float64": (plan("torch"), torch.float64, 1e-10),
    "plan/torch float32": (plan("torch"), torch.float32, 2e-5),
    "dense float64": (dense, torch.float64, 1e-10),
    "graph runner float32": (graph, torch.float32, 2e-5),
    "USFScheduler float64": (diffusers_scheduler, torch.float64, 1e-10),
}
if "cpu" in available_backends("cpu"):
    EXECUTORS["plan/cpu float32"] = (plan("cpu"), torch.float32, 2e-5)


def on_cuda(run):
    """The executor on CUDA tensors (the mixture follows its input's device), result back on the CPU."""
    return lambda model, schedule, noise: run(model, schedule, noise.cuda()).cpu()


def graph_on_cuda(model, schedule, noise):   # the captured CUDA graph
    runner = usf_fast.GraphSampler(model, schedule.nfe, noise.shape, device="cuda")
    out = runner.run(schedule, noise.cuda()).cpu()
    assert runner.captured, f"eager fall-back, not a CUDA graph: {runner.fallback_reason}"
    return out


if torch.cuda.is_available():   # bench/gpu_check.sh runs this file on the GPU machine
    for name in ("cuda", "triton"):
        if name in available_backends("cuda"):
            EXECUTORS[f"plan/{name} float32 (GPU)"] = (on_cuda(plan(name)), torch.float32, 2e-5)
    EXECUTORS["graph runner CUDA graph float32 (GPU)"] = (graph_on_cuda, torch.float32, 2e-5)
PRESETS = {
    "unipc-3": usf_fast.presets.unipc(NS, 5),
    "dpm++3m afs": usf_fast.presets.dpm_solver_pp(NS, 5, order=3, afs=True),
    "dpm-solver-3 singlestep": usf_fast.presets.dpm_solver(NS, 6, order=3),
    "ddim karras": usf_fast.presets.ddim(NS, 4, spacing="karras"),
}


def _check(executor: str, schedule) -> None:
    run, dtype, tol = EXECUTORS[executor]
    for model in (PIPELINE_MODEL,) if executor.startswith("USFScheduler") else (MODEL, ZERO_MEAN):
        _check_one(run, dtype, tol, model, executor, schedule)


def _check_one(run, dtype, tol, model, executor, schedule) -> None:
    ref = usf_fast.sample(model, schedule, _noise(torch.float64), backend="reference", check_finite=False)
    with torch.no_grad():
        out = run(model, schedule, _noise(dtype))
    assert out.dtype == dtype
    err = float((out.double() - ref).norm() / ref.norm())
    if dtype == torch.float32:
        ref32 = usf_fast.sample(model, schedule, _noise(dtype), backend="reference", check_finite=False)
        tol = max(tol, 10 * float((ref32.double() - ref).norm() / ref.norm()))
    assert err <= tol, f"{executor}: relative error {err:.3g} > {tol:g} on\n{schedule.summary()}"


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_every_executor_runs_a_preset_as_the_reference_does(executor, preset):
    _check(executor, PRESETS[preset])


@pytest.mark.parametrize("executor", list(EXECUTORS))
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules(NS))
def test_every_executor_runs_a_random_schedule_as_the_reference_does(executor, schedule):
    _check(executor, schedule)


@pytest.mark.parametrize("executor", ["plan/torch float64", "dense float64"])
@settings(max_examples=15, deadline=None, derandomize=True)
@given(schedule=schedules(NS))
def test_the_nfe_is_the_number_of_model_calls(executor, schedule):
    calls = []
    net = MODEL.net
    counted = usf_fast.DiffusionModel(lambda x, t: calls.append(1) or net(x, t), NS, data_mean=MODEL.data_mean)
    if executor == "dense float64":
        run_dense(counted, _noise(torch.float64), *device_tables(*stack_programs(
            [dense_program(schedule, counted)], np.zeros(3, dtype=np.int64)), torch.float64, "cpu"), backend="torch")
    else:
        usf_fast.sample(counted, schedule, _noise(torch.float64), backend="torch", check_finite=False)
    assert len(calls) == schedule.nfe
