"""`SearchConfig`: every option of an S³ search, validated, and the identity a resumed log must match."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..metrics import reference_spacing

__all__ = ["SearchConfig", "PREDICTORS", "WARM_PAIRS", "THOROUGH", "QUICK", "S3_ONLY"]

PREDICTORS = ("improve", "metric", "gp")
WARM_PAIRS = 48   # (parent, child) pairs evaluated before the predictor takes over from the probe

#: the defaults before 2026-12-02: about 2.0 million network rows at NFE 5 where the defaults make
#: about 300,000 (docs/experiments.md, "A cheaper search"); S3 alone, no solve stage;
#: `s3_search(model, 5, **THOROUGH)`, `usf-fast search --thorough`
THOROUGH = {"budget": 600, "samples": (256, 1024), "heldout": 1024, "heldout_presets": None, "reference_nfe": 200,
            "solve": 0}
#: the defaults from 2026-12-02 to 2026-12-05: the S3 search alone (the paper's decision space, no
#: learned coefficients), about 300,000 network rows at NFE 5; the defaults with the solve stage
#: beat it by a third on the mixtures at the same rows (docs/experiments.md, "A default with the
#: solve stage"); `s3_search(model, 5, **S3_ONLY)`, `usf-fast search --s3-only`
S3_ONLY = {"budget": 314, "samples": (96, 256), "heldout": 512, "heldout_presets": 8, "reference_nfe": 50,
           "solve": 0}
#: a search a real model can afford: <= 60,000 network rows at NFE 5 (the reference included; a
#: reference whose check raises its steps is paid for by fewer solve trials): a short S3 search on few samples, then the solve stage (learned step
#: weights and times) on its best schedule and on the preset best on stage 1's noise (docs/search.md,
#: "The solve stage"; measured against the earlier setting in docs/experiments.md, "Learned
#: coefficients, 2026-12-04"); `s3_search(model, 5, **QUICK)`, `usf-fast search --quick`
QUICK = {"budget": 24, "samples": (16, 32), "heldout": 128, "heldout_presets": 4, "reference_nfe": 50,
         "solve": 23, "solve_presets": 1, "solve_other_prediction": False, "solve_samples": 128}


def presets_solved(solve: int, solve_presets: int | None) -> int:
    """Presets the solve stage fits besides the finalists: `solve_presets`, or by default 1 with a
    solve stage (the preset best on stage 1's noise) and 0 without."""
    if solve_presets is not None:
        return solve_presets
    return 1 if solve else 0


def _spacing(space) -> str:
    """The reference solve's spacing on the space's noise schedule."""
    ns = getattr(space, "noise_schedule", None)
    return reference_spacing(ns) if ns is not None else "logSNR"


def _stage_ends(budget: int, splits: tuple) -> list[int]:
    return [int(budget * f) for f in splits] + [budget]


def _shares(ends: list[int]) -> list[int]:
    return [b - a for a, b in zip([0] + ends[:-1], ends)]


def _positive_int(name: str, v, what: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}={v!r}: must be a positive integer ({what})")


def _count(name: str, v, what: str) -> None:
    """An integer >= 0 (bool refused), or one ValueError naming the field."""
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name}={v!r}: must be an integer >= 0 ({what})")


