"""End-to-end sampling with a CIFAR-size UNet (randomly initialised diffusers UNet2DModel, 32×32):
eager reference, fused eager, fused + graph runner, diffusers' own loop with its DPM-Solver++
scheduler, and the model calls alone (on a GPU also captured as one CUDA graph, the graph runner's
fair baseline) — same run, same noise.

    pytest bench/test_graph_loop.py --benchmark-only --benchmark-json out/loop.json
    python bench/report.py out/loop.json     # overhead = (loop − model-only) / model-only

On a GPU the graph runner captures the whole loop as one CUDA graph; on the CPU it runs the same
static program eagerly (and batch 64 is skipped there: minutes per round, nothing to learn).
"""
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DModel

import usf_fast

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCHES = [1, 64] if DEVICE.type == "cuda" else [1]
NS = usf_fast.NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
IMPLS = ["reference", "fused", "graph", "diffusers", "model-only"]
if DEVICE.type == "cuda":  # the fair baseline for the graph runner: the same NFE model calls, captured as one graph
    IMPLS.append("model-only-graph")


def _unet():
    torch.manual_seed(0)
    if DEVICE.type == "cuda":  # DDPM-CIFAR-like widths
        cfg = dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    else:  # small enough for a 2-core CPU
        cfg = dict(block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **cfg).to(DEVICE).eval()


UNET = _unet()


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _captured_model_calls(nfe, noise):
    """NFE UNet calls captured as one CUDA graph: what the graph runner's loop costs without a solver."""
    t = torch.full((noise.shape[0],), 500.0, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            UNET(noise, t)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(nfe):
            UNET(noise, t)
    return graph.replay


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("nfe", [5, 10])
@pytest.mark.parametrize("impl", IMPLS)
def test_unet_loop(benchmark, impl, nfe, batch):
    benchmark.group = f"unet32 loop NFE{nfe} batch{batch} {DEVICE.type}"
    net = lambda x, t: UNET(x, t).sample  # noqa: E731
    model = usf_fast.DiffusionModel(net, NS, prediction="eps", time_input="discrete")
    schedule = usf_fast.presets.dpm_solver_pp(NS, nfe, order=2, spacing="time_uniform")
    noise = torch.randn(batch, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        if impl == "reference":
            fn = lambda: usf_fast.sample(model, schedule, noise=noise, backend="reference", check_finite=False)  # noqa: E731
        elif impl == "fused":
            fn = lambda: usf_fast.sample(model, schedule, noise=noise, check_finite=False)  # noqa: E731
        elif impl == "graph":
            runner = usf_fast.GraphSampler(model, nfe, noise.shape, device=DEVICE)
            fn = lambda: runner.run(schedule, noise)  # noqa: E731
        elif impl == "diffusers":
            sched = DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=2, final_sigmas_type="sigma_min")

            def fn():
                sched.set_timesteps(nfe, device=DEVICE)
                x = noise
                for t in sched.timesteps:
                    x = sched.step(UNET(x, t).sample, t, x).prev_sample
                return x
        elif impl == "model-only":
            t = torch.full((batch,), 500.0, device=DEVICE)

            def fn():
                for _ in range(nfe):
                    UNET(noise, t)
        else:
            fn = _captured_model_calls(nfe, noise)

        def run():
            with torch.no_grad():
                fn()
            _sync()
        run()  # warm-up (and capture, for the graph runner)
        benchmark.pedantic(run, rounds=10 if DEVICE.type == "cpu" else 50, warmup_rounds=1)
