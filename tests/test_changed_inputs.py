"""Completion that outlives its inputs or outputs: an archive rewritten in place (same size, other
bytes) or replaced at a moment of a run, a deleted split or class folder, a root made again, a state
folder shared by two roots. After a rerun the root is identical to a clean run of the archive now
present, or the run refuses; it is never recorded complete with a mix of two archives' bytes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_faults import RENAMES, clean_run, in_process, leftovers, prepare_args, target_call  # noqa: F401

from launcher.datasets.imagenet.synth import tar_bytes, write_tar

from archive_tools import copy_archives, members
from conftest import FILES, dataset_overrides, launch, storage_overrides, tree_bytes

NO_MD5 = ["dataset.archives.train.md5=null", "dataset.archives.val.md5=null"]


def other_bytes(path: Path) -> bytes:
    """The train tar with one byte of every image changed: same names, sizes and length."""
    outer = []
    for name, data in members(path):
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
            images = [(m.name, bytearray(inner.extractfile(m).read())) for m in inner.getmembers()]
        for _, img in images:
            img[len(img) // 2] ^= 0xFF
        outer.append((name, tar_bytes([(n, bytes(d)) for n, d in images])))
    out = path.with_name("other.tar")
    write_tar(out, outer)
    data = out.read_bytes()
    out.unlink()
    assert len(data) == path.stat().st_size
    return data


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Same file (same inode), same size, other bytes; its mtime is even set back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace(path: Path, data: bytes) -> None:
    """Another file renamed over the archive (what a download tool does), mtime set back."""
    st = path.stat()
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


CHANGES = {"rewritten in place": rewrite_in_place, "replaced": replace}


@pytest.fixture(scope="session")
def two_archives(archives, tmp_path_factory):
    """The uneven shape's archives, the train tar's other bytes, and a clean root of each."""
    result = archives("uneven")
    base = tmp_path_factory.mktemp("changed")
    new = copy_archives(result, base / "new")
    data = other_bytes(new / FILES["train"])
    (new / FILES["train"]).write_bytes(data)
    refs = {}
    for name, d in (("old", result.archive_dir), ("new", new)):
        refs[name] = base / f"ref-{name}"
        overrides = [*storage_overrides(d, refs[name]), *dataset_overrides(result), "cluster=debug", *NO_MD5]
        assert launch("prepare", overrides) == 0
    assert tree_bytes(refs["old"]) != tree_bytes(refs["new"])
    return result, data, refs


def assert_never_mixed(root: Path, refs: dict) -> None:
    """A split recorded complete holds exactly the bytes of one clean run."""
    if (root / ".launcher" / "complete-train.json").exists():
        ours = tree_bytes(root, ["train"])
        assert ours in (tree_bytes(refs["old"], ["train"]), tree_bytes(refs["new"], ["train"])), "mixed bytes"


def rerun_matches_new_archive(result, d: Path, root: Path, refs: dict, capsys) -> None:
    rerun = in_process(prepare_args(result, root, *NO_MD5, archive_dir=d), capsys)
    if rerun.returncode != 0:  # a refusal must say why and record nothing complete
        assert "Traceback" not in rerun.stderr and FILES["train"] in rerun.stderr, rerun.stderr[-2000:]
        assert not (root / ".launcher" / "complete-train.json").exists()
        return
    assert tree_bytes(root) == tree_bytes(refs["new"]) and leftovers(root) == []
    for split in ("train", "val"):
        ours = (root / ".launcher" / f"manifest-{split}.json").read_text()
        assert ours == (refs["new"] / ".launcher" / f"manifest-{split}.json").read_text()


# ---------------------------------------------------------------- between runs


@pytest.mark.parametrize("change", list(CHANGES))
def test_archive_changed_after_a_complete_run(change, two_archives, tmp_path, capsys):
    result, data, refs = two_archives
    d = copy_archives(result, tmp_path / "archives")
    root = tmp_path / "root"
    assert in_process(prepare_args(result, root, *NO_MD5, archive_dir=d), capsys).returncode == 0
    CHANGES[change](d / FILES["train"], data)
    rerun_matches_new_archive(result, d, root, refs, capsys)
    assert tree_bytes(root) == tree_bytes(refs["new"])  # here it must redo, not refuse


def test_md5_record_is_tied_to_the_bytes_it_hashed(two_archives, tmp_path, capsys):
    """The md5 of the old bytes does not vouch for the new ones: the rerun hashes again and fails."""
    result, data, _ = two_archives
    d = copy_archives(result, tmp_path / "archives")
    root = tmp_path / "root"
    assert in_process(prepare_args(result, root, archive_dir=d), capsys).returncode == 0
    rewrite_in_place(d / FILES["train"], data)
    rerun = in_process(prepare_args(result, root, archive_dir=d), capsys)
    assert rerun.returncode == 1 and "md5 mismatch" in rerun.stderr and "already complete" not in rerun.stdout
    assert not (root / ".launcher" / "complete-train.json").exists()


# ---------------------------------------------------------------- outputs gone


@pytest.mark.parametrize("what", ["a class folder", "train/", "a val class folder", "meta.bin"])
def test_deleted_output_is_not_complete(what, archives, tmp_path, capsys):
    result = archives("small")
    root = tmp_path / "root"
    args = prepare_args(result, root)
    assert in_process(args, capsys).returncode == 0
    reference = tree_bytes(root)
    meta = (root / "meta.bin").read_bytes()
    victim = {
        "a class folder": lambda: sorted((root / "train").iterdir())[0],
        "train/": lambda: root / "train",
        "a val class folder": lambda: sorted((root / "val").iterdir())[-1],
        "meta.bin": lambda: root / "meta.bin",
    }[what]()
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    rerun = in_process(args, capsys)
    assert rerun.returncode == 0, rerun.stderr
    assert "already complete" not in rerun.stdout
    assert tree_bytes(root) == reference and (root / "meta.bin").read_bytes() == meta


# ---------------------------------------------------------------- which root


def test_shared_state_dir_does_not_make_another_root_complete(archives, tmp_path, capsys):
    result = archives("tiny")
    state = tmp_path / "state"
    a, b = tmp_path / "a", tmp_path / "b"
    assert in_process(prepare_args(result, a, f"storage.state_dir={state}"), capsys).returncode == 0
    b.mkdir()
    run = in_process(prepare_args(result, b, f"storage.state_dir={state}"), capsys)
    assert run.returncode == 1 and "already complete" not in run.stdout
    assert f"storage.state_dir={state}" in run.stderr and str(a) in run.stderr
    assert not (b / "train").exists()
    assert in_process(prepare_args(result, a, f"storage.state_dir={state}"), capsys).stdout.startswith(
        "already complete"
    )


def test_root_made_again_is_prepared_again(archives, tmp_path, capsys):
    """A root deleted and made again (empty) beside its records (state_dir outside the root)."""
    result = archives("tiny")
    state, root = tmp_path / "state", tmp_path / "root"
    args = prepare_args(result, root, f"storage.state_dir={state}")
    assert in_process(args, capsys).returncode == 0
    reference = tree_bytes(root)
    shutil.rmtree(root)
    root.mkdir()
    rerun = in_process(args, capsys)
    assert rerun.returncode == 0 and "already complete" not in rerun.stdout
    assert tree_bytes(root) == reference


# ---------------------------------------------------------------- during a run (strace stop points)

# moment: (the call of a clean run's trace at which the run is stopped, as in test_faults.MOMENTS)
MOMENTS = {
    "before indexing the train tar": r"devkit\.json",
    "after indexing, before extraction": r"index-val\.json",
    "mid-extraction": r"\.partial/train/n\d+$#mid",
    "after extraction, before finalize": r"\.manifest-train\.json",
}


def stopped_pids(pid: int) -> list[int]:
    """Processes under `pid` (strace's children) in a stop (state t or T)."""
    out = []
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for cpid in map(int, child.read_text().split()):
            try:
                state = Path(f"/proc/{cpid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            out += [cpid] if state in ("t", "T") else []
            out += stopped_pids(cpid)
    return out


def wait_for_stop(proc: subprocess.Popen, timeout: float = 240) -> list[int]:
    """The stopped processes once a stop has lasted a second (a syscall stop of strace lasts
    microseconds; the injected SIGSTOP lasts until SIGCONT)."""
    deadline, since = time.time() + timeout, None
    while proc.poll() is None and time.time() < deadline:
        pids = stopped_pids(proc.pid)
        since = (since or time.time()) if pids else None
        if since and time.time() - since > 1.0:
            return pids
        time.sleep(0.05)
    return []


def resume(proc: subprocess.Popen, timeout: float = 300) -> int:
    """SIGCONT until the run ends (one sent during a syscall stop could come before the SIGSTOP)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        for pid in stopped_pids(proc.pid):
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    return proc.wait(timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_archive_changed_during_a_run(moment, change, clean_run, two_archives, tmp_path, capsys):  # noqa: F811
    """The run is stopped (strace injects SIGSTOP) at a moment, the train tar changes, the run goes on;
    then a rerun. Whatever the first run recorded complete is one archive's bytes; the rerun ends
    identical to a clean run of the new bytes, or refuses."""
    result, data, refs = two_archives
    _, _, traces = clean_run
    clean_root, paths, keys = traces[RENAMES]
    path, n = target_call(paths, keys, MOMENTS[moment])
    d = copy_archives(result, tmp_path / "archives")
    root = tmp_path / "root"
    path = str(root) + path.removeprefix(str(clean_root))
    cmd = ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={RENAMES}", "-P", path]
    cmd += ["-e", f"inject={RENAMES}:signal=SIGSTOP:when={n}"]
    args = prepare_args(result, root, *NO_MD5, archive_dir=d)
    log = tmp_path / "run.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*cmd, sys.executable, "-m", "launcher", *args], stdout=subprocess.DEVNULL, stderr=err)
        assert wait_for_stop(proc), f"the run ended before call {n} on {path}: {log.read_text()[-800:]}"
        CHANGES[change](d / FILES["train"], data)
        resume(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-2000:]
    assert_never_mixed(root, refs)
    rerun_matches_new_archive(result, d, root, refs, capsys)


def changed_input_moments() -> int:
    """Moments at which an archive changes, exercised by this file (for the README and the report)."""
    return len(CHANGES) * (len(MOMENTS) + 1)
