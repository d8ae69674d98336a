"""DS-Net: Diverse-Structured Network (Du, Zhang, Han, Liu, Rong, Niu, Huang, Sugiyama; ICML 2021).

Paper: "Learning Diverse-Structured Networks for Adversarial Robustness", arXiv:2102.01886.
Authors' code: github.com/d12306/dsnet (read at 3b6059a; facts in `shared/reference/dsnet_reference.md`).

Layout: stem conv3x3 3→C0 (with bias), K robust modules at widths C0, k·C0, 2k·C0, a pre-activation
reduction block (stride 2) before module ⌊K/3⌋ and before module ⌊2K/3⌋ (0-based), global average pool,
linear. A robust module i holds N atomic blocks and outputs Σ_j w_ij · block_ij(x), where the attention
weights w_i = softmax(α_i) are one learnable row α_i per module: `model.attention` of shape (K, N).

What we changed from the authors' code, and why:
- `attention` is an `nn.Parameter` (softmax mode) or a buffer (fixed modes), so it is in `state_dict()` and
  checkpoints; the authors keep a bare tensor that is never saved. It is not in `network_parameters()`, so
  the trainer gives it to Adam and keeps it out of SGD's weight decay (`attention_parameters()`).
- Ada-RK computes F(x) once instead of twice for its output and gradient (the same numbers); its BN statistics
  are still updated as the authors' twice-evaluated F(x) updates them (x, x, x1), unless `bn_updates="once"`.
- The attention initialisation scale defaults to 1e-3, as in the authors' code; the paper's text (§4.4)
  says N(0, 1), which is `attention_scale=1.0`. The distributions take the authors' parameters (their lognormal
  is torch's default LogNormal(1, 2)); `attention_init_params="paper"` gives the text's (LogNormal(0, 1)). At
  scale 1e-3 every distribution starts within 0.002 of uniform weights except the authors' lognormal, whose
  largest weight starts about 0.09 from 1/N on DS-Net-4 (its heavy tail).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.models.atomic_blocks import BLOCKS, ReductionBlock, set_bn_updates
from dsnet.models.base import ImageClassifier
from dsnet.models.layers import conv3x3
from dsnet.models.registry import ModelInfo, register_model
from dsnet.registry import unknown_name

__all__ = [
    "DSNet",
    "RobustModule",
    "ATTENTION_MODES",
    "ATTENTION_INITS",
    "ATTENTION_INIT_PARAMS",
    "DEFAULT_BLOCKS",
    "init_attention",
    "load_attention",
    "pruned_config",
    "width_for_params",
]

DEFAULT_BLOCKS = ("residual", "mbconv", "dense", "ada_rk")
ATTENTION_MODES = ("softmax", "fixed", "same_block")
ATTENTION_INITS = ("normal", "uniform", "lognormal", "exponential", "geometric")
ATTENTION_INIT_PARAMS = ("authors", "paper")

_PAPER = "Du et al., Learning Diverse-Structured Networks for Adversarial Robustness, ICML 2021"


# Each distribution as the authors' code draws it (`model/ds_net.py`: torch.randn, torch.rand, and the in-place
# samplers with torch's defaults) and as the paper's text (§ on Fig. 5) states it. They differ for the
# lognormal only: the authors call `log_normal_()` with torch's defaults, LogNormal(μ = 1, σ = 2).
_ATTENTION_SAMPLERS = {
    "authors": {
        "normal": lambda t: t.normal_(0.0, 1.0),
        "uniform": lambda t: t.uniform_(0.0, 1.0),
        "lognormal": lambda t: t.log_normal_(1.0, 2.0),
        "exponential": lambda t: t.exponential_(1.0),
        "geometric": lambda t: t.geometric_(0.5),
    },
    "paper": {
        "normal": lambda t: t.normal_(0.0, 1.0),
        "uniform": lambda t: t.uniform_(0.0, 1.0),
        "lognormal": lambda t: t.log_normal_(0.0, 1.0),
        "exponential": lambda t: t.exponential_(1.0),
        "geometric": lambda t: t.geometric_(0.5),
    },
}


def init_attention(shape: tuple[int, int], kind: str = "normal", scale: float = 1e-3,
                   params: str = "authors") -> torch.Tensor:
    """Draws initial attention logits: `scale` times a sample of the named distribution.

    Args:
        shape: (K, N), modules by blocks.
        kind: "normal" N(0, 1), "uniform" U[0, 1), "lognormal" (authors: LogNormal(1, 2), torch's default;
            paper: LogNormal(0, 1)), "exponential" Exp(1), "geometric" Geometric(p=0.5) counting trials (1, 2, ...).
        scale: multiplies the sample; 1e-3 in the authors' code, 1 in the paper's text.
        params: "authors" (the default) or "paper": whose parameters the distributions take.
    """
    if params not in _ATTENTION_SAMPLERS:
        raise ConfigError(f"attention_init_params must be one of {', '.join(ATTENTION_INIT_PARAMS)}, got {params!r}")
    samplers = _ATTENTION_SAMPLERS[params]
    if kind not in samplers:
        raise unknown_name("attention_init", kind, ATTENTION_INITS, "or give a file")
    return scale * samplers[kind](torch.empty(shape))


def load_attention(source: str | Path | torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    """Reads given attention logits from a tensor, nested list, `.pt` file or a previous run's checkpoint.

    A `.pt` file may hold a tensor or a checkpoint/state dict; in the latter the entry named `attention`
    (at the top, or under `model`) is taken. A `.txt`/`.csv` file holds one module per line.
    """
    if isinstance(source, torch.Tensor):
        return source.detach().float().clone()
    if not isinstance(source, (str, Path)):
        return torch.tensor(source, dtype=torch.float32)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"attention file {path} does not exist; give a .pt checkpoint or a .txt matrix")
    if path.suffix in (".txt", ".csv"):
        rows = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
        return torch.tensor([[float(v) for v in row] for row in rows])
    from dsnet.runtime.checkpoint import load_tensors_file

    obj = load_tensors_file(path, what="attention file")
    if isinstance(obj, dict):
        obj = obj.get("model", obj)
        obj = obj.get("attention") if isinstance(obj, dict) else None
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"{path} holds no attention weights (no tensor named 'attention')")
    return obj.float().clone()


class RobustModule(nn.Module):
    """N atomic blocks of the same width whose outputs are summed with given weights."""

    def __init__(self, block_names: Sequence[str], channels: int) -> None:
        super().__init__()
        self.block_names = list(block_names)
        self.blocks = nn.ModuleList(BLOCKS.get(name)(channels) for name in self.block_names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = weights[0] * self.blocks[0](x)
        for w, block in zip(weights[1:], self.blocks[1:]):
            out = out + w * block(x)
        return out


class DSNet(ImageClassifier):
    """Diverse-Structured Network for 32x32 inputs.

    Args:
        num_classes: classifier size.
        width: C0, channels of the stem and the first stage (20 in the paper).
        width_factor: k; stages have C0, k·C0 and 2k·C0 channels (DS-Net-4: k=4, DS-Net-6: k=6).
        depth: K, the number of robust modules (15).
        blocks: atomic block names used in every module, or one list per module (pruned models).
        attention: "softmax" (learned, the paper), "fixed" (constant weights, Fig. 4a; given weights are
            renormalised, used for pruned models), "same_block" (N copies of `blocks[0]`, fixed 1/N, Fig. 4b).
        num_same_blocks: N for "same_block" mode (default: the number of default blocks, 4).
        attention_init: a distribution name from `ATTENTION_INITS`, or given logits (tensor, nested list, or a
            path accepted by `load_attention`).
        attention_scale: scale of a random initialisation (1e-3 as the authors; 1.0 as the paper's text).
        attention_init_params: "authors" (default) or "paper", whose parameters the named distributions take:
            they differ for the lognormal (authors LogNormal(1, 2), paper LogNormal(0, 1)).
        in_channels: input image channels.
        target_params: pick the width C0 whose parameter count (attention excluded) is closest to this number,
            instead of `width` (compares block spaces at equal size, Fig. 6 and Table 4).
        bn_updates: "authors" (default): BN running statistics updated as the authors' code updates them
            (Ada-RK's branch on x, x, x1; a reduction block's first BN twice); "once": every BN once per forward.
            Outputs and gradients are the same; the eval-mode model after training is not (`atomic_blocks`).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 20,
        width_factor: int = 4,
        depth: int = 15,
        blocks: Sequence[str] | Sequence[Sequence[str]] = DEFAULT_BLOCKS,
        attention: str = "softmax",
        num_same_blocks: int | None = None,
        attention_init: str | Path | torch.Tensor | Sequence[Sequence[float]] = "normal",
        attention_scale: float = 1e-3,
        attention_init_params: str = "authors",
        in_channels: int = 3,
        target_params: int | None = None,
        bn_updates: str = "authors",
    ) -> None:
        super().__init__()
        if target_params is not None:
            width = width_for_params(int(target_params), width_factor=width_factor, depth=depth, blocks=blocks,
                                     attention=attention, num_same_blocks=num_same_blocks, in_channels=in_channels)
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"unknown attention mode {attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        if width < 1 or width_factor < 1 or depth < 1:
            raise ConfigError(f"width, width_factor and depth must be >= 1, got {width}, {width_factor}, {depth}")
        per_module = self._block_table(blocks, depth, attention, num_same_blocks)
        for names in per_module:
            for name in names:
                BLOCKS.get(name)  # fail early, with suggestions, on an unknown block name
        self.num_classes = num_classes
        self.attention_mode = attention
        self.block_names = per_module
        self.reduction_points = (depth // 3, (2 * depth) // 3)

        self.stem = conv3x3(in_channels, width)
        stages: list[nn.Module] = []
        channels = width
        next_widths = [width * width_factor, 2 * width * width_factor]
        for i in range(depth):
            while next_widths and i == self.reduction_points[2 - len(next_widths)]:
                stages.append(ReductionBlock(channels, next_widths[0]))
                channels = next_widths.pop(0)
            stages.append(RobustModule(per_module[i], channels))
        for out_channels in next_widths:  # only for depth < 3 where a reduction point equals depth
            stages.append(ReductionBlock(channels, out_channels))
            channels = out_channels
        self.stages = nn.ModuleList(stages)
        set_bn_updates(self, bn_updates)
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

        shape = (depth, len(per_module[0]))
        if any(len(names) != shape[1] for names in per_module):
            raise ConfigError("every robust module needs the same number of blocks")
        if attention == "softmax":
            logits = self._initial_logits(attention_init, shape, attention_scale, attention_init_params)
            self.attention = nn.Parameter(logits)
        else:
            # Fixed weights: zeros give 1/N; given weights w are stored as log(w) so softmax renormalises them.
            given = attention_init if not isinstance(attention_init, str) or Path(attention_init).suffix else None
            logits = torch.zeros(shape) if given is None else self._initial_logits(given, shape, 1.0)
            self.register_buffer("attention", logits)

    @staticmethod
    def _block_table(
        blocks: Sequence[str] | Sequence[Sequence[str]], depth: int, attention: str, num_same: int | None
    ) -> list[list[str]]:
        if isinstance(blocks, str):
            blocks = [blocks]
        if len(blocks) and not isinstance(blocks[0], str):
            table = [list(names) for names in blocks]  # type: ignore[arg-type]
            if len(table) != depth:
                raise ConfigError(f"blocks lists {len(table)} modules but depth is {depth}")
            return table
        names = list(blocks)  # type: ignore[arg-type]
        if not names:
            raise ConfigError("blocks must name at least one atomic block")
        if attention == "same_block":
            names = [names[0]] * (num_same or len(DEFAULT_BLOCKS))
        return [list(names) for _ in range(depth)]

    @staticmethod
    def _initial_logits(source: object, shape: tuple[int, int], scale: float, params: str = "authors") -> torch.Tensor:
        if isinstance(source, str) and source in ATTENTION_INITS:
            return init_attention(shape, source, scale, params)
        if isinstance(source, str) and not Path(source).suffix and not Path(source).exists():
            raise unknown_name("attention_init", source, ATTENTION_INITS,
                               "or give a file: a .pt checkpoint or tensor, or a .txt matrix")
        given = load_attention(source)  # type: ignore[arg-type]
        if tuple(given.shape) != shape:
            raise ConfigError(f"given attention weights have shape {tuple(given.shape)}, the model needs {shape}")
        return given

    def attention_weights(self) -> torch.Tensor:
        """The normalised weights w = softmax(attention) per module, shape (K, N); rows sum to 1."""
        return torch.softmax(self.attention, dim=1)

    def attention_parameters(self) -> list[nn.Parameter]:
        """The trainable attention logits (empty in the fixed modes), for the trainer's Adam group."""
        return [self.attention] if isinstance(self.attention, nn.Parameter) else []

    def network_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter except the attention weights, for the trainer's SGD group."""
        return [p for name, p in self.named_parameters() if name != "attention"]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.attention_weights().to(x.dtype)
        out = self.stem(x)
        module_index = 0
        for stage in self.stages:
            if isinstance(stage, RobustModule):
                out = stage(out, weights[module_index])
                module_index += 1
            else:
                out = stage(out)
        return self.pool(out).flatten(1)



def pruned_config(model: DSNet, keep: int) -> dict[str, object]:
    """Constructor arguments for a DS-Net that keeps the `keep` highest-weighted blocks of each module.

    The kept weights are renormalised and fixed (Table 4 of the paper: prune, then retrain with weights
    fixed). Pass the result to `DSNet(**cfg)` together with the original width arguments.
    """
    weights = model.attention_weights().detach().cpu()
    if not 1 <= keep <= weights.shape[1]:
        raise ConfigError(f"keep must be between 1 and {weights.shape[1]}, got {keep}")
    top = weights.topk(keep, dim=1)
    blocks = [[model.block_names[i][j] for j in row.tolist()] for i, row in enumerate(top.indices)]
    kept = top.values / top.values.sum(1, keepdim=True)
    return {"blocks": blocks, "attention": "fixed", "attention_init": kept.log()}


def width_for_params(target: int, search: range = range(4, 129), **kwargs: object) -> int:
    """The initial width C0 whose DS-Net parameter count is closest to `target` (ties: the smaller width).

    Used to compare block spaces at equal size (Fig. 6). The count grows with the width, so a bisection finds
    the first width at or above the target in a handful of builds, on the meta device (no memory).
    """
    from dsnet.models.profile import count_parameters

    def count(width: int) -> int:
        with torch.device("meta"):
            return count_parameters(DSNet(width=width, **kwargs))[0]  # type: ignore[arg-type]

    widths = list(search)
    low, high = 0, len(widths) - 1
    while low < high:  # the first width whose count reaches the target (or the last one)
        middle = (low + high) // 2
        if count(widths[middle]) >= target:
            high = middle
        else:
            low = middle + 1
    candidates = [widths[i] for i in (low - 1, low) if 0 <= i < len(widths)]
    return min(candidates, key=lambda width: (abs(count(width) - target), width))


register_model("dsnet4", DSNet, ModelInfo(family="dsnet", paper=_PAPER, expected_params=20_780_245,
                                           note="k=4, C0=20, K=15", label="DS-Net-4-softmax"),
               width=20, width_factor=4, depth=15)
register_model("dsnet6", DSNet, ModelInfo(family="dsnet", paper=_PAPER, expected_params=46_353_435,
                                           note="k=6, C0=20, K=15", label="DS-Net-6-softmax"),
               width=20, width_factor=6, depth=15)
register_model("dsnet_small", DSNet, ModelInfo(family="dsnet", paper=_PAPER, note="quickstart size: k=2, C0=16, K=3"),
               width=16, width_factor=2, depth=3)
register_model("dsnet_tiny", DSNet, ModelInfo(family="dsnet", paper=_PAPER, note="tests: k=2, C0=4, K=3", tiny=True),
               width=4, width_factor=2, depth=3)
