"""The adversarial trainer: one loop for every model, objective and number of processes.

`train(config, data_dir, out_dir)` is what `dsnet train` runs. Per batch it sets the learning rate from the
fractional epoch, asks the objective for a loss (the objective generates adversarial examples in eval mode and
computes the outer loss in train mode), and steps SGD on the network weights and Adam on DS-Net's attention
weights with the same backward pass (SPEC §4). After each epoch it measures clean and PGD accuracy on the
validation split, writes `metrics.jsonl` and TensorBoard scalars, and saves `last.pt` atomically; the model
selection policy decides which epoch is copied to `selected.pt`.

The run folder is a `dsnet.runtime.TrainingRun` (`config.yaml`, `train.log`, `metrics.jsonl`, `tensorboard/`,
`last.pt`, `selected.pt`, and with `train.keep_epoch_checkpoints` one `epoch-NNNN.pt` per epoch): its lock, its file
names and the never-overwrite rule live there. What a checkpoint holds and how a run resumes from one is
`dsnet.training.checkpointing`; this module is the loop.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from dsnet.config import RunConfig, config_to_dict
from dsnet.data import DATASETS, DeviceLoader, to_float
from dsnet.data.extra import open_extra_images
from dsnet.errors import CheckpointError, ConfigError, TrainingDivergedError
from dsnet.models import create_model, split_parameters
from dsnet.models.parameters import parameters_without_gradient
from dsnet.runtime.checkpoint import save_checkpoint
from dsnet.runtime.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    convert_sync_batchnorm,
    local_rank_zero_first,
    replica_divergence,
    setup_distributed,
    teardown_distributed,
)
from dsnet.runtime.files import write_text_atomic
from dsnet.runtime.precision import Precision, resolve_precision
from dsnet.runtime.run_folder import TrainingRun
from dsnet.training.checkpointing import checkpoint_state, restore
from dsnet.training.collapse_guard import CollapseGuard
from dsnet.training.ema import WeightAverage
from dsnet.training.fast_path import ModelHandles, resolve_channels_last, wrap_for_training
from dsnet.training.metrics import MetricsWriter, RunLogHandler, format_epoch_line
from dsnet.training.optimizer import apply_schedule, batchnorm_momentum, build_sgd
from dsnet.training.validation import build_training_data, evaluate_robustness
from dsnet.training.progress import TrainingProgress

__all__ = ["train", "TrainResult", "selected_epoch_for", "training_step"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run left behind."""

    out_dir: Path
    epochs_completed: int
    history: list[dict[str, Any]]
    selected_epoch: int | None
    stopped_early: str | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def selected_epoch_for(config: RunConfig) -> int | None:
    """The epoch that `first_decay_plus_one` selects: one epoch after the first LR decay (Rice et al.)."""
    if config.train.selection != "first_decay_plus_one":
        return None
    milestones = config.schedule.get("milestones")
    if not milestones:
        raise ConfigError("train.selection first_decay_plus_one needs a piecewise schedule with milestones; "
                          "use train.selection=best_val_pgd or last")
    return min(int(math.ceil(milestones[0])) + 1, config.train.epochs)


def training_step(
    model: nn.Module,
    objective: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    precision: Precision,
    epoch: float,
    generator: torch.Generator,
    grad_clip: float | None = None,
) -> Any:
    """One optimisation step: the objective's loss (attack included) under autocast, backward, gradient clipping
    when asked, every optimiser, then the objective's `after_step` (AWP restores the weights it perturbed).

    The trainer's inner loop and `benchmarks/throughput.py` both call this, so the benchmark times the real step.

    Args:
        model: the model to call (compiled and/or DDP-wrapped), in train mode.
        objective: a training objective (`dsnet.objectives`).
        x: (B, C, H, W) images in [0, 1]; y: (B,) labels.
        optimizers: stepped in order on the same backward pass (SGD for the network, Adam for attention).
        scaler: the GradScaler (active for fp16 only).
        precision: the autocast setting.
        epoch: 1-based fractional epoch passed to the objective.
        generator: randomness of the attack.
        grad_clip: clip the global L2 norm of the model's gradients to this value (None: off), on unscaled
            gradients under fp16.

    Returns:
        The objective's `ObjectiveOutput`.
    """
    with precision.autocast():
        out = objective(model, x, y, epoch=epoch, generator=generator)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    if grad_clip is not None:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    if out.after_step is not None:  # e.g. AWP takes its weight perturbation back
        out.after_step()
    return out


