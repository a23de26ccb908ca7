"""prepare's finalize unit: a split's counts checked against its sources, partial folders cleared, the
manifest and the split's complete record written."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive import safefs
from launcher.archive.index import archive_identity, same_identity
from launcher.core.errors import LauncherError
from launcher.core.layout import SPLITS, read_json, read_root_id
from launcher.core.manifest import write_manifest
from launcher.core.units import Unit

if TYPE_CHECKING:
    pass

from launcher.datasets import adapter_of
from launcher.prepare.guards import same_root
from launcher.prepare.request import PrepareRequest
from launcher.sources import shape_module


def split_identity(identity: dict, split: str) -> dict:
    """What a split's complete record is tied to: the labels' and the archive's contents, which
    root, and which archive files (unchanged) its units read: the label archive and the split's
    (identity["archives"] is keyed by the label archive's key and by split)."""
    return {
        "devkit": identity["devkit"],
        split: identity[split],
        "root": identity["root"],
        "archives": {k: v for k, v in identity["archives"].items() if k == split or k not in SPLITS},
    }


def same_split_identity(a: dict | None, b: dict, keys: tuple[str, ...]) -> bool:
    if not a or any(a.get(k) != b[k] for k in b if k not in ("root", "archives")):
        return False
    archives = a.get("archives") or {}
    return same_root(a.get("root"), b["root"], keys) and all(
        same_identity(archives.get(k), v) for k, v in b["archives"].items()
    )


def finalize_unit(req: PrepareRequest, split: str, units: list[Unit], identity: dict) -> Unit:
    keys = {req.labels_key, req.source(split)["archive"]}
    needs = [u for u in units if u.kind in (split, "meta") or (u.kind == "md5" and u.args["key"] in keys)]
    layout = req.layout
    uid = f"finalize-{split}"
    return Unit(
        uid,
        "finalize",
        0,
        str(layout.complete_file(split)),  # its completion record is the split's
        {
            "split": split,
            "shape": req.source(split)["shape"],
            "adapter": req.adapter,
            "records": [u.record for u in needs],
            "devkit": str(layout.devkit_file),
            "expected": req.expected.get(split),
            "manifest": str(layout.manifest_file(split)),
            "identity": split_identity(identity, split),
            "root": str(layout.root),
            "partial": partial_folders(req, split),
            "folder": req.source(split)["folder"],
        },
    )


def finalize_split(
    split: str,
    records: list[str],
    devkit: str,
    expected: int | None,
    manifest: str,
    identity: dict,
    root: str,
    partial: list[str] | None = None,
    shape: str = "class_tars",
    adapter: str = "imagenet",
    folder: str | None = None,
) -> dict:
    """Finalize unit: every unit of the split complete, from the archives and root of the plan ->
    counts checked -> manifest -> empty root/.partial folders removed. Its completion record (written
    by the unit runner) is the split's complete-<split>.json."""
    done = [read_json(Path(r)) if safefs.is_file(r) else None for r in records]
    if missing := [Path(r).stem for r, d in zip(records, done) if d is None]:
        raise LauncherError(
            f"{split} is not complete: units {', '.join(missing)} have no completion record "
            "(their errors are in their job logs; `launcher status` shows them)."
        )
    check_sources(split, done, identity, Path(root))
    kit = read_devkit_record(Path(devkit))
    files = [f for d in done if d["kind"] == split for f in shape_module(shape).files_of(d)]
    labels = adapter_of(adapter)
    labels.check_covered(split, files, kit)
    if expected is not None and len(files) != expected:
        raise LauncherError(f"{split} holds {len(files)} images, dataset.expected.{split} is {expected}")
    images = Path(root) / (folder or split)
    if lost := missing_folders(images, {f[0] for f in files if f[0]}):
        raise LauncherError(f"{split} is not complete: {images} lacks {', '.join(lost[:5])}. Run prepare again.")
    made = labels.manifest(split, files, kit)
    write_manifest(Path(manifest), made)
    if root is not None:
        remove_empty_partial(Path(root), partial or [])
    return {
        "split": split,
        "images": len(files),
        "bytes": sum(f[2] for f in files),
        "classes": len(made["wnids"]),
        "manifest": manifest,
        "identity": identity,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def check_sources(split: str, done: list[dict], identity: dict, root: Path) -> None:
    """Every record of the split came from the archive file the plan indexed, still unchanged now,
    and was written into this root: otherwise the split could mix two archives' bytes."""
    archives = identity["archives"]
    for record in done:
        key = record.get("key") or record.get("kind")
        if key not in archives:
            continue
        now = archive_identity(archives[key]["path"])
        if not same_identity(record.get("archive"), archives[key]) or not same_identity(now, archives[key]):
            raise LauncherError(
                f"{split} is not complete: {archives[key]['path']} changed during the run (unit "
                f"{record.get('unit')} read other bytes than the index describes). Run `launcher prepare` "
                "again: it indexes the archive anew and prepares what came from the old bytes again."
            )
        if record.get("kind") in SPLITS and record.get("root_id") != identity["root"]["id"]:
            raise LauncherError(
                f"{split} is not complete: unit {record.get('unit')} wrote into another root. Run prepare again."
            )
    if read_root_id(root) != identity["root"]["id"]:
        raise LauncherError(f"{split} is not complete: {root} is not the root of the plan. Run prepare again.")


def missing_folders(folder: Path, wnids: set[str]) -> list[str]:
    """Class folders that are not in `folder` (one listing, no walk); a nested class path
    (`a/apartment_building/outdoor`) is looked up itself, without following a link."""
    try:
        present = set(os.listdir(folder))
    except OSError:
        present = set()
    flat = {w for w in wnids if "/" not in w}
    nested = [w for w in wnids if "/" in w and not (w.split("/")[0] in present and safefs.exists(folder / w))]
    return sorted((flat - present) | set(nested))


def remove_empty_partial(root: Path, folders: list[str]) -> None:
    """rmdir each of `folders` (".partial/train", ".partial") under root when it is an empty folder.
    Every step is opened with O_NOFOLLOW and rmdir never follows a link: a link there is left
    alone, and so is a folder that holds anything."""
    for folder in folders:
        parent, _, name = folder.rpartition("/")
        try:
            fd = open_dir_nofollow(root, parent)
        except OSError:
            continue
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError:  # absent, not empty, or a link (ENOTDIR): leave it
            pass
        finally:
            os.close(fd)


def open_dir_nofollow(root: Path, relative: str) -> int:
    """A descriptor of root/relative, opened one component at a time, never through a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    for part in filter(None, relative.split("/")):
        try:
            child = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def partial_folders(req: PrepareRequest, split: str) -> list[str]:
    """What finalize-<split> removes when empty: its own .partial/<folder> when its shape stages there
    (class_tars), and .partial itself unless another split being prepared stages there and finalizes it."""
    stagers = [s for s in req.splits if shape_module(req.source(s)["shape"]).STAGES]
    own = [f".partial/{req.source(split)['folder']}"] if split in stagers else []
    return own + ([".partial"] if split in stagers or not stagers else [])


def read_devkit_record(path: Path) -> dict:
    """The devkit facts cached by prepare; damaged or missing, the next prepare reads the devkit again."""
    cached = read_json(path)
    if cached is None or not isinstance(cached.get("devkit"), dict):
        raise LauncherError(f"{path} is missing or damaged; the next `launcher prepare` reads the devkit again.")
    return cached["devkit"]
