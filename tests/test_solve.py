"""The solve stage (usf_fast.search.solve): least squares along the student's trajectory recovers
known weights, the dense teacher interpolates the reference, Nelder–Mead over times never ends
worse than its start, and a search with `solve` returns a schedule with learned weights that runs
at its NFE."""
import os
import time

import numpy as np
import pytest
import torch

import usf_fast
from usf_fast import Schedule, Step
from usf_fast.models import gmm_image
from usf_fast.program import with_formula_weights
from usf_fast.search import s3_search
from usf_fast.search.config import SearchConfig
from usf_fast.search.solve import (DenseTeacher, fit_step, other_prediction, past, solve_times, solve_weights,
                                   teacher_states)
from usf_fast.search.solve import twin as twin_of

NS = usf_fast.NoiseScheduleVP("linear")
SCALES = torch.linspace(0.2, 2.0, 12, dtype=torch.float64).reshape(3, 2, 2)


def _gaussian(ns=NS) -> usf_fast.DiffusionModel:
    """Exact ε̂ of data N(0, diag(s²)) with a different s per element: linear in x, but each
    element on its own scale, so a step's inputs are linearly independent."""
    s2 = SCALES ** 2

    def net(x, t):
        shape = (-1,) + (1,) * (x.dim() - 1)
        a, s = ns.marginal_alpha(t).view(shape), ns.marginal_std(t).view(shape)
        return x * s / (a * a * s2 + s * s)
    return usf_fast.DiffusionModel(net, ns, "eps", sample_shape=(3, 2, 2))


def _noise(n, seed=0):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


BASE = Schedule([1.0, 0.6, 0.3, 0.12, 0.04, 0.01], [Step(), Step(order=2), Step(order=3, corrector="pseudo"),
                                                    Step(order=3, prediction="noise"), Step(order=2)], afs=True)


def test_fit_step_is_least_squares_pulled_to_the_prior():
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3)]
    true = np.array([0.7, -1.2, 0.4])
    target = sum(c * v for c, v in zip(true, inputs))
    np.testing.assert_allclose(fit_step(inputs, target, np.zeros(3), 0.0), true, rtol=1e-10)
    prior = np.array([1.0, 1.0, 1.0])
    strong = fit_step(inputs, target, prior, 1e6)
    np.testing.assert_allclose(strong, prior, atol=1e-4)   # a strong ridge keeps the prior


def test_the_fit_and_the_deadline_are_the_processes_sums():
    """Under torchrun each process holds part of the samples: fit_step sums the normal equations
    (here process 1's are handed over by the `total` a process group would run), so the weights are
    the whole sample's; `past` stops every process when one of them is past its deadline."""
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(80, generator=g, dtype=torch.float64) for _ in range(3)]
    target = 0.7 * inputs[0] - 1.2 * inputs[1] + 0.3 * torch.randn(80, generator=g, dtype=torch.float64)
    prior, ridge = np.array([1.0, -1.0, 0.5]), 0.05
    whole = fit_step(inputs, target, prior, ridge)
    part0, part1 = [v[:30] for v in inputs], [v[30:] for v in inputs]
    other = {}
    fit_step(part1, target[30:], prior, ridge, total=lambda t: other.setdefault("gb", t.clone()))
    summed = fit_step(part0, target[:30], prior, ridge, total=lambda t: t + other["gb"])
    np.testing.assert_allclose(summed, whole, rtol=1e-12)
    assert np.abs(fit_step(part0, target[:30], prior, ridge) - whole).max() > 1e-3   # a part alone is not it
    later = time.perf_counter() + 3600
    assert not past(later) and not past(later, total=lambda t: t)
    assert past(later, total=lambda t: t + 1.0)   # another process is past its deadline


