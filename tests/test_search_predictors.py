"""The predictors that screen proposals: the MLP ranker, the improvement predictor, the metric regressor, the Gaussian process."""

import numpy as np
import pytest
import torch

from usf_fast.search.gp import GPPredictor
from usf_fast.search.predictor import Predictor


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


def test_gp_adam_step_is_torch_adam_bit_for_bit():
    """The GP's own Adam (no torch.optim: it imports torch._dynamo) makes the same updates as
    torch.optim.Adam, so a search's choices do not depend on which one runs."""
    from usf_fast.search.gp import _adam_step
    g = torch.Generator().manual_seed(3)
    ours = [torch.randn(5, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    opt = torch.optim.Adam(theirs, lr=0.05)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ours]
    for step in range(1, 60):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) * 10.0 ** (step % 5 - 2) for p in ours]
        _adam_step(ours, grads, moments, step, 0.05)
        for p, gr in zip(theirs, grads):
            p.grad = gr.clone()
        opt.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b.detach()), step
