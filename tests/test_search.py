"""S³ search: space and operators, batched evaluation, predictor, search quality, persistence,
resume after a kill, distributed equality, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import usf_fast
from usf_fast.analytic import gmm_2d
from usf_fast.search import SearchSpace, evaluate_schedules, make_metric, s3_search
from usf_fast.search.evaluate import FID, NoiseSet, ReferenceDistance
from usf_fast.search.gp import GPPredictor
from usf_fast.search.predictor import Predictor
from usf_fast.search.space import schedule_key

NS = usf_fast.NoiseScheduleVP("linear")
MODEL2D = gmm_2d().as_model(NS)
SMALL = dict(budget=60, samples=(32, 64), heldout=128, per_generation=8, proposals=64, population=8, progress=False)


def test_seeds_are_valid_presets_of_exact_nfe():
    space = SearchSpace(NS, 5)
    seeds = space.seeds()
    assert len(seeds) >= 30
    assert all(s.nfe == 5 and space.contains(s) for s in seeds)


@pytest.mark.parametrize("nfe", [1, 3, 6])
def test_mutation_and_crossover_keep_schedules_valid(nfe):
    space = SearchSpace(NS, nfe)
    rng = np.random.default_rng(0)
    pop = space.seeds() or [space.random(rng)]
    for _ in range(300):
        a = pop[int(rng.integers(0, len(pop)))]
        b = pop[int(rng.integers(0, len(pop)))]
        child = space.crossover(a, b, rng) if rng.random() < 0.3 else space.mutate(a, rng)
        assert child.nfe == nfe and space.contains(child)
        assert space.encode(child).shape == (space.encoding_size,)
        pop.append(child)
    assert len({schedule_key(s) for s in pop}) > 100  # the operators explore


def test_batched_evaluation_equals_one_at_a_time_and_the_direct_metric():
    space = SearchSpace(NS, 4)
    scheds = space.seeds()[:10]
    ns_ = NoiseSet((2,), 16, 0, "t")
    metric = ReferenceDistance()
    batched = evaluate_schedules(MODEL2D, scheds, ns_, metric, (NS.t_max, NS.t_min), chunk=4, dtype=torch.float64)
    single = [evaluate_schedules(MODEL2D, [s], ns_, metric, (NS.t_max, NS.t_min), chunk=1, dtype=torch.float64)[0]
              for s in scheds]
    ref = ns_.reference(MODEL2D, NS.t_max, NS.t_min)
    direct = [metric(usf_fast.reference_sample(MODEL2D, s, noise=ns_.noise), ref) for s in scheds]
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    np.testing.assert_allclose(batched, direct, rtol=1e-9)


def test_batched_evaluation_of_schedules_with_every_space_option_equals_the_reference_sampler():
    """Implicit correctors (fewer steps, same NFE), extra points and singlestep starts share one
    batch with plain schedules and give what `reference_sample` gives for each."""
    space = SearchSpace(NS, 5, implicit=True, extra_points=True, singlestep=True)
    rng = np.random.default_rng(3)
    scheds, s = [], space.seeds()[7]
    while len(scheds) < 12:
        s = space.mutate(s, rng)
        if any(st.corrector == "implicit" for st in s.steps) or len(scheds) % 3 == 0:
            scheds.append(s)
    assert any(len(x.steps) < 5 + x.afs for x in scheds)
    ns_ = NoiseSet((2,), 16, 0, "t")
    metric = ReferenceDistance()
    batched = evaluate_schedules(MODEL2D, scheds, ns_, metric, (NS.t_max, NS.t_min), chunk=6, dtype=torch.float64)
    ref = ns_.reference(MODEL2D, NS.t_max, NS.t_min)
    direct = [metric(usf_fast.reference_sample(MODEL2D, x, noise=ns_.noise), ref) for x in scheds]
    np.testing.assert_allclose(batched, direct, rtol=1e-9)


def test_predictor_learns_a_ranking():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = np.exp(x[:, 0] - 0.5 * x[:, 1])
    p = Predictor(6, seed=0).fit(x, y)
    assert p.tau > 0.6
    xt = rng.normal(size=(50, 6))
    from scipy.stats import kendalltau
    assert kendalltau(p.predict(xt), xt[:, 0] - 0.5 * xt[:, 1]).statistic > 0.6
    # deterministic for a seed
    np.testing.assert_array_equal(Predictor(6, seed=0).fit(x, y).predict(xt), p.predict(xt))


@pytest.mark.parametrize("nfe", [2, 5])
def test_gaussian_probe_is_the_samplers_error_on_gaussian_data(nfe):
    """The closed-form probe = sampling Gaussian data N(0, s²) with the model-based reference sampler
    and comparing with the high-accuracy ODE solution, on seeds and mutated schedules (AFS,
    correctors, relaxations)."""
    from usf_fast.analytic import GaussianMixture, reference_solution
    from usf_fast.search.probe import gaussian_probe
    space = SearchSpace(NS, nfe)
    rng = np.random.default_rng(1)
    scheds = space.seeds()[::7]
    scheds += [space.mutate(space.mutate(scheds[int(rng.integers(0, len(scheds)))], rng), rng) for _ in range(6)]
    scales = (0.05, 0.5, 2.0)
    noise = torch.ones(1, 1, dtype=torch.float64)
    for s_d in scales:
        model = GaussianMixture(torch.zeros(1, 1), torch.zeros(1, 1, 1), s_d).as_model(NS)
        exact = float(reference_solution(model, noise, NS.t_max, NS.t_min))
        for sch in scheds:
            got = gaussian_probe(sch, NS, scales=(s_d,))[0]
            x = float(usf_fast.reference_sample(model, sch, noise=noise))
            want = np.log10(abs(x / exact - 1) + 1e-8)
            assert got == pytest.approx(want, abs=1e-3 if want > -5 else 0.05), (s_d, sch.name)
    assert space.features(scheds[0]).shape == (space.feature_size,)


def test_gaussian_probe_bounds_a_diverging_schedule():
    from usf_fast.search.probe import gaussian_probe
    space = SearchSpace(NS, 3)
    s = space.seeds()[0]
    bad = s.replace(steps=[st.replace(relax="linear", relax_coef=1e3) for st in s.steps])   # the largest allowed
    v = gaussian_probe(bad, NS)
    assert np.all(np.isfinite(v)) and np.all(v <= 2.0)


def test_parents_are_diverse_and_picks_cover_every_parent():
    from usf_fast.search.s3 import _diverse_parents, _pick_per_parent
    space = SearchSpace(NS, 5)
    rng = np.random.default_rng(0)
    best = space.seeds()[3]
    fr = space.fractions(best)[1:-1]
    clones = [space.make(fr + 1e-4 * (i + 1), list(best.steps), best.afs) for i in range(6)]
    others = space.seeds()[10:40]
    ranked = [(best, 0.1)] + [(c, 0.1 + 1e-3 * i) for i, c in enumerate(clones)] + [(o, 1.0) for o in others]
    parents = _diverse_parents(ranked, 8, space)
    assert len(parents) == 8 and parents[0] is best
    assert not any(c in parents for c in clones)          # near-copies of a better parent are skipped
    # picks: one per parent first (best parent first), then a second round
    owner = [0, 0, 0, 1, 1, 2, 3, 3]
    assert sorted(owner[i] for i in _pick_per_parent(owner, 4, rng)) == [0, 1, 2, 3]
    assert len(set(_pick_per_parent(owner, 8, rng))) == 8
    scores = np.array([5.0, 1.0, 3.0, 0.0, 9.0, 1.0, 9.0, 0.5])
    picks = _pick_per_parent(owner, 4, rng, scores, screen=4)
    assert picks == [1, 3, 5, 7]                           # the predicted best of each parent


def test_improvement_predictor_learns_which_children_beat_their_parents():
    from scipy.stats import kendalltau

    from usf_fast.search.predictor import ImprovementPredictor
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    parent = np.exp(rng.normal(size=300))
    child = parent * np.exp(0.3 * (x[:, 0] - 0.5 * x[:, 1]) + 0.05 * rng.normal(size=300))
    child[:10] = np.inf                                     # failed children are just "worse"
    p = ImprovementPredictor(8, seed=0).fit(x, child, parent)
    assert p.tau > 0.4
    xt = rng.normal(size=(100, 8))
    assert kendalltau(p.predict(xt), xt[:, 0] - 0.5 * xt[:, 1]).statistic > 0.5


@pytest.mark.parametrize("predictor", ["improve", "metric", "gp"])
def test_every_predictor_screens_a_search(predictor):
    kw = dict(SMALL, budget=150)
    r = s3_search(MODEL2D, 3, seed=2, predictor=predictor, **kw)
    assert r.taus and all(-1 <= t <= 1 for t in r.taus)   # the predictor was trained and reported
    assert r.best_metric <= r.best_preset[1]


@pytest.mark.parametrize("predictor", ["gp", "improve"])
@pytest.mark.parametrize("probe", [True, False])
def test_guided_search_screens_by_the_probe_until_the_predictor_has_pairs(monkeypatch, probe, predictor):
    """The first generations (fewer than 48 parent/child pairs) are screened by the Gaussian probe's
    change from parent to child; without the probe they are drawn at random, as in plain evolution.
    Afterwards the predictor screens (its τ is reported)."""
    import usf_fast.search.s3 as s3mod
    seen, screens = [], []
    real = s3mod._pick_per_parent
    monkeypatch.setattr(s3mod, "_pick_per_parent",
                        lambda owner, n, rng, scores=None, screen=4: seen.append(scores) or screens.append(screen)
                        or real(owner, n, rng, scores, screen))
    r = s3_search(MODEL2D, 3, seed=3, **dict(SMALL, budget=150), probe=probe, predictor=predictor)
    assert seen and r.taus
    # the GP's pick is each parent's arg-max of expected improvement; the MLPs draw from their best quarter
    assert set(screens) == ({SMALL["proposals"]} if predictor == "gp" else {4})
    if probe:
        first = seen[0]
        assert first is not None and np.all(np.isfinite(first))
        assert np.ptp(first) > 0   # children differ in probe error: the screen has something to rank
    else:
        assert seen[0] is None


def test_metric_predictor_learns_a_metric_of_any_sign():
    """The regression takes log of a positive metric; a metric that can be ≤ 0 is learned as it is
    (log would give NaN targets and a predictor that ranks nothing)."""
    from scipy.stats import kendalltau
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = x[:, 0] - 0.5 * x[:, 1]            # both signs
    p = Predictor(6).fit(x, y)
    xt = rng.normal(size=(100, 6))
    pred = p.predict(xt)
    assert np.all(np.isfinite(pred))
    assert kendalltau(pred, xt[:, 0] - 0.5 * xt[:, 1]).statistic > 0.5


def test_gp_predictor_learns_a_ranking_and_ignores_irrelevant_features():
    """ARD: with 4 of 6 features pure noise the GP still ranks fresh points by the 2 that matter,
    and its length scales grow on the irrelevant ones."""
    from scipy.stats import kendalltau
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 6))
    y = np.exp(x[:, 0] - 0.5 * x[:, 1] + 0.02 * rng.normal(size=150))
    gp = GPPredictor().fit(x, y)
    assert gp.tau > 0.8
    xt = rng.normal(size=(100, 6))
    mean, std = gp.predict(xt)
    assert kendalltau(mean, xt[:, 0] - 0.5 * xt[:, 1]).statistic > 0.8
    assert np.all(std > 0)
    ls = np.exp(gp.params[0].numpy())
    assert ls[2:].min() > ls[:2].max()


def test_gp_leave_one_out_tau_is_the_refit_without_each_point():
    """The closed-form leave-one-out means (used for the reported τ) equal conditioning the GP,
    with the same hyperparameters, on every point but one."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    y = np.exp(np.sin(x[:, 0]) + x[:, 1] ** 2 / 4)
    gp = GPPredictor(steps=20).fit(x, y)
    t = (torch.as_tensor(gp.target(y)) - gp.t_mean) / gp.t_scale
    k = gp._gram(gp.xs)
    loo = []
    for i in range(len(y)):
        keep = [j for j in range(len(y)) if j != i]
        kk = k[keep][:, keep]
        loo.append(float(k[i, keep] @ torch.linalg.solve(kk, t[keep])))
    alpha = torch.cholesky_solve(t[:, None], gp.chol).squeeze(-1)
    closed = t - alpha / torch.diagonal(torch.cholesky_inverse(gp.chol))
    np.testing.assert_allclose(closed.numpy(), loo, rtol=1e-6, atol=1e-8)


