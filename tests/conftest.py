"""Shared fixtures: synthetic archives built once per session, torchvision's own preparation of them
(the oracle), and helpers that run the launcher in-process or as the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import compose_config
from launcher.cli.commands import run_command
from launcher.datasets.imagenet.synth import SynthSpec, synthesize

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "devkit": "ILSVRC2012_devkit_t12.tar.gz",
    "train": "ILSVRC2012_img_train.tar",
    "val": "ILSVRC2012_img_val.tar",
}
META = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
SHAPES = {
    "small": SynthSpec(classes=10, train_min=4, train_max=8, val_per_class=3, seed=0),
    "tiny": SynthSpec(classes=3, train_min=1, train_max=3, val_per_class=2, nonleaf=2, seed=1),
    "uneven": SynthSpec(classes=24, train_min=1, train_max=15, val_per_class=2, nonleaf=0, seed=7, max_side=48),
}


# The preparation side (prepare, verify, status, synth) runs without torch: CI runs the tests of these
# modules under Python 3.10-3.13 as well (.ci/pythons, `-m "notorch and not torch"`). A test in them
# that needs torch anyway (the torchvision oracle, or a torch import of its own) carries `torch`.
NOTORCH_MODULES = {
    "test_cli",
    "test_cluster",
    "test_config",
    "test_engine",
    "test_prepare",
    "test_runner",
    "test_safefs",
    "test_synth",
    "test_tarscan",
    "test_verify",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.stem in NOTORCH_MODULES:
            item.add_marker(pytest.mark.notorch)
        if "oracle" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)


def make_archives(directory: Path, spec: SynthSpec):
    return synthesize(directory, spec, FILES, META, GROUND_TRUTH)


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    """name -> SynthResult of synthetic archives of each shape (built once)."""
    cache = {}

    def get(name: str = "small"):
        if name not in cache:
            cache[name] = make_archives(tmp_path_factory.mktemp(f"archives-{name}"), SHAPES[name])
        return cache[name]

    return get


def torchvision_prepare(archive_dir: Path, root: Path) -> Path:
    """What torchvision's own parse_devkit/train/val_archive make of the same archives."""
    import torchvision.datasets.imagenet as tv

    root.mkdir(parents=True)
    for name in FILES.values():
        shutil.copy(archive_dir / name, root / name)
    saved = dict(tv.ARCHIVE_META)
    try:
        for key, (name, _) in saved.items():
            tv.ARCHIVE_META[key] = (name, hashlib.md5((root / name).read_bytes()).hexdigest())
        tv.parse_devkit_archive(str(root))
        tv.parse_train_archive(str(root))
        tv.parse_val_archive(str(root))
    finally:
        tv.ARCHIVE_META.clear()
        tv.ARCHIVE_META.update(saved)
    return root


@pytest.fixture(scope="session")
def oracle(archives, tmp_path_factory):
    """name -> torchvision-prepared root of that shape's archives (built once)."""
    cache = {}

    def get(name: str = "small") -> Path:
        if name not in cache:
            cache[name] = torchvision_prepare(
                archives(name).archive_dir, tmp_path_factory.mktemp(f"oracle-{name}") / "root"
            )
        return cache[name]

    return get


def storage_overrides(archive_dir: Path, root: Path) -> list[str]:
    return [f"storage.archive_dir={archive_dir}", f"storage.root={root}"]


def dataset_overrides(result) -> list[str]:
    return ["dataset=synthetic", *result.md5_overrides()]


def launch(command: str, overrides: list[str]) -> int:
    """Run a command in this process, as the CLI would after composing (no Hydra run folder)."""
    return run_command(compose_config(command, overrides))


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """`python -m launcher ...` as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree_bytes(root: Path, splits=("train", "val")) -> dict[str, bytes]:
    """relative path -> bytes of every file under root/<split>."""
    out = {}
    for split in splits:
        base = root / split
        for dirpath, _, names in os.walk(base):
            for name in names:
                path = Path(dirpath) / name
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def slurm_available() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local SLURM cluster (slurm/devcluster.sh), started if needed; under CI=true it must run."""
    if not slurm_available() and os.geteuid() == 0 and shutil.which("sbatch"):
        subprocess.run(["bash", str(REPO / "slurm" / "devcluster.sh"), "start"], check=False)
    if not slurm_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the SLURM cluster is not up: run `bash slurm/devcluster.sh up`")
        pytest.skip("no SLURM cluster here (bash slurm/devcluster.sh up starts one, as root)")
    return True


def sacct(*args: str) -> list[dict]:
    """sacct rows as dicts (JobID, JobName, State, ...)."""
    fields = "JobID,JobName%40,State,ExitCode"
    out = subprocess.run(["sacct", "-n", "-P", f"--format={fields}", *args], capture_output=True, text=True).stdout
    return [dict(zip(fields.replace("%40", "").split(","), line.split("|"))) for line in out.splitlines() if line]
