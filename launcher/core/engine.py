"""The one engine of the sharded commands: a plan of units runs on a backend through `execute`.

    lock -> the command builds its Work (steps of units, final units) -> job graph -> submit
    (arrays, afterok) -> ledger line -> follow (wait, or return with the commands to follow)
    -> final units here when no job runs them

prepare and verify only build Work and read the outcome; what differs between debug, local and
SLURM lives in the backend classes of launcher.core.dispatch (one queue of every unit per worker,
or one array task per unit; final units as jobs that wait for the others, or here). The job graph
is data (`job_graph`): a dry run prints it, tests check it without a cluster, `submit_graph` hands
it to the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.core import dispatch, runner
from launcher.core.errors import LauncherError
from launcher.core.layout import Layout, Lock
from launcher.core.units import Unit, is_complete, run_unit


@dataclass
class Step:
    """A named group of units submitted together: one SLURM job array, or one queue of local jobs."""

    name: str
    units: list[Unit]
    # names of the steps whose jobs must succeed first (SLURM afterok)
    after: tuple[str, ...] = ()


@dataclass
class Final:
    """A unit that runs once its steps succeeded: where jobs are queued, a job that waits for them
    (afterok) when this run does not wait (or always, with `always_job`); else here, after them."""

    unit: Unit
    # the job's name (prepare-train-finalize, verify-report)
    name: str
    after: tuple[str, ...]
    # a job even when this run waits (verify's report: its job fails with the verify, sacct sees it)
    always_job: bool = False
    # counted by the progress display also when it runs here
    counted: bool = True


@dataclass
class Work:
    """What a command hands the engine: every unit in plan order, how they go out, where logs land."""

    label: str
    units: list[Unit]
    steps: list[Step]
    finals: list[Final]
    folder: Path
    # completion records of the units live in records_dir/<id>.json; None = each unit's own record
    records_dir: Path | None = None
    # units of an earlier run may still be queued or running (follow them, do not submit again)
    resumable: bool = False
    # prints what was submitted: (backend, log folder, jobs, whether this run waits for them)
    announce: Callable[[dispatch.Backend, Path, list, bool], None] | None = None


@dataclass
class Run:
    """The command around the Work: its name, root, lock and what the ledger keeps."""

    command: str
    layout: Layout
    argv: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    # the lock's description (who holds the root) and whether a stale lock is replaced
    holder: str = ""
    replace: bool = False


@dataclass
class Submission:
    """One node of the job graph: one submission of `name` as job arrays."""

    name: str
    # arrays (cut to MaxArraySize) of tasks; each task: the unit ids one job runs
    arrays: list[list[list[str]]]
    # submitit's parameters of every job (name, timeout_min, mem_gb, slurm_partition, slurm_array_parallelism, ...)
    parameters: dict
    # submissions of this graph whose jobs must succeed first (SLURM afterok)
    after: tuple[str, ...] = ()
    # jobs of an earlier run, still queued or running, that must succeed first
    after_jobs: tuple[str, ...] = ()
    units: list[Unit] = field(default_factory=list, repr=False)
    groups: list[list[Unit]] = field(default_factory=list, repr=False)

    @property
    def tasks(self) -> int:
        return sum(len(a) for a in self.arrays)


@dataclass
class Outcome:
    """What `execute` did: the jobs, the failed ones' errors, what was complete before, whether it waited."""

    jobs: list
    errors: dict[str, str]
    folder: Path
    before: set[str]
    waited: bool
    work: Work


def todo_units(units: list[Unit], skip: set[str]) -> list[Unit]:
    return [u for u in units if u.id not in skip and not is_complete(u)]


def submitted_finals(backend: dispatch.Backend, work: Work, active: dict) -> list[Final]:
    """The final units that go out as jobs (the others run here after the wait)."""
    if not backend.queued:
        return []
    return [
        f
        for f in work.finals
        if (f.always_job or not backend.waits) and not is_complete(f.unit) and f.unit.id not in active
    ]


def running_jobs(steps: list[Step], names: tuple[str, ...], active: dict) -> tuple[str, ...]:
    """Jobs of an earlier run still queued or running for units of the named steps."""
    ids = {u.id for s in steps if s.name in names for u in s.units}
    return tuple(job for uid, (_, _, job) in active.items() if uid in ids)


def submission(backend: dispatch.Backend, name: str, units: list[Unit], after=(), after_jobs=()) -> Submission | None:
    if not units:
        return None
    groups = backend.job_groups(units)
    arrays = dispatch.chunks([[u.id for u in g] for g in groups], backend.max_array_size())
    params = backend.parameters(name)
    return Submission(name, arrays, params, tuple(after), tuple(after_jobs), units, groups)


def job_graph(backend: dispatch.Backend, command: str, work: Work, active: dict | None = None) -> list[Submission]:
    """The submissions a run makes now, in order: the steps (as the backend combines them) with
    what is left to do, each final unit that goes out as a job right after the last step it waits for."""
    active = active or {}
    skip = set(active)
    steps = backend.combine(command, work.steps)
    finals = submitted_finals(backend, work, active)
    order = [s.name for s in steps]
    graph = []
    for i, step in enumerate(steps):
        sub = submission(backend, step.name, todo_units(step.units, skip), step.after)
        graph += [sub] if sub else []
        for f in finals:
            if max((order.index(n) for n in f.after if n in order), default=len(steps) - 1) == i:
                after_jobs = running_jobs(work.steps, f.after, active)
                graph.append(submission(backend, f.name, [f.unit], f.after, after_jobs))
    return graph


