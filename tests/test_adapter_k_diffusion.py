"""k-diffusion / ComfyUI samplers: our presets behind k-diffusion's sampler signature equal the
k-diffusion package's own samplers on the same denoiser and sigmas; a searched schedule runs on its
own σ grid (and a tail of it) and equals usf_fast.sample on the model it was made for."""
import numpy as np
import pytest
import torch
from oracle import k_diffusion_sampling

import usf_fast
from usf_fast.adapters import k_diffusion as ukd
from usf_fast.models import gmm_image

K = k_diffusion_sampling()
MIX = gmm_image(shape=(2, 4, 4), components=3, rank=2)
EDM = usf_fast.NoiseScheduleEDM(0.002, 80.0)
DENOISER = MIX.as_model(EDM, "x0").net   # D(x, σ): the exact mixture denoiser


def _karras(n, smin=0.002, smax=80.0, rho=7.0):
    ramp = np.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.tensor(np.append(s, 0.0), dtype=torch.float64)


def _noise(dtype=torch.float64):
    return torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("ours,theirs", [
    (lambda: ukd.sampler(preset="ddim"), "sample_euler"),
    (lambda: ukd.sampler(preset="dpm_solver_pp", order=2), "sample_dpmpp_2m"),
], ids=["ddim=euler", "dpm++2m"])
@pytest.mark.parametrize("n", [5, 12])
def test_presets_equal_the_k_diffusion_samplers(ours, theirs, n, dtype, tol):
    sigmas = _karras(n).to(dtype)
    x = _noise(dtype) * sigmas[0]
    denoiser = lambda x_, s: DENOISER(x_.double(), s.double()).to(x_.dtype)  # noqa: E731
    want = getattr(K, theirs)(denoiser, x.clone(), sigmas, disable=True)
    got = ours()(denoiser, x.clone(), sigmas, disable=True)
    assert got.dtype == dtype
    assert float((got.double() - want.double()).norm() / want.double().norm()) < tol


