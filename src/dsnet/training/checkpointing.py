"""A training run's checkpoint: what it holds, how a run is restored from it, and the rule that a resumed run keeps
its recipe.

A checkpoint holds everything a run needs to continue exactly (SPEC §4): the model (and its weight average), both
optimisers, the grad scaler, the loader's position, every RNG and the attack's generator, the collapse guard, the
epoch, the resolved recipe and the metrics so far, and the selection state. `--resume` restores all of it after
checking that the recipe is the one the finished epochs were trained with (`check_same_recipe`); the trainer
(`dsnet.training.trainer`) only calls `checkpoint_state` and `restore`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dsnet.config import RunConfig, config_from_dict, config_to_dict, recipe_differences
from dsnet.errors import CheckpointError, ConfigError
from dsnet.runtime.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, load_checkpoint, load_model_state, \
    restore_rng_state
from dsnet.runtime.records import describe_differences

__all__ = ["checkpoint_state", "restore", "check_same_recipe"]

logger = logging.getLogger(__name__)


def checkpoint_state(run: Any) -> dict[str, Any]:
    """What a checkpoint of `run` (the trainer's `_Run`) holds, as tensors and plain values."""
    config = run.config
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": config.model.name,
        "model_kwargs": dict(config.model.kwargs),
        "num_classes": int(getattr(run.model, "num_classes", 0) or 0),
        "model": run.model.state_dict(),
        **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
        "optimizer": run.optimizer.state_dict(),
        "attention_optimizer": run.attention_optimizer.state_dict() if run.attention_optimizer else None,
        "scaler": run.scaler.state_dict(),
        "loader": run.loader.state_dict(),
        "epoch": run.epoch,
        "step": run.loader.step,
        "rng": capture_rng_state(),
        "generator": run.generator.get_state(),
        "guard": run.guard.state_dict() if run.guard else None,
        "config": config_to_dict(config),
        "metrics": run.history,
        "best_val_pgd": run.best_val_pgd,
        "selected_epoch": run.selected_epoch,
        "selection": config.train.selection,
        "torch_version": str(torch.__version__),
    }


def restore(run: Any, path: Path, allow_changes: Sequence[str]) -> list[str]:
    """Restores every piece of `run`'s state from the checkpoint at `path`.

    Returns:
        The recipe changes that `allow_changes` let in (recorded in metrics.jsonl by the caller).

    Raises:
        CheckpointError: the checkpoint is unreadable, not a training checkpoint, or of another model.
        ConfigError: the recipe differs from the one the finished epochs were trained with (the message lists the
            differences) in a way that `RESUME_NEUTRAL_KEYS` and `allow_changes` do not cover.
    """
    state = load_checkpoint(path, map_location=run.ctx.device)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dsnet training checkpoint; start a new run in another folder")
    saved = config_from_dict(state["config"])
    config = run.config
    if (saved.model.name, saved.model.kwargs) != (config.model.name, config.model.kwargs):
        raise CheckpointError(f"{path} was trained as {saved.model.name} {saved.model.kwargs}, but the config asks for "
                              f"{config.model.name} {config.model.kwargs}; resume with the same model")
    changes = check_same_recipe(saved, config, int(state["epoch"]) - 1, allow_changes, path.parent)
    load_model_state(run.model, state, path=path, expected_name=config.model.name)
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.attention_optimizer is not None and state["attention_optimizer"] is not None:
        run.attention_optimizer.load_state_dict(state["attention_optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.loader.load_state_dict(state["loader"])
    run.generator.set_state(state["generator"].cpu() if run.ctx.device.type == "cpu" else state["generator"])
    if run.guard is not None and state.get("guard") is not None:
        run.guard.load_state_dict(state["guard"])
    restore_rng_state(state["rng"])
    run.epoch = int(state["epoch"])
    run.history = list(state["metrics"])
    run.best_val_pgd = float(state["best_val_pgd"])
    run.selected_epoch = state["selected_epoch"]
    logger.info("resumed from %s after epoch %d: continuing with epoch %d of %d", path, run.epoch - 1, run.epoch,
                config.train.epochs)
    return changes


def check_same_recipe(saved: RunConfig, now: RunConfig, finished: int, allow_changes: Sequence[str],
                      folder: Path) -> list[str]:
    """The recipe of a resumed run must be the one its finished epochs were trained with.

    Returns:
        The differences `allow_changes` accepted (recorded in metrics.jsonl).

    Raises:
        ConfigError: a difference `allow_changes` does not cover, or fewer epochs than the run has finished.
    """
    diffs = recipe_differences(config_to_dict(saved), config_to_dict(now))
    allowed = [d for d in diffs if any(d.split(":")[0] == key or d.startswith(key + ".") for key in allow_changes)]
    refused = [d for d in diffs if d not in allowed]
    if refused:
        raise ConfigError(
            f"--resume would change the recipe of {folder} ({describe_differences(refused)}); its {finished} finished "
            "epoch(s) were trained with its config.yaml. Resume with the same recipe, pass --allow-change KEY for a "
            "deliberate change (recorded in metrics.jsonl), or start a new run in another --out-dir"
        )
    if now.train.epochs < finished:
        raise ConfigError(f"train.epochs {now.train.epochs} is below the {finished} epochs {folder} has finished; a "
                          "resume can extend a run, not shorten it")
    for change in allowed:
        logger.warning("--allow-change: resuming with %s", change)
    return allowed
