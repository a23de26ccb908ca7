"""The reliability suite: crashes at every kind of moment, concurrent runs, a full disk, read-only
and missing outputs, unreadable, hostile and broken archives. Nothing is lost, nothing is written
outside the root, every failure is a clear message and a non-zero exit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from launcher.datasets.imagenet.synth import tar_bytes

from archive_tools import (
    copy_archives,
    device,
    gz_members,
    hostile_tar,
    link,
    members,
    rewrite_class,
    rewrite_devkit,
    write_tar,
    write_tar_gz,
)
from conftest import FILES, GROUND_TRUTH, META, REPO, cli, dataset_overrides, launch, storage_overrides, tree_bytes

pytestmark = pytest.mark.faults
RENAMES = "rename,renameat,renameat2"


def prepare_args(result, root, *extra, archive_dir=None, cluster="debug"):
    return [
        "prepare",
        *storage_overrides(archive_dir or result.archive_dir, root),
        *dataset_overrides(result),
        f"cluster={cluster}",
        *extra,
    ]


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def in_process(args: list[str], capsys) -> Run:
    """Run the command in this process (torch is imported already: fast), capturing its output."""
    capsys.readouterr()
    code = launch(args[0], args[1:])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def run_traced(args, syscalls, inject_at=None, path=None, log=None):
    """`python -m launcher ...` under strace; with `path` and inject_at=N, the N-th of `syscalls` on
    that path gets SIGKILL (strace counts per path and process, whatever else the run writes)."""
    cmd = ["strace", "-f", "-qq", "-y", "-e", f"trace={syscalls}", "-o", str(log or os.devnull)]
    if inject_at:
        cmd += ["-P", str(path), "-e", f"inject={syscalls}:signal=SIGKILL:when={inject_at}"]
    return subprocess.run([*cmd, sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=300)


def leftovers(root: Path) -> list[str]:
    """Temporary files a finished prepare must not leave behind."""
    found = [str(p) for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]
    partial = root / ".partial"
    found += [str(p) for p in partial.rglob("*") if p.is_file()] if partial.exists() else []
    return found


# ---------------------------------------------------------------- crash at any moment

MOMENTS = {
    # name: (syscalls, the path the call touches in a traced clean run[#which of the matching calls])
    "writing devkit.json": (RENAMES, r"devkit\.json"),
    "writing the train index": (RENAMES, r"index-train\.json"),
    "writing the val index": (RENAMES, r"index-val\.json"),
    "committing meta.bin": (RENAMES, r"meta\.bin\.part"),
    "committing the first class": (RENAMES, r"\.partial/train/n\d+$"),
    "committing the last class": (RENAMES, r"\.partial/train/n\d+$#-1"),
    "recording the first train unit": (RENAMES, r"units/\.train-[-\w]+\.json\.tmp"),
    "recording the last train unit": (RENAMES, r"units/\.train-\d+#-1"),
    "committing the first val image": (RENAMES, r"/val/n\d+/\.ILSVRC2012_val_\d+\.JPEG\.part"),
    "committing the middle val image": (RENAMES, r"/val/n\d+/\.ILSVRC2012_val_\d+\.JPEG\.part#mid"),
    "recording the val unit": (RENAMES, r"units/\.val-\d+"),
    "writing manifest-train": (RENAMES, r"\.manifest-train\.json"),
    "writing complete-train": (RENAMES, r"\.complete-train\.json"),
    "writing manifest-val": (RENAMES, r"\.manifest-val\.json"),
    "committing complete-val": (RENAMES, r"\.complete-val\.json"),
    "writing the first image's bytes": ("write", r"\.partial/train/n\d+/n\d+_\d+\.JPEG"),
    "mid-class, early": ("write", r"\.partial/train/n\d+/n\d+_\d+\.JPEG#q1"),
    "mid-class, half-way": ("write", r"\.partial/train/n\d+/n\d+_\d+\.JPEG#mid"),
    "mid-class, late": ("write", r"\.partial/train/n\d+/n\d+_\d+\.JPEG#q3"),
    "writing a val image's bytes": ("write", r"/val/n\d+/\.ILSVRC2012_val_\d+\.JPEG\.part$#mid"),
    "writing the train manifest's bytes": ("write", r"\.manifest-train\.json"),
    "writing meta.bin's bytes": ("write", r"meta\.bin\.part"),
    "writing a unit record's bytes": ("write", r"units/\.train-\d+#mid"),
    "writing the ledger": ("write", r"ledger\.jsonl"),
}


# strace -f -o: "<pid> <call>", the pid padded to the width of the largest pid
CALL = re.compile(
    r"^\d+\s+(?:write\(\d+<(?P<fd>[^>]+)>"
    r'|rename\w*\((?:\S+<(?P<dir>[^>]*)>, )?"(?P<src>[^"]+)"(?:, \S+<(?P<dst>[^>]*)>)?)'
)


def injection_keys(m: re.Match) -> tuple[str, ...]:
    """What `strace -P` matches a traced call by: the written file; for a rename relative to opened
    folders (renameat), those folders; for a rename of absolute paths, the source."""
    if m["fd"]:
        return (m["fd"],)
    if m["dir"] and not m["src"].startswith("/"):
        return tuple(d for d in (m["dir"], m["dst"]) if d)
    return (m["src"],)


@pytest.fixture(scope="session")
def clean_run(archives, tmp_path_factory):
    """A clean prepare (the reference root) and, per traced syscall set, its root and the paths its
    calls touched (the written file, the renamed source), in order."""
    result = archives("uneven")
    base = tmp_path_factory.mktemp("clean")
    traces = {}
    for syscalls in (RENAMES, "write"):
        root = base / syscalls.split(",")[0]
        log = base / f"{syscalls.split(',')[0]}.strace"
        run = run_traced(prepare_args(result, root), syscalls, log=log)
        assert run.returncode == 0, run.stderr
        calls = [m for m in map(CALL.match, log.read_text().splitlines()) if m]
        paths = [m["fd"] or os.path.join(m["dir"] or "", m["src"]) for m in calls]
        traces[syscalls] = (root, paths, [injection_keys(m) for m in calls])
    return result, root, traces


def target_call(paths: list[str], keys: list[tuple[str, ...]], spec: str) -> tuple[str, int]:
    """The call matching `pattern[#first|#-1|#mid|#q1|#q3]` in a traced run, as (the path strace -P
    matches it by, which of the calls matching that path it is, 1-based)."""
    pattern, _, which = spec.partition("#")
    hits = [i for i, path in enumerate(paths) if re.search(pattern, path)]
    assert hits, f"no call matches {pattern!r}"
    position = {"": 0, "-1": len(hits) - 1, "mid": len(hits) // 2, "q1": len(hits) // 4, "q3": 3 * len(hits) // 4}
    i = hits[position[which]]
    key = keys[i][0]
    return key, sum(key in k for k in keys[: i + 1])


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_at_any_moment_then_rerun(moment, clean_run, tmp_path, capsys):
    result, reference, traces = clean_run
    syscalls, spec = MOMENTS[moment]
    clean_root, paths, keys = traces[syscalls]
    path, n = target_call(paths, keys, spec)
    root = tmp_path / "root"
    path = str(root) + path.removeprefix(str(clean_root))
    crashed = run_traced(prepare_args(result, root), syscalls, inject_at=n, path=path)
    killed = crashed.returncode in (-9, 137)
    assert killed, f"not killed at call {n} on {path}: {crashed.returncode} {crashed.stderr[-500:]}"
    rerun = in_process(prepare_args(result, root), capsys)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(root) == tree_bytes(reference)
    assert (root / "meta.bin").read_bytes() != b"" and leftovers(root) == []
    for split in ("train", "val"):
        ours = (root / ".launcher" / f"manifest-{split}.json").read_text()
        assert ours == (reference / ".launcher" / f"manifest-{split}.json").read_text()


def test_sigkill_of_the_whole_local_run_then_rerun(archives, tmp_path):
    """cluster=local: the launcher and its worker processes die together (a node going down)."""
    import signal
    import time

    result = archives("uneven")
    reference = tmp_path / "reference"
    assert cli(*prepare_args(result, reference, cluster="local")).returncode == 0
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *prepare_args(result, root, cluster="local")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list((root / ".launcher" / "units").glob("train-*.json")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = cli(*prepare_args(result, root, cluster="local"))
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(root) == tree_bytes(reference) and leftovers(root) == []


# ---------------------------------------------------------------- concurrency


def test_two_prepares_at_once(archives, tmp_path):
    result = archives("uneven")
    root = tmp_path / "root"
    args = prepare_args(result, root, cluster="local")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "launcher", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    assert codes in ([0, 0], [0, 3]), outs
    if codes == [0, 3]:
        busy = next(err for code, _, err in outs if code == 3)
        assert "is busy" in busy and "prepare.lock" in busy
    reference = tmp_path / "reference"
    assert cli(*prepare_args(result, reference)).returncode == 0
    assert tree_bytes(root) == tree_bytes(reference) and leftovers(root) == []


# ---------------------------------------------------------------- the output side


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 256 KiB mounted by the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_then_rerun_after_freeing_space(archives, small_fs, tmp_path):
    result = archives("small")
    root = small_fs / "root"
    run = cli(*prepare_args(result, root))
    assert run.returncode != 0
    assert "No space left on device" in run.stderr and str(small_fs) in run.stderr
    assert re.search(r"(train|val|meta)[-\w]* failed|unit \S+ failed|units failed", run.stderr + run.stdout)
    for split in ("train", "val"):
        assert not (root / ".launcher" / f"complete-{split}.json").exists()
    for record in (root / ".launcher" / "units").glob("train-*.json"):  # whatever is recorded is whole
        for wnid, files in __import__("json").loads(record.read_text())["classes"].items():
            assert sorted(p.name for p in (root / "train" / wnid).iterdir()) == sorted(n for n, _ in files)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    rerun = cli(*prepare_args(result, root))
    assert rerun.returncode == 0, rerun.stderr
    reference = tmp_path / "reference"
    assert cli(*prepare_args(result, reference)).returncode == 0
    assert tree_bytes(root) == tree_bytes(reference) and leftovers(root) == []


def test_read_only_output(archives, small_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    run = cli(*prepare_args(archives(), small_fs / "root"))
    assert run.returncode == 1
    assert "Read-only file system" in run.stderr and "storage.root" in run.stderr


def test_output_under_a_file(archives, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    run = cli(*prepare_args(archives(), blocker / "root"))
    assert run.returncode == 1 and str(blocker) in run.stderr and "storage.root" in run.stderr


def test_unreadable_archive(archives, tmp_path):
    """Without CAP_DAC_OVERRIDE even root obeys a file's mode bits."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    d = copy_archives(archives(), tmp_path / "archives")
    (d / FILES["train"]).chmod(0)
    caps = "-dac_override,-dac_read_search"
    cmd = [
        "setpriv",
        f"--bounding-set={caps}",
        f"--inh-caps={caps}",
        sys.executable,
        "-m",
        "launcher",
        *prepare_args(archives(), tmp_path / "root", archive_dir=d),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"{d / FILES['train']} is not readable" in run.stderr


# ---------------------------------------------------------------- hostile archives


def sandbox_snapshot(sandbox: Path, root: Path) -> dict:
    """Every path under the sandbox except the root's own contents."""
    return {str(p): p.lstat().st_mode for p in sandbox.rglob("*") if root not in p.parents and p != root}


HOSTILE = {
    # name: (which archive, how to change it, the member named in the error)
    "class member ../ path": (
        "inner",
        lambda w, imgs: tar_bytes([(f"../../{imgs[0][0]}", imgs[0][1]), *imgs[1:]]),
        "../../",
    ),
    "class member absolute path": (
        "inner",
        lambda w, imgs: tar_bytes([("/tmp/evil.JPEG", b"x"), *imgs]),
        "/tmp/evil.JPEG",
    ),
    "class symlink outside": (
        "inner",
        lambda w, imgs: hostile_tar([link(f"{w}_1.JPEG", "/etc/passwd"), *imgs]),
        "/etc/passwd",
    ),
    "class hardlink outside": (
        "inner",
        lambda w, imgs: hostile_tar([link(f"{w}_1.JPEG", "/etc/shadow", tarfile.LNKTYPE), *imgs]),
        "/etc/shadow",
    ),
    "class device file": ("inner", lambda w, imgs: hostile_tar([device(f"{w}_1.JPEG"), *imgs]), "is a device"),
    "class duplicate names": ("inner", lambda w, imgs: tar_bytes([*imgs, imgs[0]]), "appears twice"),
    "class foreign name": ("inner", lambda w, imgs: tar_bytes([*imgs, ("setup.sh", b"rm -rf /")]), "setup.sh"),
    "class nested deeper": (
        "inner",
        lambda w, imgs: tar_bytes([(f"{w}/{n}", d) for n, d in imgs]),
        "does not match the pattern",
    ),
    "class member claiming a huge size": ("inner", None, "needs bytes up to offset"),
    "outer member ../ path": ("outer", lambda ms: [(f"../{ms[0][0]}", ms[0][1]), *ms[1:]], "../"),
    "outer symlink": ("outer", lambda ms: hostile_tar([link("n00000001.tar", "/etc"), *ms]), "/etc"),
    "outer foreign name": ("outer", lambda ms: [*ms, ("README", b"hi")], "README"),
    "outer duplicate class": ("outer", lambda ms: [*ms, ms[0]], "appears twice"),
    "val absolute path": (
        "val",
        lambda ms: [("/tmp/ILSVRC2012_val_00000001.JPEG", ms[0][1]), *ms[1:]],
        "/tmp/ILSVRC2012_val_00000001.JPEG",
    ),
    "val symlink": (
        "val",
        lambda ms: hostile_tar([link("ILSVRC2012_val_00000001.JPEG", "/etc/passwd"), *ms[1:]]),
        "/etc/passwd",
    ),
    "val device": ("val", lambda ms: hostile_tar([device("ILSVRC2012_val_00000001.JPEG"), *ms[1:]]), "device"),
}


def huge_member(imgs):
    data = bytearray(tar_bytes(imgs))
    info = tarfile.TarInfo(imgs[0][0])
    info.size = 8 * 10**9
    header = info.tobuf(tarfile.GNU_FORMAT)
    data[: len(header)] = header
    return bytes(data)


def make_hostile(case: str, d: Path):
    where, change, _ = HOSTILE[case]
    if where == "inner":

        def build(imgs):
            wnid = imgs[0][0].split("_")[0]
            return huge_member(imgs) if change is None else change(wnid, imgs)

        rewrite_class(d, 0, build)
    else:
        key = {"outer": "train", "val": "val"}[where]
        data = change(members(d / FILES[key]))
        if isinstance(data, bytes):
            (d / FILES[key]).write_bytes(data)
        else:
            write_tar(d / FILES[key], data)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_escapes(case, archives, tmp_path, capsys):
    sandbox = tmp_path / "sandbox"
    d = copy_archives(archives(), sandbox / "archives")
    make_hostile(case, d)
    root = sandbox / "data" / "root"
    root.parent.mkdir()
    before = sandbox_snapshot(sandbox, root)
    run = in_process(
        prepare_args(
            archives(), root, "dataset.archives.train.md5=null", "dataset.archives.val.md5=null", archive_dir=d
        ),
        capsys,
    )
    assert run.returncode != 0
    expected = HOSTILE[case][2]
    assert expected in run.stderr, run.stderr[-2000:]
    assert re.search(r"ILSVRC2012_img_(train|val)\.tar", run.stderr)
    assert sandbox_snapshot(sandbox, root) == before
    assert not Path("/tmp/evil.JPEG").exists() and not Path("/tmp/ILSVRC2012_val_00000001.JPEG").exists()
    for path in root.rglob("*"):
        assert not path.is_symlink() and (path.is_dir() or path.is_file())


def test_gzip_bomb_in_the_devkit_slot(archives, tmp_path, capsys):
    d = copy_archives(archives(), tmp_path / "archives")
    members_ = gz_members(d / FILES["devkit"])
    bomb = [("ILSVRC2012_devkit_t12/padding.bin", bytes(300 * 2**20)), *members_]  # 300 MB of zeros
    write_tar_gz(d / FILES["devkit"], bomb)
    assert (d / FILES["devkit"]).stat().st_size < 2 * 2**20
    run = in_process(
        prepare_args(archives(), tmp_path / "root", "dataset.archives.devkit.md5=null", archive_dir=d), capsys
    )
    assert run.returncode == 1
    assert "decompresses to more than" in run.stderr and FILES["devkit"] in run.stderr


# ---------------------------------------------------------------- broken archives


def test_meta_mat_missing_fields(archives, tmp_path, capsys):
    import io

    import numpy as np
    import scipy.io

    d = copy_archives(archives(), tmp_path / "archives")

    def drop_field(ms):
        out = []
        for name, data in ms:
            if name == META:
                synsets = scipy.io.loadmat(io.BytesIO(data))["synsets"]
                fields = [f for f in synsets.dtype.names if f != "num_train_images"]
                slim = np.empty(synsets.shape, dtype=[(f, object) for f in fields])
                for f in fields:
                    slim[f] = synsets[f]
                buf = io.BytesIO()
                scipy.io.savemat(buf, {"synsets": slim})
                data = buf.getvalue()
            out.append((name, data))
        return out

    rewrite_devkit(d, drop_field)
    run = in_process(
        prepare_args(archives(), tmp_path / "root", "dataset.archives.devkit.md5=null", archive_dir=d), capsys
    )
    assert run.returncode == 1 and "num_train_images" in run.stderr and "lack the field" in run.stderr


def test_ground_truth_longer_than_val_tar(archives, tmp_path, capsys):
    d = copy_archives(archives(), tmp_path / "archives")
    rewrite_devkit(d, lambda ms: [(n, data + b"1\n2\n" if n == GROUND_TRUTH else data) for n, data in ms])
    run = in_process(
        prepare_args(archives(), tmp_path / "root", "dataset.archives.devkit.md5=null", archive_dir=d), capsys
    )
    assert run.returncode == 1
    assert FILES["val"] in run.stderr and "ground truth has" in run.stderr


@pytest.mark.parametrize("where", ["outer", "inner"])
def test_corrupt_header_checksum(where, archives, tmp_path, capsys):
    d = copy_archives(archives(), tmp_path / "archives")
    if where == "outer":
        data = bytearray((d / FILES["train"]).read_bytes())
        data[0] ^= 0x20  # first header's name
        (d / FILES["train"]).write_bytes(bytes(data))
    else:

        def corrupt(imgs):
            data = bytearray(tar_bytes(imgs))
            data[1] ^= 0x20
            return bytes(data)

        rewrite_class(d, 1, corrupt)
    run = in_process(
        prepare_args(archives(), tmp_path / "root", "dataset.archives.train.md5=null", archive_dir=d), capsys
    )
    assert run.returncode == 1 and "fails its checksum" in run.stderr and FILES["train"] in run.stderr


def fault_cases() -> int:
    """Cases of this suite plus the SLURM fault tests (marked faults in test_slurm.py)."""
    import importlib
    import inspect

    import test_slurm

    tests = [f for name, f in globals().items() if name.startswith("test_") and inspect.isfunction(f)]
    params = {
        "test_sigkill_at_any_moment_then_rerun": len(MOMENTS),
        "test_hostile_archive_is_refused_and_nothing_escapes": len(HOSTILE),
        "test_corrupt_header_checksum": 2,
    }
    own = sum(params.get(f.__name__, 1) for f in tests if f.__name__ != "test_fault_suite_size")
    slurm = [
        f
        for name, f in vars(test_slurm).items()
        if name.startswith("test_") and any(m.name == "faults" for m in getattr(f, "pytestmark", []))
    ]
    others = 0  # the planted-links suite and verify.fix's interruptions (test_planted, test_fixlog)
    for module in (importlib.import_module(m) for m in ("test_planted", "test_fixlog")):
        for name, f in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(f):
                others += len(module.MOMENTS) if name == "test_fix_killed_then_rerun" else 1
    return own + len(slurm) + others + 2  # + the requeue and preemption cases of test_slurm


def test_fault_suite_size():
    """The README quotes this suite's size; keep the two in step."""
    count = fault_cases()
    assert count >= 50
    assert f"{count} cases" in (REPO / "README.md").read_text(), f"README should say the suite has {count} cases"


# ---------------------------------------------------------------- parsers that hang or crash (issue 14, class 3)


def test_zero_length_pax_record_fails_and_releases_the_lock(archives, tmp_path, capsys):
    """A four-byte pax record ('0 x\\n') made the header walk loop forever holding prepare.lock."""
    import signal

    from test_tarscan import entry

    d = copy_archives(archives("tiny"), tmp_path / "archives")
    val = d / FILES["val"]
    val.write_bytes(entry(b"x", b"0 x\n") + val.read_bytes())
    args = prepare_args(
        archives("tiny"), tmp_path / "root", "split=val", "dataset.archives.val.md5=null", archive_dir=d
    )

    def hang(signum, frame):
        raise AssertionError("prepare did not finish within 60 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        runs = [in_process(args, capsys) for _ in range(2)]  # the second is not refused as busy
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    for run in runs:
        assert run.returncode == 1, run.stderr
        assert f"{FILES['val']} is corrupt: the pax record at offset 512" in run.stderr
        assert "Traceback" not in run.stderr
    assert not list((tmp_path / "root").rglob("*.JPEG"))


def test_sparse_member_is_refused_not_written_condensed(archives, tmp_path, capsys):
    """A pax sparse member (GNU tar --sparse, format 0.0: the real name) holds condensed data: it was written and
    recorded complete. It is refused naming the member; no image is written."""
    d = copy_archives(archives("tiny"), tmp_path / "archives")
    val, work = d / FILES["val"], tmp_path / "members"
    work.mkdir()
    names = []
    for name, data in members(val):
        (work / name).write_bytes(data)
        names.append(name)
    with open(work / names[0], "r+b") as f:  # a hole in the middle: tar --sparse stores it condensed
        f.seek(256 * 1024)
        f.write(b"tail")
    tar = ["tar", "--format=pax", "--sparse", "--sparse-version=0.0", "-cf", str(val), "-C", str(work), *names]
    subprocess.run(tar, check=True)
    run = in_process(
        prepare_args(archives("tiny"), tmp_path / "root", "split=val", "dataset.archives.val.md5=null", archive_dir=d),
        capsys,
    )
    assert run.returncode == 1
    assert re.search(rf"{FILES['val']}: member '[^']*{names[0]}' \(header at offset [\d,]+\) is a sparse", run.stderr)
    assert not list((tmp_path / "root").rglob("*.JPEG"))
