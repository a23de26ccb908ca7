"""Printed commands work when pasted: only what the next command accepts, every argument quoted;
each printed line is run through a shell."""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.core.runner import command_line, rerun_args, status_args

from conftest import cli, dataset_overrides


def pasted(line: str, cwd) -> subprocess.CompletedProcess:
    """Run a printed `launcher ...` line in bash, as a user pastes it (launcher = this interpreter's)."""
    shim = f'launcher() {{ "{sys.executable}" -m launcher "$@"; }}; '
    return subprocess.run(["bash", "-c", shim + line], cwd=cwd, capture_output=True, text=True, timeout=300)


def printed(stdout: str, label: str) -> str:
    return next(line.split(label, 1)[1].strip() for line in stdout.splitlines() if label in line)


def test_submitted_lines_paste(archives, tmp_path):
    result = archives("tiny")
    root = tmp_path / "my root; rm -rf x"  # a space and a `;` in a path
    args = [
        f"storage.archive_dir={result.archive_dir}",
        f"storage.root='{root}'",  # Hydra's grammar quotes a value with spaces
        *dataset_overrides(result),
        "cluster=local",
        "cluster.workers=1",
        "cluster.setup=['export LAUNCHER_TEST=1; true']",
        "prepare.train_shards=2",
        "wait=false",
    ]
    run = cli("prepare", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    follow, again = printed(run.stdout, "follow progress with:"), printed(run.stdout, "or wait for them:")
    assert "prepare." not in follow and "cluster." not in follow
    status = pasted(follow, tmp_path)
    assert status.returncode in (0, 1) and "Traceback" not in status.stderr, status.stderr
    assert "not in 'StatusConfig'" not in status.stderr and str(root) in status.stdout, status.stdout
    waited = pasted(again, tmp_path)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert (root / ".launcher" / "complete-train.json").exists()
    assert pasted(follow, tmp_path).returncode == 0
    assert not (tmp_path / "x").exists() and os.path.isdir(root)


def test_status_args_keep_only_storage():
    argv = ["storage=lustre", "storage.root=/a b", "prepare.train_shards=4", "cluster=slurm", "+storage.group=lab"]
    assert status_args(argv) == ["storage=lustre", "storage.root=/a b", "+storage.group=lab"]
    assert rerun_args(["wait=false", "split=val"]) == ["split=val"]
    assert command_line("status", ["storage.root=/a b", "cluster.setup=[x; y]"]) == (
        "launcher status 'storage.root=/a b' 'cluster.setup=[x; y]'"
    )
