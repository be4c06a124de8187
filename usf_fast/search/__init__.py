"""S³ solver-schedule search (`s3_search`) on the fast paths."""
from .config import THOROUGH, SearchConfig
from .evaluate import FID, METRICS, ExactFrechet, ReferenceDistance, evaluate_schedules, make_metric
from .s3 import S3Search, SearchResult, preset_candidates, s3_search
from .space import SearchSpace

__all__ = ["s3_search", "THOROUGH", "S3Search", "SearchConfig", "SearchResult", "SearchSpace", "preset_candidates", "evaluate_schedules", "make_metric",
           "ReferenceDistance", "ExactFrechet", "FID", "METRICS"]
