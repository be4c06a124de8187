"""S³ evaluation throughput: candidates per second, batched (one dense-program batch per chunk of
candidates: per-sample times and coefficients) vs one candidate at a time, same candidates, same
noise, same run.

    pytest bench/test_search_eval.py --benchmark-only
"""
import numpy as np
import pytest
import torch

from usf_fast.models import embedded_model
from usf_fast.search import SearchSpace, evaluate_schedules
from usf_fast.search.evaluate import NoiseSet, ReferenceDistance

MODEL = embedded_model("gmm-image")
NS = MODEL.noise_schedule
SPACE = SearchSpace(NS, 5)
CANDIDATES = [SPACE.mutate(SPACE.seeds()[i % 20], np.random.default_rng(i)) for i in range(32)]
NOISE = NoiseSet((3, 16, 16), 64, 0, "bench")
NOISE.reference(MODEL, NS.t_max, NS.t_min)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 8, 32], ids=lambda c: "one-at-a-time" if c == 1 else f"batched-{c}")
def test_candidates_per_second(benchmark, chunk, device):
    benchmark.group = f"S3 evaluation: 32 candidates x 64 samples, NFE 5, gmm-image, {device}"
    benchmark.extra_info["candidates"] = len(CANDIDATES)
    benchmark.pedantic(lambda: evaluate_schedules(MODEL, CANDIDATES, NOISE, ReferenceDistance(), (NS.t_max, NS.t_min),
                                                  chunk=chunk, device=device), rounds=5, warmup_rounds=1)