@dataclass(frozen=True)
class SearchConfig:
    """Options of `s3_search` (see there for what each one does).

    The defaults cost about 290,000 network rows at NFE 5 (`cost_estimate`): a short S³ search on
    few samples, then the solve stage on its best schedule, on the preset best on stage 1's noise
    and on its twin (UniPC-3 with the other prediction at its times), 64 Nelder–Mead trials each on
    256 noises (docs/experiments.md, "A default with the solve stage" and "… the other
    prediction"). `S3_ONLY` holds the S³ search alone at the same rows (the defaults until 2026-12-05),
    `THOROUGH` the seven times dearer ones before 2026-12-02, `QUICK` a fifth of the rows.

    `identity()` is what a resumed search must share with the log it continues; it is stored in
    the log's header as a readable dict.
    """

    nfe: int
    metric: object = "ref"
    metric_options: dict | None = None
    seed: int = 0
    budget: int = 24
    samples: tuple = (16, 32)
    heldout: int = 256
    finalists: int = 4
    heldout_presets: int | None = 4
    stage_split: float | tuple = 0.75
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
    reference_nfe: int = 50
    reference_dtype: torch.dtype = torch.float64
    solve: int = 64
    solve_finalists: int = 1
    solve_presets: int | None = None
    solve_other_prediction: bool = True
    solve_samples: int = 256
    solve_teacher: int = 50
    solve_ridge: float = 1e-3

    def __post_init__(self):
        if not isinstance(self.nfe, int) or isinstance(self.nfe, bool) or self.nfe < 1:
            raise ValueError(f"nfe={self.nfe!r}: must be an integer >= 1")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor={self.predictor!r}: must be one of {', '.join(PREDICTORS)}")
        if self.screen is not None:
            _positive_int("screen", self.screen, "1 = any proposal of a parent")
        _positive_int("chunk", self.chunk, "candidates per batch")
        _positive_int("budget", self.budget, "real evaluations")
        _positive_int("reference_nfe", self.reference_nfe, "steps of the reference solve")
        if self.reference_dtype not in (torch.float64, torch.float32):
            raise ValueError(f"reference_dtype={self.reference_dtype!r}: must be torch.float64 or torch.float32")
        if self.heldout_presets is not None:
            _positive_int("heldout_presets", self.heldout_presets, "presets in the held-out table; None = every one")
        for name in ("population", "proposals", "per_generation", "heldout", "finalists"):
            _positive_int(name, getattr(self, name), "a count")
        _count("solve", self.solve, "Nelder-Mead trials of the solve stage; 0 = no solve stage")
        for name in ("solve_samples", "solve_teacher"):
            _positive_int(name, getattr(self, name), "a count")
        _count("solve_finalists", self.solve_finalists, "finalists the solve stage fits; 0 = the presets alone")
        if self.solve_presets is not None:
            _count("solve_presets", self.solve_presets,
                   "presets, best on stage 1's noise, solved besides the finalists; None = 1 with a solve stage")
        if self.solve and not self.solve_finalists + self.presets_solved:
            raise ValueError(f"solve_finalists=0 with solve_presets=0: the solve stage (solve={self.solve}) would fit "
                             "nothing; give solve_finalists or solve_presets >= 1, or solve=0")
        if not isinstance(self.solve_other_prediction, bool):
            raise ValueError(f"solve_other_prediction={self.solve_other_prediction!r}: must be True or False (whether "
                             "each solved preset's twin, UniPC-3 with the other prediction at its times, is solved too)")
        if self.solve_presets and not self.solve:
            raise ValueError(f"solve_presets={self.solve_presets}: the solve stage is off (solve=0); give solve >= 1 "
                             "Nelder-Mead trials")
        if (not isinstance(self.solve_ridge, (int, float)) or isinstance(self.solve_ridge, bool)
                or not math.isfinite(self.solve_ridge) or self.solve_ridge < 0):
            raise ValueError(f"solve_ridge={self.solve_ridge!r}: must be a finite number >= 0")
        if self.heldout < 2:
            raise ValueError(f"heldout={self.heldout}: must be at least 2 (half the held-out samples choose the winner, "
                             "the other half measure its gain)")
        if (not isinstance(self.samples, (tuple, list)) or len(self.samples) not in (2, 3)
                or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.samples)):
            raise ValueError(f"samples={self.samples!r}: must be two or three positive integers (noise samples "
                             "per evaluation in each stage)")
        splits = self.splits
        if (len(splits) != len(self.samples) - 1
                or any(not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1 for f in splits)
                or any(b <= a for a, b in zip(splits, splits[1:]))):
            raise ValueError(f"stage_split={self.stage_split!r}: must be the fraction of the budget spent before each "
                             f"later stage starts, increasing in (0, 1): {len(self.samples) - 1} number(s) for "
                             f"{len(self.samples)} stages")
        shares = self.stage_shares()
        if min(shares) < 1:
            raise ValueError(f"budget={self.budget}: too small for {len(self.samples)} stages at stage_split "
                             f"{self.stage_split}: every stage needs at least one evaluation (stage shares "
                             f"{', '.join(map(str, shares))}); give budget >= {self.min_budget()}")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float))
                                                 and math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise ValueError(f"max_minutes={self.max_minutes!r}: must be a finite number >= 0")

    @property
    def presets_solved(self) -> int:
        """`solve_presets`, or its default (`presets_solved`)."""
        return presets_solved(self.solve, self.solve_presets)

    @property
    def schedules_solved(self) -> int:
        """Schedules the solve stage fits at most: the finalists, the presets and, with
        `solve_other_prediction`, each preset's twin (`solve.twin`: UniPC-3 with the other
        prediction; left out where it diverges on stage 1's noise); 0 without a solve stage."""
        if not self.solve:
            return 0
        return self.solve_finalists + self.presets_solved * (2 if self.solve_other_prediction else 1)

    @property
    def splits(self) -> tuple:
        """`stage_split` as a tuple: the fraction of the budget spent when each later stage starts."""
        return tuple(self.stage_split) if isinstance(self.stage_split, (tuple, list)) else (self.stage_split,)

    def stage_ends(self) -> list[int]:
        """Evaluations requested when each stage ends: `budget` × each `stage_split`, then `budget`.
        Every counted evaluation fits in these: stage 1's preset seeds (the best `stage_ends()[0]`
        by the Gaussian probe when there are more), each later stage's re-evaluated survivors (at
        most its share) and the evolution."""
        return _stage_ends(self.budget, self.splits)

    def stage_shares(self) -> list[int]:
        """Evaluations each stage may request (`stage_ends` as differences)."""
        return _shares(_stage_ends(self.budget, self.splits))

    def survivors(self, stage: int) -> int:
        """Schedules a later stage (index >= 1) re-evaluates from the last: `population`, or its
        share of the budget when that is smaller."""
        return min(self.population, self.stage_shares()[stage])

    def min_budget(self) -> int:
        """The smallest budget that gives every stage at least one evaluation at this stage_split."""
        b = len(self.samples)
        while min(_shares(_stage_ends(b, self.splits))) < 1:   # ends: every split is below 1
            b += 1
        return b

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
        spacing = _spacing(space)
        return {"nfe": self.nfe, "seed": self.seed, "metric": metric_name, "settings": {
            "orders": list(space.orders), "predictions": list(space.predictions), "correctors": space.correctors,
            "afs": space.afs, "relax_range": space.relax_range, "samples": list(self.samples),
            "heldout": self.heldout, "budget": self.budget, "use_predictor": guided,
            "predictor": ({"gp": "gp/batch-ei"}.get(self.predictor, self.predictor) if guided else None),
            "probe": self.probe, "novelty": self.novelty, "population": self.population,
            "proposals": self.proposals, "per_generation": self.per_generation,
            "screen": self.screen_for_picks if guided else None,
            # only when changed, so logs written before these options existed still resume
            **({"extra_points": True} if getattr(space, "extra_points", False) else {}),
            **({"singlestep": True} if getattr(space, "singlestep", False) else {}),
            **({"implicit": True} if getattr(space, "implicit", False) else {}),
            **({"reference_nfe": self.reference_nfe} if self.reference_nfe != 200 else {}),
            **({"finalists": self.finalists} if self.finalists != 4 else {}),
            **({"stage_split": list(self.splits)} if self.splits != (0.75,) else {}),
            **({"heldout_presets": self.heldout_presets} if self.heldout_presets is not None else {}),
            **({"reference_dtype": str(self.reference_dtype)} if self.reference_dtype != torch.float64 else {}),
            # the precision of every evaluation and of the solve stage's student
            **({"dtype": str(self.dtype)} if self.dtype != torch.float32 else {}),
            # the reference's spacing moved off logSNR on EDM and flow (2026-12-03): their older logs'
            # metrics were measured against another reference
            **({"reference_spacing": spacing} if spacing != "logSNR" else {}),
            **({"solve": {"trials": self.solve, "finalists": self.solve_finalists,
                          **({"presets": self.presets_solved} if self.presets_solved else {}),
                          # the presets' other prediction (2026-12-05): logs from before it stay the one-prediction solve
                          **({"other_prediction": True} if self.presets_solved and self.solve_other_prediction else {}),
                          "samples": self.solve_samples,
                          "teacher": self.solve_teacher, "ridge": self.solve_ridge}} if self.solve else {})}}

    def cost_estimate(self, n_presets: int, guided: bool = False, needs_reference: bool = True,
                      n_unseeded: int | None = None, check_rows: int = 1,
                      processes: int = 1) -> dict:
        """Network rows (samples through the network; ×2 under classifier-free guidance) a search
        makes at most, by phase: each stage (its share of the budget × samples × NFE), the held-out table
        (the finalists and the presets; with `heldout_presets`, also the `n_unseeded` presets the
        search did not start from, default all, on stage 1's noise to choose them), the reference
        solves (every noise set × reference_nfe); stage 1 also holds the one-sample network check
        before the search (`check_rows`: a row per prompt). Under torchrun every one of `processes`
        runs the check and may solve every reference; the solve stage is split over them.
        Evaluations read back from a log cost nothing."""
        k = 2 if guided else 1
        shares = self.stage_shares()
        table = n_presets if self.heldout_presets is None else min(self.heldout_presets, n_presets)
        screen = (n_presets if n_unseeded is None else n_unseeded) * self.samples[0] if table < n_presets else 0
        out = {"stage1": (shares[0] * self.samples[0] * self.nfe + check_rows * processes) * k}
        for i in range(1, len(shares)):
            out[f"stage{i + 1}"] = shares[i] * self.samples[i] * self.nfe * k
        out.update({
               # the finalists and the table on the choice half of the held-out samples, the winner and
               # the best preset on the report half
               # (and the solved schedules, which join the finalists there)
               "heldout": ((self.finalists + table + self.schedules_solved)
                           * (self.heldout - self.heldout // 2)
                           + 2 * max(check_rows, self.heldout // 2) + screen) * self.nfe * k,
               # every noise set's solve, and the check of stage 1's against twice the steps
               "reference": ((sum(self.samples) + self.heldout + 2 * self.samples[0]) * self.reference_nfe
                             * k * processes if needs_reference else 0)})
        if self.solve:   # the teacher (its steps and the last node's slope), then each trial of each solved schedule
            # (under torchrun the noise is split over the processes in blocks of check_rows; with fewer
            # blocks than processes every process runs the whole stage)
            solved = self.schedules_solved
            whole = processes if max(1, self.solve_samples // check_rows) < processes else 1
            out["solve"] = (self.solve_teacher + 1 + self.solve * solved * self.nfe) * self.solve_samples * k * whole
            if self.presets_solved and table >= n_presets:   # the presets ranked on stage 1's noise (no table screen)
                out["solve"] += (n_presets if n_unseeded is None else n_unseeded) * self.samples[0] * self.nfe * k
            if self.presets_solved and self.solve_other_prediction:   # the other prediction's divergence check there
                out["solve"] += self.presets_solved * self.samples[0] * self.nfe * k
        out["total"] = sum(out.values())
        return out
