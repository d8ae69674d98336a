"""L1, preset `standard`: ε = 12 (Croce & Hein, ICML 2021, on CIFAR-10), the reference AutoAttack with `norm="L1"`
(its own L1 settings: APGD with 5 restarts and its large-radius schedule). There is no first-order L1 attack of our
own, so there is no ε sweep, and there is no RobustBench leaderboard, so no claim."""

from __future__ import annotations

from dsnet.evaluation.suite import Preset
from dsnet.evaluation.threat_models.base import ThreatModel, register_threat_model
from dsnet.registry import Registry

__all__ = ["L1"]

_PRESETS: Registry[Preset] = Registry("L1 attack preset", hint="--preset standard")
_PRESETS.add("standard", Preset(
    "standard", 12.0,
    "ε = 12 in L1 (Croce & Hein 2021 on CIFAR-10); AutoAttack version 'standard' with norm L1 through the "
    "reference code (APGD-CE with 5 restarts and APGD-T, both with the large-radius schedule, then FAB-T and "
    "Square)",
    {"autoattack": {"eps": 12.0, "version": "standard", "seed": 0, "norm": "L1"}}))

L1 = register_threat_model(ThreatModel(
    "L1", "L1", "L1", ("autoattack",), _PRESETS, "standard", sweep_large_eps=None, usual_eps=24.0,
    max_eps=float(3 * 32 * 32)))
