"""USFScheduler keeps the contract diffusers' pipelines rely on (issue "The diffusers and ComfyUI
adapters, exact by construction"): each test here failed before the fix it names."""
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from oracle import discrete_setup, usf_times

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler, noise_schedule_from_diffusers_config

BETAS = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def _float64_sigmas(theirs):
    """diffusers rounds its σ table to float32; recompute it in float64 from the same alphas_cumprod
    (tests/oracle.py) so a comparison measures the algorithms."""
    ac = theirs.alphas_cumprod.double()
    ts = theirs.timesteps.long()
    theirs.sigmas = torch.cat([((1 - ac[ts]) / ac[ts]) ** 0.5, (((1 - ac[0]) / ac[0]) ** 0.5).reshape(1)])


def _slice_loop(sched, net, x, start):
    for t in sched.timesteps[start:]:
        x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


@pytest.mark.parametrize("cls,preset", [(DPMSolverMultistepScheduler, "dpm_solver_pp"), (UniPCMultistepScheduler, "unipc")])
@pytest.mark.parametrize("start", [0, 3, 7])
def test_a_slice_of_timesteps_without_set_begin_index_equals_diffusers(cls, preset, start):
    """Finding 1: Kandinsky img2img / video-to-video loop over `timesteps[t_start:]` without
    set_begin_index; step used to take its position from the call count (rel. error 0.4–0.7)."""
    model, net, _ = discrete_setup()
    theirs = cls(solver_order=2, final_sigmas_type="sigma_min", **BETAS)
    theirs.set_timesteps(8)
    _float64_sigmas(theirs)
    ns = noise_schedule_from_diffusers_config(theirs.config)
    make = usf_fast.presets.dpm_solver_pp if preset == "dpm_solver_pp" else usf_fast.presets.unipc
    schedule = make(ns, 8, order=2, timesteps=usf_times([int(t) for t in theirs.timesteps]))
    ours = USFScheduler.from_config(theirs.config, schedule=schedule)
    ours.set_timesteps(8)
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(start), dtype=torch.float64)
    a = _slice_loop(theirs, net, x.clone(), start)
    b = _slice_loop(ours, net, x.clone(), start)
    assert ours.step_index == 8
    assert float((b - a).norm() / a.norm()) <= 1e-5


def _started(start=None):
    model, net, _ = discrete_setup()
    sched = USFScheduler.from_config(DPMSolverMultistepScheduler(**BETAS).config, preset="dpm_solver_pp")
    sched.set_timesteps(6)
    if start is not None:
        sched.set_begin_index(start)
    return sched, net, torch.randn(1, *model.sample_shape, dtype=torch.float64)


def test_a_timestep_out_of_order_is_an_error_not_a_wrong_step():
    sched, net, x = _started()
    ts = sched.timesteps
    x = sched.step(net(x, ts[0]), ts[0], x).prev_sample
    with pytest.raises(ValueError, match=r"step: timestep .* is timesteps\[2\] but the run is at evaluation 1"):
        sched.step(net(x, ts[2]), ts[2], x)
    sched, net, x = _started(start=2)   # set_begin_index placed the run: another start is refused
    with pytest.raises(ValueError, match=r"is timesteps\[3\] but the run is at evaluation 2 \(set_begin_index\(2\)\)"):
        sched.scale_model_input(x, sched.timesteps[3])


def test_a_timestep_off_the_grid_is_an_error():
    sched, net, x = _started()
    with pytest.raises(ValueError, match=r"timestep=123.5 is not one of this scheduler's timesteps"):
        sched.step(x, 123.5, x)
    with pytest.raises(ValueError, match=r"timestep='late' must be a number"):
        sched.step(x, "late", x)


def test_timesteps_as_copies_numbers_and_integers_are_located():
    """A copy of a timestep (one host read, as diffusers), a float, and the grid value cast to int
    (pipelines that pass int(t)) all find their evaluation."""
    sched, net, x = _started()
    ts = sched.timesteps
    for k, t in enumerate([ts[0].clone(), float(ts[1]), int(ts[2]), ts[3:4].expand(4)]):
        assert sched.step_index == k
        x = sched.step(net(x, ts[k]), t, x).prev_sample
    assert sched.step_index == 4


