"""Reusing launcher's configs from another training repo: opt-in (`hydra.searchpath:
[pkg://launcher.conf]`), nothing of ours in an app that did not ask, the groups at the root and
nested under `data:` (lightning-hydra-template style), `launcher.training_config` standalone and
inside a running `@hydra.main` app, per-site settings from `$LAUNCHER_CONFIG_DIR`; in this dev
install and from a wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import test_data
from omegaconf import OmegaConf

import launcher
from launcher.data import build_loader

from conftest import REPO

prepared = test_data.prepared  # the session fixture of prepared roots, shared

ROOT_CONFIG = """\
defaults:
  - storage: local
  - dataset: synthetic
  - split: train
  - transform: standard
  - loader: default
  - _self_

hydra:
  searchpath:
    - pkg://launcher.conf
epochs: 1
"""

# lightning-hydra-template: configs/train.yaml pulls `data: imagenet`; the data node holds our groups
NESTED_CONFIG = """\
defaults:
  - data: imagenet
  - optional local: default
  - _self_

hydra:
  searchpath:
    - pkg://launcher.conf
"""
NESTED_DATA = """\
_target_: launcher.lightning.ImageNetDataModule
_recursive_: false
defaults:
  - /storage@storage: local
  - /dataset@dataset: synthetic
  - /transform@transform: standard
  - /loader@loader: default
  - _self_

batch_note: per rank
"""
APP_LOCAL = "# @package _global_\nmine: from the app's own local group\n"

APP = """\
import sys
if {isolate}:  # only the wheel's copy of launcher: drop the checkout the dev install puts on sys.path
    sys.path[:] = [p for p in sys.path if p not in ({repo!r}, "")]
import hydra
from hydra.core.hydra_config import HydraConfig
import launcher
from launcher.data import build_loader


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    node = cfg.data if "data" in cfg else cfg
    loader = build_loader(node, "train")
    images, targets = next(iter(loader))
    print("modules", launcher.__file__)
    print("batch", tuple(images.shape), str(images.dtype), node.transform.name, len(loader.dataset))
    if {inner}:  # launcher's own configs, composed inside this running app
        job = HydraConfig.get().job.name
        ours = launcher.training_config(["storage.root=" + node.storage.root, "loader.batch_size=3"])
        bench = launcher.compose_config("bench", ["storage.root=" + node.storage.root])
        again = hydra.compose(config_name="config")  # the app's own Hydra is back
        print("inner", ours.command, ours.loader.batch_size, bench.command, HydraConfig.get().job.name == job,
              "data" in again or "storage" in again, cfg.get("mine"))


