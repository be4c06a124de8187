"""Steps with their own weights (learned coefficients, `Step.weights`): given the formula's
weights they sample as the formula step on every executor; other weights are run as written (an
independent loop checks the reference sampler, every executor is checked against it); the JSON
keeps them exactly; USFScheduler and the k-diffusion sampler run them."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from strategies import schedules
from test_conformance import EXECUTORS, MODEL, NS, _check, _noise

import usf_fast
from usf_fast import Schedule, Step
from usf_fast.program import step_weights, with_formula_weights

WEIGHTED = Schedule([1.0, 0.7, 0.4, 0.15, 0.04, 0.01],
                    [Step(), Step(order=2), Step(order=3, corrector="pseudo"), Step(order=3, prediction="noise"),
                     Step(order=2, corrector="pseudo")], afs=True, name="weighted")


def _perturbed(schedule: Schedule, seed: int, scale: float = 0.05) -> Schedule:
    """The formula's weights, each moved by a random relative amount: a schedule no formula gives."""
    rng = np.random.default_rng(seed)
    steps = []
    for st in with_formula_weights(schedule, NS).steps:
        move = lambda w: tuple(v * (1 + scale * rng.normal()) for v in w) if w is not None else None  # noqa: E731
        steps.append(st.replace(weights=move(st.weights), corrector_weights=move(st.corrector_weights)))
    return schedule.replace(steps=steps, name="perturbed")


@pytest.mark.parametrize("executor", list(EXECUTORS))
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules(NS))
def test_formula_weights_written_out_sample_as_the_formula(executor, schedule):
    run, dtype, tol = EXECUTORS[executor]
    weighted = with_formula_weights(schedule, NS)
    assert weighted.has_weights and not schedule.has_weights
    if executor.startswith("USFScheduler"):
        from test_conformance import PIPELINE_MODEL as model
    else:
        model = MODEL
    with torch.no_grad():
        a, b = run(model, schedule, _noise(dtype)), run(model, weighted, _noise(dtype))
    err = float((a.double() - b.double()).norm() / a.double().norm())
    # the weights pass through x/α and back: float64 rounding, nothing more
    assert err <= (1e-12 if dtype == torch.float64 else 1e-5), f"{executor}: {err:.3g}"


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_executor_runs_learned_weights_as_the_reference_does(executor, seed):
    _check(executor, _perturbed(WEIGHTED, seed))


def test_the_reference_sampler_applies_the_weights_as_written():
    """An independent loop over x/α for a multistep schedule without correctors: x_i/α_i =
    a·x_{i−1}/α_{i−1} + Σ w_j M_j, the model evaluated at every point (no AFS)."""
    base = Schedule(WEIGHTED.timesteps, [Step(), Step(order=2), Step(order=3), Step(order=3, prediction="noise"),
                                         Step(order=2)])
    s = _perturbed(base, 3, scale=0.2)
    x = _noise(torch.float64)
    ts = s.timesteps
    alpha = [float(NS.marginal_alpha(t)) for t in ts]
    eps, x0 = {}, {}
    for i, st in enumerate(s.steps, 1):
        j = i - 1
        eps[j], x0[j] = MODEL.predict(x, ts[j])
        m = x0 if st.prediction == "data" else eps
        y = st.weights[0] * x / alpha[st.start]
        for w, p in zip(st.weights[1:], (st.start,) + st.points):
            y = y + w * m[p]
        x = y * alpha[i]
    got = usf_fast.sample(MODEL, s, _noise(torch.float64), backend="reference")
    assert float((got - x).norm() / x.norm()) < 1e-12
    # and the weights matter: the formula schedule lands elsewhere
    formula = usf_fast.sample(MODEL, base, _noise(torch.float64), backend="reference")
    assert float((formula - x).norm() / x.norm()) > 1e-3


def test_weights_round_trip_through_json_exactly():
    s = _perturbed(WEIGHTED, 5)
    text = s.to_json()
    d = json.loads(text)
    assert d["version"] == 2 and "weights" in d["steps"][1]
    back = Schedule.from_json(text)
    assert back == s and [st.weights for st in back.steps] == [st.weights for st in s.steps]
    assert [st.corrector_weights for st in back.steps] == [st.corrector_weights for st in s.steps]
    a = usf_fast.sample(MODEL, s, _noise(torch.float64), backend="torch")
    assert torch.equal(a, usf_fast.sample(MODEL, back, _noise(torch.float64), backend="torch"))
    # a schedule without weights keeps its version-1 JSON, key for key
    plain = json.loads(WEIGHTED.to_json())
    assert plain["version"] == 1 and all("weights" not in st and "corrector_weights" not in st for st in plain["steps"])


