"""status: the state of the latest submission of each command for a root, one line per split.

A unit is complete when its record exists (the job shown is the one its record names: the job that
ran it); otherwise its latest job says queued (with SLURM's reason, e.g. Dependency or
JobArrayTaskLimit), running or failed (SLURM's word via sacct when accounting exists, else
submitit's result files or, for local jobs, whether the process lives). A local job that is gone
without a result was interrupted (Ctrl-C, a kill). By default one line per split (counts, images
and bytes done, rate, ETA), then the failed units with the tail of their logs and the command that
resubmits what is missing; `status.units=true` adds a row per unit, `status.json=true` prints all of
it as one JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher.core import backends, dispatch
from launcher.core.errors import LauncherError
from launcher.core.layout import SPLITS, Layout, read_json
from launcher.core.progress import human_bytes, human_seconds, table
from launcher.core.runner import latest_states, ledger_entries

WORDS = {"PENDING": "queued", "REQUEUED": "queued", "CONFIGURING": "queued", "SUSPENDED": "queued"}
PENDING = ("queued", "not submitted")
STOPPED = ("interrupted", "unknown")
# units whose records count what others wrote (finalize, reports) or bytes only read (md5)
NOT_WRITERS = ("finalize-", "md5-", "verify-md5-", "verify-report")


@dataclass
class UnitStatus:
    unit: str
    part: str
    state: str
    job: str = ""
    job_state: str = ""
    reason: str = ""
    log: str = ""
    size: int = 0
    images: int = 0
    bytes: int = 0
    started: float | None = None
    wall_s: float | None = None


@dataclass
class PartStatus:
    part: str
    units: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0
    bytes: int = 0
    rate_bytes_s: float | None = None
    eta_s: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)


def part_of(unit_id: str) -> str:
    """The split a unit works for, or `common` (meta.bin, the devkit's md5, a report)."""
    for split in SPLITS:
        if re.search(rf"(?:^|-){split}(?:-|$)", unit_id, re.ASCII):
            return split
    return "common"


def unit_state(record: Path, job: tuple | None) -> str:
    if read_json(record) is not None:  # a damaged record is reported and counts as missing
        return "complete"
    if job is None:
        return "not submitted"
    executor, state = job[0], job[3]
    if state in dispatch.ACTIVE:
        return WORDS.get(state, "running")
    if state in dispatch.FAILED or state == "COMPLETED":  # a completed job without the record: the unit failed
        return "failed"
    if not backends.outlives_launcher(executor):  # a local job gone without a result: stopped by Ctrl-C or a kill
        return "interrupted"
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


def claimed_by(folder: str, unit_id: str) -> str:
    """The local job that claimed a unit of a shared queue (runner writes its id into the claim)."""
    for claim in Path(folder).glob(f"claims-*/{unit_id}"):
        try:
            return claim.read_text().strip()
        except OSError:
            return ""
    return ""


def unit_statuses(layout: Layout, entry: dict) -> list[UnitStatus]:
    """Each unit of a submission's plan: its state, and the job that ran (or runs) it."""
    records_dir = Path(entry.get("records_dir", layout.units_dir))
    jobs = latest_states(layout, entry["plan"])
    logs = {(e["folder"], j["job_id"]): j["stderr"] for e in ledger_entries(layout) for j in e["jobs"]}
    sizes = entry.get("sizes", {})
    out = []
    for uid in entry["plan"]:
        record = Path(entry.get("records", {}).get(uid) or records_dir / f"{uid}.json")
        job = jobs.get(uid)
        status = UnitStatus(uid, part_of(uid), unit_state(record, job), size=sizes.get(uid, 0))
        if status.state == "complete":
            fill_from_record(status, read_json(record) or {})
        elif job is not None:
            shared = backends.shares_queue(job[0])
            claimed = claimed_by(job[1], uid) if shared else ""
            if status.state == "running" and shared and not claimed:
                status.state = "queued"  # in the shared queue of local jobs, not claimed by one yet
            ran = claimed or job[2]
            status.job, status.job_state = ran, job[3].lower()
            status.log = logs.get((job[1], ran), logs.get((job[1], job[2]), ""))
        out.append(status)
    add_pending_reasons(out, jobs)
    return out


def fill_from_record(status: UnitStatus, record: dict) -> None:
    status.job, status.job_state = str(record.get("job", "")), "completed"
    status.images, status.bytes = int(record.get("images") or 0), int(record.get("bytes") or 0)
    status.started, status.wall_s = record.get("started"), record.get("wall_s")


def add_pending_reasons(statuses: list[UnitStatus], jobs: dict) -> None:
    """SLURM's reason (squeue %r) for each queued unit: Dependency, JobArrayTaskLimit, Priority..."""
    queued = [s for s in statuses if s.state == "queued" and backends.outlives_launcher(jobs.get(s.unit, ("",))[0])]
    reasons = dispatch.squeue_reasons(sorted({s.job for s in queued}))
    for s in queued:
        s.reason = reasons.get(s.job, "")


def submitted_at(entry: dict) -> float:
    """The ledger's local time of a submission, as seconds since the epoch."""
    try:
        return time.mktime(time.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, ValueError):
        return 0.0


def summarize_part(part: str, statuses: list[UnitStatus], since: float, now: float) -> PartStatus:
    """Counts, images and bytes done, and the rate and ETA of the units finished since the submission."""
    counts = Counter(s.state for s in statuses)
    ps = PartStatus(part, len(statuses), dict(counts), reasons=dict(Counter(s.reason for s in statuses if s.reason)))
    done = [s for s in statuses if s.state == "complete"]
    writers = [s for s in done if not s.unit.startswith(NOT_WRITERS)]
    ps.images, ps.bytes = sum(s.images for s in writers), sum(s.bytes for s in writers)
    recent = [s for s in done if s.started and s.started >= since - 1 and s.wall_s is not None]
    remaining = [s for s in statuses if s.state != "complete"]
    moving = any(s.state in ("running", "queued") for s in remaining)  # failed units have no ETA
    if recent and remaining and moving:
        start = min(s.started for s in recent)
        elapsed = max(max(s.started + s.wall_s for s in recent), now) - start
        ps.rate_bytes_s = sum(s.bytes for s in recent) / elapsed if elapsed > 0 else None
        ps.eta_s = eta(recent, remaining, elapsed)
    return ps


def eta(recent: list[UnitStatus], remaining: list[UnitStatus], elapsed: float) -> float | None:
    """Seconds left at the pace so far: by the bytes the units read when known, else by unit count."""
    if sum(s.size for s in recent):  # the ledger has each unit's bytes
        return elapsed * sum(s.size for s in remaining) / sum(s.size for s in recent)
    return elapsed * len(remaining) / len(recent)


def reasons_text(reasons: dict[str, int]) -> str:
    """SLURM's pending reasons: `Dependency`, or `JobArrayTaskLimit 3, Priority 1` when they differ."""
    if len(reasons) == 1:
        return next(iter(reasons))
    return ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))