class _Run:
    """State of one training run; `train()` drives it. Kept as a class so every piece has a name."""

    def __init__(self, config: RunConfig, data_dir: str | Path, out_dir: str | Path, resume: bool,
                 allow_changes: Sequence[str] = ()) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.allow_changes = tuple(allow_changes)
        self.ctx = setup_distributed(config.train.device)
        self.folder = TrainingRun(out_dir, is_main=self.ctx.is_main)
        self.nets: ModelHandles | None = None
        try:
            self._setup(data_dir, resume)
        except BaseException:
            self.close()  # gives the folder's lock back, so a corrected command can take it at once
            raise

    def _setup(self, data_dir: str | Path, resume: bool) -> None:
        config = self.config
        self.precision = resolve_precision(config.train.amp, self.ctx.device)
        self.selected_epoch_target = selected_epoch_for(config)
        resume = self._prepare_out_dir(resume)
        torch.manual_seed(config.train.seed)

        train_cfg, data_cfg = config.train, config.data
        num_classes = DATASETS.get(data_cfg.dataset).num_classes
        # Opened (not read) before the dataset loads, so that a wrong path fails at once.
        self.extra = open_extra_images(data_cfg.extra_path, num_classes) if data_cfg.extra_path else None
        with local_rank_zero_first(self.ctx):  # one process per machine downloads a missing dataset
            self.train_split, self.val_split = build_training_data(config, data_dir)
        device = self.ctx.device
        self.train_split = self.train_split.to(device)
        if train_cfg.batch_size % self.ctx.world_size:
            raise ConfigError(f"train.batch_size {train_cfg.batch_size} must divide evenly among "
                              f"{self.ctx.world_size} processes")
        if train_cfg.batch_size > len(self.train_split):
            raise ConfigError(f"train.batch_size {train_cfg.batch_size} is larger than the {len(self.train_split)} "
                              "training images; lower it or use more data")
        self.loader = DeviceLoader(self.train_split, train_cfg.batch_size // self.ctx.world_size, shuffle=True,
                                   drop_last=True, crop=data_cfg.crop, flip=data_cfg.flip, seed=train_cfg.seed,
                                   rank=self.ctx.rank, world_size=self.ctx.world_size, extra=self.extra,
                                   extra_fraction=data_cfg.extra_fraction)

        self.model = create_model(config.model.name, num_classes=num_classes, **config.model.kwargs)
        if self.ctx.distributed and train_cfg.sync_bn:
            self.model = convert_sync_batchnorm(self.model, device)
        self.channels_last = resolve_channels_last(train_cfg.channels_last, device)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(device=device, memory_format=memory_format)
        self.ema = (WeightAverage(self.model, train_cfg.ema_decay,
                                  train_cfg.ema_warmup * train_cfg.epochs * self._steps_per_epoch())
                    if train_cfg.ema_decay is not None else None)
        network, attention = split_parameters(self.model)
        optim = config.optim
        self.optimizer = build_sgd(self.model, network, optim)
        self.attention_optimizer = (torch.optim.Adam(attention, lr=optim.attention_lr, betas=optim.attention_betas,
                                                     weight_decay=optim.attention_weight_decay)
                                    if attention else None)
        self.scaler = self.precision.grad_scaler()
        self.schedule = config.schedule
        self.objective = config.objective
        self.generator = torch.Generator(device=device).manual_seed(train_cfg.seed * 1_000_003 + self.ctx.rank + 1)
        self.val_attack = self.objective.validation_attack(train_cfg.val_pgd_steps)
        self.guard = self._make_guard() if self.objective.collapse_guard else None

        self.epoch = 1  # the next epoch to train, 1-based
        self.history: list[dict[str, Any]] = []
        self.best_val_pgd = -1.0
        self.selected_epoch: int | None = None
        changes: list[str] = []
        if resume:
            changes = restore(self, self.folder.last, self.allow_changes)
            self._write_config()  # only now: a refused resume leaves the run's config.yaml as it was
        self._decorrelate_ranks()
        unused = parameters_without_gradient(lambda: create_model(config.model.name, num_classes=num_classes,
                                                                  **config.model.kwargs)) if self.ctx.distributed else []
        if unused and self.ctx.is_main:
            logger.info("%d parameters get no gradient by design (e.g. %s); DDP is told to expect that",
                        len(unused), unused[0])
        self.nets = wrap_for_training(self.model, train_cfg.compile, device, self.ctx.distributed, bool(unused))
        self.metrics = MetricsWriter(self.out_dir, train_cfg.tensorboard) if self.ctx.is_main else None
        if self.metrics is not None:  # rows of epochs after the checkpoint are redone (a killed run leaves some)
            self.metrics.truncate_after(self.epoch - 1)
            if changes:
                self.metrics.write_event({"event": "recipe_change", "before_epoch": self.epoch, "changes": changes,
                                          "allowed_by": list(self.allow_changes)})

    # ----------------------------------------------------------------------------------------------- setup
    def _prepare_out_dir(self, resume: bool) -> bool:
        """Takes the run folder; returns whether there is a checkpoint to resume from.

        `--resume` in a folder where a run was started (its config.yaml exists) but killed before its first
        checkpoint starts that run from the beginning, so a requeue script can always pass `--resume`; in a
        folder without a run it is an error (most likely a mistyped --out-dir).
        """
        folder = self.folder
        if resume and not folder.has_checkpoint and not folder.was_started:
            raise CheckpointError(f"--resume found no {folder.last} and no run was started in {folder.path}; check "
                                  "--out-dir, or start the run without --resume")
        folder.take()  # one writer per folder, taken before anything is read or cleaned up (FolderLock's docstring)
        asked_to_resume = resume
        started_without_checkpoint = resume and not folder.has_checkpoint
        resume = resume and folder.has_checkpoint
        if not resume and folder.has_checkpoint:
            raise ConfigError(f"{self.out_dir} already holds a run (last.pt); continue it with --resume or "
                              "choose another --out-dir (nothing was overwritten)")
        # A fresh run may not write over files another command or a person put here (a config.yaml of theirs);
        # --resume adopts a folder of an older dsnet, whose files the manifest does not name yet.
        folder.reserve_files(adopt=asked_to_resume)
        folder.attach_log(TrainingRun.LOG, RunLogHandler)
        folder.remove_temp_files()
        if started_without_checkpoint and self.ctx.is_main:
            logger.warning("--resume: %s holds no checkpoint yet (the run stopped before its first epoch ended); "
                           "starting it from the beginning", self.out_dir)
        if not resume:
            self._write_config()
        return resume

    def _write_config(self) -> None:
        if self.ctx.is_main:
            write_text_atomic(self.folder.config, yaml.safe_dump(config_to_dict(self.config), sort_keys=False),
                              hint="free disk space and rerun with --resume")

    def _steps_per_epoch(self) -> int:
        cap = self.config.train.max_steps_per_epoch
        return len(self.loader) if cap is None else min(len(self.loader), cap)

    def _make_guard(self) -> CollapseGuard:
        generator = torch.Generator().manual_seed(self.config.train.seed)
        n = min(len(self.train_split), self.config.train.batch_size)
        index = torch.randperm(len(self.train_split), generator=generator)[:n].to(self.ctx.device)
        x = to_float(self.train_split.images.index_select(0, index))
        return CollapseGuard(x, self.train_split.labels.index_select(0, index), eps=self.objective.threat_eps)

    def _decorrelate_ranks(self) -> None:
        """Rank r > 0 reseeds the global RNG (drop-connect masks), else every rank would drop the same examples
        of its shard; rank 0 keeps the single-process stream. Derived from (seed, rank, epoch, step): a resumed
        run reseeds deterministically, though not to the state the interrupted run had reached on ranks > 0
        (checkpoints hold rank 0's RNG state only)."""
        if self.ctx.rank > 0:
            torch.manual_seed(self.config.train.seed * 1_000_003 + 7919 * self.ctx.rank
                              + 104_729 * self.epoch + self.loader.step)

    # ------------------------------------------------------------------------------------------ checkpoint
    def _save(self, path: Path) -> None:
        if self.ctx.is_main:
            save_checkpoint(checkpoint_state(self), path)

    # ------------------------------------------------------------------------------------------- training
    def _check_finite(self, value: float, where: str, what: str = "the training loss") -> None:
        if not math.isfinite(value):
            last = self.folder.last
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"{what} became {value} at {where}; {kept}; lower optim.lr or use train.amp=off, then "
                "resume with --resume"
            )

    def _check_weights_finite(self) -> None:
        """The last step of an epoch can blow the weights up while the losses seen so far were finite: such
        weights must not overwrite the last good checkpoint (one reduction per epoch)."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        finite = bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True
        self._check_finite(1.0 if finite else math.nan, f"the end of epoch {self.epoch}", what="the model weights")

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] + ([self.attention_optimizer] if self.attention_optimizer is not None else [])

    def _train_epoch(self) -> dict[str, Any]:
        cfg = self.config.train
        self.model.train()
        steps_per_epoch = self._steps_per_epoch()
        if self.loader.step >= steps_per_epoch:  # a checkpoint taken at the end of a shortened epoch
            self.loader.set_epoch(self.loader.epoch + 1)
        device = self.ctx.device
        totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
        parts: dict[str, torch.Tensor] = {}  # the objective's own metrics (TRADES' two terms, ...), summed
        start_step = self.loader.step
        self.progress.start_epoch(self.epoch, start_step)
        t0 = time.perf_counter()
        images = 0
        lr = self.schedule(self.epoch + start_step / steps_per_epoch)
        for x, y in self.loader:
            step = self.loader.step - 1
            lr = apply_schedule(self.optimizer, self.schedule, self.epoch + step / steps_per_epoch)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            first_step = cfg.bn_warm_start and self.epoch == 1 and step == 0
            with batchnorm_momentum(self.model, 1.0 if first_step else None):
                out = training_step(self.nets.train, self.objective, x, y, optimizers=self._optimizers(),
                                    scaler=self.scaler, precision=self.precision,
                                    epoch=self.epoch + step / steps_per_epoch, generator=self.generator,
                                    grad_clip=self.config.optim.grad_clip)
            if self.ema is not None:
                self.ema.update((self.epoch - 1) * steps_per_epoch + step + 1)
            batch = out.targets.numel()
            totals[0] += out.loss.detach().double() * batch
            totals[1] += (out.logits.detach().argmax(1) == out.targets).sum()
            totals[2] += batch
            for key, value in out.metrics.items():
                parts[key] = parts.get(key, 0) + value.detach().double() * batch
            images += batch
            log_step = (step + 1) % cfg.log_every == 0 or step + 1 == steps_per_epoch
            if log_step:
                loss_now = float(out.loss.detach())  # the one host sync, at log steps only
                self._check_finite(loss_now, f"epoch {self.epoch} step {step + 1}")
            rate = images * self.ctx.world_size / max(time.perf_counter() - t0, 1e-9)
            self.progress.step(step + 1, rate, loss=lambda o=out: float(o.loss.detach()),
                               accuracy=lambda: float(totals[1] / totals[2]), log_step=log_step)
            if step + 1 >= steps_per_epoch:
                break
        self.progress.end_epoch()
        if self.ema is not None:
            self.ema.take_buffers(self.model)
        elapsed = time.perf_counter() - t0
        all_reduce_sum(totals)
        train_loss = float(totals[0] / totals[2]) if totals[2] > 0 else float("nan")
        self._check_finite(train_loss, f"the end of epoch {self.epoch}")
        means = {}
        if parts:  # every rank has the same keys: the objective is the same
            stacked = torch.stack([parts[key] for key in sorted(parts)])
            all_reduce_sum(stacked)
            means = {f"train_{key}": float(value / totals[2]) for key, value in zip(sorted(parts), stacked)}
        return {
            "epoch": self.epoch,
            "lr": lr,
            "attention_lr": self.config.optim.attention_lr if self.attention_optimizer else None,
            "train_loss": train_loss,
            "train_acc": float(totals[1] / totals[2]),
            **means,
            "images_per_s": images * self.ctx.world_size / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }

    def _validate(self, row: dict[str, Any]) -> None:
        row["val_pgd_steps"] = self.val_attack.steps
        due = self.epoch % self.config.train.eval_every == 0 or self.epoch == self.config.train.epochs
        models = {"": self.nets.fast, **({"_ema": self.ema.model} if self.ema is not None else {})}
        if self.val_split is None or not due:
            for suffix in models:
                row[f"val_clean_acc{suffix}"] = row[f"val_pgd_acc{suffix}"] = None
            return
        progress = f"validation {self.val_attack.label}" if self.ctx.is_main and self.config.train.progress else None
        for suffix, model in models.items():
            clean, robust = evaluate_robustness(model, self.val_split, self.val_attack,
                                                batch_size=max(self.config.train.batch_size, 64), progress=progress)
            row[f"val_clean_acc{suffix}"], row[f"val_pgd_acc{suffix}"] = clean, robust

    def _select(self, row: dict[str, Any]) -> bool:
        policy = self.config.train.selection
        if policy == "last":
            chosen = True
        elif policy == "best_val_pgd":  # of the weight average when there is one: it is what gets evaluated
            score = row.get("val_pgd_acc_ema" if self.ema is not None else "val_pgd_acc")
            chosen = score is not None and score > self.best_val_pgd
            if chosen:
                self.best_val_pgd = score
        else:
            chosen = self.epoch == self.selected_epoch_target
        if chosen:
            self.selected_epoch = self.epoch
        return chosen

    def run(self) -> TrainResult:
        cfg = self.config.train
        steps = self._steps_per_epoch()
        self.progress = TrainingProgress(enabled=self.ctx.is_main and cfg.progress, epochs=cfg.epochs,
                                         steps_per_epoch=steps, first_epoch=self.epoch)
        if self.ctx.is_main and self.epoch <= cfg.epochs:
            logger.info("%s: the resolved recipe is %s", "resuming" if self.history else "training",
                        self.folder.config)
            logger.info("%s", self._summary(steps))
        stopped: str | None = None
        while self.epoch <= cfg.epochs:
            row = self._train_epoch()
            self._check_weights_finite()
            self._check_replicas(row)
            self._validate(row)
            attention = getattr(self.model, "attention_weights", None)  # the model's own hook (DS-Net has one)
            if callable(attention):
                row["attention_weights"] = attention().detach().cpu().tolist()
            collapsed = False
            if self.guard is not None:
                check = self.guard.check(self.nets.fast)
                row["probe_pgd_acc"] = check.robust_acc
                collapsed = check.collapsed
            if collapsed:
                stopped = (f"catastrophic overfitting at epoch {self.epoch}: probe PGD accuracy fell to "
                           f"{check.robust_acc:.3f}; kept the checkpoint of epoch {self.epoch - 1}")
                logger.warning(stopped)
                break
            chosen = self._select(row)
            row["selected"] = chosen
            self.history.append(row)
            if self.ctx.is_main:
                logger.info(format_epoch_line(row))
                assert self.metrics is not None
                self.metrics.write(row)
            finished_epoch = self.epoch
            self.epoch += 1
            # last.pt goes last: a run killed between these writes redoes the epoch and rewrites the others.
            if chosen:
                self._save(self.folder.selected)
            if cfg.keep_epoch_checkpoints:
                self._save(self.folder.epoch_checkpoint(finished_epoch))
            self._save(self.folder.last)
        if self.selected_epoch is None and self.ctx.is_main and self.history:
            logger.warning("the selection policy %s chose no epoch (e.g. the first decay lies beyond the last "
                           "epoch); selected.pt is the last epoch", cfg.selection)
            self.selected_epoch = self.history[-1]["epoch"]
            self._save(self.folder.selected)
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
        # Rank 0 alone writes the checkpoints: no rank returns before they exist (a caller that evaluates
        # selected.pt next, as a reproduce cell under DDP does, would otherwise read a file not yet written).
        barrier()
        return TrainResult(self.out_dir, len(self.history), self.history, self.selected_epoch, stopped)

    def _summary(self, steps: int) -> str:
        """One line on what runs: model, objective, schedule length, data, device."""
        objective = self.objective.config()
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in objective.items()
                          if k in ("eps", "step_size", "steps", "beta"))
        parameters = sum(p.numel() for p in self.model.parameters())
        extra = "" if self.extra is None else (f" + {self.extra.describe()} ({self.loader.extra_per_batch} of each "
                                               "batch)")
        extra += "" if self.ema is None else f" | weight average τ {self.ema.decay}"
        return (f"model {self.config.model.name} ({parameters:,} parameters) | objective {objective['name']}"
                f"{' (' + shown + ')' if shown else ''} | epochs {self.epoch} to {self.config.train.epochs}, "
                f"{steps} steps each, batch {self.config.train.batch_size} | {len(self.train_split)} training images"
                f"{extra} | "
                f"{self.ctx.device}, {self.precision.name}, {self.ctx.world_size} process(es)")

    def _check_replicas(self, row: dict[str, Any]) -> None:
        """Under DDP: gives every rank rank 0's BN buffers, then checks that all replicas agree (a desync would
        silently train n different models) and records the largest relative difference as `replica_divergence`."""
        if not self.ctx.distributed:
            return
        broadcast_buffers(self.model)
        row["replica_divergence"] = replica_divergence(self.model)
        if row["replica_divergence"] > 1e-5 and self.ctx.is_main:
            logger.warning("the %d processes hold different weights after epoch %d (relative difference %.2e)",
                           self.ctx.world_size, self.epoch, row["replica_divergence"])

    def close(self) -> None:
        self.folder.release()
        if self.ctx.owns_process_group:
            # DDP's reducer holds the process group: freed after the group was destroyed, it would destroy gloo's
            # group while holding the GIL, which deadlocks when a gloo worker thread still needs the GIL.
            self.nets = None
            gc.collect()
            teardown_distributed()


def train(config: RunConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
          allow_changes: Sequence[str] = ()) -> TrainResult:
    """Trains `config.model` with `config.objective` and writes the run folder `out_dir`.

    Args:
        config: a validated recipe (`dsnet.config.load_config`).
        data_dir: dataset folder; the dataset is downloaded there when missing (unless data.download is off).
        out_dir: run folder; must not hold a run unless `resume` is set.
        resume: continue the run in `out_dir` exactly where its `last.pt` stopped. The recipe must be the one the
            run was trained with, apart from settings that cannot change the finished epochs
            (`dsnet.config.RESUME_NEUTRAL_KEYS`: more epochs, device, progress and logging switches).
        allow_changes: dotted keys (`objective.beta`) or sections (`objective`) that a resume may change on
            purpose; each change is logged and recorded in metrics.jsonl.

    Raises:
        ConfigError, DataError, CheckpointError, TrainingDivergedError: with a one-line message saying what to do.
    """
    run = _Run(config, data_dir, out_dir, resume, allow_changes)
    try:
        return run.run()
    finally:
        run.close()
