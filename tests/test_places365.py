"""Places365-Standard: synthetic archives of the real shape, the file lists as untrusted input, and the
tree / flat-with-labels shapes, against torchvision's own Places365 (its download path: md5 check,
extract_archive, its rename of data_large) as the oracle."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from launcher.archive.safedir import UnsafePath
from launcher.core.errors import LauncherError
from launcher.datasets.imagenet.synth import tar_info
from launcher.datasets.places365 import facts
from launcher.datasets.places365.labels import (
    CLASS_PATH,
    LabelFileError,
    ListFiles,
    Patterns,
    parse_categories,
    parse_file_list,
    read_archive_files,
    read_bounded_file,
    read_labels,
)
from launcher.datasets.places365.layout import Places365Layout, prepare_root
from launcher.datasets.places365.synth import VOCABULARY, Places365SynthSpec, synthesize_places365
from launcher.sources.tree import ShapeError, extract_flat, extract_tree, index_flat, index_tree

pytestmark = pytest.mark.notorch  # the preparation side: only the oracle test needs torch

SPEC = Places365SynthSpec(classes=12, train_per_class=3, val_per_class=2, seed=3)
LAYOUT = Places365Layout()
LISTS = ListFiles()
PATTERNS = Patterns()


@pytest.fixture(scope="session")
def places(tmp_path_factory):
    return synthesize_places365(tmp_path_factory.mktemp("places365-archives"), SPEC)


def copy_archives(result, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in result.files.values():
        shutil.copy(path, dest / path.name)
    return dest


def files_under(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel not in skip:
                out[rel] = path.read_bytes()
    return out


def folders_under(root: Path) -> set[str]:
    return {str(Path(d).relative_to(root)) for d, _, _ in os.walk(root)}


# ---------------------------------------------------------------- the oracle


def patch_torchvision_md5s(monkeypatch, result):
    """Places365 checks the md5 of the lists (even with download=False) and of the archives it would
    download: the synthetic ones', the names unchanged. Any download attempt fails the test."""
    from torchvision.datasets import Places365, utils

    md5 = result.md5
    monkeypatch.setattr(Places365, "_CATEGORIES_META", (LISTS.categories, md5["categories"]))
    monkeypatch.setattr(
        Places365,
        "_FILE_LIST_META",
        {"train-standard": (LISTS.train, md5["train_list"]), "val": (LISTS.val, md5["val_list"])},
    )
    monkeypatch.setattr(Places365, "_DEVKIT_META", {"standard": (LAYOUT.filelist, md5["filelist"])})
    monkeypatch.setattr(
        Places365,
        "_IMAGES_META",
        {("train-standard", False): (LAYOUT.train, md5["train"]), ("val", False): (LAYOUT.val, md5["val"])},
    )

    def no_network(*args, **kwargs):
        raise AssertionError(f"torchvision tried to download: {args}")

    for name in ("_urlretrieve", "_download_file_from_remote_location", "_get_redirect_url"):
        monkeypatch.setattr(utils, name, no_network)
    return Places365


@pytest.mark.torch
def test_torchvision_reads_our_root_as_its_own(places, tmp_path, monkeypatch):
    """Root A: torchvision's download path over the archives already in place (md5 verified, its
    extract_archive, its rename of data_large). Root B: ours. Same files, same bytes, same folders, and
    Places365 gives equal classes, class_to_idx, imgs, targets for train-standard and val."""
    Places365 = patch_torchvision_md5s(monkeypatch, places)
    a = copy_archives(places, tmp_path / "A")
    for split in ("train-standard", "val"):
        Places365(str(a), split=split, download=True)
    assert (a / facts.TRAIN_IMAGES_DIR).is_dir() and not (a / facts.TRAIN_TOP).exists()

    b = tmp_path / "B"
    record = prepare_root(places.archive_dir, b)
    archives = tuple(p.name for p in places.files.values())
    assert files_under(b) == files_under(a, skip=archives)
    assert folders_under(b) == folders_under(a)
    assert record["train"]["images"] == SPEC.classes * SPEC.train_per_class
    assert record["val"]["images"] == SPEC.classes * SPEC.val_per_class

    for split in ("train-standard", "val"):
        theirs, ours = Places365(str(a), split=split), Places365(str(b), split=split)
        assert ours.classes == theirs.classes == places.classes
        assert ours.class_to_idx == theirs.class_to_idx
        assert ours.targets == theirs.targets
        assert ours.imgs == [(p.replace(str(a), str(b), 1), t) for p, t in theirs.imgs]
        assert all(os.path.isfile(p) for p, _ in ours.imgs)
        image, target = ours[len(ours) - 1]
        assert image.size[0] >= SPEC.min_side and target == ours.targets[-1]
    assert Places365(str(b), split="val").targets == places.val_labels
    assert any(c.count("/") == 3 for c in places.classes), "a two-level class such as /a/apartment_building/outdoor"