def part_line(ps: PartStatus) -> str:
    """`train  4/6 complete, 1 running, 1 queued (JobArrayTaskLimit); 120 images, 5.1 MB; 1.2 MB/s; ETA 4s`"""
    c = ps.counts
    words = [f"{c.get('complete', 0)}/{ps.units} complete"]
    for state in ("running", "queued", "not submitted", "failed", "interrupted", "unknown"):
        if c.get(state):
            words.append(
                f"{c[state]} {state}" + (f" ({reasons_text(ps.reasons)})" if state == "queued" and ps.reasons else "")
            )
    line = ", ".join(words)
    if ps.images or ps.bytes:
        line += "; " + (f"{ps.images} images, " if ps.images else "") + f"{human_bytes(ps.bytes)} done"
    if ps.rate_bytes_s:
        line += f"; {human_bytes(ps.rate_bytes_s)}/s"
    if ps.eta_s is not None:
        line += f"; ETA {human_seconds(ps.eta_s)}"
    return line


def command_summary(layout: Layout, entry: dict) -> tuple[list[UnitStatus], list[PartStatus]]:
    statuses = unit_statuses(layout, entry)
    since, now = submitted_at(entry), time.time()
    parts = [p for p in ("common", *SPLITS) if any(s.part == p for s in statuses)]
    return statuses, [summarize_part(p, [s for s in statuses if s.part == p], since, now) for p in parts]


