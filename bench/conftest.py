import torch

# The CPU numbers in README.md are for 2 threads (the development machine's cores).
torch.set_num_threads(2)
