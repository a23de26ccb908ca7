"""Units: small, idempotent pieces of work, each with a completion record; and the loop that runs them.

A unit is data (an id, a kind, the bytes it reads, keyword arguments that are paths and ids); its
kind names a plain function. `run_units` is what a job runs: for each unit it skips a completed
one, takes the unit's lock, calls the function and writes the completion record atomically.
A failing unit does not stop the others of its job; the job fails at the end, naming them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.core.errors import LauncherError, describe_os_error
from launcher.core.layout import Lock, read_json, write_json
from launcher.core.progress import human_bytes

log = logging.getLogger("launcher.units")

KINDS = {
    # the root's label files, by the dataset's adapter (unit args carry `adapter`)
    "meta": "launcher.datasets:write_meta",
    "md5": "launcher.archive.extract:check_md5",
    # a split's extraction, by its archive's shape (unit args carry `shape`)
    "train": "launcher.sources:extract",
    "val": "launcher.sources:extract",
    "finalize": "launcher.prepare.finalize:finalize_split",
    # storage.format=tar: a byte range of a split's archive indexed; the parts merged into its tar index
    "tarindex": "launcher.prepare.tarunits:index_unit",
    "tarfinal": "launcher.prepare.tarunits:final_unit",
    "verify": "launcher.check.shard:verify_shard",
    "verify-md5": "launcher.check.shard:verify_md5",
    # storage.format=tar: a range of samples of a split's tar index, read from the archive
    "verify-tar": "launcher.check.tarshard:verify_tar_shard",
    "verify-report": "launcher.check.report:write_report",
}


@dataclass(frozen=True)
class Unit:
    # unique within a root, e.g. train-0003; names its record units/<id>.json
    id: str
    # which function runs it (see KINDS)
    kind: str
    # bytes it reads: balances shards and measures progress
    size: int
    # where its completion record goes
    record: str
    # keyword arguments of the function: paths, ids, small lists
    args: dict = field(default_factory=dict)


class UnitsFailed(LauncherError):
    """Some units of a job failed; the others completed."""


def function_of(kind: str):
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def is_complete(unit: Unit) -> bool:
    """A unit is complete when its record reads back whole, reached without a link (a link planted at
    a record is not a record; a damaged one is reported, and the unit reruns)."""
    return safefs.is_file(unit.record) and read_json(Path(unit.record)) is not None


def run_unit(unit: Unit) -> dict:
    """Run one unit unless its record exists; write the record only when it finished whole."""
    record = Path(unit.record)
    done = read_json(record)
    if done is not None:
        return {**done, "skipped": True}
    with Lock(record.with_suffix(".lock"), f"unit {unit.id}"):
        if (done := read_json(record)) is not None:  # finished while we waited for the lock
            return {**done, "skipped": True}
        start = time.time()
        try:
            result = function_of(unit.kind)(**unit.args)
        except Exception as err:
            note_failure(unit, err)
            raise
        result = {
            "unit": unit.id,
            "kind": unit.kind,
            "host": socket.gethostname(),
            "job": current_job(),
            "started": start,
            "wall_s": round(time.time() - start, 3),
            **result,
        }
        write_json(record, result)
        safefs.remove(failure_note(unit))
    return result


def current_job() -> str:
    """This job's id as the ledger names it: 123_4 for a SLURM array task, else the job id."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID", "")


def failure_note(unit: Unit) -> Path:
    """Beside the unit's record: <unit id>.failed, the error of its last failed run (launcher.core.completion
    reads it to say why a split is not complete); removed when the unit completes."""
    return Path(unit.record).with_name(f"{unit.id}.failed")


def note_failure(unit: Unit, err: BaseException) -> None:
    message = str(err) if isinstance(err, LauncherError) else f"{type(err).__name__}: {err}"
    note = failure_note(unit)
    try:
        write_json(note, {"unit": unit.id, "error": message[:4000], "time": time.time()})
    except OSError:  # a read-only or full state folder: no note, no half-written temporary; the error goes up
        with contextlib.suppress(OSError, LauncherError):
            safefs.remove(note.with_name(f".{note.name}.tmp"))


