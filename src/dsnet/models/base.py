"""The surface every dsnet model shares (timm's): `forward_features`, `forward_head`, `forward`.

A family implements `forward_features` ((B, 3, H, W) images in [0, 1] -> (B, num_features) pooled features) and
names its classifier in `head` (each family keeps the name of its reference checkpoints: `fc`, `linear`,
`classifier`), and gets the rest from here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

__all__ = ["ImageClassifier"]


class ImageClassifier(nn.Module):
    """Base of the model families: logits = head(forward_features(x)).

    Attributes:
        head: the attribute name of the final linear layer.
        num_classes: size of the output (set by the family's constructor).
        num_features: width of the pooled features (set by the family's constructor).
    """

    head: ClassVar[str] = "fc"
    num_classes: int
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to pooled (B, num_features) features."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Maps (B, num_features) features to (B, num_classes) logits."""
        return getattr(self, self.head)(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) images in [0, 1] to (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))
