"""Run units on the cluster, for any command: group them into jobs, submit, record the submission
in the ledger, follow with a progress display, and find what earlier submissions still run.

prepare and verify both go through here; dispatch.py underneath is the one module that knows
submitit. The ledger (state_dir/ledger.jsonl) has one line per submission: time, command,
overrides, executor, log folder, the plan's unit ids, and job id <-> units <-> log paths.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.archive import safefs
from launcher.core import backends, dispatch
from launcher.core.layout import Layout, append_line, read_lines
from launcher.core.progress import Progress
from launcher.core.units import Unit, is_complete, run_units


def job_groups(todo: list[Unit], backend: dispatch.Backend) -> list[list[Unit]]:
    """Units per job, as the backend groups them (one per array task on SLURM; elsewhere one shared
    queue per parallel worker, largest first)."""
    return backend.job_groups(todo)


def unit_tasks(backend: dispatch.Backend, folder: Path, name: str, groups: list[list[Unit]]) -> list[tuple]:
    """(unit ids, args of `run_units`) per job; jobs sharing one queue claim units in claims-<name>."""
    shared = backend.shares_queue and len(groups) > 1  # local workers: one queue, claimed
    claims = str(folder / f"claims-{name}") if shared else None
    return [([u.id for u in g], (g, claims)) for g in groups]


def submit_units(backend: dispatch.Backend, folder: Path, name: str, units: list[Unit], after: Sequence[str] = ()):
    """Submit units as jobs running `run_units`; the payload is the units: paths and ids only."""
    tasks = unit_tasks(backend, folder, name, backend.job_groups(units))
    return dispatch.submit(backend, folder, name, run_units, tasks, after=after)


def record_submission(
    layout: Layout,
    command: str,
    argv: list[str],
    backend: dispatch.Backend,
    folder: Path,
    plan_ids: list[str],
    jobs: list,
    records_dir: Path | None = None,
    records: dict[str, str] | None = None,
    sizes: dict[str, int] | None = None,
    config: dict | None = None,
) -> None:
    """One ledger line per submission; a unit's completion record is records[id], else
    records_dir/<id>.json; `sizes` (bytes each unit reads) give status its ETA; `config` is the
    resolved config of the run (paths from environment variables resolved)."""
    end_torn_line(layout.ledger)
    append_line(
        layout.ledger,
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": command,
            "argv": argv,
            "executor": backend.executor,
            "cluster": backend.name or backend.executor,
            "folder": str(folder),
            "plan": plan_ids,
            "records_dir": str(records_dir or layout.units_dir),
            "records": records or {},
            "jobs": [j.to_json() for j in jobs],
            "sizes": sizes or {},
            "config": config or {},
        },
    )


def ledger_entries(layout: Layout) -> list[dict]:
    """The submissions recorded for a root; a damaged line (a crash mid-append) is skipped and
    reported, and so is an entry whose jobs are not what record_submission writes."""
    return read_lines(layout.ledger, well_formed)


def well_formed(entry: dict) -> bool:
    jobs = entry.get("jobs")
    typed = {"executor": str, "folder": str, "command": str, "time": str, "plan": list, "argv": list}
    return (
        isinstance(jobs, list)
        and all(well_formed_job(j) for j in jobs)
        and all(isinstance(entry[k], t) for k, t in typed.items() if k in entry)
        and all(k in entry for k in ("executor", "folder"))
    )


def well_formed_job(job) -> bool:
    return (
        isinstance(job, dict)
        and isinstance(job.get("job_id"), str)
        and isinstance(job.get("units"), list)
        and all(isinstance(job.get(k, ""), str) for k in ("stdout", "stderr"))
    )


def end_torn_line(path: Path) -> None:
    """A line torn by a crash mid-append is ended, so the next entry does not join (and vanish) with
    it; read and appended without following a link."""
    data = safefs.read(path)
    if data and not data.endswith(b"\n"):
        safefs.append(path, b"\n")


def ledger_jobs(layout: Layout) -> dict[str, list[tuple[str, str, str]]]:
    """unit id -> [(executor, log folder, job id)] of its latest submission: one job on SLURM; on
    local workers every job of the submission (they share one queue of units)."""
    latest: dict[str, list[tuple[str, str, str]]] = {}
    for entry in ledger_entries(layout):
        mine: dict[str, list[tuple[str, str, str]]] = {}
        for job in entry.get("jobs", []):
            for uid in job["units"]:
                mine.setdefault(uid, []).append((entry["executor"], entry["folder"], job["job_id"]))
        latest.update(mine)
    return latest


def latest_states(layout: Layout, unit_ids: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """unit id -> (executor, folder, job id, job state) of each unit's latest submission; of jobs
    sharing a queue, one still active if any, else one that failed if any, else the last."""
    wanted = set(unit_ids)
    latest = {uid: jobs for uid, jobs in ledger_jobs(layout).items() if uid in wanted}
    by_folder: dict[tuple[str, str], set[str]] = {}
    for jobs in latest.values():
        for executor, folder, job_id in jobs:
            by_folder.setdefault((executor, folder), set()).add(job_id)
    states = {}
    for (executor, folder), job_ids in by_folder.items():
        for job_id, state in dispatch.job_states(executor, folder, sorted(job_ids)).items():
            states[(folder, job_id)] = state

    def pick(jobs: list[tuple[str, str, str]]) -> tuple[str, str, str, str]:
        ranked = [(ex, folder, job, states[(folder, job)]) for ex, folder, job in jobs]
        for wanted_states in (dispatch.ACTIVE, dispatch.FAILED):
            if hit := [r for r in ranked if r[3] in wanted_states]:
                return hit[0]
        return ranked[-1]

    return {uid: pick(jobs) for uid, jobs in latest.items()}


def active_units(layout: Layout, units: list[Unit]) -> dict[str, tuple[str, str, str]]:
    """Incomplete units whose latest job is still queued or running: id -> (executor, folder, job id)."""
    pending = [u.id for u in units if not is_complete(u)]
    return {
        uid: (executor, folder, job)
        for uid, (executor, folder, job, state) in latest_states(layout, pending).items()
        if state in dispatch.ACTIVE
    }


def wait_for_earlier_local_jobs(layout: Layout, units: list[Unit], poll_s: float) -> None:
    """Jobs of an earlier run on this machine that still run (its launcher was killed): let them end."""
    while True:
        earlier = active_units(layout, units).items()
        active = {uid: job for uid, job in earlier if not backends.outlives_launcher(job[0])}
        if not active:
            return
        jobs = sorted({job for _, _, job in active.values()})
        print(
            f"waiting for {len(active)} units still running in jobs {', '.join(jobs)} of an earlier run",
            file=sys.stderr,
        )
        time.sleep(max(poll_s, 1.0))


def follow(
    label: str,
    units: list[Unit],
    jobs: list,
    backend: dispatch.Backend,
    then: Callable[[], dict] | None = None,
    between: Callable[[], object] | None = None,
) -> dict[str, str]:
    """Wait for the jobs with a progress display over every unit given (those complete already
    count as done); `between` runs at each poll while they run (e.g. a finalize whose units are
    done), `then` after the jobs and before the last line. Returns job id -> error of the failed ones."""
    remaining = [u for u in units if not is_complete(u)]
    progress = Progress(label, len(units), sum(u.size for u in remaining), done_units=len(units) - len(remaining))

    def on_poll(final: bool = False):
        if between is not None and not final:
            between()
        done = [u for u in remaining if is_complete(u)]
        failed = len(remaining) - len(done) if final else 0
        progress.update(len(units) - len(remaining) + len(done), sum(u.size for u in done), failed, final)

    errors = dispatch.wait(jobs, backend.poll_s, on_poll)
    if then is not None:
        errors.update(then())
    on_poll(final=True)
    return errors


def command_line(command: str, argv: list[str]) -> str:
    """A command to paste into a shell: `launcher <command>` and every argument shell-quoted."""
    return shlex.join(["launcher", command, *argv])


def status_args(argv: list[str]) -> list[str]:
    """The overrides of a run that `launcher status` needs: where the root and its state are, and the
    dataset choice (the default storage.root is named after the dataset's adapter)."""
    keys = [a.lstrip("+~").split("=", 1)[0] for a in argv]
    return [a for a, key in zip(argv, keys) if key.split(".", 1)[0] == "storage" or key == "dataset"]


def rerun_args(argv: list[str]) -> list[str]:
    """The overrides of a run without `wait=`, to rerun it as it was (with wait= chosen anew)."""
    return [a for a in argv if not a.lstrip("+~").startswith("wait=")]


def jobs_line(backend: dispatch.Backend, folder: Path, jobs: list) -> str:
    arrays = sorted({j.job_id.split("_")[0] for j in jobs})
    return f"submitted {len(jobs)} jobs to {backend.executor} (job ids {', '.join(arrays)}); logs in {folder}"


def print_submitted(command: str, backend: dispatch.Backend, folder: Path, jobs: list, argv: list[str]) -> None:
    print(jobs_line(backend, folder, jobs))
    print(f"follow progress with: {command_line('status', status_args(argv))}")
    print(f"or wait for them:     {command_line(command, [*rerun_args(argv), 'wait=true'])}")


def print_errors(errors: dict[str, str]) -> None:
    print("\nfailed:", file=sys.stderr)
    for job, err in errors.items():
        lines = err.strip().splitlines()
        print(f"  {job}: " + "\n    ".join(lines[-12:]), file=sys.stderr)
