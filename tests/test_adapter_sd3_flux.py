"""Tiny random SD3 and FLUX pipelines (built from configs, offline; text encoders replaced by
prompt embeddings): USFScheduler in the pipeline = usf_fast.sample on the wrapped transformer for
the same noise, DDIM through it = the pipeline's own FlowMatchEuler, flow img2img via scale_noise."""
import warnings

import numpy as np
import pytest
import torch
from diffusers import (FlowMatchEulerDiscreteScheduler)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils import logging as dlogging

from tiny_pipelines import flux_pipeline, sd3_pipeline

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, wrap_transformer

dlogging.set_verbosity_error()
NS = usf_fast.NoiseScheduleFlow()
SEARCHED_LIKE = usf_fast.Schedule([NS.t_max, 0.85, 0.6, 0.35, 0.12, 0.03],
                                  [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
                                   usf_fast.Step(order=3, corrector="pseudo", relax="linear", relax_coef=0.3),
                                   usf_fast.Step(order=2), usf_fast.Step(order=1)], afs=True, denoise_to_zero=True)


def _embeds(seed, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, 32, generator=g), torch.randn(b, 32, generator=g)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


SD3_SCHEDULERS = {
    "unipc-3": lambda cfg: USFScheduler.from_config(cfg, preset="unipc", preset_options={"order": 3}),
    "dpm++2m": lambda cfg: USFScheduler.from_config(cfg, preset="dpm_solver_pp", preset_options={"order": 2}),
    "searched-like": lambda cfg: USFScheduler.from_config(cfg, schedule=SEARCHED_LIKE),
}


@pytest.mark.parametrize("name", list(SD3_SCHEDULERS))
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_sd3_pipeline_with_usf_scheduler_is_usf_sample_on_the_wrapped_transformer(name, cfg_scale):
    pipe = sd3_pipeline()
    pe, pooled = _embeds(1)
    ne, npooled = _embeds(2)
    sched = SD3_SCHEDULERS[name](pipe.scheduler.config)
    pipe.scheduler = sched
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    n = SEARCHED_LIKE.nfe if name == "searched-like" else 5
    latents = sched.first_input(noise) if name == "searched-like" else noise   # AFS: SD3 never calls scale_model_input
    with torch.no_grad():
        out = pipe(prompt_embeds=pe, pooled_prompt_embeds=pooled, negative_prompt_embeds=ne,
                   negative_pooled_prompt_embeds=npooled, guidance_scale=cfg_scale, num_inference_steps=n,
                   latents=latents, output_type="latent").images
        guided = dict(guidance_scale=cfg_scale, uncond={"encoder_hidden_states": ne, "pooled_projections": npooled}) \
            if cfg_scale > 1 else {}
        model = wrap_transformer(pipe.transformer, pipe.scheduler.config,
                                 cond={"encoder_hidden_states": pe, "pooled_projections": pooled}, **guided)
        ref = usf_fast.sample(model, sched.active_schedule, noise)
    assert _rel(out, ref) < 1e-5


def test_ddim_in_the_sd3_pipeline_is_its_own_flow_match_euler():
    pipe = sd3_pipeline()
    pe, pooled = _embeds(1)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pooled, guidance_scale=1.0, num_inference_steps=6,
              output_type="latent")
    with torch.no_grad():
        theirs = pipe(latents=noise, **kw).images
        pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, preset="ddim")
        ours = pipe(latents=noise, **kw).images
    assert pipe.scheduler.config.flow_grid == "flow_euler"
    assert _rel(ours, theirs) < 1e-5


