"""verify's plan: shards of class folders balanced by bytes, the md5 units and the report unit of a run."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.check.request import VerifyRequest
from launcher.core.layout import write_json
from launcher.core.units import Unit

# on SLURM, where each job costs start-up, a default shard holds at least this many image bytes
SLURM_MIN_SHARD_BYTES = {"exists": 16 << 30, "header": 4 << 30, "decode": 512 << 20}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def shard_id(split: str, level: str, i: int, n: int) -> str:
    return f"verify-{split}-{level}-{i:04d}-of-{n:04d}"


def shard_unit(
    req: VerifyRequest,
    split: str,
    uid: str,
    classes: list[dict],
    size: int,
    run_dir: Path,
    processes: int,
    extra: dict | None = None,
) -> Unit:
    """The verify unit of one shard, its input (the classes and how to check them, and `extra`: what
    a dataset's own checker reads) written beside the run."""
    spec = {
        **(extra or {}),
        "split": split,
        "pattern": req.train_image_pattern if split == "train" else req.val_image_pattern,
        "expected": str(run_dir / "expected.json"),
        "quality": req.fix_quality,
        "state_dir": str(run_dir.parent.parent),
        "run": run_dir.name,
        "limits": {k: getattr(req.limits, k) for k in ("max_file_bytes", "max_pixels", "max_scans")},
        "classes": classes,
    }
    write_json(run_dir / "inputs" / f"{uid}.json", spec)
    return Unit(
        uid,
        "verify",
        size,
        str(run_dir / "units" / f"{uid}.json"),
        {
            "root": str(req.layout.root),
            "split": split,
            "input": str(run_dir / "inputs" / f"{uid}.json"),
            "level": req.level,
            "fix": req.fix,
            "processes": processes,
        },
    )


def md5_units(req: VerifyRequest, run_dir: Path, notes: list) -> list[Unit]:
    units = []
    order = [req.labels_key, "train", "val"]
    keys = sorted({k for s in req.splits for k in (req.labels_key, s)}, key=order.index)
    for key in keys:
        name, md5 = req.archives[key]
        path = req.find_archive(key)
        if path is None or not md5:
            why = (
                "not found in storage.archive_dir or the root"
                if path is None
                else f"dataset.archives.{key}.md5 is null"
            )
            notes.append([name, "md5", f"md5 not checked: {why}"])
            continue
        uid = f"verify-md5-{key}"
        units.append(
            Unit(
                uid,
                "verify-md5",
                path.stat().st_size,
                str(run_dir / "units" / f"{uid}.json"),
                {"path": str(path), "expected": md5, "key": key},
            )
        )
    return units


@dataclass
class RootPlanning:
    """What a dataset's plan_root plans with: how many shards, the least bytes of one (SLURM), the
    processes of a shard, and the findings and notes it appends to."""

    n_shards: int
    min_bytes: int
    processes: int
    findings: list
    notes: list


@dataclass
class RootPlan:
    """What a dataset's plan_root found: the shard units and, per split, the totals the report
    compares with; where the expected layout came from, its classes and val labels (None: unknown),
    and the name of the label-file check in the summary."""

    shards: list[Unit]
    totals: dict[str, dict]
    source: str | None
    classes: int | None
    val_wnids: int | None
    labels_check: str


@dataclass
class VerifyPlan:
    run_id: str
    run_dir: Path
    shards: list[Unit]
    md5: list[Unit]
    report: Unit


def make_plan(req: VerifyRequest, parallelism: int, processes: int, min_bytes: int = 0) -> VerifyPlan:
    """Check what is cheap here (the dataset's verify_rules().plan_root: its label files, the top level,
    the split folders), write the shards' inputs and the run description the report unit reads."""
    from launcher.datasets import adapter_of

    layout = req.layout
    run_id = new_run_id()
    run_dir = layout.state_dir / "verify" / run_id
    findings: list[list] = []
    notes: list[list] = []
    n_shards = req.shards or 2 * parallelism
    if req.storage_format == "tar":
        plan_root = adapter_of(req.adapter).tar_verify_rules().plan_tar_root
    else:
        plan_root = adapter_of(req.adapter).verify_rules().plan_root
    root = plan_root(req, run_dir, RootPlanning(n_shards, min_bytes, processes, findings, notes))
    md5 = md5_units(req, run_dir, notes) if req.check_md5 else []
    report = Unit(
        "verify-report",
        "verify-report",
        0,
        str(run_dir / "units" / "verify-report.json"),
        {"run": str(run_dir / "run.json")},
    )
    write_json(
        run_dir / "run.json",
        {
            "run": run_id,
            "started": time.time(),
            "root": str(layout.root),
            "format": req.storage_format,
            "state_dir": str(layout.state_dir),
            "splits": req.splits,
            "level": req.level,
            "fix": req.fix,
            "report": str(req.report or layout.state_dir / "verify.json"),
            "source": root.source,
            "classes": root.classes,
            "val_wnids": root.val_wnids,
            "labels_check": root.labels_check,
            "folders": dict(layout.folders),
            "findings": findings,
            "notes": notes,
            "totals": root.totals,
            "shards": [u.record for u in root.shards],
            "md5": [u.record for u in md5],
        },
        indent=1,
    )
    return VerifyPlan(run_id, run_dir, root.shards, md5, report)
