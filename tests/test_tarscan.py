"""Reading tar headers without reading data: agrees with tarfile, and catches every kind of damage."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from launcher.archive import tarscan
from launcher.archive.tarscan import Run, TarError, Window, scan, scan_runs
from launcher.datasets.imagenet.synth import add_bytes

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


# ---------------------------------------------------------------- malformed headers (issue 14, class 3)


def tar_header(name: bytes, size_field: bytes, typeflag: bytes, fix_checksum: bool = True) -> bytes:
    """A 512-byte ustar header with the given raw size field and typeflag, checksum computed."""
    header = bytearray(512)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:108] = b"0000644\0"
    header[124:136] = size_field[:12].ljust(12, b"\0")
    header[136:148] = b"14122034200\0"
    header[156:157] = typeflag[:1] or b"\0"
    header[257:265] = b"ustar\x0000"
    if fix_checksum:
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def entry(typeflag: bytes, data: bytes, name: bytes = b"./PaxHeaders/x") -> bytes:
    return tar_header(name, b"%011o\0" % len(data), typeflag) + data + bytes(-len(data) % 512)


def with_image(*entries: bytes) -> bytes:
    """The given raw entries, then one image member and the end-of-archive blocks."""
    return b"".join(entries) + hostile_tar([("n01440764_1.JPEG", b"x" * 10)])


def scan_within(data: bytes, seconds: int = 5):
    """scan_bytes, failing (not hanging) when the scan does not finish."""

    def hang(signum, frame):
        raise AssertionError(f"the scan did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        return scan_bytes(data)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("typeflag", [b"x", b"g"])
@pytest.mark.parametrize(
    "record",
    [
        b"0 x\n",  # length 0: the walk never advanced (hung forever)
        b"00 x\n",
        b"-5 a=b\n",  # negative
        "٨ path=a\n".encode(),  # Arabic-Indic digit: int() accepts it
        b"99999999999999999999 path=a\n",  # beyond the data
        b"12 path=a\n",  # beyond the data by 2
        b"8 pathx\n",  # no '='
        b"7 a=bcde",  # no newline at the end of the record
        b"8 \xff\xfe=ab\n",  # key not UTF-8
        b"path=a\n",  # no length at all
    ],
)
def test_malformed_pax_record_fails_naming_offset(typeflag, record):
    data = with_image(entry(typeflag, record))
    with pytest.raises(TarError, match=r"t\.tar is corrupt: the pax record at offset 512 \(in '\./PaxHeaders/x'\)"):
        scan_within(data)


@pytest.mark.parametrize(
    "size_field",
    [b"00000000_12\0", b"0000000012x\0", b"+0000000012\0", b"\xff" * 12, "00000000١٢".encode()[:12]],
)
def test_malformed_size_field_fails(size_field):
    data = tar_header(b"n01440764_1.JPEG", size_field, b"0") + bytes(1536)
    with pytest.raises(TarError, match=r"at offset 0 \(member 'n01440764_1\.JPEG'\) gives no valid size"):
        scan_within(data)


def test_pax_size_must_be_ascii_digits():
    data = with_image(entry(b"x", "11 size=١\n".encode()))
    with pytest.raises(TarError, match="gives no valid size"):
        scan_within(data)


def test_huge_long_name_is_refused():
    data = with_image(entry(b"L", b"a" * ((1 << 20) + 1), b"././@LongLink"))
    with pytest.raises(TarError, match=r"claims 1,048,577 bytes; at most 1,048,576"):
        scan_within(data)


def test_global_pax_header_applies_as_in_tarfile():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"}) as tar:
        add_bytes(tar, "n01440764_1.JPEG", b"abc")
    data = with_image(entry(b"g", b"17 linkpath=/etc\n"))
    ours = scan_within(buf.getvalue())
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [(m.name, m.offset, m.size) for m in ours] == [(m.name, m.offset_data, m.size) for m in tar]
    assert [m.linkname for m in scan_within(data)] == ["/etc"]


@pytest.mark.parametrize(
    "options",
    [
        ("--format=gnu",),
        ("--format=pax", "--sparse-version=0.0"),
        ("--format=pax", "--sparse-version=0.1"),
        ("--format=pax", "--sparse-version=1.0"),
    ],
)
def test_sparse_members_are_refused(tmp_path, options):
    """GNU tar's sparse members hold condensed data; extracted as they stand they are the wrong bytes."""
    sparse = tmp_path / "n01440764_1.JPEG"
    with open(sparse, "wb") as f:
        f.truncate(40_000)
        f.seek(20_000)
        f.write(b"data in the middle")
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", *options, "--sparse", "-cf", str(out), "-C", str(tmp_path), sparse.name], check=True)
    with pytest.raises(TarError, match=r"t\.tar: member '.*n01440764_1\.JPEG' \(header at offset [\d,]+\) is a sparse"):
        scan_within(out.read_bytes())