def test_the_solve_stage_splits_over_processes_unless_there_are_fewer_blocks():
    """The printed bound of the solve stage: the same for 2 processes as for 1 when the noise
    splits (the processes share it), twice one process's when there is one block per prompt set
    (16 noises, 16 prompts: every process runs the whole stage)."""
    cfg = SearchConfig(nfe=5, solve=4, solve_samples=16, solve_teacher=10, solve_other_prediction=False)
    one = cfg.cost_estimate(20)["solve"]
    assert cfg.cost_estimate(20, processes=2)["solve"] == one
    assert cfg.cost_estimate(20, processes=2, check_rows=16)["solve"] == 2 * cfg.cost_estimate(20, check_rows=16)["solve"]


def test_the_student_runs_in_the_search_dtype_and_the_teacher_in_the_reference_dtype(tmp_path, monkeypatch):
    """Within the solve stage the network sees float64 only for the teacher ((solve_teacher + 1)
    rows per training noise) and float32, the search's dtype, for every student trajectory."""
    from usf_fast.search import s3 as s3mod
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    rows = {}
    net, inside = mix.net, [False]

    def spy(x, t):
        if inside[0]:
            rows[x.dtype] = rows.get(x.dtype, 0) + x.shape[0]
        return net(x, t)
    mix.net = spy
    solve = s3mod.S3Search.solve

    def solving(self, finalists):
        inside[0] = True
        try:
            return solve(self, finalists)
        finally:
            inside[0] = False
    monkeypatch.setattr(s3mod.S3Search, "solve", solving)
    s3_search(mix, 4, budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=3, solve_samples=16,
              solve_teacher=10, progress=False, log_path=os.path.join(tmp_path, "log.jsonl"))
    assert rows[torch.float64] == (10 + 1) * 16
    assert rows[torch.float32] > 0 and rows[torch.float32] % (4 * 16) == 0


def _random_linear() -> usf_fast.DiffusionModel:
    """ε̂ = x·W(t), W(t) = W0 + t·W1 random: linear, and each state and output a different random
    map of the noise, so a step's inputs are well-conditioned columns."""
    g = torch.Generator().manual_seed(11)
    w0 = torch.eye(12, dtype=torch.float64) + 0.3 * torch.randn(12, 12, generator=g, dtype=torch.float64)
    w1 = 0.3 * torch.randn(12, 12, generator=g, dtype=torch.float64)

    def net(x, t):
        flat = x.reshape(x.shape[0], 12)
        return (flat @ w0 + t.view(-1, 1) * (flat @ w1)).reshape(x.shape)
    return usf_fast.DiffusionModel(net, NS, "eps", sample_shape=(3, 2, 2))


def test_the_solve_recovers_known_weights_on_a_linear_problem():
    """The teacher is a schedule with known (non-formula) weights; solving the formula schedule of
    the same structure against its states gives those weights back."""
    model = _random_linear()
    rng = np.random.default_rng(0)
    # no AFS (its x̂0 is the zero data mean: that weight is free) and no corrector (the teacher has
    # no predicted states, so a corrected step's predictor is fitted to the corrected state: the
    # corrector's inputs then differ from the teacher's)
    base = BASE.replace(afs=False, steps=[st.replace(corrector="none") for st in BASE.steps])
    true = with_formula_weights(base, NS)
    true = true.replace(steps=[st.replace(weights=tuple(v * (1 + 0.1 * rng.normal()) for v in st.weights),
                                          corrector_weights=None if st.corrector_weights is None else
                                          tuple(v * (1 + 0.1 * rng.normal()) for v in st.corrector_weights))
                               for st in true.steps])
    noise = _noise(64)
    states = {}
    usf_fast.sample(model, true, noise, backend="reference", callback=lambda i, t, x: states.update({i: x}))
    teacher = torch.stack([states[i] for i in range(1, base.num_steps + 1)])
    solved = solve_weights(model, base, noise, teacher, ridge=0.0)
    for st, want in zip(solved.steps, true.steps):
        np.testing.assert_allclose(st.weights, want.weights, rtol=1e-7)
    out = usf_fast.sample(model, solved, _noise(16, 1), backend="reference")
    ref = usf_fast.sample(model, true, _noise(16, 1), backend="reference")
    assert float((out - ref).norm() / ref.norm()) < 1e-7
    assert solved.nfe == base.nfe


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_the_dense_teacher_is_the_reference_between_its_nodes(kind):
    """Both teachers (the merged grid, the dense interpolant) against a fine merged-grid solve; on
    flow the reference's λ steps vary by orders of magnitude (time-quadratic spacing)."""
    ns = NS if kind == "vp" else usf_fast.NoiseScheduleFlow()
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(ns)
    noise = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sched = usf_fast.presets.unipc(ns, 5, spacing="time_uniform")
    exact = teacher_states(mix, sched, noise, steps=400)
    errs = []
    for steps in (25, 50):
        dense = DenseTeacher(mix, noise, sched.timesteps[0], sched.timesteps[-1], steps=steps)
        errs.append(float((dense.states(sched.timesteps[1:]) - exact).pow(2).mean().sqrt()))
        merged = teacher_states(mix, sched, noise, steps=steps)
        errs.append(float((merged - exact).pow(2).mean().sqrt()))
    assert max(errs[2:]) < 2e-3 and errs[2] < errs[0] / 4 and errs[3] < errs[1] / 4, errs   # high order


