"""The GPU proof in one command: throughput, mixed-precision AT, AutoAttack fp32 vs TF32 and DDP, in ≤ 8 minutes.

A GPU is lent for minutes at a time, so this script turns one short loan into every figure issue #23 asks for, and
records them even when a part fails or the time runs out:

- amp: PGD-10 AT (`dsnet.training.trainer.training_step`, the `at` objective at the paper's settings) of one set of
  initial weights in fp32, bf16 autocast and fp16 autocast with its grad scaler, step for step on the same seeded
  synthetic batches (the three runs alternate, so they see the same machine and stop at the same step when the
  budget ends). Reported: the loss curves, the final loss, the largest relative difference to fp32 over the last
  steps, non-finite losses, the steps the scaler skipped, images/s.
- autoattack: our adapter of the reference AutoAttack (`standard`, L∞, ε = 0.031, the version's own attacks) on
  held-out synthetic points, against the fp32 weights of the amp section, inside `evaluation_math("fp32")` and
  `evaluation_math("tf32")`. Reported: clean and robust accuracy of each, how many per-point robust flags differ,
  the time of each and their ratio.
- ddp: two processes joined by `dsnet.runtime.distributed.setup_distributed` (NCCL on two GPUs, gloo on the CPU in
  `--smoke`), DDP from `wrap_for_training` with synchronised BatchNorm, a few AT steps on each rank's half of a
  global batch, compared with one process on the whole batch; on one GPU it records "skipped: 1 GPU".
- throughput: `benchmarks/throughput.py`'s `benchmark_model` (plain fp32 eager vs the fast path), for DS-Net-4,
  DS-Net-6, WRN-34-10 and the field's architectures, with the share of the GPU's dense bf16 peak.

Sizes and time budgets on a GPU (an H100 in mind; budgets are checked before each unit of work, so a unit that has
started finishes, and a watchdog ends the run at `--deadline`, 465 s, with what it has):

- amp, 75 s: `dsnet_small` (0.75 M parameters, 0.24 GFLOP per image), batch 128, up to 300 steps per precision.
  DS-Net-4 (5.3 GFLOP) would need about 20x longer per step: a few hundred steps in three precisions would
  take the whole loan, while the small DS-Net has the same robust modules and the same attack, so it shows the
  same numerical effects.
- autoattack, 120 s: the same `dsnet_small`, up to 1,000 points in two chunks of 500 (also the attack batch size:
  a network this small leaves a GPU launch-bound at the reference's 250, so 500 costs about the same per
  iteration), one chunk in fp32 then the same chunk in TF32 (the order alternating); the second chunk runs only if
  1.2x the first pair's time is left. Standard AutoAttack spends APGD-T's 9 targets, FAB-T's 9 targets and
  Square's 5,000 queries on every point that stays robust, so on DS-Net-4 (20x the FLOPs) 1,000 points would take
  far longer than the loan. The chunks are separate calls, so the random draws differ from one call on 1,000
  points; both math modes see the same chunks.
- ddp, 60 s on two or more GPUs (20 steps of `dsnet_small`, global batch 256); nothing on one GPU.
- throughput, the rest (about 200 s): batch 128, 3 interleaved repetitions per model. Only the first model,
  DS-Net-4, is compiled (`--compile first`): compiling is 1-3 minutes per architecture on a cold cache, and
  DS-Net-4's compiled fast path is what `dsnet train` runs on a GPU; the other models' fast path is channels_last
  and bf16 without compiling. Then WRN-34-10 (the paper's baseline), DS-Net-6, DM-WRN-28-10 (the architecture of
  most RobustBench entries, 10.5 GFLOP), RobustResNet-A2 (21.5 GFLOP, the largest that fits; A3/A4 and the WRN-70-16
  family would take a minute each) and ResNet-50, in that order of priority: a model is skipped when the time
  left is under 1.5x the slowest uncompiled model so far.

`--smoke` runs every section's code path at toy size on the CPU (tiny models, batch 8, 3 steps, 16 AutoAttack points
with reduced attack budgets, DDP over gloo) in about half a minute; it is what the tests run. Without `--smoke` a
machine without a GPU is refused. A failing section records its error and traceback, the others still run, and
the exit status is 1 (2: usage, or no GPU without `--smoke`; 124: the deadline stopped the run). The JSON and
Markdown files are rewritten after every section and every model.

    benchmarks/gpu_check.sh                                   # on the GPU: results-gpu.json and results-gpu.md
    benchmarks/gpu_check.sh --smoke --out-dir /tmp/check      # on a CPU: results-gpu-smoke.json and .md
    benchmarks/gpu_check.sh --sections autoattack,throughput --models dsnet4 --compile none
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dsnet.attacks.autoattack import AutoAttack, toy_budgets
from dsnet.models import create_model, split_parameters
from dsnet.objectives import build_objective
from dsnet.runtime.distributed import (
    convert_sync_batchnorm,
    replica_divergence,
    setup_distributed,
    teardown_distributed,
)
from dsnet.runtime.precision import evaluation_math, math_mode, resolve_precision
from dsnet.training.fast_path import wrap_for_training
from dsnet.training.trainer import training_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, when imported from elsewhere
from throughput import EPS, _cpu_name, benchmark_model, gpu_peak, print_table

SECTIONS = ("amp", "autoattack", "ddp", "throughput")
"""In the order they run: the amp section trains the weights AutoAttack evaluates, and the throughput section,
whose models can be skipped one by one, takes the time that is left."""
PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
FORMAT = "dsnet-gpu-check/1"


@dataclass(frozen=True)
class Plan:
    """What each section runs and how long it may take; `GPU_PLAN` and `SMOKE_PLAN` are the two.

    Attributes:
        models, compile, batch_size, repetitions: the throughput section (`compile`: "first", "all" or "none").
        amp_model, amp_batch, amp_steps, amp_tail: the mixed-precision runs; `amp_tail` last steps are compared.
        aa_points, aa_chunk, aa_reduced: AutoAttack's points, points per call, and toy attack budgets (smoke).
        aa_predicted_labels: label the points with the model's own clean predictions (smoke: a toy model trained for
            3 steps is right on about 10 % of 16 points, often none, and AutoAttack would then attack nothing).
        ddp_model, ddp_batch, ddp_steps: the DDP check (`ddp_batch` is the global batch).
        budgets: seconds per section, checked before each unit of work; deadline_s: the watchdog's limit.
    """

    models: tuple[str, ...]
    compile: str
    batch_size: int
    repetitions: int
    amp_model: str
    amp_batch: int
    amp_steps: int
    amp_tail: int
    aa_points: int
    aa_chunk: int
    aa_reduced: bool
    aa_predicted_labels: bool
    ddp_model: str
    ddp_batch: int
    ddp_steps: int
    budgets: dict[str, float]
    deadline_s: float


GPU_PLAN = Plan(
    models=("dsnet4", "wrn34_10", "dsnet6", "dm_wrn28_10", "rrn_a2", "resnet50"), compile="first", batch_size=128,
    repetitions=3, amp_model="dsnet_small", amp_batch=128, amp_steps=300, amp_tail=50, aa_points=1000, aa_chunk=500,
    aa_reduced=False, aa_predicted_labels=False, ddp_model="dsnet_small", ddp_batch=256, ddp_steps=20,
    budgets={"amp": 75.0, "autoattack": 120.0, "ddp": 60.0, "throughput": 200.0}, deadline_s=465.0,
)
SMOKE_PLAN = Plan(
    models=("dsnet_tiny", "wrn_tiny", "dm_wrn_tiny"), compile="none", batch_size=4, repetitions=2,
    amp_model="dsnet_tiny", amp_batch=8, amp_steps=3, amp_tail=2, aa_points=16, aa_chunk=8, aa_reduced=True,
    aa_predicted_labels=True, ddp_model="dsnet_tiny", ddp_batch=8, ddp_steps=2,
    budgets={"amp": 30.0, "autoattack": 30.0, "ddp": 60.0, "throughput": 30.0}, deadline_s=110.0,
)
DDP_BLOCKS = ("residual", "dense", "ada_rk")
"""Without MBConv, whose drop-connect draws its own mask on every rank: the 2-process run then equals one process."""


# ------------------------------------------------------------------------------------------------------ logging
_START = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, with the wall-clock time and the seconds since the start."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp} +{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


# ------------------------------------------------------------------------------------------------------- data
class SyntheticImages:
    """Seeded 32x32 images whose class is a smooth colour pattern under pixel noise: learnable in a few hundred
    steps (so loss curves fall and some points resist an ε = 0.031 attack), yet nothing to download, which a lent
    GPU cannot do. Batch `seed` always gives the same batch, on any device."""

    def __init__(self, amplitude: float = 0.25, noise: float = 0.05, classes: int = 10) -> None:
        generator = torch.Generator().manual_seed(0)
        coarse = torch.randn(classes, 3, 4, 4, generator=generator)
        patterns = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
        self.patterns = patterns / patterns.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        self.amplitude, self.noise, self.classes = amplitude, noise, classes

    def batch(self, n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, 32, 32) images in [0, 1] and (n,) labels."""
        generator = torch.Generator().manual_seed(seed)
        y = torch.randint(0, self.classes, (n,), generator=generator)
        x = 0.5 + self.amplitude * self.patterns[y] + self.noise * torch.randn(n, 3, 32, 32, generator=generator)
        return x.clamp(0, 1).to(device), y.to(device)


