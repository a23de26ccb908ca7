"""The Hydra SearchPathPlugin: another repo's training app composes launcher's groups from its own
config.yaml (no copy of ours), overrides them on its command line and builds a loader; in this
dev install and from a wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import test_data

from conftest import REPO

prepared = test_data.prepared  # the session fixture of prepared roots, shared

CONFIG = """\
defaults:
  - storage: local
  - dataset: synthetic
  - split: train
  - transform: standard
  - loader: default
  - _self_

epochs: 1
"""

APP = """\
import sys
if {isolate}:  # only the wheel's copy of launcher: drop the checkout the dev install puts on sys.path
    sys.path[:] = [p for p in sys.path if p not in ({repo!r}, "")]
import hydra
import hydra_plugins.launcher_searchpath as plugin
import launcher
from launcher.data import build_loader


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    loader = build_loader(cfg, "train")
    images, targets = next(iter(loader))
    print("modules", launcher.__file__, plugin.__file__)
    print("batch", tuple(images.shape), str(images.dtype), cfg.transform.name, len(loader.dataset))


main()
"""


def make_app(folder: Path, isolate: bool) -> Path:
    (folder / "conf").mkdir(parents=True)
    (folder / "conf" / "config.yaml").write_text(CONFIG)
    (folder / "train.py").write_text(APP.format(isolate=isolate, repo=str(REPO)))
    return folder


def run_app(app: Path, root: Path, env: dict | None = None, *extra: str) -> subprocess.CompletedProcess:
    args = [
        f"storage.root={root}",
        "transform=none",
        "transform.train_crop_size=40",
        "loader.batch_size=3",
        "loader.num_workers=0",
        f"hydra.run.dir={app / 'outputs'}",
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=app, env=env, capture_output=True, text=True, timeout=120
    )


def test_app_composes_our_groups_in_the_dev_install(prepared, tmp_path):
    app = make_app(tmp_path / "app", isolate=False)
    result = run_app(app, prepared())
    assert result.returncode == 0, result.stderr
    assert "batch (3, 3, 40, 40) torch.float32 none" in result.stdout
    info = subprocess.run(
        [sys.executable, "train.py", "--info", "searchpath"], cwd=app, capture_output=True, text=True, timeout=60
    )
    assert "pkg://launcher.conf" in info.stdout and "launcher" in info.stdout
    assert "file://" + str(app / "conf") in info.stdout  # the app's own folder comes first
    assert info.stdout.index(str(app / "conf")) < info.stdout.index("pkg://launcher.conf")


def test_plugin_is_discovered_from_a_wheel(prepared, tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("launcher", "conf", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("launcher-*.whl")
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(unzipped)
    assert "hydra_plugins/launcher_searchpath/__init__.py" in names
    assert "launcher/conf/transform/standard.yaml" in names and "hydra_plugins/__init__.py" not in names
    app = make_app(tmp_path / "app", isolate=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(unzipped), "HOME": str(tmp_path)}
    result = run_app(app, prepared(), env, "transform=trivialaugment")
    assert result.returncode == 0, result.stderr
    assert f"modules {unzipped}/launcher/__init__.py {unzipped}/hydra_plugins/launcher_searchpath/__init__.py" in (
        result.stdout
    )
    assert "batch (3, 3, 40, 40) torch.float32 trivialaugment" in result.stdout
