"""Embedded models, one registry: Gaussian mixtures with exact outputs (`mixture`) and a small
UNet trained on scikit-learn's digits (`digits`, trained by `train_digits`).

    model = usf_fast.models.embedded_model("gmm-image")      # a DiffusionModel, VP linear
"""
from __future__ import annotations

from ..model import DiffusionModel
from ..noise_schedules import NoiseSchedule, NoiseScheduleFlow, NoiseScheduleVP
from .digits import digits_flow_model, digits_model
from .mixture import GaussianMixture, MixtureNet, gmm_2d, gmm_image

__all__ = ["EMBEDDED_MODELS", "embedded_model", "GaussianMixture", "MixtureNet", "gmm_image", "gmm_2d",
           "digits_model", "digits_flow_model"]


def _digits_flow(noise_schedule: NoiseSchedule, prediction: str) -> DiffusionModel:
    if prediction not in ("flow", None):
        raise ValueError(f"prediction={prediction!r}: the digits-flow model predicts the velocity ('flow')")
    return digits_flow_model(noise_schedule)


def _digits(noise_schedule: NoiseSchedule, prediction: str) -> DiffusionModel:
    if noise_schedule.kind == "flow":
        raise ValueError(f"noise_schedule={noise_schedule!r}: the digits model was trained on VP linear; the "
                         "rectified-flow one is 'digits-flow'")
    if prediction not in ("eps", None):
        raise ValueError(f"prediction={prediction!r}: the digits model is an ε-prediction network")
    return digits_model(noise_schedule)


EMBEDDED_MODELS = {
    "gmm-image": (lambda ns, p: gmm_image().as_model(ns, p),
                  "Gaussian mixture, 3x16x16 images, 6 components (exact outputs; velocity on --noise-schedule flow)"),
    "gmm-2d": (lambda ns, p: gmm_2d().as_model(ns, p), "Gaussian mixture on a 2-D ring, 8 components (exact outputs)"),
    "digits": (_digits, "trained UNet on scikit-learn digits, 1x8x8, VP linear only (usf_fast.models.digits)"),
    "digits-flow": (lambda ns, p: _digits_flow(ns, p),
                    "the digits UNet retrained as a rectified-flow model (velocity), 1x8x8, flow schedule only"),
}
# the noise schedule a model runs on when none is given
DEFAULT_NOISE_SCHEDULE = {"digits-flow": NoiseScheduleFlow}


def embedded_model(name: str = "gmm-image", noise_schedule: NoiseSchedule | None = None,
                   prediction: str | None = None) -> DiffusionModel:
    """An embedded model by name (see EMBEDDED_MODELS); default noise schedule VP linear; default
    prediction "eps", or "flow" (the velocity) on a `NoiseScheduleFlow`."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"model={name!r}: embedded models are {', '.join(EMBEDDED_MODELS)}")
    ns = noise_schedule or DEFAULT_NOISE_SCHEDULE.get(name, NoiseScheduleVP)()
    if name == "digits-flow" and ns.kind != "flow":
        raise ValueError(f"noise_schedule={ns!r}: the digits-flow model was trained on a NoiseScheduleFlow "
                         "(--noise-schedule flow, the default for it)")
    if prediction is None:
        prediction = "flow" if ns.kind == "flow" else "eps"
    return EMBEDDED_MODELS[name][0](ns, prediction)
