"""`dsnet reproduce --launcher slurm` and `--status`: jobs through submitit.

The end-to-end test runs real jobs with submitit's local executor (the hidden launcher `submitit-local`): processes
on this machine that run the same job function as SLURM jobs. The SLURM path runs against fake `sbatch`, `srun` and
`sacct` scripts, which record the job scripts submitit writes and report the job states the test sets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsnet.cli import main
from dsnet.experiments import cluster
from dsnet.experiments.cluster import ClusterOptions, parse_mem, parse_time, submit_grid
from dsnet.experiments.layout import cell_dir
from dsnet.experiments.runner import plan_cells
from dsnet.experiments.status import cell_statuses

# Figure 5 reduced to one parent and the cell derived from it (its attention starts from the parent's learned one),
# with everything that keeps a cell at a few seconds on one CPU thread.
TINY = ["data.download=false", "data.val_size=32", "train.batch_size=32", "train.max_steps_per_epoch=2",
        "train.tensorboard=false", "train.progress=false", "objective.steps=1", "train.device=cpu"]
GRID = dict(scale="mini", seeds=[0], datasets=["cifar10"], models=["dsnet4-init-learned"], epochs=1, n_examples=16,
            overrides=TINY)
PARENT, CHILD = "cifar10-at-dsnet4-init-normal-seed0", "cifar10-at-dsnet4-init-learned-seed0"
ARGV = ["reproduce", "fig5", "--scale", "mini", "--seeds", "0", "--datasets", "cifar10", "--models",
        "dsnet4-init-learned", "--epochs", "1", "--n-examples", "16", *(a for o in TINY for a in ("--set", o))]


@pytest.fixture(autouse=True)
def _quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("dsnet"), "handlers", [])  # main() adds a handler on captured stderr


def _wait(submission: cluster.Submission) -> dict[str, list]:
    """Every task's result per run id; raises with the job's traceback if a task failed."""
    return {run_id: job.results() for run_id, job in submission.jobs.items()}


@pytest.mark.slow
def test_local_jobs_run_the_grid_end_to_end(cifar10_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Submit, resubmit while running (nothing), wait, submit the derived cell as a 2-task DDP job, wait, status."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = ClusterOptions("submitit-local", gpus_per_job=0, timeout_min=5)  # a stray job ends within minutes
    _, first = submit_grid("fig5", out_dir=tmp_path, data_dir=cifar10_dir, options=one, **GRID)
    assert list(first.submitted) == [PARENT]  # the local executor has no dependencies: the child waits
    assert "to finish training; run this command again" in first.waiting[CHILD]
    record = json.loads((cell_dir(tmp_path, PARENT) / "job.json").read_text())
    assert record["job_id"] == first.submitted[PARENT].job_id and record["launcher"] == "submitit-local"

    _, again = submit_grid("fig5", out_dir=tmp_path, data_dir=cifar10_dir, options=one, **GRID)
    assert again.submitted == {} and again.queued[PARENT][1].state == "running"  # not submitted twice
    _wait(first)

    ddp = ClusterOptions("submitit-local", gpus_per_job=0, tasks_per_job=2, timeout_min=5)
    _, second = submit_grid("fig5", out_dir=tmp_path, data_dir=cifar10_dir, options=ddp, **GRID)
    assert list(second.submitted) == [CHILD] and second.done == [PARENT]
    child = second.submitted[CHILD]
    results = _wait(second)[CHILD]
    # Both tasks succeeded with the same accuracies: as one DDP run (two separate runs of the cell could not both
    # have held its lock), rank 0 writing, rank 1 reading the report after it.
    assert child.tasks == 2 and len(results) == 2 and results[0] == results[1] and "pgd" in results[0]
    for run_id in (PARENT, CHILD):
        assert list((cell_dir(tmp_path, run_id) / "eval").glob("*/report.json")), run_id

    assert main([*ARGV, "--out-dir", str(tmp_path), "--status"]) == 0  # no --data-dir needed
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"fig5: 2 cells under {tmp_path / 'runs'}" and out[-1] == "2 cells: 2 done"
    rows = {line.split()[2]: line.split()[:2] for line in out[2:-1]}
    assert rows == {PARENT: ["done", record["job_id"]], CHILD: ["done", child.job_id]}

    assert main([*ARGV, "--out-dir", str(tmp_path), "--data-dir", str(cifar10_dir),
                 "--launcher", "submitit-local"]) == 0
    assert capsys.readouterr().out.strip() == "fig5: all 2 cells are done; the same command with --aggregate-only " \
                                              "writes the tables"


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch numbers the jobs from 101; sacct reports `<state dir>/<job id>` (default RUNNING)."""
    bin_dir, states = tmp_path / "bin", tmp_path / "states"
    bin_dir.mkdir()
    states.mkdir()
    scripts = {
        "sbatch": 'n=$(( $(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_SLURM/counter"\n'
                  'echo "Submitted batch job $n"\n',
        "srun": "exit 0\n",
        "sacct": 'echo "JobID|State|NodeList"\nwhile [ $# -gt 0 ]; do\n  if [ "$1" = "-j" ]; then\n'
                 '    echo "$2|$(cat "$FAKE_SLURM/$2" 2>/dev/null || echo RUNNING)|node1"; shift\n'
                 '  fi\n  shift\ndone\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(states))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return states


def test_slurm_jobs_depend_on_their_parent_and_are_not_submitted_twice(fake_slurm: Path, cifar10_dir: Path,
                                                                        tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    submit = [*ARGV, "--out-dir", str(out), "--data-dir", str(cifar10_dir), "--launcher", "slurm", "--partition",
              "gpu", "--time", "1:30:00", "--mem", "32G", "--cpus-per-job", "8", "--slurm-arg", "account=proj"]
    assert main(submit) == 0
    text = capsys.readouterr().out
    assert f"[submitted] {PARENT}: job 101\n[submitted] {CHILD}: job 102 (afterok:101)\n" in text
    script = (out / "slurm" / "102_submission.sh").read_text()
    for line in ("--dependency=afterok:101", "--kill-on-invalid-dep=yes", "--partition=gpu", "--time=90",
                 "--mem=32GB", "--cpus-per-task=8", "--gpus-per-node=1", "--ntasks-per-node=1", "--account=proj",
                 f"--job-name=dsnet-{CHILD}"):
        assert f"#SBATCH {line}\n" in script, line
    record = json.loads((cell_dir(out, CHILD) / "job.json").read_text())
    assert record["job_id"] == "102" and record["dependency"] == "afterok:101" and record["cluster"] == "slurm"
    assert record["stdout"] == str((out / "slurm" / "102_0_log.out").resolve())

    (fake_slurm / "102").write_text("PENDING")
    assert main(submit) == 0  # both jobs are queued: nothing is submitted again
    assert "0 submitted, 2 already queued" in capsys.readouterr().out
    assert not (out / "slurm" / "103_submission.sh").exists()

    assert main([*ARGV, "--out-dir", str(out), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["running", "101", PARENT]
    assert lines[3].split()[:3] == ["pending", "102", CHILD] and "afterok:101" in lines[3]
    assert lines[-1] == "2 cells: 1 running, 1 pending"

    (fake_slurm / "102").write_text("CANCELLED by 0")  # e.g. by hand: the next submission replaces it
    assert main(submit) == 0
    assert f"[submitted] {CHILD}: job 103 (afterok:101)" in capsys.readouterr().out
    assert json.loads((cell_dir(out, CHILD) / "job.json").read_text())["job_id"] == "103"


def test_slurm_launcher_without_sbatch_or_submitit_says_what_to_do(cifar10_dir: Path, tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    argv = [*ARGV, "--out-dir", str(tmp_path / "out"), "--data-dir", str(cifar10_dir), "--launcher", "slurm"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dsnet: error: --launcher slurm needs SLURM's sbatch and srun, which this machine does not have on "
                   "PATH; submit from a login node of the cluster, or run here with --launcher local"]
    assert not list(tmp_path.rglob("job.json"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().endswith("pip install 'dsnet[cluster]'")


def test_status_reads_partial_runs_and_jobs_that_died(tmp_path: Path) -> None:
    from dsnet.experiments.grids import build_grid, with_scale

    cells = build_grid("fig5", scale=with_scale("mini", epochs=2), seeds=[0], datasets=["cifar10"],
                       models=["dsnet4-init-learned"])
    parent, child = (cell_dir(tmp_path, c) for c in cells)
    (parent / "train").mkdir(parents=True)
    (parent / "train" / "last.pt").write_bytes(b"")
    (parent / "train" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = cluster.JobRecord(CHILD, str(dead.pid), "submitit-local", "local", str(tmp_path / "slurm"), "now",
                               stdout="child.out")
    cluster._write_job_record(child, record)
    rows = cell_statuses(plan_cells(cells, tmp_path), tmp_path)
    assert [(r.state, r.job, r.detail) for r in rows] == [
        ("partial", "-", "epoch 1/2"),
        ("failed", str(dead.pid), f"ended without a result; see child.out; after {PARENT}")]


def test_options_parse_slurm_sizes_and_the_job_requeues_itself() -> None:
    assert [parse_time(t) for t in ("90", "24:00:00", "1-02:30:00", "0:00:30")] == [90, 1440, 1590, 1]
    assert [parse_mem(m) for m in ("64G", "64GB", "512M", "2", "1T")] == [64, 64, 0.5, 2, 1024]
    for bad in ("1h", "0", "12:00"):
        with pytest.raises(Exception, match="--time"):
            parse_time(bad)
    with pytest.raises(Exception, match="--mem"):
        parse_mem("lots")
    resubmitted = cluster.CellJob().checkpoint("cell", "data")  # submitit's requeue at the time limit
    assert isinstance(resubmitted.function, cluster.CellJob) and resubmitted.args == ("cell", "data")