# ---- findings 2–4: the source scheduler is the oracle -------------------------------------------
def test_default_valued_keys_take_the_source_classes_defaults():
    """Finding 3: diffusers drops keys left at the source class's defaults; USFScheduler used to fall
    back to its own betas (1e-4…0.02 for Heun's 0.00085…0.012: log ᾱ off by 3.7)."""
    import diffusers
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "UnCLIPScheduler"):
        theirs = getattr(diffusers, name)()
        ours = USFScheduler.from_config(theirs.config)
        ac = ours.noise_schedule.marginal_alpha(torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2
        torch.testing.assert_close(ac, theirs.alphas_cumprod.double(), rtol=1e-6, atol=0)


def test_a_noise_schedule_the_source_shifts_is_honoured():
    """Finding 2: CogVideoX's snr_shift_scale reshapes ᾱ; it used to be dropped with a log line."""
    from diffusers import CogVideoXDDIMScheduler
    theirs = CogVideoXDDIMScheduler(snr_shift_scale=3.0, beta_schedule="scaled_linear", beta_start=0.00085,
                                    beta_end=0.012)
    for cfg in (theirs.config, dict(theirs.config, _class_name="CogVideoXDDIMScheduler")):
        ours = USFScheduler.from_config(cfg)
        ac = ours.noise_schedule.marginal_alpha(torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2
        torch.testing.assert_close(ac, theirs.alphas_cumprod.double(), rtol=1e-9, atol=0)
    again = USFScheduler.from_config(ours.config)   # our own config keeps it
    assert again.noise_schedule == ours.noise_schedule


@pytest.mark.parametrize("make,match", [
    (lambda d: d.DDPMScheduler(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
    (lambda d: d.DDPMScheduler(thresholding=True), "thresholding=True"),
    (lambda d: d.EulerDiscreteScheduler(timestep_type="continuous"), "timestep_type='continuous'"),
    (lambda d: d.CosineDPMSolverMultistepScheduler(), "CosineDPMSolverMultistepScheduler.*atan"),
    (lambda d: d.LTXEulerAncestralRFScheduler(), "LTXEulerAncestralRFScheduler"),
    (lambda d: d.DDPMWuerstchenScheduler(), "DDPMWuerstchenScheduler"),
    (lambda d: d.CMStochasticIterativeScheduler(), "CMStochasticIterativeScheduler"),
    (lambda d: d.FlowMatchEulerDiscreteScheduler(use_exponential_sigmas=True), "use_exponential_sigmas=True"),
])
def test_what_cannot_be_honoured_is_refused_by_name(make, match):
    """Findings 2 and 4: fields that change the noise schedule or the network's time input, and
    scheduler families with other conventions, were accepted and read as something else."""
    import diffusers
    source = make(diffusers)
    for cfg in (source.config, dict(source.config, _class_name=type(source).__name__), source):
        with pytest.raises(ValueError, match=match):
            USFScheduler.from_config(cfg)


def test_the_source_sampler_fields_are_consumed_without_diffusers_generic_log(caplog):
    """Fields of the source's own sampler (order, grid) are replaced by the schedule, not passed to
    diffusers' "will be ignored" log."""
    import logging
    theirs = DPMSolverMultistepScheduler(solver_order=3, final_sigmas_type="zero", **BETAS)
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        USFScheduler.from_config(theirs.config)
    assert "will be ignored" not in caplog.text


def test_a_learned_variance_output_uses_its_first_channels():
    """Finding 2: a 2C-channel output (variance_type learned_range: DeepFloyd IF, guided diffusion)
    crashed step with a kernel error; diffusers uses the first C channels."""
    from diffusers import DDPMScheduler
    cfg = DDPMScheduler(variance_type="learned_range", **BETAS).config
    outs = [torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    results = []
    for learned in (True, False):
        sched = USFScheduler.from_config(cfg, preset="dpm_solver_pp")
        sched.set_timesteps(4)
        x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(9))
        for t, o in zip(sched.timesteps, outs):
            o = torch.cat([o, torch.full_like(o, 7.0)], 1) if learned else o
            x = sched.step(o, t, x).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    plain = USFScheduler.from_config(DDPMScheduler(**BETAS).config, preset="dpm_solver_pp")
    plain.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"model_output has shape \(1, 6, 4, 4\) but sample has \(1, 3, 4, 4\) "
                                         r"\(a learned-variance"):
        plain.step(torch.randn(1, 6, 4, 4), plain.timesteps[0], x)


# ---- finding 8: the rest of the contract --------------------------------------------------------
def test_bad_step_inputs_are_named():
    sched, net, x = _started()
    ts = sched.timesteps
    with pytest.raises(ValueError, match="step: sample must be a floating-point tensor, got torch.int64"):
        sched.step(x, ts[0], x.long())
    x = sched.step(net(x, ts[0]), ts[0], x).prev_sample
    two = torch.cat([x, x])
    with pytest.raises(ValueError, match=r"sample has shape \(2, .*this run's latents have \(1, .*batch changed"):
        sched.step(net(two, ts[1]), ts[1], two)


# ---- finding 7: flow configs ---------------------------------------------------------------------
def _flow_loop(sched, x, mu=None, sigmas=None):
    sched.set_timesteps(5 if sigmas is None else None, mu=mu, sigmas=sigmas)
    for t in sched.timesteps:
        v = 0.3 * x + 0.05 * float(t) / 1000   # any smooth velocity field of (x, σ)
        x = sched.step(v, t, x).prev_sample
    return x


@pytest.mark.parametrize("options,mu", [({"shift": 0.5}, None), ({"use_dynamic_shifting": True}, -0.5),
                                        ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 0.4),
                                        ({"shift": 3.0}, None)])
def test_flow_shifts_below_one_and_negative_mu_run_as_flow_match_euler(options, mu):
    """Finding 7: shift < 1 and negative mu were refused with a message about the schedule's range;
    diffusers runs them (the last σ goes below 1/1000). DDIM on a flow grid is FlowMatchEuler's step."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    theirs = FlowMatchEulerDiscreteScheduler(**options)
    ours = USFScheduler.from_config(theirs.config, preset="ddim")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = _flow_loop(theirs, x.clone(), mu), _flow_loop(ours, x.clone(), mu)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=1e-5, atol=2e-3)   # σ = 1 is 1 − 1e-6 here
    assert float((b - a).norm() / a.norm()) <= 1e-5


@pytest.mark.parametrize("call,match", [
    (lambda s: s.set_timesteps(5, mu=800.0), r"mu=800.0: e\^mu overflows"),
    (lambda s: s.set_timesteps(5, mu=float("nan")), "mu=nan must be a finite number"),
    (lambda s: s.set_timesteps(sigmas=[1.5, 1.0, 0.5]), r"flow σ's must lie in \(0, 1\]"),
    (lambda s: s.set_timesteps(sigmas=[1.0, 0.5, 0.0]), r"flow σ's must lie in \(0, 1\]"),
    (lambda s: s.set_timesteps(4.7), "num_inference_steps=4.7 must be a positive integer"),
])
def test_flow_inputs_diffusers_would_misuse_are_errors(call, match):
    """Finding 7: σ > 1 was clipped silently, mu = 800 an OverflowError; finding 8: a fractional
    num_inference_steps was truncated."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = USFScheduler.from_config(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    if "sigmas" in match or "σ" in match:
        sched = USFScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    with pytest.raises(ValueError, match=match):
        call(sched)


# ---- finding 8: pickling, the ᾱ table, add_noise -------------------------------------------------
def test_a_run_pickles_and_deep_copies_mid_way():
    """Finding 8: `pickle` failed (a lambda in __init__); multiprocessing and torch.save(pipe) need it."""
    import copy
    import pickle
    sched, net, x = _started()
    ts = sched.timesteps
    for t in ts[:2]:
        x = sched.step(net(x, t), t, x).prev_sample
    copies = [pickle.loads(pickle.dumps(sched)), copy.deepcopy(sched)]
    finals = []
    for s in [sched] + copies:
        y = x.clone()
        for t in s.timesteps[2:]:
            y = s.step(net(y, t), t, y).prev_sample
        finals.append(y)
    for f in finals[1:]:
        torch.testing.assert_close(f, finals[0], rtol=0, atol=0)


def test_the_alpha_tables_and_add_noise_at_any_training_timestep():
    """Finding 8: SAG, DiffEdit and LEDITS++ read `alphas_cumprod` / `betas`; `add_noise` refused
    a training timestep that is not on the inference grid (diffusers takes any)."""
    from diffusers import DDPMScheduler
    theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = USFScheduler.from_config(theirs.config)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=1e-4, atol=1e-7)
    ours.set_timesteps(5)
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([500, 37])
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), theirs.add_noise(x0, noise, ts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"add_noise: timesteps \[1500.0\] are outside"):
        ours.add_noise(x0, noise, torch.tensor([1500, 3]))
    from diffusers import FlowMatchEulerDiscreteScheduler
    assert not hasattr(USFScheduler.from_config(FlowMatchEulerDiscreteScheduler().config), "alphas_cumprod")


