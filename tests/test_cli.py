"""The command line: help, unknown commands, Hydra's own flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.cli.commands import COMMANDS

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


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_starts_with_what_it_does_and_its_options(command):
    from launcher.config.store import own_options

    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"launcher {command}: {COMMANDS[command].summary}"
    head = result.stdout.split("== Config ==")[0]
    for key, _, doc in own_options(command):
        assert f"  {key}=" in head and doc in head, key
    assert "schema/" not in result.stdout and "powered by Hydra" not in result.stdout


@pytest.mark.parametrize("line", ["launcher prepare ", "launcher verify s", "python -m launcher prepare "])
def test_completion_hides_schema_groups_and_command(line):
    result = cli("-sc", "query=bash", env={"COMP_LINE": line})
    words = result.stdout.split()
    assert result.returncode == 0 and words, result.stderr
    assert not [w for w in words if w.startswith(("schema/", "command="))], words


@pytest.mark.parametrize("program", ["launcher", "python -m launcher"])
def test_installed_completion_answers_for_launcher_and_python_m(program):
    """The script of `-sc install=bash`, in bash, completes both spellings of the command."""
    here = f"{sys.executable} -m launcher" if program.startswith("python") else "launcher"
    shim = f'launcher() {{ "{sys.executable}" -m launcher "$@"; }}; ' if program == "launcher" else ""
    line = f"{here} prepare clu"
    script = (
        f'{shim}eval "$({sys.executable} -m launcher -sc install=bash)"; '
        f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({line}); '
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); "
        "_launcher_completion; echo ${COMPREPLY[@]}"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert "cluster=" in result.stdout.split(), result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--help"], ["prepare", "--help"]])
def test_help_into_a_closed_pipe_is_quiet(args):
    """`launcher prepare --help | head`: the reader leaves early; no BrokenPipeError."""
    command = " ".join([sys.executable, "-m", "launcher", *args])
    result = subprocess.run(
        ["bash", "-c", f"{command} | true; echo ${{PIPESTATUS[0]}}"], capture_output=True, text=True
    )
    assert "BrokenPipeError" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == "0"
