"""Hostile input, generated: schedule files, search logs, CLI arguments and nearly coincident
times. Every case ends in a correct result or one clear error (ValueError in the API; one line and
exit status 2 in the CLI), never a traceback. No case has a wall-clock deadline: the suite must pass
on a loaded machine (tests/conftest.py); a hang shows as a test that does not end."""
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import usf_fast
from usf_fast.cli import main
from usf_fast.models import embedded_model
from usf_fast.schedule import SCHEDULE_FORMAT, Schedule
from usf_fast.search.log import SearchLog

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
HUGE = 10 ** 400

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-HUGE, HUGE) | st.sampled_from([HUGE, -HUGE, 1e308, -0.0, 2 ** 63])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["\x1b[31mred", "line\nbreak", "data", "noise", "linear", "pseudo", "implicit"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)

step_fields = st.fixed_dictionaries({}, optional={
    "order": st.integers(-2, 6) | junk, "prediction": st.sampled_from(["data", "noise"]) | junk,
    "start": st.integers(-1, 5) | junk, "points": st.lists(st.integers(-1, 5), max_size=4) | junk,
    "relax": st.sampled_from(["taylor", "linear", "bh2"]) | junk, "relax_coef": st.floats(-1e4, 1e4) | junk,
    "corrector": st.sampled_from(["none", "pseudo", "implicit"]) | junk, "d2_scale": junk})


@st.composite
def schedule_documents(draw):
    """Schedule JSON: mostly well-formed structure, with junk at any level."""
    n = draw(st.integers(1, 5))
    ts = sorted(draw(st.lists(st.floats(1e-3, 1.0), min_size=n + 1, max_size=n + 1)), reverse=True)
    doc = {"format": SCHEDULE_FORMAT, "version": 1, "timesteps": ts, "steps": [draw(step_fields) for _ in range(n)],
           "afs": draw(st.booleans()), "denoise_to_zero": draw(st.booleans()),
           "name": draw(st.text(max_size=10)), "meta": {}}
    for key in draw(st.lists(st.sampled_from(sorted(doc) + ["extra"]), max_size=2, unique=True)):
        doc[key] = draw(junk)
    if draw(st.booleans()):
        doc["timesteps"] = draw(st.lists(st.floats(-1, 2) | st.integers(-HUGE, HUGE), max_size=6) | junk)
    return doc


def _text(doc) -> str:
    return json.dumps(doc, allow_nan=True, default=str)


@FAST
@given(doc=schedule_documents())
def test_schedule_files_load_or_fail_clearly(doc):
    try:
        s = Schedule.from_json(_text(doc))
    except ValueError as e:
        assert str(e)
        return
    assert s.nfe >= 0 and Schedule.from_json(s.to_json()) == s   # (AFS and one step: no evaluation at all)


