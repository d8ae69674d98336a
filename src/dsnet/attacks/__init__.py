"""dsnet.attacks: L-inf attacks (FGSM, PGD, CW∞), AutoAttack through the reference code, and presets.

Every attack is configured once with keyword arguments and called as `attack(model, x, y) -> x_adv` on
images in [0, 1]. Attacks run the model in eval mode and give every submodule its mode back, draw randomness
from their own seeded generator (the global RNG is never touched), and return points inside the ε-ball and
[0, 1]. `build_attacks("paper" | "standard", trained_with)` builds the evaluation suite of SPEC.md §5.
"""

from dsnet.attacks.autoattack import AUTOATTACK_VERSIONS, AutoAttack, AutoAttackResult
from dsnet.attacks.base import Attack
from dsnet.attacks.core import eval_mode, project, random_start, sign_gradient_ascent
from dsnet.attacks.linf import FGSM, PGD, CWInf, fgsm_textbook
from dsnet.attacks.losses import cross_entropy_loss, cw_margin_loss
from dsnet.attacks.metrics import accuracy, correct_flags, robust_flags
from dsnet.attacks.presets import (
    ATTACKS,
    DEFAULT_ATTACKS,
    PRESETS,
    TRAINED_WITH,
    build_attack,
    build_attacks,
    resolve_preset,
)

__all__ = [
    "Attack",
    "FGSM",
    "PGD",
    "CWInf",
    "fgsm_textbook",
    "AutoAttack",
    "AutoAttackResult",
    "AUTOATTACK_VERSIONS",
    "cross_entropy_loss",
    "cw_margin_loss",
    "accuracy",
    "correct_flags",
    "robust_flags",
    "ATTACKS",
    "PRESETS",
    "TRAINED_WITH",
    "DEFAULT_ATTACKS",
    "resolve_preset",
    "build_attack",
    "build_attacks",
    "eval_mode",
    "project",
    "random_start",
    "sign_gradient_ascent",
]
