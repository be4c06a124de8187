"""A saved diffusers pipeline as a searchable model, and generation with a schedule in it: what
`usf-fast search --model diffusers:DIR` and `usf-fast generate` run.

    pipe = load_pipeline("path/to/pipeline", device="cuda")
    pm = pipeline_model(pipe, prompts=["a red fox", "a lighthouse"], guidance=7.5, max_batch=64)
    result = s3_search(pm.model, nfe=5, shape=pm.shape, device="cuda")
    images = generate(pipe, result.best, prompts=["a red fox"], guidance=7.5)

Supported: unconditional UNet pipelines (DDPM, DDIM, ...), text-to-image UNet pipelines whose
`encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance)` returns the
text embeddings (Stable Diffusion 1.x / 2.x), SDXL (`StableDiffusionXLPipeline`: both text
encoders, the pooled embedding and the size micro-conditioning `time_ids` as the pipeline builds
them), SD3 (`StableDiffusion3Pipeline`) and FLUX (`FluxPipeline`: packed latents, `img_ids` /
`txt_ids`, FLUX-dev's embedded guidance). Prompts are encoded once; sample r of a batch uses prompt
r mod P. Latents are the pipeline's (C, H/f, W/f) with f its VAE scale factor; FLUX's are packed,
(H/2f · W/2f, 4C).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..model import DiffusionModel, map_cond
from ..schedule import Schedule
from .diffusers import USFScheduler
from .networks import wrap_transformer, wrap_unet

__all__ = ["load_pipeline", "pipeline_model", "PipelineModel", "generate", "generate_preset", "latent_shape",
           "read_prompts", "ParameterError"]


class ParameterError(ValueError):
    """Bad input to one of this module's functions, naming the parameter (`name=value: why`); the
    command line translates the parameter into its flag (`for_flags`)."""

    _NO_VALUE = object()

    def __init__(self, param: str, why: str, value=_NO_VALUE):
        self.param, self.why, self.value = param, why, value
        shown = "" if value is self._NO_VALUE else f"={value!r}"
        super().__init__(f"{param}{shown}: {why}")

    def for_flags(self, flags: dict[str, str]) -> str:
        """The message with the parameter as its flag: flags maps a parameter to a format string
        such as "--max-batch {}" or "--model diffusers:{}"."""
        fmt = flags.get(self.param)
        if fmt is None:
            return str(self)
        head = fmt.format("" if self.value is self._NO_VALUE else self.value).rstrip()
        return f"{head}: {self.why}"


def load_pipeline(path: str, device="cpu", dtype: torch.dtype | None = None):
    """A pipeline saved with `save_pretrained` (a folder with model_index.json), offline."""
    if not os.path.isdir(path):
        raise ParameterError("path", "not a folder (a pipeline saved with save_pretrained)", path)
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ParameterError("path", "no model_index.json there; not a saved diffusers pipeline", path)
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()   # one line per outcome on the terminal, not loading bars
    try:
        from transformers.utils import logging as tlogging
        tlogging.set_verbosity_error()
        tlogging.disable_progress_bar()
    except ImportError:
        pass
    try:
        kw = {"torch_dtype": dtype} if dtype is not None else {}
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **kw)
    except Exception as e:   # diffusers raises many kinds for a broken folder
        raise ParameterError("path", f"cannot load the pipeline ({type(e).__name__}: {e})", path) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise ParameterError("path", "not a UTF-8 text file (one prompt per line)", path) from None
    except IsADirectoryError:
        raise ParameterError("path", "is a folder, not a text file", path) from None
    if not prompts:
        raise ParameterError("path", "no prompts in it (one prompt per line)", path)
    return prompts


@dataclass
class PipelineModel:
    model: DiffusionModel
    shape: tuple          # per-sample latent shape
    kind: str             # "unconditional" | "text" | "sdxl" | "sd3" | "flux"
    prompts: list | None
    guidance: float | None = None   # the guidance the network runs with (FLUX-dev: the pipeline's 3.5 if none given)


#: FluxPipeline's default guidance_scale (FLUX-dev's embedded guidance)
FLUX_GUIDANCE = 3.5


def _network(pipe):
    for name in ("unet", "transformer"):
        net = getattr(pipe, name, None)
        if net is not None:
            return name, net
    raise ValueError(f"{type(pipe).__name__}: has neither a unet nor a transformer to search on")


def _kind(pipe) -> str:
    name, _ = _network(pipe)
    cls = type(pipe).__name__
    if name == "transformer":
        if cls.startswith("StableDiffusion3"):
            return "sd3"
        if cls == "FluxPipeline":
            return "flux"
        raise ValueError(f"{cls}: searching this transformer pipeline from the CLI is not supported (SD3 and FLUX "
                         "are); wrap its transformer with usf_fast.adapters.diffusers.wrap_transformer in Python")
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
        return "unconditional"
    if cls == "StableDiffusionXLPipeline":
        return "sdxl"
    if getattr(pipe, "text_encoder_2", None) is not None or "XL" in cls:
        raise ValueError(f"{cls}: from the CLI only StableDiffusionXLPipeline of the SDXL family is supported; "
                         "wrap its UNet with usf_fast.adapters.diffusers.wrap_unet in Python")
    return "text"


def _vae_factor(pipe) -> int:
    return int(getattr(pipe, "vae_scale_factor", 1) or 1) if getattr(pipe, "vae", None) is not None else 1


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels: as given, or the pipeline's default; checked against its VAE factor
    (FLUX: twice it, for the 2×2 packing)."""
    _, net = _network(pipe)
    cfg = net.config
    f = _vae_factor(pipe)
    kind = _kind(pipe)
    if kind == "flux":
        size = int(getattr(pipe, "default_sample_size", 128)) * f
        f = 2 * f
    else:
        size = cfg.sample_size * f if isinstance(cfg.sample_size, int) else cfg.sample_size[0] * f
    h, w = height or size, width or size
    for name, v in (("height", h), ("width", w)):
        if not isinstance(v, int) or v < f or v % f:
            raise ParameterError(name, f"must be a positive multiple of {f} (the pipeline's VAE factor"
                                 f"{', twice for the 2×2 packing' if kind == 'flux' else ''})", v)
    return h, w


