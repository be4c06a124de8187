"""The names the README and the docs promise import (the old re-export modules usf_fast.analytic,
.digits, .digits_train and .sampler are gone: docs/design.md §8 names the real paths)."""
import subprocess
import sys

import usf_fast


def test_the_top_level_names():
    for name in ("sample", "reference_sample", "Schedule", "Step", "DiffusionModel", "NoiseSchedule",
                 "NoiseScheduleVP", "NoiseScheduleEDM", "GraphSampler", "presets", "__version__"):
        assert hasattr(usf_fast, name), name
    for name in ("ddim", "dpm_solver", "dpm_solver_pp", "unipc", "get", "standard_schedules", "timesteps"):
        assert callable(getattr(usf_fast.presets, name)), name


def test_the_modules_the_docs_name_import():
    from usf_fast import metrics, models, program, reference, walk  # noqa: F401
    from usf_fast.adapters.diffusers import USFScheduler, wrap_unet  # noqa: F401
    from usf_fast.adapters.edm import edm_model, k_diffusion_model  # noqa: F401
    from usf_fast.models.digits import UNET_FILE, digits_model  # noqa: F401
    from usf_fast.plan import cached_plan, compile_plan  # noqa: F401
    from usf_fast.search import S3Search, SearchConfig, s3_search  # noqa: F401


def test_the_training_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "usf_fast.models.train_digits", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--out" in r.stdout
