"""Batched evaluation of candidate schedules and the metrics (ref, exact, callable, FID), CPU and GPU."""

import numpy as np
import pytest
import torch

import usf_fast
from usf_fast.models.mixture import gmm_2d
from usf_fast.search import SearchSpace, evaluate_schedules, make_metric, s3_search
from usf_fast.search.evaluate import FID, NoiseSet, ReferenceDistance

NS = usf_fast.NoiseScheduleVP("linear")
MODEL2D = gmm_2d().as_model(NS)
SMALL = dict(budget=60, samples=(32, 64), heldout=128, per_generation=8, proposals=64, population=8, progress=False,
             solve=0)   # the S3 search alone


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
