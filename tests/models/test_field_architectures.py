"""The field's architectures: exact sizes, the published key layouts, and logits equal to the reference code's.

`data/published_layouts.json` holds, for small copies of each published definition (RobustBench's
`dm_wide_resnet.py`, `robustarch_wide_resnet.py`, `robust_resnet.py`, `robust_wide_resnet.py`, and the
robust-residual-network's `models/resnet.py`), the state-dict keys and shapes and the eval- and train-mode logits the
reference code computes with the weights `published_weights` draws from the key names. So these tests check our
families against the references without their code: same keys, same shapes, same function.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dsnet.errors import CheckpointError, ConfigError
from dsnet.evaluation import load_model_for_evaluation
from dsnet.models import BLOCKS, create_model, list_models, model_info
from dsnet.models.profile import count_parameters

LAYOUTS = json.loads((Path(__file__).parent / "data" / "published_layouts.json").read_text())["models"]
INPUT = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

FAMILIES = {"dm_wide_resnet", "ra_wide_resnet", "robust_resnet", "robust_wide_resnet"}
EXPECTED = {  # counts for 10 classes, computed from the public definitions
    "dm_wrn28_10": 36_479_194, "dm_wrn34_10": 46_160_474, "dm_wrn34_20": 184_531_674, "dm_wrn70_16": 266_796_506,
    "dm_wrn82_8": 79_125_466, "dm_wrn94_16": 365_915_610, "dm_wrn106_16": 415_475_162,
    "ra_wrn70_16": 267_240_802,
    "rrn_a1": 19_222_738, "rrn_a2": 39_033_982, "rrn_a3": 75_856_698, "rrn_a4": 147_262_458, "wrn_a4": 147_291_738,
    "wrn34_r": 68_116_698,
}
TINY = [n for n in list_models(include_tiny=True) if model_info(n).tiny and model_info(n).family in FAMILIES]


def published_weights(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Weights drawn from each key's name (crc32 seed): BN variances in [0.5, 1.5), means and biases ~ 0.1·N,
    other vectors ~ 1 + 0.1·N, matrices and kernels ~ N / sqrt(fan-in); counters 0."""
    weights = {}
    for key, shape in sorted(shapes.items()):
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            weights[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            weights[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("running_mean") or (len(shape) == 1 and key.endswith("bias")):
            weights[key] = torch.randn(shape, generator=generator) * 0.1
        elif len(shape) == 1:
            weights[key] = 1 + torch.randn(shape, generator=generator) * 0.1
        else:
            fan_in = torch.Size(shape[1:]).numel()
            weights[key] = torch.randn(shape, generator=generator) / fan_in ** 0.5
    return weights


CIFAR10_STATISTICS = {"mu": torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1),
                      "sigma": torch.tensor([0.2471, 0.2435, 0.2616]).view(3, 1, 1)}


def published_state_dict(entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What the published definition's `state_dict()` holds: `published_weights`, and RobustBench's WRN-A4 also its
    persistent CIFAR-10 `mu` and `sigma`."""
    weights = published_weights({k: v for k, v in entry["keys"].items() if k not in CIFAR10_STATISTICS})
    return {k: CIFAR10_STATISTICS[k] if k in CIFAR10_STATISTICS else weights[k] for k in entry["keys"]}


def _ours(entry: dict[str, Any]) -> torch.nn.Module:
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["kwargs"].items()}
    torch.manual_seed(0)
    return create_model(entry["name"], **kwargs)


def test_every_family_is_pinned() -> None:
    ours = {n for n in list_models() if model_info(n).family in FAMILIES}
    assert ours == set(EXPECTED)
    assert {model_info(n).family for n in TINY} == FAMILIES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name: str) -> None:
    assert model_info(name).expected_params == EXPECTED[name]
    with torch.device("meta"):
        assert count_parameters(create_model(name)) == (EXPECTED[name], EXPECTED[name])


@pytest.mark.parametrize("label", sorted(LAYOUTS))
def test_state_dict_keys_and_shapes_are_the_published_ones(label: str) -> None:
    entry = LAYOUTS[label]
    ours = {k: list(v.shape) for k, v in _ours(entry).state_dict().items()}
    published = {k: v for k, v in entry["keys"].items() if k not in CIFAR10_STATISTICS}  # RobustBench's WRN-A4 only
    assert ours == published
    assert list(ours) == list(published)  # the same order too, as the reference modules register them


@pytest.mark.parametrize("label", sorted(LAYOUTS))
def test_published_weights_give_the_reference_logits_in_eval_and_train_mode(label: str) -> None:
    entry = LAYOUTS[label]
    model = _ours(entry)
    model.load_state_dict({k: v for k, v in published_state_dict(entry).items() if k not in CIFAR10_STATISTICS})
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(INPUT), torch.tensor(entry["eval_logits"]), rtol=0, atol=2e-6)
        torch.testing.assert_close(model.train()(INPUT), torch.tensor(entry["train_logits"]), rtol=0, atol=2e-6)


WRAPPERS = {
    "bare": lambda sd: sd,
    "robustbench": lambda sd: {"state_dict": sd},
    "training script": lambda sd: {"epoch": 99, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}},
    "DataParallel": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "wrapped twice": lambda sd: {"net": {f"module.model.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("label", sorted(LAYOUTS))
def test_a_published_checkpoint_loads_strictly_whatever_it_is_wrapped_in(label: str, wrapper: str,
                                                                          tmp_path: Path) -> None:
    """Saved in the published layout (RobustBench's WRN-A4 with its `mu`/`sigma`), loaded through `dsnet eval`'s
    loader into a fresh model: the logits are the reference's."""
    entry = LAYOUTS[label]
    path = tmp_path / "published.pt"
    torch.save(WRAPPERS[wrapper](published_state_dict(entry)), path)
    loaded = load_model_for_evaluation(path, model=_ours(entry), dataset="cifar100" if "100" in label else "cifar10")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(INPUT), torch.tensor(entry["eval_logits"]), rtol=0, atol=2e-6)


def test_a_registered_tiny_model_loads_by_name_from_the_command_line(tmp_path: Path) -> None:
    """`dsnet eval --model NAME --checkpoint FILE`: the loader's path for a bare state dict of a registered model."""
    entry = LAYOUTS["RobustResNet"]
    path = tmp_path / "rrn.pt"
    torch.save({"model_state_dict": published_weights(entry["keys"])}, path)
    loaded = load_model_for_evaluation(path, model_name="rrn_tiny", dataset="cifar10")
    assert loaded.source["weights"] == "state dict ('model_state_dict')"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(INPUT), torch.tensor(entry["eval_logits"]), rtol=0, atol=2e-6)


def test_a_weight_average_beside_the_weights_is_chosen_as_for_our_checkpoints(tmp_path: Path) -> None:
    entry = LAYOUTS["DMWideResNet"]
    raw = published_weights(entry["keys"])
    average = {k: v * 0.5 if v.is_floating_point() and "running_var" not in k else v for k, v in raw.items()}
    path = tmp_path / "both.pt"
    torch.save({"model_state_dict": raw, "ema": {"state_dict": average}}, path)
    by_choice = {w: load_model_for_evaluation(path, model_name="dm_wrn_tiny", dataset="cifar10", weights=w)
                 for w in ("auto", "raw", "ema")}
    assert by_choice["auto"].weights_sha256 == by_choice["ema"].weights_sha256 != by_choice["raw"].weights_sha256
    assert by_choice["ema"].source["weights"] == "state dict ('ema' → 'state_dict')"
    with torch.no_grad():
        torch.testing.assert_close(by_choice["raw"].model(INPUT), torch.tensor(entry["eval_logits"]), rtol=0,
                                   atol=2e-6)


def test_normalisation_constants_that_differ_from_the_models_are_refused(tmp_path: Path) -> None:
    entry = LAYOUTS["WRN-A (RobustBench, with mu/sigma)"]
    weights = published_state_dict(entry)
    weights["mu"] = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    path = tmp_path / "other_mean.pt"
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match=r"normalises its input with mu = \[0.5, 0.5, 0.5\].*normalize"):
        load_model_for_evaluation(path, model=_ours(entry), dataset="cifar10")


