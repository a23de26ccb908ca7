"""verify's report: the shard records merged into the JSON report (the report unit), and what is printed of it."""

from __future__ import annotations

import time
from pathlib import Path

from launcher.check.fix import apply_fixes
from launcher.check.fixlog import split_of
from launcher.check.images import NOTES
from launcher.check.plan import VerifyPlan
from launcher.check.tarshard import record_fixes
from launcher.core import dispatch, runner
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json
from launcher.core.progress import human_bytes, table

REPORT_VERSION = 1


FAILURE_HINTS = {
    "meta": "meta.bin: run `launcher prepare` on a new root, or delete meta.bin and let torchvision "
    "write it from the devkit",
    "structure": "folders: move stray files and folders out of the root; restore missing ones from "
    "the archives (`launcher prepare` into a new root)",
    "exists": "missing or resized files: restore them from the archives (`launcher prepare` into a new root)",
    "header": "damaged files: restore them from the archives (`launcher prepare` into a new root)",
    "decode": "undecodable files: restore them from the archives (`launcher prepare` into a new root)",
    "totals": "counts: compare dataset.expected with what the archives hold (dataset=synthetic "
    "takes every count from the devkit)",
    "md5": "archives: download them again",
    "devkit": "devkit: download ILSVRC2012_devkit_t12.tar.gz again",
    "labels": "label files: extract the ones named above again from the label archive (its command is in the finding)",
    "shard": "a shard did not finish: see its job log, then run verify again",
    "archive": "archives of a tar index: put the original archive back, or run `launcher prepare "
    "storage.format=tar` again to index the one now there",
    "overlay": "overlay of a tar index: delete the record named above and run `launcher verify storage.format=tar "
    "verify.fix=true` again",
    "fix": "re-encoded files that fail: restore them from the archives (their old md5 is in the report)",
}

# storage.format=tar: the images are ranges of the archives, which verify never rewrites
TAR_HINTS = {
    check: f"{what} in the archives: download the archive again and run `launcher prepare storage.format=tar` "
    "into a new root (verify.fix=true re-encodes only PNG and CMYK images, into the overlay)"
    for check, what in (("exists", "missing ranges"), ("header", "damaged images"), ("decode", "undecodable images"))
}


def write_report(run: str) -> dict:
    """Report unit: merge the shard records of a run into the JSON report; after a fix, bring the
    manifest and prepare's records up to date with the new file sizes."""
    desc = read_json(Path(run))
    if desc is None:
        raise LauncherError(f"the run description {run} is missing or damaged: run `launcher verify` again")
    failures = [_finding(f) for f in desc["findings"]]
    notes = [_note(n) for n in desc["notes"]]
    counts = {
        split: {"classes": t["classes"], "images": 0, "checked": 0, "bytes": 0, **t}
        for split, t in desc["totals"].items()
    }
    fixed, shards = merge_shards(desc["shards"], counts, failures, notes)
    check_totals(counts, failures)
    md5 = md5_results(desc["md5"], failures)
    updated = (record_fixes if desc.get("format") == "tar" else apply_fixes)(desc, fixed) if fixed else []
    finished = time.time()
    report = {
        "version": REPORT_VERSION,
        "ok": not failures,
        "root": desc["root"],
        "format": desc.get("format", "folder"),
        "splits": desc["splits"],
        "level": desc["level"],
        "fix": desc["fix"],
        "run": desc["run"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(desc["started"])),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
        "wall_s": round(finished - desc["started"], 3),
        "expected_from": desc["source"],
        "checks": checks_summary(failures, notes, counts, md5, desc),
        "counts": counts,
        "md5": md5,
        "failures": failures,
        "notes": notes,
        "note_kinds": {k: NOTES[k] for k in sorted({n["kind"] for n in notes}) if k in NOTES},
        "fixed": fixed,
        "updated_records": updated,
        "shards": shards,
    }
    write_json(Path(desc["report"]), report, indent=1)
    verdict = {"ok": report["ok"], "failures": len(failures), "notes": len(notes), "report": desc["report"]}
    if not report["ok"]:  # the report job fails after its record is written: sacct and afterok see it
        verdict["job_fails"] = f"verify found {len(failures)} problems; report {desc['report']}"
    return verdict


def merge_shards(paths: list[str], counts: dict, failures: list, notes: list) -> tuple[list, list]:
    """The shard records added up into `counts`, their failures and notes appended; the files they
    fixed and a line per shard (a shard without a record is a failure)."""
    fixed, shards = [], []
    for path in paths:
        rec = read_json(Path(path))
        if rec is None:
            failures.append(_finding([Path(path).stem, "shard", "did not finish; its images were not checked"]))
            continue
        c = counts[rec["split"]]
        for key in ("images", "checked", "bytes"):
            c[key] += rec[key]
        failures += [_finding(f) for f in rec["failures"]]
        notes += [_note(n) for n in rec["notes"]]
        fixed += rec["fixed"]
        shards.append({k: rec.get(k) for k in ("unit", "host", "job", "wall_s", "cpu_s", "images", "bytes")})
    return fixed, shards


