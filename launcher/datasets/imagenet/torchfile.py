"""torch.save's file format for plain Python values (meta.bin), written and read without importing
torch (~2 s of start-up and ~300 MB per process). Anything else goes to torch itself."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

from launcher.archive import safefs
from launcher.core.errors import LauncherError

# torch.save's zip records beside data.pkl (torch 2.x)
RECORDS = {".format_version": b"1", ".storage_alignment": b"64", "byteorder": b"little", "version": b"3\n"}
# ILSVRC2012's meta.bin is about 1 MB (50,000 val WNIDs, 1,000 classes, ~53,000 values): the bounds
# leave room for 8 times that and refuse what only a hostile file holds
MAX_FILE_BYTES = 8 << 20  # the file, and its data.pkl once inflated
MAX_VALUES = 1_000_000  # values reached walking the result, shared references counted each time
MAX_TEXT = 64 << 20  # characters of text reached the same way


class MetaFileError(LauncherError):
    """A meta.bin beyond what torchvision writes for ILSVRC2012 (too large, or a reference bomb)."""


def save(path: Path, obj: Any) -> int:
    """What `torch.save(obj, path)` writes for plain Python values (no tensors): a zip of
    `<stem>/data.pkl` (a protocol-2 pickle, byte for byte torch's) beside torch's version records;
    `torch.load(path, weights_only=True)` reads it as it reads torch's own. Atomic: .part + rename.
    Returns the size."""
    stem, data = path.name.rsplit(".", 1)[0], pickle.dumps(obj, protocol=2)
    records = {"data.pkl": data, **RECORDS, ".data/serialization_id": hashlib.sha1(data).hexdigest().encode()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, record in records.items():
            archive.writestr(zipfile.ZipInfo(f"{stem}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), record)
    data = buf.getvalue()
    safefs.write_atomic(path, data, temp=f"{path.name}.part")  # O_EXCL temporary, renameat, no links
    return len(data)


class PlainValues(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers only: no class, no tensor."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a tensor or storage")


def load_plain(path: Path) -> tuple[bool, Any]:
    """(True, value) when `path` is a torch.save zip of plain Python values, which
    `torch.load(path, weights_only=True)` returns the same; (False, None) for anything else. Reads are
    bounded: a file or data.pkl over MAX_FILE_BYTES, or a value that expands (shared references counted
    each time they are reached, as json.dump writes them) past MAX_VALUES / MAX_TEXT is a MetaFileError."""
    raw = read_bounded(Path(path))
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = archive.namelist()
            prefix = names[0].split("/", 1)[0] if names else ""
            if not all(n.startswith(prefix + "/") for n in names) or f"{prefix}/version" not in names:
                return False, None
            version = member_bytes(archive, f"{prefix}/version", path).strip()
            if not version.isdigit() or not version.isascii() or int(version) > int(RECORDS["version"]):
                return False, None
            data = member_bytes(archive, f"{prefix}/data.pkl", path)
        value = PlainValues(io.BytesIO(data)).load()
    except MetaFileError:
        raise
    except Exception:  # not a zip, no data.pkl, not plain values, cut short: torch decides
        return False, None
    check_expanded(value, path)
    return True, value


def read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, read without following a link or
    blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        what = "is a symbolic link" if err.errno == errno.ELOOP else f"cannot be opened ({err.strerror})"
        raise MetaFileError(
            f"The meta file {path} {what}; prepare writes meta.bin itself: move it away and run prepare again."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MetaFileError(f"The meta file {path} is not a regular file. Move it away and run prepare again.")
        if info.st_size > MAX_FILE_BYTES:
            raise too_large(path, f"{info.st_size:,} bytes")
        data = os.pread(fd, MAX_FILE_BYTES + 1, 0)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew since fstat
        raise too_large(path, f"more than {MAX_FILE_BYTES:,} bytes")
    return data


def member_bytes(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A member of the zip, inflated to at most MAX_FILE_BYTES (its declared size is not trusted)."""
    with archive.open(name) as member:
        data = member.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise too_large(path, f"a {name} inflating past {MAX_FILE_BYTES:,} bytes")
    return data


def check_expanded(value: Any, path: Path) -> None:
    """The value as a writer (json.dump, a dict copy) sees it, shared references counted each time
    they are reached: a few hundred bytes of pickle can hold one pair twice at each of 40 levels
    (2**40 values). Sizes are summed once per distinct container, so this costs what the pickle holds."""
    values, text = expanded_size(value)
    if values is None:
        raise MetaFileError(f"The meta file {path} holds a value that contains itself; torchvision never writes one.")
    if values > MAX_VALUES or text > MAX_TEXT:
        raise too_large(
            path,
            f"values that expand to {values:,} items and {text:,} characters (at most {MAX_VALUES:,} and {MAX_TEXT:,})",
        )


CONTAINERS = {dict, list, tuple, set, frozenset}  # exact types: PlainValues builds no subclass
TEXTS = {str, bytes}


def expanded_size(value: Any) -> tuple[int | None, int]:
    """(values, characters) reached walking `value` with repeats; (None, 0) when it contains itself."""
    sizes: dict[int, tuple[int, int]] = {}
    started: set[int] = set()
    stack: list[tuple[Any, list | None]] = [(value, None)]
    while stack:
        item, children = stack.pop()
        if children is not None:  # every container below it is sized
            text = sum([len(child) for child in children if type(child) in TEXTS])
            values = len(children)
            for child in children:
                if type(child) in CONTAINERS:
                    values, text = values + sizes[id(child)][0], text + sizes[id(child)][1]
            sizes[id(item)] = (values, text)
        elif type(item) in CONTAINERS and id(item) not in sizes:
            if id(item) in started:  # started, not finished, met again below itself
                return None, 0
            started.add(id(item))
            children = [*item.keys(), *item.values()] if type(item) is dict else list(item)
            stack.append((item, children))
            stack.extend([(child, None) for child in children if type(child) in CONTAINERS])
    values, text = sizes.get(id(value), (0, len(value) if type(value) in TEXTS else 0))
    return values + 1, text


def too_large(path: Path, what: str) -> MetaFileError:
    return MetaFileError(
        f"The meta file {path} holds {what}; torchvision's meta.bin for ILSVRC2012 is about 1 MB. It is "
        "not a meta.bin this tool or torchvision wrote: move it away and run prepare again to write it."
    )


def load(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, importing torch only when the file is not plain values."""
    plain, value = load_plain(path)
    if plain:
        return value
    import torch

    return torch.load(path, weights_only=True)
