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