@pytest.mark.torch
def test_an_archive_extracted_by_hand_leaves_data_large_which_places365_does_not_read(places, tmp_path, monkeypatch):
    """The real train tars hold data_large/ (README): only torchvision's download renames it."""
    from torchvision.datasets.utils import extract_archive

    Places365 = patch_torchvision_md5s(monkeypatch, places)
    root = tmp_path / "by-hand"
    for path in places.files.values():
        extract_archive(str(path), str(root))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [facts.TRAIN_TOP, facts.VAL_TOP]
    with pytest.raises(FileNotFoundError):
        Places365(str(root), split="train-standard")[0]
    assert Places365(str(root), split="val")[0][1] == places.val_labels[0]


# ---------------------------------------------------------------- synth


def test_synth_is_deterministic_and_never_overwrites(places, tmp_path):
    small = Places365SynthSpec(classes=3, train_per_class=1, val_per_class=1, seed=3)
    first = synthesize_places365(tmp_path / "one", small)
    second = synthesize_places365(tmp_path / "two", small)
    assert first.md5 == second.md5 and first.classes == second.classes
    with pytest.raises(LauncherError, match="never overwrites"):
        synthesize_places365(tmp_path / "one", small)
    with pytest.raises(LauncherError, match="classes must be"):
        synthesize_places365(tmp_path / "three", Places365SynthSpec(classes=0))
    with tarfile.open(places.files["train"]) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    listed = [f"{facts.TRAIN_TOP}{line.split(' ')[0]}" for line in list_lines(places, LISTS.train)]
    assert sorted(names) == sorted(listed) and names != listed  # archive order is not list order


def test_the_real_class_paths_and_line_formats_parse():
    assert all(re.fullmatch(CLASS_PATH, c, re.ASCII) for c in VOCABULARY)
    real = b"/a/airfield 0\n/a/airplane_cabin 1\n/a/airport_terminal 2\n/a/alcove 3\n/a/alley 4\n"
    real += b"/a/amphitheater 5\n/a/amusement_arcade 6\n/a/amusement_park 7\n/a/apartment_building/outdoor 8\n"
    cats = parse_categories(real, "categories_places365.txt")
    assert cats.index["/a/apartment_building/outdoor"] == 8 and cats.names[0] == "/a/airfield"
    train = parse_file_list(
        b"/a/airfield/00000001.jpg 0\n/a/apartment_building/outdoor/00000002.jpg 8",
        "places365_train_standard.txt",
        cats,
        Patterns().train_image,
        CLASS_PATH,
    )
    assert train.relpaths() == {"a/airfield/00000001.jpg": 0, "a/apartment_building/outdoor/00000002.jpg": 8}
    val = parse_file_list(b"Places365_val_00000001.jpg 8\n", "places365_val.txt", cats, Patterns().val_image, None)
    assert val.entries == (("Places365_val_00000001.jpg", 8),)


# ---------------------------------------------------------------- hostile file lists


def list_lines(result, name: str) -> list[str]:
    with tarfile.open(result.files["filelist"]) as tar:
        return tar.extractfile(name).read().decode().splitlines()


def rewrite_list(archive_dir: Path, name: str, change) -> None:
    path = archive_dir / LAYOUT.filelist
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    new = [(n, change(data) if n == name else data) for n, data in members]
    write_members(path, new)


def write_members(path: Path, entries) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                tar.addfile(tar_info(entry[0], len(entry[1])), io.BytesIO(entry[1]))
    path.write_bytes(buf.getvalue())