def claim(claims: Path, unit_id: str) -> bool:
    """True for the one job of a submission that creates claims/<unit id> first (O_EXCL, in the
    folder opened without links); the claim holds that job's id (status shows it as the job running
    the unit)."""
    with safedir.Dir.of(claims) as folder:
        try:
            fd = folder.create(unit_id)
        except FileExistsError:
            return False
    try:
        os.write(fd, current_job().encode())
    finally:
        os.close(fd)
    return True


class StdStream(logging.StreamHandler):
    """A handler writing to sys.stdout or sys.stderr as they are when each line is logged (a
    redirection or a capture in effect then is followed)."""

    def __init__(self, which: str):
        self.which = which
        super().__init__(getattr(sys, which))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self.which)
        super().emit(record)


def setup_unit_log() -> None:
    """Unit lines, with a timestamp: info on stdout, warnings and errors on stderr (the log status
    shows the tail of); in a job's process as in the launcher's (debug executor)."""
    if log.handlers:
        return
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    out, err = StdStream("stdout"), StdStream("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def throughput(result: dict, seconds: float) -> str:
    """`12 images, 51.2 KB in 0.41s (124.9 KB/s, 29 images/s)` from a unit's record."""
    images, nbytes = result.get("images"), result.get("bytes")
    done = ", ".join(x for x in (f"{images} images" if images else "", human_bytes(nbytes) if nbytes else "") if x)
    rates = []
    if seconds > 0 and nbytes:
        rates.append(f"{human_bytes(nbytes / seconds)}/s")
    if seconds > 0 and images:
        rates.append(f"{images / seconds:.0f} images/s")
    return f"{done or 'done'} in {seconds:.2f}s" + (f" ({', '.join(rates)})" if rates else "")


def run_one(unit: Unit, failures: list[str]) -> dict | None:
    """Run a unit with its log lines: start, then end with duration and throughput, or the failure."""
    log.info("unit %s (%s) started: reads %s", unit.id, unit.kind, human_bytes(unit.size))
    start = time.time()
    try:
        result = run_unit(unit)
    except LauncherError as err:
        failures.append(f"{unit.id}: {err}")
        log.error("unit %s failed after %.2fs: %s", unit.id, time.time() - start, err)
        return None
    except OSError as err:  # full disk, read-only, a file where a folder belongs: the path and the fix
        message = describe_os_error(err, unit.args.get("root") or Path(unit.record).parent)
        failures.append(f"{unit.id}: {message}")
        log.error("unit %s failed after %.2fs: %s", unit.id, time.time() - start, message)
        return None
    except Exception as err:
        failures.append(f"{unit.id}: {type(err).__name__}: {err}")
        log.error("unit %s failed after %.2fs:\n%s", unit.id, time.time() - start, traceback.format_exc().rstrip())
        return None
    if result.get("skipped"):
        log.info("unit %s was complete already (skipped)", unit.id)
    else:
        log.info("unit %s finished: %s", unit.id, throughput(result, float(result.get("wall_s") or 0)))
    if message := result.get("job_fails"):  # recorded, and yet the job must fail (a failed verify)
        failures.append(f"{unit.id}: {message}")
        log.error("unit %s: %s", unit.id, message)
    return result


def run_units(units: list[Unit], claims: str | None = None) -> list[dict]:
    """What one job runs: every unit in turn; raises at the end if any failed. With `claims` (a
    folder shared by the jobs of one submission, which all get the same queue) only the units this
    job claims first: the jobs pull from one queue."""
    setup_unit_log()
    results, failures = [], []
    if claims:
        safefs.make_dirs(claims)
    for unit in units:
        if claims and not claim(Path(claims), unit.id):
            continue
        if (result := run_one(unit, failures)) is not None:
            results.append(result)
    if failures:
        raise UnitsFailed(f"{len(failures)} of {len(units)} units failed:\n  " + "\n  ".join(failures))
    return results
