"""Whether prepare finished a split of a root, as its records say; what a loader and verify tell.

prepare writes state_dir/complete-<split>.json when a split is whole (every unit done, counts
checked, manifest written). A unit that fails leaves a failure note beside where its record would
be (`<unit id>.failed`, written by launcher.core.units) with the error. A root whose state folder holds
prepare's records (devkit.json, index-<split>.json, units/) but no complete-<split>.json was not
finished: its images may be on disk, but not all of them, or from an archive that failed its md5.
Reads only; no Hydra, no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.core.layout import SPLITS

# the most bytes of a failure note read (an error message)
NOTE_BYTES = 8192
# the most failure notes read for one message
MOST_NOTES = 4


def state_folders(root: str | Path, state_dir: str | Path | None) -> list[Path]:
    """Where a root's records may be: storage.state_dir, then the root's own root/.launcher."""
    own = Path(os.path.expanduser(root)) / ".launcher"
    given = Path(os.path.expanduser(state_dir)) if state_dir is not None else own
    return [given] if given.absolute() == own.absolute() else [given, own]


def holds_records(folder: Path, split: str) -> bool:
    """The folder holds prepare's records for this root (not just verify's or stage's)."""
    return any(p.exists() for p in (folder / "devkit.json", folder / f"index-{split}.json", folder / "units"))


def is_complete(folder: Path, split: str) -> bool:
    return (folder / f"complete-{split}.json").is_file()


def unit_of_split(unit_id: str, split: str) -> bool:
    """The units a split's completion needs: meta, the md5s of the label archive (ImageNet's devkit,
    Places365's file lists) and of its own archive (not another split's), its shards and its finalize unit."""
    others = {f"md5-{s}" for s in SPLITS if s != split}
    md5 = unit_id.startswith("md5-") and unit_id not in others
    return unit_id in ("meta", f"finalize-{split}") or md5 or unit_id.startswith(f"{split}-")


def failure_notes(folder: Path, split: str) -> list[str]:
    """'<unit>: <error>' of the split's failed units, from their notes (bounded reads)."""
    out = []
    for place in (folder / "units", folder):
        try:
            names = sorted(n for n in os.listdir(place) if n.endswith(".failed"))
        except OSError:
            continue
        for name in names:
            unit_id = name[: -len(".failed")]
            if not unit_of_split(unit_id, split) or len(out) >= MOST_NOTES:
                continue
            try:
                with open(place / name, "rb") as f:
                    note = json.loads(f.read(NOTE_BYTES))
                error = str(note["error"])
            except (OSError, ValueError, KeyError, TypeError):
                error = "failed (its note is unreadable)"
            out.append(f"{unit_id}: {' '.join(error.split())}")
    return out


def incomplete_reason(root: str | Path, state_dir: str | Path | None, split: str) -> str | None:
    """Why the records say `split` of `root` is not whole, or None: complete, or no records of
    ours at all (a root prepared by something else)."""
    folders = state_folders(root, state_dir)
    if any(is_complete(f, split) for f in folders):
        return None
    ours = [f for f in folders if holds_records(f, split)]
    if not ours:
        return None
    notes = [n for f in ours for n in failure_notes(f, split)]
    where = ours[0] / f"complete-{split}.json"
    if notes:
        return f"prepare failed for {split}: " + "; ".join(notes)
    return f"prepare has not finished {split} (no {where}; it may still be running, or its jobs died)"
