"""Every option of every config group composes; wrong overrides fail at compose time."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from launcher import compose_config
from launcher.cli.commands import COMMANDS
from launcher.config import GROUP_SCHEMAS

from conftest import REPO, cli

OPTIONS = [(group, path.stem) for group in GROUP_SCHEMAS for path in sorted((REPO / "conf" / group).glob("*.yaml"))]
NEEDS_ROOT = {"lustre", "nfs"}


def test_every_group_has_options():
    groups = {group for group, _ in OPTIONS}
    assert groups == set(GROUP_SCHEMAS)
    assert {"local", "lustre", "nfs", "scratch"} <= {o for g, o in OPTIONS if g == "storage"}
    assert {"debug", "local", "slurm"} <= {o for g, o in OPTIONS if g == "cluster"}
    assert {"standard", "randaugment", "autoaugment", "trivialaugment", "none"} <= {
        o for g, o in OPTIONS if g == "transform"
    }


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option):
    overrides = [f"{group}={option}"]
    if group == "storage" and option in NEEDS_ROOT:
        overrides.append("storage.root=/lustre/imagenet")
    cfg = compose_config("prepare", overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "cluster":  # cluster.name is the job name, as in submitit; the choice is the executor
        assert resolved[group]["executor"] == option and resolved[group]["name"] is None
    else:
        assert resolved[group]["name"] == option


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_composes(command):
    cfg = compose_config(command)
    assert cfg.command == command
    for group in GROUP_SCHEMAS:
        assert group in cfg


def test_every_path_comes_from_storage():
    cfg = compose_config("prepare", ["storage=lustre", "storage.root=/lustre/x"])
    s = OmegaConf.to_container(cfg.storage, resolve=True)
    assert s["archive_dir"] == "/lustre/x" and s["state_dir"] == "/lustre/x/.launcher"
    assert s["log_dir"].startswith("/lustre/x/")
    verify = compose_config("verify", ["storage=nfs", "storage.root=/nfs/y"])
    assert OmegaConf.to_container(verify.verify, resolve=True)["report"].startswith("/nfs/y/")


def test_local_storage_follows_environment(monkeypatch):
    monkeypatch.setenv("LAUNCHER_DATA", "/somewhere")
    cfg = compose_config("prepare")
    assert cfg.storage.root == "/somewhere/imagenet" and cfg.storage.archive_dir == "/somewhere/archives"


def test_scratch_prefers_slurm_tmpdir(monkeypatch):
    monkeypatch.setenv("TMPDIR", "/tmp/t")
    assert compose_config("prepare", ["storage=scratch"]).storage.root == "/tmp/t/launcher/imagenet"
    monkeypatch.setenv("SLURM_TMPDIR", "/local/job")
    assert compose_config("prepare", ["storage=scratch"]).storage.root == "/local/job/launcher/imagenet"


def test_lustre_root_is_mandatory():
    cfg = compose_config("prepare", ["storage=lustre"])
    with pytest.raises(Exception, match="root"):
        OmegaConf.to_container(cfg.storage, resolve=True, throw_on_missing=True)


def test_dataset_facts_are_data():
    d = compose_config("prepare").dataset
    assert d.archives.devkit.md5 == "fa75699e90414af021442c21a62c3abf"
    assert d.archives.train.file == "ILSVRC2012_img_train.tar"
    assert (d.expected.train, d.expected.val, d.expected.classes) == (1281167, 50000, 1000)


@pytest.mark.parametrize(
    "override",
    ["cluster.timeout_min=soon", "storage.rooot=/x", "+loader.batchsize=3", "split.splits=7", "prepare.force=maybe"],
)
def test_wrong_override_fails_at_compose(override):
    with pytest.raises(ConfigCompositionException):
        compose_config("prepare", [override])


def test_unknown_group_option_lists_choices():
    with pytest.raises(MissingConfigException, match="debug"):
        compose_config("prepare", ["cluster=nope"])


def test_cli_unknown_option_lists_valid_ones(tmp_path):
    result = cli("prepare", "cluster.partitio=gpu", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown option cluster.partitio" in result.stderr and "partition" in result.stderr


def test_cli_cfg_job_equals_compose_config(tmp_path):
    overrides = ["cluster=slurm", "split=val", "cluster.partition=gpu"]
    result = cli("prepare", *overrides, "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    composed = OmegaConf.to_container(compose_config("prepare", overrides))
    assert printed == composed


def test_cli_multirun_sweeps(tmp_path):
    result = cli("prepare", "-m", "split=train,val", "prepare.dry_run=true", "cluster=debug", cwd=tmp_path)
    # no archives: each run of the sweep fails with the missing-archive message, and the sweep runs both
    assert result.returncode == 1
    assert result.stderr.count("is not in") == 2
    assert "#0 : split=train" in result.stdout and "#1 : split=val" in result.stdout
