"""verify.fix: re-encode the files some decoders cannot read (PNG data, CMYK, rare JPEG processes) to
RGB JPEG, and apply the new sizes to the manifest and records."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.check.fixlog import FIX_MAX_BYTES, FIXES, keep_original, md5_bytes, update_sizes
from launcher.check.images import pil_image
from launcher.core.errors import LauncherError
from launcher.core.layout import append_line

# odd files re-encoded to RGB JPEG by verify.fix (grayscale JPEGs every decoder reads: kept)
FIXABLE = ("png", "cmyk", "process")


class Unfixable(Exception):
    """PIL cannot decode a file verify.fix would re-encode."""


def reencoded(data: bytes, quality: int) -> bytes:
    """The image `data` re-encoded to RGB JPEG."""
    with pil_image().open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def reencode(path: str, kind: str, quality: int, state: Path, rel: str, run: str) -> dict:
    """Re-encode an odd file to RGB JPEG in place, so that no interruption loses it: keep a copy of
    the original, log the intent (fsync'd) in state_dir/verify-fixes.jsonl, write a temporary
    sibling (O_EXCL, fsync) and rename it over the file; permission bits and group are kept. The
    report unit (or, after a crash, the next verify or prepare) brings the manifest and records up
    to date. Raises on a file that cannot be re-encoded, before anything is written."""
    folder, name = safefs.parent(path)
    with folder:
        data = folder.read(name, FIX_MAX_BYTES)
        if data is None:
            raise FileNotFoundError(path)
        try:
            new = reencoded(data, quality)
        except Exception as err:  # PIL cannot read it (12-bit, arithmetic-coded, broken data)
            raise Unfixable(f"cannot be re-encoded ({type(err).__name__}: {err}); left as it is") from err
        kept = keep_original(state, rel, data)
        change = {
            "old_kind": kind,
            "old_size": len(data),
            "new_size": len(new),
            "md5_before": md5_bytes(data),
            "md5_after": md5_bytes(new),
            "original": str(kept),
        }
        intent = {"run": run, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "state": "intent", "path": rel, **change}
        append_line(state / FIXES, intent, fsync=True)
        st = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
        tmp = f".{name}.fix.part"
        fd = folder.create(tmp, 0o600, replace_temp=True)  # O_EXCL|O_NOFOLLOW; a stale one unlinked
        try:
            os.fchmod(fd, st.st_mode & 0o7777)
            with contextlib.suppress(OSError):  # not the file's owner: the group stays ours
                os.fchown(fd, -1, st.st_gid)
            safedir.write_all(fd, new)
            os.fsync(fd)
        finally:
            os.close(fd)
        folder.rename(tmp, name)
        os.fsync(folder.fd)
    return change


def fix_one(path: str, kind: str, ctx: dict, rel: str) -> tuple[dict | None, str | None, bool]:
    """(what changed, None, _), or (None, why, whether it is a failure) for a file that was not
    re-encoded (left as it is): PIL cannot read it (a note), or its folder, the kept copy or the
    log is not what launcher wrote there (a failure naming it)."""
    state = Path(ctx["state_dir"])
    try:
        return reencode(path, kind, ctx.get("quality", 95), state, rel, ctx.get("run", "")), None, False
    except Unfixable as err:  # this file only: the shard goes on
        return None, str(err), False
    except (LauncherError, OSError) as err:
        return None, f"not re-encoded: {err}", True


def apply_fixes(desc: dict, fixed: list[dict]) -> list[str]:
    """Re-encoded files have new sizes: rewrite them in the manifest, prepare's unit records and
    the split's complete record (so a later `exists` check or finalize agree with the disk), then
    log each fix's outcome in state_dir/verify-fixes.jsonl after its intent."""
    state = Path(desc["state_dir"])
    updated = update_sizes(state, {f["path"]: f["new_size"] for f in fixed if f["ok"]}, desc.get("folders"))
    for f in fixed:
        line = {"run": desc["run"], "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "state": "applied", **f}
        append_line(state / FIXES, line, fsync=True)
    return updated