def test_solved_schedules_beat_their_formula_and_times_help():
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    noise = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    test = torch.randn(128, 2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    start = usf_fast.presets.unipc(NS, 5, order=3, afs=True)
    teacher = DenseTeacher(mix, noise, start.timesteps[0], start.timesteps[-1], steps=60)
    ref = usf_fast.metrics.reference_samples(mix, test, start.timesteps[0], start.timesteps[-1], nfe=200)

    def err(s):
        return float((usf_fast.sample(mix, s, test, backend="torch") - ref).pow(2).mean().sqrt())
    weights_only = solve_weights(mix, start, noise, teacher)
    with_times = solve_times(mix, start, noise, teacher, evaluations=25)
    assert err(weights_only) < 0.8 * err(start)
    assert err(with_times) < err(weights_only)
    assert with_times.nfe == start.nfe and with_times.has_weights


def test_a_search_with_a_solve_stage(tmp_path):
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=6, solve_samples=16,
                solve_teacher=20, progress=False, log_path=os.path.join(tmp_path, "log.jsonl"))
    calls = []
    net = mix.net
    mix.net = lambda x, t: calls.append(x.shape[0]) or net(x, t)
    r = s3_search(mix, 4, **opts)
    assert any("learned weights" in lbl for lbl, _ in r.table)
    est = SearchConfig(nfe=4, **{k: v for k, v in opts.items() if k not in ("progress", "log_path")}).cost_estimate(
        len(usf_fast.search.s3.preset_candidates(NS, 4)))
    assert 0 < r.cost["solve"] <= est["solve"]
    assert r.cost["total"] == sum(calls) and sum(calls) <= est["total"]
    calls.clear()
    usf_fast.sample(mix, r.best, torch.zeros(2, 2, 4, 4))
    assert len(calls) == 4 == r.best.nfe


def _spy_on_to_solve(monkeypatch) -> dict:
    """What `S3Search.to_solve` chose (`out`), from which finalists, and the preset best on stage
    1's noise (`best`), filled in when the search calls it."""
    from usf_fast.search import s3 as s3mod
    seen = {}
    to_solve = s3mod.S3Search.to_solve

    def spy(self, finalists):
        out = to_solve(self, finalists)
        every = [s for _, s in self.presets]
        screen = self.evaluate(every, "s1", "final", count=False)
        best = every[int(np.nanargmin(screen))]
        # the best preset with the other prediction on the same noise (read back: the search checked it), and
        # the reference's own size there
        twin = None
        if self.config.solve_other_prediction:
            assert (s3mod.schedule_key(twin_of(best, self.ns)), "s1" + self.ref_tag) in self.cache
            twin = self.evaluate([twin_of(best, self.ns)], "s1", "final", count=False)[0]
        ref = self.sets["s1"].reference(self.model, self.space.t_start, self.space.t_end, self.device)
        seen.update(out=out, finalists=finalists, best=best, twin=twin, ref_rms=float(ref.double().pow(2).mean().sqrt()))
        return out
    monkeypatch.setattr(s3mod.S3Search, "to_solve", spy)
    return seen


