"""Throughput of PGD-10 adversarial training and PGD-20 evaluation: plain fp32 eager vs the fast path, one run.

For each model, two copies with the same initial weights are timed side by side, their repetitions interleaved
(plain, fast, fast, plain, ...) so that a busy machine slows both alike:

- plain: fp32, NCHW, eager (`train.channels_last=false train.compile=false train.amp=off`);
- fast: what the trainer does with `train.compile=true` and the other defaults: channels_last, every block
  compiled in place (with the eager fallback), bf16 autocast for training on a GPU (`train.amp=auto`).
  Evaluation stays fp32 on both paths (SPEC §5).

Both paths run the library's own code: `dsnet.training.trainer.training_step` with the `at` objective (PGD-10,
ε = 0.031, α = 0.007, ω = 0.001, the authors' settings) and SGD + Adam, and `sign_gradient_ascent` for PGD-20
(α = ε/4) plus the clean and adversarial accuracy passes. Compilation happens in the warm-up and is reported on
its own (`compile_s`), never inside the timings.

Reported per model and path: images/s for an AT step and for an evaluation batch (median of the repetitions),
the speed-up (median of the per-repetition plain/fast time ratios, with the ratio of the medians beside it),
peak memory of one step (GPU: `torch.cuda.max_memory_allocated` growth; CPU: growth of the resident set, sampled
every 2 ms from /proc with freed memory returned to the OS first), the plain/fast agreement (logits and input
gradients at the shared initial weights), and FLOPs per image counted with `torch.utils.flop_counter` (achieved
FLOP/s, and on a GPU the share of its dense bf16 peak).

    python benchmarks/throughput.py --models dsnet4 --json benchmarks/results-cpu.json   # CPU: minutes
    python benchmarks/throughput.py --json benchmarks/results-gpu.json                   # all four, GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dsnet.attacks.core import frozen_parameters, sign_gradient_ascent
from dsnet.models import create_model, split_parameters
from dsnet.objectives import build_objective
from dsnet.runtime.precision import resolve_precision
from dsnet.training.fast_path import EagerFallback, compile_regions, resolve_channels_last
from dsnet.training.trainer import training_step

DEFAULT_MODELS = ("dsnet4", "dsnet6", "wrn34_10", "resnet50")
EPS = 0.031

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s; --peak-tflops for others.
GPU_PEAK_BF16 = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
    "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


@dataclass
class PathResult:
    settings: dict[str, Any]
    compile_s: float = 0.0
    compiled: bool = False
    at_step_s: list[float] = field(default_factory=list)
    eval_step_s: list[float] = field(default_factory=list)
    at_images_per_s: float = 0.0
    eval_images_per_s: float = 0.0
    at_peak_memory_mib: float | None = None
    eval_peak_memory_mib: float | None = None


# ----------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory growth of the code run inside `with meter:` (MiB): CUDA allocator on a GPU, RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self._statm = Path("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._libc = None
        with contextlib.suppress(OSError):
            self._libc = ctypes.CDLL("libc.so.6")

    def _rss(self) -> int:
        try:
            return int(self._statm.read_text().split()[1]) * self._page
        except OSError:  # no /proc (macOS): the process's maximum RSS, which only ever grows
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed blocks back, so the baseline is what is really in use
        self._base = self._rss()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mib = (self._peak - self._base) / 2**20


# ------------------------------------------------------------------------------------------------------ paths
class BenchPath:
    """One model copy set up as a path (plain or fast), with its optimisers and its AT and evaluation steps."""

    def __init__(self, name: str, model: nn.Module, device: torch.device, *, channels_last: bool, compile: bool,
                 amp: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.name = name
        self.device = device
        self.channels_last = channels_last
        self.raw = model.to(device=device, memory_format=torch.channels_last if channels_last else
                            torch.preserve_format)
        self.compile = compile
        self.model: nn.Module = self.raw
        if compile:
            compile_regions(self.raw)
            self.model = EagerFallback(self.raw)
        self.precision = resolve_precision(amp, device)
        network, attention = split_parameters(self.raw)
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.SGD(network, lr=0.01, momentum=0.9,
                                                                        weight_decay=5e-4)]
        if attention:
            self.optimizers.append(torch.optim.Adam(attention, lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3))
        self.scaler = self.precision.grad_scaler()
        self.objective = build_objective("at", eps=EPS, step_size=0.007, steps=10)
        self.generator = torch.Generator(device=device).manual_seed(0)
        x, y = batch
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        self.y = y
        self.result = PathResult(settings={"channels_last": channels_last, "compile": compile,
                                           "train_precision": self.precision.name, "eval_precision": "fp32"})

    def at_step(self) -> None:
        self.raw.train()
        training_step(self.model, self.objective, self.x, self.y, optimizers=self.optimizers, scaler=self.scaler,
                      precision=self.precision, epoch=1.0, generator=self.generator)

    def eval_step(self) -> None:
        """One evaluation batch: clean accuracy, PGD-20 (fp32), adversarial accuracy; counts stay on the device."""
        self.raw.eval()
        with torch.no_grad():
            correct = (self.model(self.x).argmax(1) == self.y).sum()
        x_adv = sign_gradient_ascent(self.model, self.x, lambda z, _: F.cross_entropy(z, self.y, reduction="none"),
                                     eps=EPS, step_size=EPS / 4, steps=20, start="uniform", generator=self.generator)
        with torch.no_grad():
            correct += (self.model(x_adv).argmax(1) == self.y).sum()
        self.raw.train()

    def logits_and_input_gradient(self, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode logits and ∇x CE at the current weights, as an attack step computes them (`autocast`: in the
        training precision, as the training attack does; else fp32, as evaluation does)."""
        self.raw.eval()
        x = self.x.clone().requires_grad_(True)
        precision = self.precision.autocast() if autocast else contextlib.nullcontext()
        with frozen_parameters(self.raw), torch.enable_grad(), precision:
            logits = self.model(x)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, self.y, reduction="sum"), x)
        self.raw.train()
        return logits.detach().float(), grad.float()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def count_flops(name: str, device: torch.device, batch_size: int = 2) -> dict[str, float]:
    """FLOPs per image of one PGD-10 AT step and of one PGD-20 evaluation batch, counted on the eager model.

    FlopCounterMode's module hooks do not support `torch.autograd.grad`, so the passes are counted one by one
    with `.backward()`: an attack pass (eval mode, frozen parameters, gradient to the input only), a training
    pass (train mode, parameter gradients) and a no-grad forward, then combined (AT: 10 attack passes and one
    training pass; evaluation: 20 attack passes and 2 forwards). The elementwise projection is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = create_model(name).to(device)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def counted(fn: Callable[[], None]) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / batch_size

    def attack_pass() -> None:
        model.eval()
        with frozen_parameters(model):
            F.cross_entropy(model(x.clone().requires_grad_(True)), y).backward()

    def train_pass() -> None:
        model.train()
        F.cross_entropy(model(x), y).backward()

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    attack, train, clean = counted(attack_pass), counted(train_pass), counted(forward)
    return {"at": 10 * attack + train, "eval": 20 * attack + 2 * clean, "forward": clean}


def gpu_peak(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops}"
    name = torch.cuda.get_device_name(device)
    for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
        if key in name:
            return GPU_PEAK_BF16[key], f"{key} dense bf16"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


# ---------------------------------------------------------------------------------------------------- running
def benchmark_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    base = create_model(name)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    fast_compile = not args.no_compile
    paths = [
        BenchPath("plain", copy.deepcopy(base), device, channels_last=False, compile=False, amp="off", batch=(x, y)),
        BenchPath("fast", copy.deepcopy(base), device, channels_last=resolve_channels_last(None, device),
              compile=fast_compile, amp=args.amp, batch=(x, y)),
    ]
    del base
    plain, fast = paths

    # Warm-up. The fast path's first calls compile: the attack graph (eval mode, frozen parameters) here...
    start = time.perf_counter()
    fast_logits, fast_grad = fast.logits_and_input_gradient()
    fast.result.compile_s += time.perf_counter() - start
    plain_logits, plain_grad = plain.logits_and_input_gradient()
    agreement = {
        "max_abs_logit_diff": float((fast_logits - plain_logits).abs().max()),
        "input_grad_rel_err": _rel_err(fast_grad, plain_grad),
        "input_grad_sign_agreement": float((fast_grad.sign() == plain_grad.sign()).float().mean()),
    }
    if fast.precision.dtype is not None:  # the training attack runs in reduced precision: how close is its ∇x?
        _, train_grad = fast.logits_and_input_gradient(autocast=True)
        agreement["train_attack_input_grad_rel_err"] = _rel_err(train_grad, plain_grad)
        agreement["train_attack_input_grad_sign_agreement"] = float(
            (train_grad.sign() == plain_grad.sign()).float().mean())
    # ... and the training graph (train mode) and the no-grad accuracy graph here.
    for path in paths:
        first = _timed(path.at_step, device) + _timed(path.eval_step, device)
        if path.compile:
            path.result.compile_s += first
        path.result.compiled = isinstance(path.model, EagerFallback) and path.model.compiled
    log(f"  {name}: warm-up done, fast path compiled={fast.result.compiled} in {fast.result.compile_s:.0f} s "
        "(includes one AT step and one evaluation batch)")

    for phase, times_key in (("at", "at_step_s"), ("eval", "eval_step_s")):
        for rep in range(args.steps):
            order = paths if rep % 2 == 0 else paths[::-1]
            for path in order:
                step = path.at_step if phase == "at" else path.eval_step
                getattr(path.result, times_key).append(_timed(step, device))
            log(f"  {name} {phase} rep {rep + 1}/{args.steps}: " + ", ".join(
                f"{p.name} {getattr(p.result, times_key)[-1]:.2f} s" for p in paths))
    for path in paths:
        for phase in ("at", "eval"):
            step = path.at_step if phase == "at" else path.eval_step
            with PeakMemory(device) as meter:
                step()
            setattr(path.result, f"{phase}_peak_memory_mib", meter.peak_mib)
        path.result.at_images_per_s = args.batch_size / statistics.median(path.result.at_step_s)
        path.result.eval_images_per_s = args.batch_size / statistics.median(path.result.eval_step_s)

    out: dict[str, Any] = {p.name: asdict(p.result) for p in paths}
    # Each repetition times plain and fast back to back, so their ratio sees one load level; the median of these
    # paired ratios is the headline (a busy shared machine moves both medians, much less their ratio).
    out["speedup"] = {
        "at": statistics.median(p / f for p, f in zip(plain.result.at_step_s, fast.result.at_step_s)),
        "eval": statistics.median(p / f for p, f in zip(plain.result.eval_step_s, fast.result.eval_step_s)),
        "at_ratio_of_medians": fast.result.at_images_per_s / plain.result.at_images_per_s,
        "eval_ratio_of_medians": fast.result.eval_images_per_s / plain.result.eval_images_per_s,
        "at_best_of": min(plain.result.at_step_s) / min(fast.result.at_step_s),
    }
    out["agreement"] = agreement
    if not args.no_flops:
        flops = count_flops(name, device)
        out["flops_per_image"] = flops
        for path in paths:
            result = out[path.name]
            result["at_flops_per_s"] = flops["at"] * result["at_images_per_s"]
            result["eval_flops_per_s"] = flops["eval"] * result["eval_images_per_s"]
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_table(report: dict[str, Any]) -> None:
    device = report["device"]
    peak = report.get("gpu_peak_flops")
    header = (f"{'model':<10} {'path':<6} {'AT img/s':>9} {'eval img/s':>10} {'AT mem MiB':>10} "
              f"{'eval mem MiB':>12} {'compile s':>9} {'AT GFLOP/s':>10}" + (f" {'% peak':>7}" if peak else ""))
    print(f"PGD-10 AT step and PGD-20 evaluation, batch {report['batch_size']}, {device}, "
          f"{report['threads']} thread(s), medians of {report['steps']} interleaved repetitions")
    print(header)
    print("-" * len(header))
    for name, row in report["models"].items():
        for path in ("plain", "fast"):
            r = row[path]
            gflops = r.get("at_flops_per_s")
            line = (f"{name:<10} {path:<6} {r['at_images_per_s']:>9.2f} {r['eval_images_per_s']:>10.2f} "
                    f"{_mib(r['at_peak_memory_mib']):>10} {_mib(r['eval_peak_memory_mib']):>12} "
                    f"{r['compile_s'] if r['settings']['compile'] else 0:>9.0f} "
                    f"{f'{gflops / 1e9:.1f}' if gflops else '-':>10}")
            if peak:
                line += f" {100 * gflops / peak:>6.1f}%" if gflops else f" {'':>7}"
            print(line)
        s, a = row["speedup"], row["agreement"]
        indent = " " * 18
        print(f"{name:<10} {'ratio':<6} {s['at']:>8.2f}x {s['eval']:>9.2f}x   (median of paired ratios; ratio of "
              f"medians {s['at_ratio_of_medians']:.2f}x / {s['eval_ratio_of_medians']:.2f}x, "
              f"best-of AT {s['at_best_of']:.2f}x)")
        print(f"{indent}fast vs plain: max |Δlogit| {a['max_abs_logit_diff']:.1e}, "
              f"∇x rel. err {a['input_grad_rel_err']:.1e}, "
              f"sign agreement {100 * a['input_grad_sign_agreement']:.2f}%")
        if "train_attack_input_grad_rel_err" in a:
            print(f"{indent}training attack in {row['fast']['settings']['train_precision']}: ∇x rel. err "
                  f"{a['train_attack_input_grad_rel_err']:.1e}, "
                  f"sign agreement {100 * a['train_attack_input_grad_sign_agreement']:.2f}%")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return f"CPU ({platform.processor() or platform.machine()})"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated registered models (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: 128 GPU, 8 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed repetitions per path (default: 10 GPU, 5 CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="training precision of the fast path (auto: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak, if not in the table")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    on_gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if on_gpu else 8)
    args.steps = args.steps or (10 if on_gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if on_gpu else _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "models": {},
    }
    if on_gpu:
        report["gpu_peak_flops"], report["gpu_peak_source"] = gpu_peak(device, args.peak_tflops)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        log(f"{name}: building both paths on {device}")
        report["models"][name] = benchmark_model(name, args, device)
    print_table(report)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
