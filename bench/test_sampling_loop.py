"""Whole-loop sampling overhead with a trivial model (NFE 10): every backend vs the model calls
alone, in the same run.

    pytest bench/test_sampling_loop.py --benchmark-only
"""
import pytest
import torch

import usf_fast
from usf_fast.backends import available_backends

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NS = usf_fast.NoiseScheduleVP("linear")
SHAPES = [(64, 3, 32, 32), (16, 4, 64, 64)]
IMPLS = ["reference"] + available_backends(DEVICE) + ["model-only"]


def trivial_net(x, t):
    return x * 0.9


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("preset", ["dpm_solver_pp", "unipc"])
@pytest.mark.parametrize("impl", IMPLS)
def test_sample_nfe10(benchmark, impl, preset, shape):
    benchmark.group = f"loop {preset} NFE10 {'x'.join(map(str, shape))} {DEVICE.type}"
    model = usf_fast.DiffusionModel(trivial_net, NS)
    schedule = usf_fast.presets.get(preset, NS, 10, order=3)
    noise = torch.randn(shape, device=DEVICE)
    if impl == "model-only":
        t = torch.full((shape[0],), 0.5, device=DEVICE)

        def run():
            for _ in range(schedule.nfe):
                trivial_net(noise, t)
            _sync()
    else:
        def run():
            usf_fast.sample(model, schedule, noise=noise, backend=impl, check_finite=False)
            _sync()
    benchmark(run)
