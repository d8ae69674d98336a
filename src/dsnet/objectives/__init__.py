"""dsnet.objectives: training objectives (standard, PGD-AT, TRADES, MART, Friendly-AT, Fast-AT), one file each.

`build_objective(name, **params)` builds a validated, frozen objective; the trainer calls it per batch and asks it
what it needs (its ε and validation attack, whether a collapse guard applies, the evaluation step the paper pairs
with it). A new objective is one file: a subclass of `Objective` (or `PGDObjective`) with `@register_objective`.
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "OBJECTIVES": "base",
    "Objective": "base",
    "PGDObjective": "base",
    "CleanAndAdversarialObjective": "base",
    "ObjectiveOutput": "base",
    "register_objective": "base",
    "build_objective": "base",
    "ce_attack_loss": "base",
    "kl_attack_loss": "base",
    "outer_forwards": "base",
    "OUTER_ORDERS": "base",
    "PAPER_EPS": "base",
    "PAPER_EVAL_STEP": "base",
    "Standard": "standard",
    "PGDAT": "at",
    "TRADES": "trades",
    "trades_loss": "trades",
    "MART": "mart",
    "mart_loss": "mart",
    "FAT": "fat",
    "TAU_SCHEDULES": "fat",
    "tau_at": "fat",
    "early_stopped_pgd": "fat",
    "FastAT": "fast_at",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
