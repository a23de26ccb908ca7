"""The one module that knows submitit: cluster config -> executor -> job arrays -> states and logs.

`cluster.executor` picks submitit's DebugExecutor (in this process), LocalExecutor (processes on
this machine) or SlurmExecutor. Config keys keep submitit's names: the generic ones
(timeout_min, cpus_per_task, mem_gb, nodes, tasks_per_node, gpus_per_node) pass as they are, the
SLURM-only ones get the `slurm_` prefix, and submitit itself rejects what it does not know,
listing what it does. Jobs are Checkpointable: on preemption or time limit submitit requeues
them (timeouts at most `max_num_timeout` times) and they run again, skipping completed units.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths

from launcher.core.backends import Backend
from launcher.core.errors import ConfigError, LauncherError

SUBMIT_OPTIONS = ("partition", "account", "qos", "constraint", "exclude", "gres", "additional_parameters")
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Submitted:
    """One submitted job: its id, the units it runs and where its logs are."""

    job_id: str
    units: list[str]
    stdout: str
    stderr: str
    handle: object = None  # the submitit Job, while this process holds it

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "units": self.units, "stdout": self.stdout, "stderr": self.stderr}


class Resumable(submitit.helpers.Checkpointable):
    """A job body that submitit requeues as it is on preemption or time limit."""

    def __init__(self, fn: Callable, *args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)


def make_executor(backend: Backend, folder: Path, name: str, dependency: str | None = None, params=None):
    """submitit's executor for one submission: `params` (else the backend's parameters of `name`)."""
    from launcher.archive import safefs

    safefs.make_dirs(folder)  # a link planted in the log folder's path is refused, not followed
    executor = submitit.AutoExecutor(folder=folder, cluster=backend.executor, **backend.executor_kwargs())
    try:
        executor.update_parameters(**(params or backend.parameters(name, dependency)))
    except (NameError, AssertionError, ValueError) as err:
        raise LauncherError(f"cluster.executor={backend.executor}: submitit refused the options: {err}") from err
    return executor


def max_array_size(backend: Backend) -> int:
    return backend.max_array_size()


def dependency_of(after: Sequence[str]) -> str | None:
    """SLURM's afterok dependency on jobs (array ids: the whole array)."""
    return "afterok:" + ":".join(sorted({j.split("_")[0] for j in after})) if after else None


def chunks(tasks: Sequence, size: int) -> list[list]:
    """Tasks cut into arrays of at most `size` (SLURM's MaxArraySize)."""
    return [list(tasks[start : start + size]) for start in range(0, len(tasks), size)]


def submit(
    backend: Backend,
    folder: Path,
    name: str,
    fn: Callable,
    tasks: Sequence[tuple[list[str], tuple]],
    after: Sequence[str] = (),
) -> list[Submitted]:
    """Submit `fn(*args)` per task as job arrays (chunked to MaxArraySize); `after`: job ids that
    must succeed first (SLURM `afterok`; other executors are only handed tasks whose inputs exist)."""
    if not tasks:
        return []
    params = backend.parameters(name, dependency_of(after))
    return submit_arrays(backend, folder, params, fn, chunks(tasks, backend.max_array_size()))


def submit_arrays(backend: Backend, folder: Path, params: dict, fn: Callable, arrays: list[list]) -> list[Submitted]:
    """Submit each array of (unit ids, args) tasks as one batch of jobs with submitit's `params`."""
    executor = make_executor(backend, folder, params["name"], params=params)
    submitted: list[Submitted] = []
    for part in arrays:
        with refused_submission(backend), executor.batch():
            jobs = [executor.submit(Resumable(fn, *args)) for _, args in part]
        for job, (unit_ids, _) in zip(jobs, part):
            paths = JobPaths(folder, job_id=job.job_id, task_id=0)
            submitted.append(Submitted(job.job_id, unit_ids, str(paths.stdout), str(paths.stderr), job))
    return submitted


@contextlib.contextmanager
def refused_submission(backend: Backend):
    """sbatch refusing a job (a wrong partition, account, qos) is one line naming the options, not a traceback."""
    said_by_sbatch = io.StringIO()  # submitit prints sbatch's refusal itself; our line says it once
    try:
        with contextlib.redirect_stderr(said_by_sbatch):
            yield
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:
        said = (str(err).strip().splitlines() or ["no reason given"])[-1]
        options = ", ".join(f"cluster.{k}={backend.option(k)}" for k in SUBMIT_OPTIONS if backend.option(k))
        raise ConfigError(
            f"the cluster refused a submission ({said}). Check "
            f"{options or 'cluster.partition and cluster.account'} (`sinfo -s` lists the partitions, "
            "`sacctmgr show assoc user=$USER` your accounts and qos)"
        ) from None
    finally:
        if not said_by_sbatch.getvalue().startswith("sbatch: error"):
            sys.stderr.write(said_by_sbatch.getvalue())


def run_ranks(backend: Backend, folder: Path, name: str, fn: Callable, *args) -> Submitted:
    """One job of nodes x tasks_per_node ranks, each running fn(*args)."""
    with refused_submission(backend):
        job = make_executor(backend, folder, name).submit(Resumable(fn, *args))
    paths = JobPaths(folder, job_id=job.job_id, task_id=0)
    return Submitted(job.job_id, [name], str(paths.stdout), str(paths.stderr), job)


