"""The Hugging Face Hub's model card (`README.md`) for an export, with the evaluation's numbers in it.

A Hub model card is Markdown behind a YAML header that the Hub reads: the library, tags, datasets, and
`model-index`, the results as the Hub (and Papers with Code before it) index them: one entry per task and dataset,
each with its metrics (`type`, `value`, `name`, and `args` for what the number depends on). `dsnet export
--hub-card --report report.json` writes it from the report: clean accuracy and every attack's, with the threat
model, ε and the number of points as arguments, so a reader of the Hub page sees what the number is before
reading further. Accuracies are percentages, rounded to two decimals as in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

import dsnet

__all__ = ["model_card", "card_metrics", "HUB_DATASETS"]

HUB_DATASETS = {
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "svhn": ("ufldl-stanford/svhn", "SVHN"),
}
"""Our dataset name -> (the dataset's Hub id, its name)."""


def _pct(value: Any) -> float | None:
    return round(100 * float(value), 2) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _eps_text(threat: Mapping[str, Any]) -> str:
    if threat.get("eps_255"):
        return str(threat["eps_255"])
    return f"{threat['eps']:.4g}" if threat.get("eps") is not None else "-"


def card_metrics(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's results as `model-index` metrics: clean accuracy, then each attack's robust accuracy.

    For the corruption suite, the mean accuracy over its corruptions and severities stands for the 75 results.
    """
    threat = report.get("threat_model") or {}
    n = int(report.get("n") or 0)
    attacks = report.get("attacks") or {}
    args = {"threat_model": threat.get("name"), "eps": threat.get("eps"), "points": n,
            "split": report.get("split"), "preset": threat.get("preset")}
    metrics: list[dict[str, Any]] = []
    clean = (report.get("accuracy") or {}).get("clean")
    if _pct(clean) is not None:
        metrics.append({"type": "accuracy", "value": _pct(clean), "name": f"Clean accuracy ({n} points)",
                        "verified": False})
    others = [(name, entry) for name, entry in attacks.items() if name != "clean" and isinstance(entry, Mapping)]
    if threat.get("name") == "corruptions":
        values = [float(entry["accuracy"]) for _, entry in others if _pct(entry.get("accuracy")) is not None]
        if values:
            metrics.append({"type": "robust-accuracy", "value": _pct(sum(values) / len(values)),
                            "name": f"Mean corruption accuracy ({len(values)} corruption/severity pairs, {n} points)",
                            "args": {k: v for k, v in args.items() if k != "eps"}, "verified": False})
        return metrics
    for name, entry in others:
        value = _pct(entry.get("accuracy"))
        if value is None:
            continue
        metrics.append({"type": "robust-accuracy", "value": value,
                        "name": f"{entry.get('label', name)} accuracy ({threat.get('name')}, ε = {_eps_text(threat)}, "
                                f"{n} points)",
                        "args": {"attack": name, **args}, "verified": False})
    return metrics


def _header(spec: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    dataset = str(spec.get("dataset", ""))
    hub_id, dataset_name = HUB_DATASETS.get(dataset, (dataset, dataset))
    threat = ((report or {}).get("threat_model") or {}).get("name")
    header: dict[str, Any] = {
        "library_name": "dsnet",
        "pipeline_tag": "image-classification",
        "tags": [t for t in ("dsnet", "adversarial-robustness", "robustness", "image-classification", "safetensors",
                             str(spec.get("model_name")), f"threat-model-{threat.lower()}" if threat else None) if t],
        "datasets": [hub_id],
        "metrics": ["accuracy"],
    }
    metrics = card_metrics(report) if report is not None else []
    if metrics:
        header["model-index"] = [{
            "name": str(spec.get("name")),
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"type": hub_id, "name": dataset_name, "split": str(report.get("split", "test"))},
                "metrics": metrics,
            }],
        }]
    return header


def _results_lines(report: Mapping[str, Any]) -> list[str]:
    threat = report.get("threat_model") or {}
    selection = report.get("selection") or {}
    math_setting = (report.get("device") or {}).get("math_setting", "fp32")
    lines = [
        "## Robustness",
        "",
        f"Evaluated with `dsnet eval` (dsnet {(report.get('versions') or {}).get('dsnet', dsnet.__version__)}): "
        f"threat model {threat.get('name')}"
        + (f", ε = {_eps_text(threat)}" if threat.get("eps") is not None else "")
        + f", {threat.get('preset')} preset, {report.get('n')} of {selection.get('total', '?')} "
        f"{report.get('dataset')} {report.get('split')} points ({selection.get('kind', '')}), "
        f"{'TF32' if math_setting == 'tf32' else 'IEEE fp32'} math.",
        "",
        "| Metric | Accuracy (%) |",
        "|---|---:|",
    ]
    for metric in card_metrics(report):
        lines.append(f"| {metric['name']} | {metric['value']:.2f} |")
    failed = [check for check in report.get("sanity_checks") or [] if check.get("status") == "failed"]
    if failed:
        lines += ["", "Failed checks of the evaluation (see its report.md):", ""]
        lines += [f"- {check.get('title')}: {check.get('message')}" for check in failed]
    if report.get("warnings"):
        lines += ["", *[f"**Warning:** {warning}" for warning in report["warnings"]]]
    return lines + [""]


def model_card(spec: Mapping[str, Any], report: Mapping[str, Any] | None, *, repo: str | None = None) -> str:
    """The `README.md` of a Hub export: the metadata header, what the model is, its results, how to load it.

    Args:
        spec: the export's `config.json`.
        report: the `report.json` of its evaluation (None: a card without results).
        repo: "ORG/REPO" the folder will be uploaded to, for the loading commands (default: written as ORG/REPO).
    """
    from dsnet.evaluation.exported import spec_normalization

    where = repo or "ORG/REPO"
    normalize = spec_normalization(spec)
    kwargs = spec.get("model_kwargs") or {}
    lines = [
        "---",
        yaml.safe_dump(_header(spec, report), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {spec.get('name')}",
        "",
        f"`{spec.get('model_name')}`{' ' + str(kwargs) if kwargs else ''} trained on {spec.get('dataset')} "
        f"({spec.get('num_classes')} classes) with `{spec.get('trained_with')}`, exported by "
        "dsnet as safetensors.",
        "",
        "- input: (B, 3, 32, 32) float images in [0, 1]; "
        + ("no normalisation" if normalize is None
           else f"the model normalises them itself (mean {list(normalize[0])}, std {list(normalize[1])})"),
        f"- weights: `{(spec.get('weights') or {}).get('file')}`, sha256 `{(spec.get('weights') or {}).get('sha256')}`",
        "",
    ]
    lines += _results_lines(report) if report is not None else ["## Robustness", "", "Not evaluated yet.", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f"dsnet eval --checkpoint hf://{where} --data-dir DATA --preset standard",
        "```",
        "",
        "```python",
        "from dsnet.evaluation import load_exported",
        "",
        f'model = load_exported("hf://{where}")  # fp32, eval mode, inputs in [0, 1]',
        "```",
        "",
        "The revision is pinned with `hf://ORG/REPO@COMMIT`, and the report records the commit it loaded.",
        "",
    ]
    return "\n".join(lines)