@FAST
@given(depth=st.integers(100, 50_000), bracket=st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_is_a_clear_error(depth, bracket):
    text = "{\"format\": \"usf_fast.schedule\", \"x\": " + bracket * depth
    with pytest.raises(ValueError):
        Schedule.from_json(text)


@FAST
@given(doc=schedule_documents())
def test_show_prints_a_schedule_or_one_error_line(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("show") / "s.json"
    path.write_text(_text(doc))
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["show", str(path)])
    assert code in (0, 2)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("usf-fast show: error: ") and "Traceback" not in err.getvalue()
    else:
        assert "\x1b" not in out.getvalue()   # control characters in a name are escaped


LOG_HEADER = None


def _header():
    """A real search's header (identity, shape, model), from a tiny search run once."""
    global LOG_HEADER
    if LOG_HEADER is None:
        from usf_fast.search import S3Search, SearchConfig
        model = embedded_model("gmm-2d")
        s = S3Search(model, SearchConfig(nfe=3, budget=8, samples=(4, 8), heldout=8, progress=False, solve=0))
        LOG_HEADER = s.log.header
    return LOG_HEADER


line_junk = st.one_of(
    junk.map(lambda v: json.dumps(v, allow_nan=True, default=str)),
    st.fixed_dictionaries({"type": st.just("eval")}, optional={
        "key": junk | st.text(max_size=4), "fidelity": st.sampled_from(["s1", "s2"]) | junk,
        "schedule": st.just({}) | junk, "metric": st.floats(allow_nan=True) | junk | st.none(),
        "seconds": junk, "stage": junk}).map(lambda d: json.dumps(d, allow_nan=True, default=str)),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")))


@FAST
@given(lines=st.lists(line_junk, max_size=5), tail=st.text(max_size=10))
def test_damaged_logs_resume_or_fail_clearly(tmp_path_factory, lines, tail):
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    header = dict(_header(), type="header")
    body = "\n".join([json.dumps(header)] + [ln.replace("\n", " ") for ln in lines]) + "\n" + tail.replace("\n", " ")
    path.write_text(body, encoding="utf-8", errors="surrogateescape")
    try:
        log = SearchLog(path, _header(), resume=True)
    except ValueError as e:
        assert "log" in str(e)
        return
    for (key, fidelity), metric in log.cached().items():
        assert isinstance(key, str) and isinstance(fidelity, str) and (math.isfinite(metric) or metric == math.inf)
    log.close()


number = st.one_of(st.integers(-5, 5), st.sampled_from(["x", "nan", "-1", "1e400", "", "0", "3,0", "1,-2"]),
                   st.floats(allow_nan=True).map(str))


@FAST
@given(flag=st.sampled_from(["--nfe", "--num-samples", "--seed", "--order", "--grid-size"]), value=number,
       command=st.sampled_from(["sample", "compare"]))
def test_cli_numbers_run_or_fail_with_one_line(flag, value, command, capsys):
    if command == "compare" and flag in ("--order", "--grid-size"):
        flag = "--nfe"
    argv = [command, "--model", "gmm-2d", "--num-samples", "8", "--nfe", "2"]
    argv += ["--no-reference"] if command == "sample" else ["--spacings", "logSNR"]
    try:
        code = main(argv + [flag, str(value)])
    except SystemExit as e:   # argparse: a value of the wrong type ("usage: ..." and status 2)
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2 and "usage:" not in err:
        assert len(err.strip().splitlines()) == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flag=st.sampled_from(["--budget", "--samples", "--samples2", "--heldout", "--chunk", "--seed", "--max-minutes",
                             "--nfe", "--shape", "--reference-nfe", "--dist-timeout"]),
       value=number, metric=st.sampled_from(["ref", "exact"]))
def test_search_numbers_are_checked_before_anything_runs(tmp_path_factory, flag, value, metric, capsys):
    out = tmp_path_factory.mktemp("search")
    small = ["--budget", "1", "--samples", "2", "--samples2", "2", "--heldout", "2", "--reference-nfe", "5",
             "--nfe", "2", "--max-minutes", "0", "--solve", "0"]   # a valid value runs a search of seconds
    argv = ["search", "--model", "gmm-2d", "--metric", metric, "--out", str(out)] + small + [flag, str(value)]
    if flag in ("--nfe", "--budget", "--reference-nfe") and value not in ("x", "", "nan") and str(value).lstrip("-").isdigit():
        if int(value) > 3:
            return   # bounded work: large valid budgets are a long search, not a parsing question
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err


@FAST
@given(k=st.integers(2, 15), where=st.integers(1, 3), orders=st.lists(st.integers(1, 3), min_size=4, max_size=4))
def test_nearly_coincident_times_are_refused_or_correct_on_every_path(k, where, orders):
    """A point 10^-k after another: either every path refuses it with the same error, or the fused
    float64 result equals the float64 reference."""
    ts = [1.0, 0.5, 0.2, 0.05, 0.001]
    ts.insert(where + 1, ts[where] - 10.0 ** -k * ts[where])
    steps = [usf_fast.Step(order=min(o, i)) for i, o in enumerate(orders + [1], 1)]
    s = Schedule(ts, steps)
    model = embedded_model("gmm-2d")
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outcomes = []
    for backend in ("reference", "torch", "auto"):
        try:
            outcomes.append(usf_fast.sample(model, s, noise, backend=backend))
        except ValueError as e:
            outcomes.append(str(e))
    if isinstance(outcomes[0], str):
        assert all(o == outcomes[0] for o in outcomes) and "nearly coincident" in outcomes[0]
    else:
        assert not any(isinstance(o, str) for o in outcomes)
        for o in outcomes[1:]:
            assert float((o - outcomes[0]).abs().max()) <= 1e-8 * (1 + float(outcomes[0].abs().max()))


def test_a_hundred_thousand_steps_are_refused(tmp_path):
    n = 100_000
    doc = {"format": SCHEDULE_FORMAT, "version": 1, "timesteps": [1 - i / (n + 1) for i in range(n + 1)],
           "steps": [{}] * n}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    assert main(["show", str(path)]) == 2
    assert main(["sample", "--model", "gmm-2d", "--nfe", "1000000", "--num-samples", "2", "--no-reference"]) == 2
