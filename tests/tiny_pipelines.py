"""Tiny, randomly initialised diffusers pipelines built from configs (offline, seconds on a CPU),
shared by the adapter and CLI tests: Stable Diffusion (text encoder and tokenizer included), SDXL
base + refiner, SD3 and FLUX (prompt embeddings instead of text encoders), and a bare UNet2DModel."""
import torch
import transformers
from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       FluxImg2ImgPipeline, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel,
                       StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel, UNet2DModel)

PROMPTS = ["a small red digit", "two blue circles"]


def tokenizer():
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)


def sd_pipeline(prediction_type: str = "epsilon") -> StableDiffusionPipeline:
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
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def sdxl_pipelines():
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


def unet2d():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8).eval()



def flow_vae(shift_factor, scaling_factor):
    torch.manual_seed(0)
    return AutoencoderKL(shift_factor=shift_factor, scaling_factor=scaling_factor, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=1, sample_size=64, use_quant_conv=False,
                         use_post_quant_conv=False)


def sd3_pipeline(img2img=False):
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                               pooled_projection_dim=32, out_channels=4).eval()
    cls = StableDiffusion3Img2ImgPipeline if img2img else StableDiffusion3Pipeline
    pipe = cls(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=flow_vae(0.0609, 1.5035) if img2img else None,
               text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
               tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(img2img=False, guidance_embeds=True):
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds).eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    cls = FluxImg2ImgPipeline if img2img else FluxPipeline
    pipe = cls(transformer=tr, scheduler=sched, vae=flow_vae(0.1159, 0.3611) if img2img else None, text_encoder=None, tokenizer=None,
               text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_text(hidden, projection_dim=None):
    cfg = transformers.CLIPTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=32, num_attention_heads=2,
                                      num_hidden_layers=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1, **({"projection_dim": projection_dim} if projection_dim else {}))
    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(cfg) if projection_dim else transformers.CLIPTextModel(cfg)
    return model.eval()


def sdxl_text_pipeline() -> StableDiffusionXLPipeline:
    """The tiny SDXL base with its two text encoders (CLIP, CLIP with projection) and tokenizers."""
    base, _ = sdxl_pipelines()
    pipe = StableDiffusionXLPipeline(vae=base.vae, unet=base.unet, scheduler=base.scheduler, text_encoder=_clip_text(16),
                                     text_encoder_2=_clip_text(16, 32), tokenizer=tokenizer(), tokenizer_2=tokenizer(),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_text_pipeline() -> FluxPipeline:
    """The tiny FLUX-dev (embedded guidance) with a VAE, a CLIP and a T5 encoder (the tiny CLIP
    tokenizer stands in for T5's: the pipeline only calls it)."""
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=[4, 4, 8], guidance_embeds=True).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                                           num_heads=2)).eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=flow_vae(0.1159, 0.3611), text_encoder=_clip_text(32),
                        tokenizer=tokenizer(), text_encoder_2=t5, tokenizer_2=tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe
