"""Reading tar headers without reading data: agrees with tarfile, and catches every kind of damage."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from launcher.tarscan import TarError, scan

from archive_tools import device, hostile_tar, link
from conftest import FILES


def scan_bytes(data: bytes, label="t.tar"):
    r, w = os.pipe()
    os.close(r), os.close(w)
    path = f"/dev/shm/tarscan-{os.getpid()}.tar"
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(scan(fd, 0, len(data), label))
    finally:
        os.close(fd)
        os.unlink(path)


def test_agrees_with_tarfile(archives):
    path = archives().files["train"]
    fd = os.open(path, os.O_RDONLY)
    try:
        ours = list(scan(fd, 0, os.fstat(fd).st_size, "train"))
        with tarfile.open(path) as tar:
            theirs = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
        assert [(m.name, m.offset, m.size) for m in ours] == theirs
        inner = list(scan(fd, ours[0].offset, ours[0].end, "inner"))
        with tarfile.open(fileobj=io.BytesIO(os.pread(fd, ours[0].size, ours[0].offset))) as tar:
            assert [(m.name, m.size) for m in inner] == [(m.name, m.size) for m in tar.getmembers()]
    finally:
        os.close(fd)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_gnu_and_pax(fmt):
    long = "n01440764_" + "9" * 120 + ".JPEG"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo(long)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
        info = tarfile.TarInfo("ünïcode.JPEG")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    found = scan_bytes(buf.getvalue())
    assert [(m.name, m.size, m.kind) for m in found] == [(long, 3, "file"), ("ünïcode.JPEG", 1, "file")]


def test_kinds_of_members():
    data = hostile_tar([link("a", "/etc/passwd"), link("b", "a", tarfile.LNKTYPE), device("c"), ("d", b"1")])
    assert [(m.name, m.kind, m.linkname) for m in scan_bytes(data)] == [
        ("a", "symlink", "/etc/passwd"),
        ("b", "hardlink", "a"),
        ("c", "device", ""),
        ("d", "file", ""),
    ]


def test_truncated_data_is_named(archives):
    data = archives().files["val"].read_bytes()
    cut = data[: len(data) // 4 + 100]
    with pytest.raises(TarError, match=r"truncated or corrupt: member 'ILSVRC2012_val_\d+\.JPEG'"):
        scan_bytes(cut, "val.tar")


def test_corrupt_header_checksum():
    data = bytearray(hostile_tar([("n01440764_1.JPEG", b"x" * 10)]))
    data[10] ^= 0x55
    with pytest.raises(TarError, match="fails its checksum"):
        scan_bytes(bytes(data))


def test_member_claiming_huge_size():
    data = bytearray(hostile_tar([("n01440764_1.JPEG", b"x" * 10)]))
    info = tarfile.TarInfo("n01440764_1.JPEG")
    info.size = 10**12
    header = info.tobuf(tarfile.GNU_FORMAT)
    data[: len(header)] = header
    with pytest.raises(TarError, match="needs bytes up to offset 1,000,000,000,512"):
        scan_bytes(bytes(data))


def test_not_a_tar():
    with pytest.raises(TarError):
        scan_bytes(os.urandom(4096))


def test_files_fixture_names():
    assert set(FILES) == {"devkit", "train", "val"}


def test_cut_at_a_header_boundary_is_truncated(archives):
    path = archives().files["val"]
    with tarfile.open(path) as tar:
        boundary = tar.getmembers()[5].offset  # where the 6th header starts
    with pytest.raises(TarError, match="end-of-archive marker"):
        scan_bytes(path.read_bytes()[:boundary])
