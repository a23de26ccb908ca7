"""Two archive shapes whose members are named by a file list: *tree* and *flat with labels*.

*tree*: one tar holding `<prefix>/<class path>/<file>` (Places365 train: `data_large/a/airfield/
00000001.jpg`), written to `<root>/<images_dir>/<class path>/<file>`. *flat with labels*: one tar
holding `<prefix>/<file>` (Places365 val), written to `<root>/<images_dir>/<file>`, the labels in the
list only. Both are indexed by a header walk (launcher.tarscan) checked against the parsed list:
every file member listed, every listed file present, regular files only (folders allowed where a
listed file needs them), each once. Extraction takes a contiguous range of the index (shards cut
anywhere, classes included), re-checks each name read back from the index against its patterns and
writes each file whole relative to the opened root (launcher.safefs: folders opened without
following links, an O_EXCL temporary renamed over the name), from the archive indexed, unchanged.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from launcher.archive import safefs
from launcher.archive.extract import Output, archive_changed, check_root, safe_name
from launcher.archive.index import archive_identity, fingerprint
from launcher.archive.tarscan import Member, Window, scan
from launcher.core import plan
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json
from launcher.sources.entries import compile_ascii, entry_problem

EntryCheck = Callable[[str], bool]  # a name read back from an index -> whether its patterns accept it
WRITE = Output()  # files 0644, folders 0755, no fsync, a planted link refused


class ShapeError(LauncherError):
    """An image archive that does not hold what its file list says, or an altered index."""


# ---------------------------------------------------------------- index


def listed_folders(listed: dict[str, int]) -> set[str]:
    """Every folder (relative, '' the top) that a listed file sits in, with its parents."""
    folders = {""}
    for rel in {rel.rpartition("/")[0] for rel in listed}:
        parts = rel.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return folders


def relative_name(name: str, prefix: str) -> str | None:
    """`name` below `<prefix>/` (a folder's trailing / dropped), '' for the prefix itself, or None."""
    name = name.rstrip("/")
    if name == prefix:
        return ""
    return name[len(prefix) + 1 :] if name.startswith(prefix + "/") else None


def refuse_member(label: str, member: Member, why: str, list_label: str) -> ShapeError:
    link = f" -> {member.linkname}" if member.linkname else ""
    return ShapeError(
        f"{label}: member {member.name!r}{link} {why}; nothing from the archive was written. The archive "
        f"and {list_label} do not belong together: download both again from the same release."
    )


def index_listed(
    archive: str | Path, prefix: str, listed: dict[str, int], list_label: str, md5: str | None = None
) -> dict:
    """Index of an image archive whose files are `<prefix>/<rel>` for the `rel`s of `listed` (rel ->
    label): [rel, data offset, size, label] per file, in archive order."""
    label = f"The archive {archive}"
    folders, members, seen = listed_folders(listed), [], set()
    ident = archive_identity(archive, md5)
    fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for m in scan(fd, 0, os.fstat(fd).st_size, label):
            rel = listed_member(m, prefix, listed, folders, seen, (label, list_label))
            if rel is not None:
                members.append([rel, m.offset, m.size, listed[rel]])
    finally:
        os.close(fd)
    check_all_present(listed, seen, label, list_label)
    return {"archive": ident, "members": members, "fingerprint": fingerprint(members)}


def listed_member(
    m: Member, prefix: str, listed: dict[str, int], folders: set[str], seen: set[str], labels: tuple[str, str]
) -> str | None:
    """The listed file member `m` is (its path below `<prefix>/`, added to `seen`), or None for a
    folder a listed file sits in; anything else (another kind, an unlisted name, a file twice) is
    refused naming the archive and the list (`labels`: how messages name them)."""
    label, list_label = labels
    rel = relative_name(m.name, prefix)
    if m.kind == "dir" and rel in folders:
        return None
    if m.kind not in ("file", "dir"):
        raise refuse_member(label, m, f"is a {m.kind}; only regular files and folders are accepted", list_label)
    if rel is None or rel not in listed or m.kind == "dir":
        what = "a folder of no listed file" if m.kind == "dir" else f"not a file listed in {list_label}"
        raise refuse_member(label, m, f"is {what} (files are {prefix}/<list entry>)", list_label)
    if rel in seen:
        raise refuse_member(label, m, "appears twice", list_label)
    seen.add(rel)
    return rel


def check_all_present(listed: dict[str, int], seen: set[str], label: str, list_label: str) -> None:
    missing = [rel for rel in listed if rel not in seen]
    if missing:
        raise ShapeError(
            f"{label} lacks {len(missing):,} of the {len(listed):,} files listed in {list_label} (first: "
            f"{missing[0]!r}); the archive is incomplete or from another release: download it again."
        )


def index_tree(
    archive: str | Path, prefix: str, listed: dict[str, int], list_label: str, md5: str | None = None
) -> dict:
    """The *tree* shape: `<prefix>/<class path>/<file>` for each listed `<class path>/<file>`."""
    return index_listed(archive, prefix, listed, list_label, md5)


def index_flat(
    archive: str | Path, prefix: str, listed: dict[str, int], list_label: str, md5: str | None = None
) -> dict:
    """The *flat with labels* shape: `<prefix>/<file>` for each listed `<file>` (no folder part)."""
    nested = next((rel for rel in listed if "/" in rel), None)
    if nested is not None:
        raise ShapeError(f"{list_label} lists {nested!r}, a path with folders, for a flat archive ({archive}).")
    return index_listed(archive, prefix, listed, list_label, md5)


# ---------------------------------------------------------------- extract


def checked_member(member: object, index_label: str, archive_size: int, entry_ok: EntryCheck) -> tuple[str, int, int]:
    """(rel, offset, size) of an index row read back: a name its patterns accept, a span inside the archive."""
    ok = isinstance(member, list) and len(member) == 4 and isinstance(member[0], str)
    rel, offset, size = (member[0], member[1], member[2]) if ok else ("", -1, -1)
    spans = type(offset) is int and type(size) is int and offset >= 0 and size >= 0 and offset + size <= archive_size
    if not ok or not spans or not entry_ok(rel):
        raise ShapeError(
            f"{index_label}: the row {str(member)[:120]!r} is not [name, offset, size, label] with a name of the "
            "dataset's patterns inside the archive; the index was altered. Delete it and index the archive again."
        )
    return rel, offset, size


def check_images_dir(images_dir: str) -> None:
    if not safe_name(images_dir):
        raise ShapeError(f"images folder {images_dir!r} is not one plain folder name (no /, not . or ..).")


def extract_listed(
    archive: str,
    root: str,
    index: dict,
    span: tuple[int, int],
    images_dir: str,
    entry_ok: EntryCheck,
    out: Output = WRITE,
    index_label: str = "the index",
) -> dict:
    """Members [start, stop) of `index` -> `<root>/<images_dir>/<rel>`, each written whole; returns
    the files written ([rel, size]), their count and bytes, the archive's identity and the time."""
    t0, (start, stop) = time.perf_counter(), span
    check_images_dir(images_dir)
    ident = index["archive"]
    rows = [checked_member(m, index_label, ident["size"], entry_ok) for m in index["members"][start:stop]]
    files: list[list] = []
    fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if err := archive_changed(archive, ident, fd):
            raise err
        with (
            safefs.Dir.anchor(root, create=True) as top,
            top.sub(images_dir, create=True, out=out, replace=out.replace) as images,
        ):
            window = Window(fd, rows[0][1] if rows else 0, ident["size"], f"The archive {archive}")
            write_rows(images, rows, window, out, files)
        if err := archive_changed(archive, ident, fd):
            raise err
    finally:
        os.close(fd)
    return {
        "files": files,
        "range": [start, stop],
        "images": len(files),
        "bytes": sum(size for _, size in files),
        "archive": ident,
        "seconds": time.perf_counter() - t0,
    }


def write_rows(images: safefs.Dir, rows: list[tuple[str, int, int]], window: Window, out: Output, files: list) -> None:
    """Each (rel, offset, size) to images/<rel>: its folders opened (made) without following links,
    once each; the file an O_EXCL temporary renamed over the name."""
    folders: dict[str, safefs.Dir] = {}
    try:
        for rel, offset, size in rows:
            folder_rel, _, name = rel.rpartition("/")
            folder = folders.get(folder_rel)
            if folder is None:
                parts = folder_rel.split("/") if folder_rel else []
                folder = folders[folder_rel] = images.walk(parts, create=True, out=out, replace=out.replace)
            folder.put(name, window.view(offset, size, rel), out, f".{name}.part")
            files.append([rel, size])
    finally:
        for folder in folders.values():
            folder.close()


def tree_checker(class_pattern: str, image_pattern: str) -> EntryCheck:
    """Accepts `<class path without its leading />/<image>` as the file list's patterns define them."""
    class_re, image_re = compile_ascii(class_pattern), compile_ascii(image_pattern)
    return lambda rel: entry_problem("/" + rel, class_re, image_re) is None


def flat_checker(image_pattern: str) -> EntryCheck:
    image_re: re.Pattern = compile_ascii(image_pattern)
    return lambda rel: entry_problem(rel, None, image_re) is None


def extract_tree(
    archive: str,
    root: str,
    index: dict,
    span: tuple[int, int],
    images_dir: str,
    class_pattern: str,
    image_pattern: str,
    out: Output = WRITE,
    index_label: str = "the index",
) -> dict:
    """The *tree* shape: members [start, stop) -> `<root>/<images_dir>/<class path>/<file>`."""
    checker = tree_checker(class_pattern, image_pattern)
    return extract_listed(archive, root, index, span, images_dir, checker, out, index_label)


def extract_flat(
    archive: str,
    root: str,
    index: dict,
    span: tuple[int, int],
    images_dir: str,
    image_pattern: str,
    out: Output = WRITE,
    index_label: str = "the index",
) -> dict:
    """The *flat with labels* shape: members [start, stop) -> `<root>/<images_dir>/<file>`."""
    return extract_listed(archive, root, index, span, images_dir, flat_checker(image_pattern), out, index_label)


# ---------------------------------------------------------------- label files into the root


def write_root_files(root: str, files: dict[str, bytes], out: Output = WRITE) -> dict[str, int]:
    """Files (the parsed label files, as their bytes) into `<root>/<name>`, each whole: an O_EXCL
    temporary renamed over the name, relative to the opened root. Returns name -> size."""
    bad = next((name for name in files if not safe_name(name)), None)
    if bad is not None:
        raise ShapeError(f"label file name {bad!r} is not one plain file name; it would not land in the root.")
    with safefs.Dir.anchor(root, create=True) as top:
        for name, data in files.items():
            top.check_not_folder(name)
            top.put(name, data, out, f".{name}.part")
    return {name: len(data) for name, data in files.items()}


# ---------------------------------------------------------------- the shape's steps (launcher.sources)

# what one index row is, in messages
MEMBER = "image"
# storage.format=tar (launcher.tarformat.listed): a file's label is its class path's, checked against the list
LABEL_FROM_PATH = True
# writes each file in place (an O_EXCL temporary renamed over its name)
STAGES = False
# the unit function, looked up when the unit runs
EXTRACT = "launcher.sources.tree:extract_listed_unit"


def index(path: Path, source: dict, patterns: dict[str, str], listing: dict, md5: str | None = None) -> dict:
    """[<class path>/<file>, data offset, size, label] per listed file of `<top>/<class path>/<file>`."""
    return index_tree(path, source.get("top") or "", listing, source["listed_by"], md5)


def shard(members: list, wanted: int | None, parallelism: int, min_bytes: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the index balanced by bytes (a class may span two units: each file is its own)."""
    sizes = [m[2] for m in members]
    n = wanted or plan.default_val_shards(len(members), sum(sizes), parallelism, min_bytes)
    return plan.contiguous_ranges(sizes, n)


def listed_args(span: tuple[int, int], paths: dict) -> dict:
    """What a unit of a listed archive (tree, or flat by list) is given."""
    return {
        "archive": paths["archive"],
        "root": paths["root"],
        "index": paths["index"],
        "start": span[0],
        "stop": span[1],
        "folder": paths["folder"],
        "listed": True,
    }


def unit_args(members: list, span: tuple[int, int], paths: dict, patterns: dict[str, str]) -> dict:
    return {
        **listed_args(span, paths),
        "class_pattern": patterns["class_path"],
        "image_pattern": patterns["train_image"],
    }


def unit_size(members: list, span: tuple[int, int]) -> int:
    return sum(m[2] for m in members[span[0] : span[1]])


def entry_checker(patterns: dict[str, str]) -> EntryCheck:
    """The check of a file's path below the images folder that this shape's units apply
    (`<class path>/<image>`); storage.format=tar checks each indexed member with it."""
    return tree_checker(patterns["class_path"], patterns["train_image"])


def extract_listed_unit(
    archive: str,
    root: str,
    index: str,
    start: int,
    stop: int,
    folder: str,
    class_pattern: str | None,
    image_pattern: str,
    out: Output,
    root_id: str,
) -> dict:
    """Unit of a listed archive: rows [start, stop) of the index file -> `<root>/<folder>/<rel>`
    (a tree when class_pattern is given, flat otherwise), in the root the plan was made for. Files are
    recorded as [class folder ('' when flat), file name, size]."""
    check_root(root, root_id)
    idx = read_json(Path(index))
    if class_pattern is None:
        done = extract_flat(archive, root, idx, (start, stop), folder, image_pattern, out, index)
    else:
        done = extract_tree(archive, root, idx, (start, stop), folder, class_pattern, image_pattern, out, index)
    files = [[*rel.rpartition("/")[::2], size] for rel, size in done["files"]]
    return {**done, "files": files, "root_id": root_id}


def files_of(record: dict) -> list[tuple[str, str, int]]:
    """(class folder, file name, size) of every file a unit wrote ('' as the folder in a flat split)."""
    return [tuple(f) for f in record["files"]]


def folders_of(record: dict) -> set[str]:
    return {f[0] for f in record.get("files", ()) if f[0]}


def record_holds(record: dict, args: dict) -> bool:
    """A unit's record is of the same work: the same range."""
    return record.get("range") == [args["start"], args["stop"]]


def expected_folders(args: dict) -> set[str]:
    return set()
