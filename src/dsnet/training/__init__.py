"""dsnet.training: the trainer (one loop for every model, objective and number of processes), the Fast-AT collapse
guard, the fast path (channels_last, regional compilation), metrics and progress. LR schedules are `dsnet.schedules`.

The objectives it trains with are `dsnet.objectives`; what it stands on (processes, checkpoints, files) is
`dsnet.runtime`. `train(config, data_dir, out_dir)` is what `dsnet train` runs.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "train": "trainer",
    "TrainResult": "trainer",
    "CollapseGuard": "collapse_guard",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
