"""Adversarial weight perturbation (AWP; Wu, Xia & Wang, NeurIPS 2020, reference code csdongxian/AWP).

After the adversarial examples of a batch are made, AWP moves the weights a little way up the training loss,
takes the optimiser step from there, and moves them back:

    v_l = ‖w_l‖ · g_l / ‖g_l‖        for every weight tensor l with more than one dimension (conv and linear
                                        weights; biases, BN affine parameters and DS-Net's attention stay put)
    w  <- w + γ·v ; loss(w + γ·v).backward() ; optimiser step ; w <- w − γ·v

where g_l is the gradient of the objective's own outer loss (AT: CE on the adversarial batch; TRADES:
CE(f(x)) + β·KL(p(x) ‖ p(x'))) with respect to w_l, computed on a proxy copy of the model in train mode, so that
the model's BN running statistics see only the real step. The reference takes one SGD step on the proxy (lr
0.01 for AT) and normalises the difference, ‖w_l‖ / (‖Δ_l‖ + 10⁻²⁰) · Δ_l with Δ_l = lr · g_l: the same vector,
since the normalisation cancels the learning rate. Here Δ_l = lr · g_l is formed from the gradient directly: the
reference's float32 difference (w + lr·g) − w keeps only two or three digits of lr·g (tests compare with the
reference computed in float64).

Under DDP the proxy gradients are averaged over the processes before the normalisation: every rank then applies
the same perturbation, the one a single process computes on the whole batch (the reference's DataParallel).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["AWP_EPS", "AWP_PROXY_LR", "perturbed_weights", "weight_perturbation", "apply_weight_perturbation",
           "perturb_for_step", "innermost_module"]

AWP_EPS = 1e-20
"""The reference's guard against a zero difference."""

AWP_PROXY_LR = 0.01
"""The learning rate of the reference's proxy SGD step (AT_AWP); it only matters next to `AWP_EPS`."""

_PROXIES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def innermost_module(model: nn.Module) -> nn.Module:
    """The module under the wrappers that name it `.module` (DDP, DataParallel, dsnet's `EagerFallback`): the one
    owning the weights."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def perturbed_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The tensors AWP perturbs: parameters whose name contains "weight" and that have more than one dimension."""
    return [(name, p) for name, p in model.named_parameters() if "weight" in name and p.dim() > 1]


def _proxy_of(model: nn.Module) -> nn.Module:
    """A copy of `model` that holds its weights and buffers for one loss evaluation (made once, reloaded each time)."""
    proxy = _PROXIES.get(model)
    if proxy is None:
        proxy = copy.deepcopy(model)
        proxy.requires_grad_(True)
        _PROXIES[model] = proxy
    with torch.no_grad():
        for target, source in zip(proxy.state_dict().values(), model.state_dict().values()):
            target.copy_(source)
    return proxy


def weight_perturbation(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor]:
    """v_l = ‖w_l‖ · g_l / ‖g_l‖ per perturbed weight (see the module docstring), g = ∇_w loss_of(proxy).

    Args:
        model: the model being trained (possibly DDP- or fallback-wrapped); it is not changed.
        loss_of: maps a module in train mode to the scalar loss to increase.

    Returns:
        parameter name -> v_l, detached, shaped like the weight.
    """
    from dsnet.runtime.distributed import all_reduce_mean

    base = innermost_module(model)
    proxy = _proxy_of(base)
    proxy.train()
    chosen = perturbed_weights(proxy)
    if not chosen:
        return {}
    names = [name for name, _ in chosen]
    weights = [w for _, w in chosen]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_of(proxy), weights, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g.detach() for w, g in zip(weights, grads)]
    all_reduce_mean(grads)
    current = dict(base.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, grad in zip(names, grads):
        w = current[name].detach()
        step = AWP_PROXY_LR * grad
        out[name] = (w.norm() / (step.norm() + AWP_EPS)) * step
    return out


def apply_weight_perturbation(model: nn.Module, perturbation: dict[str, torch.Tensor], coeff: float) -> None:
    """w_l <- w_l + coeff · v_l for every perturbed weight, in place."""
    params = dict(innermost_module(model).named_parameters())
    with torch.no_grad():
        for name, v in perturbation.items():
            params[name].add_(v, alpha=coeff)


def perturb_for_step(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], gamma: float) -> Callable[[], Any]:
    """Perturbs `model` by γ·v now and returns the function that takes the perturbation back after the step."""
    perturbation = weight_perturbation(model, loss_of)
    apply_weight_perturbation(model, perturbation, gamma)
    return lambda: apply_weight_perturbation(model, perturbation, -gamma)