HELD_OUT_SEED = 1_000_000
"""Seed of the AutoAttack points; training batches use seeds 0, 1, 2, ..."""


def _optimizers(model: nn.Module) -> list[torch.optim.Optimizer]:
    """The trainer's pair: SGD for the network, Adam for DS-Net's attention (settings of the throughput benchmark)."""
    network, attention = split_parameters(model)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.SGD(network, lr=0.05, momentum=0.9, weight_decay=5e-4)]
    if attention:
        optimizers.append(torch.optim.Adam(attention, lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3))
    return optimizers


# -------------------------------------------------------------------------------------------------------- amp
class _PrecisionRun:
    """One copy of the initial weights trained in one precision, with its own optimisers, scaler and attack RNG."""

    def __init__(self, name: str, model: nn.Module, device: torch.device) -> None:
        self.name = name
        self.model = model.to(device).train()
        self.device = device
        self.precision = resolve_precision(PRECISIONS[name], device)
        self.optimizers = _optimizers(self.model)
        self.scaler = self.precision.grad_scaler()
        self.objective = build_objective("at", eps=EPS, step_size=0.007, steps=10)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.losses: list[float] = []
        self.step_s: list[float] = []
        self.skipped = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        scale = self.scaler.get_scale()
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            torch.manual_seed(seed)  # any global draw (drop-connect) is the same in every precision
            _sync(self.device)
            start = time.perf_counter()
            out = training_step(self.model, self.objective, x, y, optimizers=self.optimizers, scaler=self.scaler,
                                precision=self.precision, epoch=1.0, generator=self.generator)
            _sync(self.device)
        self.step_s.append(time.perf_counter() - start)
        self.losses.append(float(out.loss.detach()))
        self.skipped += self.scaler.get_scale() < scale  # the scaler backs off exactly when it skips the step


