"""A model factory for the torchrun test: on rank 1 the network kills its process at its first call
(a peer that dies mid-search); on rank 0 it is the embedded 2-D mixture."""
import os

import usf_fast
from usf_fast.models import embedded_model


def model():
    base = embedded_model("gmm-2d")

    def net(x, t):
        if os.environ.get("RANK") == "1":
            os._exit(3)
        return base.net(x, t)
    return usf_fast.DiffusionModel(net, base.noise_schedule, base.prediction, base.time_input,
                                   data_mean=base.data_mean, sample_shape=base.sample_shape)
