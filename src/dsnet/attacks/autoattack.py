"""AutoAttack (Croce & Hein, ICML 2020) through the reference implementation, with its edges fixed.

The attacks themselves are the fra31 code as packaged on PyPI (`pyautoattack==0.2.0`, algorithmically
identical to fra31/auto-attack@a392200, the commit RobustBench pins). Nothing here re-implements APGD, FAB or
Square, and nothing else in dsnet is called "AutoAttack".

How the adapter differs from calling `pyautoattack.AutoAttack.run_standard_evaluation` directly:

- The evaluation loop is re-stated here, step for step as the reference runs it: the same checks first,
  clean predictions in batches, then each attack of the version (standard: APGD-CE, APGD-T, FAB-T, Square)
  on the points that are still robust, in batches of `batch_size`, every batch reseeded with `seed`, each
  attack configured exactly as the reference configures it. The robust flags and adversarial examples are
  therefore identical to a direct call (a test checks this), and we keep what the reference only logs: the
  robust accuracy after every attack, and which attack broke each point.
- Device and seed are explicit; the call runs inside `torch.random.fork_rng`, because the reference reseeds
  the global RNG at every batch; the model runs in eval mode with autocast off, and gets its modes back; its
  parameters are frozen meanwhile, so FAB's backward passes leave no `.grad` behind.
- The reference's check warnings (randomised or dynamic defence, softmax output, zero gradients, Square
  beating the white-box attacks, too few classes) are captured from the `auto-attack` logger and from Python
  `warnings`, and returned in the result.
- Resume: `state_path` keeps the progress after every batch (tensors-only file, written atomically), so an
  interrupted evaluation continues at the next batch and ends with exactly the result of an uninterrupted
  one; the file is bound to the settings and to hashes of the data and the model. (The reference's own
  `state_path` re-runs a whole interrupted attack on re-batched points, and in 0.2.0 cannot resume at all:
  the attack set read back from its JSON is a list, which never equals the set it is compared with, so
  every resume raises ValueError; past that, `y_adv` would be unbound.)
- Two small deviations with no effect on results: the existing `sys.settrace` function (debugger, coverage)
  is restored after the dynamic-defence check, and that check's call counters, which the reference never
  resets, are zeroed first, so one dynamic model does not flag every later model as dynamic.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn as nn

from dsnet.attacks.base import Attack, register_attack
from dsnet.attacks.core import check_inputs, eval_mode, frozen_parameters
from dsnet.attacks.norms import perturbation_size
from dsnet.errors import CheckpointError, ConfigError, DsnetError
from dsnet.runtime.checkpoint import load_tensors_file
from dsnet.runtime.files import save_torch_atomic
from dsnet.runtime.hashing import tensors_sha256
from dsnet.runtime.records import SAVED_NOW, differences
from dsnet.validate import check_int, check_number

__all__ = ["AutoAttack", "AutoAttackResult", "AUTOATTACK_VERSIONS", "AUTOATTACK_NORMS", "STATE_FILES", "toy_budgets"]

logger = logging.getLogger(__name__)

AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
AUTOATTACK_NORMS = ("Linf", "L2", "L1")
"""The norms of the reference (for L1, its standard version runs APGD-CE and APGD-T with more restarts)."""
"""Versions of the reference that the adapter runs (`custom` is left out: its attack list is not a preset)."""

_REFERENCE_LOGGER = "auto-attack"
_STATE_FORMAT = "dsnet-autoattack-state/1"
_STATE_FILE = "autoattack-state.rank{rank}of{world}.pt"
STATE_FILES = "autoattack-state.rank*of*.pt"
"""The names of the per-process resume files in an evaluation folder (a pattern)."""


def _reference() -> ModuleType:
    """The `pyautoattack` package, with a one-line fix when it is missing."""
    try:
        module = importlib.import_module("pyautoattack")
        importlib.import_module("pyautoattack.checks")
    except ImportError as error:
        raise DsnetError(
            "AutoAttack needs the reference implementation: pip install pyautoattack==0.2.0"
        ) from error
    return module


# Each attack exactly as `run_standard_evaluation` of pyautoattack 0.2.0 sets it up before a batch. The reference
# object is created per call, so these mutations never leak out.
def _apgd_ce(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.apgd.loss = "ce"
    aa.apgd.seed = aa.get_seed()
    return aa.apgd.perturb(x, y)


def _apgd_dlr(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.apgd.loss = "dlr"
    aa.apgd.seed = aa.get_seed()
    return aa.apgd.perturb(x, y)


def _fab(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.fab.targeted = False
    aa.fab.seed = aa.get_seed()
    return aa.fab.perturb(x, y)


def _square(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.square.seed = aa.get_seed()
    return aa.square.perturb(x, y)


def _apgd_t(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.apgd_targeted.seed = aa.get_seed()
    return aa.apgd_targeted.perturb(x, y)


def _fab_t(aa: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    aa.fab.targeted = True
    aa.fab.n_restarts = 1
    aa.fab.seed = aa.get_seed()
    return aa.fab.perturb(x, y)


_STAGE_RUNNERS: dict[str, Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "apgd-ce": _apgd_ce,
    "apgd-dlr": _apgd_dlr,
    "fab": _fab,
    "square": _square,
    "apgd-t": _apgd_t,
    "fab-t": _fab_t,
}


def _stage_settings(aa: Any, stage: str) -> dict[str, Any]:
    """The settings the reference runs `stage` with, for reports."""
    if stage in ("apgd-ce", "apgd-dlr"):
        return {"n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts, "rho": aa.apgd.thr_decr,
                "eot_iter": aa.apgd.eot_iter, "use_largereps": bool(getattr(aa.apgd, "use_largereps", False))}
    if stage == "apgd-t":
        return {"n_iter": aa.apgd_targeted.n_iter, "n_restarts": aa.apgd_targeted.n_restarts,
                "n_target_classes": aa.apgd_targeted.n_target_classes, "rho": aa.apgd_targeted.thr_decr,
                "eot_iter": aa.apgd_targeted.eot_iter,
                "use_largereps": bool(getattr(aa.apgd_targeted, "use_largereps", False))}
    if stage == "fab":
        return {"n_iter": aa.fab.n_iter, "n_restarts": aa.fab.n_restarts}
    if stage == "fab-t":
        return {"n_iter": aa.fab.n_iter, "n_restarts": 1, "n_target_classes": aa.fab.n_target_classes}
    return {"n_queries": aa.square.n_queries, "p_init": aa.square.p_init, "n_restarts": aa.square.n_restarts,
            "rescale_schedule": aa.square.rescale_schedule}


@contextmanager
def toy_budgets() -> Iterator[None]:
    """The reference's attacks with toy budgets while open, for smoke runs and tests only (the numbers mean nothing):
    5 iterations, one APGD restart, 2 target classes, 50 Square queries. Every reference object built inside the
    block gets them (the adapter builds its own inside `run`, and so does a direct call of the reference); the
    version's own budgets are back on exit."""
    reference = _reference()
    original = reference.AutoAttack._set_version

    def set_version(self: Any, version: str = "standard") -> None:
        original(self, version)
        self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 5
        self.apgd.n_restarts = 1  # the L1 version's 5 (L∞ and L2 have 1 already)
        self.apgd_targeted.n_target_classes = self.fab.n_target_classes = 2
        self.square.n_queries = 50

    reference.AutoAttack._set_version = set_version
    try:
        yield
    finally:
        reference.AutoAttack._set_version = original