def run_amp(plan: Plan, device: torch.device, budget: float, out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Section b. Fills `out`; returns the fp32 run's final weights (for the AutoAttack section)."""
    torch.manual_seed(0)
    base = create_model(plan.amp_model)
    runs = [_PrecisionRun(name, copy.deepcopy(base), device) for name in PRECISIONS]
    data = SyntheticImages()
    out.update(model=plan.amp_model, batch_size=plan.amp_batch, objective="at (PGD-10, eps 0.031, step 0.007)",
               data="SyntheticImages, batch seed = step", fp32_math=math_mode())
    start = time.perf_counter()
    for step in range(plan.amp_steps):
        x, y = data.batch(plan.amp_batch, seed=step, device=device)
        order = runs if step % 2 == 0 else runs[::-1]
        for run in order:
            run.step(x, y, seed=step)
        if step % 25 == 0 or step == plan.amp_steps - 1:
            log(f"  amp step {step + 1}/{plan.amp_steps}: " + ", ".join(f"{r.name} {r.losses[-1]:.4f}" for r in runs))
        if time.perf_counter() - start > budget:
            log(f"  amp: budget of {budget:.0f} s reached after {step + 1} steps")
            break
    steps = len(runs[0].losses)
    warmup = min(3, steps - 1)  # the first steps autotune cuDNN and fill caches
    tail = min(plan.amp_tail, steps)
    reference = runs[0]
    ref_weights = torch.cat([p.detach().float().flatten() for p in reference.model.parameters()])
    out.update(steps=steps, timed_steps=steps - warmup, tail_steps=tail, precisions={})
    for run in runs:
        rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(run.losses, reference.losses)]
        weights = torch.cat([p.detach().float().flatten() for p in run.model.parameters()])
        finite = [v for v in run.losses if math.isfinite(v)]
        out["precisions"][run.name] = {
            "autocast_dtype": str(run.precision.dtype).replace("torch.", "") if run.precision.dtype else None,
            "grad_scaler": run.scaler.is_enabled(),
            "final_loss": run.losses[-1],
            "tail_mean_loss": statistics.fmean(run.losses[-tail:]),
            "max_rel_diff_to_fp32_tail": max(rel[-tail:]),
            "first_step_rel_diff_to_fp32": rel[0],
            "weights_rel_diff_to_fp32": float((weights - ref_weights).norm() / ref_weights.norm()),
            "nonfinite_losses": steps - len(finite),
            "skipped_steps": int(run.skipped),
            "final_scale": float(run.scaler.get_scale()) if run.scaler.is_enabled() else None,
            "images_per_s": plan.amp_batch * (steps - warmup) / sum(run.step_s[warmup:]),
            "losses": run.losses,
        }
    return {k: v.detach().cpu().clone() for k, v in reference.model.state_dict().items()}


