"""Every combination backend against float64 math, and every backend's sampler against the float64
reference sampler. Outputs are poisoned (NaN) before each run to catch unwritten elements.

On a CPU machine this runs torch, cpu (C++/OpenMP) and triton (TRITON_INTERPRET=1); with a GPU it
runs torch, cuda and triton on the GPU.
"""

import pytest
import torch
from hypothesis import given, settings
from strategies import fuzz_schedules

import usf_fast
from usf_fast.models.mixture import gmm_image
from usf_fast.backends import available_backends, get_combine
from usf_fast.executor import execute
from usf_fast.plan import compile_plan
from usf_fast.program import check_conditioning
from usf_fast.checks import initial_state
from usf_fast.reference import reference_sample

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNELS = [b for b in available_backends(DEVICE) if b != "torch"]
ALL = ["torch"] + KERNELS
NS = usf_fast.NoiseScheduleVP("linear")
# rel. error of one combination vs float64 math on the same stored inputs: float32 accumulation,
# then rounding of the output to the storage type
OP_TOL = {torch.float32: 1e-6, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}


def test_kernel_backends_are_built_here():
    assert "cpu" in KERNELS or DEVICE.type == "cuda"
    assert "triton" in KERNELS


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("two", [False, True])
def test_combine_matches_float64(backend, dtype, k, per_sample, two):
    g = torch.Generator().manual_seed(k * 7 + per_sample + 2 * two)
    shape = (3, 5, 7, 9)  # odd sizes: exercises the unvectorised tails
    inputs = [torch.randn(shape, generator=g).to(dtype).to(DEVICE) for _ in range(k)]
    c = torch.randn((3, k) if per_sample else (k,), generator=g) * 10
    c2 = torch.randn_like(c) if two else None
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    out2 = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE) if two else None
    get_combine(backend)(inputs, c.to(DEVICE), out, c2.to(DEVICE) if two else None, out2)

    def ref(cc):
        cc = cc.double()
        return sum((cc[:, j].reshape(3, 1, 1, 1) if per_sample else cc[j]) * inputs[j].cpu().double() for j in range(k))

    assert torch.isfinite(out).all()
    assert _rel(out.cpu(), ref(c)) <= OP_TOL[dtype]
    if two:
        assert torch.isfinite(out2).all() and _rel(out2.cpu(), ref(c2)) <= OP_TOL[dtype]


@pytest.mark.parametrize("backend", ALL)
def test_output_may_alias_an_input(backend):
    x = [torch.randn(4, 1000, device=DEVICE) for _ in range(3)]
    expect = 2 * x[0] - x[1] + 0.5 * x[2]
    get_combine(backend)(x, torch.tensor([2.0, -1.0, 0.5], device=DEVICE), x[1])
    torch.testing.assert_close(x[1], expect)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case,match", [
    ("shape", r"inputs\[1\]: must match out"),
    ("coefs", r"coefs: shape \(3,\) must be \(K,\)=\(2,\)"),
    ("pair", "coefs2 and out2 go together"),
    ("empty", "inputs: need a non-empty list"),
])
def test_bad_arguments_are_value_errors(backend, case, match):
    a, b = torch.zeros(2, 3, device=DEVICE), torch.zeros(2, 4, device=DEVICE)
    c = torch.ones(2, device=DEVICE)
    out = torch.zeros(2, 3, device=DEVICE)
    args = {"shape": ([a, b], c, out), "coefs": ([a, a], torch.ones(3, device=DEVICE), out),
            "pair": ([a, a], c, out, c, None), "empty": ([], c, out)}[case]
    with pytest.raises(ValueError, match=match):
        get_combine(backend)(*args)


# ---- whole plans ------------------------------------------------------------------------------

