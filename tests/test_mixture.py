"""The embedded analytic model is exact, and its metrics are right."""
import numpy as np
import pytest
import torch

import usf_fast
from usf_fast.metrics import frechet_distance, reference_solution
from usf_fast.models import embedded_model
from usf_fast.models.mixture import gmm_2d, gmm_image
from usf_fast.metrics import reference_samples

VP = usf_fast.NoiseScheduleVP("linear")


def dense_log_prob_xt(gmm, x, a, s):
    """log p_t(x) with dense covariances (independent of the Woodbury code)."""
    comps = []
    for k in range(gmm.means.shape[0]):
        u = gmm.factors[k]
        cov = a ** 2 * (u @ u.T + gmm.iso_var * torch.eye(gmm.dim, dtype=torch.float64)) + s ** 2 * torch.eye(gmm.dim, dtype=torch.float64)
        d = torch.distributions.MultivariateNormal(a * gmm.means[k], covariance_matrix=cov)
        comps.append(d.log_prob(x.reshape(x.shape[0], -1)) + gmm.log_weights[k])
    return torch.logsumexp(torch.stack(comps, -1), -1)


@pytest.mark.parametrize("make", [gmm_2d, lambda: gmm_image(shape=(1, 4, 4), components=3, rank=2)])
@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_eps_is_minus_sigma_times_the_score(make, t):
    gmm = make()
    a, s = float(VP.marginal_alpha(t)), float(VP.marginal_std(t))
    x = torch.randn(5, *gmm.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    score, = torch.autograd.grad(dense_log_prob_xt(gmm, x, a, s).sum(), x)
    eps = gmm.eps(x.detach(), torch.full((5,), a, dtype=torch.float64), torch.full((5,), s, dtype=torch.float64))
    torch.testing.assert_close(eps, -s * score, rtol=1e-9, atol=1e-10)


def test_log_prob_matches_dense():
    gmm = gmm_2d()
    x = gmm.sample_data(10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(gmm.log_prob(x), dense_log_prob_xt(gmm, x, 1.0, 0.0), rtol=1e-10, atol=1e-10)


def test_frechet_distance_of_true_samples_is_small_and_of_shifted_is_not():
    gmm = gmm_2d()
    x = gmm.sample_data(20000, torch.Generator().manual_seed(2))
    assert gmm.frechet_distance(x) < 5e-3
    assert gmm.frechet_distance(x + 0.3) == pytest.approx(2 * 0.09, rel=0.1)


def test_frechet_distance_formula_on_gaussians():
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0)
    assert frechet_distance(np.zeros(1), 4 * np.eye(1), np.zeros(1), np.eye(1)) == pytest.approx(1.0)


def test_many_step_samples_have_the_data_moments():
    model = embedded_model("gmm-2d")
    x = usf_fast.sample(model, usf_fast.presets.unipc(VP, 50), shape=(8000, 2), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    assert model.net.gmm.frechet_distance(x) < 0.01


def test_reference_samples_agree_with_dop853():
    model = embedded_model("gmm-2d")
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    a = reference_solution(model, noise, VP.t_max, VP.t_min, rtol=1e-11, atol=1e-11)
    b = reference_samples(model, noise, VP.t_max, VP.t_min)
    assert float((a - b).pow(2).mean().sqrt()) < 1e-6


def test_unknown_embedded_model():
    with pytest.raises(ValueError, match="model='cifar': embedded models are gmm-image, gmm-2d"):
        embedded_model("cifar")
