"""Read tar archives by their headers: member name, data offset and size, without reading the data.

`scan(fd, start, end)` walks the 512-byte headers of the tar held in bytes [start, end) of a file
(the whole file, or one class tar inside the train tar) and yields a `Member` per entry, seeking
past the data. Every header's checksum is checked, sizes are checked against the region (a member
that claims more bytes than the archive holds is a truncation), and GNU long names and pax
headers are understood, so odd-but-valid archives pass while broken ones fail with the archive
and the member named. Reads go through `Window`: few large `pread`s instead of many small ones.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from launcher.core.errors import LauncherError

try:  # the C fast path of the walk (launcher/archive/_tarwalk.c); the Python walk gives the same results
    from launcher.archive import _tarwalk
except ImportError:
    _tarwalk = None

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
POSIX_MAGIC = b"ustar\x0000"
KINDS = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "device",
    b"4": "device",
    b"5": "dir",
    b"6": "fifo",
}
META_TYPES = (b"L", b"K", b"x", b"g")
SPARSE_TYPE = b"S"  # an old GNU sparse member: its data is the condensed bytes, the map in the header
MAX_META_BYTES = 1 << 20  # a GNU long name/link or a pax header longer than this is refused
OCTAL = re.compile(rb"[0-7]*")
PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
DECIMAL = re.compile(r"[0-9]{1,20}", re.ASCII)


class TarError(LauncherError):
    """A tar archive that is truncated, corrupt or holds what it must not."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    offset: int  # where the member's data starts in the file
    size: int
    kind: str  # file, dir, symlink, hardlink, device, fifo, other
    linkname: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.size


class Window:
    """Reads bytes [start, end) of a file through one buffer refilled `chunk` bytes at a time."""

    def __init__(self, fd: int, start: int, end: int, label: str, chunk: int = 16 << 20):
        self.fd, self.start, self.end, self.label, self.chunk = fd, start, end, label, chunk
        self.buf = memoryview(b"")
        self.buf_start = start

    def view(self, offset: int, size: int, member: str = "") -> memoryview:
        """`size` bytes at `offset`; a short read means the archive is truncated."""
        lo = offset - self.buf_start
        if lo < 0 or lo + size > len(self.buf):
            want = min(max(size, self.chunk), self.end - offset)
            if want < size:
                raise truncated(self.label, member, offset + size, self.end)
            data = os.pread(self.fd, want, offset)
            if len(data) < size:
                raise truncated(self.label, member, offset + size, offset + len(data))
            self.buf, self.buf_start, lo = memoryview(data), offset, 0
        return self.buf[lo : lo + size]


def truncated(label: str, member: str, needed: int, available: int) -> TarError:
    what = f"member {member!r}" if member else "the end-of-archive marker"
    return TarError(
        f"{label} is truncated or corrupt: {what} needs bytes up to offset {needed:,} but the "
        f"archive ends at {available:,}. Download or copy the archive again."
    )


