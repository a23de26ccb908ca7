"""verify's plan for a storage.format=tar root: what is cheap is checked here, the images by shards.

meta.bin against the devkit (as for a folder root), the root's top level
per split: prepare's complete record; the tar index read whole (sha256, every range inside the
archive size it recorded, targets within the classes: a damaged index is refused in one line);
its classes and per-class counts against the devkit, each val image under its ground-truth
class; the archive (storage.archive_dir/<its name>) the file the index recorded, unchanged (a
changed one is one finding, and its images are not read); then shards of contiguous sample
ranges balanced by bytes (launcher.check.tarshard), the split's total counted by them.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from pathlib import Path

from launcher.check.plan import RootPlan, RootPlanning, shard_id
from launcher.check.request import VerifyRequest
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json
from launcher.core.units import Unit
from launcher.datasets.imagenet.checks import _announced, check_top
from launcher.datasets.imagenet.meta import check_meta, expected_layout
from launcher.tarformat.archivefile import open_checked
from launcher.tarformat.indexfile import TarIndex, read_index

REPREPARE = "run `launcher prepare storage.format=tar` again"


def plan_tar_root(req: VerifyRequest, run_dir: Path, how: RootPlanning) -> RootPlan:
    """meta.bin, the top level, then per split its index, archive and shards (see the module)."""
    layout, findings = req.layout, how.findings
    exp = expected_layout(req, findings)
    meta = check_meta(layout.root, exp, req.expected.get("classes"), findings, req.limits, req.expected)
    if not exp.get("source") and meta is not None:
        exp = {"source": "meta.bin (no devkit found)", "by": "meta.bin", **meta, "num_train_images": None}
    check_top(req, findings, how.notes)
    shards: list[Unit] = []
    totals: dict[str, dict] = {}
    for split in req.splits:
        if read_json(layout.complete_file(split)) is None:
            findings.append([split, "prepare", f"not complete (no {layout.complete_file(split).name}); {REPREPARE}"])
        index_path = layout.state_dir / f"tarindex-{split}.bin"
        index = read_index(index_path, split)  # altered or missing: one line, nothing planned
        archive = req.archive_dir / Path(index.archive["path"]).name
        index_findings(req, index, exp, index_path.name, findings)
        unchanged = archive_unchanged(str(archive), index, str(index_path), findings)
        if unchanged:
            shards += plan_tar_split(req, index, index_path, archive, run_dir, how)
        totals[split] = {
            "classes": len(index.wnids),
            "announced": _announced(exp, split) if unchanged else None,
            "announced_by": exp.get("by"),
            "expected": req.expected.get(split) if unchanged else None,
            "manifest": None,
        }
    classes = len(exp.get("wnid_to_classes") or {}) or None
    return RootPlan(shards, totals, exp.get("source"), classes, len(meta["val_wnids"]) if meta else None, "meta")


def archive_unchanged(path: str, index: TarIndex, index_label: str, findings: list) -> bool:
    """The archive is the file the index recorded (size, times, inode, device); else one finding."""
    try:
        os.close(open_checked(path, index.archive, index_label))
    except LauncherError as err:  # changed, replaced, missing
        findings.append([path, "archive", str(err)])
        return False
    return True


def index_findings(req: VerifyRequest, index: TarIndex, exp: dict, rel: str, findings: list) -> None:
    """The index's classes and counts against the devkit (or meta.bin): the classes, each train
    class's count, each val image's ground-truth class."""
    kit_classes = exp.get("wnid_to_classes")
    if kit_classes and sorted(kit_classes) != index.wnids:
        findings.append([rel, "structure", f"its classes are not the devkit's; {REPREPARE}"])
        return
    counts = [0] * len(index.wnids)
    for target in index.targets:
        counts[target] += 1
    if index.split == "train" and exp.get("num_train_images"):
        want = exp["num_train_images"]
        bad = [(w, n) for w, n in zip(index.wnids, counts) if w in want and want[w] != n]
        if bad:
            e = f"e.g. {bad[0][0]}: {bad[0][1]} vs {want[bad[0][0]]}"
            findings.append([rel, "structure", f"its counts differ from the devkit's for {len(bad)} classes ({e})"])
    if index.split == "val" and exp.get("val_wnids"):
        val_label_findings(index, exp["val_wnids"], re.compile(req.val_image_pattern, re.ASCII), findings)


def val_label_findings(index: TarIndex, val_wnids: list, pattern: re.Pattern, findings: list) -> None:
    """Each val image of the index under the class the ground truth gives its number."""
    for i in range(len(index)):
        name, wnid = index.name(i), index.wnids[index.targets[i]]
        match = pattern.fullmatch(name)
        number = int(match.group(1)) if match and match.groups() else 0
        truth = val_wnids[number - 1] if 1 <= number <= len(val_wnids) else None
        if truth != wnid:
            why = f"the ground truth puts it in {truth}" if truth else "its name has no ground-truth label"
            findings.append([index.path(i), "structure", f"indexed under {wnid}, but {why}; {REPREPARE}"])


def sample_ranges(sizes, n: int) -> list[tuple[int, int]]:
    """[lo, hi) of at most n contiguous sample ranges of nearly equal bytes (none empty)."""
    count = len(sizes)
    if count == 0:
        return []
    cumulative = list(itertools.accumulate(sizes))
    total = cumulative[-1] or 1
    n = max(1, min(n, count))
    cuts = sorted({min(count, bisect.bisect_left(cumulative, total * k / n) + 1) for k in range(1, n)} | {0, count})
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def plan_tar_split(
    req: VerifyRequest, index: TarIndex, index_path: Path, archive: Path, run_dir: Path, how: RootPlanning
) -> list[Unit]:
    """The split's verify-tar units: contiguous sample ranges balanced by bytes (on SLURM at least
    how.min_bytes each, unless verify.shards says how many)."""
    total, n = sum(index.sizes), how.n_shards
    if how.min_bytes and not req.shards:
        n = min(n, max(1, -(-total // how.min_bytes)))
    ranges = sample_ranges(index.sizes, n)
    limits = {k: getattr(req.limits, k) for k in ("max_file_bytes", "max_pixels", "max_scans")}
    units = []
    for i, (lo, hi) in enumerate(ranges):
        uid = shard_id(index.split, req.level, i, len(ranges))
        args = {"index": str(index_path), "archive": str(archive), "split": index.split, "lo": lo, "hi": hi}
        args |= {"level": req.level, "fix": req.fix, "limits": limits, "quality": req.fix_quality}
        args |= {"state_dir": str(req.layout.state_dir), "processes": how.processes}
        size = sum(index.sizes[lo:hi])
        units.append(Unit(uid, "verify-tar", size, str(run_dir / "units" / f"{uid}.json"), args))
    return units
