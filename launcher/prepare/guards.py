"""prepare's guards of a root's identity: which archives and dataset a root was prepared from, what
changed since, and the records that are forgotten or reset when it did."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.archive import safedir, safefs
from launcher.archive.index import IDENTITY_KEYS, same_identity
from launcher.core.errors import ConfigError, LauncherError
from launcher.core.layout import SPLITS, Layout, read_json, read_root_id, write_json
from launcher.datasets.imagenet.devkit import Devkit

if TYPE_CHECKING:
    pass

from launcher.prepare.request import PrepareRequest


def conflicts(
    layout: Layout, split: str, old: dict | None, new: dict, devkit: Devkit, listed: bool = False
) -> list[str]:
    """Members that changed between two indexes of a split and whose output the root holds already
    (a listed split's rows name their path below the split folder)."""
    if old is None:
        return []
    before = {m[0]: m for m in old["members"]}
    after = {m[0]: m for m in new["members"]}
    changed = sorted(
        n for n in before.keys() | after.keys() if (before.get(n) or [0] * 3)[2] != (after.get(n) or [0] * 3)[2]
    )

    def output(name: str) -> Path:
        if listed:
            return layout.split_dir(split) / name
        if split == "train":
            return layout.split_dir("train") / name.removesuffix(".tar")
        number = (after.get(name) or before[name])[3]
        return (
            layout.split_dir("val") / devkit.val_wnids[number - 1] / name
            if number <= len(devkit.val_wnids)
            else layout.split_dir("val") / name
        )

    return [name for name in changed if safefs.exists(output(name))]


FINGERPRINTS = ("devkit", *SPLITS)


def guard_identity(req: PrepareRequest, identity: dict, clashes: dict[str, list[str]]) -> None:
    """Refuse a root that holds another dataset's files (or another tool's) unless prepare.force=true.
    An archive replaced after a failure (a truncated class tar downloaded again) is accepted as long
    as nothing it changes was prepared already; what was prepared from the archive's old bytes is
    prepared again. Records of another root (a shared state_dir) are refused, those of a root that
    is gone are forgotten."""
    layout = req.layout
    check_tree(layout, req.force and not req.dry_run)
    stored = read_json(layout.state_dir / "identity.json")
    if stored is None and safefs.exists(layout.state_dir / "identity.json"):
        stored = identity_of_complete_splits(layout)  # damaged: what the complete records say
    stored = records_of_this_root(layout, stored)
    if stored is None:
        outputs = (layout.meta_bin, layout.split_dir("train"), layout.split_dir("val"))
        found = [p.name for p in outputs if safefs.exists(p)]
        if found and not req.force:
            raise LauncherError(
                f"{layout.root} already holds {', '.join(found)} that launcher did not prepare (or whose "
                f"records are not in {layout.state_dir}). Check it with `launcher verify`, or pass "
                f"prepare.force=true to prepare over it (its {', '.join(found)} are replaced)."
            )
        if req.dry_run:  # checked, nothing written
            return
        if found:
            reset(layout, ["train", "val"], meta=True)
        write_json(layout.state_dir / "identity.json", identity)
        return
    changed = [k for k in FINGERPRINTS if k in identity and k in stored and stored[k] != identity[k]]
    prepared = [k for k in changed if k == "devkit" and safefs.exists(layout.meta_bin) or clashes.get(k)]
    if prepared and not req.force:
        examples = "; ".join(f"{k}: {', '.join(clashes[k][:3])}" for k in prepared if clashes.get(k))
        raise LauncherError(
            f"{layout.root} was prepared from other archives ({', '.join(prepared)} differ from what the "
            f"root holds{': ' + examples if examples else ''}). Point storage.root at a new folder, or pass "
            "prepare.force=true to replace what is there."
        )
    if req.dry_run:
        return
    if prepared:
        splits = SPLITS if "devkit" in prepared else [s for s in SPLITS if s in prepared]
        reset(layout, splits, meta="devkit" in prepared)
    archives = stored.get("archives") or {}
    redo_changed_archives(layout, archives, identity["archives"])
    write_json(
        layout.state_dir / "identity.json", {**stored, **identity, "archives": {**archives, **identity["archives"]}}
    )


def check_tree(layout: Layout, force: bool) -> None:
    """The root's own outputs are what launcher writes there (meta.bin a file; train/, val/,
    .partial/ folders) before anything is written into it, on every run: a link, FIFO or file in
    their place is refused naming it (with prepare.force=true a link is unlinked, never its target)."""
    safefs.check_entry(layout.meta_bin, "file", replace=force)
    for folder in (
        *(layout.split_dir(s) for s in SPLITS),
        layout.partial_dir,
        *(layout.partial_dir / s for s in SPLITS),
    ):
        safefs.check_entry(folder, "folder", replace=force)


def redo_changed_archives(layout: Layout, before: dict, now: dict) -> None:
    """A split whose archive is not the file (unchanged) that its outputs came from is prepared
    again: a rewrite in place with the same sizes, or a replacement, would leave the root a mix of
    two archives' bytes that no size or name comparison sees."""
    for split in SPLITS:
        if split not in now or not before.get(split) or same_identity(before[split], now[split]):
            continue
        if not safefs.exists(layout.split_dir(split)) and not list(layout.units_dir.glob(f"*{split}*.json")):
            continue
        differ = [k for k in IDENTITY_KEYS if before[split].get(k) != now[split].get(k)]
        reason = f"{now[split]['path']} changed since {split} was prepared from it ({', '.join(differ)} differ)"
        reset(layout, [split], meta=False, reason=reason)


def root_identity(root: Path) -> dict | None:
    """Which root folder this is: its random id (root/.launcher-root.json), device and inode."""
    rid = read_root_id(root)
    if rid is None:
        return None
    st = os.stat(root)
    return {"path": str(root), "id": rid, "dev": st.st_dev, "ino": st.st_ino}


ROOT_KEYS = ("id", "dev", "ino")


def same_root(a: dict | None, b: dict | None, keys: tuple[str, ...] = ROOT_KEYS) -> bool:
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def root_keys(layout: Layout) -> tuple[str, ...]:
    """What tells this root's records from another root's: the id, device and inode of the root
    folder; the id alone when the state_dir lives inside the root (then the records moved or were
    copied along with the files they describe, which changes the inode, not what they describe)."""
    return ("id",) if layout.state_dir.is_relative_to(layout.root) else ROOT_KEYS


def make_root_identity(layout: Layout) -> dict:
    """The root's identity, its id file written first if the root has none."""
    if read_root_id(layout.root) is None:
        write_json(layout.root_id_file, {"id": secrets.token_hex(16), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return root_identity(layout.root)


def records_of_this_root(layout: Layout, stored: dict | None) -> dict | None:
    """The identity record when the state_dir's records are this root's (or name no root: older
    launchers); None after forgetting the records of a root that is gone (deleted, or deleted and
    made again); a refusal when they are another root's that is still there."""
    if stored is None or not stored.get("root"):
        return stored
    theirs = stored["root"]
    if same_root(theirs, root_identity(layout.root), root_keys(layout)):
        return stored
    other = Path(theirs.get("path", ""))
    if other != layout.root and other.is_dir() and same_root(theirs, root_identity(other)):
        raise LauncherError(
            f"storage.state_dir={layout.state_dir} holds the records of the root {other}, not of {layout.root}. "
            f"Give each root its own state folder: storage.state_dir={layout.root / '.launcher'} (the default)."
        )
    print(
        f"{layout.state_dir} holds records of a root that is no longer there ({other}, id {theirs.get('id')}); "
        "they are forgotten.",
        file=sys.stderr,
    )
    forget_records(layout)
    return None


def forget_records(layout: Layout) -> None:
    """Unit, complete and manifest records (the devkit and archive indexes describe the archives and
    stay)."""
    for split in SPLITS:
        safefs.remove(layout.complete_file(split))
        safefs.remove(layout.manifest_file(split))
    remove_records(layout, lambda name: True)


def remember_dataset(layout: Layout, dataset: dict | None) -> None:
    """Keep the dataset config a root is prepared with (choice and resolved values: archive names,
    md5s, expected counts, patterns) in its identity record, for verify, status and bench."""
    if not dataset:
        return
    path = layout.state_dir / "identity.json"
    stored = read_json(path) or {}
    if stored.get("dataset") != dataset:
        write_json(path, {**stored, "dataset": dataset})


def started_format(layout: Layout) -> str | None:
    """The storage.format the root's prepare was started in (kept once its first units were planned),
    else the one its complete records were written in (older launchers), else None (never prepared)."""
    stored = read_json(layout.state_dir / "identity.json")
    if isinstance(stored, dict) and stored.get("format"):
        return stored["format"]
    for split in SPLITS:
        done = read_json(layout.complete_file(split))
        if done is not None:
            return (done.get("identity") or {}).get("format") or "folder"
    return None


def finish_command(argv: list[str], storage_format: str) -> str:
    """The prepare command of this run with storage.format=<storage_format> instead of its own."""
    from launcher.core.runner import command_line

    args = [a for a in argv if a.lstrip("+~").split("=", 1)[0] != "storage.format"]
    return command_line("prepare", [*args, f"storage.format={storage_format}"])


def check_started_format(layout: Layout, wanted: str, argv: list[str]) -> None:
    """A root whose prepare was started in the other storage.format is refused before anything is
    written (else the root would hold half of each), with the command that finishes it in its own
    format; nothing is removed."""
    had = started_format(layout)
    if had is None or had == wanted:
        return
    raise ConfigError(
        f"storage.root={layout.root} was started with storage.format={had} "
        f"(its records are in {layout.state_dir}), not {wanted}: finish it with "
        f"`{finish_command(argv, had)}`, or prepare storage.format={wanted} into another storage.root "
        "(or storage.state_dir)."
    )


def claim_format(layout: Layout, wanted: str, argv: list[str]) -> None:
    """Keep the storage.format the root is prepared in, before its first unit runs (under its lock)."""
    check_started_format(layout, wanted, argv)
    path = layout.state_dir / "identity.json"
    stored = read_json(path) or {}
    if stored.get("format") != wanted:
        write_json(path, {**stored, "format": wanted})


def root_dataset(layout: Layout) -> dict | None:
    """The dataset config the root was prepared with, or None (not ours, or prepared before we kept it)."""
    stored = read_json(layout.state_dir / "identity.json")
    return stored.get("dataset") if isinstance(stored, dict) else None


def identity_of_complete_splits(layout: Layout) -> dict:
    """The archives' identity as the complete records of the splits state it (for a damaged identity.json)."""
    identity: dict = {}
    for split in SPLITS:
        done = read_json(layout.complete_file(split)) or {}
        if isinstance(done.get("identity"), dict):
            identity.update(done["identity"])
    return identity


def reset(layout: Layout, splits, meta: bool, reason: str = "prepare.force") -> None:
    """Forget and delete what was prepared for `splits` (and meta.bin); links are removed
    themselves, never followed."""
    for split in splits:
        print(f"{reason}: removing {layout.split_dir(split)} and its records", file=sys.stderr)
        safefs.remove_tree(layout.split_dir(split))
        safefs.remove_tree(layout.partial_dir / split)
        for path in (layout.complete_file(split), layout.manifest_file(split)):
            safefs.remove(path)
        remove_records(layout, lambda name, split=split: split in name)
    if meta:
        safefs.remove(layout.meta_bin)
        remove_records(layout, lambda name: name.startswith(("meta", "md5-")))


def remove_records(layout: Layout, which) -> None:
    """Unlink the unit records (.json) whose names `which` accepts, in the opened units folder."""
    try:
        units = safedir.Dir.of(layout.units_dir, replace=True)
    except FileNotFoundError:
        return
    with units:
        for entry in units.entries():
            if entry.name.endswith(".json") and which(entry.name):
                units.unlink_entry(entry.name)
