"""ImageNet's rules for `launcher verify` (launcher.check asks them through the adapter's
verify_rules()): the expected classes from the devkit (or meta.bin), meta.bin checked, the top level
and the split folders looked at here, and shards of WNID class folders, each checked file by file by check_class (names,
labels, counts; the images by launcher.check.shard.check_images)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from launcher.check.plan import RootPlan, RootPlanning, shard_id, shard_unit
from launcher.check.request import VerifyRequest
from launcher.check.shard import check_images
from launcher.check.structure import read_state_manifest
from launcher.core import completion, plan
from launcher.core.layout import ROOT_ID_FILE, SPLITS, write_json
from launcher.core.units import Unit
from launcher.datasets.imagenet.meta import check_meta, expected_layout


def plan_root(req: VerifyRequest, run_dir: Path, how: RootPlanning) -> RootPlan:
    """meta.bin against the devkit, the top level, then per split its folders and manifest, and the
    shards of its class folders; the expected layout written to the run's expected.json."""
    layout, findings = req.layout, how.findings
    exp = expected_layout(req, findings)
    meta = check_meta(layout.root, exp, req.expected.get("classes"), findings, req.limits, req.expected)
    if not exp.get("source") and meta is not None:
        exp = {"source": "meta.bin (no devkit found)", "by": "meta.bin", **meta, "num_train_images": None}
    write_json(run_dir / "expected.json", {k: exp.get(k) for k in ("source", "val_wnids", "num_train_images")})
    check_top(req, findings, how.notes)
    shards, totals = plan_splits(req, exp, findings, how.n_shards, run_dir, how.min_bytes, how.processes)
    return RootPlan(
        shards,
        totals,
        exp.get("source"),
        len(exp.get("wnid_to_classes") or {}) or None,
        len(meta["val_wnids"]) if meta else None,
        "meta",
    )


