"""Replacement images for samples of a tar index: the archive cannot be rewritten, so a fix that
re-encodes an odd file (a PNG named .JPEG, a CMYK JPEG) writes the new bytes into the state folder
and the loaders read them instead of the archive's range.

    state_dir/overlay-<split>.json           {"version", "split", "archive", "count", "files"}
    state_dir/overlay-<split>/<wnid>/<name>  the replacement of the sample with that logical path
                                             (a listed index: overlay-<split>/<its path below the folder>)

`files` maps a sample index (ASCII digits) to the replacement's size and sha256. The record names
the archive identity and image count of the index it belongs to; one for another index is refused.
Paths come from the index (the sample's WNID and name), never from the record. Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.index import IDENTITY_KEYS
from launcher.core.errors import LauncherError
from launcher.core.layout import write_json
from launcher.sources.entries import path_problem
from launcher.tarformat.indexfile import TarIndex

VERSION = 1
MAX_RECORD_BYTES = 16 << 20
INDEX_KEY = re.compile(r"[0-9]{1,10}", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


class OverlayError(LauncherError):
    """An overlay record or file that does not belong to the index, or was altered."""


def overlay_record(state_dir: str | Path, split: str) -> Path:
    return Path(state_dir) / f"overlay-{split}.json"


def overlay_folder(state_dir: str | Path, split: str) -> Path:
    return Path(state_dir) / f"overlay-{split}"


def replacement_path(state_dir: str | Path, index: TarIndex, i: int) -> Path:
    """Where the replacement of sample i lives: overlay-<split>/<its path below the split's folder>
    (`<wnid>/<name>`, or a listed index's `<class path>/<name>`), from the index; a listed name
    that is not a plain relative path (an altered index) is refused before it becomes one."""
    rel = index.relpath(i)
    if path_problem(rel) is not None or rel.startswith("/"):
        raise OverlayError(
            f"sample {i} of the tar index of {index.split} is named {rel[:80]!r}, not a path below its folder: "
            "the index was altered. Delete it and run `launcher prepare storage.format=tar` again."
        )
    return overlay_folder(state_dir, index.split) / rel


def write_overlay(state_dir: str | Path, index: TarIndex, replacements: dict[int, bytes], out=None) -> Path:
    """Write the replacement files (each atomically, never through a link) and then the record
    (atomically), adding to a record already there for the same index."""
    entries = {}
    for i, data in sorted(replacements.items()):
        check_sample(index, i)
        safefs.write_atomic(replacement_path(state_dir, index, i), bytes(data), out=out)
        entries[i] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return record_replacements(state_dir, index, entries)


def check_sample(index: TarIndex, i) -> None:
    if type(i) is not int or not 0 <= i < len(index):
        raise ValueError(f"sample {i!r} is not an index of the {len(index)} samples")


def record_replacements(state_dir: str | Path, index: TarIndex, entries: dict[int, dict]) -> Path:
    """Add replacement files already written (sample index -> {"size", "sha256"}) to the overlay
    record of `index` (written atomically), keeping the ones it holds."""
    files = read_overlay_record(state_dir, index)
    for i, entry in entries.items():
        check_sample(index, i)
        if not valid_entry(entry):
            raise ValueError(f"the replacement of sample {i} is not a size and a sha256: {entry!r}")
        files[i] = {"size": entry["size"], "sha256": entry["sha256"]}
    record = {
        "version": VERSION,
        "split": index.split,
        "archive": {k: index.archive[k] for k in IDENTITY_KEYS},
        "count": len(index),
        "files": {str(i): entry for i, entry in sorted(files.items())},
    }
    path = overlay_record(state_dir, index.split)
    write_json(path, record)
    return path


def read_overlay_record(state_dir: str | Path, index: TarIndex) -> dict[int, dict]:
    """sample index -> {"size", "sha256"} of the overlay of `index` ({} when there is none)."""
    path = overlay_record(state_dir, index.split)
    raw = safefs.read(path, MAX_RECORD_BYTES)
    if raw is None:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("version") != VERSION or record.get("split") != index.split:
        raise bad_overlay(path, "it is not an overlay record of this split")
    archive = record.get("archive")
    if not isinstance(archive, dict) or any(archive.get(k) != index.archive[k] for k in IDENTITY_KEYS):
        raise bad_overlay(path, "it was written for another index of the archive")
    if record.get("count") != len(index) or not isinstance(record.get("files"), dict):
        raise bad_overlay(path, "its image count is not the index's")
    files = {}
    for key, entry in record["files"].items():
        if not INDEX_KEY.fullmatch(key) or int(key) >= len(index):
            raise bad_overlay(path, f"{key[:20]!r} is not a sample index below {len(index)}")
        if not isinstance(entry, dict) or not valid_entry(entry):
            raise bad_overlay(path, f"the entry of sample {key} is not a size and a sha256")
        files[int(key)] = {"size": entry["size"], "sha256": entry["sha256"]}
    return files


def valid_entry(entry: dict) -> bool:
    size, digest = entry.get("size"), entry.get("sha256")
    return type(size) is int and size >= 0 and isinstance(digest, str) and bool(SHA256.fullmatch(digest))


def read_overlay(state_dir: str | Path, index: TarIndex) -> dict[int, tuple[str, int, str]]:
    """sample index -> (path of its replacement, size, sha256), for a loader."""
    return {
        i: (str(replacement_path(state_dir, index, i)), entry["size"], entry["sha256"])
        for i, entry in read_overlay_record(state_dir, index).items()
    }


def bad_overlay(path: Path, why: str) -> OverlayError:
    return OverlayError(
        f"{path} does not belong to the tar index ({why}). Delete it and run `launcher verify verify.fix=true` "
        "again to re-encode the odd files."
    )
