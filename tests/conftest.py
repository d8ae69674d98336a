"""Shared test settings: small thread count so parallel CI jobs on 2 cores stay predictable."""

import torch

torch.set_num_threads(2)