MODEL = gmm_image(shape=(3, 8, 8), components=3, rank=3).as_model(NS)
PRESET_CASES = {
    "ddim": usf_fast.presets.ddim(NS, 6),
    "dpm_solver-3": usf_fast.presets.dpm_solver(NS, 7),
    "dpm_solver_pp-2M": usf_fast.presets.dpm_solver_pp(NS, 6, order=2),
    "dpm_solver_pp-3M-afs": usf_fast.presets.dpm_solver_pp(NS, 6, order=3, afs=True),
    "dpm_solver_pp-2S": usf_fast.presets.dpm_solver_pp(NS, 6, order=2, method="singlestep"),
    "unipc-3": usf_fast.presets.unipc(NS, 6, order=3),
    "unipc-noise-d2z": usf_fast.presets.unipc(NS, 6, order=2, prediction="noise", denoise_to_zero=True),
    "implicit": usf_fast.Schedule(usf_fast.presets.timesteps(NS, 4), [usf_fast.Step(order=1, corrector="implicit"),
                                  usf_fast.Step(order=2, corrector="pseudo"), usf_fast.Step(order=2, corrector="implicit"),
                                  usf_fast.Step(order=3, corrector="pseudo")], denoise_to_zero=True),
}
# float32 sample vs float64 reference: data prediction from an ε-model divides by α ≈ 0.007 at
# t = 1 and high-order weights alternate in sign, so float32 storage rounding is amplified by the
# schedule itself (eager float32 sampling shows the same). The fused path must be no worse than
# eager float32 sampling; the op-level test above is each kernel's own accuracy.
NOISE = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", list(PRESET_CASES))
def test_every_plan_op_matches_float64_on_fresh_inputs(backend, name):
    plan = compile_plan(PRESET_CASES[name], MODEL)
    g = torch.Generator().manual_seed(11)
    combine = get_combine(backend)
    for op in plan.combines:
        inputs = [torch.randn(4, 3, 8, 8, generator=g).to(DEVICE) for _ in op.inputs]
        c1 = torch.tensor(op.coefs, dtype=torch.float32, device=DEVICE)
        out = torch.full_like(inputs[0], float("nan"))
        combine(inputs, c1, out)
        ref = sum(float(c) * x.cpu().double() for c, x in zip(op.coefs, inputs))
        assert _rel(out.cpu(), ref) <= 1e-5, op


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", list(PRESET_CASES))
def test_sampling_matches_the_reference_sampler(backend, name):
    schedule = PRESET_CASES[name]
    ref64 = reference_sample(MODEL, schedule, noise=NOISE)
    plan = compile_plan(schedule, MODEL)
    x_t = initial_state(NS, schedule, NOISE.float().to(DEVICE))
    out = execute(plan, MODEL, x_t, backend=backend, poison=True).cpu()
    assert torch.isfinite(out).all()
    torch32 = execute(plan, MODEL, x_t, backend="torch").cpu()
    eager32 = reference_sample(MODEL, schedule, noise=NOISE.float())
    noise32 = _rel(eager32, ref64)  # this schedule's float32 rounding level (3e-5 to 1.3e-4 for some presets)
    # Same plan, only the rounding differs: on the CPU the fused and eager paths are bit-identical; on
    # a GPU the kernels fuse multiply-adds where eager torch rounds each product, and the schedule
    # amplifies that like any float32 rounding: two float32 paths, each about noise32 from float64
    # (measured on an H200: 2.95e-5 for unipc-3 at noise32 = 2.7e-5, 6.5e-5 for unipc-noise-d2z).
    assert _rel(out, torch32) <= max(1e-5, 2 * noise32), (_rel(out, torch32), noise32)
    assert _rel(out, ref64) <= 2 * noise32 + 1e-6, (_rel(out, ref64), noise32)


@pytest.mark.parametrize("name", list(PRESET_CASES))
def test_float64_plan_equals_reference_sampler(name):
    schedule = PRESET_CASES[name]
    plan = compile_plan(schedule, MODEL)
    out = execute(plan, MODEL, initial_state(NS, schedule, NOISE), backend="torch", poison=True)
    assert _rel(out, reference_sample(MODEL, schedule, noise=NOISE)) <= 1e-12