def resubmit_line(command: str, entry: dict) -> str:
    """The command of the submission again, with the storage paths it resolved (from environment
    variables too) made explicit, so that it reproduces the run wherever it is pasted."""
    args = [a for a in entry.get("argv", []) if not a.startswith("wait=")]
    storage = entry.get("config", {}).get("storage", {})
    for key in ("archive_dir", "root", "state_dir"):
        if storage.get(key) and not any(a.startswith(f"storage.{key}=") for a in args):
            args.append(f"storage.{key}={storage[key]}")
    return " ".join(["launcher", command, *map(shlex.quote, args)])


def prepare_again(layout: Layout) -> str | None:
    """The last `launcher prepare` recorded for the root, to paste (resubmit_line), or None."""
    from launcher.core.runner import ledger_entries

    entries = [e for e in ledger_entries(layout) if e.get("command") == "prepare"]
    return resubmit_line("prepare", entries[-1]) if entries else None


def failure_texts(failed: list[UnitStatus], tail_lines: int) -> list[str]:
    """The end of each failing job's log once, under the units that failed in it."""
    by_log: dict[str, list[UnitStatus]] = {}
    for s in failed:
        by_log.setdefault(s.log, []).append(s)
    texts = []
    for log, units in by_log.items():
        names = ", ".join(s.unit for s in units[:8]) + (f" and {len(units) - 8} more" if len(units) > 8 else "")
        head = f"--- {names} (job {units[0].job or '-'}, log {log or '-'})"
        text = log_tail(log, tail_lines) if log else ""
        if not text and units[0].job_state:
            text = (
                f"(no log: job {units[0].job} ended {units[0].job_state} before it ran, e.g. a job it waits on failed)"
            )
        texts.append(head + ("\n" + text if text else ""))
    return texts


def log_tail(log: str, lines: int) -> str:
    """The last lines of a job's log, Python traceback frames left out (the unit's own error line and
    the exception's message stay), so that the reason fits in the tail."""
    kept, frames = [], 0
    for line in dispatch.tail(log, 100_000).rstrip().splitlines():
        if line.startswith("Traceback (most recent call last):"):
            frames = 1
        elif frames and line[:1].isspace():
            frames += 1
        else:
            if frames:
                kept.append(f"Traceback ({frames - 1} lines of frames left out)")
            kept.append(line)
            frames = 0
    return "\n".join(kept[-lines:])


def stopped_text(stopped: list[UnitStatus]) -> str:
    names = ", ".join(s.unit for s in stopped[:8]) + (f" and {len(stopped) - 8} more" if len(stopped) > 8 else "")
    words = " or ".join(sorted({s.state for s in stopped}))
    return f"{len(stopped)} units {words} (their jobs ended without a result: Ctrl-C, a kill): {names}"


def print_command(command: str, entry: dict, statuses, parts, units: bool, tail_lines: int) -> bool:
    """Text status of one command; True when a unit failed."""
    print(f"\n{command}: submitted {entry['time']} to {entry['cluster']} ({entry['executor']}); {len(statuses)} units")
    width = max(len(p.part) for p in parts)
    for ps in parts:
        print(f"  {ps.part.ljust(width)}  {part_line(ps)}")
    if units:
        rows = [
            [s.unit, s.state, s.job, s.reason or s.job_state, s.images or "", human_bytes(s.bytes)] for s in statuses
        ]
        print(table(["unit", "state", "job", "job state", "images", "bytes"], rows, "llllrr"))
    failed = [s for s in statuses if s.state == "failed"]
    stopped = [s for s in statuses if s.state in STOPPED]
    if failed:
        print(f"\nfailed units of {command}, with the end of their logs:")
        print("\n".join(failure_texts(failed, tail_lines)))
    if stopped:
        print("\n" + stopped_text(stopped))
    if failed or stopped:
        print(f"\nafter fixing the cause, resubmit what is missing with:\n  {resubmit_line(command, entry)}")
    elif left_behind(statuses):
        names = ", ".join(s.unit for s in left_behind(statuses)[:8])
        print(
            f"\nnot submitted and nothing left running: {names}. They run when the launcher waits for the jobs "
            f"they follow (a run with wait=false on cluster={entry['executor']} leaves them); finish with:\n"
            f"  {resubmit_line(command, entry)}"
        )
    return bool(failed)


