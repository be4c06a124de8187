"""The embedded trained model: a small UNet on scikit-learn's `digits` (1×8×8 images in [−1, 1]).

    from usf_fast.models.digits import digits_model, DigitsFrechet
    model = digits_model()                       # DiffusionModel, VP linear, ε-prediction
    x = usf_fast.sample(model, usf_fast.presets.unipc(model.noise_schedule, 5), shape=(64, 1, 8, 8))
    DigitsFrechet()(x)                           # Fréchet distance to the data in feature space

Both networks are trained by `python -m usf_fast.models.train_digits` (deterministic; see there) and their
weights ship in `usf_fast/weights/`. The feature network is a small digit classifier; its
penultimate activations play the role Inception's pool features play in FID, so the Fréchet
distance between sample and data features is an FID analogue that runs on a CPU in milliseconds.
"""
from __future__ import annotations

import copy
import math
import os

import numpy as np
import torch
from torch import nn

from ..metrics import frechet_distance
from ..model import DiffusionModel
from ..noise_schedules import NoiseScheduleFlow, NoiseScheduleVP

__all__ = ["DIGITS_SHAPE", "TinyUNet", "FeatureNet", "digits_data", "digits_model", "digits_flow_model", "load_digits_unet",
           "load_feature_net", "DigitsFrechet", "WEIGHTS_DIR"]

DIGITS_SHAPE = (1, 8, 8)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
UNET_FILE = "digits_unet.pt"
FLOW_UNET_FILE = "digits_flow_unet.pt"
FEATURES_FILE = "digits_features.pt"
TRAIN_HINT = "python -m usf_fast.models.train_digits --out usf_fast/weights"


def digits_data(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (1,797 images, no download) as (images (N, 1, 8, 8) in [−1, 1], labels)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ValueError(f"the digits model needs scikit-learn for its data (pip install scikit-learn): {e}") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float64).unsqueeze(1) / 8.0 - 1.0
    return x.to(dtype), torch.tensor(d.target, dtype=torch.long)


