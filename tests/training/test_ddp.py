"""DDP on CPU (gloo, two processes): `torchrun -m dsnet train` equals a one-process run with the same global batch.

What makes the two runs comparable: the loader gives rank r every 2nd image of the one-process permutation, so at
step s the union of the ranks' batches is the one-process batch; BatchNorm is synchronised over the global batch
(`train.sync_bn`); gradients are averaged. What the test removes because it would differ by design: random crops
and flips (seeded per rank and step), the attack's random start and noise (drawn per rank), and MBConv's
drop-connect (drawn per rank). Evaluation shards batches round-robin, each seeded by its global index.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from dsnet_testing import tiny_recipe, write_cifar10_folder

from dsnet.attacks import PGD
from dsnet.attacks.metrics import clean_flags
from dsnet.config import config_from_dict
from dsnet.data import ImageSplit
from dsnet.models import create_model
from dsnet.runtime.checkpoint import load_checkpoint
from dsnet.training.trainer import train
from dsnet.training.validation import evaluate_robustness

# Float32 sums in another order (two half batches, gloo's all-reduce) differ by ~1e-7 relative; BN's centring
# cancels most of some gradients, which amplifies that noise in their small remainder, and SGD with momentum
# (Adam, for the attention) carries it through 4 steps. Measured: 4e-4 (weights), 1e-3 (BN buffers), 1e-4
# (attention); without synchronised BN the same runs differ by 2.5e-2, 4.3e-2 and 4.5e-3.
WEIGHT_ATOL = 2e-3
BUFFER_ATOL = 4e-3
"""BN running statistics, with AWP on: its normalised direction about doubles DDP's float differences (measured
2.0e-3; weights 8.5e-4). Perturbing each rank by its own shard's gradient instead gives 1.4e-2 (weights 6.7e-3)."""
ATTENTION_ATOL = 1e-3


@pytest.fixture(autouse=True)
def _no_process_group_left_behind():
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 training images: 150 to train on, a 150-image validation split (3 evaluation batches of 64)."""
    return write_cifar10_folder(tmp_path_factory.mktemp("cifar10_300"), per_batch=60)


def _recipe() -> dict:
    """With AWP and a weight average: under DDP the proxy gradients are averaged, so both ranks apply the
    perturbation one process computes on the whole batch, and the replicas stay equal."""
    return tiny_recipe(
        model={"name": "dsnet_tiny", "kwargs": {"blocks": ["residual", "dense", "ada_rk"]}},  # no drop-connect
        data={"val_size": 150, "crop": False, "flip": False},
        objective={"start": "none", "noise_std": 0.0, "awp_gamma": 0.01},
        train={"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "selection": "last", "device": "cpu",
               "compile": False, "ema_decay": 0.9, "ema_warmup": 0.0},
    )


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dsnet", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(data_300: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe()))
    done = _torchrun(["train", "--config", str(recipe), "--data-dir", str(data_300), "--out-dir", "two"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one = train(config_from_dict(_recipe()), data_300, tmp_path / "one")

    # Same weights, attention weights and BN buffers as one process with the same global batch.
    for part in ("model", "ema"):
        a, b = (load_checkpoint(tmp_path / run / "last.pt")[part] for run in ("one", "two"))
        a, b = (a, b) if part == "model" else (a["model"], b["model"])
        assert a.keys() == b.keys()
        for key in a:
            if a[key].is_floating_point():
                atol = ATTENTION_ATOL if key == "attention" else BUFFER_ATOL if "running" in key else WEIGHT_ATOL
                assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (part, key,
                                                                           float((a[key] - b[key]).abs().max()))
            else:
                assert torch.equal(a[key], b[key]), (part, key)

    # The replicas agreed at every epoch end, and the sharded validation saw what one process saw.
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone wrote them
    assert all(r["replica_divergence"] == 0.0 for r in rows)
    for mine, theirs in zip(rows, one.history):  # within one of the 150 points: the weights agree to 1e-3, not
        for key in ("val_clean_acc", "val_pgd_acc", "val_pgd_acc_ema"):  # bitwise (exact sharding: the next test)
            assert abs(mine[key] - theirs[key]) <= 1 / 150 + 1e-9, key
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)

    # Rank 0 alone logged, printed and wrote files.
    assert done.stdout.count("done: 2 epochs") == 1
    assert done.stderr.count("epoch 1 |") == 1
    assert done.stderr.count("loaded cifar10 train") == 1, done.stderr  # rank 1 does not repeat rank 0's lines
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("epoch 1 |") == 1 and "2 process(es)" in log
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [".lock", ".dsnet-files.json", "config.yaml", "train.log", "metrics.jsonl", "last.pt", "selected.pt"])


@pytest.mark.slow
def test_a_model_whose_design_leaves_parameters_without_gradient_trains_under_ddp(data_300: Path,
                                                                                tmp_path: Path) -> None:
    """RobustResNet's first BN of a block without a projection shortcut feeds nothing (as in the reference, which
    needs DDP's find_unused_parameters): the trainer finds such parameters on the meta device and tells DDP, where
    otherwise the second step fails waiting for their gradients."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        model={"name": "rrn_tiny"}, data={"val_size": 150, "crop": False, "flip": False},
        train={"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 3, "selection": "last", "device": "cpu",
               "compile": False})))
    done = _torchrun(["train", "--config", str(recipe), "--data-dir", str(data_300), "--out-dir", "rrn"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 parameters get no gradient by design (e.g. blocks.0.layer.1.bn1.weight)" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "rrn" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["replica_divergence"] == 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _split() -> ImageSplit:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (150, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSplit(images, torch.randint(0, 10, (150,), generator=generator), 10)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dsnet_tiny")


class _CountingModel(torch.nn.Module):
    """Counts the images of its no-grad forward passes (accuracy on the clean and on the attacked batch)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            self.seen += x.shape[0]
        return self.model(x)


def _attack() -> PGD:
    return PGD(eps=0.031, step_size=0.031 / 4, steps=2, seed=3)


def _evaluate_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _CountingModel(_model())
        clean_flags(model, _split().images, _split().labels, batch_size=64)
        seen = model.seen  # the clean pass alone shows which batches this rank took
        result = evaluate_robustness(model, _split(), _attack(), batch_size=64)
        torch.save({"result": result, "seen": seen}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_evaluation_is_sharded_and_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_evaluate_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    single = evaluate_robustness(_model(), _split(), _attack(), batch_size=64)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["seen"] for r in ranks] == [64 + 22, 64]  # batches 0 and 2 on rank 0, batch 1 on rank 1
    for r in ranks:
        assert tuple(r["result"]) == single  # the same counts, not merely close
    assert single[1] <= single[0]
