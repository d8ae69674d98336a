"""Checkpoint I/O: written atomically, loaded safely, and checked against the model they are loaded into.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(..., weights_only=True)`
reads it and a checkpoint from the internet cannot run code. Weights shared with the field are safetensors files
(`save_safetensors`, `load_safetensors`): a JSON header and raw tensor bytes, read without any unpickling at all;
`load_checkpoint` reads one as `{"state_dict": tensors}`, so every reader of a state dict takes both. Either is
written through `dsnet.runtime.files.write_atomic`: a reader never sees a half-written file, and a crash or a full
disk while writing leaves the previous checkpoint intact. Training, evaluation, export and the analyses all load
through here, so every one of them refuses the same files with the same message.
"""

from __future__ import annotations

import pickle
import pickletools
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dsnet.errors import CheckpointError, NonFiniteError
from dsnet.runtime.files import remove_temp_files, save_torch_atomic, write_atomic

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "strip_wrapper_prefixes",
    "WRAPPER_PREFIXES",
    "STATE_DICT_KEYS",
    "AVERAGE_STATE_DICT_KEYS",
    "is_state_dict",
    "find_state_dict",
    "remove_temp_files",
    "load_tensors_file",
    "load_checkpoint",
    "save_safetensors",
    "load_safetensors",
    "is_safetensors_file",
    "load_model_state",
    "check_finite_tensors",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT = "dsnet-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: str | Path,
                    hint: str = "free disk space and resume with --resume") -> Path:
    """Writes `state` to `path` atomically (temporary file, fsync, rename; `dsnet.runtime.files.write_atomic`).

    Raises:
        DiskFullError: the disk is full; the previous file at `path` is intact and no temporary file is left.
        WriteError: the folder is not writable (same guarantees).
    """
    return save_torch_atomic(state, path, hint=hint)


_UNSAFE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def load_tensors_file(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """Reads a file saved with `torch.save` using `weights_only=True`, whatever object it holds.

    A file is called unsafe only when torch names a global it refuses to import (a pickled class or function that
    could run code); a file torch cannot parse at all (random bytes, a truncated download, a plain pickle) is
    corrupt or not a torch file.

    Raises:
        CheckpointError: the file is missing, unsafe, truncated or corrupt; one line with what to do.
    """
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{what} {path} {where}; train one with `dsnet train` or check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _UNSAFE.search(str(error))
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it holds a pickled {unsafe.group(1)}, which could run code; only "
                "tensors-only checkpoints are accepted (re-save the weights as a plain state dict)"
            ) from None
        hidden = _pickled_global(path)
        if hidden is not None:
            raise CheckpointError(
                f"refusing to load {path}: it holds a pickled {hidden}, which could run code; only tensors-only "
                "checkpoints are accepted (re-save the weights as a plain state dict)"
            ) from None
        raise CheckpointError(f"{what} {path} is corrupt, truncated or not a torch file (its pickle data cannot be "
                              "read); use another copy or the previous checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            AttributeError, TypeError) as error:
        text = str(error).strip()
        first = text.splitlines()[0].split(". ")[0] if text else ""
        detail = first if isinstance(error, RuntimeError) and first else f"{type(error).__name__} {first}".strip()
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({detail[:120]}); "
                              "use another copy or the previous checkpoint") from None
    _check_records(path, what)
    return obj


def _pickled_global(path: Path) -> str | None:
    """The first global a well-formed pickle in `path` would import (None when it names none or is not a pickle).

    torch's weights-only unpickler stops at the first opcode it does not support, which for a pickle of protocol
    4 or 5 comes before any global; this scan reads the opcodes without executing anything.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, KeyError, IndexError):
        return None
    return None


def is_safetensors_file(path: str | Path) -> bool:
    """A `.safetensors` file, or any file that starts as one does: an 8-byte little-endian header length, then a
    JSON object."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, *, metadata: dict[str, str] | None = None,
                     hint: str = "free disk space and rerun") -> Path:
    """Writes `tensors` as a safetensors file, atomically (`dsnet.runtime.files.write_atomic`).

    Each tensor is stored as its own contiguous CPU copy, so tensors that shared memory (tied weights, views) are
    written, which safetensors otherwise refuses.
    """
    from safetensors.torch import save

    data = save({key: value.detach().to("cpu", copy=True).contiguous() for key, value in tensors.items()},
                metadata=metadata)
    return write_atomic(path, lambda handle: handle.write(data), hint=hint)


