"""`launcher verify storage.format=tar`: the tar index checked against the archives (identity,
ranges, counts, checksum) and every image's bytes read from its range at header and decode, with
the same findings as folder verify on a folder root of the same archives; verify.fix writes the
re-encoded odd images to the overlay the loaders read."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from launcher import compose_config
from launcher import data as D
from launcher.data.imageio import ImageReadMode, decode_jpeg
from launcher.tarformat.indexfile import read_index

from archive_tools import copy_archives
from conftest import FILES, dataset_overrides, launch, storage_overrides

TAR = "storage.format=tar"
NO_MD5 = [f"dataset.archives.{k}.md5=null" for k in ("devkit", "train", "val")]


def tar_overrides(archive_dir: Path, root: Path, result, *more: str) -> list[str]:
    return [*storage_overrides(archive_dir, root), *dataset_overrides(result), TAR, "cluster=debug", *more]


def verify(overrides: list[str], *more: str) -> tuple[int, dict | None]:
    code = launch("verify", [*overrides, *more])
    report = Path(compose_config("verify", [*overrides, *more]).verify.report)
    return code, json.loads(report.read_text()) if report.is_file() else None


@pytest.fixture(scope="module")
def roots(archives, tmp_path_factory):
    """(archives, folder root, tar root) of the small shape, each prepared once."""
    result = archives("small")
    base = tmp_path_factory.mktemp("tarverify")
    folder, tar = base / "folder", base / "tar"
    assert launch("prepare", [*storage_overrides(result.archive_dir, folder), *dataset_overrides(result)]) == 0
    assert launch("prepare", tar_overrides(result.archive_dir, tar, result)) == 0
    return result, folder, tar


def prepared_copy(result, tmp_path: Path, change=None) -> tuple[Path, list[str]]:
    """A tar root over a copy of the archives (md5s not checked), `change(archive_dir)` applied first."""
    archive_dir = copy_archives(result, tmp_path / "archives")
    if change is not None:
        change(archive_dir)
    overrides = tar_overrides(archive_dir, tmp_path / "root", result, *NO_MD5)
    assert launch("prepare", overrides) == 0
    return archive_dir, overrides


@pytest.mark.parametrize("level", ["exists", "header", "decode"])
def test_clean_tar_root_passes_with_the_folder_roots_notes(roots, level):
    result, folder, tar = roots
    code, report = verify(tar_overrides(result.archive_dir, tar, result), f"verify.level={level}")
    assert code == 0 and report["ok"] and report["failures"] == [], report["failures"]
    index_images = {s: len(read_index(tar / ".launcher" / f"tarindex-{s}.bin", s)) for s in ("train", "val")}
    assert {s: c["checked"] for s, c in report["counts"].items()} == index_images
    assert {s: c["images"] for s, c in report["counts"].items()} == {
        s: c["announced"] for s, c in report["counts"].items()
    }
    folder_code, theirs = verify(
        [*storage_overrides(result.archive_dir, folder), *dataset_overrides(result), "cluster=debug"],
        f"verify.level={level}",
    )
    assert folder_code == 0
    assert sorted(map(str, report["notes"])) == sorted(map(str, theirs["notes"]))
    if level != "exists":
        assert {n["kind"] for n in report["notes"]} == {"png", "cmyk", "grayscale"}


def test_archive_rewritten_in_place_is_one_finding(archives, tmp_path, capsys):
    result = archives("tiny")
    archive_dir, overrides = prepared_copy(result, tmp_path)
    path = archive_dir / FILES["train"]
    size = path.stat().st_size
    index = read_index(tmp_path / "root" / ".launcher" / "tarindex-train.bin", "train")
    with open(path, "r+b") as f:  # the same size, other bytes in an image
        f.seek(index.offsets[0] + index.sizes[0] // 2)
        f.write(b"\x00" * 16)
    assert path.stat().st_size == size
    code, report = verify(overrides, "verify.level=exists")
    assert code == 1 and len(report["failures"]) == 1, report["failures"]
    (failure,) = report["failures"]
    assert failure["check"] == "archive" and failure["path"] == str(path)
    assert "run `launcher prepare storage.format=tar` again" in failure["reason"]
    assert report["counts"]["val"]["checked"] == len(read_index(tmp_path / "root" / ".launcher" / "tarindex-val.bin"))
    assert "archives of a tar index" in capsys.readouterr().out


def corrupt_first_plain_jpeg(archive_dir: Path, result, probe_root: Path) -> str:
    """A marker in the middle of the image data of a train JPEG that is not an odd file (header and
    end intact: only a decode finds it), written in place; returns its logical path."""
    overrides = tar_overrides(archive_dir, probe_root, result, *NO_MD5)
    assert launch("prepare", overrides) == 0
    index = read_index(probe_root / ".launcher" / "tarindex-train.bin", "train")
    odd = {f"train/{p}" if not p.startswith("train/") else p for p in result.odd_files}
    i = next(i for i in range(len(index)) if index.path(i) not in odd and index.sizes[i] > 600)
    with open(archive_dir / FILES["train"], "r+b") as f:
        f.seek(index.offsets[i] + index.sizes[i] // 2)
        f.write(b"\xff\xd8")
    return index.path(i)


def test_corrupt_jpeg_inside_the_archive_is_found_at_decode(archives, tmp_path, capsys):
    result = archives("tiny")
    bad = []
    _, overrides = prepared_copy(
        result, tmp_path, lambda d: bad.append(corrupt_first_plain_jpeg(d, result, tmp_path / "probe"))
    )
    assert verify(overrides, "verify.level=header")[0] == 0
    code, report = verify(overrides, "verify.level=decode")
    assert code == 1 and [(f["path"], f["check"]) for f in report["failures"]] == [(bad[0], "decode")]
    assert report["failures"][0]["reason"].startswith("PIL cannot decode it") and report["format"] == "tar"
    assert "undecodable images in the archives: download the archive again" in capsys.readouterr().out


def test_altered_index_is_refused_in_one_line(archives, tmp_path, capsys):
    result = archives("tiny")
    _, overrides = prepared_copy(result, tmp_path)
    index = tmp_path / "root" / ".launcher" / "tarindex-val.bin"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    capsys.readouterr()
    assert launch("verify", [*overrides, "verify.level=exists"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(index) in err and "sha256" in err and "launcher prepare" in err


def test_fix_writes_the_overlay_the_loader_reads(archives, tmp_path):
    result = archives("tiny")
    archive_dir, overrides = prepared_copy(result, tmp_path)
    before = {name: (archive_dir / name).read_bytes() for name in FILES.values()}
    code, report = verify(overrides, "verify.level=decode", "verify.fix=true")
    assert code == 0, report["failures"]
    fixable = {p: k for p, k in result.odd_files.items() if k != "grayscale"}
    assert {f["path"]: f["old_kind"] for f in report["fixed"]} == fixable and fixable
    assert {name: (archive_dir / name).read_bytes() for name in FILES.values()} == before  # archives untouched
    state = tmp_path / "root" / ".launcher"
    assert report["updated_records"] == [str(state / "overlay-train.json")]
    cfg = compose_config("bench", [o for o in overrides if o != "cluster=debug"])
    dataset = D.build_dataset(cfg, "train", transform=None)
    for f in report["fixed"]:
        data = (state / "overlay-train" / Path(f["path"]).relative_to("train")).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
        expected = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        assert torch.equal(dataset[f["index"]][0], expected) and dataset.samples[f["index"]][0].endswith(f["path"])
    code, again = verify(overrides, "verify.level=decode")
    assert code == 0 and again["fixed"] == [] and {n["kind"] for n in again["notes"]} == {"grayscale"}
    replacement = state / "overlay-train" / Path(report["fixed"][0]["path"]).relative_to("train")
    data = bytearray(replacement.read_bytes())
    data[len(data) // 2] ^= 1  # the size and the header kept, the sha256 not
    replacement.write_bytes(bytes(data))
    code, damaged = verify(overrides, "verify.level=header")
    assert code == 1 and [f["path"] for f in damaged["failures"]] == [report["fixed"][0]["path"]]
    assert "overlay recorded" in damaged["failures"][0]["reason"] and os.path.isfile(replacement)


def test_wrong_expected_count_and_other_adapter(roots, capsys):
    result, _, tar = roots
    overrides = tar_overrides(result.archive_dir, tar, result)
    code, report = verify(overrides, "verify.level=exists", "dataset.expected.val=999")
    assert code == 1 and [(f["path"], f["check"]) for f in report["failures"]] == [("val", "totals")]
    assert "dataset.expected.val says 999" in report["failures"][0]["reason"]
    capsys.readouterr()
    other = ["dataset=places365_synthetic", TAR, *storage_overrides(result.archive_dir, tar), "cluster=debug"]
    code, report = verify(other, "verify.level=exists")  # an ImageNet tar root read as Places365's
    assert code == 1 and not report["ok"]
    assert any("indexes class folders" in f["reason"] for f in report["failures"]), report["failures"]


def test_a_shard_in_two_processes_finds_what_one_finds(roots, tmp_path):
    from launcher.check.tarshard import verify_tar_shard

    result, _, tar = roots
    state = tar / ".launcher"
    index = state / "tarindex-train.bin"
    n = len(read_index(index, "train"))
    args = (str(index), str(result.archive_dir / FILES["train"]), "train", 0, n, "decode")
    one, two = (verify_tar_shard(*args, state_dir=str(state), processes=p) for p in (1, 2))
    assert one["checked"] == two["checked"] == n and one["bytes"] == two["bytes"]
    assert one["notes"] == two["notes"] and {n[1] for n in one["notes"]} == {"png", "cmyk", "grayscale"}


@pytest.mark.parametrize("shape", ["tiny", "uneven"])
def test_after_fix_the_tar_root_still_equals_the_fixed_folder_root(archives, tmp_path, shape):
    """verify.fix on a folder root re-encodes the PNG and CMYK files in place; on a tar root it writes them
    to the overlay. Afterwards the two datasets are still equal sample for sample and pixel for pixel."""
    result = archives(shape)
    folder = tmp_path / "folder"
    folder_overrides = [*storage_overrides(result.archive_dir, folder), *dataset_overrides(result), "cluster=debug"]
    assert launch("prepare", folder_overrides) == 0
    _, tar_overrides_ = prepared_copy(result, tmp_path)
    for overrides in (folder_overrides, tar_overrides_):
        code, report = verify(overrides, "verify.level=decode", "verify.fix=true")
        assert code == 0 and report["fixed"], report["failures"]
    for split in ("train", "val"):
        ours = D.build_dataset(compose_config("bench", tar_overrides_), split, transform=None)
        theirs = D.build_dataset(compose_config("bench", folder_overrides), split, transform=None)
        relative = [
            [Path(p).relative_to(root) for p, _ in d.samples]
            for d, root in ((ours, tmp_path / "root"), (theirs, folder))
        ]
        assert relative[0] == relative[1]
        assert ours.targets == theirs.targets and len(ours) > 0
        for i in range(len(ours)):
            assert torch.equal(ours[i][0], theirs[i][0]), ours.samples[i][0]
