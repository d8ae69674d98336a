"""Shared test settings.

One intra-op thread: the test models are tiny, and on a small shared CI machine more threads than free cores
make them crawl (a tiny RobNet step took 20 s with 2 threads under load and 0.07 s with 1).
"""

import torch

torch.set_num_threads(1)
