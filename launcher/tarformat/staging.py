"""`launcher stage storage.format=tar`: copy a tar root to node-local storage once per node.

    every local rank: stage_tar(source, dest, archive_dir)
      local rank 0:  blocking lock -> complete copy of this source there? reuse it
                     : else copy meta.bin, each split's archive (the file its tar index recorded,
                       checked unchanged before and after the copy) into archive_dir, and the state
                       folder's tar indexes (their archive identity now the copy's), overlays
                       (replacement files and record) and complete records; then the marker
      other ranks:   wait on the lock until the marker of this source is there (or time out)

launcher.stage's lock, marker and waiting (once_per_node) are reused: the marker names the source,
its complete records and its archives' identities, so a copy of another source, a re-prepared
source or a changed archive is not reused. The loaders on the staged config (storage.root=dest,
storage.archive_dir=archive_dir) then read the staged archives. No torch here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.archive.index import IDENTITY_KEYS, stat_identity
from launcher.core.errors import LauncherError
from launcher.core.layout import write_json
from launcher.stage import MARKER, StageResult, copy_files, local_rank_from_env, once_per_node, source_identity
from launcher.tarformat.archivefile import open_checked
from launcher.tarformat.indexfile import TarIndex, read_index, write_index
from launcher.tarformat.overlay import overlay_folder, read_overlay_record, record_replacements
from launcher.tarformat.overlay import replacement_path as replacement

STATE_FILES = ("identity.json", "complete-{split}.json")


def tar_indexes(state_dir: Path, splits: Iterable[str]) -> dict[str, TarIndex]:
    """The tar index of each split in a source's state folder (read whole: one line if missing or altered)."""
    return {split: read_index(state_dir / f"tarindex-{split}.bin", split) for split in splits}


def check_tar_source(source: Path, state_dir: Path, splits: Iterable[str], top_files: Iterable[str]) -> None:
    """The source is a prepared tar root: its label files and each split's tar index (one line)."""
    missing = [str(source / name) for name in top_files if not (source / name).is_file()]
    if missing:
        raise LauncherError(
            f"{source} is not a prepared root ({', '.join(missing)} missing). Point stage.source at a root "
            "`launcher prepare storage.format=tar` wrote."
        )
    tar_indexes(state_dir, splits)


def stage_tar(
    source: str | Path,
    dest: str | Path,
    archive_dir: str | Path,
    splits: Iterable[str] = ("train", "val"),
    source_state_dir: str | Path | None = None,
    dest_state_dir: str | Path | None = None,
    local_rank: int | None = None,
    reuse: bool = True,
    wait_s: float = 3600.0,
    top_files: Iterable[str] = ("meta.bin",),
) -> StageResult:
    """Make `dest` (with its archives in `archive_dir`) a copy of the tar root `source` once per
    node: local rank 0 copies, the other local ranks wait. Returns what this rank did."""
    source, dest, archive_dir = (Path(p).absolute() for p in (source, dest, archive_dir))
    splits, top_files = list(splits), list(top_files)
    src_state = Path(source_state_dir).absolute() if source_state_dir else source / ".launcher"
    dst_state = Path(dest_state_dir).absolute() if dest_state_dir else dest / ".launcher"
    rank = local_rank_from_env() if local_rank is None else local_rank
    safedir.trust(dest, dst_state, archive_dir)  # below them, nothing is followed
    check_tar_source(source, src_state, splits, top_files)
    indexes = tar_indexes(src_state, splits)
    ident = source_identity(source, src_state, splits)
    ident["archives"] = {s: {k: index.archive[k] for k in (*IDENTITY_KEYS, "path")} for s, index in indexes.items()}
    started = time.time()
    lock = dest.parent / f".{dest.name}.stage.lock"

    def copy() -> StageResult:
        return copy_tar_root(source, dest, archive_dir, indexes, src_state, dst_state, ident, rank, top_files)

    return once_per_node(lock, dst_state / MARKER, ident, rank, reuse, wait_s, started, dest, copy)


