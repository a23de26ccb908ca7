"""verify's look at a root's top level and split folders, and its bounded reads of the state files
(manifest, cached devkit.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.check.imagebounds import Limits, Refused, open_regular, read_fd
from launcher.check.request import VerifyRequest
from launcher.core.layout import ROOT_ID_FILE, SPLITS
from launcher.core.manifest import VERSION as MANIFEST_VERSION

# the largest state file (manifest, cached devkit.json) verify reads; ImageNet's train manifest is ~60 MB
STATE_MAX_BYTES = 1 << 30


def read_state_json(path: Path, findings: list):
    """The JSON of a state file (None when missing): a regular file of at most STATE_MAX_BYTES, not
    nested past Python's recursion limit; anything else is a finding and None."""
    try:
        fd, _ = open_regular(str(path), Limits(max_file_bytes=STATE_MAX_BYTES))
        try:
            data = read_fd(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return json.loads(data)
    except FileNotFoundError:
        return None
    except Refused as err:
        why = str(err).split(";")[0] if "max_file_bytes" not in str(err) else f"more than {STATE_MAX_BYTES} bytes"
        findings.append([str(path), "structure", f"{why}; not read. Delete it (prepare writes it again)"])
    except (OSError, ValueError, RecursionError) as err:
        why = f"not valid JSON ({type(err).__name__}: {str(err)[:200]})"
        findings.append([str(path), "structure", f"{why}; not read. Delete it (prepare writes it again)"])
    return None


def read_state_manifest(path: Path, findings: list) -> dict | None:
    """A prepare manifest (read_state_json) whose columns have the shape verify uses, else None."""
    manifest = read_state_json(path, findings)
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return None
    paths, sizes, wnids = manifest.get("paths"), manifest.get("sizes"), manifest.get("wnids")
    shaped = (
        isinstance(paths, list)
        and isinstance(sizes, list)
        and isinstance(wnids, list)
        and len(paths) == len(sizes)
        and all(isinstance(p, str) and "/" in p for p in paths)
        and all(type(n) is int and n >= 0 for n in sizes)
        and all(isinstance(w, str) for w in wnids)
    )
    if not shaped:
        why = "not a manifest of launcher (paths, sizes and wnids columns); not read. Delete it and run prepare"
        findings.append([str(path), "structure", why])
        return None
    return manifest


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
