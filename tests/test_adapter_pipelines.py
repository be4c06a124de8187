"""USFScheduler in the diffusers pipelines that start part-way or bring their own times: img2img
and inpainting (4- and 9-channel UNets) at strength 0.5 and 0.8 equal diffusers' DPM-Solver++ and
UniPC in the same pipeline on the same times; searched schedules continue with Schedule.tail;
custom timesteps= / sigmas=; stochastic options are refused."""
import numpy as np
import pytest
import torch
from diffusers import (DDIMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionInpaintPipeline, UNet2DConditionModel, UniPCMultistepScheduler)
from tiny_pipelines import PROMPTS, sd_pipeline, unet2d

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config

GUIDANCE = 4.0
BASE = sd_pipeline()
CFG = BASE.scheduler.config
NS = noise_schedule_from_diffusers_config(CFG)
IMAGE = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
MASK = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(12)) > 0.5).float()


def _make(kind):
    comps = dict(BASE.components)
    if kind == "img2img":
        pipe = StableDiffusionImg2ImgPipeline(**comps)
    else:
        if kind == "inpaint9":
            torch.manual_seed(1)
            comps["unet"] = UNet2DConditionModel(
                sample_size=8, in_channels=9, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
        pipe = StableDiffusionInpaintPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, kind, strength, **kw):
    extra = {} if kind == "img2img" else {"mask_image": MASK, "height": 16, "width": 16}
    with torch.no_grad():
        return pipe(PROMPTS, image=IMAGE, strength=strength, guidance_scale=GUIDANCE, output_type="latent",
                    generator=torch.Generator().manual_seed(3), **extra, **kw).images


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


THEIRS = {"dpm": lambda: DPMSolverMultistepScheduler.from_config(CFG, solver_order=2),
          "unipc": lambda: UniPCMultistepScheduler.from_config(CFG, solver_order=2)}
OURS = {"dpm": ("dpm_solver_pp", {"order": 2}), "unipc": ("unipc", {"order": 2, "variant": "bh2"})}


@pytest.mark.parametrize("which", ["dpm", "unipc"])
@pytest.mark.parametrize("strength", [0.5, 0.8])
@pytest.mark.parametrize("kind", ["img2img", "inpaint4", "inpaint9"])
def test_a_preset_started_part_way_equals_diffusers_in_the_same_pipeline(kind, strength, which):
    pipe = _make(kind)
    pipe.scheduler = THEIRS[which]()
    theirs = _run(pipe, kind, strength, num_inference_steps=8)
    grid = [int(t) for t in pipe.scheduler.timesteps]
    name, opts = OURS[which]
    pipe.scheduler = USFScheduler.from_config(CFG, preset=name, preset_options=opts)
    ours = _run(pipe, kind, strength, timesteps=grid)   # the same times, through the pipeline's timesteps=
    sched = pipe.scheduler
    assert sched.begin_index == 8 - int(8 * strength) and sched.step_index == 8
    assert _rel(ours, theirs) <= 1e-5


@pytest.mark.parametrize("kind", ["img2img", "inpaint4"])
def test_a_searched_schedule_started_part_way_runs_its_tail(kind):
    """The documented rule: from the k-th evaluation on, the schedule's own steps at its own
    times, history cleared (Schedule.tail)."""
    schedule = usf_fast.Schedule(
        [1.0, 0.55, 0.3, 0.1, 0.01],
        [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
         usf_fast.Step(order=3, relax="linear", relax_coef=0.4), usf_fast.Step(order=2)], afs=False,
        meta={"noise_schedule": NS.fingerprint()})
    pipe = _make(kind)
    pipe.scheduler = USFScheduler.from_config(CFG, schedule=schedule)
    out = _run(pipe, kind, 0.5, num_inference_steps=schedule.nfe)
    k = schedule.nfe - int(schedule.nfe * 0.5)
    assert pipe.scheduler.active_schedule == schedule.tail(k)
    assert pipe.scheduler.active_schedule.timesteps == schedule.timesteps[k:] and torch.isfinite(out).all()
    if kind == "img2img":   # the same as usf_fast.sample of the tail from the pipeline's noised image
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
            model = usf_fast.adapters.diffusers.wrap_unet(pipe.unet, CFG, cond=cond, uncond=uncond,
                                                          guidance_scale=GUIDANCE)
            g = torch.Generator().manual_seed(3)
            init = pipe.vae.encode(pipe.image_processor.preprocess(IMAGE)).latent_dist.sample(g)
            init = init * pipe.vae.config.scaling_factor
            noise = torch.randn(init.shape, generator=g)
            t = schedule.timesteps[k]
            start = float(NS.marginal_alpha(t)) * init + float(NS.marginal_std(t)) * noise
            ref = usf_fast.sample(model, schedule.tail(k), start, backend="reference")
        assert _rel(out, ref) <= 1e-5