main()
"""


def make_app(folder: Path, config: str, isolate: bool = False, inner: bool = False, files: dict | None = None) -> Path:
    (folder / "conf").mkdir(parents=True)
    (folder / "conf" / "config.yaml").write_text(config)
    for name, text in (files or {}).items():
        (folder / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "conf" / name).write_text(text)
    (folder / "train.py").write_text(APP.format(isolate=isolate, repo=str(REPO), inner=inner))
    return folder


def isolated(repo: Path = REPO) -> tuple[list[str], dict]:
    """python without site (.pth files: the dev install's checkout), with only `repo` and the
    installed packages on its path: what an environment with this launcher installed sees."""
    paths = [str(repo), *dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    return [sys.executable, "-S"], {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(paths), "HOME": "/nonexistent"}


def run_app(app: Path, *args: str, python: list[str] | None = None, env: dict | None = None):
    command = [*(python or [sys.executable]), "train.py", f"hydra.run.dir={app / 'outputs'}", *args]
    return subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=300)


def loader_args(root: Path, prefix: str = "") -> list[str]:
    """Overrides of our options; nested, a group's choice is `transform@data.transform=none`."""
    return [
        f"{prefix}storage.root={root}",
        f"transform@{prefix}transform=none" if prefix else "transform=none",
        f"{prefix}transform.train_crop_size=40",
        f"{prefix}loader.batch_size=3",
        f"{prefix}loader.num_workers=0",
    ]


def test_an_app_that_did_not_ask_sees_nothing_of_ours(tmp_path):
    """No plugin: an unrelated Hydra app's --help lists none of our groups or schemas, and its own
    `dataset=imagenet` is not silently ours."""
    app = make_app(
        tmp_path / "app", "defaults:\n  - dataset: mine\n  - _self_\n", files={"dataset/mine.yaml": "x: 1\n"}
    )
    python, env = isolated()
    helped = run_app(app, "--help", python=python, env=env)
    assert helped.returncode == 0, helped.stderr
    for ours in ("schema/", "storage:", "transform:", "loader:", "launcher_site", "imagenet"):
        assert ours not in helped.stdout, ours
    composed = run_app(app, "dataset=imagenet", "--cfg", "job", python=python, env=env)
    assert composed.returncode != 0 and "Could not find 'dataset/imagenet'" in composed.stderr


def test_opted_in_app_composes_our_groups_and_training_config_inside_it(prepared, tmp_path):
    """hydra.searchpath: [pkg://launcher.conf] at the root of the app's config: our groups compose
    and override from its command line (its own folder first); inside the running app
    launcher.training_config and compose_config work and leave the app's Hydra as it was."""
    app = make_app(tmp_path / "app", ROOT_CONFIG, inner=True)
    python, env = isolated()
    result = run_app(app, *loader_args(prepared()), python=python, env=env)
    assert result.returncode == 0, result.stderr
    assert "batch (3, 3, 40, 40) torch.float32 none" in result.stdout
    assert "inner training 3 bench True True None" in result.stdout
    info = run_app(app, "--info", "searchpath", python=python, env=env)
    assert info.stdout.index(str(app / "conf")) < info.stdout.index("pkg://launcher.conf")


def test_groups_compose_nested_under_data(prepared, tmp_path):
    """lightning-hydra-template style: our groups under `data:` (relative interpolations), the app's
    own `local` group untouched by ours."""
    files = {"data/imagenet.yaml": NESTED_DATA, "local/default.yaml": APP_LOCAL}
    app = make_app(tmp_path / "app", NESTED_CONFIG, inner=True, files=files)
    python, env = isolated()
    result = run_app(app, *loader_args(prepared(), "data."), python=python, env=env)
    assert result.returncode == 0, result.stderr
    assert "batch (3, 3, 40, 40) torch.float32 none" in result.stdout
    assert "inner training 3 bench True True from the app's own local group" in result.stdout


def test_training_config_at_the_root_and_nested(prepared):
    root = prepared()
    cfg = launcher.training_config([f"storage.root={root}", "loader.batch_size=2", "loader.num_workers=0"])
    assert cfg.command == "training" and cfg.loader.dataset.root == str(root)
    assert len(next(iter(build_loader(cfg, "train")))[1]) == 2
    nested = OmegaConf.create({"data": OmegaConf.to_container(cfg), "trainer": {"max_epochs": 1}})
    assert nested.data.loader.dataset.root == str(root) and nested.data.loader.dataset.state_dir == str(
        root / ".launcher"
    )


def test_site_settings_from_launcher_config_dir(tmp_path, monkeypatch):
    """$LAUNCHER_CONFIG_DIR: a site's own options (cluster/mysite.yaml) and the user's defaults
    (launcher_site/default.yaml), for compose_config, training_config and the CLI; our group is
    launcher_site, not lightning-hydra-template's `local`."""
    site = tmp_path / "site"
    (site / "cluster").mkdir(parents=True)
    (site / "launcher_site").mkdir()
    (site / "cluster" / "mysite.yaml").write_text("defaults: [slurm]\n\nname: mysite\npartition: cpu\n")
    (site / "launcher_site" / "default.yaml").write_text("# @package _global_\nstorage:\n  base: /site/data\n")
    assert not (REPO / "conf" / "local").exists() and (REPO / "conf" / "launcher_site").is_dir()
    monkeypatch.setenv("LAUNCHER_CONFIG_DIR", str(site))
    cfg = launcher.compose_config("prepare", ["cluster=mysite"])
    assert (cfg.cluster.name, cfg.cluster.partition, cfg.cluster.executor) == ("mysite", "cpu", "slurm")
    assert cfg.storage.root == "/site/data/imagenet"
    assert launcher.training_config().storage.root == "/site/data/imagenet"
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "prepare", "cluster=mysite", "--cfg", "job", "--resolve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "partition: cpu" in result.stdout and "root: /site/data/imagenet" in result.stdout
    monkeypatch.delenv("LAUNCHER_CONFIG_DIR")
    assert launcher.compose_config("prepare").storage.root != "/site/data/imagenet"


def test_opt_in_works_from_a_wheel(prepared, tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("launcher", "conf"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("imagenet_slurm_launcher-*.whl")
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(unzipped)
    assert "launcher/conf/transform/standard.yaml" in names and "launcher/conf/training.yaml" in names
    assert not any(n.startswith("hydra_plugins/") for n in names)
    app = make_app(tmp_path / "app", ROOT_CONFIG, isolate=True)
    python, env = isolated(unzipped)
    result = run_app(app, *loader_args(prepared()), "transform=trivialaugment", python=python, env=env)
    assert result.returncode == 0, result.stderr
    assert f"modules {unzipped}/launcher/__init__.py" in result.stdout
    assert "batch (3, 3, 40, 40) torch.float32 trivialaugment" in result.stdout


@pytest.mark.parametrize("bad", ["loader.batchsize=3", "storage.rooot=/x"])
def test_training_config_refuses_unknown_options(bad):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="unknown option"):
        launcher.training_config([bad])
