"""The SDXL base -> refiner hand-off (denoising_end / denoising_start) with a tiny random SDXL:
the refiner starts part-way with set_begin_index. With one USFScheduler object for both it
continues the base's run, history included, and equals the full run; with separate objects it
starts fresh at the same times, within what diffusers' own DPM-Solver++ reaches."""
import pytest
import torch
from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)

from usf_fast.adapters.diffusers import USFScheduler

SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def _pipelines():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1), cross_attention_dim=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        sample_size=64, scaling_factor=0.13025, force_upcast=True)
    common = dict(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
                  scheduler=DPMSolverMultistepScheduler(**SDXL_SCHEDULER), force_zeros_for_empty_prompt=True,
                  add_watermarker=False)
    base = StableDiffusionXLPipeline(**common)
    refiner = StableDiffusionXLImg2ImgPipeline(**common, requires_aesthetics_score=False)
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
    return base, refiner


def _embeds():
    g = torch.Generator().manual_seed(1)
    return dict(prompt_embeds=torch.randn(1, 7, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                negative_prompt_embeds=torch.randn(1, 7, 32, generator=g),
                negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))


def _handoff(base, refiner, split=0.7):
    kw = dict(**_embeds(), num_inference_steps=10, guidance_scale=5.0, output_type="latent")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = base(latents=noise, **kw).images
        lat = base(latents=noise, denoising_end=split, **kw).images
        out = refiner(image=lat, denoising_start=split, **kw).images
    return float((out - full).norm() / full.norm())


@pytest.mark.parametrize("preset,opts", [("dpm_solver_pp", {"order": 2}), ("unipc", {"order": 3})])
def test_one_scheduler_object_continues_the_base_run_exactly(preset, opts):
    base, refiner = _pipelines()
    sched = USFScheduler.from_config(base.scheduler.config, preset=preset, preset_options=opts)
    base.scheduler = refiner.scheduler = sched
    assert _handoff(base, refiner) < 1e-6
    k = int((sched.timesteps >= 300).sum())   # the cut at (1 − 0.7)·1000 on this schedule's own times
    assert 0 < k < 10 and sched.begin_index == k and sched.step_index == 10


def test_separate_scheduler_objects_start_fresh_within_diffusers_own_gap():
    base, refiner = _pipelines()
    theirs = _handoff(base, refiner)   # diffusers' DPM-Solver++(2M): the refiner loses the history
    cfg = base.scheduler.config
    base.scheduler = USFScheduler.from_config(cfg, preset="dpm_solver_pp", preset_options={"order": 2})
    refiner.scheduler = USFScheduler.from_config(cfg, preset="dpm_solver_pp", preset_options={"order": 2})
    ours = _handoff(base, refiner)
    assert 0 < theirs < 1e-2 and ours <= 2 * theirs
    sched = refiner.scheduler
    assert sched.active_schedule.nfe == 10 - sched.begin_index and not sched.active_schedule.afs
