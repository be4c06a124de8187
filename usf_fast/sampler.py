"""Old import path of the reference sampler and the step walk (kept for existing code).

New code imports from `usf_fast.reference`, `usf_fast.walk`, `usf_fast.program` and
`usf_fast.checks`.
"""
from .checks import check_inputs, check_noise_schedule, check_schedule_range, initial_state, warn_if_not_finite
from .program import StepWeights, step_weights
from .reference import reference_sample
from .walk import walk

__all__ = ["reference_sample", "walk", "step_weights", "StepWeights", "check_schedule_range", "initial_state",
           "check_inputs", "check_noise_schedule", "warn_if_not_finite"]