@dataclass(frozen=True)
class AutoAttackResult:
    """Everything one AutoAttack evaluation produced.

    Attributes:
        x_adv: (N, C, H, W) adversarial images; the clean image where no attack succeeded.
        clean: (N,) bool, classified correctly without attack.
        robust: (N,) bool, still classified correctly after every attack (the reported robust accuracy).
        fallen_at: (N,) int64: 0 where the clean image is misclassified, k >= 1 where `stages[k - 1]` broke
            the point, -1 where it is robust.
        stages: the attacks of the version, in order (standard: apgd-ce, apgd-t, fab-t, square).
        stage_accuracy: "clean", then each stage in order, mapped to the robust accuracy after it; a stage
            skipped because no robust point was left carries the previous value (0.0).
        stages_run: the stages that actually ran.
        warnings: the reference's check warnings, in the order they were raised (kept across a resume).
        config: the adapter's settings (see `AutoAttack.config`).
        runtime_s: wall time of this call (not of earlier, interrupted calls).
        resumed: True when the call continued from a state file.
        max_perturbation: the largest ||x_adv - x|| in the attack's norm over all points.
    """

    x_adv: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor
    fallen_at: torch.Tensor
    stages: tuple[str, ...]
    stage_accuracy: dict[str, float]
    stages_run: tuple[str, ...]
    warnings: tuple[str, ...]
    config: dict[str, Any]
    runtime_s: float
    resumed: bool
    max_perturbation: float

    @property
    def n(self) -> int:
        """Number of evaluated points."""
        return int(self.robust.numel())

    @property
    def clean_accuracy(self) -> float:
        """Fraction of points classified correctly without attack."""
        return self.stage_accuracy["clean"]

    @property
    def robust_accuracy(self) -> float:
        """Fraction of points that survive every attack: the number to report."""
        return int(self.robust.sum()) / self.robust.numel()

    @property
    def stage_accuracies(self) -> list[float]:
        """`stage_accuracy` as a list: clean first, then after each stage; non-increasing."""
        return list(self.stage_accuracy.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors) for reports."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "stage_accuracy": dict(self.stage_accuracy),
            "stages_run": list(self.stages_run),
            "warnings": list(self.warnings),
            "max_perturbation": self.max_perturbation,
            "runtime_s": self.runtime_s,
            "resumed": self.resumed,
            "config": dict(self.config),
        }