def check_totals(counts: dict, failures: list) -> None:
    """Each split's image count against what the devkit (or meta.bin) and dataset.expected announce."""
    for split, c in counts.items():
        for what, label in (("announced", c["announced_by"]), ("expected", f"dataset.expected.{split}")):
            if c[what] is not None and c["images"] != c[what]:
                failures.append(_finding([split, "totals", f"holds {c['images']} images, {label} says {c[what]}"]))


def md5_results(paths: list[str], failures: list) -> dict:
    """archive key -> whether its md5 matched (None when its unit did not finish), failures appended."""
    md5 = {}
    for path in paths:
        rec = read_json(Path(path))
        key = Path(path).stem.rsplit("-", 1)[-1]
        if rec is None:
            failures.append(_finding([key, "md5", "the md5 unit did not finish"]))
        elif not rec["ok"]:
            failures.append(_finding([Path(rec["path"]).name, "md5", rec["reason"]]))
        md5[key] = rec and rec["ok"]
    return md5


def _finding(f: list) -> dict:
    return {"path": f[0], "check": f[1], "reason": f[2]}


def _note(n: list) -> dict:
    return {"path": n[0], "kind": n[1], **({"note": n[2]} if n[2] else {})}


def checks_summary(failures: list, notes: list, counts: dict, md5: dict, desc: dict) -> dict:
    """check -> split -> {checked, failed, notes}: the rows of the summary table."""
    level = desc["level"]
    out: dict[str, dict] = {desc.get("labels_check", "meta"): {"-": {"checked": 1, "failed": 0, "notes": 0}}}
    for split, c in counts.items():
        out.setdefault("structure", {})[split] = {"checked": c["classes"], "failed": 0, "notes": 0}
        out.setdefault(f"files ({level})", {})[split] = {"checked": c["checked"], "failed": 0, "notes": 0}
        out.setdefault("totals", {})[split] = {"checked": c["images"], "failed": 0, "notes": 0}
    if md5:
        out["md5"] = {k: {"checked": 1, "failed": int(not ok), "notes": 0} for k, ok in md5.items()}
    file_checks = {"exists", "header", "decode", "fix"}
    for f in failures:
        if f["check"] == "md5":
            continue
        check = f"files ({level})" if f["check"] in file_checks else f["check"]
        where = split_of(f["path"], desc.get("folders"))
        row = out.setdefault(check, {}).setdefault(where, {"checked": 0, "failed": 0, "notes": 0})
        row["failed"] += 1
    for n in notes:
        where = split_of(n["path"], desc.get("folders"))
        check = f"files ({level})" if where != "-" else ("md5" if n["kind"] == "md5" else "structure")
        row = out.setdefault(check, {}).setdefault(where, {"checked": 0, "failed": 0, "notes": 0})
        row["notes"] += 1
    return out


def print_report(report: dict, path: Path, limit: int = 20) -> None:
    rows = []
    for check, per in report["checks"].items():
        for split, r in per.items():
            result = "FAILED" if r["failed"] else "ok"
            rows.append([check, split, r["checked"], r["failed"], r["notes"], result])
    print(table(["check", "split", "checked", "failed", "notes", "result"], rows, "llrrrl"))
    counts = report["counts"]
    print(
        "images: "
        + ", ".join(
            f"{s} {c['images']}"
            + (f" of {c['announced']}" if c["announced"] is not None else "")
            + f" ({human_bytes(c['bytes'])} read)"
            for s, c in counts.items()
        )
        + f"; expected layout from {report['expected_from'] or 'the folders alone (no devkit, no meta.bin)'}"
    )
    if report["notes"]:
        kinds: dict[str, int] = {}
        for n in report["notes"]:
            kinds[n["kind"]] = kinds.get(n["kind"], 0) + 1
        print("notes (valid files, not failures): " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        for kind, text in report["note_kinds"].items():
            print(f"  {kind}: {text}")
        for n in report["notes"][:limit]:
            print(f"  {n['path']}: {n['kind']}" + (f" ({n['note']})" if n.get("note") else ""))
    if report["fixed"]:
        print(f"fixed: {len(report['fixed'])} files re-encoded to RGB JPEG (see 'fixed' in the report)")
        for f in report["fixed"][:limit]:
            print(f"  {f['path']}: {f['old_kind']} {f['old_size']} -> {f['new_size']} bytes")
    failures = report["failures"]
    if failures:
        print(f"\nFAILED: {len(failures)} problems" + (f" (first {limit} below)" if len(failures) > limit else ""))
        for f in failures[:limit]:
            print(f"  {f['path']}: {f['check']}: {f['reason']}")
        print("what to do:")
        for check in dict.fromkeys(f["check"] for f in failures):
            hints = {**FAILURE_HINTS, **TAR_HINTS} if report.get("format") == "tar" else FAILURE_HINTS
            print(f"  {hints.get(check, check)}")
    else:
        print(f"\nverify {report['level']}: no problems in {', '.join(report['splits'])} of {report['root']}")
    print(f"report: {path}")


def print_submitted(p: VerifyPlan, backend: dispatch.Backend, folder: Path, jobs: list, report: Path, argv) -> None:
    print(runner.jobs_line(backend, folder, jobs))
    print(f"verify run {p.run_id}: its last job writes the report {report} once the others succeed")
    print(f"follow progress with: {runner.command_line('status', runner.status_args(argv))}")