def export_distributed_env() -> dict:
    """Inside a job task: export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from
    submitit's TorchDistributedEnvironment (for init_process_group's env://) when there are several
    ranks; returns rank, world_size, local_rank, local_world_size."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    local_world = env.num_tasks // env.num_nodes
    return {
        "rank": env.global_rank,
        "world_size": env.num_tasks,
        "local_rank": env.local_rank,
        "local_world_size": local_world,
    }


class WithDistributedEnv:
    """fn(*args), after export_distributed_env() in the rank it runs in."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        export_distributed_env()
        return self.fn(*args)


def run_distributed(backend: Backend, folder: Path, name: str, fn: Callable, *args) -> Submitted:
    """run_ranks, with the torch.distributed env exported in every rank before fn(*args) runs;
    `results(submitted)` then lists each rank's return value, by rank."""
    return run_ranks(backend, folder, name, WithDistributedEnv(fn), *args)


def attach(executor: str, job_id: str, folder: str | None = None) -> Submitted:
    """A handle on a SLURM job submitted by an earlier process (to wait for it)."""
    if executor != "slurm":
        raise LauncherError(f"cannot follow {executor} job {job_id} from another process")
    folder = folder or "."
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    return Submitted(job_id, [], str(paths.stdout), str(paths.stderr), submitit.SlurmJob(folder=folder, job_id=job_id))


def wait(jobs: Sequence[Submitted], poll_s: float, on_poll: Callable[[], None] | None = None) -> dict[str, str]:
    """Wait for the jobs this process submitted; returns job id -> error text of failed ones."""
    handles = [j for j in jobs if j.handle is not None]
    debug = [j for j in handles if isinstance(j.handle, submitit.DebugJob)]
    errors: dict[str, str] = {}
    for j in debug:  # in-process: runs now, one after the other
        errors.update(_debug_outcome(j))
        if on_poll:
            on_poll()
    pending = [j for j in handles if j not in debug]
    while pending:
        pending = [j for j in pending if not j.handle.done()]
        if on_poll:
            on_poll()
        if pending:
            time.sleep(poll_s)
    for j in handles:
        if j not in debug:
            errors.update(_outcome(j))
    return errors


def _debug_outcome(job: Submitted) -> dict[str, str]:
    """Run an in-process job. Not through DebugJob.results(), which on a failure opens an interactive
    (Pdb) prompt when run from a terminal: the failure is our message, as on the other executors."""
    saved = dict(os.environ)
    os.environ.update(job.handle.environ)  # as results() does: the job sees its own SUBMITIT_* variables
    try:
        err = job.handle.exception()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {job.job_id: str(err)} if err is not None else {}


def _outcome(job: Submitted) -> dict[str, str]:
    try:
        job.handle.results()
    except Exception as err:  # submitit wraps the job's exception with its traceback
        return {job.job_id: str(err)}
    return {}


def results(job: Submitted) -> list:
    """Per-task results of a job this process submitted (raises the job's error)."""
    return job.handle.results()


def job_states(executor: str, folder: str, job_ids: list[str]) -> dict[str, str]:
    """States of jobs of an earlier submission: from SLURM (sacct) or, elsewhere, their files."""
    if executor == "slurm" and shutil.which("sacct"):
        jobs = [submitit.SlurmJob(folder=folder, job_id=j) for j in job_ids]  # one sacct call for all
        try:
            states = {j.job_id: (j.state.split() or ["UNKNOWN"])[0].upper() for j in jobs}
        except Exception:  # accounting unavailable: fall back to the jobs' files
            states = {j: "UNKNOWN" for j in job_ids}
        unknown = [j for j, state in states.items() if state == "UNKNOWN"]
        queued = squeue_states(unknown)  # accounting lags a new submission by a moment
        states.update({j: queued.get(j) or state_from_files(executor, folder, j) for j in unknown})
        return states
    return {j: state_from_files(executor, folder, j) for j in job_ids}


def squeue_column(job_ids: list[str], field: str) -> dict[str, str]:
    """One squeue output field (%T state, %r reason) per job, array tasks one by one."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", f"%i|{field}"], capture_output=True, text=True
    )
    values = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {j: values[j].strip() for j in job_ids if j in values}


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """States of queued or running jobs as squeue sees them."""
    return squeue_column(job_ids, "%T")


def squeue_reasons(job_ids: list[str]) -> dict[str, str]:
    """Why queued jobs wait, as squeue's %r says (Dependency, JobArrayTaskLimit, Priority, Resources)."""
    return {j: r for j, r in squeue_column(job_ids, "%r").items() if r not in ("", "None")}


def job_state(executor: str, folder: str, job_id: str) -> str:
    return job_states(executor, folder, [job_id])[job_id]


def state_from_files(executor: str, folder: str, job_id: str) -> str:
    """COMPLETED/FAILED from submitit's result file; for a local job, RUNNING while its process lives."""
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    if paths.result_pickle.exists():
        try:
            with open(paths.result_pickle, "rb") as f:
                outcome, _ = pickle.load(f)
        except Exception:
            return "UNKNOWN"
        return "COMPLETED" if outcome == "success" else "FAILED"
    if executor == "local" and local_job_alive(job_id):
        return "RUNNING"
    return "UNKNOWN"


def local_job_alive(job_id: str) -> bool:
    """Whether a local job's controller (its id is the process id) still runs: a zombie waiting for
    an init that reaps slowly, or a reused id now held by another program, does not count."""
    if not job_id.isdigit():
        return False
    proc = Path("/proc") / job_id
    if not Path("/proc/self").exists():  # no procfs (macOS): the signal test is all there is
        try:
            os.kill(int(job_id), 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"submitit" in command


def tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def cancel(executor: str, job_ids: Sequence[str]) -> None:
    if executor == "slurm" and job_ids:
        subprocess.run(["scancel", *job_ids], check=False)
