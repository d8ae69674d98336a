"""Cost per training step of the options beyond the paper, as ratios to the plain step, measured side by side.

One model, one batch size, the library's own step (`dsnet.training.trainer.training_step`, the loader and
`WeightAverage.update` exactly as the trainer calls them). The variants, each on its own copy of the same
initial weights, are timed in interleaved rounds (plain, EMA, AWP, ..., then again), so a busy machine slows
them alike; the ratio reported is the median over the rounds of variant time / plain time of that round:

- plain: TRADES (β = 6), PGD-10 L∞ (the paper's settings), one optimiser step;
- ema: plus the weight-average update after the step (`train.ema_decay`);
- awp: plus adversarial weight perturbation (`objective.awp_gamma`: a proxy forward and backward, the
  perturbation and its restore);
- extra: the batch drawn 70 % from a memory-mapped extra .npz (`data.extra_path`) and 30 % from the split;
- l2: the attack in the L2 ball (`objective.norm: L2`, ε = 0.5, α = ε/4) instead of L∞;
- all: EMA + AWP + extra data together.

    python benchmarks/options.py --model dsnet_small --batch-size 32 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsnet.data import DeviceLoader, ImageSplit
from dsnet.data.extra import open_extra_images
from dsnet.models import create_model, split_parameters
from dsnet.objectives import build_objective
from dsnet.runtime.precision import resolve_precision
from dsnet.training.ema import WeightAverage
from dsnet.training.trainer import training_step

VARIANTS = ("plain", "ema", "awp", "extra", "l2", "all")


class _Variant:
    """One model with its optimisers, objective, loader and (maybe) weight average."""

    def __init__(self, name: str, model: torch.nn.Module, split: ImageSplit, extra_path: Path, batch: int) -> None:
        self.name = name
        self.model = copy.deepcopy(model).train()
        network, attention = split_parameters(self.model)
        self.optimizers = [torch.optim.SGD(network, lr=0.01, momentum=0.9)]
        if attention:
            self.optimizers.append(torch.optim.Adam(attention, lr=1e-3))
        settings: dict[str, Any] = {"beta": 6.0}
        if name in ("awp", "all"):
            settings["awp_gamma"] = 0.005
        if name == "l2":
            settings.update(norm="L2", eps=0.5, step_size=0.125)
        self.objective = build_objective("trades", **settings)
        extra = open_extra_images(extra_path, 10) if name in ("extra", "all") else None
        self.loader = DeviceLoader(split, batch, shuffle=True, drop_last=True, crop=True, flip=True, seed=0,
                                   extra=extra, extra_fraction=0.7)
        self.batches = iter(())
        self.ema = WeightAverage(self.model, 0.995, 0) if name in ("ema", "all") else None
        self.precision = resolve_precision("off", torch.device("cpu"))
        self.scaler = self.precision.grad_scaler()
        self.generator = torch.Generator().manual_seed(0)
        self.step_count = 0

    def step(self) -> float:
        """One step from the loader's next batch (the batch's loading included); seconds."""
        start = time.perf_counter()
        try:
            x, y = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x, y = next(self.batches)
        training_step(self.model, self.objective, x, y, optimizers=self.optimizers, scaler=self.scaler,
                      precision=self.precision, epoch=1.0, generator=self.generator)
        self.step_count += 1
        if self.ema is not None:
            self.ema.update(self.step_count)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dsnet_small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--extra-images", type=int, default=100_000, help="size of the generated .npz")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split = ImageSplit(torch.from_numpy(rng.integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)),
                       torch.from_numpy(rng.integers(0, 10, 2000)), 10)
    with tempfile.TemporaryDirectory() as folder:
        extra_path = Path(folder) / "generated.npz"
        np.savez(extra_path, image=np.lib.format.open_memmap(Path(folder) / "i.npy", "w+", np.uint8,
                                                              (args.extra_images, 32, 32, 3)),
                 label=rng.integers(0, 10, args.extra_images))
        model = create_model(args.model, num_classes=10)
        variants = [_Variant(name, model, split, extra_path, args.batch_size) for name in VARIANTS]
        for variant in variants:  # warm-up: proxies, caches, the first memory-map reads
            variant.step()
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                times[variant.name].append(sum(variant.step() for _ in range(args.steps)) / args.steps)
    ratios = {name: statistics.median(t / p for t, p in zip(times[name], times["plain"])) for name in VARIANTS}
    result = {
        "model": args.model, "batch_size": args.batch_size, "rounds": args.rounds, "steps": args.steps,
        "extra_images": args.extra_images, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "torch": torch.__version__,
        "plain_step_s": statistics.median(times["plain"]),
        "ratio_to_plain": ratios,
    }
    print(f"{args.model}, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps, "
          f"plain step {result['plain_step_s']:.3f} s")
    for name in VARIANTS:
        print(f"  {name:6s} {ratios[name]:.2f}x the plain step")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
