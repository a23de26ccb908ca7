"""meta.bin without torch: what torchfile writes, torch reads the same; what torchfile reads, it reads
as torch.load(weights_only=True) does, and it leaves everything else to torch."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from launcher import torchfile

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