def octal(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated ASCII octal digits, or GNU base-256 (first byte
    0x80) for large values. ValueError for anything else: junk, signs, `_`, non-ASCII digits, and
    base-256 negatives (first byte 0xff), which no size or checksum can be."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not OCTAL.fullmatch(digits):
        raise ValueError(f"not an octal number: {bytes(field)!r}")
    return int(digits, 8) if digits else 0


def text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def check_checksum(header: bytes, label: str, offset: int) -> None:
    """The header's checksum: the sum of its bytes with the checksum field read as spaces (the
    unsigned sum, as every tar writes it; old tars wrote the signed sum, accepted as well)."""
    try:
        stored = octal(header[148:156])
    except ValueError:
        stored = -1
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return
    body = header[:148] + header[156:]
    signed = sum(b - 256 if b > 127 else b for b in body) + 8 * 32
    if stored != signed:
        raise TarError(
            f"{label} is corrupt: the tar header at offset {offset:,} fails its checksum "
            f"(stored {stored}, computed {unsigned}). Download or copy the archive again."
        )


def pax_records(data: bytes, label: str, member: str, offset: int) -> dict[str, str]:
    """`length key=value\\n` records of a pax extended header whose data starts at `offset`. The
    length (ASCII decimal digits) counts the whole record and must end on its newline inside the
    data; the key is UTF-8. Anything else fails naming the record's offset. NUL padding after the
    last record ends the data, as in tarfile."""
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        match = PAX_LENGTH.match(data, pos)
        length = int(match.group(1)) if match else 0
        end = pos + length
        if not match or end <= match.end() or end > len(data) or data[end - 1] != 0x0A:
            raise bad_pax(
                label, member, offset + pos, "its length is not ASCII digits giving a record that ends in a newline"
            )
        key, equals, value = data[match.end() : end - 1].partition(b"=")
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not equals or not name:
            raise bad_pax(label, member, offset + pos, "it is not key=value with a UTF-8 key")
        out[name] = value.decode("utf-8", "surrogateescape")
        assert end > pos, "the pax walk must advance"
        pos = end
    return out


def bad_pax(label: str, member: str, offset: int, why: str) -> TarError:
    return TarError(
        f"{label} is corrupt: the pax record at offset {offset:,} (in {member!r}) is malformed: {why}. "
        "Download or copy the archive again."
    )


def scan(fd: int, start: int, end: int, label: str, window: Window | None = None) -> Iterator[Member]:
    """Members of the tar in bytes [start, end) of `fd`, in archive order."""
    # Without a window from the caller only headers are read: one 512-byte pread per member (an
    # ImageNet member is ~110 KB, so reading ahead would copy data nobody looks at).
    win = window or Window(fd, start, end, label, chunk=BLOCK)
    state, pos = ScanState(), start
    while True:
        member, pos, done = step(win, pos, end, label, state)
        if member is not None:
            yield member
        if done:
            return


@dataclass(slots=True)
class ScanState:
    """What the headers read so far say about the next member: a GNU long name or link, pax records."""

    long_name: str | None = None
    long_link: str | None = None
    pax: dict = field(default_factory=dict)
    global_pax: dict = field(default_factory=dict)

    def clean(self) -> bool:
        return self.long_name is None and self.long_link is None and not self.pax and not self.global_pax


def step(win: Window, pos: int, end: int, label: str, state: ScanState) -> tuple[Member | None, int, bool]:
    """Read the header at `pos`: (the member it completes or None, where the next header is, whether
    the archive ended there). Every header advances the walk by at least one block or fails."""
    if pos + BLOCK > end:
        raise truncated(label, "", pos + BLOCK, end)  # no end-of-archive block: cut short
    header = win.view(pos, BLOCK).tobytes()  # one copy of 512 bytes; fields are sliced from it
    if header == ZERO_BLOCK:
        return None, pos, True
    check_checksum(header, label, pos)
    records = {**state.global_pax, **state.pax} if state.global_pax else state.pax
    typeflag = header[156:157]
    name = state.long_name or records.get("path") or header_name(header)
    size = member_size(header, records, label, name, pos)
    data_at = pos + BLOCK
    if data_at + size > end:
        raise truncated(label, name, data_at + size, end)
    member = None
    if typeflag in META_TYPES:
        data = meta_data(win, data_at, size, label, name, pos)
        if typeflag == b"L":
            state.long_name = text(data)
        elif typeflag == b"K":
            state.long_link = text(data)
        elif typeflag == b"x":
            state.pax = pax_records(data, label, name, data_at)
        else:
            state.global_pax.update(pax_records(data, label, name, data_at))
    else:
        refuse_sparse(typeflag, records, label, name, pos)
        link = state.long_link or records.get("linkpath") or text(header[157:257])
        member = Member(name, data_at, size, KINDS.get(typeflag, "other"), link)
        state.long_name, state.long_link, state.pax = None, None, {}
    after = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
    assert after > pos, "the header walk must advance"
    return member, after, False


# ---------------------------------------------------------------- runs of plain members (C)


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive plain members read by the C walker: regular files with printable-ASCII names (with
    `plain_names`: plain file names), headers that pass their checksum, data inside the region."""

    names: list[str]
    offsets: array  # where each member's data starts in the file
    sizes: array

    def members(self) -> Iterator[Member]:
        for name, offset, size in zip(self.names, self.offsets, self.sizes):
            yield Member(name, offset, size, "file")


def members_of(items: Iterator[Run | Member]) -> Iterator[Member]:
    """scan_runs' items as members, one by one."""
    for item in items:
        if isinstance(item, Run):
            yield from item.members()
        else:
            yield item


RUN_MEMBERS = 1 << 16  # members per C call: bounds what one call allocates


def scan_runs(
    fd: int,
    start: int,
    end: int,
    label: str,
    window: Window | None = None,
    plain_names: bool = False,
    stop: int | None = None,
) -> Iterator[Run | Member]:
    """`scan`'s members, the plain ones in `Run`s read by the C walker (launcher/archive/_tarwalk.c),
    the others (and every header when the extension is not built) as `Member`s by the Python walk,
    which reads each header the C walker stops at. Without a window the C walker reads the headers
    itself (64 KiB at a time while members are small, one block each once they are large); with one,
    it walks the bytes the window holds. With `stop` the C walker reads no header at or after it (the
    caller stops there; `end` still bounds every member's data)."""
    win = window or Window(fd, start, end, label, chunk=BLOCK)
    state, pos = ScanState(), start
    while True:
        if _tarwalk is not None and state.clean():
            run, pos, status = c_run(fd, win if window else None, pos, end, end if stop is None else stop, plain_names)
            if run is not None:
                yield run
            if status in (_tarwalk.NEED, _tarwalk.FULL) and run is not None:
                continue  # the window refills at the next header, or the next call goes on
        member, pos, done = step(win, pos, end, label, state)
        if member is not None:
            yield member
        if done:
            return


def c_run(
    fd: int, window: Window | None, pos: int, end: int, stop: int, plain_names: bool
) -> tuple[Run | None, int, int]:
    """One call of the C walker from `pos`: (the run, or None when it accepted no member; where it
    stopped; why)."""
    if window is None:
        names, offsets, sizes, after, status = _tarwalk.walk_fd(fd, pos, end, stop, plain_names, RUN_MEMBERS)
    else:
        if pos + BLOCK <= end:
            window.view(pos, BLOCK)  # the header at pos is in the window's buffer from here
        buf = window.buf
        names, offsets, sizes, after, status = _tarwalk.walk_buffer(
            buf, window.buf_start, pos, end, stop, plain_names, RUN_MEMBERS
        )
    if not names:
        return None, pos, status
    assert after > pos, "the C walk must advance"
    return Run(names, array("q", offsets), array("q", sizes)), after, status


def meta_data(win: Window, offset: int, size: int, label: str, name: str, header_at: int) -> bytes:
    """The data of a GNU long name/link or a pax header, at most MAX_META_BYTES."""
    if size > MAX_META_BYTES:
        raise TarError(
            f"{label} is corrupt: the long name or pax header at offset {header_at:,} (for member {name!r}) "
            f"claims {size:,} bytes; at most {MAX_META_BYTES:,} are accepted. Download or copy the archive again."
        )
    return win.view(offset, size, name).tobytes()


def refuse_sparse(typeflag: bytes, records: dict[str, str], label: str, name: str, offset: int) -> None:
    """A GNU sparse member (type 'S', or pax GNU.sparse.* records of format 0.0, 0.1 or 1.0) stores
    condensed data: extracted as it stands it would be the wrong bytes. ILSVRC2012 has none."""
    if typeflag != SPARSE_TYPE and not records:
        return
    sparse = sorted(k for k in records if k.startswith("GNU.sparse."))
    if typeflag != SPARSE_TYPE and not sparse:
        return
    name = records.get("GNU.sparse.name") or name  # format 1.0 keeps the real name there
    how = "GNU type 'S'" if typeflag == SPARSE_TYPE else f"pax records {', '.join(sparse)}"
    raise TarError(
        f"{label}: member {name!r} (header at offset {offset:,}) is a sparse file ({how}); the ILSVRC2012 "
        "archives hold no sparse members and sparse members are not expanded. Use the original archive, "
        "or re-create it without --sparse."
    )


def member_size(header: bytes, pax: dict[str, str], label: str, name: str, offset: int) -> int:
    """The data size of a member (a pax `size` record, ASCII decimal digits, overrides the header's);
    never negative, so the walk always moves forward."""
    try:
        size = octal(header[124:136]) if "size" not in pax else -1
    except ValueError:
        size = -1
    if "size" in pax and DECIMAL.fullmatch(pax["size"]):
        size = int(pax["size"])
    if size < 0:
        raise TarError(
            f"{label} is corrupt: the tar header at offset {offset:,} (member {name!r}) gives no valid size. "
            "Download or copy the archive again."
        )
    return size


def header_name(header: bytes) -> str:
    name = text(header[0:100])
    if header[257:265] == POSIX_MAGIC:
        prefix = text(header[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    return name


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size
