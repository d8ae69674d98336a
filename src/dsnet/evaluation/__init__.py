"""dsnet.evaluation: robustness evaluation of checkpoints (`dsnet eval`), and export for RobustBench and the Hub.

`evaluate(checkpoint, data_dir, ...)` computes clean, FGSM, PGD-20, CW∞-30 and AutoAttack accuracy with the
`paper` or `standard` preset, the worst case over them, AutoAttack's per-stage accuracies and warnings, and
sanity checks for gradient masking; it resumes after an interruption, shards across `torchrun` ranks, and
writes `report.json` and `report.md`. `export_model` / `load_exported` write and read a model with its architecture
spec: RobustBench's `.pt` with its claim JSON, or the Hub's safetensors with a model card (`hf://` references are
read through the Hub's cache, `dsnet.evaluation.hub`).
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "evaluator",
    "EvalConfig": "config",
    "EvalPlan": "config",
    "Evaluation": "evaluator",
    "get_suite": "config",
    "default_out_dir": "config",
    "Suite": "suite",
    "Preset": "suite",
    "ThreatModel": "threat_models",
    "THREAT_MODELS": "threat_models",
    "register_threat_model": "threat_models",
    "PRESETS": "threat_models",
    "DEFAULT_ATTACKS": "threat_models",
    "resolve_preset": "threat_models",
    "build_attacks": "threat_models",
    "EvalReport": "report",
    "AttackOutcome": "report",
    "eps_fraction": "report",
    "export_model": "export",
    "load_exported": "exported",
    "read_export": "exported",
    "find_export": "exported",
    "robustbench_claim": "export",
    "ExportResult": "export",
    "load_model_for_evaluation": "loading",
    "LoadedModel": "loading",
    "select_points": "points",
    "shard_positions": "points",
    "PointSelection": "points",
    "PAPER_SUBSET": "points",
    "SanityCheck": "sanity",
    "check_ordering": "sanity",
    "check_eps_sweep": "sanity",
    "check_square": "sanity",
    "check_perturbations": "sanity",
    "check_pgd_vs_margin": "sanity",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
