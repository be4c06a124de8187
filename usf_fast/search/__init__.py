"""S³ solver-schedule search (`s3_search`) on the fast paths."""
from .evaluate import FID, METRICS, ExactFrechet, ReferenceDistance, evaluate_schedules, make_metric
from .s3 import SearchResult, preset_candidates, s3_search
from .space import SearchSpace

__all__ = ["s3_search", "SearchResult", "SearchSpace", "preset_candidates", "evaluate_schedules", "make_metric",
           "ReferenceDistance", "ExactFrechet", "FID", "METRICS"]
