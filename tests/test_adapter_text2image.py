"""USFScheduler inside a tiny, randomly initialised Stable Diffusion pipeline with classifier-free
guidance: the pipeline's latents equal usf_fast.sample on the wrapped UNet (guided, one batched
call), and a preset through our scheduler matches diffusers' own schedulers in the same pipeline."""
import pytest
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config, wrap_unet

GUIDANCE = 4.0
PROMPTS = ["a small red digit", "two blue circles"]


def _tokenizer():
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)


def _pipeline(prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16).eval()
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPE = _pipeline()
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
    pipe = _pipeline(prediction_type)
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
    pipe = _pipeline()
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
    pipe = _pipeline()
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