@dataclass
class _State:
    """Progress of one evaluation; saved after every batch when a state path is given."""

    path: Path | None
    key: dict[str, Any]
    clean: torch.Tensor | None = None
    robust: torch.Tensor | None = None
    fallen_at: torch.Tensor | None = None
    completed: list[str] = field(default_factory=list)
    stage_accuracy: dict[str, float] = field(default_factory=dict)
    current: str | None = None
    current_index: torch.Tensor | None = None
    next_batch: int = 0
    warnings: list[str] = field(default_factory=list)
    resumed: bool = False

    def save(self, x_adv: torch.Tensor) -> None:
        """Writes the state atomically (temporary file, then rename); does nothing without a path."""
        if self.path is None or self.fallen_at is None:
            return
        kept = (self.fallen_at >= 1).nonzero().squeeze(1)
        payload = {
            "format": _STATE_FORMAT,
            "key": self.key,
            "clean": self.clean.cpu() if self.clean is not None else None,
            "robust": self.robust.cpu() if self.robust is not None else None,
            "fallen_at": self.fallen_at.cpu(),
            "completed": list(self.completed),
            "stage_accuracy": dict(self.stage_accuracy),
            "current": self.current,
            "current_index": self.current_index.cpu() if self.current_index is not None else None,
            "next_batch": self.next_batch,
            "warnings": list(self.warnings),
            "adv_index": kept.cpu(),
            "adv_values": x_adv[kept].cpu(),
        }
        save_torch_atomic(payload, self.path, hint="free disk space and rerun the evaluation to resume")

    @classmethod
    def open(cls, path: Path | None, key: dict[str, Any], x_adv: torch.Tensor) -> _State:
        """A fresh state, or the one saved at `path` (checked against `key`); fills `x_adv` from it."""
        if path is None or not path.exists():
            return cls(path=path, key=key)
        try:
            payload = load_tensors_file(path, what="AutoAttack state")
        except CheckpointError as error:
            raise ConfigError(f"{error}; or delete it to start over") from None
        if not isinstance(payload, dict) or payload.get("format") != _STATE_FORMAT:
            raise ConfigError(f"{path} is not a dsnet AutoAttack state file; delete it or pass another state_path")
        different = differences(payload["key"], key, template=SAVED_NOW, nested=False)
        if different:
            details = ", ".join(different)
            raise ConfigError(
                f"AutoAttack state {path} belongs to another evaluation ({details}); "
                "delete it or pass another state_path"
            )
        device = x_adv.device
        state = cls(
            path=path,
            key=key,
            clean=payload["clean"].to(device) if payload["clean"] is not None else None,
            robust=payload["robust"].to(device) if payload["robust"] is not None else None,
            fallen_at=payload["fallen_at"].to(device),
            completed=list(payload["completed"]),
            stage_accuracy=dict(payload["stage_accuracy"]),
            current=payload["current"],
            current_index=payload["current_index"].to(device) if payload["current_index"] is not None else None,
            next_batch=int(payload["next_batch"]),
            warnings=list(payload["warnings"]),
            resumed=True,
        )
        index = payload["adv_index"].to(device)
        x_adv[index] = payload["adv_values"].to(device=device, dtype=x_adv.dtype)
        return state