def load_safetensors(path: str | Path, map_location: str | torch.device = "cpu",
                     what: str = "weights") -> dict[str, torch.Tensor]:
    """Reads a safetensors file: tensors only, never unpickled.

    Raises:
        CheckpointError: the file is missing, truncated or not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{what} {path} {where}; check the path")
    try:
        tensors = load_file(path, device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{what} {path} is truncated or not a safetensors file ({detail[:120]}); download or "
                              "export it again") from None
    if not tensors:
        raise CheckpointError(f"{what} {path} holds no tensors; download or export it again")
    return tensors


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint (a dict) with `weights_only=True`, or a safetensors file as `{"state_dict": tensors}`.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or holds pickled objects that would
            run code (which we refuse to load).
    """
    path = Path(path)
    if path.is_file() and is_safetensors_file(path):
        return {"state_dict": load_safetensors(path, map_location, what="checkpoint")}
    state = load_tensors_file(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _check_records(path: Path, what: str = "checkpoint") -> None:
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
        raise CheckpointError(f"{what} {path} is corrupt ({str(error).strip()[:120] or type(error).__name__}); "
                              "use another copy or the previous checkpoint") from None


def _describe(state: dict[str, Any], path: Path) -> str:
    name = state.get("model_name", "an unknown model")
    kwargs = state.get("model_kwargs") or {}
    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items() if not isinstance(v, (list, dict, torch.Tensor)))
    return f"{name}" + (f" ({extra})" if extra else "")


WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
"""Key prefixes that wrappers add: DistributedDataParallel / DataParallel (`module.`), `torch.compile`
(`_orig_mod.`), and a training script's own wrapper around the network (`model.`, which RobustBench's loader strips
too)."""

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")
"""Where training scripts keep the weights in a checkpoint dict: `state_dict` (RobustBench, most repositories),
`model_state_dict` (the robust-residual-network code and many others), `model`, `net`."""

AVERAGE_STATE_DICT_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema")
"""Where they keep a weight average (EMA) beside the trained weights."""


def is_state_dict(weights: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(weights, dict) and bool(weights) and all(isinstance(v, torch.Tensor) for v in weights.values())


def find_state_dict(state: Any, weights: str = "auto", path: str | Path = "checkpoint") -> tuple[dict[str, Any], str]:
    """The tensors-only state dict in a checkpoint of any common layout, and where in the file it was.

    A bare state dict is itself; otherwise the trained weights are under one of `STATE_DICT_KEYS` and a weight
    average under one of `AVERAGE_STATE_DICT_KEYS` (either may be wrapped once more, as `{"ema": {"state_dict":
    ...}}`). As for dsnet's own checkpoints, `weights` "auto" takes the average where there is one, "ema" requires
    it, and "raw" takes the trained weights.

    Returns:
        (state dict, where): where is "the file itself" or the key, e.g. "'model_state_dict'".

    Raises:
        CheckpointError: no state dict where one is looked for, or none of the kind `weights` asks for.
    """
    if is_state_dict(state):
        if weights == "ema":
            raise CheckpointError(f"{path} holds one bare state dict and no weight average; pass --weights raw or auto")
        return state, "the file itself"

    def under(keys: tuple[str, ...]) -> tuple[dict[str, Any], str] | None:
        for key in keys:
            value = state.get(key) if isinstance(state, dict) else None
            if is_state_dict(value):
                return value, repr(key)
            if isinstance(value, dict):
                for inner in STATE_DICT_KEYS:
                    if is_state_dict(value.get(inner)):
                        return value[inner], f"{key!r} → {inner!r}"
        return None

    raw, average = under(STATE_DICT_KEYS), under(AVERAGE_STATE_DICT_KEYS)
    found = raw if weights == "raw" else (average if weights == "ema" else (average or raw))
    if found is None:
        keys = ", ".join(repr(k) for k in state) if isinstance(state, dict) else f"a {type(state).__name__}"
        wanted = (f"weight average (under {', '.join(AVERAGE_STATE_DICT_KEYS)})" if weights == "ema" else
                  f"tensors-only state dict (bare, or under {', '.join(STATE_DICT_KEYS)})")
        raise CheckpointError(f"{path} holds no {wanted}; it holds {keys[:200]}; pass a file with the weights")
    return found


def strip_wrapper_prefixes(weights: dict[str, Any], expected: Any = None) -> dict[str, Any]:
    """`weights` without the `WRAPPER_PREFIXES` that every key carries (in any order and number: a compiled DDP
    model saves `module._orig_mod.stem.weight`).

    Args:
        weights: the state dict as saved.
        expected: the keys of the model it goes into; a prefix that these keys carry too is part of the model's
            own names and is kept.
    """
    own = list(expected or [])
    stripped = True
    while stripped and weights:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in weights) and not (own and all(k.startswith(prefix) for k in own)):
                weights = {key[len(prefix):]: value for key, value in weights.items()}
                stripped = True
    return weights


