"""The command line: help, unknown commands, Hydra's own flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.commands import COMMANDS

from conftest import cli


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    for name, command in COMMANDS.items():
        assert f"  {name}" in result.stdout and command.summary in result.stdout


def test_no_command_prints_usage_and_fails():
    result = cli()
    assert result.returncode == 2 and "usage: launcher" in result.stdout


def test_unknown_command_exits_2_with_valid_ones():
    result = cli("prepair")
    assert result.returncode == 2
    assert "unknown command 'prepair'" in result.stderr
    for name in COMMANDS:
        assert name in result.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_is_hydras_with_groups(command):
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"launcher {command}" in result.stdout
    for group in ("storage", "dataset", "split", "cluster", "transform", "loader"):
        assert f"{group}:" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["prepare", "--help"], ["verify", "--help"]])
def test_help_does_not_import_torch(args):
    code = (
        "import sys\nfrom launcher.__main__ import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'submitit' not in sys.modules, 'submitit imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_info_works(tmp_path):
    result = cli("prepare", "--info", "searchpath", cwd=tmp_path)
    assert result.returncode == 0 and "pkg://launcher.conf" in result.stdout


def test_console_script_equals_module(tmp_path):
    import shutil

    exe = shutil.which("launcher")
    assert exe, "the `launcher` console script is not installed"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == cli("--help").stdout


@pytest.mark.parametrize(
    "line,expected",
    [
        ("launcher pre", "prepare"),
        ("launcher prepare clu", "cluster="),
        ("launcher prepare cluster=", "cluster=slurm"),
        ("python -m launcher verify verify.le", "verify.level="),
    ],
)
def test_tab_completion(line, expected):
    result = cli("-sc", "query=bash", env={"COMP_LINE": line})
    assert result.returncode == 0 and expected in result.stdout.split(), result.stdout + result.stderr


def test_tab_completion_install_script():
    result = cli("-sc", "install=bash")
    assert result.returncode == 0 and "complete -p launcher" in result.stdout
