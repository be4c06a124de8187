"""USFScheduler in diffusers pipelines equals usf_fast.sample on the wrapped model."""
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

import usf_fast
from tiny_pipelines import unet2d

from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config, wrap_unet


UNET = unet2d()
# explicit values: diffusers drops config keys that were left at their defaults (_use_default_values)
CONFIG = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon").config
NS = noise_schedule_from_diffusers_config(CONFIG)


def _usf_reference(schedule, noise, prediction="eps"):
    ptype = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction]
    model = wrap_unet(UNET, DDPMScheduler(beta_schedule="linear", prediction_type=ptype).config)
    assert model.prediction == prediction and model.noise_schedule == NS
    with torch.no_grad():
        return usf_fast.sample(model, schedule, noise=noise, backend="torch")


def _manual_loop(sched, noise, init_noise_sigma=None):
    x = noise * (init_noise_sigma or sched.init_noise_sigma)
    with torch.no_grad():
        for t in sched.timesteps:
            out = UNET(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x


SCHEDULES = {
    "unipc": usf_fast.presets.unipc(NS, 5),
    "dpmpp3m-afs": usf_fast.presets.dpm_solver_pp(NS, 5, order=3, afs=True),
    "searched-like": usf_fast.Schedule([1.0, 0.61, 0.33, 0.12, 0.02, 0.001],
                                       [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
                                        usf_fast.Step(order=3, corrector="pseudo", relax="linear", relax_coef=0.3),
                                        usf_fast.Step(order=2), usf_fast.Step(order=1)], afs=True),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_loop_equals_usf_sample(name):
    s = SCHEDULES[name]
    sched = USFScheduler.from_config(CONFIG, schedule=s)
    sched.set_timesteps(s.nfe)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = _manual_loop(sched, noise)
    ref = _usf_reference(s, noise)
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("prediction_type,prediction", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_types(prediction_type, prediction):
    cfg = DDPMScheduler(beta_schedule="linear", prediction_type=prediction_type).config
    sched = USFScheduler.from_config(cfg, preset="dpm_solver_pp", preset_options={"order": 2})
    sched.set_timesteps(5)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = _manual_loop(sched, noise)
    # the preset on the DDPM config's own grid (the source scheduler's timesteps)
    ref = _usf_reference(sched.active_schedule, noise, prediction)
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


def test_inside_a_ddpm_pipeline():
    s = SCHEDULES["unipc"]
    pipe = DDPMPipeline(unet=UNET, scheduler=USFScheduler.from_config(CONFIG, schedule=s))
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=s.nfe, output_type="np").images
    from diffusers.utils.torch_utils import randn_tensor
    noise = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    ref = (_usf_reference(s, noise) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(img, ref, atol=1e-5)


def test_config_round_trip(tmp_path):
    s = SCHEDULES["searched-like"]
    sched = USFScheduler.from_config(CONFIG, schedule=s)
    sched.save_config(tmp_path)
    back = USFScheduler.from_pretrained(tmp_path)
    assert back.schedule == s


def test_step_makes_no_host_reads():
    from test_reference import HostReadDetector
    sched = USFScheduler.from_config(CONFIG, schedule=SCHEDULES["unipc"])
    sched.set_timesteps(5)
    x = torch.randn(1, 3, 8, 8)
    with HostReadDetector() as det:
        for t in sched.timesteps:
            x = sched.step(x * 0.5, t, x).prev_sample
    assert det.reads == []


@pytest.mark.parametrize("make,match", [
    (lambda: USFScheduler.from_config(DDPMScheduler(beta_schedule="sigmoid").config), "beta_schedule='sigmoid'"),
    (lambda: USFScheduler(prediction_type="flow"), "prediction_type='flow'"),
    (lambda: USFScheduler.from_config(CONFIG, schedule=usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 5)),
     "schedule was made for noise schedule"),
    (lambda: USFScheduler.from_config(CONFIG, preset="heun"), "preset='heun'"),
])
def test_bad_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_step_count_is_clear():
    sched = USFScheduler.from_config(CONFIG, schedule=SCHEDULES["unipc"])
    with pytest.raises(ValueError, match="num_inference_steps=7 but the configured schedule has NFE 5"):
        sched.set_timesteps(7)


@pytest.mark.parametrize("which", ["dpmsolver", "unipc"])
def test_preset_through_our_scheduler_matches_diffusers_own_in_the_pipeline(which):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    from oracle import usf_times
    if which == "dpmsolver":
        theirs = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, solver_order=2,
                                             final_sigmas_type="sigma_min")
    else:
        theirs = UniPCMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, solver_order=2,
                                         final_sigmas_type="sigma_min")
    theirs.set_timesteps(6)
    ts = usf_times([int(t) for t in theirs.timesteps])
    preset = (usf_fast.presets.dpm_solver_pp(NS, 6, order=2, timesteps=ts) if which == "dpmsolver"
              else usf_fast.presets.unipc(NS, 6, order=2, timesteps=ts))
    ours = USFScheduler.from_config(CONFIG, schedule=preset)
    ours.set_timesteps(6)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    # the standard denoising loop of diffusers pipelines (DDPMPipeline passes generator= to step,
    # which UniPCMultistepScheduler.step does not accept, so the loop is written out)
    a, b = _manual_loop(theirs, noise), _manual_loop(ours, noise)
    assert float((b - a).norm() / a.norm()) <= 1e-5


