"""Noise schedules: VP identities, inverse λ, discrete interpolation, EDM, torch/numpy agreement."""
import math

import numpy as np
import pytest
import torch
from oracle import diffusers_betas

import usf_fast

SCHEDULES = {
    "linear": lambda: usf_fast.NoiseScheduleVP("linear"),
    "cosine": lambda: usf_fast.NoiseScheduleVP("cosine"),
    "discrete": lambda: usf_fast.NoiseScheduleVP("discrete", betas=diffusers_betas()),
    "edm": lambda: usf_fast.NoiseScheduleEDM(),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inverse_lambda_round_trips(name):
    ns = SCHEDULES[name]()
    t = np.linspace(ns.t_min, ns.t_max, 97)
    back = ns.inverse_lambda(ns.marginal_lambda(t))
    np.testing.assert_allclose(back, t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine", "discrete"])
def test_vp_alpha_sigma_identity_and_monotone_lambda(name):
    ns = SCHEDULES[name]()
    t = np.linspace(ns.t_min, ns.t_max, 101)
    a, s = ns.marginal_alpha(t), ns.marginal_std(t)
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-12)
    assert np.all(np.diff(ns.marginal_lambda(t)) < 0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_torch_matches_numpy_float64(name):
    ns = SCHEDULES[name]()
    t = np.linspace(ns.t_min, ns.t_max, 33)
    tt = torch.from_numpy(t)
    for f in ("marginal_log_mean_coeff", "marginal_std", "marginal_lambda"):
        np.testing.assert_allclose(getattr(ns, f)(tt).numpy(), getattr(ns, f)(t), rtol=1e-12, atol=1e-14)
    lam = ns.marginal_lambda(t)
    np.testing.assert_allclose(ns.inverse_lambda(torch.from_numpy(lam)).numpy(), ns.inverse_lambda(lam), rtol=1e-10)


def test_linear_matches_scoresde_formula():
    ns = usf_fast.NoiseScheduleVP("linear")
    t = 0.37
    assert float(ns.marginal_log_mean_coeff(t)) == pytest.approx(-(20 - 0.1) * t ** 2 / 4 - 0.1 * t / 2, rel=1e-14)


def test_discrete_hits_alphas_cumprod_at_training_steps():
    betas = diffusers_betas().double()
    ac = torch.cumprod(1 - betas, 0).numpy()
    ns = usf_fast.NoiseScheduleVP("discrete", betas=betas)
    n = np.arange(1000)
    np.testing.assert_allclose(ns.marginal_alpha((n + 1) / 1000) ** 2, ac, rtol=1e-12)
    ns2 = usf_fast.NoiseScheduleVP("discrete", alphas_cumprod=ac)
    np.testing.assert_allclose(ns2.marginal_lambda(0.5), ns.marginal_lambda(0.5), rtol=1e-12)
    assert ns.t_min == 1e-3 and ns.t_max == 1.0


def test_cosine_matches_improved_ddpm():
    ns = usf_fast.NoiseScheduleVP("cosine")
    s = 0.008
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    t = 0.42
    assert float(ns.marginal_alpha(t)) ** 2 == pytest.approx(f(t) / f(0), rel=1e-12)


def test_edm_is_alpha_one_sigma_t():
    ns = usf_fast.NoiseScheduleEDM(sigma_min=0.002, sigma_max=80)
    assert float(ns.marginal_alpha(3.0)) == 1.0 and float(ns.marginal_std(3.0)) == 3.0
    assert float(ns.marginal_lambda(3.0)) == pytest.approx(-math.log(3.0))
    assert ns.prior_std(80.0) == 80.0 and ns.time_name == "sigma"


@pytest.mark.parametrize("make,match", [
    (lambda: usf_fast.NoiseScheduleVP("sigmoid"), "schedule='sigmoid': must be one of"),
    (lambda: usf_fast.NoiseScheduleVP("discrete"), "exactly one of betas= or alphas_cumprod="),
    (lambda: usf_fast.NoiseScheduleVP("discrete", betas=[0.1, 1.5]), "betas: must be"),
    (lambda: usf_fast.NoiseScheduleVP("discrete", alphas_cumprod=[0.5, 0.9]), "strictly decreasing"),
    (lambda: usf_fast.NoiseScheduleVP("linear", t_min=0.0), "t_min=0.0"),
    (lambda: usf_fast.NoiseScheduleEDM(sigma_min=1, sigma_max=0.5), "sigma_min=1"),
])
def test_bad_noise_schedules(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_dict_round_trip(name):
    from usf_fast.noise_schedules import noise_schedule_from_dict
    ns = SCHEDULES[name]()
    assert noise_schedule_from_dict(ns.to_dict()) == ns


def test_a_discrete_schedule_keeps_its_tables_per_device_and_pickles_without_them():
    """The tables are copied to a tensor's device once (a CUDA graph cannot capture a copy from
    host memory); the copies are a cache: not pickled, and a copy of the schedule is equal to it."""
    import pickle
    ns = usf_fast.NoiseScheduleVP("discrete", betas=np.linspace(1e-4, 0.02, 1000))
    t = torch.tensor([0.3, 0.7], dtype=torch.float32)
    first = ns.marginal_log_mean_coeff(t)
    tables = ns._copies[0][(torch.float32, t.device)]
    assert torch.equal(ns.marginal_log_mean_coeff(t), first) and ns._copies[0][(torch.float32, t.device)] is tables
    np.testing.assert_allclose(first.numpy(), ns.marginal_log_mean_coeff(np.array([0.3, 0.7])), rtol=1e-6)
    back = pickle.loads(pickle.dumps(ns))
    assert back == ns and back._copies == ({}, {})
    np.testing.assert_allclose(back.inverse_lambda(ns.marginal_lambda(t.double())).numpy(), t.double().numpy(), rtol=1e-9)