# -------------------------------------------------------------------------------------------------- autoattack
def run_autoattack(plan: Plan, device: torch.device, budget: float, weights: dict[str, torch.Tensor] | None,
                   out: dict[str, Any]) -> None:
    """Section c: the same chunks of points under `evaluation_math("fp32")` and `("tf32")`, alternating."""
    torch.manual_seed(0)
    model = create_model(plan.amp_model)
    if weights is not None:
        model.load_state_dict(weights)
    model.to(device).eval()
    x, y = SyntheticImages().batch(plan.aa_points, seed=HELD_OUT_SEED, device=device)
    if plan.aa_predicted_labels:
        with torch.no_grad(), evaluation_math("fp32", device.type):
            y = model(x).argmax(1)
    attack = AutoAttack(eps=EPS, version="standard", seed=0, batch_size=plan.aa_chunk)
    out.update(model=plan.amp_model, weights="the amp section's fp32 weights" if weights is not None else
               "seeded initialisation (the amp section gave no weights)", eps=EPS, version="standard",
               chunk=plan.aa_chunk, budgets="reduced (smoke)" if plan.aa_reduced else "the version's own",
               labels="the model's fp32 predictions (smoke)" if plan.aa_predicted_labels else "the data's")
    flags: dict[str, list[torch.Tensor]] = {"fp32": [], "tf32": []}
    seconds = {"fp32": 0.0, "tf32": 0.0}
    with toy_budgets() if plan.aa_reduced else contextlib.nullcontext():
        for mode in flags:  # warm-up: cuDNN picks its algorithms per math mode, outside the timings
            with evaluation_math(mode, device.type), torch.enable_grad():
                xw = x[: plan.aa_chunk].clone().requires_grad_(True)
                F.cross_entropy(model(xw), y[: plan.aa_chunk]).backward()
            model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        pair_s = 0.0
        for number, begin in enumerate(range(0, plan.aa_points, plan.aa_chunk)):
            if number and time.perf_counter() - start + 1.2 * pair_s > budget:
                log(f"  autoattack: budget of {budget:.0f} s reached after {begin} points")
                break
            xc, yc = x[begin:begin + plan.aa_chunk], y[begin:begin + plan.aa_chunk]
            pair_s = 0.0
            for mode in (("fp32", "tf32") if number % 2 == 0 else ("tf32", "fp32")):
                with evaluation_math(mode, device.type) as settings:
                    _sync(device)
                    began = time.perf_counter()
                    result = attack.run(model, xc, yc)
                    _sync(device)
                    took = time.perf_counter() - began
                out.setdefault("math_settings", {})[mode] = settings
                out.setdefault("stage_settings", result.config.get("stage_settings"))
                out.setdefault("stages", list(result.stages))
                seconds[mode] += took
                pair_s += took
                flags[mode].append(result.fallen_at.cpu())
            log(f"  autoattack chunk {number + 1}: {begin + len(xc)} points, fp32 "
                f"{(flags['fp32'][-1] == -1).float().mean():.3f} / tf32 {(flags['tf32'][-1] == -1).float().mean():.3f}"
                f" robust, {pair_s:.1f} s")
    fallen = {mode: torch.cat(chunks) for mode, chunks in flags.items()}
    n = fallen["fp32"].numel()
    out.update(points=n, modes={})
    for mode, fallen_at in fallen.items():
        out["modes"][mode] = {"clean_accuracy": float((fallen_at != 0).float().mean()),
                              "robust_accuracy": float((fallen_at == -1).float().mean()),
                              "seconds": seconds[mode], "points_per_s": n / seconds[mode],
                              "stage_accuracy": {stage: float(((fallen_at == -1) | (fallen_at > number)).float().mean())
                                                 for number, stage in enumerate(out["stages"], start=1)}}
    robust = {mode: fallen_at == -1 for mode, fallen_at in fallen.items()}
    out["robust_flags_differ"] = int((robust["fp32"] != robust["tf32"]).sum())
    out["clean_flags_differ"] = int(((fallen["fp32"] != 0) != (fallen["tf32"] != 0)).sum())
    out["breaking_attack_differs"] = int((fallen["fp32"] != fallen["tf32"]).sum())
    out["speed_ratio_fp32_over_tf32"] = seconds["fp32"] / seconds["tf32"]


