"""S³ solver-schedule search (`s3_search`) on the fast paths.

Loaded on first use: `usf_fast.search.config` (the options and their defaults, which the CLI reads
for its help) costs nothing more than torch; the search itself pulls in scipy and the predictors.
"""
import importlib

_WHERE = {"s3_search": "s3", "S3Search": "s3", "SearchResult": "s3", "preset_candidates": "s3", "describe": "s3",
          "THOROUGH": "config", "QUICK": "config", "SearchConfig": "config", "SearchSpace": "space",
          "evaluate_schedules": "evaluate", "make_metric": "evaluate", "ReferenceDistance": "evaluate",
          "ExactFrechet": "evaluate", "FID": "evaluate", "METRICS": "evaluate"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
