import torch

# The CPU numbers in README.md are for 2 threads (the development machine's cores).
torch.set_num_threads(2)
# Randomly initialised networks drive samples through denormal ranges, where x86 float math is
# ~100× slower; flush them so the loops measure the solver, not denormal assists.
torch.set_flush_denormal(True)
