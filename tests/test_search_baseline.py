"""Numbers a user can trust: the baseline holds every preset option a user picks without searching
(AFS on and off), a preset whose samples diverge is named and left out, the winner is chosen on one
half of the held-out noise and its gain measured, with a bootstrap interval, on the other."""
import math
import warnings

import pytest

import usf_fast
from usf_fast import presets as P
from usf_fast.models import embedded_model
from usf_fast.search import S3Search, SearchConfig, preset_candidates, s3_search
from usf_fast.search.evaluate import NoiseSet, ReferenceDistance, evaluate_schedules
from usf_fast.search.space import schedule_key

MODEL = embedded_model("gmm-2d")
FLOW = embedded_model("gmm-image", usf_fast.NoiseScheduleFlow())


@pytest.mark.parametrize("ns", [usf_fast.NoiseScheduleVP("linear"), usf_fast.NoiseScheduleFlow()])
def test_the_baseline_has_every_preset_with_and_without_afs(ns):
    labels = [lbl for lbl, _ in preset_candidates(ns, 5)]
    plain = {lbl.split(" [")[0] for lbl in labels if " afs" not in lbl}
    afs = {lbl.split(" [")[0].replace(" afs", "") for lbl in labels if " afs" in lbl}
    assert plain == afs and len(plain) == 10
    assert any(s.afs for _, s in preset_candidates(ns, 5)) and any(not s.afs for _, s in preset_candidates(ns, 5))


def test_a_preset_known_to_diverge_warns_and_a_safe_one_does_not():
    flow = usf_fast.NoiseScheduleFlow()
    with pytest.warns(P.DivergenceWarning, match="unipc with noise prediction .* known to diverge"):
        P.unipc(flow, 5, prediction="noise")
    with pytest.warns(P.DivergenceWarning, match="dpm_solver with noise prediction \\(singlestep"):
        P.dpm_solver(flow, 5, order=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.DivergenceWarning)
        P.unipc(flow, 5)                                                   # data prediction
        P.dpm_solver(flow, 5, order=2, method="multistep")                 # no corrector, multistep
        P.unipc(usf_fast.NoiseScheduleVP("linear"), 5, prediction="noise")  # not a flow schedule


def test_the_search_leaves_diverging_presets_out_of_the_baseline_by_name():
    with pytest.warns(RuntimeWarning, match="diverged .* left out of the baseline: .*dpm_solver order=3"):
        r = s3_search(FLOW, 5, budget=24, samples=(16, 32), heldout=32, progress=False, solve=0)
    assert r.dropped_presets and not set(r.dropped_presets) & {lbl for lbl, _ in r.table}
    assert "presets left out (their samples diverged)" in r.summary()


def _a_lucky_finalist(monkeypatch):
    """A search and a finalist far worse than the best preset that wins the choice set (its value
    there patched to ~0); what the report set does with it is each test's."""
    search = S3Search(MODEL, SearchConfig(nfe=4, budget=8, samples=(16, 16), heldout=64, progress=False, solve=0))
    lucky = P.ddim(MODEL.noise_schedule, 4, spacing="time_uniform")
    lucky = lucky.replace(timesteps=[lucky.timesteps[0], 0.7, 0.3, 0.05, lucky.timesteps[-1]])
    real = S3Search.evaluate

    def evaluate(self, schedules, fidelity, stage, count=True):
        vals = real(self, schedules, fidelity, stage, count)
        return [1e-9 if fidelity == "choose" and schedule_key(s) == schedule_key(lucky) else v
                for s, v in zip(schedules, vals)]
    monkeypatch.setattr(S3Search, "evaluate", evaluate)
    return search, lucky


def test_a_lucky_finalist_wins_the_choice_and_loses_the_report_so_the_preset_is_returned(monkeypatch):
    search, lucky = _a_lucky_finalist(monkeypatch)
    r = search.final([lucky])
    assert r.table[0][0].startswith("searched")            # it won the choice ...
    assert r.best_source != "search" and r.improvement == 0   # ... and lost the report: the preset is returned
    assert "did not beat" in r.note and "worse by the whole 95% interval" in r.note and r.note in r.summary()


@pytest.mark.parametrize("ci,kept", [((-0.08, 0.06), True), ((-0.30, -0.01), False), ((math.nan, math.nan), False)])
def test_a_report_loss_returns_the_preset_only_when_the_interval_is_wholly_below_zero(monkeypatch, ci, kept):
    """The report set's 95% paired interval decides: a loss it cannot tell from its noise keeps the
    choice set's pick (its negative improvement reported as measured); a loss by the whole interval
    returns the preset, and so does an interval that is not a number."""
    search, lucky = _a_lucky_finalist(monkeypatch)
    monkeypatch.setattr(S3Search, "report", lambda self, schedules: ([0.101, 0.100], ci) if len(schedules) == 2
                        else ([0.100], None))
    r = search.final([lucky])
    assert "did not beat" in r.note and r.note in r.summary()
    if kept:
        assert r.best_source == "search" and schedule_key(r.best) == schedule_key(lucky)
        assert r.improvement == pytest.approx(-0.01) and r.improvement_ci == ci
        assert "within its noise" in r.note and "kept" in r.note
    else:
        assert r.best_source != "search" and r.improvement == 0 and r.improvement_ci is None
        assert "the preset is returned" in r.note


def test_a_preset_that_diverges_on_the_report_set_does_not_veto(monkeypatch):
    """A searched winner with a finite report value against a preset whose report value is not
    finite wins the report: it is returned, with no note."""
    search, lucky = _a_lucky_finalist(monkeypatch)
    monkeypatch.setattr(S3Search, "report", lambda self, schedules: ([0.1, math.inf], None))
    r = search.final([lucky])
    assert r.best_source == "search" and r.note == ""


def test_the_gain_is_measured_on_the_report_half_with_a_bootstrap_interval():
    r = s3_search(MODEL, 3, seed=2, budget=150, samples=(32, 64), heldout=128, per_generation=8, proposals=64,
                  population=8, progress=False, solve=0)
    assert r.best_source == "search" and r.report_samples == 64
    lo, hi = r.improvement_ci
    assert lo < r.improvement < hi and hi - lo > 0.001
    assert "95% CI" in r.summary()
    # the reported number is the winner on the report noise (seed 1000·seed + 5), never seen before
    ns = MODEL.noise_schedule
    report = NoiseSet((2,), 64, 2005, "report", r.reference["steps"])
    again = evaluate_schedules(MODEL, [r.best], report, ReferenceDistance(), (ns.t_max, ns.t_min))[0]
    assert again == pytest.approx(r.best_metric, rel=1e-6)


def test_a_held_out_set_too_small_to_split_is_refused():
    with pytest.raises(ValueError, match="heldout=1: must be at least 2"):
        SearchConfig(nfe=3, heldout=1)
