"""Randomised models: found before any data is read, reported with the spread of their accuracy, and attacked with
EOT or not trusted.

A model whose output is random (noise on its input, dropout left on, a random transformation) defeats an attack that
follows one sample of its gradient, and its accuracy changes from one pass to the next: the same evaluation run
twice gives different numbers, and an attack may look strong or weak by chance. The field's checklist (Carlini et
al. 2019, "On Evaluating Adversarial Robustness") asks for expectation over transformation (EOT, Athalye et al.
2018); AutoAttack's reference code warns about such models and has a `rand` version with EOT over 20 samples.

- `probe_randomness`: the probe images through the model several times; outputs that differ (by more than 1e-4 of
  their L2 norm, AutoAttack's own threshold) mark the model as randomised.
- `clean_spread`: the clean accuracy over repeated passes, reported as mean ± std (min, max) beside the single pass
  the attacks start from.
- `check_randomness`: a failed check for a randomised model attacked without EOT (`--eot N` for FGSM, PGD and CW;
  `--autoattack-version rand` for AutoAttack), with that remedy.

Every metric runs with torch's global generator seeded from the evaluation's seed (and restored afterwards), so a
randomised model draws the same noise in a rerun: the numbers repeat, and the spread says how much they could move.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from dsnet.evaluation.sanity import FAILED, PASSED, SKIPPED, SanityCheck

__all__ = ["probe_randomness", "clean_spread", "check_randomness", "seeded_global_rng", "PROBE_PASSES",
           "RANDOMNESS_THRESHOLD", "SPREAD_PASSES", "EOT_REMEDY"]

PROBE_PASSES = 5
"""Forward passes of the probe images (AutoAttack's check uses 5)."""

RANDOMNESS_THRESHOLD = 1e-4
"""Largest L2 difference of two passes' logits, each scaled to unit norm, for a deterministic model (AutoAttack's
`alpha`; summation-order noise of a deterministic model on a GPU is far below it)."""

SPREAD_PASSES = 10
"""Clean passes behind a randomised model's accuracy spread."""

EOT_REMEDY = "--eot 20 --autoattack-version rand"
"""What makes the attacks follow a randomised model's expected gradient (20 samples, as AutoAttack's rand version)."""


def probe_randomness(model: nn.Module, images: torch.Tensor, passes: int = PROBE_PASSES) -> float:
    """The largest difference between `passes` forward passes of `images` (logits scaled to unit L2 norm per row);
    above `RANDOMNESS_THRESHOLD` the model is randomised."""
    with torch.no_grad():
        outputs = [model(images).float() for _ in range(passes)]
    scaled = [out / out.norm(dim=1, keepdim=True).clamp_min(1e-10) for out in outputs]
    return max(float((a - b).norm(dim=1).max()) for i, a in enumerate(scaled) for b in scaled[i + 1:])


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators (CPU, and `device`'s when it is a GPU) seeded inside the block, restored after."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def clean_spread(flags_of_pass: Any, passes: int = SPREAD_PASSES) -> dict[str, Any]:
    """Clean accuracy over `passes` passes: {"passes", "accuracies", "mean", "std", "min", "max"}.

    Args:
        flags_of_pass: called with the pass number, returns that pass's (n,) clean flags.
        passes: how many passes.
    """
    accuracies = []
    for number in range(passes):
        flags = flags_of_pass(number)
        accuracies.append(int(flags.sum()) / flags.numel() if flags.numel() else math.nan)
    mean = sum(accuracies) / len(accuracies)
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))
    return {"passes": passes, "accuracies": accuracies, "mean": mean, "std": std, "min": min(accuracies),
            "max": max(accuracies)}


def check_randomness(difference: float, eot: Mapping[str, int], autoattack_version: str | None) -> SanityCheck:
    """Passes for a deterministic model, and for a randomised one whose gradient attacks all use EOT (and whose
    AutoAttack, if run, is the rand version); fails otherwise, naming the remedy.

    Args:
        difference: `probe_randomness` of the model.
        eot: attack label -> its EOT samples, for every gradient attack run (1: none).
        autoattack_version: the AutoAttack version run, or None.
    """
    title = "the model is deterministic, or every attack averages over its randomness (EOT)"
    details = {"probe_difference": difference, "threshold": RANDOMNESS_THRESHOLD, "eot": dict(eot),
               "autoattack_version": autoattack_version}
    if not math.isfinite(difference):
        return SanityCheck("randomness", title, SKIPPED, "the model was not probed.", details)
    if difference <= RANDOMNESS_THRESHOLD:
        return SanityCheck("randomness", title, PASSED,
                           f"{PROBE_PASSES} passes of the same images gave the same logits (largest difference "
                           f"{difference:.1e}).", details)
    plain = [label for label, samples in eot.items() if samples <= 1]
    if autoattack_version not in (None, "rand"):
        plain.append(f"AutoAttack ({autoattack_version})")
    if plain:
        return SanityCheck("randomness", title, FAILED,
                           f"the model is randomised ({PROBE_PASSES} passes of the same images differ by "
                           f"{difference:.2g}, above {RANDOMNESS_THRESHOLD:g}), but {', '.join(plain)} followed one "
                           f"sample of its gradient, which overstates robustness; rerun with {EOT_REMEDY}.", details)
    return SanityCheck("randomness", title, PASSED,
                       f"the model is randomised (passes differ by {difference:.2g}); every attack averaged over "
                       "its randomness.", details)
