"""usf_fast: few-step diffusion sampling with the Unified Sampling Framework (USF).

    import usf_fast
    model = usf_fast.DiffusionModel(net, usf_fast.NoiseScheduleVP("linear"), prediction="eps")
    schedule = usf_fast.presets.unipc(model.noise_schedule, nfe=5)
    x0 = usf_fast.sample(model, schedule, shape=(16, 3, 32, 32))
"""
from . import presets
from ._version import __version__
from .api import sample
from .graph import GraphSampler
from .model import DiffusionModel
from .noise_schedules import NoiseSchedule, NoiseScheduleEDM, NoiseScheduleFlow, NoiseScheduleVP
from .reference import reference_sample
from .schedule import Schedule, Step

_SUBMODULES = ("adapters", "backends", "checks", "coefficients", "contract", "dense", "executor", "graph",
               "metrics", "models", "noise_schedules", "pictures", "plan", "presets", "program", "reference",
               "schedule", "search", "walk")


def __getattr__(name: str):
    """`usf_fast.models`, `usf_fast.search`, … work after a bare `import usf_fast` (loaded on first use:
    the search and the adapters pull in more than sampling needs)."""
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["GraphSampler", "DiffusionModel", "NoiseSchedule", "NoiseScheduleEDM", "NoiseScheduleFlow", "NoiseScheduleVP", "Schedule", "Step", "reference_sample",
           "presets", "sample", "__version__"]
