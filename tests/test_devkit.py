"""The devkit reader against meta.mat files that are not what the devkit holds: fields of the wrong
type or shape, and MAT-file tags that announce more than the file has. Each fails with a DevkitError
naming the file (and the synset and field, or the byte), without a traceback and within a bounded
amount of memory."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.io

from launcher.datasets.imagenet.devkit import DevkitError, NamePatterns, parse_meta_mat
from launcher.datasets.imagenet.synth import Synset, meta_mat_bytes

# dataset.patterns of conf/dataset/imagenet.yaml: what a WNID and an ILSVRC2012_ID must match
NAMES = NamePatterns.of(r"n[0-9]{8}", r"[1-9][0-9]{0,6}")

SYNSETS = [
    Synset(1, "n01440764", "tench, Tinca tinca", [], 3),
    Synset(2, "n01443537", "goldfish, Carassius auratus", [], 4),
    Synset(3, "n00000001", "fish", [1, 2], 0),
]
FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images")


def meta_mat(change=None, compress: bool = False) -> bytes:
    """meta.mat of SYNSETS as savemat writes it; change(rows) may replace field values first."""
    rows = [
        [np.int64(s.ilsvrc_id), s.wnid, s.words, "gloss", np.int64(len(s.children)),
         np.array(s.children, dtype=np.int64), np.int64(0), np.float64(s.num_train_images)]
        for s in SYNSETS
    ]  # fmt: skip
    if change:
        change(rows)
    records = np.empty(len(rows), dtype=[(name, object) for name in FIELDS])
    for i, row in enumerate(rows):
        records[i] = tuple(row)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": records}, do_compression=compress)
    return buf.getvalue()


def parsed_within(data: bytes, peak: int = 32 << 20):
    tracemalloc.start()
    try:
        return parse_meta_mat(data, "meta.mat", NAMES)
    finally:
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert used < peak, f"parse_meta_mat peaked at {used:,} bytes"


def test_plain_and_compressed_meta_mat_read_the_same():
    expected = ({1: "n01440764", 2: "n01443537"}, {"n01440764": ("tench", "Tinca tinca")}, {"n01440764": 3})
    for data in (meta_mat(), meta_mat(compress=True), meta_mat_bytes(SYNSETS)):
        ids, classes, counts = parsed_within(data)
        assert ids == expected[0] and classes["n01440764"] == expected[1]["n01440764"]
        assert counts == {"n01440764": 3, "n01443537": 4} and all(type(n) is int for n in counts.values())


@pytest.mark.parametrize(
    ("row", "field", "value", "shown"),
    [
        (0, "num_children", ":", "':'"),  # int(':') raised ValueError
        (0, "num_children", np.array([0, 0]), "array"),  # int(array) raised TypeError
        (1, "ILSVRC2012_ID", np.float64("nan"), "nan"),
        (1, "ILSVRC2012_ID", np.float64(2.5), "2.5"),
        (0, "num_train_images", np.int64(-3), "-3"),
        (0, "num_train_images", {"a": 1}, ""),  # a nested struct
        (1, "WNID", np.int64(7), "7"),
        (1, "words", np.array(["a", "b"], dtype=object), ""),
    ],
)
def test_wrong_field_type_is_named(row, field, value, shown):
    def change(rows):
        rows[row][FIELDS.index(field)] = value

    with pytest.raises(DevkitError, match=rf"meta\.mat: synset {row + 1} has {field} = .*{shown}.* where"):
        parsed_within(meta_mat(change))


def test_tag_claiming_gigabytes_is_refused_before_scipy_allocates():
    data = bytearray(meta_mat_bytes(SYNSETS))
    name_tag = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00", 128)  # an empty array name (miINT8, 0 bytes)
    data[name_tag + 4 : name_tag + 8] = struct.pack("<I", 0x7FFFFFF0)  # it now claims 2 GB
    with pytest.raises(DevkitError, match=r"meta\.mat is corrupt at byte [\d,]+: an element claims 2,147,483,632"):
        parsed_within(bytes(data))


def test_cell_array_announcing_millions_of_cells_is_refused():
    buf = io.BytesIO()
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = np.float64(1.0)
    scipy.io.savemat(buf, {"synsets": cell})
    data = bytearray(buf.getvalue())
    dims = data.index(b"\x05\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00", 128)
    data[dims + 8 : dims + 16] = struct.pack("<ii", 4000, 4000)  # 16 million cells in a few bytes
    with pytest.raises(DevkitError, match="announces 16,000,000 elements"):
        parsed_within(bytes(data))


def test_compressed_element_inflating_too_far_is_refused():
    import zlib

    bomb = zlib.compress(bytes(70 << 20), 9)
    data = meta_mat_bytes(SYNSETS)[:128] + struct.pack("<II", 15, len(bomb)) + bomb
    with pytest.raises(DevkitError, match="inflates past 67,108,864 bytes"):
        parse_meta_mat(data, "meta.mat", NAMES)


def test_not_a_mat_file():
    with pytest.raises(DevkitError, match="not a MATLAB 5 MAT-file"):
        parse_meta_mat(b"hello", "meta.mat", NAMES)


@pytest.mark.parametrize("line", [b"+1", b"1_0", "١".encode(), b"0x1", b"1.0"])
def test_ground_truth_lines_are_ascii_digits(line):
    from launcher.datasets.imagenet.devkit import parse_ground_truth

    id_to_wnid = {1: "n01440764", 10: "n01443537"}
    assert parse_ground_truth(b"1\n10\n", id_to_wnid, "gt.txt", NAMES) == ["n01440764", "n01443537"]
    with pytest.raises(DevkitError, match=r"gt\.txt: line 2 is"):
        parse_ground_truth(b"1\n" + line + b"\n", id_to_wnid, "gt.txt", NAMES)


CHILD = """
import sys
from launcher.datasets.imagenet.devkit import DevkitError, NamePatterns, parse_meta_mat
try:
    parse_meta_mat(sys.stdin.buffer.read(), "meta.mat", NamePatterns.of("n[0-9]{8}", "[1-9][0-9]{0,6}"))
    print("read")
except DevkitError as err:
    print("DevkitError:", err)
"""


def edited(offset_of, new: bytes) -> bytes:
    data = bytearray(meta_mat_bytes(SYNSETS))
    at = offset_of(bytes(data))
    data[at : at + len(new)] = new
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        # the dimensions of a 1x4 char array (fish) claim 10 bytes instead of 8
        edited(
            lambda d: d.index(b"\x05\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00", 128) + 4, b"\x0a"
        ),
        # a number's int64 data element retyped as an array (miMATRIX)
        edited(lambda d: d.index(b"\x0c\x00\x00\x00\x08\x00\x00\x00\x02\x00", 128), b"\x0e"),
        # an array's flags word with unknown bits and a complex flag, and no imaginary part
        edited(lambda d: d.index(b"\x06\x00\x00\x00\x08\x00\x00\x00\x0e\x00\x00\x00", 900) + 9, b"\x1a\xb4\xe5"),
    ],
    ids=["dims-10-bytes", "number-as-array", "flags"],
)
def test_mat_edits_that_crashed_scipy_are_refused(data):
    """Each of these one- to three-byte edits made scipy's MAT reader die of a segmentation fault."""
    run = subprocess.run([sys.executable, "-c", CHILD], input=data, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-300:]
    assert run.stdout.startswith(b"DevkitError: meta.mat is corrupt at byte"), run.stdout
