"""Units: small, idempotent pieces of work, each with a completion record; and the loop that runs them.

A unit is data (an id, a kind, the bytes it reads, keyword arguments that are paths and ids); its
kind names a plain function. `run_units` is what a job runs: for each unit it skips a completed
one, takes the unit's lock, calls the function and writes the completion record atomically.
A failing unit does not stop the others of its job; the job fails at the end, naming them.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError, describe_os_error
from launcher.layout import Lock, read_json, write_json

KINDS = {
    "meta": "launcher.extract:write_meta",
    "md5": "launcher.extract:check_md5",
    "train": "launcher.extract:extract_train",
    "val": "launcher.extract:extract_val",
    "finalize": "launcher.prepare:finalize_split",
    "verify": "launcher.verify:verify_shard",
    "verify-md5": "launcher.verify:verify_md5",
    "verify-report": "launcher.verify:write_report",
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
    """A unit is complete when its record reads back whole (a damaged one is reported, and reruns)."""
    return read_json(Path(unit.record)) is not None


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
        result = function_of(unit.kind)(**unit.args)
        result = {
            "unit": unit.id,
            "kind": unit.kind,
            "host": socket.gethostname(),
            "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", ""),
            "started": start,
            "wall_s": round(time.time() - start, 3),
            **result,
        }
        write_json(record, result)
    return result


def claim(claims: Path, unit_id: str) -> bool:
    """True for the one job of a submission that creates claims/<unit id> first."""
    try:
        os.close(os.open(claims / unit_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False


def run_units(units: list[Unit], claims: str | None = None) -> list[dict]:
    """What one job runs: every unit in turn; raises at the end if any failed. With `claims` (a
    folder shared by the jobs of one submission, which all get the same queue) only the units this
    job claims first: the jobs pull from one queue."""
    results, failures = [], []
    if claims:
        Path(claims).mkdir(parents=True, exist_ok=True)
    for unit in units:
        if claims and not claim(Path(claims), unit.id):
            continue
        print(f"unit {unit.id} ({unit.kind}) started", flush=True)
        try:
            results.append(result := run_unit(unit))
            print(f"unit {unit.id} finished", flush=True)
            if message := result.get("job_fails"):  # recorded, and yet the job must fail (a failed verify)
                failures.append(f"{unit.id}: {message}")
                print(f"unit {unit.id}: {message}", file=sys.stderr, flush=True)
        except LauncherError as err:
            failures.append(f"{unit.id}: {err}")
            print(f"unit {unit.id} failed: {err}", file=sys.stderr, flush=True)
        except OSError as err:  # full disk, read-only, a file where a folder belongs: the path and the fix
            message = describe_os_error(err, unit.args.get("root") or Path(unit.record).parent)
            failures.append(f"{unit.id}: {message}")
            print(f"unit {unit.id} failed: {message}", file=sys.stderr, flush=True)
        except Exception as err:
            failures.append(f"{unit.id}: {type(err).__name__}: {err}")
            traceback.print_exc()
    if failures:
        raise UnitsFailed(f"{len(failures)} of {len(units)} units failed:\n  " + "\n  ".join(failures))
    return results
