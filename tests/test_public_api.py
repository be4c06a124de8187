"""The names the README and earlier releases promise keep working after the redesign, old import
paths included (thin re-exports of the new modules)."""
import subprocess
import sys

import usf_fast


def test_the_top_level_names():
    for name in ("sample", "reference_sample", "Schedule", "Step", "DiffusionModel", "NoiseSchedule",
                 "NoiseScheduleVP", "NoiseScheduleEDM", "GraphSampler", "presets", "__version__"):
        assert hasattr(usf_fast, name), name
    for name in ("ddim", "dpm_solver", "dpm_solver_pp", "unipc", "get", "standard_schedules", "timesteps"):
        assert callable(getattr(usf_fast.presets, name)), name


def test_old_import_paths_are_the_new_objects():
    from usf_fast import analytic, digits, metrics, models, program, reference, sampler, walk
    from usf_fast.adapters.diffusers import USFScheduler, wrap_unet  # noqa: F401
    from usf_fast.adapters.edm import edm_model, k_diffusion_model  # noqa: F401
    from usf_fast.models import digits as new_digits
    from usf_fast.plan import cached_plan, compile_plan  # noqa: F401
    from usf_fast.search import S3Search, SearchConfig, s3_search  # noqa: F401
    assert analytic.embedded_model is models.embedded_model
    assert analytic.frechet_distance is metrics.frechet_distance
    assert analytic.reference_solution is metrics.reference_solution
    assert digits.digits_model is new_digits.digits_model and digits.UNET_FILE == new_digits.UNET_FILE
    assert sampler.reference_sample is reference.reference_sample
    assert sampler.walk is walk.walk and sampler.step_weights is program.step_weights


def test_the_old_training_entry_point_still_runs():
    r = subprocess.run([sys.executable, "-m", "usf_fast.digits_train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--out" in r.stdout
