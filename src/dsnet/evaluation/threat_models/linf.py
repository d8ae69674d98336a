"""L∞, the paper's threat model, with two presets (SPEC.md §5, reference/dsnet_reference.md §5):

- `paper`: what the DS-Net authors evaluate with. ε = 0.031 (not 8/255); FGSM = uniform random start then one full-ε
  step; PGD-20 and CW∞-30 (κ = 50) with the step the paper pairs with the model's training objective
  (`Objective.paper_eval_step`: 0.031/4 for AT and MART models, 0.003 for TRADES models); AutoAttack standard at 0.031.
- `standard`: the RobustBench threat model. ε = 8/255; the same attacks and step counts; step ε/4 = 2/255 for every
  model, whatever it was trained with; AutoAttack standard at 8/255.
"""

from __future__ import annotations

from dsnet.evaluation.suite import Preset
from dsnet.evaluation.threat_models.base import (
    DEFAULT_ATTACKS,
    PAIRED_STEP,
    ThreatModel,
    norm_preset,
    register_threat_model,
)
from dsnet.registry import Registry

__all__ = ["PRESETS", "LINF"]

PRESETS: Registry[Preset] = Registry("attack preset", hint="--preset paper or standard")
"""The L∞ presets (`paper`, `standard`)."""
PRESETS.add("paper", norm_preset(
    "paper", 0.031, PAIRED_STEP, "Linf",
    "the DS-Net authors' evaluation: ε = 0.031 (not 8/255); FGSM = uniform random start then one ε step; "
    "PGD-20 and CW∞-30 (κ = 50), uniform start, step 0.031/4 for AT/MART-trained models and 0.003 for "
    "TRADES-trained models; AutoAttack version 'standard' through the reference code"))
PRESETS.add("standard", norm_preset(
    "standard", 8 / 255, 2 / 255, "Linf",
    "the RobustBench threat model: ε = 8/255; FGSM = uniform random start then one ε step; PGD-20 and "
    "CW∞-30 (κ = 50), uniform start, step 2/255 (ε/4) for every model; AutoAttack version 'standard' "
    "through the reference code"))

LINF = register_threat_model(ThreatModel(
    "Linf", "L∞", "Linf", DEFAULT_ATTACKS, PRESETS, "paper", sweep_large_eps=0.5,
    leaderboard_eps={"cifar10": 8 / 255, "cifar100": 8 / 255}, usual_eps=16 / 255, max_eps=1.0))
