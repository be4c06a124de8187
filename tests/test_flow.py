"""Rectified flow: the noise schedule, the velocity prediction, the shifted grids, and the same
solvers on it with no special case (issue: flow-matching models)."""
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from hypothesis import given, settings
from strategies import schedules

import usf_fast
from usf_fast import Schedule, Step, presets
from usf_fast.metrics import reference_solution
from usf_fast.models import embedded_model, gmm_2d

NS = usf_fast.NoiseScheduleFlow()


# ---- the noise schedule -------------------------------------------------------------------------

def test_flow_schedule_is_the_straight_path_with_its_closed_form_inverse():
    t = np.array([NS.t_max, 0.9, 0.5, 0.1, NS.t_min])
    np.testing.assert_array_equal(NS.marginal_alpha(t), 1.0 - t)
    np.testing.assert_array_equal(NS.marginal_std(t), t)
    np.testing.assert_allclose(NS.marginal_lambda(t), np.log((1 - t) / t), rtol=1e-14)
    np.testing.assert_allclose(NS.inverse_lambda(NS.marginal_lambda(t)), t, rtol=1e-14)
    tt = torch.tensor(t)
    torch.testing.assert_close(NS.inverse_lambda(NS.marginal_lambda(tt)), tt, rtol=1e-14, atol=0)
    assert NS.prior_std(NS.t_max) == 1.0 and NS.t_max == 1 - 1e-6


def test_flow_schedule_round_trips_through_its_fingerprint():
    ns = usf_fast.NoiseScheduleFlow(t_min=0.01, t_max=0.99)
    assert usf_fast.noise_schedules.noise_schedule_from_dict(ns.to_dict()) == ns
    assert ns.fingerprint() == {"type": "flow", "t_min": 0.01, "t_max": 0.99}


@pytest.mark.parametrize("kw,match", [
    ({"t_max": 1.0}, "t_max=1.0: must be < 1"),
    ({"t_min": 0.0}, "need 0 < t_min < t_max < 1"),
    ({"t_min": 0.5, "t_max": 0.4}, "need 0 < t_min < t_max < 1"),
    ({"t_min": float("nan")}, "t_min=nan: must be a finite number"),
])
def test_bad_flow_ranges_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        usf_fast.NoiseScheduleFlow(**kw)


# ---- the velocity prediction --------------------------------------------------------------------

def test_flow_prediction_needs_the_flow_schedule_and_v_is_refused_on_it():
    net = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="prediction='flow': the velocity v = ε − x0 needs a NoiseScheduleFlow"):
        usf_fast.DiffusionModel(net, usf_fast.NoiseScheduleVP("linear"), prediction="flow")
    with pytest.raises(ValueError, match="prediction='v': v = α·ε − σ·x0 is not a flow model's velocity"):
        usf_fast.DiffusionModel(net, NS, prediction="v")
    assert usf_fast.DiffusionModel(net, NS, prediction="flow").prediction == "flow"


