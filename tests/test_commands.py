"""Messages: every user mistake and every failed file operation is one line naming the option or
the path, with a fix that works; config mistakes exit 2; never a traceback, never a (Pdb) prompt."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, dataset_overrides, storage_overrides


def error_lines(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if "error" in line or line.startswith("launcher")]


def assert_one_line(run, code: int, *expected: str) -> str:
    """The run exited `code` with exactly one error line holding every `expected`, and no traceback."""
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = error_lines(run)
    assert len(lines) == 1, run.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def prepare_args(result, root: Path, cluster: str = "debug") -> list[str]:
    return [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), f"cluster={cluster}"]


# ---------------------------------------------------------------- config mistakes: exit 2 at compose time

CONFIG_MISTAKES = [
    (["prepare", "transform.output=fp16"], ["transform.output=fp16", "float, uint8"]),
    (["verify", "verify.level=full"], ["verify.level=full", "exists, header, decode"]),
    (["bench", "transform.interpolation=cubic"], ["transform.interpolation=cubic", "bilinear, bicubic, nearest"]),
    (["prepare", "transform.policy=mixup"], ["transform.policy=mixup", "randaugment, autoaugment, trivialaugment"]),
    (["prepare", "split.splits=[train,test]"], ["split.splits", "train, val"]),
    (["bench", "bench.split=test"], ["bench.split=test", "train, val"]),
    (["prepare", "cluster.executor=pbs"], ["cluster.executor=pbs", "debug, local, slurm"]),
    (["stage", "stage.source=/x", "stage.mode=copy"], ["stage.mode=copy", "auto, root, archives"]),
    (["prepare", "cluster=nope"], ["cluster/nope", "debug, local, slurm"]),
    (["prepare", "command=verify"], ["command=", "launcher <command>"]),
    (["prepare", "storage=lustre"], ["storage.root is not set", "storage.root="]),
    (["stage"], ["stage.source is not set", "stage.source="]),
    (["prepare", "storage.file_mode=4755"], ["storage.file_mode=4755", "setuid", "storage.file_mode=0755"]),
    (["prepare", "storage.file_mode=2644"], ["storage.file_mode=2644", "storage.file_mode=0644"]),
    (["prepare", "storage.file_mode=0666"], ["storage.file_mode=0666", "world-write", "storage.file_mode=0664"]),
    (["prepare", "storage.file_mode=rw-r--r--"], ["storage.file_mode='rw-r--r--'", "octal"]),
    (["prepare", "storage.file_mode='0٦44'"], ["storage.file_mode=", "octal"]),  # an Arabic-Indic digit
    (["prepare", "storage.dir_mode=0777"], ["storage.dir_mode=0777", "storage.dir_mode=0775"]),
    (["prepare", "prepare.train_shards=0"], ["prepare.train_shards=0", "positive"]),
    (["prepare", "prepare.val_shards=-2"], ["prepare.val_shards=-2", "positive"]),
    (["verify", "verify.shards=0"], ["verify.shards=0", "positive"]),
    (["prepare", "cluster=local", "cluster.workers=0"], ["cluster.workers=0", "positive"]),
    (["prepare", "cluster=slurm", "cluster.array_parallelism=0"], ["cluster.array_parallelism=0", "positive"]),
]


@pytest.mark.parametrize("args,expected", CONFIG_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_config_mistake_is_one_line_and_exit_2(args, expected, tmp_path):
    run = cli(*args, f"storage.archive_dir={tmp_path}/a", cwd=tmp_path) if args[0] != "stage" else cli(*args)
    assert_one_line(run, 2, *expected)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("inside", ["train", "val/n01440764", ".partial"])
def test_state_dir_inside_a_split_is_refused_with_a_fix_that_keeps_it(inside, archives, tmp_path):
    """Refused at config time with the option that moves it, never with prepare.force=true (which
    would delete the state folder with the split)."""
    root = tmp_path / "root"
    state = root / inside / "state"
    run = cli("prepare", *prepare_args(archives("tiny"), root), f"storage.state_dir={state}")
    line = assert_one_line(run, 2, f"storage.state_dir={state}", "set storage.state_dir outside")
    assert "force" not in line
    assert not root.exists()


# ---------------------------------------------------------------- failed file operations: the path and the fix


@pytest.fixture
def mounted(tmp_path):
    """mount(path, size, ro) mounts a tmpfs (needs root); unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts = []

    def mount(path: Path, size: str = "4m", read_only: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


def unit_lines(run, text: str) -> list[str]:
    return [line for line in run.stderr.splitlines() if text in line]


def test_full_disk_names_the_path_and_keeps_finished_units(archives, mounted, tmp_path):
    root = mounted(tmp_path / "fs", size="256k") / "root"
    run = cli("prepare", *prepare_args(archives("small"), root))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = unit_lines(run, "No space left on device")
    assert lines and all(str(tmp_path / "fs") in line for line in lines), run.stderr
    assert any("Fix: free space on that filesystem" in line for line in lines), run.stderr
    assert not (root / ".launcher" / "complete-train.json").exists()


def test_cross_device_partial_names_partial_and_the_fix(archives, mounted, tmp_path):
    root = tmp_path / "root"
    mounted(root / ".partial")
    run = cli("prepare", *prepare_args(archives("tiny"), root))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = unit_lines(run, "Invalid cross-device link")
    assert lines and all(str(root / ".partial") in line and "same filesystem" not in line for line in lines)
    assert all("root/.partial must be on the root's filesystem" in line for line in lines)
    assert not (root / ".launcher" / "complete-train.json").exists()


def test_file_where_a_folder_belongs_is_named(archives, tmp_path):
    root = tmp_path / "root"
    (root / ".partial").mkdir(parents=True)
    (root / ".partial" / "train").write_text("not a folder")
    run = cli("prepare", *prepare_args(archives("tiny"), root))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    # refused before any unit runs (prepare checks the root's own tree on every run), naming the file
    lines = unit_lines(run, f"{root / '.partial' / 'train'} is a file where launcher writes a folder")
    assert len(lines) == 1 and f"move {root / '.partial' / 'train'} away" in lines[0], run.stderr
    assert (root / ".partial" / "train").read_text() == "not a folder"  # nothing destroyed


def test_synth_into_a_read_only_folder(mounted, tmp_path):
    folder = mounted(tmp_path / "ro", read_only=True)
    run = cli("synth", f"storage.archive_dir={folder}/archives", "synth.classes=2")
    assert_one_line(run, 1, str(folder / "archives"), "Read-only file system", "storage.archive_dir")


def test_bench_with_a_read_only_state_folder(archives, mounted, tmp_path):
    result = archives("tiny")
    root, state = tmp_path / "root", mounted(tmp_path / "state", size="16m")
    args = [*prepare_args(result, root), f"storage.state_dir={state}"]
    assert cli("prepare", *args).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    run = cli("bench", *args, "bench.max_batches=1", "loader.num_workers=0", "loader.batch_size=2")
    assert_one_line(run, 1, str(state), "Read-only file system", "storage.state_dir")


def test_debug_failure_from_a_terminal_is_a_message_not_pdb(archives, tmp_path):
    """submitit's DebugExecutor opens (Pdb) on a failure; from a terminal that waited for input forever."""
    root = tmp_path / "root"
    wrong_md5 = "dataset.archives.val.md5=00000000000000000000000000000000"  # the md5 unit fails
    master, slave = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "launcher", "prepare", *prepare_args(archives("tiny"), root), wrong_md5],
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert run.returncode == 1 and "(Pdb)" not in run.stdout + run.stderr, run.stdout
    assert "Traceback" not in run.stderr and "md5 mismatch" in run.stderr


@pytest.mark.slurm
def test_wrong_partition_is_one_line(archives, slurm_cluster, tmp_path):
    run = cli("prepare", *prepare_args(archives("tiny"), tmp_path / "root", "slurm"), "cluster.partition=nope")
    line = assert_one_line(run, 2, "cluster.partition=nope", "sinfo")
    assert "refused" in line
    assert shutil.which("sbatch")
