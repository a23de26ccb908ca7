"""meta.bin without torch: what torchfile writes, torch reads the same; what torchfile reads, it reads
as torch.load(weights_only=True) does, and it leaves everything else to torch."""

from __future__ import annotations

import io
import os
import pickle
import signal
import zipfile

import pytest
import torch

from launcher.datasets.imagenet import torchfile

META = ({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish",)}, ["n01443537", "n01440764"])


def data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))


def test_saved_file_is_what_torch_saves(tmp_path):
    ours, theirs = tmp_path / "meta.bin", tmp_path / "torch" / "meta.bin"
    theirs.parent.mkdir()
    size = torchfile.save(ours, META)
    torch.save(META, theirs)
    assert size == ours.stat().st_size and not (tmp_path / "meta.bin.part").exists()
    assert torch.load(ours, weights_only=True) == torch.load(theirs, weights_only=True) == META
    assert data_pkl(ours) == data_pkl(theirs)
    assert zipfile.ZipFile(ours).namelist()[0].startswith("meta/")


def legacy(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def zipped(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CASES = {
    "torch's zip of plain values": (lambda: zipped(META), True),
    "torch's legacy format (torch < 1.6)": (lambda: legacy(META), False),
    "a tensor inside": (lambda: zipped({"w": torch.zeros(2)}), False),
    "an OrderedDict (a class)": (lambda: zipped(__import__("collections").OrderedDict(a=1)), False),
    "cut in half": (lambda: zipped(META)[: len(zipped(META)) // 2], False),
    "not torch at all": (lambda: b"not torch", False),
    "empty": (lambda: b"", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_load_agrees_with_torch_and_reads_plain_values_itself(case, tmp_path):
    make, plain = CASES[case]
    path = tmp_path / "meta.bin"
    path.write_bytes(make())
    assert torchfile.load_plain(path)[0] is plain

    def outcome(load):
        try:
            return load(path)
        except Exception:
            return "refused"

    expected = outcome(lambda p: torch.load(p, weights_only=True))
    got = outcome(torchfile.load)
    if isinstance(expected, dict) and any(isinstance(v, torch.Tensor) for v in expected.values()):
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    else:
        assert got == expected
    if plain:
        assert torchfile.load_plain(path)[1] == expected


# ---------------------------------------------------------------- bounded reads (issue 14, class 3)


def nested_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of nested pairs, each holding the one below twice by reference: a few
    hundred bytes that stand for 2**depth strings once written out (json.dump of it never ends)."""
    ops = [b"\x80\x02", b"X\x09\x00\x00\x00n01440764", b"q\x00"]
    for level in range(depth):
        ops += [b"h" + bytes([level]), b"\x86", b"q" + bytes([level + 1])]  # (x, x) from x on the stack
    return b"".join([*ops, b"."])


def torch_zip(pkl: bytes, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, record in {"data.pkl": pkl, **torchfile.RECORDS}.items():
            archive.writestr(f"meta/{name}", record)
    return buf.getvalue()


def test_reference_bomb_is_refused(tmp_path):
    path = tmp_path / "meta.bin"
    path.write_bytes(torch_zip(nested_pickle(40)))
    assert len(path.read_bytes()) < 2048
    with pytest.raises(
        torchfile.MetaFileError,
        match=r"meta\.bin holds values that expand to 2,199,023,255,551 items and [\d,]+ characters \(at most 1,000",
    ):
        torchfile.load(path)
    path.write_bytes(torch_zip(nested_pickle(10)))  # 1,024 strings: plain values, read as torch does
    assert torchfile.load_plain(path)[1] == torch.load(path, weights_only=True)


def test_oversized_file_and_inflating_member_are_refused(tmp_path):
    path = tmp_path / "meta.bin"
    path.write_bytes(torch_zip(pickle.dumps("x" * (9 << 20), protocol=2), zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 100_000
    with pytest.raises(torchfile.MetaFileError, match="a meta/data.pkl inflating past 8,388,608 bytes"):
        torchfile.load_plain(path)
    with open(path, "ab") as f:
        f.truncate(9 << 20)
    with pytest.raises(torchfile.MetaFileError, match="holds 9,437,184 bytes"):
        torchfile.load_plain(path)


def test_fifo_and_link_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "meta.bin")
    signal.alarm(10)  # a blocking open would end the test here, not hang it
    with pytest.raises(torchfile.MetaFileError, match="is not a regular file"):
        torchfile.load_plain(tmp_path / "meta.bin")
    signal.alarm(0)
    (tmp_path / "real.bin").write_bytes(b"x")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(torchfile.MetaFileError, match="is a symbolic link"):
        torchfile.load_plain(tmp_path / "link.bin")
