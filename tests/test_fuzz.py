"""Fuzzing the parsers with mutated real inputs: the tar/pax header scanner, the devkit reader
(meta.mat, its fields, the ground truth), the meta.bin reader and the JPEG/PNG header parser.

The property, for every input: the parser returns, or raises one of our own errors (LauncherError and
its subclasses; verify's BadImage for images). Any other exception, a call using more than
CALL_SECONDS of CPU time (a busy hang is interrupted by SIGPROF; a blocked call by a WALL_SECONDS
timer), or a traced memory peak (tracemalloc) above PEAK_BYTES is a failure.

CI runs a few hundred derandomized examples per parser (FUZZ_EXAMPLES); benchmarks/fuzz.py runs the
same properties for longer with fresh random examples (LAUNCHER_FUZZ_EXAMPLES, LAUNCHER_FUZZ_RANDOM).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from launcher.archive import tarscan
from launcher.archive.tarscan import Run, Window, scan, scan_runs
from launcher.check.imagebounds import BadImage
from launcher.check.images import parse_header
from launcher.core.errors import LauncherError
from launcher.datasets.imagenet import torchfile
from launcher.datasets.imagenet.devkit import NamePatterns, parse_ground_truth, parse_meta_mat, read_devkit_members
from launcher.datasets.imagenet.synth import Synset, encode_image, meta_mat_bytes, tar_bytes

from conftest import FILES, GROUND_TRUTH, META
from test_tarscan import tar_header

# dataset.patterns of conf/dataset/imagenet.yaml: what a WNID and an ILSVRC2012_ID must match
NAMES = NamePatterns.of(r"n[0-9]{8}", r"[1-9][0-9]{0,6}")

pytestmark = pytest.mark.fuzz

CALL_SECONDS = 1.0  # CPU time of one parser call
WALL_SECONDS = 10.0  # wall-clock time of one parser call (blocked, not computing)
PEAK_BYTES = 64 << 20
EXPANDED_LIMIT = 2_000_000  # values a writer may reach walking a loaded meta.bin (ILSVRC2012's: ~55,000)
FUZZ_EXAMPLES = int(os.environ.get("LAUNCHER_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=os.environ.get("LAUNCHER_FUZZ_RANDOM", "") != "1",
    deadline=None,  # the timer in `bounded` is the deadline: it also interrupts a hang
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no `explain`: its tracer slows calls 100-fold
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
CALLS = {"count": 0}  # examples run, for benchmarks/fuzz.py and the report


@pytest.fixture(autouse=True)
def count_calls(request):
    """Parser calls per test; appended as a JSON line to $LAUNCHER_FUZZ_COUNTS when it is set."""
    before = CALLS["count"]
    yield
    if os.environ.get("LAUNCHER_FUZZ_COUNTS"):
        with open(os.environ["LAUNCHER_FUZZ_COUNTS"], "a") as out:
            out.write(json.dumps({"test": request.node.name, "calls": CALLS["count"] - before}) + "\n")


class Hang(Exception):
    pass


def _alarm(signum, frame):
    what = "CPU" if signum == signal.SIGPROF else "wall-clock (blocked?)"
    raise Hang(f"a parser call used more than its {what} time")


def bounded(call, *args, ours=(LauncherError,)):
    """Run call(*args): it returns or raises one of `ours`, within CALL_SECONDS of CPU time (the machine
    is shared: CPU time does not grow with other processes' load; a busy loop is interrupted by SIGPROF),
    WALL_SECONDS of wall-clock time (a call blocked on something) and PEAK_BYTES of traced memory."""
    CALLS["count"] += 1
    old = {sig: signal.signal(sig, _alarm) for sig in (signal.SIGPROF, signal.SIGALRM)}
    tracemalloc.start()
    started = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, CALL_SECONDS)
    signal.setitimer(signal.ITIMER_REAL, WALL_SECONDS)
    try:
        result = call(*args)
    except ours:
        result = None
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.process_time() - started
    assert elapsed < CALL_SECONDS, f"{call.__name__} took {elapsed:.2f} s of CPU"
    assert peak < PEAK_BYTES, f"{call.__name__} peaked at {peak:,} bytes"
    return result


# ---------------------------------------------------------------- generic byte mutations


@st.composite
def mutated(draw, base: bytes, max_ops: int = 4) -> bytes:
    """`base` with a few bit flips, overwrites, insertions, deletions and a truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


# ---------------------------------------------------------------- the tar/pax header scanner

PAX_KEYS = [
    "path",
    "linkpath",
    "size",
    "mtime",
    "uid",
    "GNU.sparse.major",
    "GNU.sparse.minor",
    "GNU.sparse.name",
    "GNU.sparse.realsize",
    "GNU.sparse.size",
    "GNU.sparse.numblocks",
    "GNU.sparse.offset",
    "GNU.sparse.numbytes",
    "GNU.sparse.map",
]
TYPEFLAGS = [b"0", b"\0", b"7", b"1", b"2", b"3", b"5", b"6", b"x", b"g", b"L", b"K", b"S", b"D", b"M", b"V", b"N"]


@st.composite
def pax_record(draw) -> bytes:
    key = draw(st.one_of(st.sampled_from(PAX_KEYS), st.text(max_size=12)))
    value = draw(st.one_of(st.text(max_size=40), st.integers(-(2**70), 2**70).map(str)))
    body = f" {key}={value}\n".encode("utf-8", "surrogatepass")
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    kind = draw(st.sampled_from(["good", "good", "length", "raw", "nonascii", "cut", "noequal"]))
    if kind == "good":
        return str(length).encode() + body
    if kind == "length":
        bad = draw(st.one_of(st.integers(-5, 2**40).map(str), st.sampled_from(["", "0", "+5", "1_0", " 7", "9" * 30])))
        return bad.encode() + body
    if kind == "nonascii":  # Arabic-Indic digits that int() accepts
        return "".join(chr(0x660 + int(c)) for c in str(length)).encode() + body
    if kind == "cut":
        return (str(length).encode() + body)[: draw(st.integers(0, length - 1))]
    if kind == "noequal":
        return str(length).encode() + body.replace(b"=", b":")
    return draw(st.binary(max_size=40))


@st.composite
def inserted_entry(draw) -> bytes:
    """A header (pax, GNU long name, sparse, anything) with its data, aligned to 512 bytes; mostly the
    headers whose data is parsed, mostly with the right size and checksum, so parsing is reached."""
    typeflag = draw(
        st.one_of(st.sampled_from([b"x", b"g"]), st.sampled_from(TYPEFLAGS), st.binary(min_size=1, max_size=1))
    )
    payload = draw(
        st.one_of(
            st.lists(pax_record(), min_size=1, max_size=5).map(b"".join),
            st.sampled_from([b"0 x\n", b"00 x\n", b"5 a=\n", b"-1 a=b\n", b"9 path\n", b"30 GNU.sparse.major=1\n"]),
            st.binary(max_size=600),
        )
    )
    size = draw(
        st.one_of(
            st.just(len(payload)),
            st.just(len(payload)),
            st.integers(0, 2**33).map(lambda n: b"%011o\0" % n),
            st.binary(min_size=12, max_size=12),  # junk, base-256, negatives
            st.sampled_from([b"\x80" + bytes(10) + b"\x05", b"\xff" * 12, b"0000000001x\0", b"   -17     "]),
        )
    )
    size_field = b"%011o\0" % size if isinstance(size, int) else size
    name = draw(st.binary(min_size=1, max_size=100))
    header = tar_header(name, size_field, typeflag, fix_checksum=draw(st.integers(0, 9)) > 0)
    return header + payload + bytes(-len(payload) % 512)


@st.composite
def mutated_tar(draw, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(0, 3))):
        block = draw(st.integers(0, len(data) // 512)) * 512
        data[block:block] = draw(inserted_entry())
    if draw(st.booleans()):  # a header field replaced, checksum made right again
        block = draw(st.integers(0, max(len(data) // 512 - 1, 0))) * 512
        lo, hi = draw(st.sampled_from([(0, 100), (124, 136), (156, 157), (257, 265), (345, 500)]))
        header = bytearray(data[block : block + 512].ljust(512, b"\0"))
        header[lo:hi] = draw(st.binary(min_size=hi - lo, max_size=hi - lo))
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        data[block : block + 512] = header
    return draw(mutated(bytes(data), max_ops=2))


def gnu_tar(tmp: Path, *options: str) -> bytes:
    """A real archive written by GNU tar (`tar --sparse ...` for sparse members)."""
    sparse = tmp / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(40_000)
        f.seek(20_000)
        f.write(b"data in the middle")
    (tmp / "plain.txt").write_bytes(b"plain\n")
    out = tmp / "out.tar"
    subprocess.run(["tar", *options, "-cf", str(out), "-C", str(tmp), "sparse.bin", "plain.txt"], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def tarfile_bytes(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in [("n01440764_" + "1" * 120 + ".JPEG", b"abc"), ("ünï.JPEG", b"x" * 700), ("d", b"")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def tar_bases(archives, tmp_path_factory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("fuzz-tars")
    val = archives("tiny").files["val"].read_bytes()
    return [
        val,
        tar_bytes([("n01440764_1.JPEG", b"\xff\xd8" + b"x" * 1000), ("n01440764_2.JPEG", b"y" * 5)]),
        tarfile_bytes(tarfile.GNU_FORMAT),
        tarfile_bytes(tarfile.PAX_FORMAT),
        gnu_tar(tmp, "--format=gnu", "--sparse"),
        gnu_tar(tmp, "--format=pax", "--sparse", "--sparse-version=0.1"),
        gnu_tar(tmp, "--format=pax", "--sparse", "--sparse-version=1.0"),
    ]


def scan_all(data: bytes) -> list:
    fd = os.memfd_create("fuzz.tar")
    try:
        os.write(fd, data)
        return list(scan(fd, 0, len(data), "fuzz.tar"))
    finally:
        os.close(fd)


def test_tarscan(tar_bases):
    @FUZZ
    @given(data=mutated_tar(tar_bases))
    def prop(data):
        members = bounded(scan_all, data) or []
        ends = [0] + [m.end for m in members]
        assert all(m.offset >= before for m, before in zip(members, ends)) and ends[-1] <= len(data)

    prop()


WALKS = ("python", "C, headers by pread", "C, headers from a window", "C, plain file names")


def walk_outcome(data: bytes, how: str) -> tuple[list, str]:
    """The members a walk of `data` yields before it ends (name, data offset, size, kind, and the link of
    a non-file) and the text of its refusal, if any: the Python walk (`scan`) or `scan_runs` with the C
    walker reading the headers itself, from a small window (runs cut at its edges), or refusing names
    that are not plain file names to the Python walk."""
    fd = os.memfd_create("fuzz.tar")
    found, refusal = [], ""
    try:
        os.write(fd, data)
        if how == "python":
            items = scan(fd, 0, len(data), "fuzz.tar")
        else:
            window = Window(fd, 0, len(data), "fuzz.tar", chunk=1536) if "window" in how else None
            items = scan_runs(fd, 0, len(data), "fuzz.tar", window, plain_names="plain" in how)
        try:
            for item in items:
                for m in item.members() if isinstance(item, Run) else (item,):
                    found.append((m.name, m.offset, m.size, m.kind, "" if m.kind == "file" else m.linkname))
        except LauncherError as err:
            refusal = str(err)
    finally:
        os.close(fd)
    return found, refusal


@pytest.mark.skipif(tarscan._tarwalk is None, reason="launcher.archive._tarwalk was not built")
def test_the_c_walker_agrees_with_the_python_walk(tar_bases):
    """launcher/archive/_tarwalk.c accepts only what the Python walk accepts, with the same member
    fields, and stops where the Python walk must read: on every mutated archive the walks give the same
    members and the same refusal, word for word."""

    @FUZZ
    @given(data=mutated_tar(tar_bases))
    def prop(data):
        python = bounded(walk_outcome, data, "python")
        for how in WALKS[1:]:
            assert bounded(walk_outcome, data, how) == python, how

    prop()


# ---------------------------------------------------------------- the devkit: meta.mat and ground truth

SYNSETS = [
    Synset(1, "n01440764", "tench, Tinca tinca", [], 3),
    Synset(2, "n01443537", "goldfish, Carassius auratus", [], 4),
    Synset(3, "n00000001", "fish", [1, 2], 0),
]
FIELD_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5), max_size=4).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(st.text(max_size=3), min_size=1, max_size=3).map(lambda v: np.array(v, dtype=object)),
    st.just(np.zeros((2, 3))),
    st.just(np.array([], dtype=np.float64)),
    st.builds(lambda v: {"a": v, "b": "x"}, st.integers(0, 9)),  # a nested struct
    st.just(np.uint8(255)),
    st.just(True),
)
FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images")


@st.composite
def meta_mat_with_wrong_fields(draw) -> bytes:
    """meta.mat written by scipy.io.savemat with some fields of the wrong type, shape, or missing."""
    import scipy.io

    rows = [
        [np.int64(s.ilsvrc_id), s.wnid, s.words, "gloss", np.int64(len(s.children)),
         np.array(s.children, dtype=np.int64), np.int64(0), np.int64(s.num_train_images)]
        for s in SYNSETS
    ]  # fmt: skip
    fields = list(FIELDS)
    for _ in range(draw(st.integers(1, 4))):
        row, col = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(fields) - 1))
        rows[row][col] = draw(FIELD_VALUES)
    if draw(st.integers(0, 5)) == 0:
        drop = draw(st.integers(0, len(fields) - 1))
        fields.pop(drop)
        for row in rows:
            row.pop(drop)
    records = np.empty(len(rows), dtype=[(name, object) for name in fields])
    for i, row in enumerate(rows):
        records[i] = tuple(row)
    shape = draw(st.sampled_from(["row", "column", "scalar", "cell"]))
    value = {"row": records, "column": records.reshape(-1, 1), "scalar": records[:1], "cell": records.astype(object)}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": value[shape]})
    return buf.getvalue()


def test_meta_mat_bytes():
    base = meta_mat_bytes(SYNSETS)

    @FUZZ
    @given(data=mutated(base))
    def prop(data):
        bounded(parse_meta_mat, data, "meta.mat", NAMES)

    prop()


def test_meta_mat_fields():
    @FUZZ
    @given(data=meta_mat_with_wrong_fields())
    def prop(data):
        parsed = bounded(parse_meta_mat, data, "meta.mat", NAMES)
        if parsed:
            id_to_wnid, classes, counts = parsed
            assert all(type(k) is int for k in id_to_wnid) and all(type(w) is str for w in id_to_wnid.values())
            assert all(type(n) is int and n >= 0 for n in counts.values())
            assert all(type(c) is str for names in classes.values() for c in names)

    prop()


def test_ground_truth():
    id_to_wnid = {1: "n01440764", 2: "n01443537", 10: "n00000010"}

    @FUZZ
    @given(data=st.one_of(st.binary(max_size=200), st.text(max_size=60).map(lambda t: t.encode("utf-8", "replace"))))
    @example(data=b"+1\n1_0\n")  # int() takes both
    @example(data=b"1\n" + b"9" * 100_000 + b"\n")
    def prop(data):
        wnids = bounded(parse_ground_truth, data, id_to_wnid, "gt.txt", NAMES)
        for line, wnid in zip(data.split(), wnids or ()):
            assert line.isdigit() and id_to_wnid[int(line)] == wnid

    prop()


def test_devkit_archive(archives, tmp_path_factory):
    base = archives("tiny").files["devkit"].read_bytes()
    path = tmp_path_factory.mktemp("fuzz-devkit") / FILES["devkit"]

    def read(data: bytes):
        path.write_bytes(data)
        return read_devkit_members(path, (META, GROUND_TRUTH), 4 << 20)

    @FUZZ
    @given(data=mutated(base, max_ops=2))
    def prop(data):
        bounded(read, data)

    prop()


# ---------------------------------------------------------------- meta.bin


def bomb_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of nested pairs, each holding the one below twice by reference: a few
    hundred bytes that stand for 2**depth strings once written out (json.dump of it never ends)."""
    ops = [b"\x80\x02", b"X\x09\x00\x00\x00n01440764", b"q\x00"]
    for level in range(depth):
        ops += [b"h" + bytes([level]), b"\x86", b"q" + bytes([level + 1])]  # (x, x) from x on the stack
    return b"".join([*ops, b"."])


def meta_bin_with(pkl: bytes, compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as archive:
        for name, record in {"data.pkl": pkl, **torchfile.RECORDS}.items():
            archive.writestr(f"meta/{name}", record)
    return buf.getvalue()


@pytest.fixture(scope="module")
def meta_bin_base(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    tmp = tmp_path_factory.mktemp("fuzz-meta")
    value = ({f"n{i:08d}": (f"class {i}", "other name") for i in range(20)}, [f"n{i % 20:08d}" for i in range(60)])
    torchfile.save(tmp / "meta.bin", value)
    return tmp / "probe.bin", (tmp / "meta.bin").read_bytes(), pickle.dumps(value, protocol=2)


def test_meta_bin(meta_bin_base):
    probe, base, pkl = meta_bin_base

    def load(data: bytes):
        probe.write_bytes(data)
        return torchfile.load_plain(probe)

    @FUZZ
    @given(
        data=st.one_of(
            mutated(base),
            mutated(pkl).map(meta_bin_with),
            mutated(pkl).map(lambda p: meta_bin_with(p, zipfile.ZIP_DEFLATED)),
            st.integers(1, 40).map(lambda d: meta_bin_with(bomb_pickle(d))),
            st.just(meta_bin_with(b"X" + struct.pack("<I", 2**31) + b"abc")),
        )
    )
    def prop(data):
        plain, value = bounded(load, data) or (False, None)
        assert not plain or expanded(value, EXPANDED_LIMIT) <= EXPANDED_LIMIT

    prop()


def expanded(value, limit: int) -> int:
    """How many values a writer reaches walking `value` (shared references each time), up to `limit`+1."""
    stack, count = [value], 0
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            stack += item
    return count


# ---------------------------------------------------------------- the JPEG/PNG header parser


@pytest.fixture(scope="module")
def image_bases() -> list[bytes]:
    rng = np.random.default_rng(3)
    return [
        encode_image(rng, (40, 30), "RGB", "JPEG", 90),
        encode_image(rng, (17, 23), "L", "JPEG", 75),
        encode_image(rng, (20, 20), "CMYK", "JPEG", 80),
        encode_image(rng, (24, 16), "RGB", "PNG", 0),
    ]


def header_of(data: bytes):
    head = data[:16384]
    return parse_header(head, data[-16:], len(data), lambda o, n: data[o : o + n])


def test_image_header(image_bases):
    @FUZZ
    @given(data=st.sampled_from(image_bases).flatmap(mutated))
    def prop(data):
        bounded(header_of, data, ours=(BadImage, LauncherError))

    prop()
