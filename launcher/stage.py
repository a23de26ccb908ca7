"""stage: copy a prepared root (or the archives, then prepare there) to node-local disk, once per node.

    every local rank: stage_root(source, dest)  (or `launcher stage stage.source=...`)
      local rank 0:  blocking lock -> complete copy of this source there? reuse it
                     : else drop the marker, copy what is missing (parallel, from the manifest:
                       no directory walk of the source), check counts and bytes, write the marker
      other ranks:   wait on the lock until the marker of this source is there (or time out)

The marker (dest state_dir/stage.json) names the source and what it held (its complete records), so
a copy of another or a re-prepared source is not reused; a copy interrupted half-way has no marker
and the next stage resumes it (files of the right size are kept). Plain functions: paths in,
`StageResult` out; no Hydra.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from launcher.archive import safedir, safefs
from launcher.core.errors import LauncherError
from launcher.core.layout import read_json, write_json

MARKER = "stage.json"
STATE_FILES = ("identity.json", "complete-{split}.json", "manifest-{split}.json")


@dataclass
class StageResult:
    # the staged root (what storage.root should point at)
    root: Path
    # what this process did: "copied", "reused" or "waited" (another local rank copied)
    action: str
    local_rank: int
    files: int = 0
    bytes: int = 0
    # files this process copied (0 when reused or waited)
    copied_files: int = 0
    seconds: float = 0.0
    host: str = field(default_factory=socket.gethostname)

    def to_json(self) -> dict:
        return {**self.__dict__, "root": str(self.root)}


class WaitingLock:
    """An exclusive flock on `path` that waits for the holder (layout.Lock refuses instead)."""

    def __init__(self, path: Path, timeout_s: float | None = None, poll_s: float = 0.05):
        self.path, self.timeout_s, self.poll_s, self.fd = Path(path), timeout_s, poll_s, -1

    def __enter__(self) -> WaitingLock:
        self.fd = safefs.open_lock(self.path)  # never through a planted link
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    holder = os.pread(self.fd, 512, 0).decode(errors="replace").strip() or "another process"
                    os.close(self.fd)
                    raise LauncherError(
                        f"waited {self.timeout_s:.0f}s for {self.path}, held by {holder}; is it stuck?"
                    ) from None
                time.sleep(self.poll_s)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def local_rank_from_env() -> int:
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


# ---------------------------------------------------------------- what to copy


def source_identity(source: Path, state_dir: Path, splits: Iterable[str]) -> dict:
    """What the source holds, as its complete records say (or the manifests' sizes, or nothing)."""
    ident = {"source": str(source)}
    for split in splits:
        done = read_json(state_dir / f"complete-{split}.json")
        manifest = state_dir / f"manifest-{split}.json"
        if done:
            ident[split] = {k: done.get(k) for k in ("images", "bytes", "identity", "finished")}
        elif manifest.exists():
            st = manifest.stat()
            ident[split] = {"manifest_bytes": st.st_size, "manifest_mtime": st.st_mtime}
        else:
            ident[split] = None
    return ident


def split_files(source: Path, state_dir: Path, split: str, folder: str | None = None) -> list[tuple[str, int | None]]:
    """(path relative to the root, size or None) of every image of a split (in the root folder
    `folder`, default the split's name): from the manifest when there is one, else a walk of the
    source folder."""
    folder = folder or split
    manifest = read_json(state_dir / f"manifest-{split}.json")
    if manifest and manifest.get("split") == split:
        return [(f"{folder}/{p}", s) for p, s in zip(manifest["paths"], manifest["sizes"])]
    base = source / folder
    out = []
    for folder, _, names in os.walk(base):
        rel = Path(folder).relative_to(source)
        out += [(str(rel / n), None) for n in names]
    return sorted(out)


def check_source(source: Path, splits: Iterable[str], top_files: Iterable[str] = ("meta.bin",), folders=None) -> None:
    """The source holds the root's label files and each split's folder."""
    folders = folders or {}
    wanted = [source / name for name in top_files] + [source / folders.get(s, s) for s in splits]
    missing = [str(p) for p in wanted if not p.exists()]
    if missing:
        raise LauncherError(
            f"{source} is not a prepared root ({', '.join(missing)} missing). Point stage.source at a "
            "root `launcher prepare` wrote (or at the folder of the three archives)."
        )


def copy_files(source: Path, dest: Path, files: list[tuple[str, int | None]], threads: int) -> tuple[int, int]:
    """Copy what is missing or of another size; returns (files copied, bytes in dest)."""
    folders = {f: safedir.Dir.of(dest / f, create=True) for f in sorted({str(Path(rel).parent) for rel, _ in files})}

    def one(item: tuple[str, int | None]) -> tuple[int, int]:
        rel, size = item
        src, folder, name = source / rel, folders[str(Path(rel).parent)], Path(rel).name
        if size is None:
            size = os.stat(src).st_size
        st = folder.lstat(name)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == size:
            return 0, size
        got = folder.copy_from(src, name)  # temporary + renameat: a link at `name` is replaced, not followed
        if got != size:
            raise LauncherError(f"copied {src} to {folder.join(name)}: {got} bytes, expected {size}")
        return 1, size

    copied = total = 0
    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for c, n in pool.map(one, files, chunksize=256):
                copied += c
                total += n
    finally:
        for folder in folders.values():
            folder.close()
    return copied, total


# ---------------------------------------------------------------- staging


@dataclass(frozen=True)
class RootTree:
    """What a prepared root holds besides launcher's state: its label files at the top (the
    adapter's root_files) and each split's folder (dataset.splits.<split>.folder)."""

    top_files: tuple[str, ...] | list[str] = ("meta.bin",)
    folders: dict[str, str] = field(default_factory=dict)

    def folder(self, split: str) -> str:
        return self.folders.get(split, split)


def stage_root(
    source: str | Path,
    dest: str | Path,
    splits: Iterable[str] = ("train", "val"),
    source_state_dir: str | Path | None = None,
    dest_state_dir: str | Path | None = None,
    local_rank: int | None = None,
    reuse: bool = True,
    threads: int = 8,
    wait_s: float = 3600.0,
    top_files: Iterable[str] = ("meta.bin",),
    folders: dict[str, str] | None = None,
) -> StageResult:
    """Make `dest` a complete copy of the prepared root `source` (its label files `top_files`, each
    split's folder, `folders`: split -> its root folder, default the split's name; the manifests)
    once per node: local rank 0 copies, the other local ranks wait. Returns what this rank did."""
    source, dest = Path(source).absolute(), Path(dest).absolute()
    splits = list(splits)
    src_state = Path(source_state_dir).absolute() if source_state_dir else source / ".launcher"
    dst_state = Path(dest_state_dir).absolute() if dest_state_dir else dest / ".launcher"
    rank = local_rank_from_env() if local_rank is None else local_rank
    safedir.trust(dest, dst_state)  # below them, nothing is followed
    top_files, folders = list(top_files), dict(folders or {})
    check_source(source, splits, top_files, folders)
    ident = source_identity(source, src_state, splits)
    started = time.time()
    lock = dest.parent / f".{dest.name}.stage.lock"

    def copy() -> StageResult:
        tree = RootTree(top_files, folders)
        return copy_root(source, dest, splits, src_state, dst_state, ident, threads, rank, tree)

    return once_per_node(lock, dst_state / MARKER, ident, rank, reuse, wait_s, started, dest, copy)


def once_per_node(
    lock: Path,
    marker: Path,
    ident: dict,
    rank: int,
    reuse: bool,
    wait_s: float,
    started: float,
    root: Path,
    work: Callable[[], StageResult],
) -> StageResult:
    """Local rank 0 runs `work` unless a complete marker of `ident` is there; the others wait for it."""
    t0 = time.time()
    deadline = time.monotonic() + wait_s
    while True:
        with WaitingLock(lock, timeout_s=wait_s):
            done = read_json(marker)
            complete = bool(done) and done.get("state") == "complete" and done.get("identity") == ident
            fresh = complete and done.get("finished_at", 0) >= started
            if complete and ((reuse and rank == 0) or (rank != 0 and (reuse or fresh))):
                action = "waited" if fresh and rank != 0 else "reused"
                return StageResult(root, action, rank, done["files"], done["bytes"], 0, time.time() - t0)
            if rank == 0:
                return work()
        if time.monotonic() > deadline:
            raise LauncherError(
                f"local rank {rank} waited {wait_s:.0f}s for local rank 0 to stage {root}; it did not "
                f"finish (see {marker} and rank 0's log)."
            )
        time.sleep(0.2)


def copy_root(
    source: Path,
    dest: Path,
    splits: list[str],
    src_state: Path,
    dst_state: Path,
    ident: dict,
    threads: int,
    rank: int,
    tree: RootTree | None = None,
) -> StageResult:
    tree = tree or RootTree()
    t0 = time.time()
    marker = dst_state / MARKER
    before = read_json(marker)
    if before and before.get("identity") != ident:  # another source (or re-prepared): start over
        for split in splits:
            safefs.remove_tree(dest / tree.folder(split))  # a link there is removed itself, never followed
    write_json(marker, {"state": "copying", "identity": ident, "host": socket.gethostname(), "started_at": t0})
    with safedir.Dir.of(dest, create=True) as top:
        for name in tree.top_files:
            top.copy_from(source / name, name)
    files = [f for split in splits for f in split_files(source, src_state, split, tree.folder(split))]
    copied, nbytes = copy_files(source, dest, files, threads)
    for name in STATE_FILES:
        for split in splits:
            src = src_state / name.format(split=split)
            if src.exists():
                with safedir.Dir.of(dst_state, create=True) as state:
                    state.copy_from(src, src.name)
    write_json(
        marker,
        {
            "state": "complete",
            "identity": ident,
            "files": len(files),
            "bytes": nbytes,
            "host": socket.gethostname(),
            "started_at": t0,
            "finished_at": time.time(),
        },
        indent=1,
    )
    return StageResult(dest, "copied", rank, len(files), nbytes, copied, time.time() - t0)


def stage_archives(
    source: str | Path,
    names: Iterable[str],
    archive_dir: str | Path,
    root: str | Path,
    prepare: Callable[[], int],
    state_dir: str | Path | None = None,
    local_rank: int | None = None,
    reuse: bool = True,
    wait_s: float = 3600.0,
) -> StageResult:
    """Copy the archives `names` from `source` to node-local `archive_dir`, then `prepare()` (which
    extracts into `root`, records in `state_dir`) once per node; the other local ranks wait."""
    source, archive_dir, root = Path(source).absolute(), Path(archive_dir).absolute(), Path(root).absolute()
    names = list(names)
    missing = [n for n in names if not (source / n).is_file()]
    if missing:
        raise LauncherError(f"{source} does not hold the archives {', '.join(missing)}; point stage.source at them.")
    ident = {"source": str(source), **{n: os.stat(source / n).st_size for n in names}}
    rank = local_rank_from_env() if local_rank is None else local_rank
    marker = (Path(state_dir).absolute() if state_dir else root / ".launcher") / MARKER
    safedir.trust(archive_dir, root, marker.parent)
    started = time.time()

    def work() -> StageResult:
        t0 = time.time()
        write_json(marker, {"state": "copying", "identity": ident, "started_at": t0})
        files = [(n, os.stat(source / n).st_size) for n in names]
        copied, nbytes = copy_files(source, archive_dir, files, threads=len(files))
        code = prepare()
        if code:
            raise LauncherError(f"prepare of the staged archives in {archive_dir} failed (exit code {code})")
        write_json(
            marker,
            {
                "state": "complete",
                "identity": ident,
                "files": len(names),
                "bytes": nbytes,
                "started_at": t0,
                "finished_at": time.time(),
            },
            indent=1,
        )
        return StageResult(root, "copied", rank, len(names), nbytes, copied, time.time() - t0)

    lock = root.parent / f".{root.name}.stage.lock"
    return once_per_node(lock, marker, ident, rank, reuse, wait_s, started, root, work)
