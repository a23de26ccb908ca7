"""verify: check a torchvision ImageNet root (ours or one prepared by anything else) and say exactly
what is wrong.

    expected layout (devkit archive, our cached devkit.json, or meta.bin + the folders)
    -> meta.bin (torchvision's load_meta_file, against the devkit) -> top level and split folders
       (here: a few thousand directory entries at most)
    -> shards of class folders as units: each lists its folders, checks names, labels and counts,
       and every file at verify.level; verify.fix re-encodes the odd files
    -> a report unit merges the shard records into the JSON report (after a fix it also rewrites
       the manifest and prepare's records for the files it changed)

Levels: `exists` (present, size as in the manifest), `header` (JPEG/PNG structure read from the
head and the tail of the file: signature, segments, SOFn dimensions, end marker), `decode`
(header + PIL decodes all the image data; see `decode`). Every level reads regular files only, each
within verify.max_file_bytes, its header within verify.max_pixels and its JPEG scans within
verify.max_scans (launcher.imagebounds); meta.bin and the state files verify reads are bounded
too (meta_bounds, read_state_json). Records of a run live in
state_dir/verify/<run id>/, so each run checks everything again. No Hydra, no submitit here:
VerifyRequest carries paths and values.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from launcher import completion, dispatch, plan, runner, safefs
from launcher.errors import LauncherError
from launcher.fixlog import FIX_MAX_BYTES, FIXES, keep_original, md5_bytes, reconcile_fixes, split_of, update_sizes
from launcher.imagebounds import (
    PNG_SIGNATURE,
    PROGRESSIVE_SOF,
    BadImage,
    Limits,
    Refused,
    check_image,
    check_pixels,
    check_regular,
    jpeg_header,
    jpeg_scans,
    open_regular,
    read_fd,
)
from launcher.layout import ROOT_ID_FILE, SPLITS, Layout, Lock, append_line, read_json, write_json
from launcher.manifest import VERSION as MANIFEST_VERSION
from launcher.progress import human_bytes, table
from launcher.units import Unit, is_complete, run_unit

LEVELS = ("exists", "header", "decode")
REPORT_VERSION = 1
# the real val images' names (the dataset's fact, used to name a missing val image)
VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"
# odd files re-encoded to RGB JPEG by verify.fix (grayscale JPEGs every decoder reads: kept)
FIXABLE = ("png", "cmyk", "process")
# on SLURM, where each job costs start-up, a default shard holds at least this many image bytes
SLURM_MIN_SHARD_BYTES = {"exists": 16 << 30, "header": 4 << 30, "decode": 512 << 20}
HEAD_BYTES = 16384
# verify.max_file_bytes, verify.max_pixels, verify.max_scans when not given (launcher.config's defaults)
DEFAULT_LIMITS = Limits()
# what verify takes from a meta.bin without a devkit or dataset.expected counts to bound it (ImageNet-21k
# has 21841 classes), and at most a wnid's or class name's characters and a class's names
META_MAX_CLASSES = 100_000
META_MAX_VAL = 1_000_000
META_MAX_WNID_CHARS = 64
META_MAX_CHARS = 1000
META_MAX_NAMES = 100
# the largest state file (manifest, cached devkit.json) verify reads; ImageNet's train manifest is ~60 MB
STATE_MAX_BYTES = 1 << 30
TAIL_BYTES = 16
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# baseline, extended and progressive Huffman, 8-bit: what every JPEG decoder reads
COMMON_SOF = frozenset((0xC0, 0xC1, 0xC2))
NOTES = {
    "png": "PNG data in a JPEG-named file: PIL reads it, JPEG decoders (nvJPEG, DALI, "
    "torchvision.io.decode_jpeg) fail on it; verify.fix=true re-encodes it to RGB JPEG",
    "cmyk": "CMYK JPEG (4 components): PIL reads it, some JPEG decoders (nvJPEG, DALI) do not; "
    "verify.fix=true re-encodes it to RGB JPEG",
    "grayscale": "grayscale JPEG (1 component): readable by every decoder; loaders must convert it "
    "to RGB (PIL convert('RGB'), decode_jpeg(mode=RGB)); verify.fix leaves it as it is",
    "process": "JPEG coding process not read by every decoder (arithmetic, lossless or 12-bit); "
    "verify.fix=true re-encodes it to RGB JPEG",
}
FAILURE_HINTS = {
    "meta": "meta.bin: run `launcher prepare` on a new root, or delete meta.bin and let torchvision "
    "write it from the devkit",
    "structure": "folders: move stray files and folders out of the root; restore missing ones from "
    "the archives (`launcher prepare` into a new root)",
    "exists": "missing or resized files: restore them from the archives (`launcher prepare` into a new root)",
    "header": "damaged files: restore them from the archives (`launcher prepare` into a new root)",
    "decode": "undecodable files: restore them from the archives (`launcher prepare` into a new root)",
    "totals": "counts: compare dataset.expected with what the archives hold (dataset=synthetic "
    "takes every count from the devkit)",
    "md5": "archives: download them again",
    "devkit": "devkit: download ILSVRC2012_devkit_t12.tar.gz again",
    "shard": "a shard did not finish: see its job log, then run verify again",
    "fix": "re-encoded files that fail: restore them from the archives (their old md5 is in the report)",
}


@dataclass
class VerifyRequest:
    layout: Layout
    archive_dir: Path
    # key -> (file name, md5 or None)
    archives: dict[str, tuple[str, str | None]]
    # train/val/classes -> expected count or None
    expected: dict[str, int | None]
    devkit_meta: str
    devkit_ground_truth: str
    devkit_max_bytes: int
    train_image_pattern: str
    val_image_pattern: str
    # dataset.patterns.wnid and .ilsvrc_id: what a WNID and an ILSVRC2012_ID must match (ASCII)
    wnid_pattern: str
    ilsvrc_id_pattern: str
    splits: list[str]
    level: str = "header"
    fix: bool = False
    fix_quality: int = 95
    shards: int | None = None
    check_md5: bool = False
    report: Path | None = None
    log_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    # what one image file may cost (verify.max_file_bytes, verify.max_pixels, verify.max_scans)
    limits: Limits = DEFAULT_LIMITS
    # the resolved config of the run, kept in the ledger
    config: dict = field(default_factory=dict)

    def archive_candidates(self, key: str) -> list[Path]:
        """Where an archive may be: storage.archive_dir, or the root itself (torchvision keeps them there)."""
        name = self.archives[key][0]
        return [self.archive_dir / name, self.layout.root / name]

    def find_archive(self, key: str) -> Path | None:
        return next((p for p in self.archive_candidates(key) if p.is_file()), None)


# ---------------------------------------------------------------- one file


@dataclass
class FileResult:
    ok: bool
    # the level that failed (exists, header, decode) and why
    check: str | None = None
    reason: str | None = None
    note: str | None = None
    kind: str | None = None
    size: int = 0


def jpeg_end(tail: bytes, size: int, scan: int, read, progressive: bool = False, limits: Limits = DEFAULT_LIMITS):
    """None when the image ends at the end of the file, or a note on the bytes after its end marker.
    A file that ends in FFD9 ends there (the marker cannot hide in the image data), unless it is
    progressive: then its scans are counted. Otherwise the end-of-image marker is found by walking
    the scans and the segments between them (`read(0, size)`: the whole file, at most
    limits.max_file_bytes); none at all: truncated."""
    if tail.endswith(b"\xff\xd9") and not progressive:
        return None
    _, end = jpeg_scans(read(0, size), scan, limits)
    if end == size:
        return None
    at = f"{size - end} bytes after the end-of-image marker (FFD9) at byte {end - 2}"
    return f"trailing bytes after the end marker: {at}, ignored by decoders"


def parse_header(
    head: bytes, tail: bytes, size: int, read, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, int, int, str | None, str | None]:
    """(format, width, height, odd kind or None, note or None) from the head and tail of an image file;
    `read(offset, n)` fetches other bytes. Refused: more pixels or scans than `limits`."""
    if head[:3] == b"\xff\xd8\xff":
        marker, precision, height, width, components, scan = jpeg_header(head, size, read)
        if not width or not height or components not in (1, 3, 4):
            raise BadImage(f"corrupt JPEG header: {width}x{height} pixels, {components} components")
        check_pixels(width, height, limits)
        extra = jpeg_end(tail, size, scan, read, marker in PROGRESSIVE_SOF, limits)
        if marker not in COMMON_SOF or precision != 8:
            kind = "process"
        else:
            kind = {1: "grayscale", 3: None, 4: "cmyk"}[components]
        note = NOTES[kind] if kind else None
        if extra:
            note = f"{note}; {extra}" if note else extra
        return "JPEG", width, height, kind, note
    if head[:8] == PNG_SIGNATURE:
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise BadImage("corrupt PNG: no IHDR chunk after the signature")
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if not width or not height:
            raise BadImage(f"corrupt PNG header: {width}x{height} pixels")
        check_pixels(width, height, limits)
        if not tail.endswith(PNG_END):
            raise BadImage("truncated: no IEND chunk at the end of the PNG")
        return "PNG", width, height, "png", NOTES["png"]
    if not head:
        raise BadImage("empty file (0 bytes)")
    raise BadImage(f"not a JPEG or PNG: the file starts with {head[:8].hex(' ')}")


_IMAGE = None


def pil_image():
    global _IMAGE
    if _IMAGE is None:
        from PIL import Image

        _IMAGE = Image
    return _IMAGE


def decode(data: bytes) -> tuple[str, tuple[int, int], list[str]]:
    """Decode all the image data with PIL (`Image.verify()` would not read JPEG data): (mode, size,
    PIL's warnings). A JPEG is decoded at 1/8 scale in the DCT domain (PIL's draft mode): libjpeg
    still parses every marker and entropy-decodes every block of every scan, which is where
    truncation and damage surface, and skips only the full-size IDCT and colour conversion,
    which cannot fail; 1.5x faster. tests/test_verify.py checks it fails exactly the files a
    full-size decode fails."""
    image = pil_image()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as im:
            mode, dims = im.mode, im.size
            im.draft(mode, (max(1, dims[0] // 8), max(1, dims[1] // 8)))  # no-op for PNG
            im.load()
    return mode, dims, [str(w.message) for w in caught]


def probe(path: str, level: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS) -> FileResult:
    """Check one image file at `level`; `size` is the manifest's (None: unknown). At header and
    decode a damaged file fails for what is wrong inside it, its size mismatch added. Only a regular
    file within `limits` is read (a FIFO, a device or a link fails, never blocks or reads forever)."""
    actual = 0
    try:
        if level == "exists":
            actual = check_regular(path, limits)
            return _sized(actual, size) or FileResult(True, size=actual)
        fd, actual = open_regular(path, limits)
        try:
            if level == "header":
                head = os.pread(fd, HEAD_BYTES, 0)
                tail = head[-TAIL_BYTES:] if actual <= HEAD_BYTES else os.pread(fd, TAIL_BYTES, actual - TAIL_BYTES)
                _, width, height, kind, note = parse_header(head, tail, actual, reader(fd, actual), limits)
            else:
                data = read_fd(fd, actual)
        finally:
            os.close(fd)
        if level != "header":
            actual = len(data)
            _, width, height, kind, note = parse_header(
                data, data[-TAIL_BYTES:], actual, lambda o, n: data[o : o + n], limits
            )
            check_image(data, limits)  # scans of every JPEG, not only the progressive ones
    except BadImage as err:
        return FileResult(False, "header", f"{err}{_size_note(actual, size)}", size=actual)
    except Refused as err:
        return FileResult(False, err.check, str(err), size=actual)
    except FileNotFoundError:
        return FileResult(False, "exists", "missing (gone while verify ran)")
    except OSError as err:
        return FileResult(False, "exists", f"cannot read it: {err.strerror or err}")
    if level == "decode":
        try:
            _, dims, warned = decode(data)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
            reason = f"PIL cannot decode it: {type(err).__name__}: {err}{_size_note(actual, size)}"
            return FileResult(False, "decode", reason, size=actual)
        if dims != (width, height):
            reason = f"PIL decodes {dims[0]}x{dims[1]}, the header says {width}x{height}"
            return FileResult(False, "decode", reason, size=actual)
        if warned:
            note = "; ".join([*([note] if note else []), *(f"PIL warns: {w}" for w in warned)])
    return _sized(actual, size) or FileResult(True, None, None, note, kind, actual)


def reader(fd: int, size: int):
    """read(offset, n) of an open file, never past `size` (the size fstat gave when it was opened)."""
    return lambda offset, n: bytes(read_fd(fd, max(0, min(n, size - offset)), offset))


def _size_note(actual: int, expected: int | None) -> str:
    if expected is None or actual == expected:
        return ""
    return (
        f" (the manifest says {expected} bytes)" if actual == 0 else f" ({actual} bytes, the manifest says {expected})"
    )


def _sized(actual: int, expected: int | None) -> FileResult | None:
    if expected is not None and actual != expected:
        return FileResult(False, "exists", f"{actual} bytes, the manifest says {expected}", size=actual)
    if actual == 0:
        return FileResult(False, "exists", "empty file (0 bytes)")
    return None


def check_file(
    path: str | Path, level: str, size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bool, str | None, str | None]:
    """(ok, reason of the failure, note on an odd but valid file) of one image file at `level`."""
    r = probe(str(path), level, size, limits)
    return r.ok, (f"{r.check}: {r.reason}" if r.reason else None), r.note


# ---------------------------------------------------------------- fix


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
            safefs.write_all(fd, new)
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


# ---------------------------------------------------------------- one class folder


def check_class(root: str, split: str, cls: dict, level: str, ctx: dict) -> dict:
    """Every entry of root/<split>/<wnid>: names, labels, counts, and each image at `level`.

    cls: {"wnid", "count": devkit count or None, "files": [[name, size], ...] from the manifest or None}
    ctx: {"pattern": image name regex template, "val_wnids": list or None, "val_numbers": wnid -> its
          val image numbers, "fix": bool, "quality": int, "limits": Limits' fields}
    """
    wnid = cls["wnid"]
    rel, folder = f"{split}/{wnid}", os.path.join(root, split, wnid)
    failures, notes, fixed = [], [], []
    out = {"wnid": wnid, "images": 0, "checked": 0, "bytes": 0, "failures": failures, "notes": notes, "fixed": fixed}

    def fail(name: str | None, check: str, reason: str) -> None:
        failures.append([f"{rel}/{name}" if name else rel, check, reason])

    try:
        entries = sorted((e.name, e.is_dir()) for e in os.scandir(folder))
    except OSError as err:
        fail(None, "structure", f"cannot list the class folder: {err.strerror or err}")
        return out
    manifest = {name: size for name, size in cls["files"]} if cls.get("files") is not None else None
    val_wnids = ctx.get("val_wnids")
    limits = Limits(**ctx.get("limits", {}))
    own = re.compile(ctx["pattern"].replace("{wnid}", re.escape(wnid)), re.ASCII)
    anyone = re.compile(ctx["pattern"].replace("{wnid}", "(.+?)"), re.ASCII) if split == "train" else None
    accepted: list[str] = []
    seen: set[int] = set()
    for name, is_dir in entries:
        if is_dir:
            fail(name, "structure", f"a folder in a class folder: ImageFolder reads its images as {wnid}; move it out")
        elif name.endswith(".part"):
            fail(name, "structure", "temporary file of an interrupted prepare or verify.fix; delete it")
        elif split == "train":
            if (name in manifest) if manifest is not None else own.fullmatch(name):
                accepted.append(name)
            else:
                fail(name, "structure", _train_extra(name, wnid, anyone, manifest is not None))
        elif not (match := own.fullmatch(name)):
            fail(name, "structure", "stray file: not an ILSVRC2012 val image name; move it out")
        else:
            number = int(match.group(1))
            truth = val_wnids[number - 1] if val_wnids and 1 <= number <= len(val_wnids) else None
            if val_wnids and truth is None:
                fail(name, "structure", f"val image {number} has no label: the ground truth has {len(val_wnids)}")
            elif truth is not None and truth != wnid:
                why = f"in the wrong class folder: the ground truth puts val image {number} in {truth}"
                fail(name, "structure", f"{why}; move it to val/{truth}/")
            elif manifest is not None and name not in manifest:
                fail(name, "structure", "extra file: not in the manifest of val; move it out")
            else:
                accepted.append(name)
                seen.add(number)
    if manifest is not None:  # what should be here and is not
        present = set(accepted)
        for name, size in cls["files"]:
            if name not in present:
                fail(name, "exists", f"missing: listed in the manifest ({size} bytes)")
    elif split == "val":
        for number in ctx.get("val_numbers", {}).get(wnid, []):
            if number not in seen:
                fail(VAL_NAME.format(number), "exists", "missing: the ground truth puts this val image here")
    if split == "train" and cls.get("count") is not None and len(accepted) != cls["count"]:
        fail(None, "structure", f"holds {len(accepted)} images, the devkit's num_train_images says {cls['count']}")
    out["images"] = len(accepted)
    for name in accepted:
        path = os.path.join(folder, name)
        r = probe(path, level, manifest.get(name) if manifest is not None else None, limits)
        out["checked"] += 1
        out["bytes"] += r.size
        if not r.ok:
            fail(name, r.check, r.reason)
            continue
        if r.note:
            extra = r.note.removeprefix(NOTES[r.kind]).lstrip("; ") if r.kind in NOTES else r.note
            notes.append([f"{rel}/{name}", r.kind or "warning", extra])  # the kind's text is in the report once
        if ctx.get("fix") and r.kind in FIXABLE:
            change, why, failed = fix_one(path, r.kind, ctx, f"{rel}/{name}")
            if change is None:
                if failed:
                    fail(name, "fix", why)
                else:
                    notes.append([f"{rel}/{name}", "unfixable", why])
                continue
            again = probe(path, level, None, limits)
            fixed.append({"path": f"{rel}/{name}", **change, "ok": again.ok})
            if not again.ok:
                fail(name, "fix", f"the re-encoded file fails {again.check}: {again.reason}")
    return out


def _train_extra(name: str, wnid: str, anyone: re.Pattern | None, listed: bool) -> str:
    match = anyone.fullmatch(name) if anyone else None
    if match and match.group(1) != wnid:
        return f"in the wrong class folder: the name says class {match.group(1)}; move it to train/{match.group(1)}/"
    if listed:
        return "extra file: not in the manifest of train; move it out"
    return f"stray file: not a train image name of class {wnid}; move it out"


def _check_class_args(args) -> dict:
    return check_class(*args)


def verify_shard(root: str, split: str, input: str, level: str, fix: bool = False, processes: int = 1) -> dict:
    """Verify unit: the class folders listed in `input` (a JSON file of the run), every file at `level`."""
    t0, cpu0 = time.perf_counter(), sum(os.times()[:4])
    spec = read_json(Path(input))
    val_wnids = None
    if split == "val" and spec.get("expected"):
        val_wnids = read_json(Path(spec["expected"])).get("val_wnids")
    numbers: dict[str, list[int]] = {}
    for number, wnid in enumerate(val_wnids or [], start=1):
        numbers.setdefault(wnid, []).append(number)
    ctx = {"pattern": spec["pattern"], "val_wnids": val_wnids, "val_numbers": numbers, "fix": fix}
    ctx["quality"] = spec.get("quality", 95)
    ctx["state_dir"], ctx["run"] = spec.get("state_dir"), spec.get("run", "")
    ctx["limits"] = spec.get("limits", {})
    jobs = [(root, split, cls, level, ctx) for cls in spec["classes"]]
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(processes, len(jobs))) as pool:
            results = list(pool.map(_check_class_args, jobs, chunksize=max(1, len(jobs) // (4 * processes))))
    else:
        results = [check_class(*job) for job in jobs]
    return {
        "split": split,
        "level": level,
        "classes": len(results),
        "images": sum(r["images"] for r in results),
        "checked": sum(r["checked"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "counts": {r["wnid"]: r["images"] for r in results},
        "failures": [f for r in results for f in r["failures"]],
        "notes": [n for r in results for n in r["notes"]],
        "fixed": [x for r in results for x in r["fixed"]],
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_s": round(sum(os.times()[:4]) - cpu0, 3),
    }


def verify_md5(path: str, expected: str, key: str) -> dict:
    """Verify md5 unit: like prepare's, but a mismatch is a finding of the report, not an error."""
    from launcher.extract import check_md5

    try:
        return {"ok": True, "key": key, **check_md5(path, expected, key)}
    except LauncherError as err:
        return {"ok": False, "key": key, "path": path, "reason": str(err)}


# ---------------------------------------------------------------- expected layout and meta.bin


def load_meta(root: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[dict, list]:
    """meta.bin loaded as torchvision's `datasets.imagenet.load_meta_file` does (the file exists,
    then `torch.load(path, weights_only=True)`), without importing torch or torchvision for a
    meta.bin of plain values (about 2 s of start-up). tests/test_verify.py checks both agree.
    Only a regular file of at most limits.max_file_bytes is read."""
    from launcher import torchfile

    path = root / "meta.bin"
    if not path.is_file():
        raise RuntimeError(f"The meta file {path} is not present in the root directory or is corrupted.")
    check_regular(str(path), limits)
    return torchfile.load(path)


def meta_bounds(wnid_to_classes: dict, val_wnids: list, most: dict[str, int]) -> str | None:
    """What in a loaded meta.bin exceeds what verify takes from it (None: nothing): at most
    most["classes"] classes and most["val"] val entries, wnids strings of at most META_MAX_WNID_CHARS
    characters, class names of at most META_MAX_CHARS, at most META_MAX_NAMES names a class. A few
    kilobytes of pickle can refer to one string a million times; this is checked before anything is
    built from it (the run's expected.json holds val_wnids)."""
    if len(wnid_to_classes) > most["classes"]:
        return f"lists {len(wnid_to_classes)} classes, more than {most['classes']} ({most['by']})"
    if len(val_wnids) > most["val"]:
        return f"val_wnids has {len(val_wnids)} entries, more than {most['val']} ({most['by']})"
    for wnid, names in wnid_to_classes.items():
        if not isinstance(wnid, str) or len(wnid) > META_MAX_WNID_CHARS:
            return f"a wnid is not a string of at most {META_MAX_WNID_CHARS} characters: {str(wnid)[:40]!r}"
        if not isinstance(names, (tuple, list)) or len(names) > META_MAX_NAMES:
            return f"the names of {wnid} are not a tuple of at most {META_MAX_NAMES} strings"
        if not all(isinstance(n, str) and len(n) <= META_MAX_CHARS for n in names):
            return f"a name of {wnid} is not a string of at most {META_MAX_CHARS} characters"
    if not all(isinstance(w, str) and len(w) <= META_MAX_WNID_CHARS for w in val_wnids):
        return f"a val_wnids entry is not a string of at most {META_MAX_WNID_CHARS} characters"
    return None


def meta_most(expected: dict, req_expected: dict) -> dict:
    """The largest class and val counts meta.bin may hold: twice those of dataset.expected, else of
    the devkit (a meta.bin of another devkit is still read and compared), else META_MAX_CLASSES and
    META_MAX_VAL."""
    if req_expected.get("classes") and req_expected.get("val"):
        classes, val = 2 * req_expected["classes"], 2 * req_expected["val"]
        return {"classes": classes, "val": val, "by": "twice dataset.expected's counts"}
    if expected.get("wnid_to_classes") and expected.get("val_wnids") is not None:
        classes, val = 2 * len(expected["wnid_to_classes"]), 2 * len(expected["val_wnids"])
        return {"classes": classes, "val": val, "by": "twice the devkit's counts"}
    return {"classes": META_MAX_CLASSES, "val": META_MAX_VAL, "by": "verify's bound without a devkit or counts"}


def expected_layout(req: VerifyRequest, findings: list) -> dict:
    """What the root should hold: {source, wnid_to_classes, num_train_images, val_wnids} from the
    devkit archive (our cached devkit.json when it describes the same file), else devkit.json alone,
    else nothing (meta.bin and the folders decide)."""
    from launcher.devkit import parse_devkit
    from launcher.index import same_archive

    cached = read_state_json(req.layout.devkit_file, findings)
    if cached is not None and not (isinstance(cached, dict) and isinstance(cached.get("devkit"), dict)):
        findings.append([str(req.layout.devkit_file), "devkit", "not a devkit cache of launcher; delete it"])
        cached = None
    path = req.find_archive("devkit")
    kit, source = None, None
    if path is not None:
        if cached and same_archive(cached, path):
            kit, source = cached["devkit"], f"devkit {path} (cached in {req.layout.devkit_file})"
        else:
            try:
                kit = parse_devkit(
                    path,
                    req.devkit_meta,
                    req.devkit_ground_truth,
                    req.devkit_max_bytes,
                    wnid_pattern=req.wnid_pattern,
                    id_pattern=req.ilsvrc_id_pattern,
                ).to_json()
                source = f"devkit {path}"
            except LauncherError as err:
                findings.append([str(path), "devkit", str(err)])
    if kit is None and cached:
        kit, source = cached["devkit"], f"{req.layout.devkit_file} (devkit archive not found)"
    if kit is None:
        return {"source": None, "by": None}
    return {"source": source, "by": "the devkit", **kit}


def check_meta(
    root: Path,
    expected: dict,
    classes: int | None,
    findings: list,
    limits: Limits = DEFAULT_LIMITS,
    req_expected: dict | None = None,
) -> dict | None:
    """meta.bin loads with torchvision's load_meta_file, has the right shape, stays within the counts
    and string sizes of meta_bounds and agrees with the devkit; returns {wnid_to_classes, val_wnids}
    when it loads."""
    rel = "meta.bin"
    if not (root / "meta.bin").is_file():
        why = f"missing: torchvision.datasets.ImageNet({str(root)!r}) needs it. Run `launcher prepare` (it "
        findings.append([rel, "meta", why + "writes meta.bin), or put the devkit in the root for torchvision"])
        return None
    try:
        wnid_to_classes, val_wnids = load_meta(root, limits)
    except Refused as err:
        findings.append([rel, "meta", str(err)])
        return None
    except Exception as err:  # torch raises many kinds for a file that is not its own
        findings.append(
            [rel, "meta", f"it does not load as torchvision's load_meta_file loads it: {type(err).__name__}: {err}"]
        )
        return None
    if not isinstance(wnid_to_classes, dict) or not isinstance(val_wnids, list):
        findings.append([rel, "meta", "not (wnid_to_classes: dict, val_wnids: list) as torchvision writes it"])
        return None
    if why := meta_bounds(wnid_to_classes, val_wnids, meta_most(expected, req_expected or {"classes": classes})):
        findings.append([rel, "meta", f"{why}; not used. Run `launcher prepare` on a new root, or delete meta.bin"])
        return None
    meta = {"wnid_to_classes": {w: list(c) for w, c in wnid_to_classes.items()}, "val_wnids": list(val_wnids)}
    if classes is not None and len(wnid_to_classes) != classes:
        findings.append([rel, "meta", f"lists {len(wnid_to_classes)} classes, dataset.expected.classes is {classes}"])
    if stray := sorted({w for w in val_wnids if w not in wnid_to_classes}):
        findings.append([rel, "meta", f"val_wnids name {len(stray)} classes it does not list: {', '.join(stray[:5])}"])
    if expected.get("source"):
        findings.extend(
            [rel, "meta", f"{p}; the devkit is {expected['source']}"] for p in meta_vs_devkit(meta, expected)
        )
    return meta


def meta_vs_devkit(meta: dict, kit: dict) -> list[str]:
    """How meta.bin differs from the devkit (empty when it agrees)."""
    problems = []
    ours, theirs = set(meta["wnid_to_classes"]), set(kit["wnid_to_classes"])
    if ours != theirs:
        problems.append(
            f"meta.bin is from another devkit: it lists {len(ours)} classes, the devkit {len(theirs)}; "
            f"{len(theirs - ours)} devkit classes missing (e.g. {', '.join(sorted(theirs - ours)[:3]) or '-'}), "
            f"{len(ours - theirs)} not in the devkit (e.g. {', '.join(sorted(ours - theirs)[:3]) or '-'})"
        )
    else:
        names = [w for w in sorted(ours) if list(meta["wnid_to_classes"][w]) != list(kit["wnid_to_classes"][w])]
        if names:
            problems.append(f"class names differ from the devkit's for {len(names)} classes (e.g. {names[0]})")
    mv, kv = meta["val_wnids"], kit["val_wnids"]
    if len(mv) != len(kv):
        problems.append(f"val_wnids has {len(mv)} entries, the devkit's ground truth {len(kv)}")
    elif (first := next((i for i, (a, b) in enumerate(zip(mv, kv)) if a != b), None)) is not None:
        problems.append(f"val_wnids differs from the devkit's ground truth from val image {first + 1} on")
    return problems


# ---------------------------------------------------------------- state files verify reads


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


# ---------------------------------------------------------------- folders (top level and splits)


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


# ---------------------------------------------------------------- planning


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def shard_id(split: str, level: str, i: int, n: int) -> str:
    return f"verify-{split}-{level}-{i:04d}-of-{n:04d}"


def estimate_bytes(folder: Path, classes: list[str], samples: int = 16) -> float:
    """Mean file size from a few class folders (for progress and balance when there is no manifest)."""
    sizes = []
    for wnid in classes[:: max(1, len(classes) // samples)][:samples]:
        try:
            with os.scandir(folder / wnid) as it:
                for k, entry in enumerate(it):
                    if k >= 8:
                        break
                    sizes.append(entry.stat().st_size)
        except OSError:
            continue
    return sum(sizes) / len(sizes) if sizes else 110_000.0


def plan_split(
    req: VerifyRequest,
    split: str,
    todo: list[str],
    exp: dict,
    manifest: dict | None,
    n_shards: int,
    run_dir: Path,
    min_bytes: int = 0,
    processes: int = 1,
) -> list[Unit]:
    """Shards of the class folders of `split`, balanced by bytes; each shard's input is a JSON file."""
    files: dict[str, list] = {}
    if manifest is not None:
        for path, size in zip(manifest["paths"], manifest["sizes"]):
            wnid, name = path.split("/", 1)
            files.setdefault(wnid, []).append([name, size])
    counts = _class_counts(exp, split)
    mean = estimate_bytes(req.layout.root / split, todo) if manifest is None else 0
    weights = [
        sum(s for _, s in files.get(w, [])) if manifest is not None else int(mean * counts.get(w, 1)) for w in todo
    ]
    if min_bytes and not req.shards:  # where each job costs start-up (SLURM), no tiny shards
        n_shards = min(n_shards, max(1, -(-sum(weights) // min_bytes)))
    groups = plan.balanced_groups(weights, n_shards)
    pattern = req.train_image_pattern if split == "train" else req.val_image_pattern
    units = []
    for i, group in enumerate(groups):
        uid = shard_id(split, req.level, i, len(groups))
        classes = [
            {
                "wnid": todo[j],
                "count": counts.get(todo[j]) if split == "train" and counts else None,
                "files": files.get(todo[j], []) if manifest is not None else None,
            }
            for j in group
        ]
        spec = {
            "split": split,
            "pattern": pattern,
            "expected": str(run_dir / "expected.json"),
            "quality": req.fix_quality,
            "state_dir": str(run_dir.parent.parent),
            "run": run_dir.name,
            "limits": {k: getattr(req.limits, k) for k in ("max_file_bytes", "max_pixels", "max_scans")},
            "classes": classes,
        }
        write_json(run_dir / "inputs" / f"{uid}.json", spec)
        units.append(
            Unit(
                uid,
                "verify",
                sum(weights[j] for j in group),
                str(run_dir / "units" / f"{uid}.json"),
                {
                    "root": str(req.layout.root),
                    "split": split,
                    "input": str(run_dir / "inputs" / f"{uid}.json"),
                    "level": req.level,
                    "fix": req.fix,
                    "processes": processes,
                },
            )
        )
    return units


def manifest_findings(split: str, manifest: dict, exp: dict, findings: list) -> None:
    """The manifest (our roots only) against the devkit."""
    rel = f"manifest-{split}.json"
    if exp.get("wnid_to_classes") and set(manifest["wnids"]) != set(exp["wnid_to_classes"]):
        findings.append([rel, "structure", "the manifest lists other classes than the devkit; run prepare again"])
    if split == "train" and exp.get("num_train_images"):
        per: dict[str, int] = {}
        for path in manifest["paths"]:
            w = path.split("/", 1)[0]
            per[w] = per.get(w, 0) + 1
        bad = sorted(w for w, n in exp["num_train_images"].items() if per.get(w, 0) != n)
        if bad:
            e = f"e.g. {bad[0]}: {per.get(bad[0], 0)} vs {exp['num_train_images'][bad[0]]}"
            findings.append([rel, "structure", f"its counts differ from the devkit's for {len(bad)} classes ({e})"])


def md5_units(req: VerifyRequest, run_dir: Path, notes: list) -> list[Unit]:
    units = []
    keys = sorted({k for s in req.splits for k in ("devkit", s)}, key=["devkit", "train", "val"].index)
    for key in keys:
        name, md5 = req.archives[key]
        path = req.find_archive(key)
        if path is None or not md5:
            why = (
                "not found in storage.archive_dir or the root"
                if path is None
                else f"dataset.archives.{key}.md5 is null"
            )
            notes.append([name, "md5", f"md5 not checked: {why}"])
            continue
        uid = f"verify-md5-{key}"
        units.append(
            Unit(
                uid,
                "verify-md5",
                path.stat().st_size,
                str(run_dir / "units" / f"{uid}.json"),
                {"path": str(path), "expected": md5, "key": key},
            )
        )
    return units


@dataclass
class VerifyPlan:
    run_id: str
    run_dir: Path
    shards: list[Unit]
    md5: list[Unit]
    report: Unit


def make_plan(req: VerifyRequest, parallelism: int, processes: int, min_bytes: int = 0) -> VerifyPlan:
    """Check what is cheap here (meta.bin, the top level, the split folders), write the shards'
    inputs and the run description the report unit reads."""
    layout = req.layout
    run_id = new_run_id()
    run_dir = layout.state_dir / "verify" / run_id
    findings: list[list] = []
    notes: list[list] = []
    exp = expected_layout(req, findings)
    meta = check_meta(layout.root, exp, req.expected.get("classes"), findings, req.limits, req.expected)
    if not exp.get("source") and meta is not None:
        exp = {"source": "meta.bin (no devkit found)", "by": "meta.bin", **meta, "num_train_images": None}
    write_json(run_dir / "expected.json", {k: exp.get(k) for k in ("source", "val_wnids", "num_train_images")})
    check_top(req, findings, notes)
    shards: list[Unit] = []
    totals: dict[str, dict] = {}
    n_shards = req.shards or 2 * parallelism
    for split in req.splits:
        if reason := completion.incomplete_reason(layout.root, layout.state_dir, split):
            findings.append([split, "prepare", f"{reason}; run `launcher prepare` again after fixing the cause"])
        present = list_split(layout.root, split, findings)
        manifest = read_state_manifest(layout.manifest_file(split), findings)
        if manifest is not None:
            manifest_findings(split, manifest, exp, findings)
        source = exp.get("source") or "the folders (no devkit, no meta.bin)"
        classes = sorted(exp["wnid_to_classes"]) if exp.get("wnid_to_classes") else list(present or [])
        counts = _class_counts(exp, split)
        todo = check_structure(split, present, classes, counts, source, findings) if present is not None else []
        shards += plan_split(req, split, todo, exp, manifest, n_shards, run_dir, min_bytes, processes)
        totals[split] = {
            "classes": len(classes),
            "announced": _announced(exp, split),
            "announced_by": exp.get("by"),
            "expected": req.expected.get(split),
            "manifest": str(layout.manifest_file(split)) if manifest is not None else None,
        }
    md5 = md5_units(req, run_dir, notes) if req.check_md5 else []
    report = Unit(
        "verify-report",
        "verify-report",
        0,
        str(run_dir / "units" / "verify-report.json"),
        {"run": str(run_dir / "run.json")},
    )
    write_json(
        run_dir / "run.json",
        {
            "run": run_id,
            "started": time.time(),
            "root": str(layout.root),
            "state_dir": str(layout.state_dir),
            "splits": req.splits,
            "level": req.level,
            "fix": req.fix,
            "report": str(req.report or layout.state_dir / "verify.json"),
            "source": exp.get("source"),
            "classes": len(exp.get("wnid_to_classes") or {}) or None,
            "val_wnids": len(meta["val_wnids"]) if meta else None,
            "findings": findings,
            "notes": notes,
            "totals": totals,
            "shards": [u.record for u in shards],
            "md5": [u.record for u in md5],
        },
        indent=1,
    )
    return VerifyPlan(run_id, run_dir, shards, md5, report)


def _class_counts(exp: dict, split: str) -> dict[str, int]:
    """wnid -> images the devkit (or meta.bin, for val) announces; empty when unknown."""
    if split == "train":
        return dict(exp.get("num_train_images") or {})
    counts: dict[str, int] = {}
    for w in exp.get("val_wnids") or []:
        counts[w] = counts.get(w, 0) + 1
    return counts


def _announced(exp: dict, split: str) -> int | None:
    if split == "train" and exp.get("num_train_images"):
        return sum(exp["num_train_images"].values())
    if split == "val" and exp.get("val_wnids") is not None:
        return len(exp["val_wnids"])
    return None


# ---------------------------------------------------------------- the report


def write_report(run: str) -> dict:
    """Report unit: merge the shard records of a run into the JSON report; after a fix, bring the
    manifest and prepare's records up to date with the new file sizes."""
    desc = read_json(Path(run))
    if desc is None:
        raise LauncherError(f"the run description {run} is missing or damaged: run `launcher verify` again")
    failures = [_finding(f) for f in desc["findings"]]
    notes = [_note(n) for n in desc["notes"]]
    fixed, shards, counts = [], [], {}
    for split, t in desc["totals"].items():
        counts[split] = {"classes": t["classes"], "images": 0, "checked": 0, "bytes": 0, **t}
    for path in desc["shards"]:
        rec = read_json(Path(path))
        if rec is None:
            failures.append(_finding([Path(path).stem, "shard", "did not finish; its images were not checked"]))
            continue
        c = counts[rec["split"]]
        for key in ("images", "checked", "bytes"):
            c[key] += rec[key]
        failures += [_finding(f) for f in rec["failures"]]
        notes += [_note(n) for n in rec["notes"]]
        fixed += rec["fixed"]
        shards.append({k: rec.get(k) for k in ("unit", "host", "job", "wall_s", "cpu_s", "images", "bytes")})
    for split, c in counts.items():
        for what, label in (("announced", c["announced_by"]), ("expected", f"dataset.expected.{split}")):
            if c[what] is not None and c["images"] != c[what]:
                failures.append(_finding([split, "totals", f"holds {c['images']} images, {label} says {c[what]}"]))
    md5 = {}
    for path in desc["md5"]:
        rec = read_json(Path(path))
        key = Path(path).stem.rsplit("-", 1)[-1]
        if rec is None:
            failures.append(_finding([key, "md5", "the md5 unit did not finish"]))
        elif not rec["ok"]:
            failures.append(_finding([Path(rec["path"]).name, "md5", rec["reason"]]))
        md5[key] = rec and rec["ok"]
    updated = apply_fixes(desc, fixed) if fixed else []
    finished = time.time()
    report = {
        "version": REPORT_VERSION,
        "ok": not failures,
        "root": desc["root"],
        "splits": desc["splits"],
        "level": desc["level"],
        "fix": desc["fix"],
        "run": desc["run"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(desc["started"])),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
        "wall_s": round(finished - desc["started"], 3),
        "expected_from": desc["source"],
        "checks": checks_summary(failures, notes, counts, md5, desc),
        "counts": counts,
        "md5": md5,
        "failures": failures,
        "notes": notes,
        "note_kinds": {k: NOTES[k] for k in sorted({n["kind"] for n in notes}) if k in NOTES},
        "fixed": fixed,
        "updated_records": updated,
        "shards": shards,
    }
    write_json(Path(desc["report"]), report, indent=1)
    verdict = {"ok": report["ok"], "failures": len(failures), "notes": len(notes), "report": desc["report"]}
    if not report["ok"]:  # the report job fails after its record is written: sacct and afterok see it
        verdict["job_fails"] = f"verify found {len(failures)} problems; report {desc['report']}"
    return verdict


def _finding(f: list) -> dict:
    return {"path": f[0], "check": f[1], "reason": f[2]}


def _note(n: list) -> dict:
    return {"path": n[0], "kind": n[1], **({"note": n[2]} if n[2] else {})}


def checks_summary(failures: list, notes: list, counts: dict, md5: dict, desc: dict) -> dict:
    """check -> split -> {checked, failed, notes}: the rows of the summary table."""
    level = desc["level"]
    out: dict[str, dict] = {"meta": {"-": {"checked": 1, "failed": 0, "notes": 0}}}
    for split, c in counts.items():
        out.setdefault("structure", {})[split] = {"checked": c["classes"], "failed": 0, "notes": 0}
        out.setdefault(f"files ({level})", {})[split] = {"checked": c["checked"], "failed": 0, "notes": 0}
        out.setdefault("totals", {})[split] = {"checked": c["images"], "failed": 0, "notes": 0}
    if md5:
        out["md5"] = {k: {"checked": 1, "failed": int(not ok), "notes": 0} for k, ok in md5.items()}
    file_checks = {"exists", "header", "decode", "fix"}
    for f in failures:
        if f["check"] == "md5":
            continue
        check = f"files ({level})" if f["check"] in file_checks else f["check"]
        row = out.setdefault(check, {}).setdefault(split_of(f["path"]), {"checked": 0, "failed": 0, "notes": 0})
        row["failed"] += 1
    for n in notes:
        where = split_of(n["path"])
        check = f"files ({level})" if where != "-" else ("md5" if n["kind"] == "md5" else "structure")
        row = out.setdefault(check, {}).setdefault(where, {"checked": 0, "failed": 0, "notes": 0})
        row["notes"] += 1
    return out


def apply_fixes(desc: dict, fixed: list[dict]) -> list[str]:
    """Re-encoded files have new sizes: rewrite them in the manifest, prepare's unit records and
    the split's complete record (so a later `exists` check or finalize agree with the disk), then
    log each fix's outcome in state_dir/verify-fixes.jsonl after its intent."""
    state = Path(desc["state_dir"])
    updated = update_sizes(state, {f["path"]: f["new_size"] for f in fixed if f["ok"]})
    for f in fixed:
        line = {"run": desc["run"], "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "state": "applied", **f}
        append_line(state / FIXES, line, fsync=True)
    return updated


# ---------------------------------------------------------------- the whole command


def check_request(req: VerifyRequest) -> None:
    req.limits.check()
    if req.level not in LEVELS:
        raise LauncherError(f"verify.level={req.level!r} is not one of {', '.join(LEVELS)}.")
    if req.fix and req.level == "exists":
        raise LauncherError(
            "verify.fix=true needs verify.level=header or decode: level exists does not look inside the "
            "files, so it cannot find the odd ones to re-encode."
        )
    bad = [s for s in req.splits if s not in SPLITS]
    if bad:
        raise LauncherError(f"split.splits has {', '.join(bad)}; valid splits: {', '.join(SPLITS)}.")
    if not req.layout.root.is_dir():
        raise LauncherError(
            f"The root {req.layout.root} is not a folder. Point storage.root at a torchvision ImageNet "
            "root (meta.bin, train/, val/), or prepare one with `launcher prepare`."
        )
    try:
        with safefs.Dir.of(req.layout.state_dir, create=True) as state:
            probe_file = f".write-test-{os.getpid()}"
            os.close(state.create(probe_file, replace_temp=True))
            state.unlink_entry(probe_file)
    except OSError as err:
        raise LauncherError(
            f"cannot write verify's records and report into {req.layout.state_dir}: {err.strerror or err}. "
            "Point storage.state_dir at a writable folder (the root itself may stay read-only)."
        ) from err


def print_report(report: dict, path: Path, limit: int = 20) -> None:
    rows = []
    for check, per in report["checks"].items():
        for split, r in per.items():
            result = "FAILED" if r["failed"] else "ok"
            rows.append([check, split, r["checked"], r["failed"], r["notes"], result])
    print(table(["check", "split", "checked", "failed", "notes", "result"], rows, "llrrrl"))
    counts = report["counts"]
    print(
        "images: "
        + ", ".join(
            f"{s} {c['images']}"
            + (f" of {c['announced']}" if c["announced"] is not None else "")
            + f" ({human_bytes(c['bytes'])} read)"
            for s, c in counts.items()
        )
        + f"; expected layout from {report['expected_from'] or 'the folders alone (no devkit, no meta.bin)'}"
    )
    if report["notes"]:
        kinds: dict[str, int] = {}
        for n in report["notes"]:
            kinds[n["kind"]] = kinds.get(n["kind"], 0) + 1
        print("notes (valid files, not failures): " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        for kind, text in report["note_kinds"].items():
            print(f"  {kind}: {text}")
        for n in report["notes"][:limit]:
            print(f"  {n['path']}: {n['kind']}" + (f" ({n['note']})" if n.get("note") else ""))
    if report["fixed"]:
        print(f"fixed: {len(report['fixed'])} files re-encoded to RGB JPEG (see 'fixed' in the report)")
        for f in report["fixed"][:limit]:
            print(f"  {f['path']}: {f['old_kind']} {f['old_size']} -> {f['new_size']} bytes")
    failures = report["failures"]
    if failures:
        print(f"\nFAILED: {len(failures)} problems" + (f" (first {limit} below)" if len(failures) > limit else ""))
        for f in failures[:limit]:
            print(f"  {f['path']}: {f['check']}: {f['reason']}")
        print("what to do:")
        for check in dict.fromkeys(f["check"] for f in failures):
            print(f"  {FAILURE_HINTS.get(check, check)}")
    else:
        print(f"\nverify {report['level']}: no problems in {', '.join(report['splits'])} of {report['root']}")
    print(f"report: {path}")


def print_submitted(p: VerifyPlan, cluster: dispatch.Cluster, folder: Path, jobs: list, report: Path, argv) -> None:
    print(runner.jobs_line(cluster, folder, jobs))
    print(f"verify run {p.run_id}: its last job writes the report {report} once the others succeed")
    print(f"follow progress with: {runner.command_line('status', runner.status_args(argv))}")


def run_verify(req: VerifyRequest, cluster: dispatch.Cluster) -> int:
    """The verify command: returns the exit code (0 only when nothing failed)."""
    t0 = time.time()
    check_request(req)
    report_path = Path(req.report or req.layout.state_dir / "verify.json")
    processes = int(cluster.params.get("cpus_per_task") or 1) if cluster.executor == "slurm" else 1
    with Lock(req.layout.lock_file, f"the root {req.layout.root} (a prepare or verify runs on it)"):
        for message in reconcile_fixes(req.layout.root, req.layout.state_dir):
            print(f"warning: {message}", file=sys.stderr)
        min_bytes = SLURM_MIN_SHARD_BYTES[req.level] if cluster.executor == "slurm" else 0
        p = make_plan(req, cluster.parallelism, processes, min_bytes)
        units = [*p.shards, *p.md5]
        folder = (req.log_dir or req.layout.state_dir / "logs") / f"verify-{p.run_id}"
        if cluster.executor == "slurm":
            jobs = runner.submit_units(cluster, folder, "verify", units)
            jobs += runner.submit_units(cluster, folder, "verify-report", [p.report], after=[j.job_id for j in jobs])
        else:
            jobs = runner.submit_units(cluster, folder, "verify", units)
        plan_ids = [u.id for u in [*units, p.report]]
        runner.record_submission(
            req.layout,
            "verify",
            req.argv,
            cluster,
            folder,
            plan_ids,
            jobs,
            records_dir=p.run_dir / "units",
            sizes={u.id: u.size for u in [*units, p.report]},
            config=req.config,
        )
        if not cluster.waits:
            print_submitted(p, cluster, folder, jobs, report_path, req.argv)
            return 0
        print(runner.jobs_line(cluster, folder, jobs), flush=True)
        label = f"verify {'+'.join(req.splits)} {req.level}"
        watched = [*units, p.report] if cluster.executor == "slurm" else units
        errors = runner.follow(label, watched, jobs, cluster)
        if cluster.executor != "slurm":
            try:
                run_unit(p.report)
            except LauncherError as err:
                errors["verify-report"] = str(err)
    if not is_complete(p.report):
        runner.print_errors(errors or {"verify": "the report was not written; see the job logs in " + str(folder)})
        return 1
    report = read_json(report_path)
    print_report(report, report_path)
    print(f"wall time {time.time() - t0:.1f}s")
    if errors:
        runner.print_errors(errors)
    return 0 if report["ok"] and not errors else 1