def test_extra_args_and_callback_are_passed_as_k_diffusion_does():
    seen, calls = [], []

    def denoiser(x, sigma, cond=None):
        seen.append(cond)
        return DENOISER(x, sigma)
    sigmas = _karras(4)
    ukd.sampler(preset="unipc", order=2)(denoiser, _noise() * sigmas[0], sigmas, extra_args={"cond": "c"},
                                          callback=calls.append)
    # one callback per evaluation, the last step's included (k-diffusion calls it 4 times here)
    assert seen == ["c"] * 4 and [c["i"] for c in calls] == [0, 1, 2, 3]
    assert set(calls[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}


@pytest.mark.parametrize("trailing_zero", [True, False], ids=["to-zero", "split-sigmas"])
@pytest.mark.parametrize("ours,theirs", [
    (lambda: ukd.sampler(preset="ddim"), "sample_euler"),
    (lambda: ukd.sampler(preset="dpm_solver_pp", order=2), "sample_dpmpp_2m"),
], ids=["ddim=euler", "dpm++2m"])
def test_callbacks_and_sigmas_without_a_trailing_zero_as_k_diffusion(ours, theirs, trailing_zero, monkeypatch):
    """Finding 6: the callback dict was shifted (σ_{i−1} for the state at σ_i, `denoised` = the
    state, no callback for the last step) and sent `sample` down the step-by-step reference path;
    on sigmas without a final 0 (ComfyUI's SplitSigmas) DPM++(2M) made its last step first order."""
    import usf_fast.adapters.k_diffusion as mod
    import usf_fast.api
    sigmas = _karras(6)
    sigmas = sigmas if trailing_zero else sigmas[:-1]
    x = _noise() * sigmas[0]
    theirs_calls, our_calls = [], []
    want = getattr(K, theirs)(DENOISER, x.clone(), sigmas, disable=True, callback=theirs_calls.append)

    def no_reference(*a, **k):
        raise AssertionError("the callback took the reference path")
    monkeypatch.setattr(usf_fast.api, "reference_sample", no_reference)
    fused = []
    real_execute = mod.execute
    monkeypatch.setattr(mod, "execute", lambda *a, **k: fused.append(1) or real_execute(*a, **k))
    got = ours()(DENOISER, x.clone(), sigmas, callback=our_calls.append)
    assert fused == [1]
    assert float((got - want).norm() / want.norm()) < 1e-10
    assert len(our_calls) == len(theirs_calls) == len(sigmas) - 1
    for a, b in zip(our_calls, theirs_calls):
        assert a["i"] == b["i"] and float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-12)
        assert float(a["sigma_hat"]) == pytest.approx(float(b["sigma_hat"]), rel=1e-12)
        for key in ("x", "denoised"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


def test_one_step_to_zero_is_the_denoiser():
    """Finding 6: sigmas [σ, 0] were refused with a range the user never passed."""
    sigmas = torch.tensor([14.6, 0.0], dtype=torch.float64)
    x = _noise() * sigmas[0]
    calls = []
    for name, ours in (("sample_euler", ukd.sampler(preset="ddim")),
                       ("sample_dpmpp_2m", ukd.sampler(preset="dpm_solver_pp", order=2))):
        want = getattr(K, name)(DENOISER, x.clone(), sigmas, disable=True)
        torch.testing.assert_close(ours(DENOISER, x.clone(), sigmas, callback=calls.append), want, rtol=1e-12, atol=0)
    assert [c["i"] for c in calls] == [0, 0]


def test_a_searched_schedule_runs_on_its_own_sigmas_and_their_tail():
    vp = usf_fast.NoiseScheduleVP("linear")
    schedule = usf_fast.Schedule([1.0, 0.6, 0.3, 0.1, 0.01],
                                 [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
                                  usf_fast.Step(order=3, relax="linear", relax_coef=0.3), usf_fast.Step(order=2)],
                                 afs=True, denoise_to_zero=True, meta={"noise_schedule": vp.fingerprint()})
    mixture = MIX.as_model(vp, "eps")   # AFS in a sampler function uses the data mean 0, as pipelines do
    vp_model = usf_fast.DiffusionModel(mixture.net, vp, "eps", mixture.time_input)
    sig = ukd.sigmas(schedule)
    assert len(sig) == 6 and float(sig[-1]) == 0.0
    np.testing.assert_allclose(sig[:-1].numpy(), np.exp(-vp.marginal_lambda(np.array(schedule.timesteps))), rtol=1e-12)
    noise = _noise()
    # the VP model seen as a k-diffusion denoiser: x_ve = x_vp / α, σ = σ_t/α_t (what ComfyUI does)
    ve = usf_fast.NoiseScheduleEDM(float(sig[-2]), float(sig[0]))
    denoiser = MIX.as_model(ve, "x0").net
    x_ve = noise / float(vp.marginal_alpha(1.0))   # the VP start x_T = ε as a k-diffusion state
    got = ukd.sampler(schedule=schedule)(denoiser, x_ve, sig)
    want = usf_fast.sample(vp_model, schedule, noise, backend="reference")   # x0: the same in both forms
    assert float((got - want).norm() / want.norm()) < 1e-8
    tail = ukd.sampler(schedule=schedule)(denoiser, noise * sig[2], sig[2:])
    assert torch.isfinite(tail).all()
    with pytest.raises(ValueError, match="runs on its own grid; pass usf_fast.adapters.k_diffusion.sigmas"):
        ukd.sampler(schedule=schedule)(denoiser, noise, _karras(5))


def test_bad_sampler_arguments_are_clear():
    with pytest.raises(ValueError, match="exactly one of schedule= .* or preset="):
        ukd.sampler()
    with pytest.raises(ValueError, match="preset='nope': must be one of"):
        ukd.sampler(preset="nope")
    with pytest.raises(ValueError, match=r"options \['spacing'\]: the sigmas passed to the sampler fix the grid"):
        ukd.sampler(preset="unipc", spacing="karras")
    with pytest.raises(ValueError, match="strictly decreasing"):
        ukd.sampler(preset="ddim")(DENOISER, _noise(), torch.tensor([1.0, 2.0, 0.0]))
    discrete = usf_fast.NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    s = usf_fast.presets.unipc(discrete, 5)
    with pytest.raises(ValueError, match="pass noise_schedule=model.noise_schedule"):
        ukd.sigmas(s)
    assert len(ukd.sigmas(s, discrete)) == len(s.timesteps)


def test_dpm_solver_runs_multistep_on_a_given_grid():
    sigmas = _karras(6)
    out = ukd.sampler(preset="dpm_solver", order=2)(DENOISER, _noise() * sigmas[0], sigmas)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="only 'multistep' runs"):
        ukd.sampler(preset="dpm_solver", method="singlestep")
