"""`SearchConfig`: every option of an S³ search, validated, and the identity a resumed log must match."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = ["SearchConfig", "PREDICTORS", "WARM_PAIRS"]

PREDICTORS = ("improve", "metric", "gp")
WARM_PAIRS = 48   # (parent, child) pairs evaluated before the predictor takes over from the probe


def _positive_int(name: str, v, what: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}={v!r}: must be a positive integer ({what})")


@dataclass(frozen=True)
class SearchConfig:
    """Options of `s3_search` (see there for what each one does).

    `identity()` is what a resumed search must share with the log it continues; it is stored in
    the log's header as a readable dict.
    """

    nfe: int
    metric: object = "ref"
    metric_options: dict | None = None
    seed: int = 0
    budget: int = 600
    samples: tuple = (256, 1024)
    heldout: int = 1024
    stage_split: float = 0.75
    population: int = 16
    proposals: int = 512
    per_generation: int = 16
    use_predictor: bool = True
    predictor: str = "gp"
    probe: bool = True
    novelty: float = 0.01
    screen: int | None = None
    shape: tuple | None = None
    log_path: object = None
    resume: bool = False
    max_minutes: float | None = None
    progress: bool = True
    chunk: int = 8
    dtype: torch.dtype = torch.float32
    backend: str = "auto"
    device: object = "cpu"

    def __post_init__(self):
        if not isinstance(self.nfe, int) or isinstance(self.nfe, bool) or self.nfe < 1:
            raise ValueError(f"nfe={self.nfe!r}: must be an integer >= 1")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor={self.predictor!r}: must be one of {', '.join(PREDICTORS)}")
        if self.screen is not None:
            _positive_int("screen", self.screen, "1 = any proposal of a parent")
        _positive_int("chunk", self.chunk, "candidates per batch")
        _positive_int("budget", self.budget, "real evaluations")
        for name in ("population", "proposals", "per_generation", "heldout"):
            _positive_int(name, getattr(self, name), "a count")
        if (not isinstance(self.samples, (tuple, list)) or len(self.samples) != 2
                or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.samples)):
            raise ValueError(f"samples={self.samples!r}: must be two positive integers (stage 1, stage 2)")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float))
                                                 and math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise ValueError(f"max_minutes={self.max_minutes!r}: must be a finite number >= 0")

    @property
    def screen_for_picks(self) -> int:
        """`screen`, or its default: the GP picks by expected improvement (any proposal), the MLPs
        from the best quarter of a parent's proposals."""
        if self.screen is not None:
            return self.screen
        return self.proposals if self.predictor == "gp" else 4

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    def identity(self, space, metric_name: str) -> dict:
        """The settings that decide which evaluations a search makes (not where or how fast).
        predictor and screen mean nothing to plain evolution; "gp/batch-ei" is the GP's batch
        acquisition."""
        guided = self.use_predictor
        return {"nfe": self.nfe, "seed": self.seed, "metric": metric_name, "settings": {
            "orders": list(space.orders), "predictions": list(space.predictions), "correctors": space.correctors,
            "afs": space.afs, "relax_range": space.relax_range, "samples": list(self.samples),
            "heldout": self.heldout, "budget": self.budget, "use_predictor": guided,
            "predictor": ({"gp": "gp/batch-ei"}.get(self.predictor, self.predictor) if guided else None),
            "probe": self.probe, "novelty": self.novelty, "population": self.population,
            "proposals": self.proposals, "per_generation": self.per_generation,
            "screen": self.screen_for_picks if guided else None}}
