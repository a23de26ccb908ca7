"""One class per executor, as submitit has one per backend: what differs between debug, local and
SLURM — how units group into jobs, what each job asks for (submitit's parameters, from the typed
cluster config), how arrays are sized, whether jobs outlive this process. No submitit import here:
launcher.core.dispatch hands what these classes say to submitit.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys

from launcher.core.errors import LauncherError

GENERIC = ("timeout_min", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node", "gpus_per_node")
SLURM_ONLY = (
    "partition",
    "account",
    "qos",
    "constraint",
    "exclude",
    "gres",
    "mem_per_cpu",
    "cpus_per_gpu",
    "gpus_per_task",
    "mem_per_gpu",
    "comment",
    "stderr_to_stdout",
    "array_parallelism",
    "setup",
    "additional_parameters",
    "signal_delay_s",
)
EXECUTORS = ("debug", "local", "slurm")


class Backend:
    """One executor's ways, as submitit has one class per backend: how units group into jobs, what
    each job asks for, how arrays are sized, and whether jobs outlive this process. Built from the
    typed cluster config (launcher.config.schema's ClusterConfig subclasses) and the run's `wait`."""

    executor = ""
    # jobs wait in a scheduler's queue and outlive this process: a later run follows them (by id),
    # final units can be jobs that wait for the others (afterok), small units are batched into bigger ones
    queued = False
    # the jobs of one submission share one queue of units (each claims the next), not one unit each
    shares_queue = True

    def __init__(self, config, wait: bool | None = None):
        self.config, self.wait = config, wait

    @property
    def name(self) -> str | None:
        return self.config.name

    @property
    def poll_s(self) -> float:
        return self.config.poll_s

    @property
    def waits(self) -> bool:
        """Whether this run waits for its jobs: `wait`, else the backend's habit."""
        return self.wait if self.wait is not None else not self.queued

    @property
    def parallelism(self) -> int:
        """How many jobs run at once."""
        return 1

    def option(self, key: str, default=None):
        """A cluster option of any backend (None where this backend's schema has none)."""
        return getattr(self.config, key, default)

    def job_groups(self, units: list) -> list[list]:
        """Units per job: one job per parallel worker, all with the same queue of every unit, largest
        first: each job claims the next unclaimed one (see `run_units`)."""
        queue = sorted(units, key=lambda u: -u.size)
        return [queue] * min(self.parallelism, len(queue))

    def combine(self, command: str, steps: list) -> list:
        """The steps of a plan as submissions: here one queue of every unit, named after the command."""
        units = [u for step in steps for u in step.units]
        return [dataclasses.replace(steps[0], name=command, units=units, after=())] if steps else []

    def min_unit_bytes(self, floor: int) -> int:
        """Fewest bytes a unit should read: jobs that start at once need no floor."""
        return 0

    def processes_per_unit(self) -> int:
        return 1

    def parameters(self, name: str, dependency: str | None = None) -> dict:
        """submitit's parameters of one submission (generic names; backends add their own)."""
        params = {k: getattr(self.config, k) for k in GENERIC if getattr(self.config, k, None) is not None}
        params["name"] = self.config.name or name
        return params

    def executor_kwargs(self) -> dict:
        return {}

    def max_array_size(self) -> int:
        return self.option("max_array_size") or 1_000_000

    def describe(self, name: str, tasks: int, units: int) -> str:
        return f"{tasks} {self.executor} job{'s' * (tasks > 1)} pulling {units} units from one queue"

    def resources(self) -> str | None:
        return None


class DebugBackend(Backend):
    """In this process, one job after the other (submitit's DebugExecutor)."""

    executor = "debug"


class LocalBackend(Backend):
    """Processes on this machine (submitit's LocalExecutor), `workers` at once."""

    executor = "local"

    @property
    def parallelism(self) -> int:
        return self.option("workers") or os.cpu_count() or 1

    def parameters(self, name: str, dependency: str | None = None) -> dict:
        params = super().parameters(name)
        if self.option("setup"):
            params["local_setup"] = list(self.config.setup)
        return params

    def executor_kwargs(self) -> dict:
        return {"local_max_num_timeout": self.config.max_num_timeout, "local_python": job_python()}


class SlurmBackend(Backend):
    """SLURM job arrays (submitit's SlurmExecutor): one unit per array task, afterok dependencies."""

    executor = "slurm"
    queued = True
    shares_queue = False

    @property
    def parallelism(self) -> int:
        return int(self.config.array_parallelism or 64)

    def job_groups(self, units: list) -> list[list]:
        return [[u] for u in units]

    def combine(self, command: str, steps: list) -> list:
        return list(steps)

    def min_unit_bytes(self, floor: int) -> int:
        return floor

    def processes_per_unit(self) -> int:
        return int(self.config.cpus_per_task or 1)

    def parameters(self, name: str, dependency: str | None = None) -> dict:
        params = super().parameters(name)
        for key in SLURM_ONLY:
            value = getattr(self.config, key, None)
            if value not in (None, [], {}, False):
                params[f"slurm_{key}"] = dict(value) if key == "additional_parameters" else value
        if dependency:
            params["slurm_dependency"] = dependency
            extra = dict(params.get("slurm_additional_parameters") or {})
            extra.setdefault("kill-on-invalid-dep", "yes")
            params["slurm_additional_parameters"] = extra
        return params

    def executor_kwargs(self) -> dict:
        return {"slurm_max_num_timeout": self.config.max_num_timeout, "slurm_python": job_python()}

    def max_array_size(self) -> int:
        """SLURM's MaxArraySize (from `scontrol show config`), or the configured override."""
        if self.config.max_array_size:
            return self.config.max_array_size
        if not shutil.which("scontrol"):
            return 1_000_000
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "MaxArraySize":
                return max(1, int(value.strip()))
        return 1001

    def describe(self, name: str, tasks: int, units: int) -> str:
        arrays = -(-tasks // self.max_array_size())
        return f"{arrays} job array{'s' * (arrays > 1)} of {tasks} task{'s' * (tasks > 1)}, %{self.parallelism}"

    def resources(self) -> str | None:
        """Partition, time limit, memory and CPUs each job asks for, as the cluster config says."""
        c = self.config
        mem = f"{c.mem_gb} GB" if c.mem_gb is not None else "the cluster default"
        return (
            f"partition {c.partition or '(the default)'}, time limit {c.timeout_min} min, "
            f"memory {mem}, {c.cpus_per_task} CPU(s) per task"
        )


BACKENDS = {b.executor: b for b in (DebugBackend, LocalBackend, SlurmBackend)}


def backend_of(config, wait: bool | None = None) -> Backend:
    """The backend of a typed cluster config (cluster.executor picks it)."""
    executor = str(config.executor)
    if executor not in BACKENDS:
        raise LauncherError(f"cluster.executor={executor!r} is not one of {', '.join(EXECUTORS)}.")
    return BACKENDS[executor](config, wait)


def shares_queue(executor: str) -> bool:
    """Whether the jobs of one submission of this executor (as a ledger names it) share one queue of units."""
    return BACKENDS.get(executor, Backend).shares_queue


def outlives_launcher(executor: str) -> bool:
    """Whether jobs of this executor (as a ledger names it) go on after the process that submitted them."""
    return BACKENDS.get(executor, Backend).queued


def job_python() -> str:
    """The jobs' interpreter: this one, with -P (Python 3.11+) so that a job started in a clone's root
    imports the installed launcher, not the source folder that `python -m` would put first on sys.path."""
    python = shlex.quote(sys.executable)
    return f"{python} -P" if sys.version_info >= (3, 11) else python