def test_gp_cholesky_jitters_a_singular_kernel_and_names_a_broken_one():
    chol = GPPredictor._cholesky(torch.ones(3, 3, dtype=torch.float64))   # rank 1: duplicate schedules
    assert torch.isfinite(chol).all()
    with pytest.raises(ValueError, match="not positive definite"):
        GPPredictor._cholesky(torch.full((3, 3), float("nan"), dtype=torch.float64))


def test_gp_expected_improvement_rewards_uncertainty_and_a_better_mean():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(40, 2))
    gp = GPPredictor().fit(x, np.exp(x[:, 0]))
    near, far = np.array([[0.0, 0.0]]), np.array([[0.0, 8.0]])   # same mean trend, far is unexplored
    ref = gp.predict(near)[0]
    ei_near, ei_far = gp.expected_improvement(near, ref), gp.expected_improvement(far, ref)
    assert np.all(ei_near >= 0) and ei_far[0] > ei_near[0]
    lower = gp.expected_improvement(np.array([[-0.8, 0.0]]), ref)
    assert lower[0] > ei_near[0]
    with pytest.raises(RuntimeError, match="before fit"):
        GPPredictor().predict(near)


def test_gp_batch_believes_each_pick_so_a_batch_spreads_out():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 30)[:, None]
    gp = GPPredictor().fit(x, 1 + x[:, 0] ** 2)
    props = np.array([[2.0]] * 4 + [[1.5]])   # four copies of one unexplored idea, and one other
    mean, cov = gp.posterior(props)
    np.testing.assert_allclose(mean, gp.predict(props)[0], rtol=1e-10)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), gp.predict(props)[1], rtol=1e-6)
    ref = float(gp.targets.min())
    ei = gp.expected_improvement(props, [ref] * len(props))
    assert ei[4] < ei[0] / 5   # one at a time, the copies rank first: a top-2 would be two copies
    assert gp.batch_expected_improvement(props, ref, 2) == [0, 4]
    assert sorted(gp.batch_expected_improvement(props, ref, 9)) == [0, 1, 2, 3, 4]   # distinct, at most all
    # an idea predicted better than the best so far: believing its value as the new best is what
    # stops its copies from filling the batch
    x = np.concatenate([rng.uniform(-1, -0.4, 15), rng.uniform(0.4, 1, 15)])[:, None]
    gp = GPPredictor().fit(x, 1 + x[:, 0] ** 2)
    props = np.array([[0.0]] * 4 + [[1.6], [-1.7], [0.7]])   # copies of the unexplored minimum first
    ref = float(gp.targets.min())
    assert gp.predict(props[:1])[0][0] < ref
    assert gp.batch_expected_improvement(props, ref, 3, believe_best=False) == [0, 1, 2]
    picks = gp.batch_expected_improvement(props, ref, 3)
    assert picks[0] == 0 and not set(picks[1:]) & {1, 2, 3}


