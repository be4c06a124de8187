import torch

# The CPU numbers in README.md and docs/benchmarks.md are for 2 threads (the development machine's cores).
torch.set_num_threads(2)
# Randomly initialised networks drive samples through denormal ranges, where x86 float math is
# ~100× slower; flush them so the loops measure the solver, not denormal assists.
torch.set_flush_denormal(True)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Name the GPU (and torch) in the JSON, so a table says which card gave it."""
    machine_info["torch"] = torch.__version__
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name(0)
