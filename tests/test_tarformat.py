"""launcher.tarformat: the tar index of the original archives and the dataset reading from them equal
torchvision's ImageNet on a folder root prepared from the same archives, sample for sample, byte for
byte and pixel for pixel; a changed archive, a hostile member and a damaged index are refused."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from PIL import Image

from launcher import compose_config
from launcher import data as D
from launcher.archive import tarscan
from launcher.archive.index import index_train, index_val
from launcher.core.errors import LauncherError
from launcher.data.imageio import decode_image
from launcher.datasets.imagenet.devkit import parse_devkit
from launcher.tarformat import index as T
from launcher.tarformat import indexfile as F
from launcher.tarformat.dataset import ArchiveChanged, TarImageNet, load_tar_imagenet
from launcher.tarformat.overlay import OverlayError, read_overlay, replacement_path, write_overlay

from archive_tools import copy_archives, members, rewrite_class, tar_bytes, write_tar
from conftest import FILES, GROUND_TRUTH, META, dataset_overrides, launch, storage_overrides
from hostile_files import BOMBS, deadline

ATTRIBUTES = ("classes", "wnids", "class_to_idx", "wnid_to_idx", "samples", "targets", "imgs", "root", "split")
PATTERNS = SimpleNamespace(**compose_config("prepare", ["dataset=synthetic"]).dataset.patterns)  # the YAML's


@pytest.fixture(scope="module")
def folder_root(archives, tmp_path_factory):
    """name -> a root `launcher prepare` (format=folder) made of that shape's archives (built once)."""
    cache = {}

    def get(name: str = "small") -> Path:
        if name not in cache:
            result = archives(name)
            root = tmp_path_factory.mktemp(f"folder-{name}") / "root"
            overrides = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
            assert launch("prepare", overrides) == 0
            cache[name] = root
        return cache[name]

    return get


def devkit_of(archive_dir: Path):
    return parse_devkit(
        archive_dir / FILES["devkit"],
        META,
        GROUND_TRUTH,
        1 << 28,
        wnid_pattern=PATTERNS.wnid,
        id_pattern=PATTERNS.ilsvrc_id,
    )


def build(archive_dir: Path, split: str, **kwargs) -> F.TarIndex:
    return T.index_archive(archive_dir / FILES[split], split, devkit_of(archive_dir), T.Patterns.of(PATTERNS), **kwargs)


def tar_dataset(archive_dir: Path, split: str, root: Path | str = "", **kwargs) -> TarImageNet:
    return TarImageNet(build(archive_dir, split), archive_dir / FILES[split], root=str(root), **kwargs)


def outer_index(path: Path, split: str, labels: int) -> list:
    if split == "train":
        return index_train(path, PATTERNS.train_class, PATTERNS.wnid)["members"]
    return index_val(path, PATTERNS.val_image, labels)["members"]


# ---------------------------------------------------------------- equal to torchvision on the folder root


