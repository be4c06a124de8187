"""Ratio table from a pytest-benchmark JSON: each implementation's median against the copy floor
and diffusers' step of the same group.

    pytest bench/ --benchmark-only --benchmark-json out/bench.json && python bench/report.py out/bench.json
"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"].get("impl") if b.get("params") else None
        if impl is None:
            continue
        groups[b["group"]][impl] = (b["stats"]["median"], b.get("extra_info", {}))
    machine = data.get("machine_info", {})
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} logical CPUs"
          f"{gpu}, torch {machine.get('torch', '?')}")
    print("| group | K | impl | median µs | × copy floor | diffusers ÷ this | overhead vs model-only |")
    print("|---|---|---|---|---|---|---|")
    for g in sorted(groups):
        impls = groups[g]
        floor = impls.get("copy-floor", (None,))[0]
        diff = impls.get("diffusers", (None,))[0]
        for name, (med, info) in sorted(impls.items(), key=lambda kv: kv[1][0]):
            # the graph runner is compared with the model calls captured the same way, where measured
            base = "model-only-graph" if name == "graph" and "model-only-graph" in impls else "model-only"
            model_only = None if name.startswith("model-only") else impls.get(base, (None,))[0]
            r_floor = f"{med / floor:.2f}" if floor else "-"
            r_diff = f"{diff / med:.1f}" if diff else "-"
            r_over = f"{(med - model_only) / model_only:+.1%}" if model_only else "-"
            print(f"| {g} | {info.get('K', '')} | {name} | {med * 1e6:.1f} | {r_floor} | {r_diff} | {r_over} |")


if __name__ == "__main__":
    main(sys.argv[1])
