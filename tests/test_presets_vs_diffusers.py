"""Presets reproduce diffusers' schedulers (an independent implementation) on the same discrete VP
betas, model, noise and timesteps.

Tolerance: rel. error ≤ 1e-5 over the final sample in float64. DPMSolverMultistepScheduler.step
casts the state to float32 internally ("Upcast to avoid precision issues": sample.to(float32)) and
DDIMScheduler reads float32 alphas_cumprod, so those two agree to ~1e-6 rather than ~1e-14;
UniPC has no such cast and agrees to ~1e-13.
"""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from oracle import discrete_setup, rel_err, run_diffusers, usf_times

import usf_fast

TOL = 1e-5
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _noise(seed=0):
    return torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", [5, 8])
def test_dpm_solver_pp_multistep_matches_diffusers(order, solver_type, steps):
    model, net, _ = discrete_setup()
    sch = DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=order, algorithm_type="dpmsolver++",
                                      solver_type=solver_type, final_sigmas_type="sigma_min")
    noise = _noise()
    ref, ts = run_diffusers(sch, net, noise, steps)
    schedule = usf_fast.presets.dpm_solver_pp(model.noise_schedule, steps, order=order, solver_type=solver_type,
                                              timesteps=usf_times(ts))
    assert schedule.nfe == steps
    assert rel_err(usf_fast.sample(model, schedule, noise=noise), ref) <= TOL


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_denoise_to_zero_matches_final_sigma_zero(order):
    """diffusers' default final_sigmas_type="zero" (last step jumps to x̂0) is our denoise_to_zero."""
    model, net, _ = discrete_setup()
    sch = DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=order, final_sigmas_type="zero")
    noise = _noise(1)
    ref, ts = run_diffusers(sch, net, noise, 6)
    schedule = usf_fast.presets.dpm_solver_pp(model.noise_schedule, 6, order=order, timesteps=usf_times(ts, None),
                                              denoise_to_zero=True)
    assert schedule.nfe == 6
    assert rel_err(usf_fast.sample(model, schedule, noise=noise), ref) <= TOL


# diffusers' UniPC with bh1 and final_sigmas_type="zero" returns NaN: on the jump to σ = 0 it
# multiplies B(h) = −h = −∞ by a zero residual. Our denoise_to_zero form stays finite
# (test_unipc_bh1_denoise_to_zero_is_finite), so that pair is compared with "sigma_min" only.
UNIPC_CASES = [(v, f) for v in ("bh1", "bh2") for f in ("sigma_min", "zero") if (v, f) != ("bh1", "zero")]


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant,final", UNIPC_CASES)
def test_unipc_matches_diffusers(order, variant, final):
    model, net, _ = discrete_setup()
    sch = UniPCMultistepScheduler(beta_schedule="linear", solver_order=order, solver_type=variant,
                                  final_sigmas_type=final)
    noise = _noise(2)
    steps = 7
    ref, ts = run_diffusers(sch, net, noise, steps)
    if final == "sigma_min":
        schedule = usf_fast.presets.unipc(model.noise_schedule, steps, order=order, variant=variant,
                                          timesteps=usf_times(ts))
    else:
        schedule = usf_fast.presets.unipc(model.noise_schedule, steps, order=order, variant=variant,
                                          timesteps=usf_times(ts, None), denoise_to_zero=True)
    assert schedule.nfe == steps
    assert rel_err(usf_fast.sample(model, schedule, noise=noise), ref) <= 1e-10


def test_unipc_bh1_denoise_to_zero_is_finite():
    model, _, _ = discrete_setup()
    schedule = usf_fast.presets.unipc(model.noise_schedule, 6, order=3, variant="bh1", denoise_to_zero=True)
    assert torch.isfinite(usf_fast.sample(model, schedule, noise=_noise())).all()


def test_ddim_matches_diffusers():
    model, net, _ = discrete_setup()
    sch = DDIMScheduler(beta_schedule="linear", set_alpha_to_one=True)  # last step lands on x̂0
    noise = _noise(3)
    ref, ts = run_diffusers(sch, net, noise, 6)
    schedule = usf_fast.presets.ddim(model.noise_schedule, 6, timesteps=usf_times(ts, None), denoise_to_zero=True)
    assert rel_err(usf_fast.sample(model, schedule, noise=noise), ref) <= TOL


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_model_parameterisations_match_diffusers_prediction_types(prediction):
    """The net returns ε, x0 or v; diffusers converts with prediction_type, usf_fast with
    DiffusionModel(prediction=...); both must give the same sample."""
    model, net, _ = discrete_setup(prediction)
    for scheduler in (UniPCMultistepScheduler, DPMSolverMultistepScheduler):
        sch = scheduler(beta_schedule="linear", solver_order=2, final_sigmas_type="sigma_min",
                        prediction_type=DIFFUSERS_PREDICTION[prediction])
        noise = _noise(4)
        ref, ts = run_diffusers(sch, net, noise, 6)
        preset = usf_fast.presets.unipc if scheduler is UniPCMultistepScheduler else usf_fast.presets.dpm_solver_pp
        schedule = preset(model.noise_schedule, 6, order=2, timesteps=usf_times(ts))
        assert rel_err(usf_fast.sample(model, schedule, noise=noise), ref) <= TOL, scheduler.__name__


def test_comparison_can_fail():
    """Guard: a different preset does not pass the same comparison."""
    model, net, _ = discrete_setup()
    sch = DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=2, final_sigmas_type="sigma_min")
    noise = _noise()
    ref, ts = run_diffusers(sch, net, noise, 6)
    wrong = usf_fast.presets.dpm_solver_pp(model.noise_schedule, 6, order=2, solver_type="heun", timesteps=usf_times(ts))
    assert rel_err(usf_fast.sample(model, wrong, noise=noise), ref) > 1e-4