def describe(backend: dispatch.Backend, graph: list[Submission]) -> str:
    """One line per submission (arrays and their parallelism, or the jobs sharing one queue, and
    what it waits for); then the resources each job asks for."""
    if not graph:
        return "  nothing (every unit is complete)"
    lines = []
    for sub in graph:
        after = f" (afterok: {', '.join(sub.after)})" if sub.after else ""
        lines.append(f"  {sub.name}: {backend.describe(sub.name, sub.tasks, len(sub.units))}{after}")
    if resources := backend.resources():
        lines.append(f"  each task: {resources}")
    return "\n".join(lines)


def submit_graph(backend: dispatch.Backend, folder: Path, graph: list[Submission]) -> list:
    """Submit each submission in order; `after` names resolve to the job ids submitted before."""
    ids: dict[str, list[str]] = {}
    jobs: list = []
    for sub in graph:
        after = [j for name in sub.after for j in ids.get(name, [])] + list(sub.after_jobs)
        params = backend.parameters(sub.name, dispatch.dependency_of(after))
        tasks = iter(runner.unit_tasks(backend, folder, sub.name, sub.groups))
        arrays = [[next(tasks) for _ in array] for array in sub.arrays]  # the graph's arrays, as they are
        submitted = dispatch.submit_arrays(backend, folder, params, runner.run_units, arrays)
        ids[sub.name] = [j.job_id for j in submitted]
        jobs += submitted
    return jobs


def earlier_jobs(backend: dispatch.Backend, layout: Layout, work: Work) -> dict:
    """Units of an earlier run still in jobs: followed where jobs outlive their launcher, else awaited."""
    if not work.resumable:
        return {}
    if not backend.queued:
        runner.wait_for_earlier_local_jobs(layout, work.units, backend.poll_s)
        return {}
    return runner.active_units(layout, work.units)


def run_here(finals: list[Final]) -> dict[str, str]:
    errors = {}
    for f in finals:
        try:
            run_unit(f.unit)
        except LauncherError as err:
            errors[f.unit.id] = str(err)
    return errors


def execute(backend: dispatch.Backend, run: Run, build: Callable[[], Work]) -> Outcome:
    """Under the root's lock: build the work, submit its job graph, write the ledger line, then wait
    (final units here after the others) or return once the jobs are announced."""
    with Lock(run.layout.lock_file, run.holder, replace=run.replace):
        work = build()
        active = earlier_jobs(backend, run.layout, work)  # on this machine: waits for them first
        before = {u.id for u in work.units if is_complete(u)}
        if active:
            print(f"{len(active)} units already queued or running, not submitted again: {', '.join(sorted(active))}")
        graph = job_graph(backend, run.command, work, active)
        jobs = submit_graph(backend, work.folder, graph)
        record(backend, run, work, jobs)
        if work.announce:
            work.announce(backend, work.folder, jobs, backend.waits)
        if not backend.waits:
            return Outcome(jobs, {}, work.folder, before, False, work)
        jobs += [dispatch.attach(ex, job, where) for ex, where, job in sorted(set(active.values()))]
        errors = follow(backend, work, jobs, graph)
    return Outcome(jobs, errors, work.folder, before, True, work)


def follow(backend: dispatch.Backend, work: Work, jobs: list, graph: list[Submission]) -> dict[str, str]:
    """Wait with a progress display; the final units no job runs run here, each as soon as the units
    of the steps it waits for are complete (a split's finalize while another split's jobs still run),
    the rest after the jobs, before the last line."""
    as_jobs = {u.id for sub in graph for u in sub.units}
    pending = [f for f in work.finals if f.unit.id not in as_jobs]
    finals = [f.unit for f in work.finals if f.counted or f.unit.id in as_jobs]
    watched = [u for u in work.units if u.id not in {f.unit.id for f in work.finals}] + finals
    units_of = {s.name: s.units for s in work.steps}
    errors: dict[str, str] = {}

    def run_ready(everything: bool = False) -> dict[str, str]:
        for f in list(pending):
            if everything or all(is_complete(u) for name in f.after for u in units_of.get(name, ())):
                pending.remove(f)
                errors.update(run_here([f]))
        return errors

    return runner.follow(work.label, watched, jobs, backend, then=lambda: run_ready(everything=True), between=run_ready)


def record(backend: dispatch.Backend, run: Run, work: Work, jobs: list) -> None:
    """The ledger line of this submission: every unit of the plan, its record and its size."""
    records = None if work.records_dir else {u.id: u.record for u in work.units}
    runner.record_submission(
        run.layout,
        run.command,
        run.argv,
        backend,
        work.folder,
        [u.id for u in work.units],
        jobs,
        records_dir=work.records_dir,
        records=records,
        sizes={u.id: u.size for u in work.units},
        config=run.config,
    )