@pytest.mark.gpu
def test_timestep_copies_on_cuda_make_no_host_sync_after_the_first_step():
    """A pipeline that hands step a copy of the timestep on the GPU: located once (one read, as
    diffusers' index_for_timestep), then no step synchronises with the host."""
    sched = USFScheduler.from_config(DPMSolverMultistepScheduler(**BETAS).config, preset="unipc")
    sched.set_timesteps(5, device="cuda")
    x = torch.randn(2, 4, 8, 8, device="cuda")
    ts = [t.clone() for t in sched.timesteps]
    x = sched.step(x * 0.5, ts[0], x).prev_sample
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in ts[1:]:
            x = sched.step(x * 0.5, t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sched.step_index == 5


# ---- found in review -----------------------------------------------------------------------------
def test_an_edm_scheduler_keeps_its_spacing_through_save_and_load(tmp_path):
    ours = USFScheduler(sigma_data=0.5, source_spacing="logSNR")
    ours.save_config(tmp_path)
    for again in (USFScheduler.from_config(ours.config), USFScheduler.from_pretrained(tmp_path)):
        assert again.config.source_spacing == "logSNR"
        again.set_timesteps(8)
        ours.set_timesteps(8)
        torch.testing.assert_close(again.sigmas, ours.sigmas, rtol=0, atol=0)


def test_a_repeated_time_given_as_a_number_is_the_expected_evaluation():
    """An implicit corrector evaluates twice at one time: timesteps repeat a value, and a number
    (not a view) must find the second of the pair when the run is there."""
    model, net, _ = discrete_setup()
    ns = noise_schedule_from_diffusers_config(DPMSolverMultistepScheduler(**BETAS).config)
    base = usf_fast.presets.unipc(ns, 5, order=2)
    steps = list(base.steps)
    steps[1] = steps[1].replace(corrector="implicit")
    schedule = base.replace(steps=steps)
    results = []
    for as_number in (False, True):
        sched = USFScheduler.from_config(DPMSolverMultistepScheduler(**BETAS).config, schedule=schedule)
        sched.set_timesteps(schedule.nfe)
        ts = sched.timesteps
        assert len(set(ts.tolist())) < len(ts)   # a repeated time
        x = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        for t in ts:
            x = sched.step(net(x, t), float(t) if as_number else t, x).prev_sample
        results.append(x)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_constructing_a_scheduler_imports_no_pipeline():
    """Reading configs scans the scheduler classes only: not every pipeline module (seconds, and a
    broken optional pipeline would break USFScheduler())."""
    import subprocess
    import sys
    code = ("import sys; from diffusers import DDPMScheduler; from usf_fast.adapters.diffusers import USFScheduler; "
            "USFScheduler(); USFScheduler.from_config(DDPMScheduler().config); "
            "print(sum(m.startswith('diffusers.pipelines.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0"


def test_a_searched_warm_up_step_of_unknown_variant_keeps_its_relaxations():
    ns = usf_fast.NoiseScheduleVP("linear")
    st = usf_fast.Step(order=3, relax="taylor", corrector="pseudo", corrector_relax="taylor")
    s = usf_fast.Schedule([1.0, 0.7, 0.5, 0.3, 0.15, 0.05],
                          [usf_fast.Step(order=1), usf_fast.Step(order=2), st, st, st])
    tail = s.tail(2)
    assert (tail.steps[0].relax, tail.steps[0].corrector_relax) == ("taylor", "taylor")
    assert tail.steps[0].order == 1 and ns is not None


def test_a_restored_run_restarts_when_the_pipeline_hands_other_latents():
    """One scheduler object: a run stopped at evaluation 2, then set_begin_index(2) with latents of
    another batch size (not what this object returned): a fresh start there, not an error."""
    model, net, _ = discrete_setup()
    sched = USFScheduler.from_config(DPMSolverMultistepScheduler(**BETAS).config, preset="dpm_solver_pp")
    sched.set_timesteps(6)
    x = torch.randn(1, *model.sample_shape, dtype=torch.float64)
    for t in sched.timesteps[:2]:
        x = sched.step(net(x, t), t, x).prev_sample
    sched.set_timesteps(6)
    sched.set_begin_index(2)
    y = torch.randn(3, *model.sample_shape, dtype=torch.float64)
    for t in sched.timesteps[2:]:
        y = sched.step(net(y, t), t, y).prev_sample
    assert y.shape[0] == 3 and sched.step_index == 6