@pytest.mark.parametrize("shape", ["small", "uneven"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_samples_equal_torchvision_on_the_folder_root(archives, folder_root, shape, split):
    result, root = archives(shape), folder_root(shape)
    ours = tar_dataset(result.archive_dir, split, root)
    theirs = torchvision.datasets.ImageNet(str(root), split)
    assert isinstance(ours, torchvision.datasets.ImageNet)
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert list(ours.samples) == theirs.samples and len(ours) == len(theirs) > 0
    # every sample's bytes are the folder file's bytes, read from the archive's range
    for i, (path, _) in enumerate(theirs.samples):
        assert bytes(ours.read_sample(i)[0]) == Path(path).read_bytes(), path


def test_logical_paths_without_a_root(archives):
    ours = tar_dataset(archives().archive_dir, "train")
    path, target = ours.samples[0]
    assert path == f"train/{ours.wnids[target]}/{ours.index.name(0)}" == ours.index.path(0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_decoded_pixels_identical_through_the_same_transform(archives, folder_root, split):
    """The odd files (CMYK, PNG named .JPEG, grayscale) included: raw decode, eval pipeline, and the
    train pipelines' batch paths (the crop-only decoder straight into a uint8 batch, and float)."""
    result, root = archives("small"), folder_root("small")
    folder = D.load_imagenet(root, split)
    ours = tar_dataset(result.archive_dir, split, root)
    odd = {f"{root}/{p}" for p in result.odd_files}
    assert split == "val" or odd <= {p for p, _ in ours.samples}
    indices = list(range(len(ours)))
    for i in indices:
        assert torch.equal(ours[i][0], folder[i][0])
    for node, train in [({}, False), ({"output": "uint8"}, True), ({}, True), ({"policy": "trivialaugment"}, True)]:
        folder.transform = ours.transform = D.build_transforms(node, train)
        torch.manual_seed(0)
        theirs = [folder[i] for i in indices[:8]]
        torch.manual_seed(0)
        mine = [ours[i] for i in indices[:8]]
        assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(mine, theirs)), node
        torch.manual_seed(1)
        theirs = D.collate(folder.__getitems__(indices))
        torch.manual_seed(1)
        mine = D.collate(ours.__getitems__(indices))
        assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1]), node


def test_loaders_with_workers_give_the_folder_loaders_batches(archives, folder_root):
    """make_loader unchanged: TrainSampler, 2 workers (each opens the archive itself after fork),
    shared-memory uint8 batches; the same batches as the folder dataset's, epoch after epoch."""
    result, root = archives("small"), folder_root("small")
    tf = D.build_transforms({"output": "uint8"}, True)
    folder = D.load_imagenet(root, "train", transform=tf)
    ours = tar_dataset(result.archive_dir, "train", root, transform=tf)
    node = {"batch_size": 8, "num_workers": 2, "persistent_workers": True, "seed": 3}
    loaders = [D.make_loader(d, True, node, rank=0, world_size=1) for d in (ours, folder)]
    for _ in range(2):
        for mine, theirs in zip(*loaders, strict=True):
            assert mine[0].dtype == torch.uint8 and mine[0].shape[1:] == (3, 224, 224)
            assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    evals = [D.make_loader(d, False, {"batch_size": 5, "num_workers": 0}, rank=1, world_size=2) for d in (ours, folder)]
    ours.transform = folder.transform = D.build_transforms({}, False)
    assert [t.tolist() for _, t in evals[0]] == [t.tolist() for _, t in evals[1]]


def test_each_process_opens_the_archive_once(archives, monkeypatch):
    ours = tar_dataset(archives().archive_dir, "val")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for i in range(len(ours)):
        ours.read_sample(i)
    assert opened == []
    monkeypatch.setattr(ours, "_pid", -1)  # as in a forked worker: its own descriptor, once
    ours.read_sample(0)
    ours.read_sample(1)
    assert opened == [ours.archive]


# ---------------------------------------------------------------- the index: ranges, md5


@pytest.fixture(params=["C walker", "Python walk"])
def walker(request, monkeypatch):
    """The index built with the C walker of plain headers (launcher/archive/_tarwalk.c) and without it."""
    if request.param == "Python walk":
        monkeypatch.setattr(tarscan, "_tarwalk", None)
    elif tarscan._tarwalk is None:
        pytest.skip("launcher.archive._tarwalk was not built")
    return request.param