@pytest.mark.parametrize("change,match", [
    (lambda d: d["steps"][1].update(weights=[1.0, 0.5]), r"steps\[1\].weights: 2 numbers, this step needs 3"),
    (lambda d: d["steps"][1].update(weights=[1.0, float("nan"), 0.1]), r"steps\[1\].weights=.*finite"),
    (lambda d: d["steps"][1].update(weights=[1.0, 1e9, 0.1]), r"\|weight\| must be <= 1e\+06"),
    (lambda d: d["steps"][1].update(corrector_weights=[1.0, 0.5, 0.1, 0.2]), "without a corrector"),
    (lambda d: d["steps"][2].update(corrector_weights=[1.0, 0.5]), r"corrector_weights: 2 numbers, this step needs 5"),
    (lambda d: d["steps"][1].update(weights="1 2 3"), "must be a list of 3 numbers"),
    (lambda d: d.update(version=1) or d["steps"][1].update(weights=[1.0, 0.5, 0.1]), "version=1 has no step weights"),
    (lambda d: d.update(version=3), "reads versions 1, 2"),
])
def test_bad_weights_are_refused_by_name(change, match):
    d = dict(json.loads(WEIGHTED.to_json()), version=2)
    change(d)
    with pytest.raises(ValueError, match=match):
        Schedule.from_dict(d)


def test_a_tail_keeps_the_weights_of_steps_whose_history_it_keeps():
    s = _perturbed(WEIGHTED, 7)
    tail = s.tail(2)   # from the evaluation at point 2 (AFS: point 0 is not evaluated)
    cut = s.num_steps - tail.num_steps
    for st, orig in zip(tail.steps, s.steps[cut:]):
        kept = st.start + cut == orig.start and tuple(p + cut for p in st.points) == orig.points
        assert (st.weights == orig.weights) if kept else st.weights is None


def test_the_summary_shows_the_weights():
    assert "weights +" in _perturbed(WEIGHTED, 0).summary()


def test_k_diffusion_sampler_runs_learned_weights_as_usf_fast_sample():
    """The VP model through k-diffusion's σ = e^{−λ} (states x/α): the weights on x/α carry over."""
    from usf_fast.adapters import k_diffusion as ukd
    from usf_fast.models import gmm_image
    vp = usf_fast.NoiseScheduleVP("linear")
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2)
    base = Schedule([1.0, 0.6, 0.3, 0.1, 0.01], [Step(), Step(order=2, corrector="pseudo"), Step(order=3),
                                                 Step(order=2, prediction="noise")],
                    denoise_to_zero=True, meta={"noise_schedule": vp.fingerprint()})
    rng = np.random.default_rng(0)
    steps = [st.replace(weights=tuple(v * (1 + 0.1 * rng.normal()) for v in st.weights))
             for st in with_formula_weights(base, vp).steps]
    s = base.replace(steps=steps)
    sig = ukd.sigmas(s)
    noise = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ve = usf_fast.NoiseScheduleEDM(float(sig[-2]), float(sig[0]))
    got = ukd.sampler(schedule=s)(mix.as_model(ve, "x0").net, noise / float(vp.marginal_alpha(1.0)), sig)
    want = usf_fast.sample(mix.as_model(vp, "eps"), s, noise, backend="reference")
    assert float((got - want).norm() / want.norm()) < 1e-8
    other = usf_fast.sample(mix.as_model(vp, "eps"), base, noise, backend="reference")
    assert float((other - want).norm() / want.norm()) > 1e-4


def test_step_weights_of_a_weighted_step_are_its_own():
    s = _perturbed(WEIGHTED, 2)
    ts = np.asarray(s.timesteps)
    alpha = NS.marginal_alpha(ts)
    for i, (st, (pred, corr)) in enumerate(zip(s.steps, step_weights(s, NS)), 1):
        np.testing.assert_allclose(pred.a, st.weights[0] * alpha[i] / alpha[st.start], rtol=1e-15)
        np.testing.assert_allclose(pred.w, np.array(st.weights[1:]) * alpha[i], rtol=1e-15)
        assert (corr is None) == (st.corrector_weights is None)
