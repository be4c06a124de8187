"""The search space: preset seeds, mutation and crossover, the Gaussian probe, diverse parents."""

import numpy as np
import pytest
import torch

import usf_fast
from usf_fast.search import SearchSpace
from usf_fast.search.space import schedule_key

NS = usf_fast.NoiseScheduleVP("linear")


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


@pytest.mark.parametrize("nfe", [2, 5])
def test_gaussian_probe_is_the_samplers_error_on_gaussian_data(nfe):
    """The closed-form probe = sampling Gaussian data N(0, s²) with the model-based reference sampler
    and comparing with the high-accuracy ODE solution, on seeds and mutated schedules (AFS,
    correctors, relaxations)."""
    from usf_fast.metrics import reference_solution
    from usf_fast.models.mixture import GaussianMixture
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
