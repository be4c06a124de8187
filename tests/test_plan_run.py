"""executor.PlanRun: one resumable run of a compiled plan. Driven by hand it gives `execute`'s
result; it stops at each evaluation, pickles there and continues; misuse is an error."""
import pickle

import pytest
import torch

import usf_fast
from usf_fast.executor import PlanRun, execute
from usf_fast.models import gmm_image
from usf_fast.plan import compile_plan

NS = usf_fast.NoiseScheduleVP("linear")
MODEL = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
SCHEDULE = usf_fast.presets.unipc(NS, 6, order=3, afs=True)


def _x():
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_driven_by_hand_it_equals_execute_and_resumes_after_pickling():
    plan = compile_plan(SCHEDULE, MODEL)
    want = execute(plan, MODEL, _x(), "torch")
    run = PlanRun(plan, _x(), "torch", mean=MODEL.mean_like)
    times = []
    while (nxt := run.next_input()) is not None:
        x, t = nxt
        times.append(t)
        run.feed(MODEL.raw(x, t))
        if run.evaluations == 3:   # stop half-way: the kept object is the run
            run = pickle.loads(pickle.dumps(run))
    assert run.done and run.evaluations == SCHEDULE.nfe == len(times)
    torch.testing.assert_close(run.result, want, rtol=0, atol=0)


def test_misuse_is_an_error():
    run = PlanRun(compile_plan(SCHEDULE, MODEL), _x(), "torch", mean=MODEL.mean_like)
    with pytest.raises(ValueError, match=r"result: the run is at op 0 of \d+ \(evaluations fed: 0 of 6\)"):
        run.result
    x, t = run.next_input()
    run.feed(MODEL.raw(x, t))
    with pytest.raises(ValueError, match="feed: no evaluation is pending"):
        run.feed(x)