def test_predictor_use_before_fit():
    with pytest.raises(RuntimeError, match="before fit"):
        Predictor(6).predict(np.zeros((2, 6)))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch", "triton", "cuda"])
def test_batched_evaluation_on_the_gpu_equals_the_cpu(backend):
    space = SearchSpace(NS, 5)
    scheds = space.seeds()[:6] + [space.mutate(space.seeds()[i], np.random.default_rng(i)) for i in range(6)]
    ns_ = NoiseSet((2,), 64, 0, "t")
    args = (MODEL2D, scheds, ns_, ReferenceDistance(), (NS.t_max, NS.t_min))
    cpu = evaluate_schedules(*args, chunk=4, dtype=torch.float64)
    # the fused kernels store float32: the metric (an RMS error ~1e-2) then moves by ~1e-4 relative
    dtype, rtol = (torch.float32, 2e-3) if backend in ("triton", "cuda") else (torch.float64, 1e-9)
    gpu = evaluate_schedules(*args, chunk=4, dtype=dtype, backend=backend, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=rtol)


def _net_only_on(device_type: str):
    """MODEL2D's network, refusing tensors on any other device the way a real network's weights do."""
    def net(x, t):
        if x.device.type != device_type:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found {x.device} and {device_type}")
        return MODEL2D.net(x, t)
    return usf_fast.DiffusionModel(net, NS)


