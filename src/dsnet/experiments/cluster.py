"""`dsnet reproduce --launcher slurm`: every unfinished cell of a grid becomes one cluster job, through submitit.

A job runs `CellJob` on its cell folder, which calls `dsnet.experiments.runner.run_cell`, the function the local
runner and its worker processes run: the job takes the cell's folder lock, returns at once for a finished cell,
resumes from `train/last.pt`, and evaluates. The submission follows the local runner's rules:

- a finished cell (its evaluation report exists) is not submitted;
- a cell whose recorded job (`<cell>/job.json`) is pending or running, or whose state the scheduler cannot tell
  (yet), is not submitted again; a failed, cancelled or finished job is replaced by a new one;
- a derived cell whose parent has not finished training is submitted with `--dependency=afterok:<parent's job>`
  when the parent has a SLURM job (with `--kill-on-invalid-dep=yes`: if the parent fails, SLURM cancels the cell
  rather than leaving it pending forever). Without one (the parent's job is not SLURM's, or the parent has no job
  queued) the cell is left for a later `dsnet reproduce` once its parent has trained.

submitit keeps its job scripts, logs (`<job id>_0_log.out`, `<job id>_0_log.err`) and results in `<out-dir>/slurm/`
(`layout.jobs_dir`). A job that reaches its time limit is requeued by submitit (up to 3 times) and resumes from
`last.pt`. With `--gpus-per-job N > 1` a job has N tasks on one node, one per GPU: each task exports torch's
distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, from
`submitit.helpers.TorchDistributedEnvironment`), which `dsnet.runtime.setup_distributed` reads, so `run_cell` runs
the cell with DDP as under torchrun.

submitit is imported only when a job is submitted or its state is read (`pip install 'dsnet[cluster]'`). The hidden
launcher `submitit-local` runs the same jobs as processes on this machine (submitit's LocalExecutor): for the tests,
and to try a grid without a cluster; it has no job dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsnet.errors import ConfigError, DsnetError
from dsnet.experiments.layout import JOB_FILE, REPRODUCE_WRITER, jobs_dir
from dsnet.runtime.ownership import write_owned
from dsnet.runtime.lock import FolderLock

if TYPE_CHECKING:
    from dsnet.experiments.runner import CellPlan, ReproduceResult

__all__ = [
    "LAUNCHERS", "ACTIVE_STATES", "ClusterOptions", "JobRecord", "JobState", "Submission", "CellJob",
    "add_cluster_arguments", "cluster_options", "parse_time", "parse_mem", "make_executor", "submit_cells",
    "submit_grid", "read_job_record", "job_states", "describe_submission",
]

logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm", "submitit-local")
"""local: this process or `--devices` workers (no submitit); slurm: one SLURM job per cell; submitit-local (hidden):
the same jobs as processes on this machine."""

ACTIVE_STATES = ("pending", "running", "unknown")
"""Job states that block a new submission of the cell ("unknown": the scheduler does not list the job (yet))."""

INSTALL_HINT = "pip install 'dsnet[cluster]'"


# ----------------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class ClusterOptions:
    """How the jobs are submitted.

    Attributes:
        launcher: "slurm" or "submitit-local".
        partition: SLURM partition (default: the cluster's).
        gpus_per_job: GPUs of each job (one node); 0 for CPU-only jobs.
        cpus_per_job: CPU cores of each job, split over its tasks (default: the cluster's).
        mem_gb: memory of each job in GB (default: the cluster's).
        timeout_min: time limit of each job in minutes.
        slurm_args: further sbatch options (`account`, `qos`, `constraint`, ...); value True for a bare flag.
        tasks_per_job: processes per job (default: one per GPU, at least one); more than one runs DDP.
    """

    launcher: str = "slurm"
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    slurm_args: Mapping[str, Any] = field(default_factory=dict)
    tasks_per_job: int | None = None

    def __post_init__(self) -> None:
        from dsnet.validate import Problems

        if self.launcher not in LAUNCHERS[1:]:
            raise ConfigError(f"cluster launcher must be slurm or submitit-local, got {self.launcher!r}")
        problems = Problems()
        problems.integer("--gpus-per-job", self.gpus_per_job, minimum=0)
        if self.tasks_per_job is not None:
            problems.integer("tasks per job", self.tasks_per_job, minimum=1)
        if self.cpus_per_job is not None and problems.integer("--cpus-per-job", self.cpus_per_job, minimum=1) \
                and not problems and self.cpus_per_job < self.tasks:
            problems.add(f"--cpus-per-job {self.cpus_per_job} gives less than one core to each of the job's "
                         f"{self.tasks} processes (one per GPU); ask for at least {self.tasks}")
        if self.mem_gb is not None:
            problems.number("--mem", self.mem_gb, strict=True)
        problems.integer("--time (minutes)", self.timeout_min, minimum=1)
        problems.raise_if_any()

    @property
    def cluster(self) -> str:
        """submitit's name of the executor: "slurm" or "local"."""
        return "slurm" if self.launcher == "slurm" else "local"

    @property
    def tasks(self) -> int:
        return self.tasks_per_job or max(1, self.gpus_per_job)


def parse_time(text: str) -> int:
    """A SLURM time limit in whole minutes: "90" (minutes), "HH:MM:SS" or "D-HH:MM:SS"."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", text.strip())
    if text.strip().isdigit():
        minutes = int(text)
    elif match:
        days, hours, mins, secs = (int(g or 0) for g in match.groups())
        minutes = math.ceil(((days * 24 + hours) * 60 + mins) + secs / 60)
    else:
        raise argparse.ArgumentTypeError(f"--time must be minutes, HH:MM:SS or D-HH:MM:SS, got {text!r}")
    if minutes < 1:
        raise argparse.ArgumentTypeError(f"--time must be at least one minute, got {text!r}")
    return minutes


def parse_mem(text: str) -> float:
    """Memory in GB: "64G", "64GB", "500M", "1T", or a number of GB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", text.strip().upper())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"--mem must be a size such as 64G or 500M, got {text!r}")
    return float(match.group(1)) * {"M": 1 / 1024, "G": 1, "": 1, "T": 1024}[match.group(2)]


def _slurm_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise argparse.ArgumentTypeError(f"--slurm-arg must be KEY=VALUE or KEY, got {text!r}")
    return key, (value if sep else True)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--launcher` and the options of the jobs it submits."""
    group = parser.add_argument_group("cluster jobs (--launcher slurm; needs pip install 'dsnet[cluster]')")
    group.add_argument("--launcher", choices=LAUNCHERS, default="local", metavar="{local,slurm}",
                       help="local: run here (one cell at a time, or --devices workers); slurm: submit every "
                            "unfinished cell as one SLURM job through submitit, logs in OUT_DIR/slurm (default: local)")
    group.add_argument("--partition", default=None, help="SLURM partition of the jobs")
    group.add_argument("--gpus-per-job", type=int, default=1, metavar="N",
                       help="GPUs of each job, on one node; more than 1 trains the cell with DDP (default: 1)")
    group.add_argument("--cpus-per-job", type=int, default=None, metavar="N", help="CPU cores of each job")
    group.add_argument("--mem", type=parse_mem, default=None, metavar="SIZE", help="memory of each job, e.g. 64G")
    group.add_argument("--time", type=parse_time, default=parse_time("24:00:00"), metavar="LIMIT",
                       help="time limit of each job: minutes, HH:MM:SS or D-HH:MM:SS (default: 24:00:00; a job "
                            "that reaches it is requeued and resumes)")
    group.add_argument("--slurm-arg", dest="slurm_args", type=_slurm_arg, action="append", default=[],
                       metavar="KEY=VALUE", help="another sbatch option, e.g. --slurm-arg account=proj "
                                                 "--slurm-arg qos=high (repeatable)")


def cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """The options of `add_cluster_arguments`, or None for `--launcher local`."""
    if args.launcher == "local":
        return None
    return ClusterOptions(launcher=args.launcher, partition=args.partition, gpus_per_job=args.gpus_per_job,
                          cpus_per_job=args.cpus_per_job, mem_gb=args.mem, timeout_min=args.time,
                          slurm_args=dict(args.slurm_args))


# ------------------------------------------------------------------------------------------- submitit

def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"cluster jobs need submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


def make_executor(out_dir: str | Path, options: ClusterOptions) -> Any:
    """A submitit executor writing into `<out_dir>/slurm`, with the options' resources.

    Raises:
        ConfigError: submitit is missing, or (slurm) sbatch/srun are not on PATH.
    """
    submitit = _submitit()
    if options.cluster == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"--launcher slurm needs SLURM's {' and '.join(missing)}, which this machine does not "
                              "have on PATH; submit from a login node of the cluster, or run here with --launcher "
                              "local")
    executor = submitit.AutoExecutor(folder=jobs_dir(out_dir), cluster=options.cluster)
    cpus = None if options.cpus_per_job is None else options.cpus_per_job // options.tasks
    parameters = {"timeout_min": options.timeout_min, "gpus_per_node": options.gpus_per_job, "nodes": 1,
                  "tasks_per_node": options.tasks, "cpus_per_task": cpus, "mem_gb": options.mem_gb,
                  "slurm_partition": options.partition}
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor


class CellJob:
    """What each job runs: `run_cell(cell_dir, data_dir)`, as one process or as one of the job's DDP tasks.

    submitit calls `checkpoint` when the job reaches its time limit, and requeues the same call: the cell resumes
    from its `train/last.pt`.
    """

    def __call__(self, cell_dir: str, data_dir: str) -> dict[str, float]:
        from dsnet.experiments.runner import run_cell, worker_logging

        _export_distributed_environment()
        worker_logging()
        return run_cell(cell_dir, data_dir)

    def checkpoint(self, cell_dir: str, data_dir: str) -> Any:
        return _submitit().helpers.DelayedSubmission(self, cell_dir, data_dir)


def _export_distributed_environment() -> None:
    """In a job with several tasks: the variables of torch's env:// rendezvous, for `setup_distributed`. Every task
    keeps all the job's GPUs visible: `setup_distributed` puts rank r on cuda:LOCAL_RANK."""
    submitit = _submitit()
    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if job.num_nodes == 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"  # one node: no need for its host name to resolve


# -------------------------------------------------------------------------------------------- records

@dataclass(frozen=True)
class JobRecord:
    """A submitted job, as `<cell>/job.json` keeps it."""

    run_id: str
    job_id: str
    launcher: str
    cluster: str
    folder: str
    submitted: str
    tasks: int = 1
    dependency: str | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def result_path(self) -> Path:
        """submitit's result of task 0: ("success", accuracies) or ("error", traceback)."""
        return Path(self.folder) / f"{self.job_id}_0_result.pkl"


def read_job_record(cell_path: Path) -> JobRecord | None:
    """The job recorded in `<cell>/job.json`, or None (no file, or one this version cannot read)."""
    path = Path(cell_path) / JOB_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return JobRecord(**{k: v for k, v in raw.items() if k in JobRecord.__dataclass_fields__})
    except (json.JSONDecodeError, TypeError) as error:
        logger.warning("%s is not a job record (%s); ignored", path, error)
        return None


def _write_job_record(cell_path: Path, record: JobRecord) -> None:
    payload = {"format": "dsnet-reproduce-job/1", **asdict(record)}
    text = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
    write_owned(Path(cell_path) / JOB_FILE, lambda handle: handle.write(text), REPRODUCE_WRITER,
                hint="reproduce into another --out-dir")


@dataclass(frozen=True)
class JobState:
    """pending, running, unknown, finished or failed, and a few words on why (the scheduler's state, an error)."""

    state: str
    detail: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


_SLURM_STATES = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
                 "CONFIGURING": "pending", "SUSPENDED": "pending", "RESV_DEL_HOLD": "pending", "RUNNING": "running",
                 "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running", "RESIZING": "running",
                 "COMPLETED": "finished", "UNKNOWN": "unknown"}
"""sacct's states; any other one (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, ...) is failed."""


def job_states(records: Mapping[str, JobRecord]) -> dict[str, JobState]:
    """The state of each recorded job, keyed as `records`.

    A job that left a result is finished or failed by that result. Otherwise a SLURM job's state comes from one
    sacct call for all of them (through submitit), and a local job (its id is its controller's PID) is running
    while that process lives.
    """
    states: dict[str, JobState] = {}
    slurm: dict[str, Any] = {}
    for run_id, record in records.items():
        outcome = _result_state(record)
        if outcome is not None:
            states[run_id] = outcome
        elif record.cluster == "slurm":
            slurm[run_id] = _submitit().SlurmJob(folder=record.folder, job_id=record.job_id)
        else:
            states[run_id] = (JobState("running", f"process {record.job_id}") if _local_job_alive(record.job_id)
                              else JobState("failed", f"ended without a result; see {record.stdout}"))
    if slurm:
        next(iter(slurm.values())).watcher.update()  # one sacct call for every job
        for run_id, job in slurm.items():
            raw = (job.get_info(mode="cache").get("State") or "UNKNOWN").split()[0].upper()
            state = _SLURM_STATES.get(raw, "failed")
            detail = {"unknown": f"sacct does not list job {job.job_id} (yet)",
                      "failed": f"{raw}; see {records[run_id].stdout}"}.get(state, raw)
            if state == "pending" and records[run_id].dependency:
                detail += f", {records[run_id].dependency}"
            states[run_id] = JobState(state, detail)
    return states


def _result_state(record: JobRecord) -> JobState | None:
    if not record.result_path.is_file():
        return None
    try:
        with open(record.result_path, "rb") as handle:
            outcome, value = pickle.load(handle)
    except Exception as error:  # a result being written, or one from another submitit version
        return JobState("unknown", f"unreadable result {record.result_path.name} ({type(error).__name__})")
    if outcome == "success":
        return JobState("finished")
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return JobState("failed", f"{lines[-1] if lines else 'error'}; see {record.stderr}")


def _local_job_alive(job_id: str) -> bool:
    """Whether submitit's local controller with this PID still runs (not a zombie, not a reused PID)."""
    try:
        pid = int(job_id)
    except ValueError:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[:1] != ["Z"] and b"submitit" in cmdline
    try:  # pragma: no cover - no /proc (macOS)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ submission

@dataclass
class Submission:
    """What `submit_cells` did, by run id.

    Attributes:
        submitted: jobs submitted in this call.
        queued: jobs already pending or running, not submitted again.
        waiting: cells not submitted, and why (a derived cell whose parent has no job to depend on).
        done: finished cells.
        jobs: the submitit job objects of `submitted` (to wait on them in this process).
    """

    submitted: dict[str, JobRecord] = field(default_factory=dict)
    queued: dict[str, tuple[JobRecord, JobState]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    jobs: dict[str, Any] = field(default_factory=dict)


def submit_cells(plans: Sequence[CellPlan], out_dir: str | Path, data_dir: str | Path, options: ClusterOptions, *,
                 executor: Any = None) -> Submission:
    """Submits every unfinished cell of `plans` (from `plan_cells`) that has no job pending or running.

    Args:
        plans: the cells and their states, parents before the cells derived from them.
        out_dir: reproduce folder; job records go to the cells, submitit's files to `<out_dir>/slurm`.
        data_dir: dataset folder, as the jobs will see it.
        options: resources and launcher.
        executor: a submitit executor (default: `make_executor(out_dir, options)`, made only if a job is due).

    Raises:
        ConfigError: submitit or sbatch missing.
        DsnetError: a submission refused (jobs submitted before it are recorded; rerun to submit the rest).
    """
    from dsnet.experiments.runner import _write_cell

    out_dir, data_dir = Path(out_dir), Path(data_dir).resolve()
    result = Submission(done=[p.cell.run_id for p in plans if p.state == "done"])
    todo = [p for p in plans if p.state != "done"]
    if not todo:
        return result
    folder = jobs_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder, "job submission", hint="wait for the other dsnet reproduce to finish submitting"):
        records = {p.cell.run_id: r for p in todo if (r := read_job_record(p.path)) is not None}
        states = job_states(records) if records else {}
        active = {run_id: records[run_id] for run_id, state in states.items() if state.active}
        for plan in sorted(todo, key=lambda p: p.cell.parent_id is not None):  # parents first
            run_id, parent = plan.cell.run_id, plan.cell.parent_id
            if run_id in active:
                result.queued[run_id] = (active[run_id], states[run_id])
                continue
            dependency = None
            if plan.state == "waiting" and parent is not None:
                parent_job = result.submitted.get(parent) or active.get(parent)
                if parent_job is None or parent_job.cluster != "slurm" or options.cluster != "slurm":
                    queued = f" (job {parent_job.job_id})" if parent_job else ", which has no job queued"
                    result.waiting[run_id] = (f"waits for {parent}{queued} to finish training; run this command "
                                              "again then")
                    continue
                dependency = f"afterok:{parent_job.job_id}"
            if executor is None:
                executor = make_executor(out_dir, options)
            _write_cell(plan.cell, out_dir, data_dir)
            record, job = _submit(executor, plan, data_dir, options, dependency, len(result.submitted))
            _write_job_record(plan.path, record)
            result.submitted[run_id], result.jobs[run_id] = record, job
            logger.info("%s: submitted job %s%s", run_id, record.job_id, f" ({dependency})" if dependency else "")
    return result


def _submit(executor: Any, plan: CellPlan, data_dir: Path, options: ClusterOptions, dependency: str | None,
            n_before: int) -> tuple[JobRecord, Any]:
    extra = dict(options.slurm_args)
    if dependency:
        extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    executor.update_parameters(name=f"dsnet-{plan.cell.run_id}", slurm_additional_parameters=extra)
    try:
        job = executor.submit(CellJob(), str(plan.path.resolve()), str(data_dir))
    except (RuntimeError, OSError) as error:  # submitit's FailedJobError carries sbatch's stderr
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(error).__name__)
        raise DsnetError(f"submitting {plan.cell.run_id} failed: {reason}; {n_before} job(s) submitted before it are "
                         "recorded, rerun the same command to submit the rest") from None
    paths = _submitit().core.utils.JobPaths(executor.folder, job_id=job.job_id, task_id=0)
    record = JobRecord(run_id=plan.cell.run_id, job_id=str(job.job_id), launcher=options.launcher,
                       cluster=options.cluster, folder=str(Path(executor.folder).resolve()),
                       submitted=datetime.now(timezone.utc).isoformat(timespec="seconds"), tasks=options.tasks,
                       dependency=dependency, stdout=str(paths.stdout), stderr=str(paths.stderr))
    return record, job


def submit_grid(grid: str, *, out_dir: str | Path, data_dir: str | Path, options: ClusterOptions,
                **grid_options: Any) -> tuple[ReproduceResult, Submission]:
    """Plans a grid as `reproduce(..., dry_run=True)` does (same options) and submits its cells."""
    from dsnet.experiments.runner import reproduce

    plan = reproduce(grid, out_dir=out_dir, data_dir=data_dir, dry_run=True, **grid_options)
    return plan, submit_cells(plan.plan, out_dir, data_dir, options)


def describe_submission(grid: str, submission: Submission, out_dir: str | Path) -> str:
    """A line per submitted, queued or waiting cell, then the counts and where to look next."""
    lines = [f"[submitted] {run_id}: job {r.job_id}" + (f" ({r.dependency})" if r.dependency else "")
             for run_id, r in submission.submitted.items()]
    lines += [f"[   queued] {run_id}: job {r.job_id} is {s.state}, not submitted again"
              for run_id, (r, s) in submission.queued.items()]
    lines += [f"[  waiting] {run_id}: {why}" for run_id, why in submission.waiting.items()]
    if len(lines) == 0:
        lines.append(f"{grid}: all {len(submission.done)} cells are done; the same command with --aggregate-only "
                     "writes the tables")
    else:
        lines.append(f"{grid}: {len(submission.submitted)} submitted, {len(submission.queued)} already queued, "
                     f"{len(submission.waiting)} waiting, {len(submission.done)} done; job logs in "
                     f"{jobs_dir(out_dir)}; follow them with the same grid options and --status")
    return "\n".join(lines)