def test_a_checkpoint_of_another_size_names_the_first_mismatch(tmp_path: Path) -> None:
    entry = LAYOUTS["RaWideResNet"]
    path = tmp_path / "ra.pt"
    torch.save({"state_dict": published_weights(entry["keys"])}, path)
    with pytest.raises(CheckpointError, match=r"init_conv.weight has shape \(16, 3, 3, 3\) there but \(24, 3, 3, 3\)"):
        load_model_for_evaluation(path, model_name="ra_wrn_tiny", model_kwargs={"stem_width": 24}, dataset="cifar10")
    with pytest.raises(ConfigError, match="'stem_widht' is not an argument of RaWideResNet; did you mean"):
        load_model_for_evaluation(path, model_name="ra_wrn_tiny", model_kwargs='{"stem_widht": 24}', dataset="cifar10")


def test_a_model_that_normalises_itself_refuses_a_second_normalisation(tmp_path: Path) -> None:
    entry = LAYOUTS["DMWideResNet"]
    path = tmp_path / "dm.pt"
    torch.save(published_weights(entry["keys"]), path)
    with pytest.raises(ConfigError, match="normalises its input itself.*drop --normalize"):
        load_model_for_evaluation(path, model_name="dm_wrn_tiny", dataset="cifar10",
                                  normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


def test_normalisation_follows_the_class_count_unless_given() -> None:
    """The CIFAR-100 checkpoints normalise with CIFAR-100's constants: `--dataset cifar100` builds them so."""
    assert torch.allclose(create_model("dm_wrn_tiny", num_classes=100).mean.flatten(),
                          torch.tensor([0.5071, 0.4865, 0.4409]))
    assert torch.allclose(create_model("dm_wrn_tiny").mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert create_model("dm_wrn_tiny", normalize="none").mean is None
    assert create_model("rrn_tiny").mean is None and create_model("wrn_r_tiny").mean is None
    with pytest.raises(ConfigError, match="normalize must be auto, cifar10, cifar100, none"):
        create_model("dm_wrn_tiny", normalize="imagenet")
    with pytest.raises(ConfigError, match="activation must be one of relu, silu, swish"):
        create_model("rrn_tiny", activation="gelu")


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_train(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    without = [n for n, p in model.named_parameters() if p.grad is None]
    # RobustResNet's first BN of a block without a projection shortcut feeds nothing (as in the reference).
    assert all(n.endswith(("bn1.weight", "bn1.bias")) for n in without) and (bool(without) == (name == "rrn_tiny"))


def test_dsnet_over_todays_blocks_trains() -> None:
    """The experiment the paper's method invites: DS-Net's attention over the field's blocks."""
    assert {"robust_residual", "dm_preact", "ra_block"} <= set(BLOCKS.names())
    torch.manual_seed(0)
    model = create_model("dsnet_tiny", blocks=("residual", "robust_residual", "ra_block", "dense")).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16) % 10
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]  # it fits a fixed batch (2.33 -> 0.97 here): every block is wired in
    blocks = model.stages[0].blocks
    assert [type(b.block).__name__ for b in blocks[1:3]] == ["RobustResBlock", "DMBlock"]
    assert blocks[2].block.se is not None and blocks[2].bn_out.momentum == 0.01