def test_solve_presets_fits_the_best_presets_too(tmp_path, monkeypatch):
    """solve_presets=1: the solve stage fits the best finalist and, besides it, the preset that
    scores best on stage 1's noise (not one of the finalists); both solved schedules reach the
    held-out table and the rows stay within the estimate, which counts both."""
    from usf_fast.search import s3 as s3mod
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=4, solve_presets=1,
                solve_other_prediction=False, solve_samples=16, solve_teacher=20, progress=False,
                log_path=os.path.join(tmp_path, "log.jsonl"))
    seen = _spy_on_to_solve(monkeypatch)
    r = s3_search(mix, 4, **opts)
    out, finalists = seen["out"], seen["finalists"]
    keys = [s3mod.schedule_key(s) for s in out]
    assert len(out) == 2 and len(set(keys)) == 2 and out[0] is finalists[0]
    best_key = s3mod.schedule_key(seen["best"])
    # the best preset, unless it is the finalist already: then the next one
    assert keys[1] == best_key or keys[0] == best_key
    assert sum("learned weights" in lbl for lbl, _ in r.table) == 2
    est = SearchConfig(nfe=4, **{k: v for k, v in opts.items() if k not in ("progress", "log_path")}).cost_estimate(
        len(usf_fast.search.s3.preset_candidates(NS, 4)))
    one = SearchConfig(nfe=4, **dict({k: v for k, v in opts.items() if k not in ("progress", "log_path")}, solve_presets=0)
                       ).cost_estimate(len(usf_fast.search.s3.preset_candidates(NS, 4)))
    assert est["solve"] - one["solve"] == 4 * 4 * 16   # one more schedule: trials × NFE × samples
    for phase in ("solve", "heldout", "total"):
        assert 0 < r.cost[phase] <= est[phase], phase


def test_solve_finalists_0_solves_the_best_preset_alone(tmp_path, monkeypatch):
    """solve_finalists=0: the solve stage fits the preset best on stage 1's noise and no finalist
    (S4S-style: one structure, all of the stage's trials); the estimate counts that one schedule."""
    from usf_fast.search import s3 as s3mod
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=4, solve_finalists=0,
                solve_other_prediction=False, solve_samples=16, solve_teacher=20, progress=False,
                log_path=os.path.join(tmp_path, "log.jsonl"))
    seen = _spy_on_to_solve(monkeypatch)
    r = s3_search(mix, 4, **opts)
    assert [s3mod.schedule_key(s) for s in seen["out"]] == [s3mod.schedule_key(seen["best"])]
    assert sum("learned weights" in lbl for lbl, _ in r.table) == 1
    cfg = {k: v for k, v in opts.items() if k not in ("progress", "log_path")}
    n = len(usf_fast.search.s3.preset_candidates(NS, 4))
    est = SearchConfig(nfe=4, **cfg).cost_estimate(n)
    both = SearchConfig(nfe=4, **dict(cfg, solve_finalists=1)).cost_estimate(n)
    assert both["solve"] - est["solve"] == 4 * 4 * 16   # one schedule fewer: trials × NFE × samples
    for phase in ("solve", "heldout", "total"):
        assert 0 < r.cost[phase] <= est[phase], phase


def test_other_prediction_switches_every_step_to_the_other_presets_formula():
    """UniPC (data prediction) becomes UniPC with noise prediction and back, DPM-Solver++ becomes
    DPM-Solver: the same schedules the presets build; a schedule with learned weights is refused."""
    from usf_fast import presets as P
    from usf_fast.search.space import schedule_key
    for order in (2, 3):
        for afs in (False, True):
            data = P.unipc(NS, 5, order=order, spacing="time_quadratic", afs=afs)
            noise = P.unipc(NS, 5, order=order, spacing="time_quadratic", afs=afs, prediction="noise")
            assert schedule_key(other_prediction(data)) == schedule_key(noise)
            assert schedule_key(other_prediction(noise)) == schedule_key(data)
    assert (schedule_key(other_prediction(P.dpm_solver_pp(NS, 5, order=3)))
            == schedule_key(P.dpm_solver(NS, 5, order=3, method="multistep")))
    learned = with_formula_weights(P.unipc(NS, 5), NS)
    with pytest.raises(ValueError, match="other_prediction: the schedule has learned weights"):
        other_prediction(learned)


