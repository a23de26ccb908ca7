"""verify's units: a shard of class folders, each checked by the check_class of its dataset's verify
rules (names, labels, counts) and its images by check_images here; and the archives' md5."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from launcher.check.fix import FIXABLE, fix_one
from launcher.check.imagebounds import Limits
from launcher.check.images import NOTES, FileResult, probe
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json


def check_images(
    folder: str, rel: str, accepted: list[str], level: str, manifest: dict | None, ctx: dict, out: dict, fail: Callable
) -> None:
    """Each accepted image probed at `level` (counted in `out`), its note kept, and with verify.fix an
    odd one re-encoded and probed again."""
    limits = Limits(**ctx.get("limits", {}))
    notes, fixed = out["notes"], out["fixed"]
    for name in accepted:
        path = os.path.join(folder, name)
        r = probe(path, level, manifest.get(name) if manifest is not None else None, limits)
        out["checked"] += 1
        out["bytes"] += r.size
        if not r.ok:
            fail(name, r.check, r.reason)
            continue
        add_note(notes, f"{rel}/{name}", r)
        if ctx.get("fix") and r.kind in FIXABLE:
            change, why, failed = fix_one(path, r.kind, ctx, f"{rel}/{name}")
            if change is None:
                if failed:
                    fail(name, "fix", why)
                else:
                    notes.append([f"{rel}/{name}", "unfixable", why])
                continue
            again = probe(path, level, None, limits)
            fixed.append({"path": f"{rel}/{name}", **change, "ok": again.ok})
            if not again.ok:
                fail(name, "fix", f"the re-encoded file fails {again.check}: {again.reason}")


def add_note(notes: list, rel: str, r: FileResult) -> None:
    """The note of an odd but valid image, without the kind's text (the report holds it once)."""
    if r.note:
        extra = r.note.removeprefix(NOTES[r.kind]).lstrip("; ") if r.kind in NOTES else r.note
        notes.append([rel, r.kind or "warning", extra])


def _check_class_args(args) -> dict:
    check, rest = args[0], args[1:]
    return check(*rest)


def checker_of(spec: dict) -> Callable:
    """The check of a shard's items: check_class of the verify rules of the dataset the shard's input
    names (spec["rules"]: a dataset.adapter, looked up among the adapters)."""
    from launcher.datasets import adapter_of

    return adapter_of(spec["rules"]).verify_rules().check_class


def verify_shard(root: str, split: str, input: str, level: str, fix: bool = False, processes: int = 1) -> dict:
    """Verify unit: the class folders listed in `input` (a JSON file of the run), every file at `level`."""
    t0, cpu0 = time.perf_counter(), sum(os.times()[:4])
    spec = read_json(Path(input))
    val_wnids = None
    if split == "val" and spec.get("expected"):
        val_wnids = read_json(Path(spec["expected"])).get("val_wnids")
    numbers: dict[str, list[int]] = {}
    for number, wnid in enumerate(val_wnids or [], start=1):
        numbers.setdefault(wnid, []).append(number)
    ctx = {"pattern": spec["pattern"], "val_wnids": val_wnids, "val_numbers": numbers, "fix": fix}
    ctx["quality"] = spec.get("quality", 95)
    ctx["state_dir"], ctx["run"] = spec.get("state_dir"), spec.get("run", "")
    ctx["limits"] = spec.get("limits", {})
    ctx["extra"] = spec.get("extra", {})
    check = checker_of(spec)
    jobs = [(check, root, split, cls, level, ctx) for cls in spec["classes"]]
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(processes, len(jobs))) as pool:
            results = list(pool.map(_check_class_args, jobs, chunksize=max(1, len(jobs) // (4 * processes))))
    else:
        results = [_check_class_args(job) for job in jobs]
    return {
        "split": split,
        "level": level,
        "classes": len(results),
        "images": sum(r["images"] for r in results),
        "checked": sum(r["checked"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "counts": {r["wnid"]: r["images"] for r in results},
        "failures": [f for r in results for f in r["failures"]],
        "notes": [n for r in results for n in r["notes"]],
        "fixed": [x for r in results for x in r["fixed"]],
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_s": round(sum(os.times()[:4]) - cpu0, 3),
    }


def verify_md5(path: str, expected: str, key: str) -> dict:
    """Verify md5 unit: like prepare's, but a mismatch is a finding of the report, not an error."""
    from launcher.archive.extract import check_md5

    try:
        return {"ok": True, "key": key, **check_md5(path, expected, key)}
    except LauncherError as err:
        return {"ok": False, "key": key, "path": path, "reason": str(err)}
