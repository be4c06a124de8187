"""Old import path of the embedded digits model (kept for existing code): new code imports from
`usf_fast.models.digits`."""
# ruff: noqa: I001
from .models.digits import (DIGITS_SHAPE, FEATURES_FILE, FLOW_UNET_FILE, TRAIN_HINT, UNET_FILE, WEIGHTS_DIR, DigitsFrechet,
                            FeatureNet, TinyUNet, digits_data, digits_flow_model, digits_model, load_digits_unet,
                            load_feature_net)

__all__ = ["DIGITS_SHAPE", "FEATURES_FILE", "FLOW_UNET_FILE", "TRAIN_HINT", "UNET_FILE", "WEIGHTS_DIR", "DigitsFrechet", "FeatureNet",
           "TinyUNet", "digits_data", "digits_flow_model", "digits_model", "load_digits_unet", "load_feature_net"]
