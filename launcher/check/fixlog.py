"""verify.fix's intent log: what a fix is about to replace is logged (fsync'd) with a kept copy of
the original before the file is replaced, and a run that stopped half-way is finished by the next
verify or prepare: the manifest and records get the new sizes when the replacement happened, the
intent is closed as not applied when it did not.

state_dir/verify-fixes.jsonl    {"state": "intent"|"applied"|"not-applied"|"unknown", "run", "path", md5s, sizes}
state_dir/fix-originals/<split>/<wnid>/<name>    the bytes a fix replaced
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.core.errors import LauncherError
from launcher.core.layout import SPLITS, append_line, read_json, write_json
from launcher.core.manifest import read_manifest, write_manifest

FIXES = "verify-fixes.jsonl"  # in state_dir: one intent line before each replacement, then its outcome
ORIGINALS = "fix-originals"  # in state_dir: <split>/<wnid>/<name>, the bytes a fix replaced
FIX_MAX_BYTES = 1 << 28  # a file verify.fix reads whole to re-encode


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def split_of(path: str, folders: dict[str, str] | None = None) -> str:
    """The split a root-relative path is in: its first folder, a split's name or (`folders`: split ->
    its root folder, dataset.splits.<split>.folder) the folder of one; "-" for anything else."""
    head = path.split("/", 1)[0]
    by_folder = {folder: split for split, folder in (folders or {}).items()}
    return by_folder.get(head, head if head in SPLITS else "-")


def split_path(path: str, folders: dict[str, str] | None = None) -> str:
    """A root-relative path as the manifest of its split names it (`<split>/<path below its folder>`)."""
    split = split_of(path, folders)
    return f"{split}/{path.split('/', 1)[1]}" if split != "-" and "/" in path else path


def keep_original(state: Path, rel: str, data: bytes) -> Path:
    """A copy of the bytes a fix replaces: state_dir/fix-originals/<split>/<wnid>/<name> (another
    earlier original kept there stays: this one then goes beside it, named by its md5)."""
    kept = state / ORIGINALS / rel
    old = safefs.read(kept, FIX_MAX_BYTES)
    if old is not None and old != data:
        kept = kept.with_name(f"{kept.name}.{md5_bytes(data)}")
    if old != data:
        safefs.write_atomic(kept, data, fsync=True)
    return kept


def update_sizes(state: Path, new_size: dict[str, int], folders: dict[str, str] | None = None) -> list[str]:
    """Set the sizes of `new_size`'s files (root-relative; `folders`: split -> its root folder) in the
    manifests, unit records and complete records; running it again changes nothing (a crash half-way
    is finished by a rerun)."""
    new_size = {split_path(p, folders): n for p, n in new_size.items()}
    updated = []
    for split in sorted({split_of(p) for p in new_size} & set(SPLITS)):
        mpath = state / f"manifest-{split}.json"
        manifest = read_manifest(mpath)
        if manifest is not None:
            changed = False
            for i, p in enumerate(manifest["paths"]):
                if (size := new_size.get(f"{split}/{p}")) is not None and manifest["sizes"][i] != size:
                    manifest["sizes"][i], changed = size, True
            if changed:
                write_manifest(mpath, manifest)
                updated.append(str(mpath))
        total = 0
        for record in records_of(state, split):
            rec = read_json(record)
            if rec and _update_prepare_record(rec, split, new_size):
                write_json(record, rec)
                updated.append(str(record))
            total += (rec or {}).get("bytes", 0) if (rec or {}).get("kind") == split else 0
        cpath = state / f"complete-{split}.json"
        complete = read_json(cpath)
        if manifest is not None:
            total = sum(manifest["sizes"])
        if complete is not None and "bytes" in complete and total and complete["bytes"] != total:
            complete["bytes"] = total
            write_json(cpath, complete, indent=1)
            updated.append(str(cpath))
    return updated


def records_of(state: Path, split: str) -> list[Path]:
    """prepare's unit records of a split (units/<split>-*.json), listed in the opened folder."""
    try:
        units = safedir.Dir.of(state / "units")
    except FileNotFoundError:
        return []
    with units:
        names = [e.name for e in units.entries() if e.name.startswith(f"{split}-") and e.name.endswith(".json")]
    return [state / "units" / n for n in sorted(names)]


def read_fix_log(state: Path) -> list[dict]:
    """The lines of verify-fixes.jsonl; a torn line (a crash mid-append) is skipped."""
    data = safefs.read(state / FIXES) or b""
    lines = []
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("path"), str):
            lines.append(line)
    return lines


def pending_fixes(state: Path) -> list[dict]:
    """Intents whose outcome was never logged (the run stopped between the intent and the report)."""
    pending: dict[tuple, dict] = {}
    for line in read_fix_log(state):
        key = (line.get("run"), line["path"])
        if line.get("state") == "intent":
            pending[key] = line
        else:
            pending.pop(key, None)
    return list(pending.values())


def remove_fix_temporary(root: Path, rel: str) -> None:
    """The `.<name>.fix.part` a killed fix left beside its file (unlinked, never followed)."""
    try:
        folder, name = safefs.parent(root / rel)
    except (FileNotFoundError, LauncherError):
        return
    with folder:
        folder.unlink_entry(f".{name}.fix.part")


def reconcile_fixes(root: Path, state: Path, folders: dict[str, str] | None = None) -> list[str]:
    """Finish what an interrupted verify.fix started: an intent whose replacement happened (the
    file has the new md5) gets the manifest and records updated; one whose replacement did not
    happen (the old md5) is closed as not applied; anything else is reported with the kept copy."""
    messages = []
    for intent in pending_fixes(state):
        remove_fix_temporary(root, intent["path"])
        try:
            data = safefs.read(root / intent["path"], FIX_MAX_BYTES)
        except LauncherError as err:
            data, why = None, str(err)
        else:
            why = "the file is gone"
        digest = md5_bytes(data) if data is not None else None
        if digest == intent.get("md5_after"):
            outcome = "applied"
            update_sizes(state, {intent["path"]: intent["new_size"]}, folders)
        elif digest == intent.get("md5_before"):
            outcome = "not-applied"
        else:
            outcome = "unknown"
            what = why if data is None else "its bytes are neither the original nor the re-encoded ones"
            messages.append(
                f"verify.fix of {root / intent['path']} was interrupted and {what}; the original is kept "
                f"in {intent.get('original')}: copy it back if the file is wrong."
            )
        intent_done = {**intent, "state": outcome, "reconciled": time.strftime("%Y-%m-%dT%H:%M:%S")}
        intent_done["ok"] = outcome == "applied"
        append_line(state / FIXES, intent_done, fsync=True)
    return messages


def _update_prepare_record(rec: dict, split: str, new_size: dict[str, int]) -> bool:
    changed = False
    if split == "train" and rec.get("kind") == "train":
        for wnid, files in rec.get("classes", {}).items():
            for entry in files:
                if (size := new_size.get(f"train/{wnid}/{entry[0]}")) is not None and size != entry[1]:
                    rec["bytes"] += size - entry[1]
                    entry[1], changed = size, True
    elif split == "val" and rec.get("kind") == "val":
        for entry in rec.get("files", []):
            if (size := new_size.get(f"val/{entry[0]}/{entry[1]}")) is not None and size != entry[2]:
                rec["bytes"] += size - entry[2]
                entry[2], changed = size, True
    return changed