def test_a_model_on_another_device_or_a_wrong_shape_is_a_clear_error_before_the_search(tmp_path):
    with pytest.raises(ValueError, match=r"device cpu\) failed: Expected all tensors.*--device"):
        s3_search(_net_only_on("cuda"), 3, shape=(2,), log_path=tmp_path / "a.jsonl", **SMALL)
    assert not (tmp_path / "a.jsonl").exists()   # refused before any evaluation or log
    with pytest.raises(ValueError, match=r"one sample of shape \(3, 5\).*--shape"):
        s3_search(MODEL2D, 3, shape=(3, 5), **SMALL)


@pytest.mark.gpu
def test_search_on_the_gpu_runs_every_model_call_there_and_beats_the_best_preset():
    r = s3_search(_net_only_on("cuda"), 4, seed=0, device="cuda", shape=(2,), **SMALL)   # reference solve too
    assert r.best.nfe == 4 and math.isfinite(r.best_metric)
    assert r.best_metric <= r.best_preset[1]


def test_search_is_never_worse_than_the_best_preset_and_reports_held_out_numbers():
    r = s3_search(MODEL2D, 4, seed=0, **SMALL)
    assert r.best.nfe == 4
    assert r.best_metric <= r.best_preset[1]
    labels = [lbl for lbl, _ in r.table]
    assert any(lbl.startswith("searched") for lbl in labels) and any("unipc" in lbl for lbl in labels)
    # the reported number is the held-out one (noise seed 3 at seed 0; the search's reference solve)
    ns_ = NoiseSet((2,), 128, 3, "heldout", usf_fast.search.SearchConfig(nfe=4).reference_nfe)
    again = evaluate_schedules(MODEL2D, [r.best], ns_, ReferenceDistance(), (NS.t_max, NS.t_min))[0]
    assert again == pytest.approx(r.best_metric, rel=1e-5)


