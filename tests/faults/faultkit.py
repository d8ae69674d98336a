"""Helpers for the fault tests, and a `dsnet` launcher that can SIGKILL itself inside a checkpoint write.

As a script, `python faultkit.py train ...` runs `dsnet.cli.main` (the same function the `dsnet` command runs).
With the environment variable `DSNET_TEST_KILL=<mode>:<file name>:<n>` it kills itself with SIGKILL during the
n-th write of that file by this process (1-based), so a test can put a kill exactly where a timer rarely lands:

- `torn`: half of the checkpoint's bytes are in the temporary file (flushed to disk), the rest never comes;
- `rename`: the temporary file is complete and synced, just before it is renamed into place;
- `after`: just after the rename (the write is complete, the next step never starts).

With `DSNET_TEST_PAUSE=<file name>:<n>:<marker>` it pauses in the n-th write of that file instead, until the test
creates the marker file: a second process can then meet the first one at a known point (the folder locks).

`rename` and `after` work for any file written through `os.replace` (checkpoints, `eval_state.json`). Nothing in
`src/` knows about this: the launcher wraps `save_checkpoint`, `torch.save` and `os.replace` in its own process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
KILL_ENV = "DSNET_TEST_KILL"
PAUSE_ENV = "DSNET_TEST_PAUSE"


if str(HERE.parent) not in sys.path:  # run as a script (the launcher below), tests/ is not on the path
    sys.path.insert(0, str(HERE.parent))

from dsnet_testing import tiny_recipe, write_cifar10_folder  # noqa: E402, F401 - re-exported for the fault tests


def small_cifar10(root: Path) -> Path:
    """A CIFAR-10 folder in the real format with 80 training and 16 test images (fast to train on)."""
    return write_cifar10_folder(root, per_batch=16, n_test=16)


@pytest.fixture
def fresh_cli_logging() -> Iterator[None]:
    """Lets `dsnet.cli.main` install its console handler on this test's stderr (an earlier test's handler would
    write to a closed capture stream, and logging would print a traceback about it)."""
    logger = logging.getLogger("dsnet")
    saved = list(logger.handlers)
    for handler in saved:
        logger.removeHandler(handler)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved:
        logger.addHandler(handler)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`dsnet <argv>` in this process: (exit status, stdout, stderr)."""
    from dsnet.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit status 1 and one `dsnet: error: ...` line, the last on stderr (log lines may come before it), no
    traceback, naming each fragment (case-insensitive). Returns the message."""
    lines = err.strip().splitlines()
    assert code == 1, f"exit status {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("dsnet: error: "), err
    assert sum(line.startswith("dsnet:") for line in lines) == 1, err
    message = lines[-1]
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return message


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes), to show that a failed command changed nothing.

    The folder's `.lock` is left out: it holds no data, only the PID of the last process that took the lock.
    """
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def assert_nothing_lost(before: dict[str, bytes], folder: Path, may_change: tuple[str, ...] = ()) -> None:
    """Every file of `before` is still there, unchanged; `train.log` and `metrics.jsonl` may only have grown (the
    failed attempt's log lines, and the row of an epoch whose checkpoint failed, which a resume redoes), and the
    files named in `may_change` may differ."""
    after = folder_snapshot(folder)
    for name, content in before.items():
        assert name in after, f"{name} was deleted"
        if name in may_change:
            continue
        if name in ("train.log", "metrics.jsonl"):
            assert after[name].startswith(content), f"{name} lost lines"
        else:
            assert after[name] == content, f"{name} was changed"