# ---------------------------------------------------------------- the C walker (launcher/archive/_tarwalk.c)

needs_walker = pytest.mark.skipif(tarscan._tarwalk is None, reason="launcher.archive._tarwalk was not built")


def test_the_walker_is_built_under_ci():
    """CI builds the extension (the editable install compiles it): the fast path must be there. Under
    .ci/pythons the tests import the source folder, whose extension was built for CI's main Python:
    there the Python walk is what runs, and what is tested."""
    if not os.environ.get("CI"):
        pytest.skip("only CI insists")
    built = list(Path(tarscan.__file__).parent.glob("_tarwalk*.so"))
    if tarscan._tarwalk is None and built:
        pytest.skip(f"the source folder's extension is built for another Python ({built[0].name})")
    assert tarscan._tarwalk is not None, "launcher.archive._tarwalk is missing: install gcc, then reinstall"


def walked(data: bytes, window_chunk: int | None, plain_names: bool = False, stop: int | None = None):
    """scan_runs over `data`: (runs, members of the Python walk, every member in order)."""
    fd = os.memfd_create("walk.tar")
    try:
        os.write(fd, data)
        window = Window(fd, 0, len(data), "walk.tar", chunk=window_chunk) if window_chunk else None
        items = list(scan_runs(fd, 0, len(data), "walk.tar", window, plain_names, stop))
    finally:
        os.close(fd)
    runs = [i for i in items if isinstance(i, Run)]
    every = [m for i in items for m in (i.members() if isinstance(i, Run) else (i,))]
    return runs, [i for i in items if not isinstance(i, Run)], every


@needs_walker
@pytest.mark.parametrize("window_chunk", [None, 1536, 1 << 20])
def test_runs_equal_the_python_walk_across_reads(window_chunk):
    """Small and large members (the pread walk reads 64 KiB while members are small, one block per
    header once they are large), a pax header and a GNU long name in between: the same members as the
    Python walk, the plain ones in runs, the others from the Python walk."""
    sizes = [100] * 300 + [40_000, 70_000, 5] + [700] * 200
    plain = [(f"n01440764_{k}.JPEG", bytes([k % 251]) * n) for k, n in enumerate(sizes)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for k, (name, data) in enumerate(plain):
            if k in (150, 400):
                name = "n01440764_" + "7" * 120 + f"{k}.JPEG"  # a GNU long name: 'L' header first
            add_bytes(tar, name, data)
    data = buf.getvalue()
    runs, singles, every = walked(data, window_chunk)
    expected = scan_bytes(data)
    assert [(m.name, m.offset, m.size) for m in every] == [(m.name, m.offset, m.size) for m in expected]
    assert (
        len(every) == 503 and len(runs) >= 3 and [m.name for m in singles] == [expected[150].name, expected[400].name]
    )


@needs_walker
@pytest.mark.parametrize("window_chunk", [None, 1 << 20])
@pytest.mark.parametrize("name", ["a/b.JPEG", ".", "..", "x" * 100])
def test_plain_names_leave_other_names_to_the_python_walk(window_chunk, name):
    """With plain_names the C walker accepts only plain file names (no '/', not . or .., at most 255
    bytes with the ustar prefix): the rest come from the Python walk, whose caller refuses them."""
    if len(name) == 100:  # a 100-byte name under a 155-byte ustar prefix: 256 bytes with the slash
        header = bytearray(tar_header(name.encode(), b"%011o\0" % 1, b"0"))
        header[345:505] = b"p" * 155 + bytes(5)
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        entry_bytes, name = bytes(header) + b"z".ljust(512, b"\0"), "p" * 155 + "/" + name
    else:
        entry_bytes = entry(b"0", b"z", name.encode())
    data = hostile_tar([("n01440764_1.JPEG", b"x")])[:1024] + entry_bytes + bytes(1024)
    runs, singles, every = walked(data, window_chunk, plain_names=True)
    assert [r.names for r in runs] == [["n01440764_1.JPEG"]] and [m.name for m in singles] == [name]
    runs, singles, every = walked(data, window_chunk, plain_names=False)
    assert [r.names for r in runs] == [["n01440764_1.JPEG", name]] and not singles


@needs_walker
def test_no_header_at_or_after_stop_is_read():
    data = hostile_tar([(f"n01440764_{k}.JPEG", b"x" * 600) for k in range(10)])
    stop = 3 * (512 + 1024)
    runs, singles, every = walked(data, None, stop=stop)
    assert [m.name for m in every][:3] == [f"n01440764_{k}.JPEG" for k in range(3)]
    assert runs[0].names == [f"n01440764_{k}.JPEG" for k in range(3)]  # the first call stops at `stop`