def estimate_bytes(folder: Path, classes: list[str], samples: int = 16) -> float:
    """Mean file size from a few class folders (for progress and balance when there is no manifest)."""
    sizes = []
    for wnid in classes[:: max(1, len(classes) // samples)][:samples]:
        try:
            with os.scandir(folder / wnid) as it:
                for k, entry in enumerate(it):
                    if k >= 8:
                        break
                    sizes.append(entry.stat().st_size)
        except OSError:
            continue
    return sum(sizes) / len(sizes) if sizes else 110_000.0


def plan_split(
    req: VerifyRequest,
    split: str,
    todo: list[str],
    exp: dict,
    manifest: dict | None,
    n_shards: int,
    run_dir: Path,
    min_bytes: int = 0,
    processes: int = 1,
) -> list[Unit]:
    """Shards of the class folders of `split`, balanced by bytes; each shard's input is a JSON file."""
    files = files_by_class(manifest) if manifest is not None else {}
    counts = _class_counts(exp, split)
    mean = estimate_bytes(req.layout.root / split, todo) if manifest is None else 0
    weights = [
        sum(s for _, s in files.get(w, [])) if manifest is not None else int(mean * counts.get(w, 1)) for w in todo
    ]
    if min_bytes and not req.shards:  # where each job costs start-up (SLURM), no tiny shards
        n_shards = min(n_shards, max(1, -(-sum(weights) // min_bytes)))
    groups = plan.balanced_groups(weights, n_shards)
    units = []
    for i, group in enumerate(groups):
        uid = shard_id(split, req.level, i, len(groups))
        classes = [
            {
                "wnid": todo[j],
                "count": counts.get(todo[j]) if split == "train" and counts else None,
                "files": files.get(todo[j], []) if manifest is not None else None,
            }
            for j in group
        ]
        size = sum(weights[j] for j in group)
        units.append(shard_unit(req, split, uid, classes, size, run_dir, processes, {"rules": req.adapter}))
    return units


def files_by_class(manifest: dict) -> dict[str, list]:
    """wnid -> [[name, size], ...] of a split's manifest."""
    files: dict[str, list] = {}
    for path, size in zip(manifest["paths"], manifest["sizes"]):
        wnid, name = path.split("/", 1)
        files.setdefault(wnid, []).append([name, size])
    return files


def manifest_findings(split: str, manifest: dict, exp: dict, findings: list) -> None:
    """The manifest (our roots only) against the devkit."""
    rel = f"manifest-{split}.json"
    if exp.get("wnid_to_classes") and set(manifest["wnids"]) != set(exp["wnid_to_classes"]):
        findings.append([rel, "structure", "the manifest lists other classes than the devkit; run prepare again"])
    if split == "train" and exp.get("num_train_images"):
        per: dict[str, int] = {}
        for path in manifest["paths"]:
            w = path.split("/", 1)[0]
            per[w] = per.get(w, 0) + 1
        bad = sorted(w for w, n in exp["num_train_images"].items() if per.get(w, 0) != n)
        if bad:
            e = f"e.g. {bad[0]}: {per.get(bad[0], 0)} vs {exp['num_train_images'][bad[0]]}"
            findings.append([rel, "structure", f"its counts differ from the devkit's for {len(bad)} classes ({e})"])


def plan_splits(
    req: VerifyRequest, exp: dict, findings: list, n_shards: int, run_dir: Path, min_bytes: int, processes: int
) -> tuple[list[Unit], dict[str, dict]]:
    """Per split: prepare's completion, the folders and the manifest checked here (findings), then the
    shards of the class folders to check; and the totals the report compares with."""
    layout = req.layout
    shards: list[Unit] = []
    totals: dict[str, dict] = {}
    for split in req.splits:
        if reason := completion.incomplete_reason(layout.root, layout.state_dir, split):
            findings.append([split, "prepare", f"{reason}; run `launcher prepare` again after fixing the cause"])
        present = list_split(layout.root, split, findings)
        manifest = read_state_manifest(layout.manifest_file(split), findings)
        if manifest is not None:
            manifest_findings(split, manifest, exp, findings)
        source = exp.get("source") or "the folders (no devkit, no meta.bin)"
        classes = sorted(exp["wnid_to_classes"]) if exp.get("wnid_to_classes") else list(present or [])
        counts = _class_counts(exp, split)
        todo = check_structure(split, present, classes, counts, source, findings) if present is not None else []
        shards += plan_split(req, split, todo, exp, manifest, n_shards, run_dir, min_bytes, processes)
        totals[split] = {
            "classes": len(classes),
            "announced": _announced(exp, split),
            "announced_by": exp.get("by"),
            "expected": req.expected.get(split),
            "manifest": str(layout.manifest_file(split)) if manifest is not None else None,
        }
    return shards, totals


def _class_counts(exp: dict, split: str) -> dict[str, int]:
    """wnid -> images the devkit (or meta.bin, for val) announces; empty when unknown."""
    if split == "train":
        return dict(exp.get("num_train_images") or {})
    counts: dict[str, int] = {}
    for w in exp.get("val_wnids") or []:
        counts[w] = counts.get(w, 0) + 1
    return counts


def _announced(exp: dict, split: str) -> int | None:
    if split == "train" and exp.get("num_train_images"):
        return sum(exp["num_train_images"].values())
    if split == "val" and exp.get("val_wnids") is not None:
        return len(exp["val_wnids"])
    return None


# ---------------------------------------------------------------- the top level and split folders


def check_top(req: VerifyRequest, findings: list, notes: list) -> None:
    """The root's top level: no leftovers of an interrupted prepare; anything unknown is noted."""
    root, layout = req.layout.root, req.layout
    known = {"meta.bin", *SPLITS, ".partial", ROOT_ID_FILE, *(name for name, _ in req.archives.values())}
    try:
        state_top = layout.state_dir.relative_to(root).parts[0]
    except ValueError:
        state_top = None
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name == state_top or entry.name in known:
            continue
        if entry.name.endswith(".part"):
            findings.append([entry.name, "structure", "temporary file of an interrupted prepare; delete it"])
        else:
            notes.append([entry.name, "top-level", "not part of a torchvision ImageNet root (torchvision ignores it)"])
    if layout.partial_dir.is_dir():
        for dirpath, _, names in os.walk(layout.partial_dir):
            for name in sorted(names):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                why = (
                    f"leftover of an interrupted prepare: run `launcher prepare` again, or delete {layout.partial_dir}"
                )
                findings.append([rel, "structure", why])


def list_split(root: Path, split: str, findings: list) -> list[str] | None:
    """Class folder names of root/<split> (sorted); files there are findings; None if it is missing."""
    folder = root / split
    if not folder.is_dir():
        findings.append(
            [split, "structure", f"missing: {folder} is not a folder. Run `launcher prepare split={split}`"]
        )
        return None
    classes = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            classes.append(entry.name)
        elif entry.name.endswith(".part"):
            findings.append(
                [f"{split}/{entry.name}", "structure", "temporary file of an interrupted prepare; delete it"]
            )
        else:
            findings.append(
                [f"{split}/{entry.name}", "structure", "stray file where only class folders belong; move it out"]
            )
    return classes


def check_structure(split: str, present: list[str], classes: list[str], counts: dict, source: str, findings: list):
    """Exactly the expected class folders: missing and extra ones are findings; returns the ones to check."""
    want, have = set(classes), set(present)
    for wnid in sorted(want - have):
        n = f" ({counts[wnid]} images expected)" if counts.get(wnid) else ""
        why = f"class folder missing{n}; restore it from the archives (`launcher prepare split={split}`, new root)"
        findings.append([f"{split}/{wnid}", "structure", why])
    for name in sorted(have - want):
        why = f"folder of no class in {source}: ImageFolder makes it a class and shifts the classes after it"
        findings.append([f"{split}/{name}", "structure", f"{why}; move it out"])
    return sorted(want & have)


# ---------------------------------------------------------------- a shard's class folder

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


def _train_extra(name: str, wnid: str, anyone: re.Pattern | None, listed: bool) -> str:
    match = anyone.fullmatch(name) if anyone else None
    if match and match.group(1) != wnid:
        return f"in the wrong class folder: the name says class {match.group(1)}; move it to train/{match.group(1)}/"
    if listed:
        return "extra file: not in the manifest of train; move it out"
    return f"stray file: not a train image name of class {wnid}; move it out"
