"""Per-block Lipschitz estimates of a DS-Net (the paper's Lemma 3.2).

Lemma 3.2 bounds the Lipschitz constant of a robust module, x ↦ Σ_j w_j·B_j(x), by Σ_j w_j·L_j, where L_j is
the constant of atomic block B_j. We estimate each L_j locally: at real inputs of the module (captured with a
forward hook on a batch of test images), the spectral norm of the block's input Jacobian J, by power
iteration on JᵀJ: v ← Jᵀ(J v) / ‖Jᵀ(J v)‖, σ ≈ ‖J v‖. J v is a forward-mode product
(`torch.func.jvp`) and Jᵀu a reverse-mode one (`torch.func.vjp`), so J is never formed. The model is in
eval mode, so examples do not interact through BN, and the whole batch is estimated in one pass, each
example's vector normalised on its own. The same is done for the whole module, to compare it with the bound.

These are lower bounds of the true local constants (power iteration converges from below) and are local:
they hold around the inputs the network actually sees, not globally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from dsnet.analysis.attention import AnalysisResult
from dsnet.analysis.common import load_model, new_figure, run_label, sample_batches, save_figure, write_csv
from dsnet.errors import ConfigError
from dsnet.models.atomic_blocks import block_label

__all__ = ["jacobian_spectral_norm", "module_inputs", "analyze_lipschitz"]

logger = logging.getLogger(__name__)



def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    return t / _per_example_norm(t).view(-1, *([1] * (t.dim() - 1)))


def jacobian_spectral_norm(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, iters: int = 20,
                           seed: int = 0) -> torch.Tensor:
    """Per-example spectral norm of the input Jacobian of `fn` at `x`, by power iteration on JᵀJ.

    Args:
        fn: maps a batch (B, ...) to a batch (B, ...) with no interaction between examples (eval mode).
        x: (B, ...) inputs.
        iters: power iterations (>= 1).
        seed: seed of the start vector.

    Returns:
        (B,) estimates of ‖J_b‖₂, one per example.

    Raises:
        ConfigError: iters < 1.
    """
    from torch.func import jvp, vjp

    if iters < 1:
        raise ConfigError(f"iters must be >= 1, got {iters}")
    x = x.detach()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    v = _normalise(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    _, pullback = vjp(fn, x)
    sigma = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        _, jv = jvp(fn, (x,), (v,))
        sigma = _per_example_norm(jv)
        (jtjv,) = pullback(jv)
        v = _normalise(jtjv)
    _, jv = jvp(fn, (x,), (v,))
    return torch.maximum(sigma, _per_example_norm(jv)).detach()


def module_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every robust module of a DS-Net on images `x` (eval mode, no gradients)."""
    from dsnet.models.dsnet import RobustModule

    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
             for m in model.modules() if isinstance(m, RobustModule)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def analyze_lipschitz(
    sources: Sequence[str | Path], data_dir: str | Path, out_dir: str | Path, *, n_examples: int = 32,
    iters: int = 20, seed: int = 0, device: str | None = None, name: str = "lipschitz",
) -> AnalysisResult:
    """Local Lipschitz estimates of every atomic block and robust module of one or more DS-Nets.

    Args:
        sources: run folders or checkpoints of DS-Nets.
        data_dir: dataset folder (test split).
        out_dir: where `<name>.png` and `<name>.csv` go.
        n_examples: test images at which the Jacobians are taken.
        iters: power iterations.
        seed: seed of the images and the start vectors.
        device: default cuda when available.
        name: file stem.

    Returns:
        The PNG and CSV paths and `{model: {"blocks": (K, N) mean σ, "module": (K,), "bound": (K,),
        "weights": (K, N)}}`; the bound is Σ_j w_j·σ_j of Lemma 3.2, averaged over examples.

    Raises:
        ConfigError: a source is not a DS-Net.
    """
    from dsnet.models.dsnet import DSNet, RobustModule

    if not sources:
        raise ConfigError("give at least one run folder or checkpoint of a DS-Net")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    results: dict[str, dict[str, list]] = {}
    for source in sources:
        model, state = load_model(source, device=device)
        if not isinstance(model, DSNet):
            raise ConfigError(f"{source} is a {state.get('model_name')}, not a DS-Net: per-block Lipschitz estimates "
                              "need robust modules")
        dataset = state["dataset"]
        (x, _), *_ = sample_batches(dataset, data_dir, n_examples=n_examples, batch_size=n_examples, seed=seed,
                                    device=device)
        inputs = module_inputs(model, x)
        modules = [m for m in model.modules() if isinstance(m, RobustModule)]
        weights = model.attention_weights().detach()
        label = run_label(source)
        while label in results:
            label += "'"
        blocks_sigma, module_sigma, bounds = [], [], []
        for i, (module, inp) in enumerate(zip(modules, inputs)):
            row_sigma = []
            per_example_bound = torch.zeros(inp.shape[0], device=inp.device, dtype=inp.dtype)
            for j, block in enumerate(module.blocks):
                sigma = jacobian_spectral_norm(block, inp, iters=iters, seed=seed + 1000 * i + j)
                per_example_bound += weights[i, j] * sigma
                row_sigma.append(float(sigma.mean()))
                rows.append([label, i + 1, module.block_names[j], f"{float(weights[i, j]):.6f}",
                             f"{float(sigma.mean()):.6g}", f"{float(sigma.max()):.6g}", len(sigma)])
            w_i = weights[i]
            sigma_module = jacobian_spectral_norm(lambda z, m=module, w=w_i: m(z, w), inp, iters=iters,
                                                  seed=seed + 1000 * i + 999)
            rows.append([label, i + 1, "module", "1.0", f"{float(sigma_module.mean()):.6g}",
                         f"{float(sigma_module.max()):.6g}", len(sigma_module)])
            rows.append([label, i + 1, "bound (sum w_j L_j)", "", f"{float(per_example_bound.mean()):.6g}",
                         f"{float(per_example_bound.max()):.6g}", len(per_example_bound)])
            blocks_sigma.append(row_sigma)
            module_sigma.append(float(sigma_module.mean()))
            bounds.append(float(per_example_bound.mean()))
        results[label] = {"blocks": blocks_sigma, "module": module_sigma, "bound": bounds,
                          "weights": weights.cpu().tolist(), "block_names": [m.block_names for m in modules]}
    csv_path = write_csv(Path(out_dir) / f"{name}.csv",
                         ["model", "module", "block", "weight", "lipschitz_mean", "lipschitz_max", "n_examples"], rows)

    figure = new_figure(5.5 * len(results), 3.8)
    for k, (label, res) in enumerate(results.items()):
        ax = figure.add_subplot(1, len(results), k + 1)
        positions = list(range(1, len(res["module"]) + 1))
        names = res["block_names"][0]
        consistent = all(n == names for n in res["block_names"])
        for j in range(len(names)):
            legend = block_label(names[j]) if consistent else f"slot {j + 1}"
            if consistent and names.count(names[j]) > 1:
                legend += f" #{j + 1}"
            ax.plot(positions, [row[j] for row in res["blocks"]], marker="o", markersize=3, label=legend)
        ax.plot(positions, res["module"], color="black", linewidth=2, label="module (weighted sum)")
        ax.plot(positions, res["bound"], color="black", linestyle="--", label="bound Σ w_j L_j (Lemma 3.2)")
        ax.set_yscale("log")
        ax.set_xticks(positions)
        ax.set_xlabel("robust module (input → output)")
        ax.set_ylabel("local Lipschitz estimate ‖J‖₂")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=7)
        ax.set_title(f"{label[:40]}: power iteration ({iters} it., {n_examples} images)", fontsize=9)
    png_path = save_figure(figure, Path(out_dir) / f"{name}.png")
    return AnalysisResult(png_path, csv_path, results)