def _add_once(messages: list[str], message: str) -> None:
    if message not in messages:
        messages.append(message)


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        _add_once(self.messages, record.getMessage())


@contextmanager
def _capture_reference_warnings(messages: list[str], package_dir: str) -> Iterator[None]:
    """Adds the reference's warnings, from its logger and from Python `warnings`, to `messages` (once each).

    The logger keeps its handlers and still propagates, so users see the warnings as before; it is only
    enabled for WARNING while we listen (a logging config may have disabled it). Python warnings raised
    by other code are re-issued unchanged.
    """
    reference_logger = logging.getLogger(_REFERENCE_LOGGER)
    saved_level, saved_disabled = reference_logger.level, reference_logger.disabled
    handler = _ListHandler(messages)
    reference_logger.disabled = False
    if not reference_logger.isEnabledFor(logging.WARNING):
        reference_logger.setLevel(logging.WARNING)
    reference_logger.addHandler(handler)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                caught = list(recorded or [])
    finally:
        reference_logger.removeHandler(handler)
        reference_logger.setLevel(saved_level)
        reference_logger.disabled = saved_disabled
        for warning in caught:
            if os.path.abspath(warning.filename).startswith(package_dir):
                _add_once(messages, str(warning.message))
                logger.warning("AutoAttack check: %s", warning.message)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG the reference may reseed (it seeds the current device even for CPU inputs)."""
    if not torch.cuda.is_available():
        return []
    devices = {torch.cuda.current_device()}
    if device.type == "cuda" and device.index is not None:
        devices.add(device.index)
    return sorted(devices)


@register_attack("autoattack", "AutoAttack through the reference code (pyautoattack)")
class AutoAttack(Attack):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) in the L∞, L2 or L1 ball, through the reference code.

    `attack(model, x, y)` returns x_adv; `attack.run(model, x, y, state_path=...)` returns an
    `AutoAttackResult` with per-point flags, per-stage accuracies and the check warnings.

    Args:
        eps: radius in pixel units (L∞: 0.031 for the paper, 8/255 for RobustBench; L2: 0.5; L1: 12).
        version: "standard" (what everyone reports), "plus" or "rand" (for randomised defences).
        seed: seed the reference gives every attack (its default None would mean the clock).
        device: device the reference attacks on; None uses the device of x.
        batch_size: points per attack call (the reference's default is 250; it changes the random draws,
            so compare runs at the same batch size).
        norm: "Linf", "L2" or "L1" (`AUTOATTACK_NORMS`), passed to the reference as it is.
    """

    name = "autoattack"

    def __init__(
        self,
        *,
        eps: float,
        version: Literal["standard", "plus", "rand"] = "standard",
        seed: int = 0,
        device: torch.device | str | None = None,
        batch_size: int = 250,
        norm: Literal["Linf", "L2", "L1"] = "Linf",
    ) -> None:
        super().__init__(seed=seed)
        self.eps = check_number("AutoAttack", "eps", eps, strict=True)
        if norm not in AUTOATTACK_NORMS:
            raise ConfigError(f"AutoAttack: norm must be one of {', '.join(AUTOATTACK_NORMS)}, got {norm!r}")
        self.norm = norm
        if version not in AUTOATTACK_VERSIONS:
            raise ConfigError(f"AutoAttack: version must be one of {', '.join(AUTOATTACK_VERSIONS)}, got {version!r}")
        self.version = version
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as error:
            raise ConfigError(f"AutoAttack: device {device!r} is not a torch device ({error})") from None
        self.batch_size = check_int("AutoAttack", "batch_size", batch_size, minimum=1)
        self._reference_settings: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        notes = [note for note in (self.version if self.version != "standard" else "",
                                   self.norm if self.norm != "Linf" else "") if note]
        return "AutoAttack" + (f" ({', '.join(notes)})" if notes else "")

    def _settings(self) -> dict[str, Any]:
        if self._reference_settings is None:
            # Read from a reference object built with a placeholder model, so the report shows what the
            # reference really runs rather than what we believe it runs.
            reference = _reference()
            aa = reference.AutoAttack(nn.Identity(), device="cpu", eps=self.eps, norm=self.norm, seed=self.seed,
                                      version=self.version)
            self._reference_settings = {
                "stages": list(aa.attacks_to_run),
                "stage_settings": {stage: _stage_settings(aa, stage) for stage in aa.attacks_to_run},
                "implementation": f"pyautoattack {getattr(reference, '__version__', 'unknown')}",
            }
        return {
            "eps": self.eps,
            "norm": self.norm,
            "version": self.version,
            "batch_size": self.batch_size,
            "device": str(self.device) if self.device is not None else None,
            **copy.deepcopy(self._reference_settings),
        }

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        # The reference draws its own randomness (under fork_rng); the attack's generator is not used.
        return self.run(model, x, y).x_adv

    @staticmethod
    def _state_path(state_dir: Path | str | None, rank: int, world_size: int) -> Path | None:
        return Path(state_dir) / _STATE_FILE.format(rank=rank, world=world_size) if state_dir is not None else None

    def resume_key(self, world_size: int) -> dict[str, Any]:
        """The settings and the number of processes: each process runs the reference on its own share."""
        return {**self.config(), "world_size": world_size}

    def discard_state(self, state_dir: Path | str | None) -> None:
        """Deletes this process's resume file in `state_dir`."""
        from dsnet.attacks.metrics import world

        path = self._state_path(state_dir, *world())
        if path is not None:
            path.unlink(missing_ok=True)

    def evaluate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, clean: torch.Tensor,
                 batch_size: int = 256, progress: str | None = None, state_dir: Path | str | None = None) -> Any:
        """AutoAttack on this process's share of the points, through the reference (`run`), merged over processes.

        Each process takes blocks of `batch_size` points round-robin (as the one loop does) and runs the
        reference on all of them at once, since AutoAttack regroups the surviving points between its stages;
        its random draws therefore depend on the number of processes (`resume_key` records it). AutoAttack makes
        its own clean pass, so `clean` is not used. With `state_dir`, the reference's progress is kept there after
        every batch (`autoattack-state.rank<r>of<n>.pt`), and an interrupted evaluation continues from it.

        Returns:
            An `AttackRun` whose extras hold the accuracy after every stage over all processes, the stages that
            ran on any process, and the reference's check warnings.
        """
        from dsnet.attacks.metrics import AttackRun, _as_float, _device, _gather, perturbation_stats, world
        from dsnet.runtime.distributed import all_reduce, gather_objects, shard_positions

        rank, size = world()
        n = images.shape[0]
        device = _device(model, images.device)
        positions = shard_positions(n, rank, size, batch_size)
        stages = list(self.config()["stages"])
        stages_run: list[str] = []
        warnings_seen: list[str] = []
        local = torch.zeros(positions.numel(), dtype=torch.int64, device=device)
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        attacked = torch.zeros((), dtype=torch.int64, device=device)
        if positions.numel():
            index = positions.to(images.device)
            x, y = _as_float(images[index].to(device)), labels[index].to(device)
            result = self.run(model, x, y, state_path=self._state_path(state_dir, rank, size))
            local = result.fallen_at.to(torch.int64)
            stages, stages_run, warnings_seen = list(result.stages), list(result.stages_run), list(result.warnings)
            broken = result.fallen_at >= 1
            pairs.append((x[broken], result.x_adv[broken]))
            attacked = result.clean.sum().to(torch.int64)
        fallen_at = _gather(local, positions, n, device)
        stats = perturbation_stats(pairs, device, self.eps)
        stats["n_attacked"] = int(all_reduce(attacked.reshape(1), "sum"))
        ran = set().union(*[set(names) for names in gather_objects(stages_run)])
        merged: list[str] = []
        for rank_warnings in gather_objects(warnings_seen):
            merged += [w for w in rank_warnings if w not in merged]
        total = max(n, 1)
        stage_accuracy = {"clean": int((fallen_at != 0).sum()) / total}
        for number, stage in enumerate(stages, start=1):
            stage_accuracy[stage] = int(((fallen_at == -1) | (fallen_at > number)).sum()) / total
        extra = {"stage_accuracy": stage_accuracy, "stages_run": [s for s in stages if s in ran], "warnings": merged}
        return AttackRun(fallen_at == -1, stats, extra)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, state_path: Path | str | None = None
    ) -> AutoAttackResult:
        """Runs AutoAttack on all points, worst case over its attacks.

        Args:
            model: maps (B, C, H, W) images in [0, 1] to logits; run in eval mode, its modes restored after.
            x: (N, C, H, W) images in [0, 1], N >= 1.
            y: (N,) labels on x's device.
            state_path: file that keeps the progress after every batch; if it exists (from an interrupted
                call with the same settings and data) the evaluation continues from it.

        Returns:
            The result; tensors are on x's device.

        Raises:
            ConfigError: if the state file belongs to another evaluation or cannot be read.
        """
        check_inputs("AutoAttack", x, y)
        if x.shape[0] == 0:
            raise ValueError("AutoAttack: no points to evaluate")
        reference = _reference()
        checks = importlib.import_module("pyautoattack.checks")
        started = time.perf_counter()
        x, y = x.detach(), y.detach()
        device = self.device if self.device is not None else x.device
        n, batch_size = x.shape[0], self.batch_size
        path = Path(state_path) if state_path is not None else None
        key: dict[str, Any] = {"eps": self.eps, "version": self.version, "seed": self.seed, "norm": self.norm,
                               "batch_size": batch_size, "n": n}
        if path is not None:
            key["data_sha256"] = tensors_sha256([("x", x), ("y", y)])
            key["model_sha256"] = tensors_sha256(model.state_dict().items())
        x_adv = x.clone()
        state = _State.open(path, key, x_adv)
        if state.resumed:
            logger.info("AutoAttack: resuming from %s (done: %s)", path, ", ".join(state.completed) or "none")

        with ExitStack() as stack:
            stack.enter_context(eval_mode(model))
            # FAB calls backward(): with the parameters frozen it differentiates the input only, and a trainable
            # model's .grad fields stay as the caller left them.
            stack.enter_context(frozen_parameters(model))
            stack.enter_context(torch.random.fork_rng(devices=_rng_devices(device)))
            stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
            package_dir = os.path.dirname(os.path.abspath(reference.__file__))
            stack.enter_context(_capture_reference_warnings(state.warnings, package_dir))
            aa = reference.AutoAttack(model, device=device, eps=self.eps, norm=self.norm, seed=self.seed,
                                      version=self.version)
            stages: tuple[str, ...] = tuple(aa.attacks_to_run)
            self._run_checks(aa, checks, x, y, device)
            with torch.no_grad():
                if state.clean is None:
                    self._clean_pass(aa, x, y, device, state)
                    state.save(x_adv)
                self._attack_pass(aa, stages, x, y, device, state, x_adv, started)
                checks.check_square_sr(dict(state.stage_accuracy), logger=aa.logger)

        state.save(x_adv)
        return self._result(state, stages, x, x_adv, time.perf_counter() - started)

    def _run_checks(self, aa: Any, checks: ModuleType, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        """The reference's checks on the first batch, in its order."""
        x_first = x[: self.batch_size].to(device)
        y_first = y[: self.batch_size].to(device)
        if self.version != "rand":
            checks.check_randomized(aa.get_logits, x_first, y_first, bs=self.batch_size, logger=aa.logger)
        n_classes = checks.check_range_output(aa.get_logits, x_first, logger=aa.logger)
        tracer = sys.gettrace()
        for name in checks.funcs:
            checks.funcs[name] = 0
        try:
            checks.check_dynamic(aa.model, x_first, False, logger=aa.logger)
        finally:
            sys.settrace(tracer)
        checks.check_n_classes(n_classes, aa.attacks_to_run, aa.apgd_targeted.n_target_classes,
                               aa.fab.n_target_classes, logger=aa.logger)

    def _clean_pass(self, aa: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device, state: _State) -> None:
        n = x.shape[0]
        clean = torch.zeros(n, dtype=torch.bool, device=x.device)
        from dsnet.attacks.metrics import check_finite_batch

        for number, start in enumerate(range(0, n, self.batch_size)):
            x_batch = x[start : start + self.batch_size].clone().to(device)
            y_batch = y[start : start + self.batch_size].clone().to(device)
            logits = aa.get_logits(x_batch)
            check_finite_batch("logits (AutoAttack's clean pass)", logits, number,
                               torch.arange(start, start + x_batch.shape[0]))
            predicted = logits.max(dim=1)[1]
            clean[start : start + self.batch_size] = y_batch.eq(predicted).to(x.device)
        state.clean = clean
        state.robust = clean.clone()
        state.fallen_at = torch.where(clean, -1, 0).to(torch.int64)
        state.stage_accuracy = {"clean": clean.sum().item() / n}
        logger.info("AutoAttack: clean accuracy %.2f%% (%d points)", 100 * state.stage_accuracy["clean"], n)

    def _attack_pass(
        self,
        aa: Any,
        stages: tuple[str, ...],
        x: torch.Tensor,
        y: torch.Tensor,
        device: torch.device,
        state: _State,
        x_adv: torch.Tensor,
        started: float,
    ) -> None:
        """Each remaining stage on the points still robust, batch by batch, saving after every batch."""
        from dsnet.attacks.metrics import check_finite_batch

        assert state.robust is not None and state.fallen_at is not None
        n = x.shape[0]
        for number, stage in enumerate(stages, start=1):
            if stage in state.completed:
                continue
            if state.current != stage:
                index = state.robust.nonzero().squeeze(1)
                if index.numel() == 0:
                    # As the reference: no robust point left, so the remaining attacks are skipped.
                    logger.info("AutoAttack: no robust points left, skipping %s", ", ".join(stages[number - 1 :]))
                    break
                state.current, state.current_index, state.next_batch = stage, index, 0
            index = state.current_index
            assert index is not None
            n_batches = math.ceil(index.numel() / self.batch_size)
            for batch in range(state.next_batch, n_batches):
                points = index[batch * self.batch_size : (batch + 1) * self.batch_size]
                x_batch = x[points].clone().to(device)
                y_batch = y[points].clone().to(device)
                adversarial = _STAGE_RUNNERS[stage](aa, x_batch, y_batch)
                check_finite_batch(f"adversarial images of AutoAttack's {stage}", adversarial, batch, points)
                logits = aa.get_logits(adversarial)
                check_finite_batch(f"logits of AutoAttack's {stage} images", logits, batch, points)
                predicted = logits.max(dim=1)[1]
                fooled = ~y_batch.eq(predicted)
                broken = points[fooled.to(points.device)]
                state.robust[broken] = False
                state.fallen_at[broken] = number
                x_adv[broken] = adversarial[fooled].detach().to(device=x_adv.device, dtype=x_adv.dtype)
                state.next_batch = batch + 1
                state.save(x_adv)
                logger.debug("AutoAttack %s batch %d/%d: %d of %d points broken", stage, batch + 1, n_batches,
                             int(fooled.sum()), points.numel())
            state.stage_accuracy[stage] = state.robust.sum().item() / n
            state.completed.append(stage)
            state.current, state.current_index, state.next_batch = None, None, 0
            state.save(x_adv)
            logger.info("AutoAttack: robust accuracy after %s %.2f%% (%.1f s)", stage.upper(),
                        100 * state.stage_accuracy[stage], time.perf_counter() - started)

    def _result(
        self, state: _State, stages: tuple[str, ...], x: torch.Tensor, x_adv: torch.Tensor, runtime: float
    ) -> AutoAttackResult:
        assert state.clean is not None and state.robust is not None and state.fallen_at is not None
        accuracy = {"clean": state.stage_accuracy["clean"]}
        for stage in stages:
            # A skipped stage (nothing left to attack) keeps the accuracy before it.
            accuracy[stage] = state.stage_accuracy.get(stage, list(accuracy.values())[-1])
        delta = perturbation_size(x_adv - x, self.norm)
        max_perturbation = float(delta.max().item())
        logger.info(
            "AutoAttack: robust accuracy %.2f%% | max %s perturbation %.5f, NaNs %d, values in [%.5f, %.5f]",
            100 * state.robust.float().mean().item(), self.norm, max_perturbation, int(torch.isnan(x_adv).sum()),
            x_adv.min().item(), x_adv.max().item(),
        )
        return AutoAttackResult(
            x_adv=x_adv,
            clean=state.clean,
            robust=state.robust,
            fallen_at=state.fallen_at,
            stages=stages,
            stage_accuracy=accuracy,
            stages_run=tuple(stage for stage in stages if stage in state.stage_accuracy),
            warnings=tuple(state.warnings),
            config=self.config(),
            runtime_s=runtime,
            resumed=state.resumed,
            max_perturbation=max_perturbation,
        )
