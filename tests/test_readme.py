"""The README's two set-up commands are what CI and users run, and the first one, run as written in a
fresh clone, installs the package and runs the demo with the crop decoder it compiled."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from conftest import REPO
from venvs import clean_env, clone_head, make_venv

FIRST_COMMAND = "pip install . && launcher demo"
CROP_DECODER = "decode: only each JPEG's random crop (launcher.data._jpeg)"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up on a fresh clone", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0] == FIRST_COMMAND


def test_ci_runs_the_readmes_test_command():
    ci = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [readme_commands()[1]]


@pytest.mark.slow
def test_the_first_command_in_a_fresh_clone_runs_the_crop_decoder(tmp_path):
    """In a fresh clone, in a fresh venv (not the test run's own environment, which `pip install .`
    would replace; torch borrowed, see tests/venvs.py), the README's first command as written."""
    clone = clone_head(REPO, tmp_path / "clone")
    bin_dir = make_venv(tmp_path / "venv")
    start = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", readme_commands()[0]],
        cwd=clone,
        env=clean_env(bin_dir),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert CROP_DECODER in result.stdout, result.stdout[-3000:]
    print(f"the README's first command: {time.monotonic() - start:.1f}s")