def test_custom_timesteps_and_sigmas_run_the_preset_on_those_times():
    sched = USFScheduler.from_config(CFG, preset="dpm_solver_pp", preset_options={"order": 2})
    sched.set_timesteps(timesteps=[999, 700, 400, 100])
    np.testing.assert_allclose(sched.timesteps.numpy(), [999, 700, 400, 100], rtol=1e-6)
    assert sched.active_schedule.denoise_to_zero and sched.active_schedule.nfe == 4
    theirs = DPMSolverMultistepScheduler.from_config(CFG, use_karras_sigmas=True)
    theirs.set_timesteps(6)
    sigmas = theirs.sigmas[:-1].tolist()
    sched.set_timesteps(sigmas=sigmas)
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), sigmas, rtol=1e-5)
    searched = USFScheduler.from_config(CFG, schedule=usf_fast.presets.unipc(NS, 5))
    with pytest.raises(ValueError, match="custom timesteps= with a configured .searched. schedule"):
        searched.set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sched.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match="timesteps= or sigmas=, not both"):
        sched.set_timesteps(timesteps=[999, 500], sigmas=[10.0, 1.0])


def test_stochastic_options_are_refused_and_generator_is_accepted():
    sched = USFScheduler.from_config(DDPMScheduler().config, preset="ddim")
    sched.set_timesteps(3)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="eta=1.0: USFScheduler is a deterministic ODE sampler"):
        sched.step(x, sched.timesteps[0], x, eta=1.0)
    with pytest.raises(ValueError, match="s_churn=0.5: not supported"):
        sched.step(x, sched.timesteps[0], x, s_churn=0.5)
    sched.step(x, sched.timesteps[0], x, generator=torch.Generator())   # DDPM / DDIM pipelines always pass one
    assert sched.step_index == 1


def test_ddim_pipeline_runs_presets_and_refuses_afs_clearly():
    unet = unet2d()
    cfg = DDPMScheduler().config
    pipe = DDIMPipeline(unet=unet, scheduler=DDPMScheduler())   # it converts its scheduler to DDIM: set ours after
    pipe.scheduler = USFScheduler.from_config(cfg, preset="unipc")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
    assert np.isfinite(out.images).all()
    pipe.scheduler = USFScheduler.from_config(cfg, preset="unipc", preset_options={"afs": True})
    with pytest.raises(ValueError, match="did not call scale_model_input.*first_input"), torch.no_grad():
        pipe(batch_size=1, num_inference_steps=4, output_type="np")


def test_an_abandoned_part_way_run_leaves_no_trace_in_the_next_one():
    """set_begin_index's restore of a stopped run is undone by the next set_timesteps."""
    cfg = DDPMScheduler().config
    sched = USFScheduler.from_config(cfg, preset="unipc", preset_options={"afs": True})
    model = usf_fast.models.embedded_model("gmm-image")
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))

    def loop(k_stop=None):
        sched.set_timesteps(5)
        y = x * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            if k_stop is not None and i == k_stop:
                return y
            inp = sched.scale_model_input(y, t)
            tt = ((t.double() + 1) / 1000).expand(y.shape[0])
            y = sched.step(model.net(inp.double(), tt).float(), t, y).prev_sample
        return y
    clean = loop()
    loop(k_stop=2)
    sched.set_timesteps(5)
    sched.set_begin_index(2)   # a refiner that is then abandoned (an exception, an interrupt)
    again = loop()
    torch.testing.assert_close(again, clean, rtol=0, atol=0)


def test_img2img_at_the_last_evaluation_runs_the_final_jump_alone():
    """strength so low that only the jump to σ = 0 is left: one evaluation, then x̂0 (as diffusers)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    cfg = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    ours = USFScheduler.from_config(cfg, preset="dpm_solver_pp", preset_options={"order": 2})
    theirs = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = []
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(9)
        t = s.timesteps[9:10]
        lat = s.scale_noise(x0, t, noise)
        outs.append(s.step(v, t[0], lat).prev_sample)
    assert ours.active_schedule is not None and ours.step_index == 10
    torch.testing.assert_close(outs[0], outs[1].to(outs[0].dtype), rtol=1e-5, atol=1e-6)
