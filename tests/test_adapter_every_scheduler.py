"""Every scheduler class the installed diffusers ships: `USFScheduler.from_config` of its config —
live (`pipe.scheduler.config`: no class name, defaults flagged for dropping) and saved then loaded
(`from_pretrained`) — reproduces that class's noise schedule and the time input its network gets,
or raises an error that names the class (issue "The diffusers and ComfyUI adapters", findings 2–4).

The checks read the source instance only: σ at the source's own timesteps (VP: from its
alphas_cumprod at the DDPM index it hands the net; EDM: its sigmas and c_noise timesteps; flow: its
shifted sigmas and σ·1000 timesteps) against what USFScheduler hands the net at the same times.
"""
import inspect

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from usf_fast.adapters.diffusers import USFScheduler

CLASSES = sorted(n for n in dir(diffusers) if inspect.isclass(getattr(diffusers, n, None))
                 and issubclass(getattr(diffusers, n), SchedulerMixin) and getattr(diffusers, n) is not SchedulerMixin)


def _configs(name, tmp_path):
    cls = getattr(diffusers, name)
    source = cls()
    yield "live", source, source.config
    source.save_config(tmp_path)
    yield "saved", source, "path"


def _ours(cfg, tmp_path):
    return USFScheduler.from_pretrained(tmp_path) if cfg == "path" else USFScheduler.from_config(cfg)


def _check_vp(source, ours):
    ac = source.alphas_cumprod.double()
    n = len(ac)
    ts = np.array([n - 1, int(0.7 * n), int(0.4 * n), int(0.1 * n), 3])
    ours.set_timesteps(timesteps=ts)
    assert ours.timesteps.tolist() == pytest.approx(ts.tolist(), abs=1e-3)   # the net gets the DDPM index
    want = ((1 - ac[ts]) / ac[ts]) ** 0.5
    np.testing.assert_allclose(ours.sigmas[:-1].double().numpy(), want.numpy(), rtol=2e-5)
    if getattr(source, "sigmas", None) is not None and hasattr(source, "set_timesteps"):
        source.set_timesteps(10)   # where the source has a σ table, it is this noise schedule's σ
        st = source.timesteps.double()
        if torch.all(st == st.round()) and st.max() < n:
            got = source.sigmas[:len(st)].double()
            np.testing.assert_allclose(got.numpy(), (((1 - ac[st.long()]) / ac[st.long()]) ** 0.5).numpy(), rtol=1e-4)


def _check_edm(source, ours):
    source.set_timesteps(6)
    ours.set_timesteps(sigmas=source.sigmas[:-1])
    np.testing.assert_allclose(ours.sigmas[:-1].numpy(), source.sigmas[:-1].float().numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.timesteps.numpy(), source.timesteps.float().numpy(), rtol=1e-5, atol=1e-6)


def _check_flow(source, ours):
    source.set_timesteps(8)
    ts = source.timesteps.double().numpy()
    sig = source.sigmas[:len(ts)].double().numpy()
    keep = np.r_[True, np.diff(ts) != 0]   # Heun-style grids repeat their points
    ts, sig = ts[keep], sig[keep]
    np.testing.assert_allclose(ts, sig * source.config.num_train_timesteps, rtol=1e-5)   # the source's time input
    ours.set_timesteps(timesteps=ts[1:])   # (σ = 1 is clipped to t_max < 1)
    np.testing.assert_allclose(ours.sigmas[:-1].numpy(), sig[1:], rtol=1e-5)
    np.testing.assert_allclose(ours.timesteps.numpy(), ts[1:], rtol=1e-5)


@pytest.mark.parametrize("name", CLASSES)
def test_every_installed_scheduler_class_is_read_exactly_or_refused_by_name(name, tmp_path):
    cls = getattr(diffusers, name)
    try:
        cls()
    except TypeError:   # needs arguments (token schedulers): a config naming it is refused by name
        with pytest.raises(ValueError, match=name):
            USFScheduler.from_config({"_class_name": name, "num_train_timesteps": 1000})
        return
    for how, source, cfg in _configs(name, tmp_path):
        try:
            ours = _ours(cfg, tmp_path)
        except ValueError as e:
            assert name in str(e), f"{how} config of {name}: error does not name the class: {e}"
            continue
        kind = ours.kind
        if kind == "vp":
            assert getattr(source, "alphas_cumprod", None) is not None, f"{name} read as VP but has no alphas_cumprod"
            _check_vp(source, ours)
        elif kind == "edm":
            _check_edm(source, ours)
        else:
            _check_flow(source, ours)


def test_the_classes_read_are_the_ones_expected():
    """A guard on the test above: the common classes are read, not refused."""
    read = []
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                 "DPMSolverSDEScheduler", "LCMScheduler", "TCDScheduler", "UnCLIPScheduler", "CogVideoXDDIMScheduler",
                 "CogVideoXDPMScheduler", "EulerDiscreteScheduler", "EDMEulerScheduler", "FlowMatchEulerDiscreteScheduler",
                 "DDPMScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler"):
        USFScheduler.from_config(getattr(diffusers, name)().config)
        read.append(name)
    assert len(read) == 15