# --------------------------------------------------------------------------------------------------------- ddp
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_setup(name: str, device: torch.device, sync_bn: bool) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model = create_model(name, blocks=DDP_BLOCKS)
    if sync_bn:
        model = convert_sync_batchnorm(model, device)
    # No random start and no noise: the attack is then the same on either side, so only the arithmetic differs.
    return model.to(device).train(), build_objective("at", eps=EPS, step_size=0.007, steps=10, start="none",
                                                     noise_std=0.0)


def _ddp_worker(rank: int, world_size: int, port: int, device_type: str, plan: Plan, out_dir: str) -> None:
    """One rank: joins through the library's `setup_distributed` (NCCL on GPUs, gloo on CPUs), trains its half."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ctx = setup_distributed(device_type, option="gpu_check")
    try:
        model, objective = _ddp_setup(plan.ddp_model, ctx.device, sync_bn=True)
        handles = wrap_for_training(model, False, ctx.device, distributed=True)
        optimizers = _optimizers(model)
        precision = resolve_precision("off", ctx.device)
        scaler = precision.grad_scaler()
        generator = torch.Generator(device=ctx.device).manual_seed(0)
        step_s = []
        for step in range(plan.ddp_steps):
            x, y = SyntheticImages().batch(plan.ddp_batch, seed=step, device=ctx.device)
            _sync(ctx.device)
            start = time.perf_counter()
            training_step(handles.train, objective, x[rank::world_size], y[rank::world_size], optimizers=optimizers,
                          scaler=scaler, precision=precision, epoch=1.0, generator=generator)
            _sync(ctx.device)
            step_s.append(time.perf_counter() - start)
        divergence = replica_divergence(model)
        if ctx.is_main:
            torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "step_s": step_s,
                        "divergence": divergence, "backend": str(dist.get_backend()), "world_size": world_size,
                        "device": str(ctx.device)}, Path(out_dir) / "rank0.pt")
    finally:
        teardown_distributed()


def run_ddp(plan: Plan, device: torch.device, out: dict[str, Any]) -> str:
    """Section d. Returns the status: "ok", or "skipped" on fewer than two GPUs."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        out["reason"] = f"skipped: {torch.cuda.device_count()} GPU"
        return "skipped"
    world_size = 2
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(world_size, _free_port(), device.type, plan, folder), nprocs=world_size,
                 join=True)
        ranks = torch.load(Path(folder) / "rank0.pt", weights_only=True)
    model, objective = _ddp_setup(plan.ddp_model, device, sync_bn=False)
    optimizers = _optimizers(model)
    precision = resolve_precision("off", device)
    generator = torch.Generator(device=device).manual_seed(0)
    for step in range(plan.ddp_steps):  # one process on the whole global batch
        x, y = SyntheticImages().batch(plan.ddp_batch, seed=step, device=device)
        training_step(model, objective, x, y, optimizers=optimizers, scaler=precision.grad_scaler(),
                      precision=precision, epoch=1.0, generator=generator)
    one = model.state_dict()
    diffs = [float((ranks["state"][k].float() - v.detach().cpu().float()).abs().max())
             for k, v in one.items() if v.is_floating_point()]
    steady = ranks["step_s"][1:] or ranks["step_s"]
    out.update(world_size=ranks["world_size"], backend=ranks["backend"], rank0_device=ranks["device"],
               model=plan.ddp_model, global_batch=plan.ddp_batch, steps=plan.ddp_steps,
               images_per_s=plan.ddp_batch / statistics.median(steady), replica_divergence=ranks["divergence"],
               max_abs_diff_to_one_process=max(diffs))
    return "ok"