def test_the_twin_is_unipc3_with_the_other_prediction_at_the_presets_times():
    """A preset's twin: UniPC-3 bh2 with the other prediction, its times and AFS; of UniPC-3 itself
    exactly `other_prediction`."""
    from usf_fast import presets as P
    from usf_fast.search.space import schedule_key
    dpm = P.dpm_solver_pp(NS, 5, order=3, spacing="time_quadratic", afs=True)
    t = twin_of(dpm, NS)
    assert t.timesteps == dpm.timesteps and t.afs and t.nfe == 5
    assert schedule_key(t) == schedule_key(P.unipc(NS, 5, order=3, prediction="noise", timesteps=list(dpm.timesteps),
                                                   afs=True))
    u3 = P.unipc(NS, 5, order=3, spacing="logSNR")
    assert schedule_key(twin_of(u3, NS)) == schedule_key(other_prediction(u3))
    bh1 = P.unipc(NS, 5, order=3, variant="bh1", spacing="logSNR")   # the twin is bh2 whatever the preset's variant
    assert schedule_key(twin_of(bh1, NS)) == schedule_key(other_prediction(u3)) != schedule_key(other_prediction(bh1))
    # every preset a search compares, on VP, flow and EDM, small NFE too: a twin of the same NFE, times and AFS
    for ns in (NS, usf_fast.NoiseScheduleFlow(), usf_fast.NoiseScheduleEDM()):
        for nfe in (1, 2, 5):
            for _, s in usf_fast.search.s3.preset_candidates(ns, nfe):
                t = twin_of(s, ns)
                assert (t.nfe, t.timesteps, t.afs) == (s.nfe, s.timesteps, s.afs)
                assert t.meta["options"]["spacing"] == s.meta["options"]["spacing"]
    ddim = P.ddim(NS, 5)
    assert {st.prediction for st in twin_of(ddim, NS).steps} == {"noise"} and max(st.order for st in twin_of(ddim, NS).steps) == 3


def test_the_solve_stage_fits_the_best_preset_with_the_other_prediction_too(tmp_path, monkeypatch):
    """solve_other_prediction (the default): besides the finalist and the best preset, the best
    preset with every step's prediction switched is solved and reaches the held-out table; the
    estimate counts its trials and its check on stage 1's noise, and holds."""
    from usf_fast.search import s3 as s3mod
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=4, solve_samples=16,
                solve_teacher=20, progress=False, log_path=os.path.join(tmp_path, "log.jsonl"))
    seen = _spy_on_to_solve(monkeypatch)
    r = s3_search(mix, 4, **opts)
    out, keys = seen["out"], [s3mod.schedule_key(s) for s in seen["out"]]
    assert len(out) == 3 and len(set(keys)) == 3 and seen["twin"] < 10 * seen["ref_rms"]
    assert keys[2] == s3mod.schedule_key(twin_of(out[1], NS))
    assert {st.prediction for st in out[2].steps} != {st.prediction for st in out[1].steps}
    assert sum("learned weights" in lbl for lbl, _ in r.table) == 3
    cfg = {k: v for k, v in opts.items() if k not in ("progress", "log_path")}
    n = len(s3mod.preset_candidates(NS, 4))
    est = SearchConfig(nfe=4, **cfg).cost_estimate(n)
    one = SearchConfig(nfe=4, **dict(cfg, solve_other_prediction=False)).cost_estimate(n)
    assert est["solve"] - one["solve"] == 4 * 4 * 16 + 8 * 4   # its trials, and its check on stage 1's 8 samples
    for phase in ("solve", "heldout", "total"):
        assert 0 < r.cost[phase] <= est[phase], phase
    # killed after the solve stage: a resume reads the three solved schedules back, not one row solved again
    log = opts["log_path"]
    assert [rec["trials"] for rec in _records(log, "solved")] == [4, 4, 4]
    kept = [ln for ln in open(log).read().splitlines() if '"type": "result"' not in ln]
    open(log, "w").write("\n".join(kept) + "\n")
    again = s3_search(mix, 4, resume=True, **opts)
    assert again.cost.get("solve", 0) == 0 and again.best.to_dict() == r.best.to_dict()


