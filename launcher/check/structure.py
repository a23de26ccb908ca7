"""verify's bounded reads of the state files (manifest, cached label files); a dataset's look at its
root's top level and split folders is in its verify rules (launcher/datasets/<name>/checks.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.check.imagebounds import Limits, Refused, open_regular, read_fd
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
