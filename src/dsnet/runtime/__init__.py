"""dsnet.runtime: what training and evaluation both stand on, and nothing above them.

- `distributed`: one code path for 1..n processes (torchrun detection, process group, sharding of points,
  reductions, synchronised BatchNorm on CPUs);
- `files`: atomic writes with one honest line for a full disk, clean-up of interrupted writes;
- `lock`: one writer per run or evaluation folder (`FolderLock`);
- `ownership`: which command wrote which file of a folder, so none replaces another's (`FolderFiles`);
- `run_folder`: the folder a command writes, as one type (`RunFolder`, and `TrainingRun` with its file names);
- `checkpoint`: safe loading (`weights_only=True`, CRC checks, honest messages), saving, RNG state;
- `hashing`: SHA-256 of weights, points and files;
- `precision`: autocast for training, true fp32 for evaluation (`full_fp32`).

`training` and `evaluation` import from here; this package imports neither.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "DistributedContext": "distributed",
    "setup_distributed": "distributed",
    "teardown_distributed": "distributed",
    "all_reduce": "distributed",
    "all_reduce_sum": "distributed",
    "gather_objects": "distributed",
    "barrier": "distributed",
    "shard_positions": "distributed",
    "resolve_device": "distributed",
    "local_rank_zero_first": "distributed",
    "write_atomic": "files",
    "write_text_atomic": "files",
    "save_torch_atomic": "files",
    "remove_temp_files": "files",
    "ensure_writable_folder": "files",
    "FolderLock": "lock",
    "FolderFiles": "ownership",
    "write_owned": "ownership",
    "RunFolder": "run_folder",
    "FolderKind": "run_folder",
    "TrainingRun": "run_folder",
    "CHECKPOINT_FORMAT": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_tensors_file": "checkpoint",
    "load_model_state": "checkpoint",
    "capture_rng_state": "checkpoint",
    "restore_rng_state": "checkpoint",
    "tensors_sha256": "hashing",
    "state_dict_sha256": "hashing",
    "file_sha256": "hashing",
    "Precision": "precision",
    "resolve_precision": "precision",
    "full_fp32": "precision",
    "math_mode": "precision",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