def test_an_other_prediction_that_diverges_is_not_solved(tmp_path, monkeypatch):
    """On a flow model UniPC's noise prediction diverges (the presets warn): the best preset's
    other prediction, far from the reference on stage 1's noise, is left out of the solve stage,
    which fits the finalist and the preset alone."""
    from usf_fast.search import s3 as s3mod
    flow = usf_fast.NoiseScheduleFlow()
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(flow)
    seen = _spy_on_to_solve(monkeypatch)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=4, solve_samples=16, solve_teacher=20)
    r = s3_search(mix, 4, progress=False, log_path=os.path.join(tmp_path, "log.jsonl"), **opts)
    assert not seen["twin"] < s3mod.DIVERGED * seen["ref_rms"]   # it did diverge
    assert len(seen["out"]) == 2 and all(st.prediction == "data" for s in seen["out"] for st in s.steps)
    assert sum("learned weights" in lbl for lbl, _ in r.table) == 2
    # its 4 trials went to the two others (4 × 3 // 2 = 6 each), within the printed bound
    assert [rec["trials"] for rec in _records(os.path.join(tmp_path, "log.jsonl"), "solved")] == [6, 6]
    est = SearchConfig(nfe=4, **opts).cost_estimate(len(s3mod.preset_candidates(flow, 4)))
    for phase in ("solve", "total"):
        assert 0 < r.cost[phase] <= est[phase], phase


def test_the_default_solves_the_best_preset_too_and_solve_0_turns_the_stage_off():
    """solve_presets left out: 1 with a solve stage, 0 without (so solve=0 alone is not refused)."""
    assert SearchConfig(nfe=5).solve >= 1 and SearchConfig(nfe=5).presets_solved == 1
    assert SearchConfig(nfe=5, solve=0).presets_solved == 0
    assert SearchConfig(nfe=5, solve=4, solve_presets=0).presets_solved == 0
    assert SearchConfig(nfe=5, solve=4, solve_presets=2).presets_solved == 2


def _solving(tmp_path, **extra):
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    calls = []
    net = mix.net
    mix.net = lambda x, t: calls.append(x.shape[0]) or net(x, t)
    opts = dict(budget=12, samples=(8, 16), heldout=32, heldout_presets=3, solve=4, solve_presets=1, solve_samples=16,
                solve_teacher=20, progress=False, log_path=os.path.join(tmp_path, "log.jsonl"),
                **dict(dict(solve_other_prediction=False), **extra))
    return mix, calls, opts


def _records(path, kind):
    import json
    return [r for r in map(json.loads, open(path).read().splitlines()) if r.get("type") == kind]


def test_a_resumed_search_reads_its_solved_schedules_back(tmp_path):
    """Each solved schedule is logged as it is finished; a search killed after the solve stage
    (here: its result record removed) resumes without solving again — not one row in the solve
    phase — and returns the same schedule."""
    mix, calls, opts = _solving(tmp_path)
    first = s3_search(mix, 4, **opts)
    log = opts["log_path"]
    assert len(_records(log, "solved")) == 2 and first.cost["solve"] > 0
    lines = [ln for ln in open(log).read().splitlines() if '"type": "result"' not in ln]
    open(log, "w").write("\n".join(lines) + "\n")
    calls.clear()
    again = s3_search(mix, 4, resume=True, **opts)
    assert again.cost.get("solve", 0) == 0 and again.best.to_dict() == first.best.to_dict()
    assert len(_records(log, "solved")) == 2 and _records(log, "result")


