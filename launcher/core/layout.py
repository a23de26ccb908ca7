"""Where everything lives under a root, and the small file primitives every stage uses.

root/meta.bin, root/train/<wnid>/..., root/val/<wnid>/...  what torchvision reads
root/.partial/                                            class folders being written
root/.launcher-root.json                                  the root's random id (records name it)
state_dir (default root/.launcher)/
  devkit.json, index-train.json, index-val.json            what the archives hold
  units/<unit>.json                                        one completion record per unit
  complete-<split>.json, manifest-<split>.json             written when a split is whole
  tarindex-<split>.bin, tarparts/                          storage.format=tar: the split's tar index (and its parts)
  ledger.jsonl, logs/, runs/, prepare.lock                 submissions, job logs, runs, the lock
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.core.errors import LauncherError, UnitBusyError

SPLITS = ("train", "val")
ROOT_ID_FILE = ".launcher-root.json"


@dataclass(frozen=True)
class Layout:
    root: Path
    state_dir: Path
    # (split, root folder) pairs from dataset.splits.<split>.folder; a split not named is root/<split>
    folders: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, root: str | Path, state_dir: str | Path, folders: dict[str, str] | None = None) -> Layout:
        pairs = tuple(sorted((folders or {}).items()))
        layout = cls(Path(root).absolute(), Path(state_dir).absolute(), pairs)
        safedir.trust(layout.root, layout.state_dir)  # below them, nothing is followed
        return layout

    @property
    def meta_bin(self) -> Path:
        return self.root / "meta.bin"

    def split_dir(self, split: str) -> Path:
        """The root folder a split's images go to (the dataset's torchvision class reads it)."""
        return self.root / dict(self.folders).get(split, split)

    @property
    def partial_dir(self) -> Path:
        return self.root / ".partial"

    @property
    def root_id_file(self) -> Path:
        """The root's own identity record: a random id that tells this root from another one
        (or from this path deleted and made again) whose records a state_dir holds."""
        return self.root / ROOT_ID_FILE

    @property
    def devkit_file(self) -> Path:
        return self.state_dir / "devkit.json"

    def index_file(self, split: str) -> Path:
        return self.state_dir / f"index-{split}.json"

    @property
    def units_dir(self) -> Path:
        return self.state_dir / "units"

    def unit_record(self, unit_id: str) -> Path:
        return self.units_dir / f"{unit_id}.json"

    def complete_file(self, split: str) -> Path:
        return self.state_dir / f"complete-{split}.json"

    def manifest_file(self, split: str) -> Path:
        return self.state_dir / f"manifest-{split}.json"

    @property
    def ledger(self) -> Path:
        return self.state_dir / "ledger.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "prepare.lock"


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """Write JSON to a temporary sibling and rename it into place: readers never see half a file.
    The sibling's name is fixed, so one left by a crash (or a link planted there) is unlinked and
    made anew; every folder below the root or state folder is opened without following links;
    writers of one file are serialized by the lock of the root or the unit that owns it."""
    data = json.dumps(obj, indent=indent, separators=None if indent else (",", ":")).encode()
    safefs.write_atomic(path, data)


_reported: set[str] = set()


def report_damaged(what: str) -> None:
    """One line on stderr per damaged state file (or line) per process; the caller carries on."""
    if what not in _reported:
        _reported.add(what)
        print(f"launcher: skipped {what}", file=sys.stderr, flush=True)


def read_json(path: Path, default=None):
    """A state file (record, index, manifest, identity, run description) as a dict, read without
    following a link; a missing file is `default`, a damaged one (torn, garbled, not an object) is
    reported with its path and is `default` too: it counts as never written, so the work that
    writes it runs again."""
    try:
        data = safefs.read(path)
    except NotADirectoryError:  # a file where a folder would be: not there
        return default
    if data is None:
        return default
    try:
        obj = json.loads(data)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        report_damaged(f"a damaged record {path} ({type(err).__name__}: {str(err)[:80]}); it counts as missing")
        return default
    if not isinstance(obj, dict):
        report_damaged(f"a damaged record {path} (a JSON {type(obj).__name__}, not an object); it counts as missing")
        return default
    return obj


def read_lines(path: Path, valid: Callable[[dict], bool] = lambda obj: True) -> list[dict]:
    """The JSON objects of a .jsonl state file (ledger, verify-fixes), read without following a
    link; a damaged line (torn by a crash mid-append, garbled, not `valid`) is skipped and reported
    with its number."""
    try:
        data = safefs.read(path)
    except NotADirectoryError:
        return []
    if data is None:
        return []
    entries = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not valid(obj):
            report_damaged(f"a damaged line {number} of {path}")
            continue
        entries.append(obj)
    return entries


def read_root_id(root: Path) -> str | None:
    """The random id in root/.launcher-root.json, or None (no such file, or not ours)."""
    try:
        raw = safefs.read(root / ROOT_ID_FILE, 4096)
        data = json.loads(raw) if raw is not None else None
    except (OSError, ValueError, LauncherError):
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and rid.isascii() and rid.isalnum() else None


def append_line(path: Path, obj, fsync: bool = False) -> None:
    safefs.append(path, (json.dumps(obj, separators=(",", ":")) + "\n").encode(), fsync=fsync)


class Lock:
    """An exclusive flock on `path`, taken without waiting; the holder is written into the file."""

    def __init__(self, path: Path, what: str, replace: bool = False):
        self.path, self.what, self.fd, self.replace = Path(path), what, -1, replace

    def __enter__(self) -> Lock:
        self.fd = safefs.open_lock(self.path, replace=self.replace)  # never through a planted link
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UnitBusyError(
                f"{self.what} is busy: {holder} holds {self.path}. Wait for it to finish "
                "(or stop it), then run the command again."
            ) from None
        os.ftruncate(self.fd, 0)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
        os.pwrite(self.fd, holder.encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
