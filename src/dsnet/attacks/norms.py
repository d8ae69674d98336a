"""The geometry of a threat model: how an attack starts, steps and projects in an L∞ or an L2 ball.

A `Norm` is the only place where the two balls differ, so the one ascent loop in `dsnet.attacks.core` serves
FGSM/FGM, PGD and the CW margin attack in both (and the training objectives with them):

- L∞ (Madry et al. 2018): start uniformly in the cube [x − ε, x + ε], step α·sign(∇), project by clipping each
  pixel to [x − ε, x + ε].
- L2 (the convention of RobustBench's L2 track and of Rony et al.'s and Madry's L2 PGD): start uniformly in the
  L2 ball (a Gaussian direction scaled to radius ε·U^(1/d), so the start is uniform in volume; in d = 3072
  dimensions that is almost always within 0.3 % of the sphere), step α·∇/‖∇‖₂ per example, project by
  rescaling δ to length ε when it is longer.

Both clip to the image box [0, 1] after projecting; clipping moves every pixel towards the clean one, so the
result stays inside the ball. Norms are computed per example over all pixels and channels, in pixel units.
L1 has a projection (onto the L1 ball, by Duchi et al.'s sort-based rule) for the minimum-norm attack
(`dsnet.attacks.minimum_norm`), but no step: the sparse L1 steps of APGD-L1 are not a one-line rule, so fixed-ε
first-order L1 attacks are left to AutoAttack. A radius may be one number or one per example ((B,) tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsnet.errors import ConfigError
from dsnet.registry import suggest

__all__ = ["Norm", "NORMS", "LINF", "L2", "L1", "DUAL_NORMS", "get_norm", "norm_names", "perturbation_size",
           "l1_ball_projection"]

_TINY = 1e-12


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped to broadcast against a (B, C, H, W) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def perturbation_size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """(B,) per-example size of `delta` in `norm` ("Linf", "L2" or "L1")."""
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    if norm == "L1":
        return flat.abs().sum(dim=1)
    raise ConfigError(f"unknown norm {norm!r}; {suggest(norm, ('Linf', 'L2', 'L1'))}")


@dataclass(frozen=True)
class Norm:
    """One ball: its name as RobustBench spells it ("Linf", "L2"), its symbol for reports, and its three rules."""

    name: str
    symbol: str

    def uniform_start(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """A point drawn uniformly from the ε-ball around `x`, clipped to [0, 1]."""
        if self.name == "Linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(2 * eps).sub_(eps)
            return (x + noise).clamp_(0.0, 1.0)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _view(direction.flatten(1).norm(dim=1).clamp_min(_TINY), x)
        dims = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype).pow(1.0 / dims) * eps
        return (x + direction * _view(radius, x)).clamp_(0.0, 1.0)

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """The ascent step of size `step_size` along `grad`: α·sign(∇) (L∞) or α·∇/‖∇‖₂ (L2).

        A NaN gradient gives a NaN step: sign(NaN) is 0 in torch, which would turn a broken loss into an attack that
        quietly never moves; a NaN iterate is caught by the robust-flags loop instead (`dsnet.attacks.metrics`).
        """
        if self.name == "Linf":
            return torch.where(torch.isnan(grad), grad, step_size * grad.sign())
        return grad * _view(step_size / grad.flatten(1).norm(dim=1).clamp_min(_TINY), grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """`x_adv` moved to the nearest point of the ε-ball around `x` (ε one number, or (B,) per example), then
        clipped to [0, 1]."""
        if self.name == "Linf":
            radius = _view(eps, x) if isinstance(eps, torch.Tensor) else eps
            return torch.minimum(torch.maximum(x_adv, x - radius), x + radius).clamp_(0.0, 1.0)
        delta = x_adv - x
        if self.name == "L1":
            return (x + l1_ball_projection(delta, eps)).clamp_(0.0, 1.0)
        length = delta.flatten(1).norm(dim=1)
        factor = torch.where(length > eps, eps / length.clamp_min(_TINY), torch.ones_like(length))
        return (x + delta * _view(factor, x)).clamp_(0.0, 1.0)

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """(B,) per-example size of `delta` in this norm."""
        return perturbation_size(delta, self.name)


def l1_ball_projection(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of each example of `delta` onto the L1 ball of radius `eps` (Duchi, Shalev-Shwartz,
    Singer & Chandra, ICML 2008): soft-threshold |δ| by the τ that makes its L1 norm ε; examples inside the ball are
    left as they are."""
    flat = delta.flatten(1)
    radius = eps if isinstance(eps, torch.Tensor) else torch.full((flat.shape[0],), float(eps), device=flat.device,
                                                                  dtype=flat.dtype)
    outside = flat.abs().sum(dim=1) > radius
    if not bool(outside.any()):
        return delta
    magnitude = flat[outside].abs()
    ordered = magnitude.sort(dim=1, descending=True).values
    ranks = torch.arange(1, ordered.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    thresholds = (ordered.cumsum(dim=1) - radius[outside].unsqueeze(1)) / ranks
    last = (ordered > thresholds).to(flat.dtype).mul(ranks).argmax(dim=1, keepdim=True)  # the largest such rank
    tau = thresholds.gather(1, last)
    projected = flat.clone()
    projected[outside] = (magnitude - tau).clamp_min(0.0).copysign(flat[outside])
    return projected.view_as(delta)


LINF = Norm("Linf", "L∞")
L2 = Norm("L2", "L2")
L1 = Norm("L1", "L1")
"""L1 projects (for the minimum-norm attack) but does not step or start: it is not in `NORMS`."""

DUAL_NORMS = {"Linf": "L1", "L2": "L2", "L1": "Linf"}
"""The dual of each norm: |⟨g, δ⟩| ≤ ‖g‖_dual·‖δ‖, so a linear model's boundary is |margin| / ‖∇margin‖_dual away."""

NORMS: dict[str, Norm] = {norm.name: norm for norm in (LINF, L2)}
"""The norms first-order attacks and training objectives can step in."""


def norm_names() -> tuple[str, ...]:
    """The names `get_norm` accepts."""
    return tuple(NORMS)


def get_norm(name: str | Norm, owner: str = "attack") -> Norm:
    """The `Norm` called `name` ("Linf" or "L2"; "linf", "l2" and "inf" are accepted too).

    Raises:
        ConfigError: for any other name, with the valid ones.
    """
    if isinstance(name, Norm):
        return name
    aliases = {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2"}
    key = aliases.get(str(name).lower(), str(name))
    if key not in NORMS:
        extra = " (L1 is evaluated through AutoAttack only)" if key.upper() == "L1" else ""
        raise ConfigError(f"{owner}: unknown norm {name!r}; {suggest(name, NORMS)}{extra}")
    return NORMS[key]