def test_search_is_deterministic_for_a_seed():
    a = s3_search(MODEL2D, 3, seed=1, **SMALL)
    b = s3_search(MODEL2D, 3, seed=1, **SMALL)
    assert a.best == b.best and a.best_metric == b.best_metric


def test_resume_from_a_complete_log_runs_nothing_new(tmp_path):
    log = tmp_path / "log.jsonl"
    a = s3_search(MODEL2D, 3, seed=2, log_path=log, **SMALL)
    b = s3_search(MODEL2D, 3, seed=2, log_path=log, resume=True, **SMALL)
    assert b.new_evaluations == 0 and a.best == b.best


@pytest.mark.parametrize("content,match", [
    ("", "missing or empty; nothing to resume"),
    ('{"type": "header", "nfe": 3, "seed": 0, "metric": "ref", "space": "x"}\n{broken\n{"type": "eval"}\n', "line 2 is corrupt"),
    ('{"type": "eval"}\n', "no header line"),
])
def test_bad_logs_on_resume(tmp_path, content, match):
    log = tmp_path / "log.jsonl"
    log.write_text(content)
    with pytest.raises(ValueError, match=match):
        s3_search(MODEL2D, 3, log_path=log, resume=True, **SMALL)


def test_resume_with_other_settings_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    s3_search(MODEL2D, 3, seed=0, log_path=log, **SMALL)
    with pytest.raises(ValueError, match="written by a search with seed=0, this one has seed=5"):
        s3_search(MODEL2D, 3, seed=5, log_path=log, resume=True, **SMALL)
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        s3_search(MODEL2D, 3, seed=0, log_path=log, **SMALL)


