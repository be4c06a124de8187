"""Convergence order on the analytic model: error against an adaptive DOP853 solve (float64,
rtol = atol = 1e-11) falls with log-log slope ≥ order − 0.3."""
import numpy as np
import pytest
import torch

import usf_fast
from usf_fast import Schedule, Step, presets
from usf_fast.metrics import reference_solution
from usf_fast.models.mixture import gmm_2d

NFES = [40, 80, 160]
NS = usf_fast.NoiseScheduleVP("linear")


@pytest.fixture(scope="module")
def problem():
    model = gmm_2d().as_model(NS)
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference_solution(model, noise, NS.t_max, NS.t_min, rtol=1e-11, atol=1e-11)
    return model, noise, ref


def slope(problem, make):
    model, noise, ref = problem
    errs = [float((usf_fast.sample(model, make(n), noise=noise) - ref).pow(2).mean().sqrt()) for n in NFES]
    return -np.polyfit(np.log(NFES), np.log(errs), 1)[0], errs


def multistep(prediction, order):
    return lambda n: Schedule(presets.timesteps(NS, n), [Step(prediction=prediction, order=min(order, i))
                                                        for i in range(1, n + 1)])


@pytest.mark.parametrize("prediction", ["noise", "data"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_taylor_order(problem, prediction, order):
    k, errs = slope(problem, multistep(prediction, order))
    assert k >= order - 0.3, (k, errs)


@pytest.mark.parametrize("preset", [presets.dpm_solver, lambda *a, **k: presets.dpm_solver_pp(*a, method="singlestep", **k)],
                         ids=["noise", "data"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_singlestep_order(problem, preset, order):
    k, errs = slope(problem, lambda n: preset(NS, n, order=order, lower_order_final=False))
    assert k >= order - 0.3, (k, errs)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_corrector_raises_order_by_one(problem, order):
    k, errs = slope(problem, lambda n: presets.unipc(NS, n, order=order, lower_order_final=False))
    assert k >= order + 1 - 0.3, (k, errs)


def test_dpm_solver_pp_3m_taylor_is_third_order(problem):
    k, _ = slope(problem, lambda n: presets.dpm_solver_pp(NS, n, order=3, solver_type="taylor", lower_order_final=False))
    assert k >= 2.7


def test_dpm_solver_pp_3m_as_diffusers_is_second_order(problem):
    """DPM-Solver's 3M update (diffusers, DPM-Solver code) weights the second-derivative term by
    1/2 of its Taylor value (d2_scale = 0.5), which leaves it second order asymptotically. This
    documents the finding; the test fails if the preset stops mirroring the reference."""
    k, _ = slope(problem, lambda n: presets.dpm_solver_pp(NS, n, order=3, lower_order_final=False))
    assert 1.7 <= k <= 2.3
