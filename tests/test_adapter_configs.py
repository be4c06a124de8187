"""USFScheduler.from_config accepts the config of every scheduler class diffusers pipelines ship,
with its defaults and with the values real pipelines use; the kind (VP, EDM, flow) is read from
values. (DPMSolverSDE and CosineDPMSolverMultistep need torchsde, which is not a dependency; their
configs are VP / EDM configs like the others.)"""
import inspect

import diffusers
import pytest

from usf_fast.adapters.diffusers import USFScheduler, config_kind

SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False,
            set_alpha_to_one=False, skip_prk_steps=True)
SDXL = dict(SD15, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False)
SD2V = dict(SD15, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=False)
VP_CLASSES = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "TCDScheduler",
              "SASolverScheduler"]


def _build(name, values):
    cls = getattr(diffusers, name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in values.items() if k in accepted})


@pytest.mark.parametrize("values", [{}, SD15, SDXL, SD2V], ids=["defaults", "sd15", "sdxl", "sd2-v"])
@pytest.mark.parametrize("name", VP_CLASSES)
def test_every_vp_scheduler_config_gives_a_working_vp_scheduler(name, values):
    src = _build(name, values)
    sched = USFScheduler.from_config(src.config)
    assert sched.kind == "vp" and config_kind(src.config) == "vp"
    want = src.config.get("prediction_type", "epsilon")
    assert sched.config.prediction_type == want
    sched.set_timesteps(5)
    assert len(sched.timesteps) == 5 and sched.noise_schedule.total_N == 1000


@pytest.mark.parametrize("name,values,kind", [
    ("EDMEulerScheduler", {}, "edm"), ("EDMDPMSolverMultistepScheduler", {}, "edm"),
    ("EDMEulerScheduler", {"sigma_data": 0.5, "sigma_max": 80.0, "prediction_type": "v_prediction"}, "edm"),
    ("FlowMatchEulerDiscreteScheduler", {}, "flow"), ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flow"),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}, "flow"),
    ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, "flow"),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": 5.0, "prediction_type": "flow_prediction"},
     "flow"),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
     "flow"),
])
def test_edm_and_flow_scheduler_configs(name, values, kind):
    src = _build(name, values)
    if name == "FlowMatchHeunDiscreteScheduler":
        # its live config has the same fields as FlowMapEulerDiscreteScheduler's (a flow-map model,
        # refused): only the scheduler itself or its saved config says which it is
        with pytest.raises(ValueError, match="FlowMapEulerDiscreteScheduler or FlowMatchHeunDiscreteScheduler"):
            USFScheduler.from_config(src.config)
        sched = USFScheduler.from_config(src)
    else:
        sched = USFScheduler.from_config(src.config)
    assert sched.kind == kind
    sched.set_timesteps(5, mu=0.7 if values.get("use_dynamic_shifting") else None)
    assert len(sched.timesteps) == 5


def test_the_source_sigma_spacing_carries_over():
    karras = _build("DPMSolverMultistepScheduler", dict(SD15, use_karras_sigmas=True))
    sched = USFScheduler.from_config(karras.config)
    sched.set_timesteps(6)
    assert sched.config.source_spacing == "karras" and sched.active_schedule.meta["options"]["spacing"] == "karras"
    sched.set_timesteps(timesteps=[999, 600, 300, 50])   # custom times: the source's spacing does not apply
    assert sched.active_schedule.nfe == 4
    expo = _build("DPMSolverMultistepScheduler", dict(SD15, use_exponential_sigmas=True))
    kept = USFScheduler.from_config(expo.config, preset_options={"order": 2, "spacing": "time_uniform"})
    kept.set_timesteps(5)
    assert kept.config.source_spacing == "logSNR" and kept.active_schedule.meta["options"]["spacing"] == "time_uniform"
    # FlowMatchEuler applies Karras σ even to the pipeline's own sigmas; USFScheduler has no Karras
    # grid on a flow schedule, so the option is refused by name (it used to be dropped silently)
    flow = _build("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True})
    with pytest.raises(ValueError, match="use_karras_sigmas=True: not supported by USFScheduler's flow mode"):
        USFScheduler.from_config(flow.config)
    with pytest.raises(ValueError, match="use_beta_sigmas=True: no usf_fast spacing matches it"):
        USFScheduler.from_config(diffusers.DPMSolverMultistepScheduler(use_beta_sigmas=True).config)
