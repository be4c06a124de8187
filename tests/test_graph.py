"""GraphSampler: the static-buffer program (eager on the CPU, captured on CUDA) and schedule swaps."""
import pytest
import torch

import usf_fast
from usf_fast import GraphSampler
from usf_fast.models.mixture import gmm_image

NS = usf_fast.NoiseScheduleVP("linear")
MODEL = gmm_image(shape=(3, 8, 8), components=3, rank=3).as_model(NS)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NFE = 6
SCHEDULES = {
    "unipc": usf_fast.presets.unipc(NS, NFE),
    "dpmpp3m-afs": usf_fast.presets.dpm_solver_pp(NS, NFE, order=3, afs=True),
    "dpm_solver": usf_fast.presets.dpm_solver(NS, NFE),
    "ddim-d2z": usf_fast.presets.ddim(NS, NFE, denoise_to_zero=True),
    "unipc-karras": usf_fast.presets.unipc(NS, NFE, order=2, spacing="karras"),
}
NOISE = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_float64_runner_equals_the_reference_sampler(name):
    runner = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False)
    out = runner.run(SCHEDULES[name], NOISE)
    assert _rel(out, usf_fast.reference_sample(MODEL, SCHEDULES[name], noise=NOISE)) <= 1e-12


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_float32_runner_is_as_accurate_as_eager_float32(name):
    runner = GraphSampler(MODEL, NFE, NOISE.shape, device=DEVICE)
    out = runner.run(SCHEDULES[name], NOISE.float().to(DEVICE))
    ref64 = usf_fast.reference_sample(MODEL, SCHEDULES[name], noise=NOISE)
    eager32 = usf_fast.reference_sample(MODEL, SCHEDULES[name], noise=NOISE.float())
    assert _rel(out, ref64) <= 3 * _rel(eager32, ref64) + 1e-5


def test_rewriting_the_schedule_in_place_equals_a_fresh_runner():
    runner = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False)
    names = list(SCHEDULES)
    for name in names + names[::-1]:
        swapped = runner.run(SCHEDULES[name], NOISE)
        fresh = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False).run(SCHEDULES[name], NOISE)
        assert torch.equal(swapped, fresh)


def test_one_batch_mixes_schedules_per_sample():
    runner = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False)
    scheds = [SCHEDULES["unipc"], SCHEDULES["dpm_solver"]]
    out = runner.run(scheds, NOISE, assignment=[1, 0, 0, 1])
    for b, k in enumerate([1, 0, 0, 1]):
        ref = usf_fast.reference_sample(MODEL, scheds[k], noise=NOISE[b:b + 1])
        assert _rel(out[b:b + 1], ref) <= 1e-12


def test_sample_with_cuda_graph_flag_uses_a_cached_runner():
    x1 = usf_fast.sample(MODEL, SCHEDULES["unipc"], noise=NOISE, cuda_graph=True)
    x2 = usf_fast.sample(MODEL, SCHEDULES["ddim-d2z"], noise=NOISE, cuda_graph=True)
    from usf_fast.api import _GRAPH_SAMPLERS
    assert len(_GRAPH_SAMPLERS[MODEL]) == 1
    assert _rel(x1, usf_fast.reference_sample(MODEL, SCHEDULES["unipc"], noise=NOISE)) <= 1e-12
    assert _rel(x2, usf_fast.reference_sample(MODEL, SCHEDULES["ddim-d2z"], noise=NOISE)) <= 1e-12


@pytest.mark.parametrize("call,match", [
    (lambda r: r.run(usf_fast.presets.unipc(NS, 5), NOISE), "has NFE 5; this GraphSampler was built for NFE 6"),
    (lambda r: r.run(SCHEDULES["unipc"], NOISE[:2]), r"noise: shape \(2, 3, 8, 8\) differs from this GraphSampler's shape \(4, 3, 8, 8\)"),
    (lambda r: r.run([SCHEDULES["unipc"]] * 3, NOISE), "does not split evenly over 3 schedules"),
    (lambda r: r.run(SCHEDULES["unipc"], NOISE, assignment=[0, 0]), "need 4 schedule indices"),
    (lambda r: r.run("unipc", NOISE), r"schedules\[0\]: must be a usf_fast.Schedule"),
])
def test_bad_inputs_are_clear_errors(call, match):
    runner = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False)
    with pytest.raises(ValueError, match=match):
        call(runner)


def test_bad_construction():
    with pytest.raises(ValueError, match="nfe=0"):
        GraphSampler(MODEL, 0, (1, 2))
    if DEVICE.type == "cpu":
        with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
            GraphSampler(MODEL, 3, (1, 2), cuda_graph=True)


# ---- GPU only: these run wherever a CUDA device exists (bench/gpu_check.sh) ------------------



@pytest.mark.gpu
def test_graph_replay_equals_eager_on_gpu():
    noise = NOISE.float().cuda()
    graphed = GraphSampler(MODEL, NFE, noise.shape, device="cuda")
    eager = GraphSampler(MODEL, NFE, noise.shape, device="cuda", cuda_graph=False)
    for name in SCHEDULES:  # first run captures, the rest swap tables without re-capture
        a, b = graphed.run(SCHEDULES[name], noise), eager.run(SCHEDULES[name], noise)
        assert graphed.captured
        assert _rel(a, b) <= 1e-6, name


@pytest.mark.gpu
def test_uncapturable_model_falls_back_to_eager_with_a_warning():
    def net(x, t):
        if float(t[0]) > 0.5:  # host read: cannot be captured
            return x * 0.5
        return x * 0.4
    model = usf_fast.DiffusionModel(net, NS)
    runner = GraphSampler(model, 3, (2, 4), device="cuda")
    noise = torch.randn(2, 4, device="cuda")
    state = torch.cuda.get_rng_state()
    expected = torch.randn(3, device="cuda")   # the draw that comes next
    torch.cuda.set_rng_state(state)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph"):
        out = runner.run(usf_fast.presets.ddim(NS, 3), noise)
    assert not runner.captured and torch.isfinite(out).all()
    # the failed capture leaves the device's random numbers as they were (torch 2.11 left its
    # generator in capture mode: every later draw raised)
    assert torch.equal(torch.randn(3, device="cuda"), expected)


def test_repeated_runs_of_loaded_schedules_skip_the_table_building(monkeypatch):
    import usf_fast.graph as graph_mod
    calls = []
    real = graph_mod.dense_program
    monkeypatch.setattr(graph_mod, "dense_program", lambda s, m: calls.append(s) or real(s, m))
    runner = GraphSampler(MODEL, NFE, NOISE.shape, dtype=torch.float64, cuda_graph=False)
    a, b = SCHEDULES["unipc"], SCHEDULES["dpm_solver"]
    first = runner.run(a, NOISE)
    assert torch.equal(runner.run(a, NOISE), first) and len(calls) == 1
    runner.run([a, b], NOISE, assignment=[0, 1, 1, 0])
    runner.run([a, b], NOISE, assignment=[0, 1, 1, 0])
    assert len(calls) == 3                                     # a new set of schedules is loaded once
    swapped = runner.run([a, b], NOISE, assignment=[1, 0, 0, 1])  # same schedules, new assignment: reloaded
    assert len(calls) == 5
    assert torch.equal(swapped[:1], runner.run(b, NOISE)[:1])
    fresh_equal = a.replace(name=a.name)                       # an equal value, another object: loaded
    assert torch.equal(runner.run(fresh_equal, NOISE), first)
