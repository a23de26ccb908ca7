"""verify's unit for storage.format=tar: a range of samples of a split's tar index, each image's
bytes read from its byte range of the original archive (one positional read per image at decode,
its head and tail at header) and checked as verify checks an image file (launcher.check.images);
a sample of the overlay is checked through its replacement file, which is what the loaders read.
With verify.fix an odd image (PNG data, CMYK, a rare JPEG process) is re-encoded into the state
folder's overlay (the archive stays as it is); the report unit records it (record_fixes).
No torch here."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from launcher.archive import safefs
from launcher.check.fix import FIXABLE, reencoded
from launcher.check.fixlog import md5_bytes, split_of
from launcher.check.imagebounds import Limits, Refused, check_size, read_fd, read_regular
from launcher.check.images import FileResult, probe, probe_range
from launcher.check.shard import add_note
from launcher.core.errors import LauncherError
from launcher.tarformat.archivefile import AGAIN, open_checked
from launcher.tarformat.indexfile import TarIndex, read_index
from launcher.tarformat.overlay import OverlayError, read_overlay_record, record_replacements, replacement_path


def verify_tar_shard(
    index: str,
    archive: str,
    split: str,
    lo: int,
    hi: int,
    level: str,
    fix: bool = False,
    limits: dict | None = None,
    quality: int = 95,
    state_dir: str = "",
    processes: int = 1,
) -> dict:
    """verify-tar unit: samples [lo, hi) of the split's tar index at `level` (in `processes` slices)."""
    t0, cpu0 = time.perf_counter(), sum(os.times()[:4])
    ctx = {"index": index, "archive": archive, "split": split, "level": level, "fix": fix}
    ctx |= {"limits": limits or {}, "quality": quality, "state_dir": state_dir}
    slices = slice_range(lo, hi, processes)
    if len(slices) > 1:
        with ProcessPoolExecutor(len(slices)) as pool:
            results = list(pool.map(check_slice, [(ctx, a, b) for a, b in slices]))
    else:
        results = [check_slice((ctx, lo, hi))]
    return {
        "split": split,
        "level": level,
        "images": hi - lo,
        "checked": sum(r["checked"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "failures": [f for r in results for f in r["failures"]],
        "notes": [n for r in results for n in r["notes"]],
        "fixed": [x for r in results for x in r["fixed"]],
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_s": round(sum(os.times()[:4]) - cpu0, 3),
    }


def slice_range(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, hi - lo))
    cuts = [lo + (hi - lo) * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(lo, hi)]


def check_slice(args: tuple) -> dict:
    """Samples [lo, hi): the index read again (checksummed), the archive opened once and checked
    against the identity it recorded, each sample checked; a changed archive is one failure."""
    ctx, lo, hi = args
    out = {"checked": 0, "bytes": 0, "failures": [], "notes": [], "fixed": []}
    index = read_index(ctx["index"], ctx["split"])
    try:
        fd = open_checked(ctx["archive"], index.archive, ctx["index"])
    except LauncherError as err:
        out["failures"].append([ctx["archive"], "archive", str(err)])
        return out
    try:
        overlay = overlay_of(ctx, index, out)
        end = os.fstat(fd).st_size
        for i in range(lo, hi):
            check_sample(index, i, fd, end, overlay.get(i), ctx, out)
    finally:
        os.close(fd)
    return out


def overlay_of(ctx: dict, index: TarIndex, out: dict) -> dict[int, dict]:
    """The overlay record of the index (sample -> size, sha256); one that does not belong is a failure."""
    try:
        return read_overlay_record(ctx["state_dir"], index)
    except OverlayError as err:
        out["failures"].append([f"overlay-{index.split}.json", "overlay", str(err)])
        return {}


def check_sample(index: TarIndex, i: int, fd: int, end: int, replaced: dict | None, ctx: dict, out: dict) -> None:
    """Sample i: its range inside the archive and within the limits, then its bytes at the level (or
    its replacement's, when the overlay has one); an odd image re-encoded with verify.fix."""
    rel, offset, size = index.path(i), index.offsets[i], index.sizes[i]
    limits = Limits(**ctx["limits"])
    out["checked"] += 1
    out["bytes"] += size

    def fail(check: str, reason: str) -> None:
        out["failures"].append([rel, check, reason])

    if offset + size > end:
        return fail(
            "exists", f"its bytes {offset:,} to {offset + size:,} run past the archive's end ({end:,}); {AGAIN}"
        )
    if replaced is not None:
        r = check_replacement(str(replacement_path(ctx["state_dir"], index, i)), replaced, ctx["level"], limits)
    else:
        try:
            check_size(size, limits)
        except Refused as err:
            return fail(err.check, str(err))
        if size == 0:
            return fail("exists", "empty file (0 bytes)")
        if ctx["level"] == "exists":
            return None
        r = probe_range(fd, offset, size, ctx["level"], None, limits)
    if not r.ok:
        return fail(r.check, r.reason)
    add_note(out["notes"], rel, r)
    if ctx["fix"] and replaced is None and r.kind in FIXABLE:
        fix_sample(index, i, read_fd(fd, size, offset), r.kind, ctx, out, fail)
    return None


def check_replacement(path: str, entry: dict, level: str, limits: Limits) -> FileResult:
    """A replacement file of the overlay: the size (and at header and decode the sha256) the record
    holds, then the image checks at `level`."""
    r = probe(path, level, entry["size"], limits)
    if r.ok and level != "exists" and hashlib.sha256(read_regular(path, limits)).hexdigest() != entry["sha256"]:
        r = FileResult(False, "exists", "its sha256 is not the one the overlay recorded", size=r.size)
    if not r.ok:
        why = (
            f"its replacement {path} fails: {r.reason}; run `launcher verify storage.format=tar verify.fix=true` again"
        )
        return FileResult(False, r.check, why, size=r.size)
    return r


def fix_sample(index: TarIndex, i: int, data: bytearray, kind: str, ctx: dict, out: dict, fail: Callable) -> None:
    """Re-encode sample i to RGB JPEG into its replacement file (atomically, never through a link),
    probe it again; the report unit adds it to the overlay record."""
    rel = index.path(i)
    try:
        new = reencoded(bytes(data), ctx["quality"])
    except Exception as err:  # PIL cannot read it (12-bit, arithmetic-coded, broken data)
        out["notes"].append([rel, "unfixable", f"cannot be re-encoded ({type(err).__name__}: {err}); left as it is"])
        return
    path = replacement_path(ctx["state_dir"], index, i)
    try:
        safefs.write_atomic(path, new)
    except (LauncherError, OSError) as err:
        fail("fix", f"not re-encoded: cannot write {path}: {err}")
        return
    again = probe(str(path), ctx["level"], len(new), Limits(**ctx["limits"]))
    change = {"old_kind": kind, "old_size": len(data), "new_size": len(new), "md5_before": md5_bytes(data)}
    change |= {"md5_after": md5_bytes(new), "sha256": hashlib.sha256(new).hexdigest(), "replacement": str(path)}
    out["fixed"].append({"path": rel, "index": i, **change, "ok": again.ok})
    if not again.ok:
        fail("fix", f"the re-encoded file {path} fails {again.check}: {again.reason}")


def record_fixes(desc: dict, fixed: list[dict]) -> list[str]:
    """The report unit after verify.fix on a tar root: the replacements that passed, added to each
    split's overlay record (the loaders read them from there); returns the records written."""
    state = Path(desc["state_dir"])
    by_split: dict[str, dict[int, dict]] = {}
    for f in fixed:
        if f["ok"]:  # the split of a path below its folder (dataset.splits.<split>.folder: data_large_standard)
            split = split_of(f["path"], desc.get("folders"))
            by_split.setdefault(split, {})[f["index"]] = {"size": f["new_size"], "sha256": f["sha256"]}
    written = []
    for split, entries in by_split.items():
        index = read_index(state / f"tarindex-{split}.bin", split)
        written.append(str(record_replacements(state, index, entries)))
    return written