# -------------------------------------------------------------------------------------------------- throughput
def run_throughput(plan: Plan, device: torch.device, budget: float, peak: float | None, out: dict[str, Any],
                   save: Callable[[], None]) -> str:
    """Section a: `benchmark_model` per model, in order of priority, while the budget lasts."""
    out.update(batch_size=plan.batch_size, repetitions=plan.repetitions, compile=plan.compile, models={},
               errors={}, skipped=[])
    start = time.perf_counter()
    slowest = 0.0
    for number, name in enumerate(plan.models):
        left = budget - (time.perf_counter() - start)
        if number and left < 1.5 * slowest:
            log(f"  throughput: {left:.0f} s left, under 1.5x the slowest model so far: skipping {name}")
            out["skipped"].append(name)
            continue
        compiled = plan.compile == "all" or (plan.compile == "first" and number == 0)
        args = argparse.Namespace(batch_size=plan.batch_size, steps=plan.repetitions, no_compile=not compiled,
                                  amp="auto", no_flops=False)
        log(f"throughput {name}: plain vs fast ({'compiled' if compiled else 'not compiled'})")
        began = time.perf_counter()
        try:
            row = benchmark_model(name, args, device)
        except Exception as error:  # noqa: BLE001 - one model's failure must not cost the others' figures
            out["errors"][name] = _error(error)
            log(f"  throughput {name} failed: {out['errors'][name]['error']}")
            continue
        row["wall_s"] = time.perf_counter() - began
        if not compiled:
            slowest = max(slowest, row["wall_s"])
        for path in ("plain", "fast"):
            flops = row[path].get("at_flops_per_s")
            row[path]["at_share_of_peak"] = flops / peak if flops and peak else None
        out["models"][name] = row
        save()
    return "failed" if out["errors"] else "ok"