def copy_tar_root(
    source: Path,
    dest: Path,
    archive_dir: Path,
    indexes: dict[str, TarIndex],
    src_state: Path,
    dst_state: Path,
    ident: dict,
    rank: int,
    top_files: list[str],
) -> StageResult:
    """Local rank 0's copy (see the module); the marker says `copying` until it is whole."""
    t0 = time.time()
    marker = dst_state / MARKER
    write_json(marker, {"state": "copying", "identity": ident, "started_at": t0})
    with safedir.Dir.of(dest, create=True) as top:
        for name in top_files:
            top.copy_from(source / name, name)
    files = nbytes = copied = 0
    for split, index in indexes.items():
        staged = copy_archive(index, archive_dir, f"{src_state / f'tarindex-{split}.bin'}")
        write_index(dst_state / f"tarindex-{split}.bin", staged)
        n, size = copy_overlay(index, staged, src_state, dst_state)
        files, nbytes, copied = files + 1 + n, nbytes + staged.archive["size"] + size, copied + 1 + n
        with safedir.Dir.of(dst_state, create=True) as state:
            for name in STATE_FILES:
                if (src_state / name.format(split=split)).is_file():
                    state.copy_from(src_state / name.format(split=split), name.format(split=split))
    done = {"state": "complete", "identity": ident, "files": files, "bytes": nbytes}
    write_json(marker, {**done, "started_at": t0, "finished_at": time.time()}, indent=1)
    return StageResult(dest, "copied", rank, files, nbytes, copied, time.time() - t0)


def copy_archive(index: TarIndex, archive_dir: Path, index_label: str) -> TarIndex:
    """Copy the archive the index recorded (checked unchanged before and after the copy) into
    archive_dir under its name; returns the index with the copy's identity (md5 kept)."""
    src = index.archive["path"]
    name = Path(src).name
    fd = open_checked(src, index.archive, index_label)
    try:
        with safedir.Dir.of(archive_dir, create=True) as folder:
            done = send_into(folder, name, fd, index.archive["size"])
            st = folder.lstat(name)
        os.close(open_checked(src, index.archive, index_label))  # nothing changed it while it was copied
    finally:
        os.close(fd)
    if done != index.archive["size"] or st is None:
        raise LauncherError(f"copied {src} to {archive_dir / name}: {done:,} bytes, expected {index.archive['size']:,}")
    identity = stat_identity(archive_dir / name, st, index.archive.get("md5"))
    return replace(index, archive=identity)


def send_into(folder: safedir.Dir, name: str, src_fd: int, size: int) -> int:
    """`size` bytes of src_fd into `name` in `folder`: an O_EXCL temporary filled by the kernel, renamed."""
    temp = f".{name}.part"
    fd = folder.create(temp, 0o644, replace_temp=True)
    try:
        done = 0
        while done < size and (n := os.sendfile(fd, src_fd, done, min(size - done, 1 << 30))):
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
    folder.rename(temp, name)
    return done


def copy_overlay(index: TarIndex, staged: TarIndex, src_state: Path, dst_state: Path) -> tuple[int, int]:
    """The split's overlay (replacement files, then the record tied to the staged archive); (files, bytes)."""
    entries = read_overlay_record(src_state, index)
    safefs.remove(dst_state / f"overlay-{index.split}.json")  # one of an earlier copy is not this source's
    safefs.remove_tree(overlay_folder(dst_state, index.split))
    if not entries:
        return 0, 0
    top = overlay_folder(src_state, index.split)
    files = [(str(replacement(src_state, index, i).relative_to(top)), e["size"]) for i, e in entries.items()]
    copy_files(top, overlay_folder(dst_state, index.split), files, threads=4)
    record_replacements(dst_state, staged, entries)
    return len(files), sum(size for _, size in files)
