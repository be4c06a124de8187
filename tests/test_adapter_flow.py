"""USFScheduler on flow-matching configs (FlowMatchEuler, DPM-Solver / UniPC flow modes): the kind
read from the config, the shifted grids (static shift, FLUX's dynamic mu, the pipeline's sigmas),
σ·1000 timesteps, and clear errors where a pipeline and a scheduler do not match."""
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, config_kind, wrap_unet
from usf_fast.models import gmm_image

NS = usf_fast.NoiseScheduleFlow()
MODEL = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS, "flow")
EULER = FlowMatchEulerDiscreteScheduler(shift=3.0).config


def _f32_time(t: torch.Tensor) -> torch.Tensor:
    """σ as the pipeline hands it to the net: σ·1000 in a float32 tensor."""
    return (t * 1000).float().double() / 1000


PIPELINE_MODEL = usf_fast.DiffusionModel(lambda x, t: MODEL.net(x, _f32_time(t).to(x)), NS, prediction="flow")


def _loop(sched, noise):
    """The loop of a flow pipeline: timesteps σ·1000 to the net, `step` for the rest."""
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        sigma = torch.as_tensor(t, dtype=x.dtype).reshape(1).expand(x.shape[0]) / 1000
        x = sched.step(MODEL.net(sched.scale_model_input(x, t), sigma), t, x).prev_sample
    return x


def _noise():
    return torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def test_the_kind_is_read_from_the_values_of_any_scheduler_config():
    assert config_kind(EULER) == "flow"
    assert config_kind(DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction").config) == "flow"
    assert config_kind(DPMSolverMultistepScheduler().config) == "vp"     # has use_dynamic_shifting=False
    sched = USFScheduler.from_config(DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0,
                                                                 prediction_type="flow_prediction").config)
    assert sched.kind == "flow" and sched.config.shift == 5.0 and sched.noise_schedule == NS


SEARCHED_LIKE = usf_fast.Schedule([NS.t_max, 0.8, 0.55, 0.3, 0.1, 0.02],
                                  [usf_fast.Step(order=1, corrector="pseudo"), usf_fast.Step(order=2, prediction="noise"),
                                   usf_fast.Step(order=3, corrector="pseudo", relax="linear", relax_coef=0.3),
                                   usf_fast.Step(order=2), usf_fast.Step(order=1)], afs=True)


@pytest.mark.parametrize("make", [
    lambda: USFScheduler.from_config(EULER, preset="unipc", preset_options={"order": 3}),
    lambda: USFScheduler.from_config(EULER, preset="dpm_solver_pp", preset_options={"order": 2, "afs": True}),
    lambda: USFScheduler.from_config(EULER, schedule=SEARCHED_LIKE),
], ids=["unipc-3", "dpm++2m-afs", "searched-like"])
def test_the_pipeline_loop_is_usf_sample_on_the_same_noise(make):
    sched = make()
    sched.set_timesteps(sched.schedule.nfe if sched.schedule is not None else 5)
    np.testing.assert_allclose(sched.timesteps.numpy(), np.array(sched._times) * 1000, rtol=1e-6)   # σ·1000
    ref = usf_fast.sample(PIPELINE_MODEL, sched._active, _noise(), backend="reference")
    out = _loop(sched, _noise())
    assert float((out - ref).norm() / ref.norm()) < 1e-10


def test_ddim_on_the_flux_sigmas_and_mu_is_flow_match_euler_with_dynamic_shifting():
    """FLUX's pipeline: set_timesteps(sigmas=linspace(1, 1/N, N), mu=...) through retrieve_timesteps."""
    cfg = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    # FLUX starts at σ = 1, where the mixture's velocity divides by α = 0; ours clips it to t_max
    first = USFScheduler.from_config(cfg, preset="ddim")
    retrieve_timesteps(first, 6, "cpu", sigmas=np.linspace(1.0, 1 / 6, 6), mu=0.9)
    assert first._active.timesteps[0] == NS.t_max
    sigmas, mu = np.linspace(0.98, 1 / 6, 6), 0.9
    theirs = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    retrieve_timesteps(theirs, 6, "cpu", sigmas=sigmas, mu=mu)
    ours = USFScheduler.from_config(cfg, preset="ddim")
    timesteps, n = retrieve_timesteps(ours, 6, "cpu", sigmas=sigmas, mu=mu)
    assert n == 6 and ours._active.nfe == 6 and ours._active.denoise_to_zero
    torch.testing.assert_close(timesteps[1:], theirs.timesteps[1:], rtol=1e-6, atol=1e-3)
    x = _noise().float()
    for i, t in enumerate(theirs.timesteps):
        x = theirs.step(MODEL.net(x.double(), theirs.sigmas[i].double().expand(3)).float(), t, x).prev_sample
    out = _loop(ours, _noise())
    assert float((out - x.double()).norm() / out.norm()) < 1e-5


