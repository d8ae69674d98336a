"""dsnet.evaluation.threat_models: the norm-ball threat models, one file each (L∞, L2, L1), and what they share.

`base` defines `ThreatModel` and its registry; every other module of this package registers one threat model with
its presets, and the registry imports them all on first use, so a new threat model is one file here.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "ThreatModel": "base",
    "THREAT_MODELS": "base",
    "register_threat_model": "base",
    "get_threat_model": "base",
    "norm_preset": "base",
    "resolve_preset": "base",
    "build_attacks": "base",
    "PAIRED_STEP": "base",
    "DEFAULT_ATTACKS": "base",
    "METRIC_ORDER": "base",
    "PRESETS": "linf",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
