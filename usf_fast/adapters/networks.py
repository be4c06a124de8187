"""Wrapping a diffusers pipeline's network as a `DiffusionModel` for `usf_fast.sample` and the search:
`wrap_unet` (VP and EDM UNets, SD 1.x/2.x and SDXL conditioning, learned-variance outputs) and
`wrap_transformer` (rectified-flow transformers: SD3, FLUX, Wan, Sana, ...). The noise schedule and
the network's time input come from the pipeline's scheduler config (`diffusers_config`)."""
from __future__ import annotations

import torch

from ..model import DiffusionModel
from ..noise_schedules import NoiseScheduleEDM
from .diffusers_config import (LEARNED_VARIANCE, PREDICTION, check_prediction, noise_schedule_from_diffusers_config,
                               read_source_config)
from .edm import edm_precond

__all__ = ["wrap_unet", "wrap_transformer", "SIGMA_TIMESTEP_TRANSFORMERS", "SCALED_TIMESTEP_TRANSFORMERS"]


def _run_unet(unet, x: torch.Tensor, t: torch.Tensor, learned: bool = False, **kwargs) -> torch.Tensor:
    """The UNet in its own dtype, the output in x's: the search's float64 reference solve (and a
    float32 sampler around a float16 UNet) then call it as they call any net. A learned-variance
    UNet's 2C output channels give their first C."""
    dtype = getattr(unet, "dtype", x.dtype)
    out = unet(x.to(dtype), t.float(), **kwargs).sample   # timesteps stay float32, as in diffusers
    if learned and out.shape[1] == 2 * x.shape[1]:
        out = out[:, :x.shape[1]]
    return out.to(x.dtype)


def wrap_unet(unet, scheduler_config, *, cond=None, uncond=None, guidance_scale: float | None = None) -> DiffusionModel:
    """A diffusers UNet plus its scheduler config as a `DiffusionModel` for `usf_fast.sample` and
    the search. With `cond` (text embeddings) the UNet gets `encoder_hidden_states`; a dict `cond`
    (SDXL) gives its "encoder_hidden_states" so and the rest as `added_cond_kwargs` (text_embeds,
    time_ids); with
    `guidance_scale`, `uncond` too (classifier-free guidance in one batched call). EDM configs
    (sigma_data) get diffusers' EDM preconditioning around the UNet."""
    cfg = read_source_config(scheduler_config)
    ns = noise_schedule_from_diffusers_config(cfg)
    ptype = cfg.get("prediction_type", "epsilon")
    edm = isinstance(ns, NoiseScheduleEDM)
    if ns.kind == "flow":
        raise ValueError("wrap_unet: a flow-matching config; flow networks (SD3/FLUX transformers) are wrapped by "
                         "usf_fast.adapters.diffusers.wrap_transformer")
    check_prediction(ptype, ns.kind)
    learned = cfg.get("variance_type") in LEARNED_VARIANCE   # 2C output channels: the first C are the prediction
    if cond is None:
        raw = lambda x, t: _run_unet(unet, x, t, learned=learned)  # noqa: E731
    elif isinstance(cond, dict):   # SDXL: encoder_hidden_states plus added_cond_kwargs (text_embeds, time_ids)
        if "encoder_hidden_states" not in cond:
            raise ValueError("wrap_unet: cond= as a dict needs 'encoder_hidden_states' (the rest goes to the UNet's "
                             f"added_cond_kwargs), got keys {sorted(cond)}")
        raw = lambda x, t, c: _run_unet(  # noqa: E731
            unet, x, t, learned=learned, encoder_hidden_states=c["encoder_hidden_states"],
            added_cond_kwargs={k: v for k, v in c.items() if k != "encoder_hidden_states"})
    else:
        raw = lambda x, t, c: _run_unet(unet, x, t, learned=learned, encoder_hidden_states=c)  # noqa: E731
    if not edm:
        model = DiffusionModel(raw, ns, PREDICTION[ptype], "discrete", guidance_scale=guidance_scale, cond=cond,
                               uncond=uncond)
    else:
        denoiser = edm_precond(raw, float(cfg.get("sigma_data", 0.5)), v_prediction=ptype == "v_prediction")
        model = DiffusionModel(denoiser, ns, "x0", "sigma", guidance_scale=guidance_scale, cond=cond, uncond=uncond)
    model.broadcast_cond = True   # prompt embeddings: P rows for any multiple of P samples
    return model


