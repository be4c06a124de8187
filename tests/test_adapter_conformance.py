"""What diffusers checks of every scheduler (its SchedulerCommonTest), asked of USFScheduler: saving
and loading (also from a pipeline folder's `scheduler` subfolder), `return_dict`, batch sizes,
float16 latents, `add_noise` dtypes, trained betas, and switching configs with other schedulers
back and forth. Our own tests, modelled on that suite (issue "The diffusers and ComfyUI adapters",
point 8); pickling and deep copies mid-run are in test_adapter_contract.py."""
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon")


def _net(x, t):
    """A smooth stand-in for a network: any fixed function of (x, timestep) will do."""
    return 0.4 * x + 0.001 * torch.as_tensor(t, dtype=x.dtype)


def _loop(sched, x, n=6, return_dict=True):
    sched.set_timesteps(n)
    for t in sched.timesteps:
        out = sched.step(_net(sched.scale_model_input(x, t), t), t, x, return_dict=return_dict)
        x = out.prev_sample if return_dict else out[0]
    return x


def _x(batch=2, dtype=torch.float32, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("make", [
    lambda: USFScheduler.from_config(DPMSolverMultistepScheduler(**SD).config, preset="unipc", preset_options={"order": 3}),
    lambda: USFScheduler.from_config(DDPMScheduler(**SD).config,
                                     schedule=usf_fast.presets.dpm_solver_pp(
                                         USFScheduler.from_config(DDPMScheduler(**SD).config).noise_schedule, 6, afs=True)),
], ids=["preset", "schedule"])
def test_save_and_load_round_trips(make, tmp_path):
    ours = make()
    ours.save_config(tmp_path / "pipe" / "scheduler")
    for loaded in (USFScheduler.from_pretrained(tmp_path / "pipe" / "scheduler"),
                   USFScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")):
        public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
        assert loaded.noise_schedule == ours.noise_schedule and public(loaded.config) == public(ours.config)
        torch.testing.assert_close(_loop(loaded, _x()), _loop(ours, _x()), rtol=0, atol=0)


def test_return_dict_false_gives_the_same_tuple():
    make = lambda: USFScheduler.from_config(DDPMScheduler(**SD).config, preset="dpm_solver_pp")  # noqa: E731
    torch.testing.assert_close(_loop(make(), _x(), return_dict=False), _loop(make(), _x()), rtol=0, atol=0)


def test_each_sample_of_a_batch_is_its_own():
    make = lambda: USFScheduler.from_config(DDPMScheduler(**SD).config, preset="unipc")  # noqa: E731
    batch = _x(batch=3)
    together = _loop(make(), batch.clone())
    for i in range(3):
        torch.testing.assert_close(_loop(make(), batch[i:i + 1].clone()), together[i:i + 1], rtol=1e-6, atol=1e-6)


def test_float16_latents():
    make = lambda: USFScheduler.from_config(DDPMScheduler(**SD).config, preset="unipc")  # noqa: E731
    half = _loop(make(), _x(dtype=torch.float16))
    full = _loop(make(), _x())
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())
    assert float((half.float() - full).norm() / full.norm()) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_add_noise_in_the_latents_dtype_equals_diffusers(dtype):
    theirs = DDPMScheduler(**SD)
    ours = USFScheduler.from_config(theirs.config)
    ours.set_timesteps(5)
    x0, noise = _x(dtype=dtype), _x(dtype=dtype, seed=1)
    t = torch.tensor([700, 20])
    got = ours.add_noise(x0, noise, t)
    assert got.dtype == dtype and got.device == x0.device
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(got.float(), theirs.add_noise(x0, noise, t).float(), rtol=tol, atol=tol)


def test_trained_betas():
    betas = torch.linspace(1e-4, 0.03, 500).tolist()
    theirs = DDPMScheduler(trained_betas=betas, num_train_timesteps=500)
    ours = USFScheduler.from_config(theirs.config)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-6, atol=0)
    ours.set_timesteps(4)
    assert float(ours.timesteps[0]) < 500


@pytest.mark.parametrize("other", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                                   UniPCMultistepScheduler])
def test_switching_configs_back_and_forth_keeps_the_noise_schedule(other):
    start = DPMSolverMultistepScheduler(**SD)
    ours = USFScheduler.from_config(start.config, preset="unipc")
    theirs = other.from_config(ours.config)            # ours -> theirs
    torch.testing.assert_close(theirs.alphas_cumprod, start.alphas_cumprod, rtol=0, atol=0)
    assert theirs.config.prediction_type == "epsilon"
    back = USFScheduler.from_config(theirs.config, preset="unipc")   # theirs -> ours
    assert back.noise_schedule == ours.noise_schedule
    torch.testing.assert_close(back.alphas_cumprod, start.alphas_cumprod, rtol=1e-6, atol=0)
