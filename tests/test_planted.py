"""Planted links everywhere: from a clean run's own trace of the paths it creates (prepare, then
verify with verify.fix=true), plant at each kind of path in turn a symbolic link pointing outside
the root (or a FIFO, a file where a folder belongs, a folder where a file belongs) and run again.
Nothing outside the root changes; the run refuses naming the path or replaces what was planted;
nothing is recorded complete through a link."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from test_faults import Run, prepare_args, run_traced

from launcher.core.layout import ROOT_ID_FILE

from conftest import dataset_overrides, storage_overrides

pytestmark = pytest.mark.faults
CREATES = "openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2"
SEED = ("identity.json", "devkit.json", "index-train.json", "index-val.json")  # what an earlier run left
# "<pid> call(<fd or AT_FDCWD><dir>, "name", [<fd><dir>, "name",] ...) = result"
PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|\d+)<(?P<dir>[^>]*)>, )?"(?P<name>[^"]*)"')
CALL = re.compile(r"^\d+\s+(?P<call>\w+)\((?P<args>.*)\)\s+= ")
UNPREDICTABLE = re.compile(r"^\.launcher/(logs|verify)/[^/]+")  # a folder per run, named by time or at random


def created_paths(log: Path, root: Path) -> dict[str, str]:
    """relative path -> "file" or "folder", for each path under `root` a traced run created,
    renamed or created into (openat with O_CREAT, mkdir, rename source and destination)."""
    found: dict[str, str] = {}
    for line in log.read_text().splitlines():
        m = CALL.match(line)
        if not m or (m["call"] in ("openat", "open") and "O_CREAT" not in m["args"]):
            continue
        args = [os.path.join(a["dir"] or "", a["name"]) for a in PATH_ARG.finditer(m["args"])]
        rels = [os.path.relpath(full, root) for full in args]
        if m["call"].startswith("rename"):
            typ = found.get(rels[0], "file")
        else:
            rels, typ = rels[:1], "folder" if m["call"].startswith("mkdir") else "file"
        for rel in rels:
            if not rel.startswith("..") and rel != ".":
                found.setdefault(rel, typ)
    for rel in list(found):  # every folder on the way is a path the run relies on too
        for parent in Path(rel).parents:
            if str(parent) != ".":
                found.setdefault(str(parent), "folder")
    return found


def kinds(paths: dict[str, str]) -> dict[str, tuple[str, str]]:
    """One representative path per kind of path (digits stand for any number): kind -> (path, type).
    A per-run folder (logs/<time>, verify/<random id>) is represented by its parent; a probe named
    by the traced process id is named by this one."""
    out: dict[str, tuple[str, str]] = {}
    for rel, typ in sorted(paths.items()):
        if m := UNPREDICTABLE.match(rel):
            rel, typ = rel[: m.end(1)], "folder"
        rel = re.sub(r"write-test-\d+", f"write-test-{os.getpid()}", rel)
        out.setdefault(kind_of(rel), (rel, typ))
    return out


def kind_of(rel: str) -> str:
    """Digits stand for any number; in the state folder a split or archive key for any, and every
    temporary of a JSON record (written by one function) is one kind."""
    kind = re.sub(r"\d+", "#", rel)
    if kind.startswith(".launcher/") and not kind.startswith(".launcher/fix-originals/"):
        head, name = kind.rsplit("/", 1)
        name = re.sub(r"train|val|devkit", "<key>", name)
        kind = f"{head}/{'.<record>.json.tmp' if name.endswith('.json.tmp') else name}"
    return kind


@pytest.fixture(scope="session")
def traced(archives, tmp_path_factory):
    """The tiny archives, a clean prepared root, and the kinds of path prepare and verify create."""
    result = archives("tiny")
    base = tmp_path_factory.mktemp("planted")
    root = base / "root"
    run = run_traced(prepare_args(result, root), CREATES, log=base / "prepare.strace")
    assert run.returncode == 0, run.stderr
    prepare = kinds(created_paths(base / "prepare.strace", root))
    fixed = base / "fixed"
    shutil.copytree(root, fixed, symlinks=True)
    args = ["verify", *storage_overrides(result.archive_dir, fixed), "dataset=synthetic", "cluster=debug"]
    run = run_traced([*args, "verify.level=decode", "verify.fix=true"], CREATES, log=base / "verify.strace")
    assert run.returncode == 0, run.stderr
    verify = {k: v for k, v in kinds(created_paths(base / "verify.strace", fixed)).items() if k not in prepare}
    return result, root, prepare, verify


def tree_digest(folder: Path) -> dict[str, str]:
    """path -> what it is (link target, a folder, a file's md5): anything changed shows."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[str(p)] = "folder"
            else:
                out[str(p)] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def sentinel(tmp_path: Path) -> Path:
    """Files and folders outside the root, the targets of the planted links."""
    s = tmp_path / "outside"
    (s / "folder").mkdir(parents=True)
    (s / "file").write_bytes(b"not yours\n")
    (s / "folder" / "file").write_bytes(b"not yours either\n")
    return s


def fresh_root(tmp_path: Path, clean: Path, prepared: bool) -> Path:
    """A root as an interrupted earlier run left it (its devkit, indexes and identity), or, for
    verify, a copy of the whole prepared root."""
    root = tmp_path / "root"
    if prepared:
        shutil.copytree(clean, root, symlinks=True)
        return root
    (root / ".launcher").mkdir(parents=True)
    for name in SEED:
        shutil.copy(clean / ".launcher" / name, root / ".launcher" / name)
    shutil.copy(clean / ROOT_ID_FILE, root / ROOT_ID_FILE)  # the root those records belong to
    return root


def plant(root: Path, rel: str, what: str, typ: str, outside: Path) -> Path:
    """Put `what` (link, fifo, file, folder) at root/rel, its parents real folders."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if what == "link":
        path.symlink_to(outside / ("folder" if typ == "folder" else "file"))
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "file":
        path.write_bytes(b"planted\n")
    else:
        path.mkdir()
        (path / "planted").write_bytes(b"planted\n")
    return path


def planted_still(path: Path, what: str) -> bool:
    if what == "link":
        return path.is_symlink()
    if what == "fifo":
        return path.is_fifo()
    if what == "file":
        return path.is_file() and not path.is_symlink() and path.read_bytes() == b"planted\n"
    return path.is_dir() and (path / "planted").exists()


def nothing_complete_through_links(root: Path) -> None:
    """A split recorded complete holds no link; the records of it are regular files."""
    state = root / ".launcher"
    for split in ("train", "val"):
        complete = state / f"complete-{split}.json"
        if complete.is_symlink() or not complete.is_file():  # none, or the planted link itself
            continue
        assert (state / f"manifest-{split}.json").is_file() and not (state / f"manifest-{split}.json").is_symlink()
        links = [str(p) for p in (root / split).rglob("*") if p.is_symlink()]
        assert not links and not (root / split).is_symlink(), f"{split} recorded complete with links {links}"


class Timeout(Exception):
    pass


_COMPOSED: dict[tuple, object] = {}


def composed(args: tuple[str, ...], root: Path):
    """The command's config, composed once per set of options (Hydra's compose is most of a tiny
    run's time), with storage.root set to `root` (state_dir and log_dir follow it)."""
    from omegaconf import OmegaConf

    from launcher import compose_config

    if args not in _COMPOSED:
        _COMPOSED[args] = compose_config(args[0], [*args[1:], "storage.root=/nonexistent/planted"])
    cfg = copy.deepcopy(_COMPOSED[args])
    OmegaConf.update(cfg, "storage.root", str(root))
    return cfg


def run_guarded(args: tuple[str, ...], root: Path, capsys, seconds: int = 60) -> Run:
    """In-process run that fails the test instead of hanging (a FIFO opened for reading would)."""
    from launcher.cli.commands import run_command

    def expire(*_):
        raise Timeout(f"{args[0]} hung for {seconds}s")

    cfg = composed(args, root)
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    capsys.readouterr()
    try:
        code = run_command(cfg)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out, err = capsys.readouterr()
    return Run(code, out, err)


def check_planted(traced, tmp_path, capsys, kind: str, what: str, command: str, force: bool = False):
    result, clean, prepare, verify = traced
    rel, typ = (prepare if command == "prepare" else verify)[kind]
    outside = sentinel(tmp_path)
    root = fresh_root(tmp_path, clean, prepared=command == "verify")
    path = plant(root, rel, what, typ, outside)
    before = tree_digest(outside)
    if command == "prepare":
        args = prepare_args(result, root, *(["prepare.force=true"] if force else []))
    else:
        args = ["verify", *storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
        args += ["verify.level=decode", "verify.fix=true"]
    run = run_guarded(tuple(a for a in args if not a.startswith("storage.root=")), root, capsys)
    said = run.stdout + run.stderr
    assert "Traceback" not in said, said[-2000:]
    assert tree_digest(outside) == before, f"{rel}: something outside the root changed"
    named = [str(p) for p in (path, *path.parents) if str(p).startswith(str(root)) and str(p) in said]
    replaced = not planted_still(path, what)
    assert named or replaced, (
        f"{what} at {rel}: exit {run.returncode}, neither refused naming it nor replaced:\n{said[-1500:]}"
    )
    if named and not replaced:
        assert run.returncode != 0
    if command == "prepare":
        nothing_complete_through_links(root)
    else:  # the root was complete before the link was planted: verify must not pass it
        links = [str(p) for split in ("train", "val") for p in (root / split).rglob("*") if p.is_symlink()]
        assert not links or run.returncode != 0, f"verify passed a root with links {links}"
    return run, replaced


def test_every_kind_of_path_is_traced(traced):
    """The trace holds every kind of output the issue names; the count is what the suite plants at."""
    _, _, prepare, verify = traced
    wanted = [
        "meta.bin", "meta.bin.part", "train", "val", ".partial", ".partial/train", ".partial/train/n#",
        ".partial/train/n#/n#_#.JPEG", "val/n#", "val/n#/.ILSVRC#_val_#.JPEG.part", "val/n#/ILSVRC#_val_#.JPEG",
        ".launcher", ".launcher/prepare.lock", ".launcher/ledger.jsonl", ".launcher/units",
        ".launcher/manifest-<key>.json", ".launcher/.<record>.json.tmp", ".launcher/complete-<key>.json",
        ".launcher/identity.json", ".launcher/logs", ".launcher/units/<key>-#-of-#.lock",
    ]  # fmt: skip
    assert not [w for w in wanted if w not in prepare], sorted(prepare)
    fixes = [".launcher/verify-fixes.jsonl", ".launcher/fix-originals", ".launcher/verify"]
    assert not [w for w in fixes if w not in verify], sorted(verify)
    assert any(k.endswith(".fix.part") for k in verify), sorted(verify)
    files = sum(typ == "file" for _, typ in prepare.values())
    print(f"planted-link kinds of path: prepare {len(prepare)} ({files} files), verify {len(verify)}")
    for kind, (rel, typ) in sorted({**prepare, **verify}.items()):
        print(f"  {typ:6} {kind:50} {rel}")


def plant_everywhere(traced, tmp_path, capsys, command: str, what: str, types=("file", "folder"), force=False):
    """Plant `what` at one path of each kind in turn (a fresh root each time); every failure is
    collected, so one run of the test names them all."""
    table = traced[2] if command == "prepare" else traced[3]
    failures, runs = [], {}
    for n, (kind, (_, typ)) in enumerate(sorted(table.items())):
        if typ not in types:
            continue
        try:
            runs[kind] = check_planted(traced, tmp_path / str(n), capsys, kind, what, command, force)
        except Exception as err:  # an assertion, a hang, or a raw error of the run
            failures.append(f"{kind}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)
    assert runs
    return runs


FORCE_REPLACES = (
    "train",
    "val",
    ".partial",
    ".partial/train",
    "meta.bin",
    "train/n#",
    "val/n#",
    ".launcher/prepare.lock",
)


def test_links_planted_for_prepare(traced, tmp_path, capsys):
    plant_everywhere(traced, tmp_path, capsys, "prepare", "link")


def test_links_planted_for_prepare_with_force(traced, tmp_path, capsys):
    """prepare.force=true unlinks a link planted at the root's folders, meta.bin or the lock (never
    its target) and prepares the root."""
    runs = plant_everywhere(traced, tmp_path, capsys, "prepare", "link", force=True)
    bad = [k for k in FORCE_REPLACES if k in runs and not (runs[k][0].returncode == 0 and runs[k][1])]
    assert not bad, {k: (runs[k][0].stdout + runs[k][0].stderr)[-600:] for k in bad}


def test_links_planted_for_verify_fix(traced, tmp_path, capsys):
    plant_everywhere(traced, tmp_path, capsys, "verify", "link")


def test_fifo_where_a_file_belongs(traced, tmp_path, capsys):
    plant_everywhere(traced, tmp_path, capsys, "prepare", "fifo", types=("file",))


def test_folder_where_a_file_belongs(traced, tmp_path, capsys):
    plant_everywhere(traced, tmp_path, capsys, "prepare", "folder", types=("file",))


def test_file_where_a_folder_belongs(traced, tmp_path, capsys):
    plant_everywhere(traced, tmp_path, capsys, "prepare", "file", types=("folder",))