def test_max_minutes_in_the_solve_stage_stops_early_and_a_resume_finishes_it(tmp_path, monkeypatch):
    """A deadline that passes during a schedule's trials stops the search early: that schedule is
    not logged (a half-tuned schedule is never read back), the log has no result, and a resume
    reads the finished one back and solves the other."""
    from usf_fast.search import s3 as s3mod
    from usf_fast.search import distributed as distmod   # where the deadline is read (`distributed.past`)
    mix, calls, opts = _solving(tmp_path, max_minutes=60)
    real = s3mod.solve_times
    started = []

    clock = distmod.time.perf_counter

    def late(*a, **k):   # the search's deadline is handed down; it passes once the second schedule starts
        assert k["deadline"] is not None and k["deadline"] > clock()
        started.append(1)
        if len(started) > 1:
            monkeypatch.setattr(distmod.time, "perf_counter", lambda: k["deadline"] + 1.0)
        return real(*a, **k)
    monkeypatch.setattr(s3mod, "solve_times", late)
    cut = s3_search(mix, 4, **opts)
    log = opts["log_path"]
    assert len(started) == 2 and len(_records(log, "solved")) == 1 and not _records(log, "result")
    assert sum("learned weights" in lbl for lbl, _ in cut.table) == 1
    monkeypatch.setattr(s3mod, "solve_times", real)
    monkeypatch.setattr(distmod.time, "perf_counter", clock)
    calls.clear()
    done = s3_search(mix, 4, resume=True, **opts)
    assert len(_records(log, "solved")) == 2 and _records(log, "result")
    assert sum("learned weights" in lbl for lbl, _ in done.table) == 2
    # one schedule solved now: the teacher and its trials, not the first one's again
    teacher = (opts["solve_teacher"] + 1) * opts["solve_samples"]
    assert done.cost["solve"] <= teacher + opts["solve"] * 4 * opts["solve_samples"]
    assert sum(calls) == done.cost["total"]


def test_a_damaged_solved_line_is_named(tmp_path):
    """A 'solved' line whose schedule does not parse stops the resume with one message naming the
    log and what to do, not a bare schedule error."""
    import json
    mix, _, opts = _solving(tmp_path)
    s3_search(mix, 4, **opts)
    log = opts["log_path"]
    lines = []
    for ln in open(log).read().splitlines():
        rec = json.loads(ln)
        if rec.get("type") == "result":
            continue
        if rec.get("type") == "solved":
            rec["schedule"] = {"oops": 1}
        lines.append(json.dumps(rec))
    open(log, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"log .*log.jsonl: its line 1 of type 'solved' holds no valid schedule "
                                         r"\(schedule JSON: .*\); delete that line and resume"):
        s3_search(mix, 4, resume=True, **opts)


@pytest.mark.parametrize("heldout_presets", [None, 1000])
def test_solved_presets_stay_within_the_estimate_when_the_table_does_not_screen(tmp_path, heldout_presets):
    """With every preset in the held-out table (no screen there) the solve stage ranks the presets
    itself: billed to and counted in its phase; the solved schedules in the table are counted too."""
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    opts = dict(budget=12, samples=(8, 16), heldout=16, heldout_presets=heldout_presets, solve=3, solve_presets=3,
                solve_samples=8, solve_teacher=10, progress=False)
    r = s3_search(mix, 4, log_path=os.path.join(tmp_path, "log.jsonl"), **opts)
    est = SearchConfig(nfe=4, **{k: v for k, v in opts.items() if k != "progress"}).cost_estimate(
        len(usf_fast.search.s3.preset_candidates(NS, 4)))
    # the finalist, three presets and each preset's other prediction (unless it is a solved one already)
    assert 5 <= sum("learned weights" in lbl for lbl, _ in r.table) <= 7
    for phase in ("solve", "heldout", "total"):
        assert 0 < r.cost[phase] <= est[phase], phase


