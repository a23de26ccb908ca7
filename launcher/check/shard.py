"""verify's units: a shard of class folders checked file by file (names, labels, counts, images), and
the archives' md5."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from launcher.check.fix import FIXABLE, fix_one
from launcher.check.imagebounds import Limits
from launcher.check.images import NOTES, probe
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json

# the real val images' names (the dataset's fact, used to name a missing val image)
VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"


def check_class(root: str, split: str, cls: dict, level: str, ctx: dict) -> dict:
    """Every entry of root/<split>/<wnid>: names, labels, counts, and each image at `level`.

    cls: {"wnid", "count": devkit count or None, "files": [[name, size], ...] from the manifest or None}
    ctx: {"pattern": image name regex template, "val_wnids": list or None, "val_numbers": wnid -> its
          val image numbers, "fix": bool, "quality": int, "limits": Limits' fields}
    """
    wnid = cls["wnid"]
    rel, folder = f"{split}/{wnid}", os.path.join(root, split, wnid)
    failures, notes, fixed = [], [], []
    out = {"wnid": wnid, "images": 0, "checked": 0, "bytes": 0, "failures": failures, "notes": notes, "fixed": fixed}

    def fail(name: str | None, check: str, reason: str) -> None:
        failures.append([f"{rel}/{name}" if name else rel, check, reason])

    try:
        entries = sorted((e.name, e.is_dir()) for e in os.scandir(folder))
    except OSError as err:
        fail(None, "structure", f"cannot list the class folder: {err.strerror or err}")
        return out
    manifest = {name: size for name, size in cls["files"]} if cls.get("files") is not None else None
    accepted, seen = accept_entries(entries, split, wnid, manifest, ctx, fail)
    report_missing(split, cls, accepted, seen, manifest, ctx, fail)
    out["images"] = len(accepted)
    check_images(folder, rel, accepted, level, manifest, ctx, out, fail)
    return out


def accept_entries(
    entries: list[tuple[str, bool]], split: str, wnid: str, manifest: dict | None, ctx: dict, fail: Callable
) -> tuple[list[str], set[int]]:
    """The image names of a class folder that belong there (and the val numbers among them); every
    other entry is a failure: a folder, a temporary, a stray or misplaced file."""
    val_wnids = ctx.get("val_wnids")
    own = re.compile(ctx["pattern"].replace("{wnid}", re.escape(wnid)), re.ASCII)
    anyone = re.compile(ctx["pattern"].replace("{wnid}", "(.+?)"), re.ASCII) if split == "train" else None
    accepted: list[str] = []
    seen: set[int] = set()
    for name, is_dir in entries:
        if is_dir:
            fail(name, "structure", f"a folder in a class folder: ImageFolder reads its images as {wnid}; move it out")
        elif name.endswith(".part"):
            fail(name, "structure", "temporary file of an interrupted prepare or verify.fix; delete it")
        elif split == "train":
            if (name in manifest) if manifest is not None else own.fullmatch(name):
                accepted.append(name)
            else:
                fail(name, "structure", _train_extra(name, wnid, anyone, manifest is not None))
        elif not (match := own.fullmatch(name)):
            fail(name, "structure", "stray file: not an ILSVRC2012 val image name; move it out")
        elif (number := _val_number(name, int(match.group(1)), wnid, val_wnids, manifest, fail)) is not None:
            accepted.append(name)
            seen.add(number)
    return accepted, seen


def _val_number(
    name: str, number: int, wnid: str, val_wnids: list | None, manifest: dict | None, fail: Callable
) -> int | None:
    """The number of val image `name` when its label puts it in `wnid` (and the manifest lists it);
    else None, the failure said."""
    truth = val_wnids[number - 1] if val_wnids and 1 <= number <= len(val_wnids) else None
    if val_wnids and truth is None:
        fail(name, "structure", f"val image {number} has no label: the ground truth has {len(val_wnids)}")
    elif truth is not None and truth != wnid:
        why = f"in the wrong class folder: the ground truth puts val image {number} in {truth}"
        fail(name, "structure", f"{why}; move it to val/{truth}/")
    elif manifest is not None and name not in manifest:
        fail(name, "structure", "extra file: not in the manifest of val; move it out")
    else:
        return number
    return None


def report_missing(
    split: str, cls: dict, accepted: list[str], seen: set[int], manifest: dict | None, ctx: dict, fail: Callable
) -> None:
    """What should be in the class folder and is not: the manifest's files, the ground truth's val
    images, the devkit's count of train images."""
    wnid = cls["wnid"]
    if manifest is not None:  # what should be here and is not
        present = set(accepted)
        for name, size in cls["files"]:
            if name not in present:
                fail(name, "exists", f"missing: listed in the manifest ({size} bytes)")
    elif split == "val":
        for number in ctx.get("val_numbers", {}).get(wnid, []):
            if number not in seen:
                fail(VAL_NAME.format(number), "exists", "missing: the ground truth puts this val image here")
    if split == "train" and cls.get("count") is not None and len(accepted) != cls["count"]:
        fail(None, "structure", f"holds {len(accepted)} images, the devkit's num_train_images says {cls['count']}")


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
        if r.note:
            extra = r.note.removeprefix(NOTES[r.kind]).lstrip("; ") if r.kind in NOTES else r.note
            notes.append([f"{rel}/{name}", r.kind or "warning", extra])  # the kind's text is in the report once
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


def _train_extra(name: str, wnid: str, anyone: re.Pattern | None, listed: bool) -> str:
    match = anyone.fullmatch(name) if anyone else None
    if match and match.group(1) != wnid:
        return f"in the wrong class folder: the name says class {match.group(1)}; move it to train/{match.group(1)}/"
    if listed:
        return "extra file: not in the manifest of train; move it out"
    return f"stray file: not a train image name of class {wnid}; move it out"


def _check_class_args(args) -> dict:
    check, rest = args[0], args[1:]
    return check(*rest)


def checker_of(spec: dict) -> Callable:
    """The check of a shard's items: ImageNet's check_class, or the one of the dataset's verify rules
    the shard's input names (spec["rules"]: a dataset.adapter, looked up among the adapters)."""
    if not spec.get("rules"):
        return check_class
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