@pytest.mark.parametrize("shape", ["small", "uneven"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_the_c_walker_builds_the_python_walks_index(archives, monkeypatch, shape, split):
    if tarscan._tarwalk is None:
        pytest.skip("launcher.archive._tarwalk was not built")
    archive_dir = archives(shape).archive_dir
    fast = [F.encode_index(build(archive_dir, split, md5=md5)) for md5 in (False, True)]
    monkeypatch.setattr(tarscan, "_tarwalk", None)
    assert [F.encode_index(build(archive_dir, split, md5=md5)) for md5 in (False, True)] == fast


@pytest.mark.parametrize("split", ["train", "val"])
def test_ranges_merged_equal_the_one_range_index(walker, archives, tmp_path, split):
    result = archives("uneven")
    path, kit, patterns = result.archive_dir / FILES[split], devkit_of(result.archive_dir), T.Patterns.of(PATTERNS)
    whole = F.encode_index(build(result.archive_dir, split))
    outer = outer_index(path, split, len(kit.val_wnids))
    for units in (1, 2, 3, 7, len(outer)):
        ranges = T.plan_ranges(outer, units)
        assert len(ranges) == min(units, len(outer)) and ranges[0][0] == 0 and ranges[-1][1] is None
        parts = [T.index_part(path, split, kit, patterns, first, stop) for first, stop in ranges]
        assert F.encode_index(T.merge_parts(parts[::-1], kit, patterns)) == whole, units
    for k, part in enumerate(parts):  # units write their parts; the merge reads them back
        F.write_index(tmp_path / f"part-{k}.bin", part)
    back = [F.read_index(tmp_path / f"part-{k}.bin", split, kind="part") for k in range(len(parts))]
    assert F.encode_index(T.merge_parts(back, kit, patterns)) == whole
    with pytest.raises(F.IndexFileError, match="it is a part of .*, not the index of"):
        F.read_index(tmp_path / "part-0.bin", split)
    parts = [T.index_part(path, split, kit, patterns, first, stop) for first, stop in T.plan_ranges(outer, 3)]
    with pytest.raises(LauncherError, match="do not cover the archive"):
        T.merge_parts([parts[0], parts[2]], kit, patterns)
    with pytest.raises(LauncherError, match="stop before the archive's end"):
        T.merge_parts(parts[:2], kit, patterns)


@pytest.mark.parametrize("split", ["train", "val"])
def test_md5_in_the_same_read_equals_hashlibs(walker, archives, split):
    result = archives("small")
    index = build(result.archive_dir, split, md5=True)
    assert index.archive["md5"] == hashlib.md5((result.archive_dir / FILES[split]).read_bytes()).hexdigest()
    assert F.encode_index(build(result.archive_dir, split)) != F.encode_index(index)  # only the md5 differs
    index.archive["md5"] = None
    assert F.encode_index(build(result.archive_dir, split)) == F.encode_index(index)
    key = rf"\(dataset.archives.{split}.md5\)"
    mismatch = rf"md5 mismatch for .*{FILES[split]}: expected 0{{32}} {key}, got [0-9a-f]{{32}}\."
    with pytest.raises(LauncherError, match=mismatch):
        build(result.archive_dir, split, expected_md5="0" * 32)


def test_md5_read_touches_every_byte_once(walker, archives, monkeypatch):
    """One sequential read: the preads cover [0, size) back to back, nothing read twice."""
    path = archives("uneven").archive_dir / FILES["train"]
    reads, real = [], os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append((at, n)) or real(fd, n, at))
    build(path.parent, "train", md5=True)
    monkeypatch.undo()
    assert reads[0][0] == 0
    assert all(at + n == nxt for (at, n), (nxt, _) in zip(reads, reads[1:]))
    assert sum(n for _, n in reads) == path.stat().st_size


# ---------------------------------------------------------------- a changed archive is refused at load


CHANGES = {
    "rewritten in place": "only its ctime differs: its inode changed since",
    "hard link made": "only its ctime differs: its inode changed since .*a hard link made or removed",
    "chmod": "only its ctime differs",
    "replaced": "ctime_ns, ino differ: rewritten, replaced or truncated since",
    "truncated": "size, mtime_ns, ctime_ns differ: rewritten, replaced or truncated since",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_archive_refused_at_load(archives, tmp_path, change):
    """Any change of the archive's identity, its metadata included (a hard link or chmod changes its ctime,
    and only a new read could tell the bytes are the same), is refused, saying what differs and the fix."""
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    index = build(archive_dir, "train")
    path = archive_dir / FILES["train"]
    st = path.stat()
    if change == "rewritten in place":  # same size, mtime put back: ctime still tells
        with open(path, "r+b") as f:
            f.seek(index.offsets[0] + 100)
            byte = f.read(1)
            f.seek(index.offsets[0] + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "hard link made":
        os.link(path, tmp_path / "link.tar")
    elif change == "chmod":
        os.chmod(path, 0o640)
    elif change == "replaced":
        shutil.copy2(path, tmp_path / "copy.tar")
        os.replace(tmp_path / "copy.tar", path)
    else:
        os.truncate(path, st.st_size - 3000)
    assert path.stat().st_size == (st.st_size - 3000 if change == "truncated" else st.st_size)
    built_from = rf"The archive {path} is not the file the tar index .* was built from \({CHANGES[change]}"
    fix = r"; it had [\d,]+ bytes, it has [\d,]+\)\. Put the original archive back, or run `launcher prepare "
    fix += "storage.format=tar` again"
    with pytest.raises(ArchiveChanged, match=built_from + ".*" + fix):
        TarImageNet(index, path)


def test_archive_truncated_after_load_names_the_member(archives, tmp_path):
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    ours = tar_dataset(archive_dir, "val")
    last = max(range(len(ours)), key=lambda i: ours.index.offsets[i])
    os.truncate(archive_dir / FILES["val"], ours.index.offsets[last] + 10)
    with pytest.raises(
        ArchiveChanged, match=rf"member {ours.index.path(last)} \(bytes [\d,]+ to [\d,]+\): the archive ends"
    ):
        ours.read_sample(last)


@pytest.mark.parametrize("bomb", list(BOMBS))
@pytest.mark.parametrize("crop", [True, False])
def test_image_bombs_in_the_archive_refused_by_the_loaders_bounds(archives, tmp_path, bomb, crop):
    """A pixel or scan bomb inside a class tar: the index holds its range (it decodes nothing); the
    dataset refuses it under transform.max_pixels/max_scans, naming archive, member and bytes."""
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    rewrite_class(archive_dir, 0, lambda images: tar_bytes([(images[0][0], BOMBS[bomb]()), *images[1:]]))
    ours = tar_dataset(archive_dir, "train")
    i = [p for p, _ in ours.samples].index(f"train/{ours.wnids[0]}/{members_of(archive_dir, 0)[0]}")
    ours.transform = D.build_transforms({"output": "uint8"} if crop else {}, crop)
    member = rf"{archive_dir / FILES['train']} member {ours.index.path(i)} \(bytes [\d,]+ to [\d,]+\): "
    with deadline(20), pytest.raises(D.ImageRefused, match=member + "(the header declares|more than transform)"):
        ours.__getitems__([i])
    with deadline(20), pytest.raises(D.ImageRefused, match=member):
        ours[i]


def members_of(archive_dir: Path, k: int) -> list[str]:
    name, data = members(archive_dir / FILES["train"])[k]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


# ---------------------------------------------------------------- hostile members


def sparse_class_tar(tmp_path: Path, name: str) -> bytes:
    sparse = tmp_path / name
    with open(sparse, "wb") as f:
        f.truncate(40_000)
        f.seek(20_000)
        f.write(b"data in the middle")
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--format=gnu", "--sparse", "-cf", str(out), "-C", str(tmp_path), name], check=True)
    return out.read_bytes()


def cut_last_member(images: list[tuple[str, bytes]]) -> bytes:
    """A class tar whose last member claims more bytes than the class tar holds."""
    data = tar_bytes(images)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return data[: last.offset_data + last.size // 2]


HOSTILE_CLASS = {
    "dot-dot name": (
        lambda images, wnid, tmp: tar_bytes([*images, (f"../{wnid}_1.JPEG", b"x")]),
        r", header at offset [\d,]+: member '\.\./{wnid}_1\.JPEG' does not match the pattern",
    ),
    "non-ASCII digits": (
        lambda images, wnid, tmp: tar_bytes([*images, (f"{wnid}_\u0661\u0662.JPEG", b"x")]),
        r", header at offset [\d,]+: member '{wnid}_\u0661\u0662\.JPEG' does not match the pattern",
    ),
    "member past the class tar": (
        lambda images, wnid, tmp: cut_last_member(images),
        r"is truncated or corrupt: member '{wnid}_\d+\.JPEG' needs bytes up to offset [\d,]+ but the archive ends at",
    ),
    "sparse member": (
        lambda images, wnid, tmp: sparse_class_tar(tmp, f"{wnid}_1.JPEG"),
        r": member '{wnid}_1\.JPEG' \(header at offset [\d,]+\) is a sparse file",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CLASS))
def test_hostile_class_tar_refused_naming_archive_member_and_offset(walker, archives, tmp_path, case):
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    make, message = HOSTILE_CLASS[case]
    outer = members(archive_dir / FILES["train"])
    wnid = outer[1][0].removesuffix(".tar")
    rewrite_class(archive_dir, 1, lambda images: make(images, wnid, tmp_path))
    where = rf"The archive {archive_dir / FILES['train']} member {wnid}\.tar\b"
    with pytest.raises(LauncherError, match=where + ".*" + message.format(wnid=wnid)) as err:
        build(archive_dir, "train")
    assert "\n" not in str(err.value)
    with pytest.raises(LauncherError, match=message.format(wnid=wnid)):  # by ranges too
        path = archive_dir / FILES["train"]
        for first, stop in T.plan_ranges(outer_index(path, "train", 0), 3):
            T.index_part(path, "train", devkit_of(archive_dir), T.Patterns.of(PATTERNS), first, stop)


@pytest.mark.parametrize(
    "name, message",
    [
        ("ILSVRC2012_val_0000000\u0661.JPEG", "does not match the pattern"),
        ("../ILSVRC2012_val_00000001.JPEG", "does not match the pattern"),
        ("ILSVRC2012_val_00009999.JPEG", "has no label: the devkit's ground truth lists"),
    ],
)
def test_hostile_val_member_refused(walker, archives, tmp_path, name, message):
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    images = members(archive_dir / FILES["val"])
    images[1] = (name, images[1][1])
    write_tar(archive_dir / FILES["val"], images)
    where = rf"The archive {archive_dir / FILES['val']}(, header at offset [\d,]+)?: member '{name}'"
    with pytest.raises(LauncherError, match=rf"{where} {message}"):
        build(archive_dir, "val")


def test_one_val_number_in_two_units_is_refused_at_merge(archives, tmp_path):
    """Under a val pattern of variable width, `_01` and `_00000001` are one image number: within a
    unit that is refused while walking, across units at the merge."""
    archive_dir = copy_archives(archives("tiny"), tmp_path / "archives")
    path = archive_dir / FILES["val"]
    images = members(path)
    images[-1] = ("ILSVRC2012_val_01.JPEG", images[-1][1])  # image 1 twice, the last image missing
    write_tar(path, images)
    kit = devkit_of(archive_dir)
    wide = r"ILSVRC2012_val_([0-9]+)\.JPEG"
    patterns = T.Patterns.of({**vars(PATTERNS), "val_image": wide})
    both = r"members '.*' and '.*' are both val image 1; the val archive is not a valid ILSVRC2012 archive"
    with pytest.raises(LauncherError, match=both):
        T.index_archive(path, "val", kit, patterns)
    with open(path, "rb") as f:  # launcher.index.index_val refuses the duplicate itself: list members by hand
        outer = [[m.name, m.offset_data, m.size] for m in tarfile.open(fileobj=f).getmembers()]
    ranges = T.plan_ranges(outer, 2)
    parts = [T.index_part(path, "val", kit, patterns, first, stop) for first, stop in ranges]
    with pytest.raises(LauncherError, match=both):
        T.merge_parts(parts, kit, patterns)


def test_range_end_inside_a_member_is_refused(archives):
    result = archives("small")
    path = result.archive_dir / FILES["train"]
    outer = outer_index(path, "train", 0)
    with pytest.raises(LauncherError, match=r"offset [\d,]+ is not where a member ends"):
        T.index_part(path, "train", devkit_of(result.archive_dir), T.Patterns.of(PATTERNS), 0, outer[1][1] + 512)
    with pytest.raises(LauncherError, match="fails its checksum"):  # a walk that starts inside a member
        T.index_part(path, "train", devkit_of(result.archive_dir), T.Patterns.of(PATTERNS), outer[1][1] + 512)


# ---------------------------------------------------------------- the index file


@pytest.fixture(scope="module")
def index_bytes(archives) -> bytes:
    return F.encode_index(build(archives("small").archive_dir, "train"))


def test_index_file_round_trip(archives, tmp_path, index_bytes):
    index = build(archives("small").archive_dir, "train")
    path = tmp_path / "state" / "tarindex-train.bin"
    assert F.write_index(path, index) == len(index_bytes) == path.stat().st_size
    back = F.read_index(path, "train")
    assert F.encode_index(back) == index_bytes
    assert [back.path(i) for i in range(len(back))] == [index.path(i) for i in range(len(index))]
    with pytest.raises(F.IndexFileError, match="it is a index of train, not the index of val"):
        F.read_index(path, "val")
    with pytest.raises(F.IndexFileError, match=f"There is no tar index at {tmp_path / 'none.bin'}"):
        F.read_index(tmp_path / "none.bin")


def test_damaged_index_file_refused(tmp_path, index_bytes):
    path = tmp_path / "tarindex-train.bin"
    cuts = [0, 5, 16, 100, len(index_bytes) // 2, len(index_bytes) - 1]
    flips = [0, 9, 20, 300, len(index_bytes) // 2, len(index_bytes) - 40, len(index_bytes) - 1]
    variants = [index_bytes[:n] for n in cuts]
    for at in flips:
        flipped = bytearray(index_bytes)
        flipped[at] ^= 0x10
        variants.append(bytes(flipped))
    for data in variants:
        path.write_bytes(data)
        with pytest.raises(
            F.IndexFileError, match=rf"{path} is not a whole launcher tar index \(.*\): it was truncated"
        ):
            F.read_index(path, "train")


def resigned(data: bytes, header_change=None, body_change=None) -> bytes:
    """The index bytes changed and their sha256 recomputed: a hostile writer, not a bit flip."""
    import json

    (n,) = struct.unpack_from("<Q", data, 8)
    header = json.loads(data[16 : 16 + n])
    rest = data[16 + n + (-n % 8) : -32]
    if header_change:
        header_change(header)
    head = json.dumps(header).encode()
    body = F.MAGIC + struct.pack("<Q", len(head)) + head + bytes(-len(head) % 8) + rest
    if body_change:
        body = body_change(bytearray(body))
    return bytes(body) + hashlib.sha256(bytes(body)).digest()


@pytest.mark.parametrize(
    "header_change, body_change, message",
    [
        (lambda h: h.update(count=2**31 - 1), None, "its header describes [\\d,]+ bytes of arrays"),
        (lambda h: h.update(count=-1), None, "its header's count is not valid"),
        (lambda h: h.update(names_bytes=10**9), None, "its header's names_bytes is not valid"),
        (lambda h: h["archive"].update(size=100), None, r"image \d+ runs to byte [\d,]+ of a 100-byte archive"),
        (lambda h: h.update(wnids=["../x"] * len(h["wnids"])), None, "its header's wnids is not valid"),
        (lambda h: h.update(version=True), None, "it is version True"),
        (lambda h: h.update(kind="part"), None, "its header's span is not valid"),
        (None, lambda b: b[: len(b) // 2] + b[len(b) // 2 :], None),  # untouched: reads fine
    ],
)
def test_hostile_index_file_refused_without_allocating(tmp_path, index_bytes, header_change, body_change, message):
    path = tmp_path / "tarindex-train.bin"
    path.write_bytes(resigned(index_bytes, header_change, body_change))
    if message is None:
        assert F.encode_index(F.read_index(path)) == index_bytes
        return
    with pytest.raises(F.IndexFileError, match=message):
        F.read_index(path)


def test_targets_past_the_classes_refused(archives, tmp_path):
    index = build(archives("small").archive_dir, "train")
    index.targets[-1] = len(index.wnids)
    F.write_index(tmp_path / "i.bin", index)
    with pytest.raises(F.IndexFileError, match="a target lies outside the 10 classes"):
        F.read_index(tmp_path / "i.bin")


# ---------------------------------------------------------------- the overlay


def test_overlay_replaces_the_odd_files(archives, tmp_path):
    """A fix re-encodes the PNG named .JPEG and the CMYK JPEG to RGB JPEGs in the state folder; the
    dataset reads them instead of the archive's range; a replacement changed since is refused."""
    result = archives("small")
    state = tmp_path / "state"
    index = build(result.archive_dir, "train")
    paths = [index.path(i) for i in range(len(index))]
    odd = {paths.index(p): kind for p, kind in result.odd_files.items() if kind in ("png", "cmyk")}
    plain = TarImageNet(index, result.archive_dir / FILES["train"])
    fixes = {}
    for i in odd:
        buf = io.BytesIO()
        Image.open(io.BytesIO(bytes(plain.read_sample(i)[0]))).convert("RGB").save(buf, "JPEG", quality=95)
        fixes[i] = buf.getvalue()
    F.write_index(state / "tarindex-train.bin", index)
    write_overlay(state, index, fixes)
    ours = load_tar_imagenet(
        state / "tarindex-train.bin", result.archive_dir / FILES["train"], "train", state_dir=state
    )
    assert sorted(ours.overlay) == sorted(odd) and len(odd) == 2
    for i, data in fixes.items():
        assert bytes(ours.read_sample(i)[0]) == data
        assert torch.equal(ours[i][0], decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8)))
    other = next(i for i in range(len(index)) if i not in odd)
    assert bytes(ours.read_sample(other)[0]) == bytes(plain.read_sample(other)[0])
    replacement_path(state, index, min(odd)).write_bytes(b"\xff\xd8 changed")
    with pytest.raises(D.ImageRefused, match=f"the replacement of {paths[min(odd)]} is missing or not the file"):
        ours.read_sample(min(odd))
    index.archive["mtime_ns"] += 1  # the overlay of another index of the archive
    with pytest.raises(OverlayError, match="overlay-train.json does not belong to the tar index"):
        read_overlay(state, index)


@pytest.mark.parametrize("names", [["a_1.JPEG", "a_2.JPEG"], ["ü_1.JPEG", "a_2.JPEG", "€"], []])
def test_add_many_equals_one_add_per_image(names):
    one, many = (F.TarIndex("train", {}, ["n1", "n2"], [["x"], ["y"]]) for _ in range(2))
    for index in (one, many):
        index.add("first.JPEG", 7, 1, 0)
    for k, name in enumerate(names):
        one.add(name, 100 * k, k + 1, 1)
    many.add_many(names, [100 * k for k in range(len(names))], [k + 1 for k in range(len(names))], 1)
    assert F.encode_index(many) == F.encode_index(one)
    assert [many.name(i) for i in range(len(many))] == ["first.JPEG", *names]
