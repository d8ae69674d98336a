"""The one robust-flags loop: clean and robust per-point flags over a set of points, in batches, in fp32, sharded.

Every number dsnet reports about robustness comes from here: `dsnet eval`, the trainer's per-epoch validation,
the Fast-AT collapse guard and the sanity sweep. `attack_run` attacks only the points the model still classifies
correctly (as AutoAttack does): a point that is wrong already is not robust, and attacking it would only cost
time. A point counts as robust when its clean and its adversarial input are both classified correctly.

Under `torchrun` every process takes its share of the points (blocks of `batch_size` dealt round-robin,
`dsnet.runtime.shard_positions`), so each forms exactly the batches one process would form; since an attack call
is a pure function of its batch (`dsnet.attacks.Attack`), the flags do not depend on the number of processes. The
per-point results are summed across processes, and every process returns the full flags.

Everything runs in fp32 with autocast off, whatever context the caller is in, because low-precision logits can
mask gradients. Images may be uint8 (converted per batch, so a whole test set stays small on the device) or
float in [0, 1]; each batch goes to the model's device.

A NaN never becomes a number: the argmax of NaN logits is a fixed class, so a model that returns NaN would score
a plausible few per cent, and an attack whose iterate turned NaN would look like a failed attack. The logits of
every batch and the adversarial points are checked once per batch (a sync that the flags need anyway), and the
first non-finite value stops the loop with a `NonFiniteError` that names the batch and its points. NaN gradients
reach the iterate (`dsnet.attacks.norms`), so a NaN loss inside an attack is caught here too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from dsnet.attacks.core import check_inputs, eval_mode
from dsnet.attacks.norms import perturbation_size
from dsnet.errors import NonFiniteError
from dsnet.runtime.distributed import all_reduce, shard_positions
from dsnet.validate import check_int

__all__ = ["AttackFn", "AttackRun", "clean_flags", "attack_run", "correct_flags", "accuracy", "robust_flags",
           "world", "perturbation_stats", "check_finite_batch"]

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""attack(model, x, y) -> x_adv; every `dsnet.attacks.Attack` is one."""


@dataclass
class AttackRun:
    """What one attack did on a set of points.

    Attributes:
        flags: (n,) bool on the CPU: the clean and the adversarial input are both classified correctly.
        stats: statistics of the adversarial points over all processes: "max_linf", "max_l2", "max_l1", "min_value",
            "max_value", "nan_count", "n_attacked" and the attack's "eps".
        extra: attack-specific results (AutoAttack: "stage_accuracy", "stages_run", "warnings").
    """

    flags: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return int(self.flags.sum()) / self.flags.numel() if self.flags.numel() else float("nan")


def world() -> tuple[int, int]:
    """(rank, number of processes) of the current process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _gather(local: torch.Tensor, positions: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Per-point values of every rank's positions as one (n,) tensor on the CPU (each position has one owner)."""
    full = torch.zeros(n, dtype=torch.int64, device=device)
    full[positions.to(device)] = local.to(device=device, dtype=torch.int64)
    return all_reduce(full, "sum").cpu()


