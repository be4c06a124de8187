"""Schedule construction, validation, NFE accounting and the JSON format."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import fuzz_schedules

import usf_fast
from usf_fast import Schedule, Step

TS = [1.0, 0.6, 0.3, 0.1, 0.01]


def test_defaults_resolve_to_multistep_points():
    s = Schedule(TS, [Step(order=1), Step(order=2), Step(order=3), Step(order=4)])
    assert [st.start for st in s.steps] == [0, 1, 2, 3]
    assert [st.points for st in s.steps] == [(), (0,), (1, 0), (2, 1, 0)]


@pytest.mark.parametrize("timesteps,match", [
    ([1.0, 1.0, 0.5], r"timesteps\[1\]=1.0 >= timesteps\[0\]"),
    ([0.5, 0.7], r"timesteps\[1\].*strictly decreasing"),
    ([1.0, float("nan")], r"timesteps\[1\]=nan: must be finite"),
    ([1.0, float("inf")], r"timesteps\[1\]=inf: must be finite"),
    ([1.0, -0.1], r"timesteps\[1\]=-0.1: must be > 0"),
    ([1.0], r"at least 2"),
])
def test_bad_timesteps_are_value_errors(timesteps, match):
    with pytest.raises(ValueError, match=match):
        Schedule(timesteps)


@pytest.mark.parametrize("step,index,match", [
    (Step(order=5), 0, r"steps\[0\]\.order=5: expansion order must be an integer 1\.\.4"),
    (Step(order=3), 1, r"steps\[1\]\.order=3: needs 2 earlier model outputs"),
    (Step(order=2, points=()), 2, r"steps\[2\]\.order=2: needs at least 1 active points"),
    (Step(order=2, points=(2,)), 2, r"steps\[2\]\.points: 2 is the start point"),
    (Step(prediction="velocity"), 0, r"steps\[0\]\.prediction='velocity': must be one of data, noise"),
    (Step(corrector="explicit"), 0, r"steps\[0\]\.corrector='explicit': must be one of none, pseudo, implicit"),
    (Step(relax="cubic"), 0, r"steps\[0\]\.relax='cubic': must be one of"),
    (Step(relax_coef=0.5), 0, r"steps\[0\]\.relax_coef=0.5: only used with relax 'linear'"),
    (Step(relax="linear", relax_coef=float("nan")), 0, r"relax_coef=nan: must be a finite number"),
    (Step(d2_scale=float("inf")), 0, r"d2_scale=inf"),
    (Step(start=3), 1, r"steps\[1\]\.start=3: must be a point index 0\.\.1"),
    (Step(order=2, points=(0, 0)), 2, r"must be distinct"),
    (Step(order=2, points=(7,)), 2, r"steps\[2\]\.points: 7 is not a point index 0\.\.2"),
])
def test_bad_steps_name_field_index_and_allowed_values(step, index, match):
    steps = [Step() for _ in range(4)]
    steps[index] = step
    with pytest.raises(ValueError, match=match):
        Schedule(TS, steps)


def test_wrong_number_of_steps():
    with pytest.raises(ValueError, match="need exactly len\\(timesteps\\) - 1 = 4"):
        Schedule(TS, [Step()] * 3)


def test_unknown_step_field_in_dict():
    with pytest.raises(ValueError, match=r"steps\[0\]: unknown field\(s\) \['ordr'\]"):
        Schedule(TS, [{"ordr": 2}, {}, {}, {}])


@pytest.mark.parametrize("kw,nfe", [
    ({}, 4),
    ({"afs": True}, 3),
    ({"denoise_to_zero": True}, 5),
    ({"afs": True, "denoise_to_zero": True}, 4),
])
def test_nfe_counts_afs_and_denoise(kw, nfe):
    assert Schedule(TS, **kw).nfe == nfe


def test_nfe_counts_correctors():
    base = Schedule(TS)
    assert base.with_step(1, corrector="pseudo").nfe == 4           # uses M_2, evaluated anyway
    assert base.with_step(1, corrector="implicit").nfe == 5         # re-evaluation
    assert base.with_step(3, corrector="pseudo").nfe == 5           # last step: M_N is extra
    assert base.with_step(3, corrector="implicit").nfe == 6
    assert base.with_step(3, corrector="implicit").replace(denoise_to_zero=True).nfe == 6  # reuses it
    assert base.with_step(3, corrector="pseudo").replace(denoise_to_zero=True).nfe == 6


def test_json_round_trip_is_exact(tmp_path):
    ns = usf_fast.NoiseScheduleVP("linear")
    for s in [usf_fast.presets.unipc(ns, 7), usf_fast.presets.dpm_solver(ns, 8),
              Schedule([1.0, 0.1 + 0.2, 1e-3], [Step(relax="linear", relax_coef=1 / 3), Step(order=2, corrector="implicit")],
                       afs=True, denoise_to_zero=True, name="x")]:
        path = tmp_path / "s.json"
        s.to_json(path)
        back = Schedule.from_json(path)
        assert back == s
        assert back.timesteps == s.timesteps  # bit-exact floats


@pytest.mark.parametrize("text,match", [
    ("{not json", "malformed"),
    ('{"format": "usf_fast.schedule", "version": 99, "timesteps": [1, 0.5], "steps": [{}]}', "version=99 is not supported"),
    ('{"format": "other", "version": 1}', "format='other'"),
    ('{"format": "usf_fast.schedule", "version": 1, "steps": [{}]}', "missing field 'timesteps'"),
    ('{"format": "usf_fast.schedule", "version": 1, "timesteps": [1, 0.5], "steps": [{}], "extra": 1}', "unknown field"),
    ("[1, 2]", "top level must be an object"),
])
def test_bad_json_is_value_error(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        Schedule.from_json(p)


def test_summary_one_line_per_step():
    s = usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 5)
    lines = s.summary().splitlines()
    assert len(lines) == 2 + 5 and "NFE 5" in lines[0]
    assert "corrector pseudo" in lines[2]


@settings(max_examples=150, deadline=None)
@given(fuzz_schedules())
def test_fuzz_valid_schedules_round_trip(s):
    assert Schedule.from_json(s.to_json()) == s
    assert s.nfe >= 0


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["prediction", "order", "start", "points", "relax", "relax_coef",
                                        "d2_scale", "corrector", "bogus"]),
                       st.one_of(st.integers(-3, 6), st.floats(allow_nan=True, allow_infinity=True),
                                 st.text(max_size=8), st.lists(st.integers(-2, 5), max_size=4), st.none())))
def test_fuzz_arbitrary_step_dicts_either_validate_or_raise_value_error(d):
    try:
        s = Schedule([1.0, 0.5, 0.25, 0.1], [{}, {}, d])
    except ValueError as e:
        assert "steps[2]" in str(e)
    else:
        assert Schedule.from_json(s.to_json()) == s


def test_coincident_derivative_points_are_a_value_error_naming_them():
    from usf_fast.coefficients import update_weights
    with pytest.raises(ValueError, match="coincide to float precision"):
        update_weights(-1.0, 0.0, [-2.0, -2.0], alpha_s=0.5, sigma_s=0.8, alpha_t=0.7, sigma_t=0.7,
                       prediction="data", order=3)


def test_to_dict_of_a_step_is_dataclasses_asdict_with_points_a_list():
    """`_step_to_dict` reads the fields without a deep copy: it must say what asdict says (a field
    that is not a scalar would need it changed), weights as lists and left out when None (a
    formula schedule's JSON and search key are what they were before weights existed)."""
    import dataclasses

    from usf_fast.schedule import _step_to_dict
    s = Schedule([1.0, 0.6, 0.3, 0.1, 0.01], [Step(), Step(order=2, relax="linear", relax_coef=0.3),
                                             Step(order=3, corrector="pseudo", d2_scale=0.5, weights=(1, 2, 3, 4),
                                                  corrector_weights=(1, 2, 3, 4, 5)), Step(order=2)])
    for step in s.steps:
        want = dict(dataclasses.asdict(step), points=list(step.points))
        for name in ("weights", "corrector_weights"):
            if want[name] is None:
                del want[name]
            else:
                want[name] = list(want[name])
        assert _step_to_dict(step) == want
        assert all(type(v) is list for k, v in _step_to_dict(step).items() if k.endswith("weights") or k == "points")
