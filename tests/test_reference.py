"""The reference sampler: every decision is live, NFE is exact, dtypes, inputs, no host reads."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from strategies import fuzz_schedules
from torch.overrides import TorchFunctionMode

import usf_fast
from usf_fast import Schedule, Step
from usf_fast.models.mixture import gmm_2d, gmm_image

NS = usf_fast.NoiseScheduleVP("linear")


class CountingNet:
    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.net(x, t)


def counted(model):
    net = CountingNet(model.net)
    return usf_fast.DiffusionModel(net, model.noise_schedule, model.prediction, data_mean=model.data_mean), net


@pytest.fixture(scope="module")
def model():
    return gmm_image(shape=(3, 8, 8), components=3, rank=3).as_model(NS)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


BASE_TS = [1.0, 0.7, 0.4, 0.2, 0.08, 0.02, 0.001]
BASE = Schedule(BASE_TS, [Step(order=1), Step(order=2), Step(order=3), Step(order=3, corrector="pseudo"),
                          Step(order=2), Step(order=2)])

VARIATIONS = {
    "timestep": lambda s: s.replace(timesteps=BASE_TS[:3] + [0.25] + BASE_TS[4:]),
    "prediction": lambda s: s.with_step(2, prediction="noise"),
    "order": lambda s: s.with_step(2, order=2),
    "points": lambda s: s.with_step(4, points=(3, 2)),
    "start": lambda s: s.with_step(4, start=3, points=(4,)),
    "relax": lambda s: s.with_step(1, relax="midpoint"),
    "relax_coef": lambda s: s.with_step(1, relax="linear", relax_coef=0.3),
    "d2_scale": lambda s: s.with_step(2, d2_scale=0.5),
    "corrector_pseudo": lambda s: s.with_step(1, corrector="pseudo"),
    "corrector_implicit": lambda s: s.with_step(3, corrector="implicit"),
    "corrector_relax": lambda s: s.with_step(3, corrector_relax="bh1"),
    "afs": lambda s: s.replace(afs=True),
    "denoise_to_zero": lambda s: s.replace(denoise_to_zero=True),
}


@pytest.mark.parametrize("name", list(VARIATIONS))
def test_each_decision_changes_the_output(model, noise, name):
    base = usf_fast.sample(model, BASE, noise=noise)
    varied = usf_fast.sample(model, VARIATIONS[name](BASE), noise=noise)
    assert (varied - base).abs().max() > 1e-8


@settings(max_examples=60, deadline=None)
@given(fuzz_schedules())
def test_model_called_exactly_nfe_times(s):
    model, net = counted(gmm_2d().as_model(NS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random schedules may blow up; we only count
        usf_fast.sample(model, s, noise=torch.randn(3, 2, dtype=torch.float64))
    assert net.calls == s.nfe


def test_afs_saves_one_call_and_implicit_costs_one(model, noise):
    m, net = counted(model)
    for s, expected in [(BASE, 6), (BASE.replace(afs=True), 5), (BASE.with_step(1, corrector="implicit"), 7)]:
        net.calls = 0
        usf_fast.sample(m, s, noise=noise)
        assert net.calls == expected == s.nfe


@pytest.mark.parametrize("preset,kw,tol", [
    ("ddim", {}, 1e-5),
    ("dpm_solver_pp", {"order": 2}, 1e-5),
    # high-order multistep weights on the stored outputs are large and of both signs, so float32
    # storage rounding is amplified by their cancellation (not an accumulation issue)
    ("unipc", {"order": 3}, 1e-4),
    ("unipc", {"order": 3, "prediction": "noise"}, 3e-4),
])
def test_float32_matches_float64(model, noise, preset, kw, tol):
    s = usf_fast.presets.get(preset, NS, 6, **kw)
    x64 = usf_fast.sample(model, s, noise=noise)
    x32 = usf_fast.sample(model, s, noise=noise.float())
    assert x32.dtype == torch.float32
    assert float((x32.double() - x64).norm() / x64.norm()) < tol


def test_shape_and_generator_are_reproducible(model):
    s = usf_fast.presets.ddim(NS, 4)
    a = usf_fast.sample(model, s, shape=(2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    b = usf_fast.sample(model, s, shape=(2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)


class HostReadDetector(TorchFunctionMode):
    READS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_no_device_to_host_reads_inside_the_loop(noise):
    net = lambda x, t: x * 0.5 + t.reshape(-1, 1, 1, 1) * 0.1  # noqa: E731  (a net that reads nothing)
    model = usf_fast.DiffusionModel(net, NS)
    schedule = usf_fast.presets.unipc(NS, 6)
    with HostReadDetector() as det:
        usf_fast.sample(model, schedule, noise=noise, check_finite=False)
    assert det.reads == []


def test_detector_can_fail(noise):
    net = lambda x, t: x * float(t[0])  # noqa: E731
    model = usf_fast.DiffusionModel(net, NS)
    with HostReadDetector() as det:
        usf_fast.sample(model, usf_fast.presets.ddim(NS, 3), noise=noise, check_finite=False)
    assert det.reads


def test_timesteps_outside_noise_schedule_range(model, noise):
    s = Schedule([1.5, 0.5, 0.01])
    with pytest.raises(ValueError, match=r"timesteps\[0\]=1.5: outside the noise schedule's range \[0.001, 1.0\]"):
        usf_fast.sample(model, s, noise=noise)


def test_nan_output_warns(noise):
    model = usf_fast.DiffusionModel(lambda x, t: x * float("nan"), NS)
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        usf_fast.sample(model, usf_fast.presets.ddim(NS, 2), noise=noise)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "give noise= .* or shape="),
    ({"shape": (0, 3)}, "positive sizes"),
    ({"noise": [1.0, 2.0]}, "noise: must be a torch.Tensor"),
    ({"noise": torch.ones(2, 3, dtype=torch.int64)}, "must be a real floating tensor"),
])
def test_bad_sample_inputs(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        usf_fast.sample(model, usf_fast.presets.ddim(NS, 2), **kwargs)


def test_model_must_be_diffusion_model():
    with pytest.raises(ValueError, match="model: must be a usf_fast.DiffusionModel"):
        usf_fast.sample(lambda x, t: x, usf_fast.presets.ddim(NS, 2), shape=(1, 2))


def test_callback_sees_every_step(model, noise):
    seen = []
    usf_fast.sample(model, BASE, noise=noise, callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(i, BASE_TS[i]) for i in range(1, 7)]


def test_edm_sampling_converges_to_the_reference():
    ns = usf_fast.NoiseScheduleEDM()
    model = gmm_2d().as_model(ns, prediction="x0")
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    from usf_fast.metrics import reference_solution
    ref = reference_solution(model, noise, ns.t_max, ns.t_min)
    errs = [float((usf_fast.sample(model, usf_fast.presets.unipc(ns, n, spacing="karras"), noise=noise) - ref).abs().max())
            for n in (10, 20, 40)]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-3
