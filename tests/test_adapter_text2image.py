"""USFScheduler inside a tiny, randomly initialised Stable Diffusion pipeline with classifier-free
guidance: the pipeline's latents equal usf_fast.sample on the wrapped UNet (guided, one batched
call), and a preset through our scheduler matches diffusers' own schedulers in the same pipeline."""
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

from tiny_pipelines import PROMPTS, sd_pipeline

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config, wrap_unet

GUIDANCE = 4.0


PIPE = sd_pipeline()
LATENTS = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))


def _run(pipe, nfe):
    with torch.no_grad():
        return pipe(PROMPTS, height=16, width=16, num_inference_steps=nfe, guidance_scale=GUIDANCE,
                    latents=LATENTS.clone(), output_type="latent").images


def _guided_model(pipe):
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    return wrap_unet(pipe.unet, pipe.scheduler.config, cond=cond, uncond=uncond, guidance_scale=GUIDANCE)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_text_to_image_with_cfg_equals_usf_sample(prediction_type):
    pipe = sd_pipeline(prediction_type)
    ns = noise_schedule_from_diffusers_config(pipe.scheduler.config)
    schedule = usf_fast.presets.unipc(ns, 5, order=3)
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=schedule)
    out = _run(pipe, schedule.nfe)
    model = _guided_model(pipe)
    assert model.guidance_scale == GUIDANCE and model.prediction == {"epsilon": "eps", "sample": "x0",
                                                                     "v_prediction": "v"}[prediction_type]
    with torch.no_grad():
        ref = usf_fast.sample(model, schedule, noise=LATENTS, backend="torch")
    assert float((out - ref).norm() / ref.norm()) <= 1e-5
    # guidance matters here: the unguided result is far away
    unguided = wrap_unet(pipe.unet, pipe.scheduler.config, cond=model.cond)
    with torch.no_grad():
        plain = usf_fast.sample(unguided, schedule, noise=LATENTS, backend="torch")
    assert float((plain - ref).norm() / ref.norm()) > 1e-3


def test_searched_like_schedule_in_the_text_to_image_pipeline():
    ns = noise_schedule_from_diffusers_config(PIPE.scheduler.config)
    schedule = usf_fast.Schedule(
        [1.0, 0.55, 0.3, 0.1, 0.01],
        [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
         usf_fast.Step(order=3, relax="linear", relax_coef=0.4), usf_fast.Step(order=2)], afs=True,
        meta={"noise_schedule": ns.fingerprint()})
    pipe = sd_pipeline()
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=schedule)
    out = _run(pipe, schedule.nfe)
    with torch.no_grad():
        ref = usf_fast.sample(_guided_model(pipe), schedule, noise=LATENTS, backend="torch")
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("which", ["dpmsolver", "unipc"])
def test_preset_matches_diffusers_scheduler_in_the_text_to_image_pipeline(which):
    from oracle import usf_times
    cfg = PIPE.scheduler.config
    if which == "dpmsolver":
        theirs = DPMSolverMultistepScheduler.from_config(cfg, solver_order=2, final_sigmas_type="sigma_min")
    else:
        theirs = UniPCMultistepScheduler.from_config(cfg, solver_order=2, final_sigmas_type="sigma_min")
    pipe = sd_pipeline()
    pipe.scheduler = theirs
    a = _run(pipe, 6)
    ns = noise_schedule_from_diffusers_config(cfg)
    ts = usf_times([int(t) for t in theirs.timesteps])
    preset = (usf_fast.presets.dpm_solver_pp(ns, 6, order=2, timesteps=ts) if which == "dpmsolver"
              else usf_fast.presets.unipc(ns, 6, order=2, timesteps=ts))
    pipe.scheduler = USFScheduler.from_config(cfg, schedule=preset)
    b = _run(pipe, 6)
    assert float((b - a).norm() / a.norm()) <= 1e-5


def test_a_flow_matching_config_gives_a_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = USFScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert sched.kind == "flow" and sched.config.shift == 3.0 and sched.config.prediction_type == "flow_prediction"