@pytest.mark.parametrize("opts,match", [
    (dict(solve=-1), "solve=-1: must be an integer >= 0"),
    (dict(solve=1.5), "solve=1.5: must be an integer >= 0"),
    (dict(solve=4, solve_samples=0), "solve_samples=0"),
    (dict(solve=4, solve_ridge=float("nan")), "solve_ridge=nan: must be a finite number >= 0"),
    (dict(solve=4, solve_presets=-1), "solve_presets=-1: must be an integer >= 0"),
    (dict(solve=4, solve_presets=True), "solve_presets=True: must be an integer >= 0"),
    (dict(solve=0, solve_presets=1), "solve_presets=1: the solve stage is off"),
    (dict(solve=4, solve_finalists=-1), "solve_finalists=-1: must be an integer >= 0"),
    (dict(solve=4, solve_finalists=0, solve_presets=0), "solve_finalists=0 with solve_presets=0: .* would fit nothing"),
])
def test_bad_solve_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(nfe=5, **opts)


def test_times_alone_are_tuned_without_weights():
    """weights=False (the LD3-style peer): the formula's weights at better times, never worse on
    the training noise than the times it started from."""
    from usf_fast.search.solve import tune_times
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    noise = torch.randn(32, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    start = usf_fast.presets.unipc(NS, 4, order=3)
    teacher = DenseTeacher(mix, noise, start.timesteps[0], start.timesteps[-1], steps=40)
    s, err = tune_times(mix, start, noise, teacher, evaluations=15, weights=False)
    _, err0 = tune_times(mix, start, noise, teacher, evaluations=1, weights=False)
    assert not s.has_weights and s.timesteps != start.timesteps and s.nfe == start.nfe
    assert err < err0


def test_every_trial_of_the_times_is_run_on_a_flow_schedule():
    """On a flow schedule the interior λ-fractions of a time-uniform preset lie within a few
    hundredths of one another: Nelder–Mead moves the gaps between them (not the fractions), so
    none of its points is an unordered time set it would have to throw away — `evaluations` trials
    are really run (`evaluations` × NFE network rows per sample), and they find better times than
    the preset's on the training noise."""
    from usf_fast.noise_schedules import NoiseScheduleFlow
    from usf_fast.search.solve import tune_times
    ns = NoiseScheduleFlow()
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(ns)
    noise = torch.randn(32, 2, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    start = usf_fast.presets.unipc(ns, 5, order=2, spacing="time_uniform", afs=True)
    lam = np.asarray(ns.marginal_lambda(np.asarray(start.timesteps)))
    assert np.diff(lam[1:-1]).min() / (lam[-1] - lam[0]) < 0.05   # packed: a 0.05 move of one would cross another
    teacher = DenseTeacher(mix, noise, start.timesteps[0], start.timesteps[-1], steps=40)
    _, err0 = tune_times(mix, start, noise, teacher, evaluations=1)
    rows = mix.rows
    s, err = tune_times(mix, start, noise, teacher, evaluations=12)
    assert mix.rows - rows == 12 * start.nfe * noise.shape[0]
    assert err < 0.9 * err0 and s.timesteps != start.timesteps


@pytest.mark.gpu
def test_the_solve_fits_the_same_schedule_on_the_gpu_as_on_the_cpu():
    """Teacher, weight fits and the time search on CUDA tensors (float64) give the CPU's schedule:
    the same times and weights to float64 rounding (a solve that left a tensor on the CPU, or
    fitted in float32 there, would fail or differ by far more)."""
    mix = gmm_image(shape=(2, 4, 4), components=3, rank=2).as_model(NS)
    start = usf_fast.presets.unipc(NS, 5, order=3, afs=True)
    solved = {}
    for device in ("cpu", "cuda"):
        noise = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
        teacher = DenseTeacher(mix, noise, start.timesteps[0], start.timesteps[-1], steps=40)
        solved[device] = solve_times(mix, start, noise, teacher, evaluations=8)
    cpu, gpu = solved["cpu"], solved["cuda"]
    assert gpu.has_weights and cpu.nfe == gpu.nfe == 5
    np.testing.assert_allclose(gpu.timesteps, cpu.timesteps, rtol=1e-9)
    for a, b in zip(cpu.steps, gpu.steps):
        for wa, wb in ((a.weights, b.weights), (a.corrector_weights, b.corrector_weights)):
            assert (wa is None) == (wb is None)
            if wa is not None:
                np.testing.assert_allclose(wb, wa, rtol=1e-7, atol=1e-9)