# ---- networks --------------------------------------------------------------------------------
def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of continuous t ∈ (0, 1] (scaled by 1000, as DDPM indices)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    a = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """ε-prediction UNet for 1×8×8 images: 8×8 → 4×4 → 2×2 and back, one residual block per level."""

    def __init__(self, ch: int = 32, t_dim: int = 64):
        super().__init__()
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, 2 * t_dim), nn.SiLU(), nn.Linear(2 * t_dim, 2 * t_dim))
        td = 2 * t_dim
        self.conv_in = nn.Conv2d(1, ch, 3, padding=1)
        self.down1 = ResBlock(ch, ch, td)                 # 8×8
        self.pool1 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.down2 = ResBlock(ch, 2 * ch, td)             # 4×4
        self.pool2 = nn.Conv2d(2 * ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * ch, 2 * ch, td)           # 2×2
        self.up2 = ResBlock(4 * ch, 2 * ch, td)           # 4×4, with skip
        self.up1 = ResBlock(3 * ch, ch, td)               # 8×8, with skip
        self.norm_out = nn.GroupNorm(8, ch)
        self.conv_out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.t_mlp(time_embedding(t, self.t_dim))
        h1 = self.down1(self.conv_in(x), temb)
        h2 = self.down2(self.pool1(h1), temb)
        h = self.mid(self.pool2(h2), temb)
        h = self.up2(torch.cat([nn.functional.interpolate(h, scale_factor=2.0), h2], 1), temb)
        h = self.up1(torch.cat([nn.functional.interpolate(h, scale_factor=2.0), h1], 1), temb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class FeatureNet(nn.Module):
    """Small digit classifier; `features` (64 penultimate activations) feed the Fréchet distance."""

    def __init__(self, feat: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),      # 4×4
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),      # 2×2
            nn.Flatten(), nn.Linear(256, feat), nn.SiLU())
        self.head = nn.Linear(feat, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ---- loading ---------------------------------------------------------------------------------
def _load_state(path: str | None, default_file: str, what: str) -> dict:
    path = path or os.path.join(WEIGHTS_DIR, default_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} weights not found at {path!r}; the package ships them in "
                                f"usf_fast/weights/ (reinstall), or retrain with `{TRAIN_HINT}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise ValueError(f"{what} weights {path!r}: cannot be read as a usf_fast checkpoint ({e})") from None


def _load(cls, path: str | None, default_file: str, what: str):
    ckpt = _load_state(path, default_file, what)
    try:
        net = cls(**ckpt.get("config", {}))
        net.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{what} weights {path or default_file!r}: do not fit {cls.__name__} ({e})") from None
    return net.eval().requires_grad_(False)


def load_digits_unet(path: str | None = None, flow: bool = False) -> TinyUNet:
    """The trained digits UNet (float32, eval mode): ε-prediction, or with `flow` the rectified-flow
    one. `path`: another checkpoint from `usf_fast.models.train_digits`."""
    if flow:
        return _load(TinyUNet, path, FLOW_UNET_FILE, "digits flow UNet")
    return _load(TinyUNet, path, UNET_FILE, "digits UNet")


def load_feature_net(path: str | None = None) -> FeatureNet:
    """The trained digits feature network (classifier; float32, eval mode)."""
    return _load(FeatureNet, path, FEATURES_FILE, "digits feature network")


class _DigitsNet:
    """net(x, t) for DiffusionModel: runs the UNet in x's dtype (a float64 copy for reference solves)."""

    def __init__(self, unet: TinyUNet):
        self._nets = {torch.float32: unet}
        self.unet = unet
        self.frechet = None  # set lazily by frechet_distance

    def _net(self, x: torch.Tensor) -> nn.Module:
        key = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        if key not in self._nets:
            self._nets[key] = copy.deepcopy(self.unet).to(key)
        net = self._nets[key]
        if next(net.parameters()).device != x.device:
            self._nets[key] = net = net.to(x.device)
        return net

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        net = self._net(x)
        dt = next(net.parameters()).dtype
        with torch.no_grad():
            return net(x.to(dt), t.to(dt)).to(x.dtype)

    def frechet_distance(self, samples: torch.Tensor) -> float:
        """Fréchet distance of the samples to the digits data in the feature network's space."""
        if self.frechet is None:
            self.frechet = DigitsFrechet()
        return self.frechet(samples)


def digits_model(noise_schedule: NoiseScheduleVP | None = None, weights: str | None = None) -> DiffusionModel:
    """The embedded digits UNet as a `DiffusionModel` (ε-prediction, continuous VP-linear time,
    per-sample shape (1, 8, 8), data in [−1, 1]). It was trained on VP linear (β 0.1 → 20) only."""
    ns = noise_schedule or NoiseScheduleVP("linear")
    if ns != NoiseScheduleVP("linear"):
        raise ValueError(f"noise_schedule={ns!r}: the digits model was trained on NoiseScheduleVP('linear') only")
    return DiffusionModel(_DigitsNet(load_digits_unet(weights)), ns, "eps", "continuous", sample_shape=DIGITS_SHAPE)


def digits_flow_model(noise_schedule: NoiseScheduleFlow | None = None, weights: str | None = None) -> DiffusionModel:
    """The digits UNet retrained with the rectified-flow objective, as a `DiffusionModel` (the
    velocity ε − x0, continuous σ, per-sample shape (1, 8, 8)). Trained on `NoiseScheduleFlow()`'s
    range; another range within it is fine."""
    ns = noise_schedule or NoiseScheduleFlow()
    if not isinstance(ns, NoiseScheduleFlow):
        raise ValueError(f"noise_schedule={ns!r}: the digits-flow model was trained on a NoiseScheduleFlow")
    return DiffusionModel(_DigitsNet(load_digits_unet(weights, flow=True)), ns, "flow", "continuous",
                          sample_shape=DIGITS_SHAPE)


# ---- Fréchet distance in feature space -------------------------------------------------------
class DigitsFrechet:
    """Fréchet distance between feature statistics of samples and of the 1,797 digits images
    (the FID formula with the digits feature network in place of Inception)."""

    name = "fd"
    needs_reference = False

    def __init__(self, weights: str | None = None):
        self.net = load_feature_net(weights)
        data, _ = digits_data()
        f = self.features(data)
        self.mu, self.cov = f.mean(0), np.cov(f, rowvar=False)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        if tuple(x.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(f"digits Fréchet distance: samples must have shape (B, 1, 8, 8), got {tuple(x.shape)}")
        return self.net.features(x.detach().float().cpu().clamp(-1, 1)).double().numpy()

    def __call__(self, samples: torch.Tensor, reference=None) -> float:
        if samples.shape[0] < 2:
            raise ValueError("digits Fréchet distance: needs at least 2 samples")
        f = self.features(samples)
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov)