@pytest.mark.parametrize("call,match", [
    (lambda s: s.set_timesteps(5, mu=0.5), "mu= is a flow-matching pipeline's; this USFScheduler has a vp config"),
    (lambda s: s.set_timesteps(sigmas=np.linspace(1, 0.25, 4), mu=0.5), "mu= is a flow-matching pipeline's"),
    (lambda s: s.set_timesteps(5, timesteps=[999, 500]), "2 timesteps for num_inference_steps=5"),
])
def test_a_vp_scheduler_handed_flow_arguments_is_a_clear_error(call, match):
    from diffusers import DDPMScheduler
    with pytest.raises(ValueError, match=match):
        call(USFScheduler.from_config(DDPMScheduler().config))


def test_flow_errors_name_what_is_wrong():
    dyn = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    with pytest.raises(ValueError, match="dynamic shifting .* needs mu="):
        USFScheduler.from_config(dyn).set_timesteps(5)
    with pytest.raises(ValueError, match="prediction_type='epsilon': must be one of flow_prediction"):
        USFScheduler.from_config(EULER, prediction_type="epsilon")
    with pytest.raises(ValueError, match="shift_terminal=0.1: not supported"):
        config_kind(FlowMatchEulerDiscreteScheduler(shift_terminal=0.1).config)
    with pytest.raises(ValueError, match="wrap_unet: a flow-matching config"):
        wrap_unet(lambda x, t: x, EULER)
    with pytest.warns(RuntimeWarning, match="the configured schedule runs at its own times"):
        USFScheduler.from_config(dyn, schedule=SEARCHED_LIKE).set_timesteps(SEARCHED_LIKE.nfe, mu=0.5)


def test_an_afs_schedule_in_a_pipeline_that_skips_scale_model_input_is_a_clear_error():
    """diffusers' flow pipelines (and DDPM/DDIM) never call scale_model_input: without it the net's
    first input would be the raw noise instead of the AFS step's state."""
    sched = USFScheduler.from_config(EULER, schedule=SEARCHED_LIKE)
    sched.set_timesteps(SEARCHED_LIKE.nfe)
    x, t = _noise(), sched.timesteps[0]
    with pytest.raises(ValueError, match="did not call scale_model_input .* afs=False"):
        sched.step(MODEL.net(x, torch.full((3,), float(t) / 1000, dtype=x.dtype)), t, x)
    plain = USFScheduler.from_config(EULER, preset="unipc")   # no AFS: the loop needs no scale_model_input
    plain.set_timesteps(5)
    x = _noise()
    for t in plain.timesteps:
        x = plain.step(MODEL.net(x, torch.full((3,), float(t) / 1000, dtype=x.dtype)), t, x).prev_sample
    ref = usf_fast.sample(PIPELINE_MODEL, plain._active, _noise(), backend="reference")
    assert plain._active.denoise_to_zero and float((x - ref).norm() / ref.norm()) < 1e-10


def test_flow_configs_keep_their_own_prediction_type_and_options_cannot_clash_with_sigmas():
    eps_flow = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="epsilon").config
    with pytest.raises(ValueError, match="prediction_type='epsilon': must be one of flow_prediction"):
        USFScheduler.from_config(eps_flow)
    sched = USFScheduler.from_config(EULER, preset="unipc", preset_options={"afs": True})
    with pytest.raises(ValueError, match=r"preset_options \[.afs.\]: the pipeline.s grid is multistep"):
        sched.set_timesteps(sigmas=[0.9, 0.6, 0.3])
    with pytest.raises(ValueError, match="time_input='sigma': not a flow model's time"):
        usf_fast.DiffusionModel(lambda x, t: x, NS, prediction="flow", time_input="sigma")