def replace_line(number: int, text: str):
    def change(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        lines[number - 1] = text
        return ("\n".join(lines) + "\n").encode("utf-8")

    return change


def refused(places, tmp_path, error=LauncherError, patterns: Patterns = PATTERNS, **rewrite) -> str:
    """Prepare from a hostile copy of the archives: refused with one line, nothing written at all."""
    box = tmp_path / "box"
    archive_dir = copy_archives(places, box / "archives")
    for change in rewrite.values():
        change(archive_dir)
    (box / "outside").mkdir()
    with pytest.raises(error) as info:
        prepare_root(archive_dir, box / "root", patterns=patterns)
    message = str(info.value)
    assert isinstance(info.value, LauncherError) and "\n" not in message
    assert not (box / "root").exists() and not any((box / "outside").iterdir())
    return message


def first_train_line(places) -> str:
    return list_lines(places, LISTS.train)[0]


@pytest.mark.parametrize(
    ("name", "line", "expected"),
    [
        ("train", "/a/../../etc/00000001.jpg 0", "expected '<class path>/<image>'"),
        ("train", "/a/airfield/00000001.jpg \u0663", "expected ASCII text"),
        ("train", "/a/airfield/\uff10\uff10000001.jpg 0", "expected ASCII text"),
        ("train", "{first} 1_0", "index ASCII digits"),
        ("train", "{first} +0", "index ASCII digits"),
        ("train", "{first}  0", "'<class path>/<image>'"),
        ("train", "{first}", "'<class path>/<image> <index>'"),
        ("val", "Places365_val_00000001.jpg {classes}", "an index 0..11"),
        ("val", "../Places365_val_00000001.jpg 0", "expected an image name"),
        ("val", "Places365_val_00000001.jpg 00", "index ASCII digits"),
        ("categories", "/a/airfield 0 ", "index ASCII digits"),
        ("categories", "/A/Airfield 0", "a class path matching"),
    ],
)
def test_a_hostile_list_line_is_refused_naming_file_and_line(places, tmp_path, name, line, expected):
    file = getattr(LISTS, name)
    text = line.format(first=first_train_line(places).rpartition(" ")[0], classes=SPEC.classes)
    message = refused(places, tmp_path, LabelFileError, lists=lambda d: rewrite_list(d, file, replace_line(1, text)))
    assert f"member {file}: line 1: expected " in message and expected in message
    assert LAYOUT.filelist in message and "Restore the file" in message


def test_dotdot_is_refused_even_when_the_pattern_lets_it_through(places, tmp_path):
    loose = Patterns(class_path=r"/[a-z_./]+")
    change = replace_line(1, "/a/../../../outside/00000001.jpg 0")
    message = refused(places, tmp_path, LabelFileError, loose, lists=lambda d: rewrite_list(d, LISTS.train, change))
    assert "line 1: expected a path without empty, '.' or '..' parts" in message


def test_a_train_label_that_is_not_its_class_index_is_refused(places, tmp_path):
    entry, _, label = first_train_line(places).rpartition(" ")
    change = replace_line(1, f"{entry} {int(label) + 1}")
    message = refused(places, tmp_path, LabelFileError, lists=lambda d: rewrite_list(d, LISTS.train, change))
    assert f"line 1: expected the index of {entry.rpartition('/')[0]}, {label}" in message


@pytest.mark.parametrize("name", ["categories", "train", "val"])
def test_a_duplicate_line_is_refused(places, tmp_path, name):
    file = getattr(LISTS, name)
    second = list_lines(places, file)[0]
    message = refused(places, tmp_path, LabelFileError, lists=lambda d: rewrite_list(d, file, replace_line(2, second)))
    assert f"{file}: line 2: expected each" in message and "is on line 1 already" in message


def test_categories_out_of_order_or_misnumbered_are_refused(places, tmp_path):
    lines = list_lines(places, LISTS.categories)
    swapped = replace_line(1, f"{lines[1].split(' ')[0]} 0")
    message = refused(places, tmp_path, LabelFileError, lists=lambda d: rewrite_list(d, LISTS.categories, swapped))
    assert "line 2: expected each class once" in message
    cats = "\n".join(f"{c} {i}" for i, c in enumerate(reversed(places.classes))).encode()
    with pytest.raises(LabelFileError, match="line 2: expected class paths in sorted order"):
        parse_categories(cats, "categories_places365.txt")
    with pytest.raises(LabelFileError, match="line 1: expected index 0"):
        parse_categories(b"/a/airfield 1\n", "categories_places365.txt")


def test_reads_are_bounded(places, tmp_path):
    with pytest.raises(LabelFileError, match="holds 3 lines, more than the 2 accepted"):
        parse_categories(b"/a/airfield 0\n/a/alley 1\n/b/beach 2\n", "categories_places365.txt", max_lines=2)
    big = b"x" * 100
    with pytest.raises(LabelFileError, match="holds 100 bytes, more than the 10 accepted"):
        archive = tmp_path / "lists.tar"
        write_members(archive, [(LISTS.categories, big)])
        read_archive_files(str(archive), {LISTS.categories: 10})
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(LabelFileError, match="is not a regular file"):
        read_bounded_file(str(fifo), 1 << 20)
    with pytest.raises(LabelFileError, match="holds no places365_val.txt"):
        read_archive_files(str(places.files["train"]), {LISTS.val: 10})


# ---------------------------------------------------------------- hostile image archives


def tar_entries(path: Path) -> list:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def rewrite_images(path: Path, change) -> None:
    entries = change(tar_entries(path))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path.write_bytes(buf.getvalue())


def first_file(entries) -> int:
    return next(i for i, (m, _) in enumerate(entries) if m.isfile())


def as_link(kind):
    def change(entries):
        i = first_file(entries)
        info = tar_info(entries[i][0].name, 0)
        info.type, info.linkname = kind, "/etc/passwd"
        return [*entries[:i], (info, b""), *entries[i + 1 :]]

    return change


def extra_file(entries):
    folder = next(m.name for m, _ in entries if m.isdir() and m.name.count("/") >= 2)
    return [*entries, (tar_info(f"{folder}/99999999.jpg", 3), b"abc")]


def missing_file(entries):
    i = first_file(entries)
    return entries[:i] + entries[i + 1 :]


def duplicate_file(entries):
    i = first_file(entries)
    return [*entries, entries[i]]


def stray_folder(entries):
    return [*entries, (dir_entry(f"{facts.TRAIN_TOP}/a/../../escape"), b"")]


def dir_entry(name: str) -> tarfile.TarInfo:
    info = tar_info(name, 0)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize(
    ("archive", "change", "expected"),
    [
        ("train", as_link(tarfile.SYMTYPE), "-> /etc/passwd is a symlink; only regular files and folders"),
        ("train", as_link(tarfile.LNKTYPE), "-> /etc/passwd is a hardlink; only regular files and folders"),
        ("val", as_link(tarfile.SYMTYPE), "-> /etc/passwd is a symlink; only regular files and folders"),
        ("train", extra_file, "99999999.jpg' is not a file listed in places365_train_standard.txt"),
        ("val", duplicate_file, "appears twice"),
        ("train", duplicate_file, "appears twice"),
        ("train", missing_file, "lacks 1 of the 36 files listed in places365_train_standard.txt"),
        ("val", missing_file, "lacks 1 of the 24 files listed in places365_val.txt"),
        ("train", stray_folder, "is a folder of no listed file"),
    ],
)
def test_a_hostile_image_archive_is_refused_before_anything_is_written(places, tmp_path, archive, change, expected):
    name = getattr(LAYOUT, archive)
    message = refused(places, tmp_path, ShapeError, images=lambda d: rewrite_images(d / name, change))
    assert expected in message and f"The archive {tmp_path}/box/archives/{name}" in message


def test_a_link_planted_at_the_images_folder_is_refused_and_not_followed(places, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for planted in (facts.TRAIN_IMAGES_DIR, f"{facts.TRAIN_IMAGES_DIR}/{places.classes[0][1]}"):
        root = tmp_path / planted.replace("/", "-") / "root"
        (root / planted).parent.mkdir(parents=True)
        (root / planted).symlink_to(outside)
        with pytest.raises(UnsafePath) as info:
            prepare_root(places.archive_dir, root)
        assert f"{root}/{planted} is a symbolic link where launcher writes a folder" in str(info.value)
        assert "\n" not in str(info.value) and not any(outside.iterdir())


# ---------------------------------------------------------------- ranges and the index read back


def indexes(places):
    files, labels = read_labels(str(places.files["filelist"]))
    train = index_tree(str(places.files["train"]), facts.TRAIN_TOP, labels.train.relpaths(), LISTS.train)
    val = index_flat(str(places.files["val"]), facts.VAL_TOP, labels.val.relpaths(), LISTS.val)
    return train, val


def test_contiguous_ranges_write_what_one_run_writes(places, tmp_path):
    train, val = indexes(places)
    patterns, n = Patterns(), len(train["members"])
    whole = tmp_path / "whole"
    extract_tree(
        str(places.files["train"]), str(whole), train, (0, n), "imgs", patterns.class_path, patterns.train_image
    )
    parts, files = tmp_path / "parts", []
    for span in ((0, 4), (4, n - 5), (n - 5, n), (4, n - 5)):  # cuts through classes; the middle twice
        record = extract_tree(
            str(places.files["train"]), str(parts), train, span, "imgs", patterns.class_path, patterns.train_image
        )
        assert record["range"] == list(span) and record["images"] == span[1] - span[0]
        files += record["files"]
    assert {f[0] for f in files} == {m[0] for m in train["members"]}
    assert files_under(parts) == files_under(whole)
    assert not [p for p in files_under(parts) if p.rpartition("/")[2].startswith(".")]
    flat = extract_flat(str(places.files["val"]), str(tmp_path / "val"), val, (2, 5), "v", patterns.val_image)
    assert sorted(os.listdir(tmp_path / "val" / "v")) == sorted(m[0] for m in val["members"][2:5])
    assert flat["bytes"] == sum(m[2] for m in val["members"][2:5])


@pytest.mark.parametrize(
    "row",
    [
        ["../../outside/00000001.jpg", 512, 10, 0],
        ["a/airfield/../../00000001.jpg", 512, 10, 0],
        ["{rel}", -512, 10, 0],
        ["{rel}", 512, 1 << 40, 0],
        ["{rel}", "512", 10, 0],
        "not a row",
    ],
)
def test_an_altered_index_is_refused(places, tmp_path, row):
    train, _ = indexes(places)
    if isinstance(row, list) and row[0] == "{rel}":
        row = [train["members"][0][0], *row[1:]]
    altered = {**train, "members": [row, *train["members"][1:]]}
    with pytest.raises(ShapeError, match="the index was altered") as info:
        extract_tree(
            str(places.files["train"]), str(tmp_path / "root"), altered, (0, 2), "imgs", CLASS_PATH, "[0-9]{8}\\.jpg"
        )
    assert "\n" not in str(info.value) and not (tmp_path / "root").exists()


def test_an_archive_changed_after_indexing_is_refused(places, tmp_path):
    archive = copy_archives(places, tmp_path / "copy") / LAYOUT.val
    _, labels = read_labels(str(places.files["filelist"]))
    index = index_flat(str(archive), facts.VAL_TOP, labels.val.relpaths(), LISTS.val)
    archive.write_bytes(archive.read_bytes())
    with pytest.raises(LauncherError, match="changed since it was indexed"):
        extract_flat(str(archive), str(tmp_path / "root"), index, (0, 1), facts.VAL_IMAGES_DIR, Patterns().val_image)
    assert not (tmp_path / "root").exists()


def test_a_link_planted_at_a_file_is_replaced_itself_never_its_target(places, tmp_path):
    target = tmp_path / "outside.txt"
    target.write_bytes(b"keep me")
    root = tmp_path / "root"
    planted = [LISTS.categories, f"{facts.VAL_IMAGES_DIR}/Places365_val_00000001.jpg"]
    for rel in planted:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    prepare_root(places.archive_dir, root)
    assert target.read_bytes() == b"keep me"
    for rel in planted:
        assert not (root / rel).is_symlink() and (root / rel).is_file()
    assert (root / LISTS.categories).read_bytes().startswith(places.classes[0].encode())