def test_the_embedded_mixtures_predict_the_velocity_on_the_flow_schedule():
    model = embedded_model("gmm-2d", NS)
    assert model.prediction == "flow"
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.full((5,), 0.3, dtype=torch.float64)
    eps = embedded_model("gmm-2d", NS, "eps").net(x, t)
    x0 = (x - 0.3 * eps) / 0.7
    torch.testing.assert_close(model.net(x, t), eps - x0, rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(schedule=schedules(NS))
def test_a_velocity_model_samples_as_the_same_model_predicting_noise(schedule):
    """v = ε − x0 is linear in (x, out) like every parameterisation: no solver code knows it."""
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow = usf_fast.sample(embedded_model("gmm-2d", NS), schedule, noise, backend="torch", check_finite=False)
    eps = usf_fast.sample(embedded_model("gmm-2d", NS, "eps"), schedule, noise, backend="reference",
                          check_finite=False)
    # the two models differ by round-off only; converting ε̂ to x̂0 divides by α = 1e-6 at t_max
    assert float((flow - eps).norm() / eps.norm()) < 1e-6


def test_float32_fused_sampling_from_near_pure_noise_keeps_float32_accuracy():
    model = embedded_model("gmm-image", NS)
    noise = torch.randn(8, *model.sample_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = presets.unipc(NS, 6, spacing="flow_shift")
    ref = usf_fast.sample(model, s, noise, backend="reference")
    fast = usf_fast.sample(model, s, noise.float())
    assert float((fast.double() - ref).norm() / ref.norm()) < 1e-5


# ---- grids --------------------------------------------------------------------------------------

def test_the_shifted_grid_is_uniform_before_the_shift_with_exact_ends():
    ts = presets.timesteps(NS, 8, "flow_shift", shift=3.0)
    assert ts[0] == NS.t_max and ts[-1] == NS.t_min
    unshifted = ts / (3.0 - 2.0 * ts)
    np.testing.assert_allclose(np.diff(unshifted), np.diff(unshifted)[0], rtol=1e-9)
    np.testing.assert_allclose(presets.flow_shift(0.5, math.e ** 1.15), math.e ** 1.15 / (math.e ** 1.15 + 1.0))


@pytest.mark.parametrize("make,match", [
    (lambda: presets.timesteps(usf_fast.NoiseScheduleVP("linear"), 5, "flow_shift"), "needs a NoiseScheduleFlow"),
    (lambda: presets.timesteps(NS, 5, "flow_shift", shift=0.0), "shift=0.0: must be a finite number > 0"),
    (lambda: presets.timesteps(NS, 5, "warp"), "spacing='warp': must be one of"),
])
def test_bad_grids_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_preset_baseline_on_flow_includes_the_shifted_grid():
    spacings = {sp for _, sp, _ in presets.standard_schedules(NS, 5)}
    assert "flow_shift" in spacings and "logSNR" in spacings
    assert "flow_shift" not in {sp for _, sp, _ in presets.standard_schedules(usf_fast.NoiseScheduleVP("linear"), 5)}


# ---- against independent implementations and the ODE --------------------------------------------

def test_ddim_with_denoise_to_zero_is_flow_match_euler():
    """diffusers' FlowMatchEuler: x ← x + (σ_next − σ)·v down to σ = 0, on float32 sigmas."""
    model = embedded_model("gmm-image", NS)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=list(np.linspace(0.99, 0.05, 6)))   # shifted by 3 inside
    sigmas = sched.sigmas.double()
    noise = torch.randn(4, *model.sample_shape, generator=torch.Generator().manual_seed(2))
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        v = model.net(x.double(), sigmas[i].expand(x.shape[0])).float()
        x = sched.step(v, t, x).prev_sample
    s = Schedule(sigmas[:-1].tolist(), [Step(order=1)] * (len(sigmas) - 2), denoise_to_zero=True)
    ours = usf_fast.sample(model, s, noise.double(), backend="reference")
    assert s.nfe == len(sched.timesteps)
    assert float((x.double() - ours).norm() / ours.norm()) < 1e-5


@pytest.fixture(scope="module")
def ode():
    model = gmm_2d().as_model(NS, "flow")
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t0 = 0.99   # the adaptive solver's start: y = x/α explodes as α → 0
    return model, noise, t0, reference_solution(model, noise, t0, NS.t_min, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("prediction", ["noise", "data"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_convergence_order_on_the_flow_mixture(ode, prediction, order):
    model, noise, t0, ref = ode
    nfes = [40, 80, 160]
    errs = []
    for n in nfes:
        s = Schedule(presets.timesteps(NS, n, t_start=t0), [Step(prediction=prediction, order=min(order, i))
                                                           for i in range(1, n + 1)])
        errs.append(float((usf_fast.sample(model, s, noise=noise) - ref).pow(2).mean().sqrt()))
    slope = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert slope >= order - 0.3, (slope, errs)


def _diffusers_flow_loop(sched, model, noise, n):
    """diffusers' flow-mode loop; the net sees the scheduler's own σ (float32 values, as float64)."""
    sched.set_timesteps(n)
    sigmas = sched.sigmas.double()
    x = noise.clone() * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        x = sched.step(model.net(x, sigmas[i].expand(x.shape[0])), t, x).prev_sample
    return x, sigmas


FLOW_MODEL = gmm_2d().as_model(NS, "flow")


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [5, 8])
def test_dpm_solver_pp_on_flow_is_diffusers_dpm_solver_in_flow_mode(order, steps):
    """DPMSolverMultistepScheduler(use_flow_sigmas, flow_prediction): its grid (shift 3, from
    shift(1 − 1/N)) and its final jump to σ = 0, which is our denoise_to_zero."""
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = DPMSolverMultistepScheduler(solver_order=order, use_flow_sigmas=True, prediction_type="flow_prediction",
                                        flow_shift=3.0)
    ref, sigmas = _diffusers_flow_loop(sched, FLOW_MODEL, noise, steps)
    s = presets.dpm_solver_pp(NS, steps, order=order, timesteps=sigmas[:-1].tolist(), denoise_to_zero=True)
    out = usf_fast.sample(FLOW_MODEL, s, noise, backend="reference")
    assert s.nfe == steps and float((out - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_on_flow_is_diffusers_unipc_in_flow_mode(order):
    """bh2 with the final jump to σ = 0 (our denoise_to_zero). diffusers cannot serve bh1 here: with
    the jump to 0 it is NaN (as on VP), and in flow mode final_sigmas_type="sigma_min" repeats the
    last σ (a zero-length last step); bh1 is compared on VP in test_presets_vs_diffusers."""
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sched = UniPCMultistepScheduler(solver_order=order, use_flow_sigmas=True, prediction_type="flow_prediction",
                                    flow_shift=3.0, solver_type="bh2")
    ref, sigmas = _diffusers_flow_loop(sched, FLOW_MODEL, noise, 6)
    s = presets.unipc(NS, 6, order=order, variant="bh2", timesteps=sigmas[:-1].tolist(), denoise_to_zero=True)
    out = usf_fast.sample(FLOW_MODEL, s, noise, backend="reference")
    assert s.nfe == 6 and float((out - ref).norm() / ref.norm()) < 1e-5
