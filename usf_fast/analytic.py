"""Old import path of the embedded analytic models (kept for existing code): new code imports
from `usf_fast.models` and `usf_fast.metrics`."""
from .metrics import frechet_distance, reference_solution
from .models import EMBEDDED_MODELS, embedded_model
from .models.mixture import GaussianMixture, MixtureNet, gmm_2d, gmm_image

__all__ = ["GaussianMixture", "MixtureNet", "gmm_image", "gmm_2d", "frechet_distance", "reference_solution",
           "EMBEDDED_MODELS", "embedded_model"]
