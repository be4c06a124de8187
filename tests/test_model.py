"""DiffusionModel: parameterisations, time inputs, per-sample times, classifier-free guidance."""
import pytest
import torch

import usf_fast
from usf_fast.models.mixture import gmm_2d, gmm_image

VP = usf_fast.NoiseScheduleVP("linear")
EDM = usf_fast.NoiseScheduleEDM()


@pytest.mark.parametrize("ns", [VP, EDM], ids=["vp", "edm"])
@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_parameterisations_give_the_same_samples(ns, prediction):
    gmm = gmm_2d()
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = usf_fast.presets.unipc(ns, 6)
    ref = usf_fast.sample(gmm.as_model(ns, "eps"), s, noise=noise)
    out = usf_fast.sample(gmm.as_model(ns, prediction), s, noise=noise)
    assert float((out - ref).norm() / ref.norm()) < 1e-10


@pytest.mark.parametrize("time_input,expected", [
    ("continuous", lambda t: t),
    ("discrete", lambda t: (t - 1e-3) * 1000),
    ("sigma", lambda t: VP.edm_sigma(t)),
])
def test_time_inputs(time_input, expected):
    seen = {}

    def net(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    model = usf_fast.DiffusionModel(net, VP, time_input=time_input)
    model.raw(torch.zeros(3, 2, dtype=torch.float64), 0.3)
    assert seen["t"].shape == (3,)
    torch.testing.assert_close(seen["t"], expected(torch.full((3,), 0.3, dtype=torch.float64)))


def test_per_sample_times():
    gmm = gmm_2d()
    model = gmm.as_model(VP)
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    out = model.raw(x, t)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], model.raw(x[i:i + 1], float(t[i])))
    with pytest.raises(ValueError, match=r"per-sample times must have shape \(3,\)"):
        model.raw(x, t[:2])


def test_classifier_free_guidance_combines_one_batched_call():
    calls = []

    def net(x, t, c):
        calls.append(x.shape[0])
        return c.reshape(-1, 1) * torch.ones_like(x)

    model = usf_fast.DiffusionModel(net, VP, guidance_scale=3.0, cond=torch.full((2,), 2.0), uncond=torch.zeros(2))
    out = model.raw(torch.zeros(2, 4), 0.5)
    assert calls == [4]                     # uncond and cond in one call
    torch.testing.assert_close(out, torch.full((2, 4), 0.0 + 3.0 * (2.0 - 0.0)))


def test_cfg_scale_one_equals_conditional():
    gmm = gmm_image(shape=(3, 4, 4), components=2, rank=2)
    base = gmm.as_model(VP)
    net = lambda x, t, c: base.net(x + c.reshape(-1, 1, 1, 1), t)  # noqa: E731
    cond, uncond = torch.full((2,), 0.1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    guided = usf_fast.DiffusionModel(net, VP, guidance_scale=1.0, cond=cond, uncond=uncond)
    conditional = usf_fast.DiffusionModel(net, VP, cond=cond)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(guided.raw(x, 0.4), conditional.raw(x, 0.4))


@pytest.mark.parametrize("kwargs,match", [
    ({"prediction": "epsilon"}, "prediction='epsilon': must be one of eps, x0, v, score"),
    ({"time_input": "index"}, "time_input='index': must be one of continuous, discrete, sigma"),
    ({"guidance_scale": 2.0}, "needs both cond= and uncond="),
    ({"guidance_scale": float("nan"), "cond": 1, "uncond": 0}, "guidance_scale=nan"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        usf_fast.DiffusionModel(lambda x, t: x, VP, **kwargs)


def test_wrong_output_shape_is_clear():
    model = usf_fast.DiffusionModel(lambda x, t: x[:, :1], VP)
    with pytest.raises(ValueError, match=r"net output shape \(2, 1\) differs from input shape \(2, 3\)"):
        model.raw(torch.zeros(2, 3), 0.5)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_non_contiguous_net_output(backend):
    """guided-diffusion style: a learned-variance net returns 2C channels and the wrapper keeps
    the first C, a non-contiguous view; every backend must accept it."""
    from usf_fast.backends import backend_status
    if not backend_status("cpu")[backend][0]:
        pytest.skip(f"{backend} backend not usable here")
    ns = usf_fast.NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    full = lambda x, t: torch.cat([0.3 * x, x], 1)  # noqa: E731
    model = usf_fast.DiffusionModel(lambda x, t: full(x, t)[:, :3], ns, "eps", "discrete")
    dense = usf_fast.DiffusionModel(lambda x, t: 0.3 * x, ns, "eps", "discrete")
    s = usf_fast.presets.unipc(ns, 5)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(usf_fast.sample(model, s, noise=noise, backend=backend),
                               usf_fast.sample(dense, s, noise=noise, backend=backend))
