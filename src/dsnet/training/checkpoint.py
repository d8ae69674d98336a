"""Checkpoints: written atomically, loaded safely, and checked against the model they are loaded into.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(..., weights_only=True)`
reads it and a checkpoint from the internet cannot run code. It is written to a temporary file in the same
folder, flushed to disk, and renamed into place: a reader never sees a half-written file, and a crash or a
full disk while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dsnet.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "remove_temp_files",
    "load_checkpoint",
    "load_model_state",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "dsnet-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Writes `state` to `path` atomically (temporary file, fsync, rename).

    Raises:
        CheckpointError: the folder is not writable or the disk is full; the previous file at `path` is kept.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint in {path.parent}: {error.strerror or error}; "
                              "choose a writable --out-dir") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {error.strerror or error}; the previous "
                              "checkpoint is unchanged; free disk space and resume with --resume") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Deletes the temporary files that `save_checkpoint` leaves behind when its process is killed mid-write.

    Only call it where no other process is writing checkpoints into `folder` (the trainer does, on rank 0, before
    its first write); a checkpoint under its real name is never touched.

    Returns:
        The files removed.
    """
    removed = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint with `weights_only=True`.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or holds pickled objects that would
            run code (which we refuse to load).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `dsnet train` or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe or "weights_only" in text.lower() or "Weights only" in text:
            what = f"a pickled {unsafe.group(1)}" if unsafe else "pickled Python objects"
            raise CheckpointError(
                f"refusing to load {path}: it holds {what}, which could run code; only tensors-only checkpoints "
                "are accepted (re-save the weights as a plain state dict)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({text.strip()[:120]}); use another copy") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first[:120]}); "
                              "use another copy or the previous checkpoint") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(state).__name__}, not a dict)")
    _check_records(path)
    return state


def _check_records(path: Path) -> None:
    """Compares every record of a zip-format checkpoint with the CRC-32 that `torch.save` stored for it.

    `torch.load` does not, so flipped bytes inside tensor data (a bad copy, a failing disk) would otherwise load
    as silently wrong weights. Reading the records again costs a fraction of the load itself.
    """
    if not zipfile.is_zipfile(path):
        return  # the legacy (non-zip) format carries no checksums
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:  # saved with torch.serialization.set_crc32_options(False)
                    continue
                with archive.open(info) as record:
                    while record.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt ({str(error).strip()[:120] or type(error).__name__}); "
                              "use another copy or the previous checkpoint") from None


def _describe(state: dict[str, Any], path: Path) -> str:
    name = state.get("model_name", "an unknown model")
    kwargs = state.get("model_kwargs") or {}
    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items() if not isinstance(v, (list, dict, torch.Tensor)))
    return f"{name}" + (f" ({extra})" if extra else "")


def load_model_state(model: nn.Module, state: dict[str, Any], *, path: str | Path = "checkpoint",
                     expected_name: str | None = None) -> None:
    """Loads a model's weights from a checkpoint dict (ours) or a bare state dict, strictly.

    Raises:
        CheckpointError: the weights belong to another architecture or width; the message names both.
    """
    path = Path(path)
    weights = state.get("model", state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} holds no model weights (expected a tensors-only state dict)")
    ours = model.state_dict()
    theirs_name = _describe(state, path) if "model" in state else "a bare state dict"
    ours_name = expected_name or type(model).__name__
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    mismatched = [k for k in ours if k in weights and tuple(weights[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or mismatched:
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(f"{k} has shape {tuple(weights[k].shape)} there but {tuple(ours[k].shape)} here")
        if missing:
            detail.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{path} was written for {theirs_name}, not for {ours_name}: {'; '.join(detail)}; "
            "build the model the checkpoint was trained with"
        )
    model.load_state_dict(weights, strict=True)


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy, torch CPU and CUDA) as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores what `capture_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