@pytest.mark.parametrize("guidance_embeds", [True, False])
@pytest.mark.parametrize("name", ["ddim", "unipc-3", "searched-like"])
def test_flux_pipeline_with_usf_scheduler(name, guidance_embeds):
    """FLUX: set_timesteps(sigmas=linspace(1, 1/N, N), mu=...), timestep/1000 to the transformer,
    packed latents, embedded guidance; DDIM = the pipeline's own FlowMatchEuler."""
    pipe = flux_pipeline(guidance_embeds=guidance_embeds)
    pe, pooled = _embeds(1)
    n = SEARCHED_LIKE.nfe if name == "searched-like" else 5
    noise = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(3))   # packed: 16 tokens × 16 channels
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pooled, num_inference_steps=n, height=64, width=64,
              guidance_scale=3.5, output_type="latent")
    if name == "ddim":
        with torch.no_grad():
            theirs = pipe(latents=noise, **kw).images
    sched = {"ddim": lambda c: USFScheduler.from_config(c, preset="ddim"),
             "unipc-3": lambda c: USFScheduler.from_config(c, preset="unipc", preset_options={"order": 3}),
             "searched-like": lambda c: USFScheduler.from_config(c, schedule=SEARCHED_LIKE)}[name](pipe.scheduler.config)
    pipe.scheduler = sched
    latents = sched.first_input(noise) if name == "searched-like" else noise
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a schedule ignores FLUX's sigmas / mu
        out = pipe(latents=latents, **kw).images
        ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
        model = wrap_transformer(pipe.transformer, pipe.scheduler.config,
                                 cond={"encoder_hidden_states": pe, "pooled_projections": pooled},
                                 guidance=3.5 if guidance_embeds else None, img_ids=ids,
                                 txt_ids=torch.zeros(6, 3), joint_attention_kwargs={})
        ref = usf_fast.sample(model, sched.active_schedule, noise)
    assert _rel(out, ref) < 1e-5
    if name == "ddim":
        mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
        want = usf_fast.presets.flow_shift(np.linspace(1.0, 1 / 5, 5), np.exp(mu))   # FLUX's sigmas, shifted
        np.testing.assert_allclose(sched.active_schedule.timesteps[1:], want[1:], rtol=1e-12)
        assert _rel(out, theirs) < 1e-5


@pytest.mark.parametrize("strength", [0.5, 0.8])
@pytest.mark.parametrize("flux", [False, True])
def test_flow_img2img_with_a_preset_equals_flow_match_euler_and_a_searched_schedule_runs(strength, flux):
    """img2img: set_begin_index + scale_noise; DDIM on the truncated grid = FlowMatchEuler; a
    searched schedule continues with Schedule.tail at the pipeline's own times."""
    pipe = flux_pipeline(img2img=True) if flux else sd3_pipeline(img2img=True)
    pe, pooled = _embeds(1)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pooled, image=image, strength=strength, num_inference_steps=6,
              output_type="latent", generator=torch.Generator().manual_seed(7))
    kw.update(dict(height=64, width=64, guidance_scale=3.5) if flux else dict(guidance_scale=1.0))
    with torch.no_grad():
        theirs = pipe(**kw).images
        pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, preset="ddim")
        kw["generator"] = torch.Generator().manual_seed(7)
        ours = pipe(**kw).images
    assert pipe.scheduler.begin_index == int(6 - 6 * strength) and not pipe.scheduler.active_schedule.afs
    assert _rel(ours, theirs) < 1e-5
    plain = SEARCHED_LIKE.replace(afs=False, timesteps=[NS.t_max, 0.85, 0.6, 0.35, 0.12, 0.03])
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=plain)
    kw.update(num_inference_steps=plain.nfe, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = pipe(**kw).images
    k = int(plain.nfe - plain.nfe * strength)
    assert pipe.scheduler.active_schedule == plain.tail(k) and torch.isfinite(out).all()


def test_one_prompt_row_is_broadcast_to_a_batch_of_samples():
    """A search runs many noise samples per prompt: one row of embeddings serves the whole batch."""
    pipe = sd3_pipeline()
    pe, pooled = _embeds(1)
    ne, npooled = _embeds(2)
    model = wrap_transformer(pipe.transformer, pipe.scheduler.config,
                             cond={"encoder_hidden_states": pe, "pooled_projections": pooled},
                             uncond={"encoder_hidden_states": ne, "pooled_projections": npooled}, guidance_scale=3.0)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    schedule = usf_fast.presets.unipc(NS, 4, spacing="flow_shift")
    with torch.no_grad():
        batch = usf_fast.sample(model, schedule, noise)
        one = torch.cat([usf_fast.sample(model, schedule, noise[i:i + 1]) for i in range(3)])
    assert _rel(batch, one) < 1e-5


def test_an_unknown_transformer_class_needs_its_timestep_scale():
    class MyTransformer(torch.nn.Module):
        def forward(self, hidden_states, timestep, return_dict=False, **kw):
            return (hidden_states * 0.5,)
    cfg = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    with pytest.raises(ValueError, match="pass timestep_scale="):
        wrap_transformer(MyTransformer(), cfg)
    model = wrap_transformer(MyTransformer(), cfg, timestep_scale=1000.0)
    assert model.prediction == "flow" and model.broadcast_cond
