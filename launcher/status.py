"""status: per-unit state of the latest submission of each command for a root.

A unit is complete when its record exists; otherwise its latest job says queued, running or
failed (SLURM's word via sacct when accounting exists, else submitit's result files or, for local
jobs, whether the process lives). Failed units come with the tail of their job's log and the
command that resubmits what is missing.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from launcher import dispatch
from launcher.errors import LauncherError
from launcher.layout import Layout, read_json
from launcher.progress import table
from launcher.runner import command_line, latest_states, ledger_entries, rerun_args

WORDS = {"PENDING": "queued", "REQUEUED": "queued", "CONFIGURING": "queued", "SUSPENDED": "queued"}


def unit_state(record: Path, job: tuple | None) -> str:
    if read_json(record) is not None:  # a damaged record is reported and counts as missing
        return "complete"
    if job is None:
        return "not submitted"
    state = job[3]
    if state in dispatch.ACTIVE:
        return WORDS.get(state, "running")
    if state in dispatch.FAILED or state == "COMPLETED":  # a completed job without the record: the unit failed
        return "failed"
    return "unknown"


def latest_by_command(layout: Layout) -> dict[str, dict]:
    entries = ledger_entries(layout)
    if not entries:
        found = f"no readable entry in {layout.ledger}" if layout.ledger.exists() else f"no {layout.ledger}"
        raise LauncherError(
            f"no submissions recorded for {layout.root} ({found}). Run `launcher prepare` "
            "(or verify) with the same storage options first."
        )
    latest: dict[str, dict] = {}
    for entry in entries:
        latest[entry["command"]] = entry
    return latest


def command_status(layout: Layout, entry: dict, tail_lines: int) -> tuple[list[list], list[str], Counter]:
    records = Path(entry.get("records_dir", layout.units_dir))
    jobs = latest_states(layout, entry["plan"])
    logs = {(e["folder"], j["job_id"]): j["stderr"] for e in ledger_entries(layout) for j in e["jobs"]}
    rows, failures, counts = [], [], Counter()
    for uid in entry["plan"]:
        record = Path(entry.get("records", {}).get(uid) or records / f"{uid}.json")
        state = unit_state(record, jobs.get(uid))
        counts[state] += 1
        job = jobs.get(uid)
        rows.append([uid, state, job[2] if job else "", job[3].lower() if job else ""])
        if state == "failed":
            log = logs.get((job[1], job[2]), "")
            failures.append(f"--- {uid} (job {job[2]}, log {log})\n" + dispatch.tail(log, tail_lines).rstrip())
    return rows, failures, counts


def verdict_ok(entry: dict, records: Path) -> bool:
    """A finished verify says its verdict, the count of problems and the report; False if it failed."""
    if entry.get("command") != "verify" or (done := read_json(records / "verify-report.json")) is None:
        return True
    if done.get("ok"):
        print(f"verify: ok, no problems; report {done.get('report')}")
        return True
    print(f"verify: FAILED, {done.get('failures')} problems; report {done.get('report')}")
    return False


def show_status(layout: Layout, tail_lines: int = 20) -> int:
    """Print the status of every command's latest submission; exit code 1 if a unit failed."""
    failed_any = False
    for command, entry in latest_by_command(layout).items():
        rows, failures, counts = command_status(layout, entry, tail_lines)
        summary = ", ".join(f"{n} {state}" for state, n in counts.most_common())
        print(f"\n{command}: submitted {entry['time']} to {entry['cluster']} ({entry['executor']}); {summary}")
        print(table(["unit", "state", "job", "job state"], rows, "llll"))
        if not verdict_ok(entry, Path(entry.get("records_dir", layout.units_dir))):
            failed_any = True
        if failures:
            failed_any = True
            print(f"\nfailed units of {command}, with the end of their logs:")
            print("\n".join(failures))
            again = command_line(command, rerun_args(entry.get("argv", [])))
            print(f"\nafter fixing the cause, resubmit what is missing with:\n  {again}")
    print(f"\nroot {layout.root}; ledger {layout.ledger}")
    return 1 if failed_any else 0


def is_done(layout: Layout, split: str) -> bool:
    return os.path.exists(layout.complete_file(split)) and read_json(layout.complete_file(split)) is not None
