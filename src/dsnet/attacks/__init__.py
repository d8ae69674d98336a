"""dsnet.attacks: FGSM/FGM, PGD and the CW margin attacks in the L∞ or L2 ball, and AutoAttack (L∞, L2, L1)
through the reference code.

Every attack is configured once with keyword arguments and called as `attack(model, x, y) -> x_adv` on
images in [0, 1]. Attacks run the model in eval mode and give every submodule its mode back, draw randomness
from their own seeded generator (the global RNG is never touched), and return points inside the ε-ball and
[0, 1]. `attack.evaluate(...)` (or `robust_flags`) gives the per-point robust flags on a whole set of points,
sharded across processes. The evaluation presets of SPEC.md §5 are `dsnet.evaluation.threat_models`.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "Attack": "base",
    "ATTACKS": "base",
    "register_attack": "base",
    "build_attack": "base",
    "FGSM": "gradient",
    "PGD": "gradient",
    "CWInf": "gradient",
    "CWL2": "gradient",
    "fgsm_textbook": "gradient",
    "AutoAttack": "autoattack",
    "AutoAttackResult": "autoattack",
    "AUTOATTACK_VERSIONS": "autoattack",
    "AUTOATTACK_NORMS": "autoattack",
    "cross_entropy_loss": "losses",
    "cw_margin_loss": "losses",
    "accuracy": "metrics",
    "correct_flags": "metrics",
    "robust_flags": "metrics",
    "eval_mode": "core",
    "project": "core",
    "random_start": "core",
    "sign_gradient_ascent": "core",
    "gradient_ascent": "core",
    "Norm": "norms",
    "NORMS": "norms",
    "get_norm": "norms",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