@pytest.mark.parametrize("kwargs,match", [
    ({"metric": "lpips"}, "metric='lpips': must be one of ref, exact, fd, fid"),
    ({"nfe": 0}, "nfe=0: must be an integer >= 1"),
    ({"budget": 0}, "budget=0"),
    ({"metric": "fid"}, "needs fid_stats="),
    ({"predictor": "mlp"}, "predictor='mlp': must be one of improve, metric, gp"),
    ({"screen": 0}, "screen=0: must be a positive integer"),
    ({"chunk": 0}, "chunk=0: must be a positive integer"),
    ({"device": "gpu0"}, "device='gpu0': not a torch device"),
])
def test_bad_search_arguments(kwargs, match):
    kw = dict(SMALL)
    nfe = kwargs.pop("nfe", 3)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        s3_search(MODEL2D, nfe, **kw)


def test_nan_model_is_a_clear_error_with_the_evaluations_logged(tmp_path):
    model = usf_fast.DiffusionModel(lambda x, t: x * float("nan"), NS)
    log = tmp_path / "log.jsonl"
    with pytest.raises(ValueError, match="produced NaN/inf"):
        s3_search(model, 3, shape=(2,), log_path=log, metric=lambda s: float(s.mean()), **SMALL)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) > 10 and all(r["metric"] is None for r in lines[1:])


def test_candidates_that_blow_up_score_inf_and_do_not_stop_the_search():
    # NaN only in a band of times between two of the reference solver's steps: the reference stays
    # finite, candidates that step into the band fail
    ref_ts = usf_fast.presets.unipc(NS, 200, order=3, lower_order_final=False).timesteps
    lo, hi = ref_ts[21], ref_ts[20]
    band = (lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))

    def net(x, t):
        bad = ((t > band[0]) & (t < band[1])).reshape(-1, 1)
        return torch.where(bad, torch.full_like(x, float("nan")), MODEL2D.net(x, t))
    model = usf_fast.DiffusionModel(net, NS, data_mean=MODEL2D.data_mean)
    hit = usf_fast.Schedule([1.0, sum(band) / 2, 0.3, 1e-3], [usf_fast.Step(), usf_fast.Step(), usf_fast.Step()])
    miss = usf_fast.presets.ddim(NS, 3)
    vals = evaluate_schedules(model, [hit, miss], NoiseSet((2,), 16, 0, "t"), ReferenceDistance(), (NS.t_max, NS.t_min))
    assert vals[0] == math.inf and math.isfinite(vals[1])
    r = s3_search(model, 3, shape=(2,), **SMALL)
    assert math.isfinite(r.best_metric)


def test_nan_reference_is_a_clear_error():
    model = usf_fast.DiffusionModel(lambda x, t: torch.where(t.reshape(-1, 1) < 0.5, x * float("nan"), x), NS)
    with pytest.raises(ValueError, match="reference solution .* has NaN/inf"):
        s3_search(model, 3, shape=(2,), **SMALL)


def test_exact_metric_and_callable_metric():
    m = make_metric("exact", MODEL2D)
    x = MODEL2D.net.gmm.sample_data(4000, torch.Generator().manual_seed(0))
    assert m(x) < 0.02
    f = make_metric(lambda s: float(s.abs().mean()))
    assert f(torch.ones(3, 2)) == 1.0
    with pytest.raises(ValueError, match="only the embedded analytic models"):
        make_metric("exact", usf_fast.DiffusionModel(lambda x, t: x, NS))