def left_behind(statuses: list[UnitStatus]) -> list[UnitStatus]:
    """Units never submitted while no unit runs or waits in a queue: nothing will run them."""
    if any(s.state in ("running", "queued") for s in statuses):
        return []
    return [s for s in statuses if s.state == "not submitted"]


def status_json(layout: Layout, summaries: dict, tail_lines: int) -> dict:
    commands = {}
    for command, (entry, statuses, parts) in summaries.items():
        commands[command] = {
            "submitted": entry["time"],
            "cluster": entry["cluster"],
            "executor": entry["executor"],
            "counts": dict(Counter(s.state for s in statuses)),
            "splits": {p.part: asdict(p) for p in parts},
            "units": [asdict(s) for s in statuses],
            "failed": [
                {"unit": s.unit, "job": s.job, "log": s.log, "tail": dispatch.tail(s.log, tail_lines) if s.log else ""}
                for s in statuses
                if s.state == "failed"
            ],
            "resubmit": resubmit_line(command, entry),
            "verdict": verify_verdict(entry, Path(entry.get("records_dir", layout.units_dir))),
        }
    ok = not any(c["counts"].get("failed") or (c["verdict"] and not c["verdict"]["ok"]) for c in commands.values())
    return {
        "root": str(layout.root),
        "dataset": root_dataset_name(layout),
        "format": root_format(layout),
        "ledger": str(layout.ledger),
        "ok": ok,
        "commands": commands,
    }


def root_dataset_name(layout: Layout) -> str | None:
    """The dataset config the root was prepared with, as its identity record says."""
    from launcher.prepare.guards import root_dataset

    return (root_dataset(layout) or {}).get("name")


def root_format(layout: Layout) -> str | None:
    """The storage.format the root's prepare was started in (whether it finished or not)."""
    from launcher.prepare.guards import started_format

    return started_format(layout)


def root_line(layout: Layout) -> str:
    """The last line of status: the root, the dataset and storage.format it was prepared with, the ledger."""
    known = [
        f"{key}={value}"
        for key, value in (("dataset", root_dataset_name(layout)), ("storage.format", root_format(layout)))
        if value
    ]
    return f"root {layout.root}" + (f" ({', '.join(known)})" if known else "") + f"; ledger {layout.ledger}"


def verify_verdict(entry: dict, records: Path) -> dict | None:
    """A finished verify's verdict: ok, the count of problems and the report (None for other commands)."""
    if entry.get("command") != "verify" or (done := read_json(records / "verify-report.json")) is None:
        return None
    return {"ok": bool(done.get("ok")), "problems": done.get("failures"), "report": done.get("report")}


def verdict_ok(entry: dict, records: Path) -> bool:
    """A finished verify says its verdict, the count of problems and the report; False if it failed."""
    if (verdict := verify_verdict(entry, records)) is None:
        return True
    if verdict["ok"]:
        print(f"verify: ok, no problems; report {verdict['report']}")
        return True
    print(f"verify: FAILED, {verdict['problems']} problems; report {verdict['report']}")
    return False


def show_status(layout: Layout, tail_lines: int = 20, units: bool = False, as_json: bool = False) -> int:
    """Print the status of every command's latest submission; exit code 1 if a unit failed."""
    summaries = {}
    for command, entry in latest_by_command(layout).items():
        statuses, parts = command_summary(layout, entry)
        summaries[command] = (entry, statuses, parts)
    if as_json:
        report = status_json(layout, summaries, tail_lines)
        print(json.dumps(report, indent=1))
        return 0 if report["ok"] else 1
    failed_any = False
    for command, (entry, statuses, parts) in summaries.items():
        failed_any |= print_command(command, entry, statuses, parts, units, tail_lines)
        if not verdict_ok(entry, Path(entry.get("records_dir", layout.units_dir))):
            failed_any = True
    print("\n" + root_line(layout))
    return 1 if failed_any else 0


def is_done(layout: Layout, split: str) -> bool:
    return os.path.exists(layout.complete_file(split)) and read_json(layout.complete_file(split)) is not None