def latent_shape(pipe, height: int | None = None, width: int | None = None) -> tuple:
    _, net = _network(pipe)
    h, w = image_size(pipe, height, width)
    f = _vae_factor(pipe)
    if _kind(pipe) == "flux":   # packed 2×2 patches: (tokens, 4·C) = (h/2f · w/2f, in_channels)
        return ((h // (2 * f)) * (w // (2 * f)), net.config.in_channels)
    return (net.config.in_channels, h // f, w // f)


def pipeline_model(pipe, prompts: list[str] | None = None, guidance: float | None = None,
                   height: int | None = None, width: int | None = None, max_batch: int | None = None) -> PipelineModel:
    """The pipeline's network as a `DiffusionModel` on its latents: prompts encoded once (with
    guidance > 1 the empty prompt as the unconditional one), `max_batch` rows per network call."""
    kind = _kind(pipe)
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ParameterError("max_batch", "must be a positive integer (rows per network call)", max_batch)
    if guidance is not None and not guidance > 0:
        raise ParameterError("guidance", "must be > 0", guidance)
    shape = latent_shape(pipe, height, width)
    if kind == "unconditional":
        if prompts:
            raise ParameterError("prompts", f"{type(pipe).__name__} is unconditional (no text encoder)")
        model = wrap_unet(pipe.unet, pipe.scheduler.config)
    else:
        if not prompts:
            raise ParameterError("prompts", f"{type(pipe).__name__} is a text-to-image pipeline; give prompts")
        cfg_on = guidance is not None and guidance > 1
        device = pipe._execution_device
        with torch.no_grad():
            if kind == "text":
                cond, uncond = pipe.encode_prompt(prompts, device, 1, cfg_on, negative_prompt=[""] * len(prompts))
                model = wrap_unet(pipe.unet, pipe.scheduler.config, cond=cond,
                                  **({"uncond": uncond, "guidance_scale": float(guidance)} if cfg_on else {}))
            elif kind == "sdxl":
                model = _sdxl_model(pipe, prompts, guidance if cfg_on else None, image_size(pipe, height, width))
            elif kind == "flux":
                model, guidance = _flux_model(pipe, prompts, guidance, image_size(pipe, height, width))
            else:
                pe, ne, pooled, npooled = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                             do_classifier_free_guidance=cfg_on,
                                                             negative_prompt=[""] * len(prompts))
                model = wrap_transformer(
                    pipe.transformer, pipe.scheduler.config,
                    cond={"encoder_hidden_states": pe, "pooled_projections": pooled},
                    **({"uncond": {"encoder_hidden_states": ne, "pooled_projections": npooled},
                        "guidance_scale": float(guidance)} if cfg_on else {}))
    if max_batch is not None:
        model.net = _micro_batched(model.net, max_batch)
    model.sample_shape = shape
    return PipelineModel(model, shape, kind, prompts, guidance)


def _sdxl_model(pipe, prompts, guidance, size) -> DiffusionModel:
    """SDXL's UNet with what StableDiffusionXLPipeline hands it: the two encoders' hidden states,
    the pooled embedding and the size micro-conditioning (original = target = the image size, crop
    (0, 0)); the negative prompt as the pipeline's default (zeros with force_zeros_for_empty_prompt)."""
    device = pipe._execution_device
    pe, npe, pooled, npooled = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=guidance is not None)
    proj = (pipe.text_encoder_2.config.projection_dim if getattr(pipe, "text_encoder_2", None) is not None
            else int(pooled.shape[-1]))
    time_ids = pipe._get_add_time_ids(tuple(size), (0, 0), tuple(size), dtype=pe.dtype,
                                      text_encoder_projection_dim=proj).to(device).repeat(len(prompts), 1)
    cond = {"encoder_hidden_states": pe, "text_embeds": pooled, "time_ids": time_ids}
    if guidance is None:
        return wrap_unet(pipe.unet, pipe.scheduler.config, cond=cond)
    uncond = {"encoder_hidden_states": npe, "text_embeds": npooled, "time_ids": time_ids}
    return wrap_unet(pipe.unet, pipe.scheduler.config, cond=cond, uncond=uncond, guidance_scale=float(guidance))


def _flux_model(pipe, prompts, guidance, size) -> tuple[DiffusionModel, float | None]:
    """FLUX's transformer as FluxPipeline runs it: T5 and CLIP-pooled prompt embeddings, the packed
    latents' `img_ids` and the text's `txt_ids`, and FLUX-dev's embedded guidance (the pipeline's
    3.5 unless given; FLUX-schnell has none, so a guidance there is refused)."""
    device = pipe._execution_device
    embeds = bool(getattr(pipe.transformer.config, "guidance_embeds", False))
    if not embeds and guidance == 1.0:
        guidance = None   # no guidance
    if not embeds and guidance is not None:
        raise ParameterError("guidance", "this FLUX transformer has no guidance embedding (FLUX-schnell); give none",
                             guidance)
    guidance = (FLUX_GUIDANCE if guidance is None else float(guidance)) if embeds else None
    pe, pooled, txt_ids = pipe.encode_prompt(prompts, prompts, device=device, num_images_per_prompt=1)
    f = _vae_factor(pipe)
    h, w = size[0] // (2 * f), size[1] // (2 * f)
    img_ids = pipe._prepare_latent_image_ids(1, h, w, device, pe.dtype)
    model = wrap_transformer(pipe.transformer, pipe.scheduler.config,
                             cond={"encoder_hidden_states": pe, "pooled_projections": pooled},
                             guidance=guidance, img_ids=img_ids, txt_ids=txt_ids)
    return model, guidance


def _micro_batched(net, max_batch: int):
    """net(x, t[, cond]) in slices of at most max_batch rows (cond sliced alike)."""
    def run(x, t, *cond):
        if x.shape[0] <= max_batch:
            return net(x, t, *cond)
        outs = []
        for i in range(0, x.shape[0], max_batch):
            sl = slice(i, i + max_batch)
            outs.append(net(x[sl], t[sl], *(_slice(c, sl, x.shape[0]) for c in cond)))
        return torch.cat(outs)
    return run


def _slice(cond, sl, b):
    """Rows `sl` of every conditioning tensor with one row per sample of the batch of b."""
    return map_cond(cond, lambda t: t[sl] if t.dim() >= 1 and t.shape[0] == b else t)


def generate(pipe, schedule: Schedule, prompts: list[str] | None = None, guidance: float | None = None,
             num_images: int = 1, seed: int = 0, height: int | None = None, width: int | None = None,
             output_type: str = "pil"):
    """Images from the pipeline with `schedule` in a USFScheduler, on noise drawn from `seed`
    (prompt i mod P for image i); the pipeline's own scheduler is put back afterwards."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule: must be a usf_fast.Schedule, got {type(schedule).__name__}")
    sched = USFScheduler.from_config(pipe.scheduler.config, schedule=schedule)
    return _run(pipe, sched, schedule.nfe, prompts, guidance, num_images, seed, height, width, output_type)


def generate_preset(pipe, preset: str, nfe: int, prompts=None, guidance=None, num_images: int = 1, seed: int = 0,
                    height=None, width=None, output_type: str = "pil"):
    """The same noise through a preset at NFE `nfe` (for a side-by-side comparison)."""
    sched = USFScheduler.from_config(pipe.scheduler.config, preset=preset)
    return _run(pipe, sched, nfe, prompts, guidance, num_images, seed, height, width, output_type)


def _run(pipe, sched, nfe, prompts, guidance, num_images, seed, height, width, output_type):
    kind = _kind(pipe)
    if not isinstance(num_images, int) or num_images < 1:
        raise ParameterError("num_images", "must be a positive integer", num_images)
    original = pipe.scheduler
    pipe.scheduler = sched
    try:
        shape = latent_shape(pipe, height, width)
        g = torch.Generator().manual_seed(seed)
        if kind == "unconditional":
            if sched.schedule is not None and sched.schedule.afs:
                raise ParameterError("schedule", f"{type(pipe).__name__} has no latents= argument, so an AFS schedule "
                                     "cannot get its first input there; use a schedule without the analytical first "
                                     "step (afs=False), or run it with usf_fast.sample")
            with torch.no_grad():
                return pipe(batch_size=num_images, num_inference_steps=nfe, generator=g, output_type=output_type).images
        if not prompts:
            raise ParameterError("prompts", f"{type(pipe).__name__} is a text-to-image pipeline; give a prompt")
        noise = torch.randn(num_images, *shape, generator=g).to(pipe._execution_device)
        # SD3 and FLUX never call scale_model_input: an AFS schedule gets its first input as the latents
        latents = sched.first_input(noise) if kind in ("sd3", "flux") and sched.schedule is not None else noise
        prompt = [prompts[i % len(prompts)] for i in range(num_images)]
        h, w = image_size(pipe, height, width)
        kw = dict(prompt=prompt, num_inference_steps=nfe, latents=latents, output_type=output_type, height=h, width=w)
        if kind == "flux" and not getattr(pipe.transformer.config, "guidance_embeds", False) and guidance == 1.0:
            guidance = None   # "no guidance" (what generate passes for a schedule searched without one)
        if kind == "flux" and guidance is not None and not getattr(pipe.transformer.config, "guidance_embeds", False):
            raise ParameterError("guidance", "this FLUX transformer has no guidance embedding (FLUX-schnell); give "
                                 "none", guidance)
        if guidance is not None:
            kw["guidance_scale"] = guidance
        with torch.no_grad():
            return pipe(**kw).images
    finally:
        pipe.scheduler = original
