"""Presets: spacings, NFE bookkeeping, options and errors."""
import numpy as np
import pytest

import usf_fast
from usf_fast import presets

VP = usf_fast.NoiseScheduleVP("linear")
EDM = usf_fast.NoiseScheduleEDM()


@pytest.mark.parametrize("ns", [VP, EDM], ids=["vp", "edm"])
@pytest.mark.parametrize("spacing", presets.SPACINGS)
def test_spacings_are_decreasing_and_hit_the_ends(ns, spacing):
    ts = presets.timesteps(ns, 7, spacing)
    assert len(ts) == 8 and ts[0] == ns.t_max and ts[-1] == ns.t_min and np.all(np.diff(ts) < 0)


def test_spacing_definitions():
    ts = presets.timesteps(VP, 4, "logSNR")
    assert np.allclose(np.diff(VP.marginal_lambda(ts)), np.diff(VP.marginal_lambda(ts))[0])
    assert np.allclose(np.diff(presets.timesteps(VP, 4, "time_uniform")), (VP.t_min - VP.t_max) / 4)
    assert np.allclose(np.diff(np.sqrt(presets.timesteps(VP, 4, "time_quadratic"))),
                       (np.sqrt(VP.t_min) - 1) / 4)
    sig = presets.timesteps(EDM, 4, "karras", rho=7) ** (1 / 7)
    assert np.allclose(np.diff(sig), np.diff(sig)[0])


@pytest.mark.parametrize("name", list(presets.PRESETS))
@pytest.mark.parametrize("nfe", [3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("extra", [{}, {"afs": True}, {"denoise_to_zero": True}])
def test_presets_spend_exactly_their_nfe(name, nfe, extra):
    s = presets.get(name, VP, nfe, **extra)
    assert s.nfe == nfe
    assert s.afs == extra.get("afs", False)


def test_singlestep_order_pattern_matches_dpm_solver():
    s = presets.dpm_solver(VP, 6, order=3)           # 6 % 3 == 0 → outer orders [3, 2, 1]
    assert [st.order for st in s.steps] == [1, 2, 2, 1, 2, 1]
    assert [st.start for st in s.steps] == [0, 0, 0, 3, 3, 5]


def test_unipc_corrects_every_step_but_the_last():
    s = presets.unipc(VP, 6)
    assert [st.corrector for st in s.steps] == ["pseudo"] * 5 + ["none"]
    assert [st.order for st in s.steps] == [1, 2, 3, 3, 2, 1]


def test_presets_record_their_noise_schedule():
    s = presets.unipc(VP, 5)
    assert s.meta["preset"] == "unipc" and s.meta["noise_schedule"]["schedule"] == "linear"


@pytest.mark.parametrize("call,match", [
    (lambda: presets.get("heun", VP, 5), "preset='heun': must be one of ddim, dpm_solver, dpm_solver_pp, unipc"),
    (lambda: presets.get("unipc", VP, 5, ordr=2), r"unknown option\(s\) \['ordr'\]"),
    (lambda: presets.unipc(VP, 0), "nfe=0 is too small"),
    (lambda: presets.unipc(VP, 1, denoise_to_zero=True), "nfe=1 is too small"),
    (lambda: presets.unipc(VP, 5, order=5), "order=5 must be one of 1, 2, 3, 4"),
    (lambda: presets.unipc(VP, 5, variant="bh3"), "variant='bh3'"),
    (lambda: presets.dpm_solver_pp(VP, 5, solver_type="euler"), "solver_type='euler'"),
    (lambda: presets.dpm_solver_pp(VP, 5, method="singlestep", timesteps=[1, .5]), "timesteps= is supported"),
    (lambda: presets.ddim(VP, 5, spacing="cubic"), "spacing='cubic': must be one of logSNR"),
    (lambda: presets.ddim(VP, 3, timesteps=[1.0, 0.5]), "timesteps has 2 values; this NFE needs 4"),
    (lambda: presets.ddim(VP, 3, t_start=2.0), "t_start=2.0"),
])
def test_bad_preset_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