#: transformers whose pipelines hand them σ (the scheduler's timesteps / 1000), and those that get
#: the timesteps as they are (σ·1000); any other class needs an explicit timestep_scale
SIGMA_TIMESTEP_TRANSFORMERS = ("Flux", "Chroma", "QwenImage", "LongCat", "Ovis")
SCALED_TIMESTEP_TRANSFORMERS = ("SD3Transformer", "WanTransformer", "SanaTransformer", "CogView4", "HiDream")


def wrap_transformer(transformer, scheduler_config, *, cond: dict | None = None, uncond: dict | None = None,
                     guidance_scale: float | None = None, guidance: float | None = None,
                     timestep_scale: float | None = None, **call_kwargs) -> DiffusionModel:
    """A diffusers flow transformer (SD3, FLUX, Wan, Sana, ...) plus its flow scheduler config as a
    velocity `DiffusionModel` (prediction "flow", v = ε − x_0) for `usf_fast.sample` and the search.

    cond / uncond: the per-sample keyword arguments, as dicts of tensors with batch dimension B
        (SD3: encoder_hidden_states and pooled_projections; FLUX: encoder_hidden_states and
        pooled_projections), concatenated [uncond, cond] under `guidance_scale` (classifier-free
        guidance, SD3's and FLUX's true_cfg_scale) so the transformer runs once.
    guidance: FLUX-dev's embedded guidance (`guidance_embeds`), a float passed as the per-sample
        `guidance` tensor, as the FLUX pipeline does.
    timestep_scale: the transformer's `timestep` is σ·timestep_scale: by default 1 for the classes
        in `SIGMA_TIMESTEP_TRANSFORMERS` (FLUX and kin: their pipelines divide the timesteps by
        1000), num_train_timesteps for `SCALED_TIMESTEP_TRANSFORMERS` (SD3, Wan, Sana); any other
        class must give it.
    call_kwargs: passed unchanged on every call (FLUX: img_ids, txt_ids; joint_attention_kwargs).
    FLUX latents are the packed (B, tokens, channels) tensors the transformer takes.
    """
    cfg = read_source_config(scheduler_config)
    ns = noise_schedule_from_diffusers_config(cfg)
    if ns.kind != "flow":
        raise ValueError(f"wrap_transformer: scheduler_config is a {ns.kind} config, not a flow-matching one; "
                         "wrap UNets and other VP / EDM networks with wrap_unet")
    check_prediction(cfg.get("prediction_type", "flow_prediction"), "flow")
    for name, value in (("cond", cond), ("uncond", uncond)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"wrap_transformer: {name}= must be a dict of keyword tensors (e.g. "
                             "{'encoder_hidden_states': ..., 'pooled_projections': ...})")
    if timestep_scale is None:
        name = type(transformer).__name__
        if any(k in name for k in SIGMA_TIMESTEP_TRANSFORMERS):
            timestep_scale = 1.0
        elif any(k in name for k in SCALED_TIMESTEP_TRANSFORMERS):
            timestep_scale = float(cfg.get("num_train_timesteps", 1000))
            # Sana's pipeline multiplies by its transformer's own timestep_scale (1 but for Sana Sprint)
            timestep_scale *= float(getattr(getattr(transformer, "config", None), "timestep_scale", 1.0) or 1.0)
        else:
            raise ValueError(f"wrap_transformer: which timestep {name} takes is not known here; pass timestep_scale= "
                             "(1 if its pipeline divides the scheduler's timesteps by 1000, as FLUX's does; "
                             f"{cfg.get('num_train_timesteps', 1000)} if it passes them as they are, as SD3's does)")
    n_train = float(cfg.get("num_train_timesteps", 1000))
    dtype = getattr(transformer, "dtype", None)

    def net(x, t, c=None):
        d = dtype or x.dtype
        # the pipeline's timesteps are σ·1000 in float32; FLUX's pipeline then divides by 1000
        ts = (t.double() * n_train).float()
        ts = ts if timestep_scale == n_train else (ts.double() * (timestep_scale / n_train)).float()
        kwargs = dict(call_kwargs)
        if guidance is not None:
            kwargs["guidance"] = torch.full((x.shape[0],), float(guidance), dtype=torch.float32, device=x.device)
        for k, v in (c or {}).items():
            kwargs[k] = v.to(d) if torch.is_tensor(v) and v.is_floating_point() else v
        out = transformer(hidden_states=x.to(d), timestep=ts.to(x.device), return_dict=False, **kwargs)[0]
        return out.to(x.dtype)

    model = DiffusionModel(net, ns, "flow", "continuous", guidance_scale=guidance_scale, cond=cond, uncond=uncond)
    model.broadcast_cond = True   # prompt embeddings: P rows for any multiple of P samples
    return model
