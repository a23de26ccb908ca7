"""Places365's verify plan for a storage.format=tar root (launcher.check asks it through the adapter's
tar_verify_rules()): what is cheap is checked here, the images by launcher.check.tarshard's units.

    expected labels: the file-list archive (or prepare's cache of it, or the root's own label files),
      as for a folder root (launcher.datasets.places365.checks)
    -> the root's three label files equal the archive's; the top level (leftovers, unknown entries)
    -> per split: prepare's complete record; the tar index read whole (a damaged one is refused in one
       line); its classes, files, order and labels against the file list; the archive
       (storage.archive_dir/<its name>) the file the index recorded, unchanged (a changed one is one
       finding, and its images are not read); then shards of contiguous sample ranges balanced by
       bytes, each image read from its range of the archive and checked at verify.level
"""

from __future__ import annotations

from pathlib import Path

from launcher.check.plan import RootPlan, RootPlanning
from launcher.check.request import VerifyRequest
from launcher.check.tarroot import REPREPARE, archive_unchanged, plan_tar_split
from launcher.core.layout import read_json, write_json
from launcher.datasets.places365.checks import check_label_files, check_top, expected_labels, listed_file
from launcher.datasets.places365.labels import Labels
from launcher.tarformat.indexfile import TarIndex, read_index


def plan_tar_root(req: VerifyRequest, run_dir: Path, how: RootPlanning) -> RootPlan:
    """The label files against the archive's, the top level, then per split its completion, tar index,
    archive and shards (see the module)."""
    findings, layout = how.findings, req.layout
    labels, files, source = expected_labels(req, findings)
    if files is not None:
        check_label_files(req, files, source, findings)
    check_top(req, findings, how.notes)
    write_json(run_dir / "expected.json", {"source": source, "val_wnids": None, "num_train_images": None})
    shards, totals = [], {}
    for split in req.splits:
        if read_json(layout.complete_file(split)) is None:
            findings.append([split, "prepare", f"not complete (no {layout.complete_file(split).name}); {REPREPARE}"])
        index_path = layout.state_dir / f"tarindex-{split}.bin"
        index = read_index(index_path, split)  # altered or missing: one line, nothing planned
        archive = req.archive_dir / Path(index.archive["path"]).name
        list_findings(index, labels, listed_file(req, split), index_path.name, findings)
        unchanged = archive_unchanged(str(archive), index, str(index_path), findings)
        if unchanged:
            shards += plan_tar_split(req, index, index_path, archive, run_dir, how)
        entries = {"train": labels.train, "val": labels.val}[split].entries if labels is not None else None
        totals[split] = {
            "classes": len(index.wnids),
            "announced": len(entries) if entries is not None and unchanged else None,
            "announced_by": listed_file(req, split),
            "expected": req.expected.get(split) if unchanged else None,
            "manifest": None,
        }
    classes = len(labels.categories.names) if labels is not None else None
    return RootPlan(shards, totals, source or "the root's own label files", classes, None, "labels")


def list_findings(index: TarIndex, labels: Labels | None, list_name: str, rel: str, findings: list) -> None:
    """The index is one of a file list's archive and (labels known) holds the list's files, in its
    order, with its labels, under its classes (a finding naming the first difference otherwise)."""
    if index.layout != "listed":
        why = "it indexes class folders (another dataset's layout), not the files of a file list"
        findings.append([rel, "structure", f"{why}; {REPREPARE} with dataset=places365"])
        return
    if labels is None:
        return
    if index.wnids != list(labels.categories.names):
        findings.append([rel, "structure", f"its classes are not the class paths of the categories file; {REPREPARE}"])
        return
    listed = list(({"train": labels.train, "val": labels.val}[index.split]).relpaths().items())
    if len(listed) != len(index):
        why = f"it indexes {len(index):,} images, {list_name} lists {len(listed):,}"
        findings.append([rel, "structure", f"{why}; {REPREPARE}"])
        return
    for i, (path, label) in enumerate(listed):
        if index.name(i) != path or index.targets[i] != label:
            why = f"its image {i} is {index.path(i)} (class {index.targets[i]}), {list_name} says {path} ({label})"
            findings.append([rel, "structure", f"{why}; {REPREPARE}"])
            return