@contextlib.contextmanager
def tiny_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` bytes (a tmpfs) mounted at `folder`, so that a test meets a real full disk;
    the test is skipped, with the reason, where mounting is not allowed (it needs root or CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("a real full disk needs a tiny tmpfs, and this machine has no mount command")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"a real full disk needs a tiny tmpfs, and mounting one is not allowed here "
                    f"({done.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fills the file system under `folder` until `leave` bytes are free (at its block size); returns the filler."""
    filler = folder / "filler.bin"
    with open(filler, "ab") as handle:
        while shutil.disk_usage(folder).free > leave:
            chunk = max(min(shutil.disk_usage(folder).free - leave, 1 << 20), 1)
            try:
                handle.write(b"\0" * chunk)
                handle.flush()
            except OSError:
                break
    return filler


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `dsnet` child: one thread (bitwise-equal to the in-process runs) and no GPU."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop(KILL_ENV, None)
    env.pop(PAUSE_ENV, None)
    env.update(extra)
    return env


def launch(argv: list[str], stderr_path: Path, cwd: Path, **env: str) -> subprocess.Popen:
    """Starts `dsnet <argv>` (through this launcher) in a child process, its stderr to a file."""
    with open(stderr_path, "wb") as err:
        return subprocess.Popen([sys.executable, str(HERE / "faultkit.py"), *argv], cwd=cwd, env=subprocess_env(**env),
                                stdout=subprocess.DEVNULL, stderr=err)


def start_paused(argv: list, tmp_path: Path, target: str) -> tuple[subprocess.Popen, Path]:
    """Starts `dsnet <argv>` and waits until it pauses in its first write of `target` (holding its lock)."""
    marker = tmp_path / "go"
    process = launch(argv, tmp_path / "first.err", tmp_path, **{PAUSE_ENV: f"{target}:1:{marker}"})
    deadline = time.monotonic() + 180
    while not Path(f"{marker}.paused").exists():
        assert process.poll() is None, (tmp_path / "first.err").read_text()
        assert time.monotonic() < deadline, "the first process never reached its write"
        time.sleep(0.05)
    return process, marker


def run_and_kill(argv: list[str], cwd: Path, log: Path, *, started: Callable[[str], bool], what: str,
                 kill_after_s: float | None = None, timeout_s: float = 240.0, **env: str) -> int:
    """Runs `dsnet <argv>` in a child; with `kill_after_s`, SIGKILLs it that long after `started(stderr)` holds.

    Returns the child's exit status (-9 when it was killed). `what` names the awaited event in the failure.
    """
    process = launch(argv, log, cwd, **env)
    deadline = time.monotonic() + timeout_s
    try:
        if kill_after_s is not None:
            while process.poll() is None and not started(log.read_text(errors="replace")):
                assert time.monotonic() < deadline, f"the child never {what}"
                time.sleep(0.02)
            time.sleep(kill_after_s)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        return process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def one_epoch_recipe(**sections: dict) -> dict:
    """A tiny standard-training recipe of one epoch on `small_cifar10` data; sections merge over it."""
    base = tiny_recipe(data={"val_size": 16}, objective={"name": "standard"},
                       train={"epochs": 1, "batch_size": 16, "val_pgd_steps": 1})
    for key, value in sections.items():
        base[key] = {**base[key], **value}
    return base


def train_one_epoch(root: Path) -> dict[str, Path]:
    """Trains `one_epoch_recipe()` under `root`: {"data": the data folder, "run": the finished run folder}."""
    from dsnet.config import config_from_dict
    from dsnet.training.trainer import train

    data = small_cifar10(root / "data")
    train(config_from_dict(one_epoch_recipe()), data, root / "run")
    return {"data": data, "run": root / "run"}


def checkpoint_files(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("*.pt"))


def load_weights_only(path: Path) -> dict[str, Any]:
    """Loads a checkpoint the strict way a user (or `dsnet eval`) would: a torn file raises here."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


# --------------------------------------------------------------------------------------------------------------
# The self-killing launcher (runs in the child process only)


def _install_kill_hook(spec: str) -> None:
    mode, target, nth = spec.split(":")
    if mode not in ("torn", "rename", "after"):
        raise SystemExit(f"{KILL_ENV}: unknown mode {mode!r}")
    import dsnet.runtime.checkpoint as checkpoint
    import dsnet.training.trainer  # noqa: F401 - imported so that its name for save_checkpoint is patched too

    real_save_checkpoint, real_torch_save, real_replace = checkpoint.save_checkpoint, torch.save, os.replace
    state = {"writes": 0, "armed": False}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def save_checkpoint(payload: Any, path: Any) -> Path:
        if Path(path).name == target:
            state["writes"] += 1
            state["armed"] = state["writes"] == int(nth)
        try:
            return real_save_checkpoint(payload, path)
        finally:
            state["armed"] = False

    def torn_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not (state["armed"] and hasattr(f, "write")):
            return real_torch_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_torch_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        die()

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == target:  # every atomic write (checkpoints, eval_state.json) ends in os.replace
            state["writes"] += 1
            if state["writes"] == int(nth):
                if mode == "after":
                    real_replace(src, dst, *args, **kwargs)
                die()
        real_replace(src, dst, *args, **kwargs)

    if mode == "torn":
        torch.save = torn_save
        for name, module in list(sys.modules.items()):
            if name.startswith("dsnet") and getattr(module, "save_checkpoint", None) is real_save_checkpoint:
                module.save_checkpoint = save_checkpoint
    else:
        os.replace = replace


def _install_pause_hook(spec: str) -> None:
    """`<file name>:<n>:<marker>`: in the n-th atomic write of that file, just before the rename, create
    `<marker>.paused` and wait until `<marker>` exists. The process holds its folder's lock meanwhile."""
    target, nth, marker = spec.split(":", 2)
    real_replace = os.replace
    state = {"writes": 0}

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == target:
            state["writes"] += 1
            if state["writes"] == int(nth):
                Path(marker + ".pausing").write_text(str(os.getpid()))
                real_replace(marker + ".pausing", marker + ".paused")  # seen only once it is complete
                deadline = time.monotonic() + 300
                while not Path(marker).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _main() -> int:
    torch.set_num_threads(1)
    if os.environ.get(KILL_ENV):
        _install_kill_hook(os.environ[KILL_ENV])
    if os.environ.get(PAUSE_ENV):
        _install_pause_hook(os.environ[PAUSE_ENV])
    from dsnet.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
