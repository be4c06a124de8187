"""The reference solve's own error on every embedded model and noise schedule (docs/experiments.md,
"The reference"): the default 50-step UniPC-3 reference (float64, `metrics.reference_spacing`)
against one of 800 steps, next to the best NFE-5 preset's metric it has to resolve, and the error
the search measures itself (the 50-step solve against 100 steps on 16 samples).

    python bench/reference_error.py
"""
import torch

import usf_fast
from usf_fast.metrics import make_metric, reference_distance, reference_spacing
from usf_fast.models import embedded_model
from usf_fast.search import evaluate_schedules, preset_candidates
from usf_fast.search.evaluate import NoiseSet

CASES = [("gmm-2d", None), ("gmm-image", None), ("gmm-image", usf_fast.NoiseScheduleEDM()),
         ("gmm-image", usf_fast.NoiseScheduleFlow()), ("digits", None), ("digits-flow", None)]


def main(samples: int = 64, steps: int = 50, nfe: int = 5):
    print(f"| model | noise schedule | spacing | error of {steps} steps (vs 800) | measured by the search (vs {2 * steps}, 16 samples) "
          f"| best NFE-{nfe} preset's metric | error / metric |")
    print("|---|---|---|---|---|---|---|")
    for name, ns in CASES:
        model = embedded_model(name, ns)
        ns = model.noise_schedule
        t = (ns.t_max, ns.t_min)
        coarse = NoiseSet(model.sample_shape, samples, 1, "s1", reference_nfe=steps)
        fine = NoiseSet(model.sample_shape, samples, 1, "s1", reference_nfe=800)
        err = reference_distance(coarse.reference(model, *t), fine.reference(model, *t))
        measured = coarse.reference_error(model, *t, samples=16)
        presets = preset_candidates(ns, nfe)
        with torch.no_grad():
            vals = evaluate_schedules(model, [s for _, s in presets], fine, make_metric("ref", model), t)
        best = min(vals)
        label = getattr(ns, "schedule", ns.kind)
        print(f"| {name} | {label} | {reference_spacing(ns)} | {err:.2e} | {measured:.2e} | {best:.4f} | {err / best:.2%} |",
              flush=True)


if __name__ == "__main__":
    main()
