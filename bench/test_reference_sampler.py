"""Reference-sampler overhead: `usf_fast.sample` with a trivial model vs the model calls alone.

    pytest bench/ --benchmark-only

This is the eager baseline the fused executors (later issues) are measured against.
"""
import pytest
import torch

import usf_fast

NS = usf_fast.NoiseScheduleVP("linear")
SHAPES = [(64, 3, 32, 32), (16, 4, 64, 64)]


def trivial_net(x, t):
    return x * 0.9


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("preset", ["dpm_solver_pp", "unipc"])
def test_reference_sampler_nfe10(benchmark, shape, preset):
    model = usf_fast.DiffusionModel(trivial_net, NS)
    schedule = usf_fast.presets.get(preset, NS, 10, order=3)
    noise = torch.randn(shape)
    benchmark.group = f"sample NFE10 {shape}"
    benchmark(lambda: usf_fast.sample(model, schedule, noise=noise, check_finite=False))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_model_calls_only_nfe10(benchmark, shape):
    noise = torch.randn(shape)
    t = torch.full((shape[0],), 0.5)
    benchmark.group = f"sample NFE10 {shape}"
    benchmark(lambda: [trivial_net(noise, t) for _ in range(10)])