# ---- EDM configs (diffusers' EDMEulerScheduler / EDMDPMSolverMultistepScheduler) ------------------
def _edm_config(prediction_type="epsilon"):
    from diffusers import EDMEulerScheduler
    return EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, prediction_type=prediction_type).config


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["unipc", "afs-pseudo"])
def test_edm_config_loop_equals_usf_sample(prediction_type, name):
    cfg = _edm_config(prediction_type)
    ns = noise_schedule_from_diffusers_config(cfg)
    assert ns == usf_fast.NoiseScheduleEDM(0.002, 80.0)
    s = (usf_fast.presets.unipc(ns, 5, spacing="karras") if name == "unipc"
         else usf_fast.presets.dpm_solver_pp(ns, 5, order=3, afs=True, spacing="karras"))
    sched = USFScheduler.from_config(cfg, schedule=s)
    assert sched.edm and sched.config.sigma_data == 0.5
    sched.set_timesteps(s.nfe)
    assert sched.init_noise_sigma == 80.0
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    out = _manual_loop(sched, noise)
    model = wrap_unet(UNET, cfg)
    assert model.prediction == "x0" and model.noise_schedule == ns
    with torch.no_grad():
        ref = usf_fast.sample(model, s, noise=noise, backend="torch")
    assert bool(torch.isfinite(ref).all())
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("which", ["euler", "dpmsolver"])
def test_edm_preset_matches_diffusers_edm_schedulers(which):
    """diffusers' EDM Euler = our DDIM and its EDM DPM-Solver++(2M) = our dpm_solver_pp order 2, both
    on Karras σ with the last step to σ = 0 (our denoise_to_zero), in the same denoising loop."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
    cfg = _edm_config()
    if which == "euler":
        theirs = EDMEulerScheduler.from_config(cfg)
    else:
        theirs = EDMDPMSolverMultistepScheduler.from_config(cfg, solver_order=2, final_sigmas_type="zero")
    theirs.set_timesteps(6)
    ns = noise_schedule_from_diffusers_config(cfg)
    preset = (usf_fast.presets.ddim(ns, 6, spacing="karras", denoise_to_zero=True) if which == "euler"
              else usf_fast.presets.dpm_solver_pp(ns, 6, order=2, spacing="karras", denoise_to_zero=True))
    ours = USFScheduler.from_config(cfg, schedule=preset)
    ours.set_timesteps(6)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps.float(), rtol=1e-5, atol=1e-5)
    # diffusers' EDM schedulers start from sqrt(σ_max² + 1)·ε (init_noise_sigma 80.006); EDM and
    # usf_fast start from σ_max·ε: compare from the same start state
    assert theirs.init_noise_sigma == pytest.approx((80.0 ** 2 + 1) ** 0.5) and ours.init_noise_sigma == 80.0
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    a, b = _manual_loop(theirs, noise, 80.0), _manual_loop(ours, noise)
    assert float((b - a).norm() / a.norm()) <= 1e-5


@pytest.mark.parametrize("make,match", [
    (lambda: USFScheduler.from_config(_edm_config("sample")), "prediction_type='sample'.*EDM"),
    (lambda: wrap_unet(UNET, _edm_config("sample")), "prediction_type='sample'.*EDM"),
    (lambda: USFScheduler.from_config(__import__("diffusers").ScoreSdeVeScheduler().config), "variance-exploding"),
    (lambda: USFScheduler.from_config(_edm_config(), schedule=usf_fast.presets.unipc(NS, 5)),
     "schedule was made for noise schedule"),
])
def test_bad_edm_and_foreign_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_edm_config_round_trip(tmp_path):
    cfg = _edm_config("v_prediction")
    s = usf_fast.presets.unipc(noise_schedule_from_diffusers_config(cfg), 4, spacing="karras")
    USFScheduler.from_config(cfg, schedule=s).save_config(tmp_path)
    back = USFScheduler.from_pretrained(tmp_path)
    assert back.edm and back.config.prediction_type == "v_prediction" and back.schedule == s


@pytest.mark.gpu
def test_step_makes_no_host_sync_on_cuda():
    """On CUDA tensors a whole scheduler loop (AFS, corrector, final result) runs with
    torch.cuda.set_sync_debug_mode("error"): no step synchronises with the host."""
    sched = USFScheduler.from_config(DDPMScheduler().config, preset="unipc", preset_options={"order": 3, "afs": True})
    sched.set_timesteps(6, device="cuda")
    x = torch.randn(2, 4, 16, 16, device="cuda")
    outs = [torch.randn(2, 4, 16, 16, device="cuda") for _ in range(6)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, t in enumerate(sched.timesteps):
            sched.scale_model_input(x, t)
            x = sched.step(outs[i], t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.is_cuda and x.shape == (2, 4, 16, 16)
