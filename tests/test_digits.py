"""The embedded trained digits model and its feature-space Fréchet distance."""
import os
import shutil

import pytest
import torch

import usf_fast
from usf_fast.models import digits as D
from usf_fast.models import embedded_model
from usf_fast.search.evaluate import make_metric

MODEL = D.digits_model()
FD = D.DigitsFrechet()
NOISE = torch.randn(1000, *D.DIGITS_SHAPE, generator=torch.Generator().manual_seed(0))


def test_loads_from_the_package_and_samples():
    assert os.path.exists(os.path.join(D.WEIGHTS_DIR, D.UNET_FILE))
    assert MODEL.sample_shape == (1, 8, 8) and MODEL.prediction == "eps"
    assert embedded_model("digits").noise_schedule == MODEL.noise_schedule
    x = usf_fast.sample(MODEL, usf_fast.presets.unipc(MODEL.noise_schedule, 5), noise=NOISE[:64])
    assert x.shape == (64, 1, 8, 8) and bool(torch.isfinite(x).all())
    # float64 runs a float64 copy of the network (reference solves), float32 the shipped one
    x64 = usf_fast.sample(MODEL, usf_fast.presets.unipc(MODEL.noise_schedule, 5), noise=NOISE[:8].double())
    assert x64.dtype == torch.float64
    assert float((x64.float() - x[:8]).abs().max()) < 1e-3


def test_feature_network_is_a_real_classifier_and_fd_is_sane():
    data, labels = D.digits_data()
    with torch.no_grad():
        acc = float((FD.net(data).argmax(1) == labels).float().mean())
    assert acc > 0.97
    assert FD(data) < 1e-6                                   # the data against its own statistics
    g = torch.Generator().manual_seed(1)
    shuffled = data[:500].flatten(1)[:, torch.randperm(64, generator=g)].reshape(-1, 1, 8, 8)
    assert FD(data[:500]) < 0.1 * FD(shuffled)                # a real subset vs scrambled pixels
    assert FD(data[:500]) < 0.1 * FD(torch.rand(500, 1, 8, 8, generator=g) * 2 - 1)


def test_fd_falls_as_nfe_rises():
    ns = MODEL.noise_schedule
    fds = []
    for nfe in (3, 4, 6, 10, 20):  # 1,000 samples: FD's own estimation noise is below these steps
        x = usf_fast.sample(MODEL, usf_fast.presets.dpm_solver_pp(ns, nfe, order=2), noise=NOISE)
        fds.append(FD(x))
    assert all(a > b for a, b in zip(fds, fds[1:])), fds


def test_fd_metric_in_the_search():
    metric = make_metric("fd", MODEL)
    assert metric.name == "fd" and not metric.needs_reference
    assert metric(D.digits_data()[0]) < 1e-6
    with pytest.raises(ValueError, match="metric='exact'"):
        make_metric("exact", MODEL)
    with pytest.raises(ValueError, match="metric='fd'"):
        make_metric("fd", usf_fast.DiffusionModel(lambda x, t: x, usf_fast.NoiseScheduleVP("linear")))


def test_training_is_deterministic():
    from usf_fast.models.train_digits import train_features, train_unet
    threads = torch.get_num_threads()
    try:
        a = train_unet(steps=3, batch=8, progress=False)
        b = train_unet(steps=3, batch=8, progress=False)
        fa = train_features(steps=3, batch=8, progress=False)
        fb = train_features(steps=3, batch=8, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in fa["state_dict"]:
        assert torch.equal(fa["state_dict"][k], fb["state_dict"][k]), k
    # and the checkpoint format is what the loader reads
    net = D.TinyUNet(**a["config"])
    net.load_state_dict(a["state_dict"])


def test_bad_input(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="digits UNet weights not found .*usf_fast.models.train_digits"):
        D.digits_model(weights=str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        D.load_digits_unet(str(corrupt))
    other = tmp_path / "features_as_unet.pt"
    shutil.copy(os.path.join(D.WEIGHTS_DIR, D.FEATURES_FILE), other)
    with pytest.raises(ValueError, match="do not fit TinyUNet"):
        D.load_digits_unet(str(other))
    with pytest.raises(ValueError, match="trained on NoiseScheduleVP"):
        D.digits_model(usf_fast.NoiseScheduleVP("cosine"))
    with pytest.raises(ValueError, match="shape"):
        FD(torch.zeros(4, 3, 8, 8))
    schedule_for_cosine = usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("cosine"), 5)
    with pytest.raises(ValueError, match="made for noise schedule"):
        usf_fast.sample(MODEL, schedule_for_cosine, noise=NOISE[:4])


# ---- the rectified-flow digits model ------------------------------------------------------------

FLOW = embedded_model("digits-flow")


def test_the_flow_model_loads_offline_on_the_flow_schedule():
    assert os.path.exists(os.path.join(D.WEIGHTS_DIR, D.FLOW_UNET_FILE))
    assert FLOW.prediction == "flow" and FLOW.noise_schedule == usf_fast.NoiseScheduleFlow()
    assert FLOW.sample_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="digits-flow model was trained on a NoiseScheduleFlow"):
        embedded_model("digits-flow", usf_fast.NoiseScheduleVP("linear"))
    with pytest.raises(ValueError, match="predicts the velocity"):
        embedded_model("digits-flow", prediction="eps")


def test_flow_fd_falls_as_nfe_rises():
    ns = FLOW.noise_schedule
    fds = []
    for nfe in (3, 5, 8, 12):
        x = usf_fast.sample(FLOW, usf_fast.presets.unipc(ns, nfe, spacing="flow_shift"), noise=NOISE)
        fds.append(FD(x))
    assert all(a > b for a, b in zip(fds, fds[1:])), fds