@settings(max_examples=60, deadline=None)
@given(fuzz_schedules())
def test_plan_compiler_on_random_schedules(s):
    """The compiled program computes exactly what the step-by-step oracle computes."""
    model = gmm_image(shape=(1, 2, 2), components=2, rank=1).as_model(NS)
    noise = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    try:   # nearly coincident points: refused by every path alike (tests/test_fuzz.py)
        check_conditioning(s, NS)
    except ValueError:
        for run in (lambda: compile_plan(s, model), lambda: reference_sample(model, s, noise=noise)):
            with pytest.raises(ValueError, match="nearly coincident"):
                run()
        return
    peak = []
    ref = reference_sample(model, s, noise=noise, check_finite=False,
                           callback=lambda i, t, x: peak.append(float(x.abs().max())))
    if not torch.isfinite(ref).all() or max(peak) > 1e6:
        # random schedules can be wildly unstable: a state of 1e15 that cancels back to 50 leaves
        # only rounding noise to compare (the peak over the whole trajectory decides, not the end)
        return
    plan = compile_plan(s, model)
    assert sum(type(op).__name__ == "Eval" for op in plan.ops) == s.nfe
    out = execute(plan, model, initial_state(NS, s, noise), backend="torch", poison=True)
    # The program sums in another order than the oracle, so the two differ by rounding that the
    # schedule amplifies (large alternating weights). Measure that amplification as the oracle's
    # response to a 1e-13 relative change of the noise: on 60 random schedules the difference was
    # 0.3–1.0× that response, so 10× it on top of 1e-9 is allowed (a wrong weight moves the result by
    # orders of magnitude more). A flat 1e-9 failed once in ~10 runs (2.95e-9 on a 1e-9·2.7 bound).
    nudged = reference_sample(model, s, noise=noise * (1 + 1e-13), check_finite=False)
    sensitivity = float((nudged - ref).abs().max())
    err = float((out - ref).abs().max())
    assert err <= 1e-9 * max(1.0, float(ref.abs().max())) + 10 * sensitivity, (err, sensitivity)


def test_plan_reports_slots_and_bytes():
    plan = compile_plan(usf_fast.presets.dpm_solver_pp(NS, 6, order=2), MODEL)
    assert plan.num_slots <= 6
    per_step = plan.bytes_per_step(numel=1000, itemsize=4)
    assert set(per_step) == set(range(1, 7))
    # 2M from an ε-model in data prediction: x_s, x̂0 inputs (state + raw output per point) + 1 write
    assert all(v <= 7 * 4000 for v in per_step.values())


def test_corrected_state_is_written_once_as_a_second_output():
    plan = compile_plan(usf_fast.presets.unipc(NS, 6, order=2), MODEL)
    assert sum(op.out2 is not None for op in plan.combines) == 4   # steps 2..5 keep x_{i-1}^c
    assert len(plan.combines) == 6


def test_auto_picks_a_compiled_backend_for_float32_and_torch_for_float64():
    from usf_fast.backends import resolve_backend
    assert resolve_backend("auto", DEVICE, torch.float64) == "torch"
    assert resolve_backend("auto", DEVICE, torch.float32) == ("cuda" if DEVICE.type == "cuda" else "cpu")


def test_unusable_backend_is_a_clear_error():
    other = "cpu" if DEVICE.type == "cuda" else "cuda"
    with pytest.raises(ValueError, match=f"backend='{other}'"):
        usf_fast.sample(MODEL, PRESET_CASES["ddim"], noise=NOISE.float().to(DEVICE), backend=other)
    with pytest.raises(ValueError, match="dtype torch.float64 not supported"):
        usf_fast.sample(MODEL, PRESET_CASES["ddim"], noise=NOISE.to(DEVICE), backend=KERNELS[0])
    with pytest.raises(ValueError, match="backend='metal': must be one of"):
        usf_fast.sample(MODEL, PRESET_CASES["ddim"], noise=NOISE, backend="metal")


@settings(max_examples=25, deadline=None)
@given(fuzz_schedules())
def test_kernels_on_random_schedule_plans(s):
    """Random schedules give arbitrary K and coefficient patterns; every kernel matches float64."""
    plan = compile_plan(s, MODEL)
    g = torch.Generator().manual_seed(5)
    for op in plan.combines:
        if max(abs(c) for c in op.coefs) > 1e6:
            continue  # numerically meaningless schedules
        inputs = [torch.randn(2, 3, 5, generator=g).to(DEVICE) for _ in op.inputs]
        c1 = torch.tensor(op.coefs, dtype=torch.float32, device=DEVICE)
        c2 = torch.tensor(op.coefs2, dtype=torch.float32, device=DEVICE) if op.coefs2 else None
        ref = sum(float(c) * x.cpu().double() for c, x in zip(op.coefs, inputs))
        for backend in KERNELS:
            out = torch.full_like(inputs[0], float("nan"))
            out2 = torch.full_like(inputs[0], float("nan")) if c2 is not None else None
            get_combine(backend)(inputs, c1, out, c2, out2)
            scale = sum(abs(float(c)) * x.abs().max().item() for c, x in zip(op.coefs, inputs))
            assert float((out.cpu().double() - ref).abs().max()) <= 1e-6 * scale, backend
            if out2 is not None:
                assert torch.isfinite(out2).all()
