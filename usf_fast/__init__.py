"""usf_fast: few-step diffusion sampling with the Unified Sampling Framework (USF).

    import usf_fast
    model = usf_fast.DiffusionModel(net, usf_fast.NoiseScheduleVP("linear"), prediction="eps")
    schedule = usf_fast.presets.unipc(model.noise_schedule, nfe=5)
    x0 = usf_fast.sample(model, schedule, shape=(16, 3, 32, 32))
"""
from . import presets
from .model import DiffusionModel
from .noise_schedules import NoiseSchedule, NoiseScheduleEDM, NoiseScheduleVP
from .api import sample
from .graph import GraphSampler
from .reference import reference_sample
from .schedule import Schedule, Step

__version__ = "0.1.0"

__all__ = ["GraphSampler", "DiffusionModel", "NoiseSchedule", "NoiseScheduleEDM", "NoiseScheduleVP", "Schedule", "Step", "reference_sample",
           "presets", "sample", "__version__"]
