"""The cluster schema: a base plus one subclass per backend, as hydra-submitit-launcher's; the
stages get the typed object (OmegaConf.to_object), and an option of another backend is one line."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from launcher import compose_config
from launcher.cli.requests import cluster_of
from launcher.config.schema import ClusterConfig, DebugClusterConfig, LocalClusterConfig, SlurmClusterConfig
from launcher.core import backends

from conftest import cli

CHOICES = {"debug": DebugClusterConfig, "local": LocalClusterConfig, "slurm": SlurmClusterConfig}


@pytest.mark.parametrize("choice", list(CHOICES))
def test_each_choice_composes_to_its_backends_schema(choice):
    cfg = compose_config("prepare", [f"cluster={choice}"])
    config = OmegaConf.to_object(cfg.cluster)
    assert type(config) is CHOICES[choice] and isinstance(config, ClusterConfig)
    backend = cluster_of(cfg)
    assert backend.executor == choice and backend.config == config


def test_slurm_only_options_are_not_in_the_local_schema():
    assert not hasattr(LocalClusterConfig(), "partition") and not hasattr(DebugClusterConfig(), "workers")
    assert SlurmClusterConfig().array_parallelism == 64 and LocalClusterConfig().workers is None


def test_a_site_variant_keeps_the_slurm_schema(tmp_path, monkeypatch):
    site = tmp_path / "cluster"
    site.mkdir()
    (site / "mysite.yaml").write_text("defaults: [slurm]\npartition: cpu\n")
    monkeypatch.setenv("LAUNCHER_CONFIG_DIR", str(tmp_path))
    config = OmegaConf.to_object(compose_config("prepare", ["cluster=mysite"]).cluster)
    assert type(config) is SlurmClusterConfig and config.partition == "cpu" and config.mem_gb == 4


@pytest.mark.parametrize(
    "args,expected",
    [
        (["cluster=local", "cluster.partition=cpu"], ["cluster.partition is an option of cluster=slurm", "workers"]),
        (["cluster=debug", "cluster.workers=2"], ["cluster.workers is an option of cluster=local", "poll_s"]),
    ],
)
def test_an_option_of_another_backend_is_one_line_and_exit_2(args, expected, tmp_path):
    run = cli("prepare", *args, cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert all(e in run.stderr for e in expected), run.stderr


def test_backends_take_the_parameters_of_their_schema():
    slurm = backends.backend_of(SlurmClusterConfig(partition="cpu", array_parallelism=4, mem_gb=2))
    assert slurm.parameters("x") == {
        "timeout_min": 60,
        "cpus_per_task": 1,
        "mem_gb": 2,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "name": "x",
        "slurm_partition": "cpu",
        "slurm_array_parallelism": 4,
        "slurm_signal_delay_s": 90,
    }
    params = slurm.parameters("x", "afterok:5")
    assert params["slurm_dependency"] == "afterok:5"
    assert params["slurm_additional_parameters"] == {"kill-on-invalid-dep": "yes"}
    local = backends.backend_of(LocalClusterConfig(setup=["true"]))
    assert local.parameters("y")["local_setup"] == ["true"]
    assert not any(k.startswith("slurm_") for k in local.parameters("y"))