def test_fid_metric_with_local_weights(tmp_path):
    """pytorch-fid's Inception with weights from a local file (random ones here: no downloads)."""
    inc = pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid (the fid extra) is not installed")
    original = inc.load_state_dict_from_url
    torch.manual_seed(0)  # the FID Inception architecture with random weights, saved as a local file
    inception = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = inc.FIDInceptionE_1(1280)
    inception.Mixed_7c = inc.FIDInceptionE_2(2048)
    weights = tmp_path / "inception.pth"
    torch.save(inception.state_dict(), weights)
    assert inc.load_state_dict_from_url is original
    imgs = torch.rand(6, 3, 16, 16) * 2 - 1
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    fid = FID(str(stats), weights=str(weights))
    feats = fid.features(imgs)
    np.savez(stats, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    fid2 = FID(str(stats), weights=str(weights))
    assert feats.shape == (6, 2048)
    sd = torch.load(weights)
    assert torch.equal(fid2.net.blocks[0][0].conv.weight.cpu(), sd["Conv2d_1a_3x3.conv.weight"])  # loaded from the file
    assert abs(fid2(imgs)) < 1e-3                     # against its own statistics
    np.savez(stats, mu=feats.mean(0) + 1.0, sigma=np.cov(feats, rowvar=False))
    assert FID(str(stats), weights=str(weights))(imgs) == pytest.approx(2048.0, rel=1e-3)  # ‖Δμ‖² = 2048
    with pytest.raises(ValueError, match="file not found"):
        FID(str(stats), weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="need an .npz with 'mu' and 'sigma'"):
        FID(str(tmp_path / "nope.npz"), weights=str(weights))


# ---- processes: kill + resume, torchrun ----------------------------------------------------

CLI = [sys.executable, "-m", "usf_fast.cli", "search", "--model", "gmm-2d", "--nfe", "3", "--budget", "120",
       "--samples", "32", "--samples2", "64", "--heldout", "128", "--seed", "3"]


def _evals(path):
    lines = [json.loads(l) for l in open(path).read().splitlines() if l.strip()]
    return [(r["key"], r["fidelity"]) for r in lines if r.get("type") == "eval"]


def test_killed_search_resumes_without_losing_or_repeating_evaluations(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(CLI + ["--out", str(full)], check=True, capture_output=True, env=_env())
    proc = subprocess.Popen(CLI + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    log = killed / "log_nfe3.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(_evals(log)) >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(_evals(log))
    assert 40 <= n_before < len(_evals(full / "log_nfe3.jsonl")), "the kill came too late to test anything"
    r = subprocess.run(CLI + ["--out", str(killed), "--resume"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    ev = _evals(log)
    assert len(ev) == len(set(ev))                      # nothing evaluated twice
    assert set(ev) == set(_evals(full / "log_nfe3.jsonl"))  # nothing lost: same evaluations as uninterrupted
    assert json.load(open(killed / "best.json")) == json.load(open(full / "best.json"))


def test_torchrun_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(CLI + ["--out", str(one)], check=True, capture_output=True, env=_env())
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "usf_fast.cli"] + CLI[3:] + ["--out", str(two)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr   # whole: a failing rank's own message comes before torchrun's report
    assert json.load(open(two / "best.json")) == json.load(open(one / "best.json"))
    assert sorted(_evals(two / "log_nfe3.jsonl")) == sorted(_evals(one / "log_nfe3.jsonl"))


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_read_evaluations_returns_the_logged_evaluations(tmp_path):
    from usf_fast.search.log import read_evaluations
    log = tmp_path / "log.jsonl"
    r = s3_search(MODEL2D, 3, seed=4, log_path=log, **SMALL)
    every = read_evaluations(log)
    assert len(every) == r.new_evaluations and all(e["type"] == "eval" for e in every)
    s1 = read_evaluations(log, "s1")
    assert s1 and all(e["fidelity"] == "s1" for e in s1) and len(s1) < len(every)
    assert s1 == [e for e in every if e["fidelity"] == "s1"]        # in the search's order
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="line 4 is corrupt"):
        read_evaluations(log)


def test_a_dead_peer_is_one_clear_line_not_a_hang(tmp_path):
    """Two processes of a distributed search (as torchrun starts them); rank 1 dies at its first
    network call. Rank 0 reports it in one line naming --dist-timeout and exits with status 2."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                                     os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "usf_fast.cli", "search", "--model", "dead_peer:model", "--nfe", "3",
             "--budget", "8", "--samples", "8", "--samples2", "8", "--heldout", "8", "--device", "cpu",
             "--dist-timeout", "30", "--out", str(tmp_path / "out")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out0 = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2, out0[1][-2000:]
    assert "a peer process of this torchrun job is gone or stalled" in out0[1] and "Traceback" not in out0[1]