# ------------------------------------------------------------------------------------------------------ report
def _error(error: BaseException) -> dict[str, str]:
    return {"error": f"{type(error).__name__}: {error}".strip()[:1000], "traceback": traceback.format_exc()[-3000:]}


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The section for benchmarks/RESULTS.md: one table per check, and a line per failed or skipped section."""
    sections = report["sections"]
    lines = [f"## {report['date'][:10]}, {report['device']}{' (smoke run, toy sizes)' if report['smoke'] else ''}",
             "", f"torch {report['torch']} (CUDA {report['cuda']}), Python {report['python']}; command "
             f"`{report['command']}`; {report['wall_s']:.0f} s in all ("
             + ", ".join(_section_time(name, s) for name, s in sections.items() if s["status"] != "not asked")
             + ").", ""]
    for name, section in sections.items():
        if section["status"] == "not asked":
            continue
        if section["status"] in ("failed", "not run", "running") and not _has_figures(name, section):
            lines += [f"**{name}**: {section['status']}" + (f": `{section['error']}`" if "error" in section else ""),
                      ""]
        elif section["status"] == "skipped":
            lines += [f"**{name}**: {section.get('reason', 'skipped')}", ""]
        else:
            lines += _WRITERS[name](report, section) + [""]
    return "\n".join(lines)


def _section_time(name: str, section: dict[str, Any]) -> str:
    seconds = section.get("wall_s")
    return f"{name} {section['status']}" + ("" if seconds is None else f" {seconds:.0f} s")


def _has_figures(name: str, section: dict[str, Any]) -> bool:
    return bool(section.get("models")) if name == "throughput" else False


def _throughput_md(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    peak = report.get("gpu_peak_flops")
    intro = (f"Throughput (`benchmarks/throughput.py`): PGD-10 AT step and PGD-20 evaluation batch, batch "
             f"{s['batch_size']}, medians of {s['repetitions']} interleaved repetitions; plain = fp32 eager NCHW, "
             f"fast = channels_last + bf16 training on a GPU, compiled where marked. "
             + (f"Peak: {peak / 1e12:.0f} TFLOP/s ({report['gpu_peak_source']})." if peak else "No GPU peak."))
    header = ("| model | path | AT img/s | eval img/s | AT % of bf16 peak | AT / eval MiB | compile s | "
              "speed-up AT / eval |")
    lines = [intro, "", header, "|---|---|---|---|---|---|---|---|"]
    for name, row in s["models"].items():
        for path in ("plain", "fast"):
            r = row[path]
            share = r.get("at_share_of_peak")
            speed = f"{row['speedup']['at']:.2f}x / {row['speedup']['eval']:.2f}x" if path == "fast" else ""
            label = path + (" (compiled)" if r["compiled"] else "")
            lines.append(f"| {name} | {label} | {r['at_images_per_s']:.1f} | {r['eval_images_per_s']:.1f} | "
                         f"{_fmt(share and 100 * share, '.1f')} | {_fmt(r['at_peak_memory_mib'], '.0f')} / "
                         f"{_fmt(r['eval_peak_memory_mib'], '.0f')} | {r['compile_s'] if r['compiled'] else 0:.0f} | "
                         f"{speed} |")
    notes = [f"{name} failed: `{e['error']}`" for name, e in s["errors"].items()]
    notes += [f"skipped for time: {', '.join(s['skipped'])}"] if s["skipped"] else []
    return lines + ([""] + notes if notes else [])


def _amp_md(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    conv_math = s["fp32_math"].get("cudnn.conv", s["fp32_math"].get("cudnn.allow_tf32"))
    intro = (f"Mixed-precision PGD-AT (`training_step`, {s['objective']}): {s['model']}, batch {s['batch_size']}, "
             f"{s['steps']} steps from the same weights on the same batches; tail = last {s['tail_steps']} steps; "
             f"fp32 is autocast off with torch's default math (cuDNN convolutions: {conv_math}).")
    header = ("| precision | final loss | tail mean loss | max rel. diff. to fp32 (tail) | step-1 rel. diff. | "
              "non-finite | skipped steps | img/s |")
    lines = [intro, "", header, "|---|---|---|---|---|---|---|---|"]
    for name, p in s["precisions"].items():
        lines.append(f"| {name}{' + GradScaler' if p['grad_scaler'] else ''} | {p['final_loss']:.4f} | "
                     f"{p['tail_mean_loss']:.4f} | {p['max_rel_diff_to_fp32_tail']:.2e} | "
                     f"{p['first_step_rel_diff_to_fp32']:.2e} | {p['nonfinite_losses']} | {p['skipped_steps']} | "
                     f"{p['images_per_s']:.1f} |")
    return lines


def _autoattack_md(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    intro = (f"AutoAttack ({s['version']}, L∞ ε = {s['eps']}, budgets: {s['budgets']}) on {s['points']} held-out "
             f"synthetic points in chunks of {s['chunk']}, {s['model']} with {s['weights']}.")
    lines = [intro, "", "| math | clean acc. | robust acc. | time s | points/s |", "|---|---|---|---|---|"]
    for mode, m in s["modes"].items():
        lines.append(f"| {mode} | {m['clean_accuracy']:.3f} | {m['robust_accuracy']:.3f} | {m['seconds']:.1f} | "
                     f"{m['points_per_s']:.1f} |")
    summary = (f"Per-point robust flags that differ: {s['robust_flags_differ']} of {s['points']} (clean flags: "
               f"{s['clean_flags_differ']}, breaking attack: {s['breaking_attack_differs']}); speed ratio fp32 / TF32 "
               f"time: {s['speed_ratio_fp32_over_tf32']:.2f}x.")
    return [*lines, "", summary]


def _ddp_md(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    line = (f"DDP: {s['world_size']} processes over {s['backend']}, {s['model']}, global batch {s['global_batch']}, "
            f"{s['steps']} AT steps: {s['images_per_s']:.1f} img/s; replica divergence {s['replica_divergence']:.1e}; "
            f"largest |Δ| of weights and buffers to one process on the whole batch "
            f"{s['max_abs_diff_to_one_process']:.1e}.")
    return [line]


_WRITERS = {"throughput": _throughput_md, "amp": _amp_md, "autoattack": _autoattack_md, "ddp": _ddp_md}


class Outputs:
    """The report and its two files, rewritten after every section and model (a run cut short keeps its figures)."""

    def __init__(self, report: dict[str, Any], out_dir: Path, stem: str) -> None:
        self.report = report
        self.json_path = out_dir / f"{stem}.json"
        self.md_path = out_dir / f"{stem}.md"
        out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def save(self) -> None:
        with self._lock:
            self.report["wall_s"] = time.perf_counter() - _START
            text = json.dumps(self.report, indent=1, default=str)
            self.json_path.write_text(text + "\n")
            self.md_path.write_text(markdown(json.loads(text)) + "\n")


# -------------------------------------------------------------------------------------------------------- main
def _device_report(device: torch.device, smoke: bool, argv: list[str]) -> dict[str, Any]:
    on_gpu = device.type == "cuda"
    return {
        "format": FORMAT,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/gpu_check.sh", *argv]),
        "smoke": smoke,
        "device": torch.cuda.get_device_name(device) if on_gpu else _cpu_name(),
        "gpu_count": torch.cuda.device_count() if on_gpu else 0,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "default_math": math_mode(),
        "status": "running",
        "sections": {},
    }


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every section at toy size on the CPU (~30 s)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent,
                        help="folder of results-gpu.json/.md (smoke: results-gpu-smoke.*); default benchmarks/")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--models", default=None, help="throughput models (default: the plan's, see above)")
    parser.add_argument("--compile", choices=("first", "all", "none"), default=None,
                        help="which throughput models' fast path is compiled (default: first on a GPU, none in smoke)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which the run stops with what it has (default 465; smoke 110)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no GPU here: use --smoke for the CPU check", file=sys.stderr)
        return 2
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    overrides: dict[str, Any] = {}
    if args.models:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.compile:
        overrides["compile"] = args.compile
    if args.deadline:
        overrides["deadline_s"] = args.deadline
    plan = dataclasses.replace(plan, **overrides)
    if args.smoke:
        torch.set_num_threads(1)  # toy models: one thread is as fast, and leaves the other core to the test run
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the trainer and throughput.py run

    report = _device_report(device, args.smoke, argv)
    report["plan"] = dataclasses.asdict(plan)
    peak = None
    if device.type == "cuda":
        peak, report["gpu_peak_source"] = gpu_peak(device, args.peak_tflops)
        report["gpu_peak_flops"] = peak
    for name in SECTIONS:
        report["sections"][name] = {"status": "not run" if name in args.sections else "not asked"}
    outputs = Outputs(report, args.out_dir, "results-gpu-smoke" if args.smoke else "results-gpu")
    current: list[str] = []

    def on_deadline() -> None:
        section = report["sections"].get(current[-1]) if current else None
        if section is not None:
            section.update(status="failed", error=f"deadline of {plan.deadline_s:.0f} s reached during this section")
        report["status"] = "deadline"
        log(f"deadline of {plan.deadline_s:.0f} s reached: writing what there is and stopping")
        with contextlib.suppress(Exception):
            outputs.save()
        os._exit(124)

    watchdog = threading.Timer(max(plan.deadline_s - (time.perf_counter() - _START), 0.0), on_deadline)
    watchdog.daemon = True
    watchdog.start()
    log(f"gpu_check on {report['device']} ({'smoke' if args.smoke else 'full'}), sections {', '.join(args.sections)}; "
        f"writing {outputs.json_path}")
    outputs.save()

    weights: dict[str, torch.Tensor] | None = None
    for name in [s for s in SECTIONS if s in args.sections]:
        section = report["sections"][name]
        section.update(status="running", budget_s=plan.budgets[name])
        current.append(name)
        log(f"{name}: start (budget {plan.budgets[name]:.0f} s)")
        began = time.perf_counter()
        try:
            if name == "amp":
                weights = run_amp(plan, device, plan.budgets[name], section)
                status = "ok"
            elif name == "autoattack":
                run_autoattack(plan, device, plan.budgets[name], weights, section)
                status = "ok"
            elif name == "ddp":
                status = run_ddp(plan, device, section)
            else:
                status = run_throughput(plan, device, plan.budgets[name], peak, section, outputs.save)
        except Exception as error:  # noqa: BLE001 - record it and go on: the other sections still give figures
            section.update(_error(error))
            status = "failed"
        section.update(status=status, wall_s=time.perf_counter() - began)
        log(f"{name}: {status} in {section['wall_s']:.1f} s" + (f": {section['error']}" if "error" in section else ""))
        outputs.save()
        if name == "throughput" and section.get("models"):
            print_table({"device": report["device"], "gpu_peak_flops": peak, "batch_size": plan.batch_size,
                         "threads": report["threads"], "steps": plan.repetitions, "models": section["models"]})
    watchdog.cancel()
    failed = [name for name, s in report["sections"].items() if s["status"] == "failed"]
    report["status"] = "failed" if failed else "ok"
    outputs.save()
    print(outputs.md_path.read_text())
    log(f"done in {report['wall_s']:.0f} s: {outputs.json_path}, {outputs.md_path}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