FLOW_SCHEDULERS = {
    "flow_euler": lambda **kw: FlowMatchEulerDiscreteScheduler(**kw),
    "flow_dpm": lambda **kw: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                         **{("flow_shift" if k == "shift" else k): v for k, v in kw.items()}),
    "flow_unipc": lambda **kw: __import__("diffusers").UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction",
        **{("flow_shift" if k == "shift" else k): v for k, v in kw.items()}),
}


@pytest.mark.parametrize("grid", list(FLOW_SCHEDULERS))
@pytest.mark.parametrize("n,shift", [(4, 3.0), (7, 1.0), (12, 5.0)])
def test_diffusers_flow_grids_are_reproduced_point_for_point(grid, n, shift):
    theirs = FLOW_SCHEDULERS[grid](shift=shift)
    theirs.set_timesteps(n)
    want = theirs.sigmas[:-1].double().numpy()
    np.testing.assert_allclose(usf_fast.presets.diffusers_flow_sigmas(grid, n, shift), want, rtol=2e-7)
    sched = USFScheduler.from_config(theirs.config, preset="ddim")
    assert sched.config.flow_grid == grid
    sched.set_timesteps(n)   # the scheduler's own grid, σ·1000 as its timesteps (the first clipped to t_max);
    # diffusers' DPM-Solver / UniPC flow modes hand the net int64 timesteps (σ·1000 truncated), ours float
    torch.testing.assert_close(sched.timesteps.double(), theirs.sigmas[:-1].double() * 1000, rtol=2e-6, atol=0)
    assert theirs.timesteps.dtype == (torch.float32 if grid == "flow_euler" else torch.int64)
    ts = usf_fast.presets.timesteps(NS, n - 1, grid, shift=shift)
    np.testing.assert_allclose(ts, np.minimum(want, NS.t_max), rtol=2e-7)


def test_flow_euler_with_dynamic_shifting_keeps_its_unshifted_end():
    theirs = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    theirs.set_timesteps(5, mu=0.8)
    ours = usf_fast.presets.diffusers_flow_sigmas("flow_euler", 5, float(np.exp(0.8)), dynamic=True)
    np.testing.assert_allclose(ours, theirs.sigmas[:-1].double().numpy(), rtol=2e-7)


@pytest.mark.parametrize("grid,preset,opts", [
    ("flow_euler", "ddim", {}),
    ("flow_dpm", "dpm_solver_pp", {"order": 2}),
    ("flow_dpm", "dpm_solver_pp", {"order": 3}),
    ("flow_unipc", "unipc", {"order": 2, "variant": "bh2"}),
])
def test_a_preset_on_the_schedulers_own_grid_equals_that_scheduler(grid, preset, opts):
    """No sigmas from the pipeline (SD3, Wan, Sana): the same grid and the same sample as the
    diffusers scheduler the config came from, on the same net and noise."""
    n = 6
    theirs = FLOW_SCHEDULERS[grid](shift=3.0, **({"solver_order": opts["order"]} if grid != "flow_euler" else {}))
    theirs.set_timesteps(n)
    x = _noise().float()   # the net at the exact σ's (DPM / UniPC would hand it truncated int σ·1000);
    for i, t in enumerate(theirs.timesteps):   # Euler's σ = 1 is t_max for the mixture (α = 0 there)
        sigma = _f32_time(theirs.sigmas[i].double().clamp(max=NS.t_max)).expand(3)
        x = theirs.step(MODEL.net(x.double(), sigma).float(), t, x).prev_sample
    ours = USFScheduler.from_config(theirs.config, preset=preset, preset_options=opts)
    ours.set_timesteps(n)
    out = _loop(ours, _noise())
    assert float((out - x.double()).norm() / out.norm()) < 1e-5


def test_diffusers_grids_refuse_their_ends_and_singlestep():
    with pytest.raises(ValueError, match="fixes its own ends"):
        usf_fast.presets.timesteps(NS, 4, "flow_dpm", t_end=0.1)
    with pytest.raises(ValueError, match="singlestep method needs one of"):
        usf_fast.presets.dpm_solver_pp(NS, 6, spacing="flow_unipc", method="singlestep")
    with pytest.raises(ValueError, match="needs a NoiseScheduleFlow"):
        usf_fast.presets.timesteps(usf_fast.NoiseScheduleVP("linear"), 4, "flow_euler")
    with pytest.raises(ValueError, match="grid='nope': must be one of flow_euler"):
        usf_fast.presets.diffusers_flow_sigmas("nope", 4)