def _batches(positions: torch.Tensor, batch_size: int, progress: str | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, positions) of each batch; with a progress bar on rank 0 when `progress` names one and stderr is a
    terminal."""
    starts = range(0, positions.numel(), batch_size)
    bar = None
    if progress and world()[0] == 0 and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc=progress, file=sys.stderr, leave=False, mininterval=0.25,
                   dynamic_ncols=True, unit="batch")
    try:
        for start in starts:
            yield start, positions[start : start + batch_size]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def check_finite_batch(what: str, values: torch.Tensor, batch: int, points: torch.Tensor) -> None:
    """Raises `NonFiniteError` when `values` hold a NaN or an infinity.

    Args:
        what: what the values are, e.g. "logits" or "adversarial images".
        values: the batch's tensor.
        batch: the batch's number on this process (0-based).
        points: the positions of the batch's points in the evaluated set.
    """
    if not bool(torch.isfinite(values).all()):
        first, last = int(points.min()), int(points.max())
        raise NonFiniteError(f"NaN or infinite {what} on batch {batch + 1} (evaluated points {first}..{last}); check "
                             "the model's weights, its normalisation and its forward pass")


def perturbation_stats(pairs: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                       eps: float) -> dict[str, Any]:
    """Statistics of adversarial points over all processes: the largest L∞, L2 and L1 distance to their clean
    points, the smallest and largest value, the number of NaNs, and how many points were attacked.

    Args:
        pairs: this process's (x, x_adv) batches.
        device: where the reductions run.
        eps: the attack's radius, carried along for the bounds check.
    """
    values = torch.tensor([0.0, 0.0, 0.0, float("inf"), float("-inf")], dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    for x, x_adv in pairs:
        if x_adv.numel() == 0:
            continue
        delta = (x_adv - x).nan_to_num(nan=0.0)
        finite = x_adv.nan_to_num(nan=0.5)
        for i, norm in enumerate(("Linf", "L2", "L1")):
            values[i] = torch.maximum(values[i], perturbation_size(delta, norm).max().double())
        values[3] = torch.minimum(values[3], finite.min().double())
        values[4] = torch.maximum(values[4], finite.max().double())
        counts[0] += torch.isnan(x_adv).sum()
        counts[1] += x_adv.shape[0]
    distances = all_reduce(values[:3].clone(), "max")
    low = all_reduce(values[3:4].clone(), "min")
    high = all_reduce(values[4:5].clone(), "max")
    all_reduce(counts, "sum")
    stats = {"max_linf": float(distances[0]), "max_l2": float(distances[1]), "max_l1": float(distances[2]),
             "min_value": float(low), "max_value": float(high), "nan_count": int(counts[0]),
             "n_attacked": int(counts[1]), "eps": eps}
    if stats["n_attacked"] == 0:
        stats.update(max_linf=0.0, max_l2=0.0, max_l1=0.0, min_value=0.0, max_value=0.0)
    return stats


def clean_flags(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256,
                progress: str | None = None) -> torch.Tensor:
    """Which points the model classifies correctly, over all processes.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        images: (n, C, H, W) uint8 images or float images in [0, 1] (any device).
        labels: (n,) labels.
        batch_size: images per forward pass (and per block of the sharding).
        progress: the label of a progress bar (rank 0, on a terminal); None shows none.

    Returns:
        (n,) bool on the CPU.
    """
    batch_size = check_int("clean_flags", "batch_size", batch_size, minimum=1)
    n = images.shape[0]
    device = _device(model, images.device)
    rank, size = world()
    positions = shard_positions(n, rank, size, batch_size)
    local = torch.zeros(positions.numel(), dtype=torch.bool, device=device)
    with eval_mode(model), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        for number, (start, batch) in enumerate(_batches(positions, batch_size, progress)):
            index = batch.to(images.device)
            x, y = _as_float(images[index].to(device)), labels[index].to(device)
            logits = model(x)
            check_finite_batch("logits", logits, number, batch)
            local[start : start + batch.numel()] = logits.argmax(dim=1) == y
    return _gather(local, positions, n, device).bool()


def attack_run(model: nn.Module, attack: AttackFn, images: torch.Tensor, labels: torch.Tensor, *,
               clean: torch.Tensor, batch_size: int = 256, progress: str | None = None) -> AttackRun:
    """Attacks, `batch_size` at a time, this process's share of the points that are still correct.

    The still-correct points are taken in order and cut into batches of `batch_size`, which are dealt to the
    processes round-robin: every batch is full (but the last), and the same on any number of processes.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        attack: called as `attack(model, x_batch, y_batch) -> x_adv_batch`.
        images: (n, C, H, W) uint8 images or float images in [0, 1].
        labels: (n,) labels.
        clean: (n,) bool, which points are classified correctly (`clean_flags`); only those are attacked.
        batch_size: points per block of the sharding, and at most per attack call.
        progress: the label of a progress bar (rank 0, on a terminal).

    Returns:
        The flags over all processes and the statistics of the adversarial points.
    """
    batch_size = check_int("attack_run", "batch_size", batch_size, minimum=1)
    n = images.shape[0]
    device = _device(model, images.device)
    rank, size = world()
    todo = clean.to("cpu").bool().nonzero().squeeze(1)  # the same on every process: `clean` is gathered
    positions = shard_positions(todo.numel(), rank, size, batch_size)
    local = torch.zeros(positions.numel(), dtype=torch.bool, device=device)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    with eval_mode(model), torch.autocast(device_type=device.type, enabled=False):
        for number, (start, batch) in enumerate(_batches(positions, batch_size, progress)):
            index = todo[batch].to(images.device)
            x, y = _as_float(images[index].to(device)), labels[index].to(device)
            x_adv = attack(model, x, y)
            check_finite_batch("adversarial images (the attack's loss or gradient was NaN)", x_adv, number,
                               todo[batch])
            with torch.no_grad():
                logits = model(x_adv)
                check_finite_batch("logits of the adversarial images", logits, number, todo[batch])
                local[start : start + batch.numel()] = logits.argmax(dim=1) == y
            pairs.append((x, x_adv.detach()))
    eps = getattr(attack, "eps", None)
    eps = float(eps) if eps is not None else float("nan")
    return AttackRun(_gather(local, todo[positions], n, device).bool(), perturbation_stats(pairs, device, eps))


def correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Which points the model classifies correctly.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        x: (N, C, H, W) float images in [0, 1].
        y: (N,) labels on x's device.
        batch_size: images per forward pass.

    Returns:
        (N,) bool tensor on x's device.
    """
    check_inputs("correct_flags", x, y)
    return clean_flags(model, x, y, batch_size=batch_size).to(x.device)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Clean accuracy in [0, 1] (see `correct_flags`); nan for an empty set."""
    flags = correct_flags(model, x, y, batch_size)
    return int(flags.sum()) / flags.numel() if flags.numel() else float("nan")


def robust_flags(
    model: nn.Module, attack: AttackFn, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Which points stay correctly classified under `attack` (the one loop, on float tensors).

    For an `Attack`, this is `attack.evaluate(...)`, so AutoAttack runs the reference on the whole set (it
    regroups the surviving points between its stages); any other callable is called batch by batch.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
        attack: an `Attack`, or any callable `attack(model, x_batch, y_batch) -> x_adv_batch`.
        x: (N, C, H, W) float images in [0, 1].
        y: (N,) labels on x's device.
        batch_size: images per attack call.

    Returns:
        (N,) bool tensor on x's device: True where the clean and the adversarial input are both classified
        correctly.
    """
    flags = correct_flags(model, x, y, batch_size)
    evaluate = getattr(attack, "evaluate", None)
    if callable(evaluate):
        return evaluate(model, x, y, clean=flags, batch_size=batch_size).flags.to(x.device)
    return attack_run(model, attack, x, y, clean=flags, batch_size=batch_size).flags.to(x.device)
