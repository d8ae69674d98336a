"""L2, preset `standard`: RobustBench's CIFAR L2 track, ε = 0.5. FGM (uniform start in the L2 ball, one normalised
step of length ε), PGD-20 and CW-L2-30 (κ = 50) with step ε/4 = 0.125 (the L∞ preset's ratio), and the reference
AutoAttack with `norm="L2"`."""

from __future__ import annotations

from dsnet.evaluation.suite import Preset
from dsnet.evaluation.threat_models.base import ThreatModel, norm_preset, register_threat_model
from dsnet.registry import Registry

__all__ = ["L2"]

PIXELS = 3 * 32 * 32

_PRESETS: Registry[Preset] = Registry("L2 attack preset", hint="--preset standard")
_PRESETS.add("standard", norm_preset(
    "standard", 0.5, 0.125, "L2",
    "RobustBench's L2 threat model: ε = 0.5; FGM = uniform start in the L2 ball then one normalised step of "
    "length ε; PGD-20 and CW-L2-30 (κ = 50), uniform start, normalised-gradient steps of 0.125 (ε/4); AutoAttack "
    "version 'standard' with norm L2 through the reference code"))

L2 = register_threat_model(ThreatModel(
    "L2", "L2", "L2", ("fgsm", "pgd", "cw_l2", "autoattack"), _PRESETS, "standard", sweep_large_eps=8.0,
    leaderboard_eps={"cifar10": 0.5}, usual_eps=2.0, max_eps=PIXELS ** 0.5))