INPUT_STATISTICS_NAMES = {"mean": "mean", "std": "std", "mu": "mean", "sigma": "std"}
"""State-dict names under which other code saves in-model input normalisation (RobustBench's WRN-A4 keeps
persistent `mu` and `sigma`), and the non-persistent buffer of ours that holds the same constants."""


def _drop_input_statistics(model: nn.Module, weights: dict[str, Any], path: Path) -> dict[str, Any]:
    """`weights` without saved input-normalisation constants that equal the model's own (non-persistent) ones.

    Raises:
        CheckpointError: the saved constants differ from the model's: the weights were trained on other inputs.
    """
    ours = model.state_dict()
    buffers = dict(model.named_buffers())
    kept = dict(weights)
    for key, name in INPUT_STATISTICS_NAMES.items():
        if key in weights and key not in ours and isinstance(buffers.get(name), torch.Tensor):
            saved, own = weights[key].detach().float().cpu().flatten(), buffers[name].detach().float().cpu().flatten()
            if saved.shape != own.shape or not torch.allclose(saved, own, rtol=0, atol=1e-6):
                raise CheckpointError(f"{path} normalises its input with {key} = {saved.tolist()}, but the model "
                                      f"normalises with {name} = {own.tolist()}; build the model with the statistics "
                                      "it was trained with (its `normalize` argument)")
            del kept[key]
    return kept


def check_finite_tensors(tensors: Any, where: str, fix: str) -> None:
    """Raises `NonFiniteError` when a floating-point tensor among `tensors` (name -> tensor items) holds NaN or inf.

    Weights that are not finite give NaN logits, whose argmax is a fixed class: every accuracy would be a plausible
    few per cent, and every attack would "fail". So such weights are refused where they are first seen.

    Args:
        tensors: (name, tensor) pairs, e.g. `state_dict.items()` or `model.named_parameters()`.
        where: what holds them, for the message ("runs/x/last.pt", "the model built by my_net.py:build").
        fix: what to do, the end of the message.
    """
    bad = [(name, t) for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, tensor = bad[0]
        count = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{where} holds weights that are NaN or infinite ({len(bad)} tensor(s), e.g. {name} with "
                             f"{count} of {tensor.numel()} values); {fix}")


def load_model_state(model: nn.Module, state: dict[str, Any], *, path: str | Path = "checkpoint",
                     expected_name: str | None = None) -> None:
    """Loads a model's weights from a checkpoint dict (ours) or a bare state dict, strictly.

    Keys saved through a wrapper (`module.` of DDP, `_orig_mod.` of `torch.compile`, a script's `model.`) are
    accepted, and so are saved input-normalisation constants that equal the model's own (`mu`/`sigma` of
    RobustBench's WRN-A4).

    Raises:
        CheckpointError: the weights belong to another architecture or width; the message names both.
        NonFiniteError: a weight or buffer is NaN or infinite (`check_finite_tensors`).
    """
    path = Path(path)
    weights = state.get("model", state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} holds no model weights (expected a tensors-only state dict)")
    ours = model.state_dict()
    weights = _drop_input_statistics(model, strip_wrapper_prefixes(weights, ours), path)
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
    check_finite_tensors(weights.items(), str(path), "the run that wrote it diverged: use an earlier checkpoint")
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
