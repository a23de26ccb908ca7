"""Both datasets through the same commands, as a user types them: `launcher synth`, the prepare line it
prints (pasted), then verify, status, bench and stage with no `dataset=` (the root remembers it); the
two roots side by side; an adapter that lacks a command says so in one line; generic code asks the
adapter and never names a dataset."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli, launch

pytestmark = pytest.mark.torch

SYNTH = {
    "imagenet": ["synth.classes=4", "synth.train_min=3", "synth.train_max=4", "synth.val_per_class=2"],
    "places365": ["dataset=places365", "synth.classes=4", "synth.train_max=3", "synth.val_per_class=2"],
}
SMALL = ["loader.batch_size=4", "loader.num_workers=0", "transform.train_crop_size=16", "transform.eval_crop_size=16"]
LAUNCHER = Path(__file__).resolve().parent.parent / "launcher"


def synth_and_prepare(dataset: str, base: Path) -> Path:
    """synth's archives into base/archives, then its printed prepare line (cluster=local, 3 train shards)."""
    archive_dir, root = base / "archives", base / "root"
    base.mkdir()
    made = cli("synth", f"storage.archive_dir={archive_dir}", *SYNTH[dataset], cwd=base)
    assert made.returncode == 0, made.stderr
    printed = shlex.split(made.stdout.strip().splitlines()[-1])
    assert printed[:2] == ["launcher", "prepare"], printed
    run = cli(*printed[1:], f"storage.root={root}", "cluster=local", "prepare.train_shards=3", cwd=base)
    assert run.returncode == 0, run.stdout + run.stderr
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("datasets")
    return {name: synth_and_prepare(name, base / name) for name in SYNTH}


@pytest.mark.parametrize("dataset", sorted(SYNTH))
def test_every_command_runs_on_each_dataset_without_naming_it_again(roots, dataset, tmp_path):
    root = roots[dataset]
    where = [f"storage.root={root}", f"storage.archive_dir={root.parent / 'archives'}"]
    for level in ("exists", "decode"):
        verified = cli("verify", *where, f"verify.level={level}", "cluster=local", cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    status = cli("status", *where, cwd=tmp_path)
    assert status.returncode == 0 and "complete" in status.stdout, status.stdout + status.stderr
    for split in ("train", "val"):
        bench = cli("bench", f"storage.root={root}", *SMALL, f"bench.split={split}", "cluster=debug", cwd=tmp_path)
        assert bench.returncode == 0 and "FAILED" not in bench.stdout, bench.stdout + bench.stderr
    staged = tmp_path / "node-local"
    copy = cli("stage", f"stage.source={root}", f"storage.root={staged}", *where[1:], cwd=tmp_path)
    assert copy.returncode == 0, copy.stdout + copy.stderr
    assert cli("verify", f"storage.root={staged}", "verify.level=exists", cwd=tmp_path).returncode == 0


def test_the_two_roots_hold_their_own_torchvision_layouts(roots):
    ours = {".launcher", ".launcher-root.json"}  # the state folder and the root's own id
    names = {name: {p.name for p in root.iterdir()} - ours for name, root in roots.items()}
    assert names["imagenet"] == {"meta.bin", "train", "val"}
    assert names["places365"] == {
        "categories_places365.txt",
        "places365_train_standard.txt",
        "places365_val.txt",
        "data_large_standard",
        "val_large",
    }


def test_a_command_an_adapter_lacks_is_one_line_with_exit_4(roots, monkeypatch, capsys):
    from launcher.datasets import adapter_of

    adapter = adapter_of("places365")
    monkeypatch.setattr(adapter, "PIPELINE", ("prepare", "status"))
    assert launch("bench", [f"storage.root={roots['places365']}", "dataset=places365_synthetic", *SMALL]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "supports prepare, status" in err[0], err
    assert "launcher/datasets/places365/adapter.py" in err[0]


def code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (messages and values the code uses)."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_generic_code_never_names_the_second_dataset():
    """Outside launcher/datasets/, no code value names Places365 or its files: what it needs comes from
    the adapter (a dataset-specific branch there would be a third dataset's edit)."""
    found = [
        f"{path.relative_to(LAUNCHER.parent)}:{line}: {value!r}"
        for path in sorted(LAUNCHER.rglob("*.py"))
        if "datasets" not in path.relative_to(LAUNCHER).parts
        for line, value in code_strings(path)
        if re.search(r"places365|categories_|data_large|val_large", value, re.I)
    ]
    assert not found, "\n".join(found)


def test_the_default_root_is_named_after_the_dataset_and_the_printed_status_finds_it(tmp_path):
    """With the default storage (./data), Places365 goes to data/places365 beside data/imagenet, and the
    `follow progress with:` line prepare prints, pasted, shows that root (it names the dataset choice)."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k != "LAUNCHER_DATA"}
    empty = cli("synth", *SYNTH["places365"], cwd=tmp_path, env={"LAUNCHER_DATA": ""})
    assert empty.returncode == 2 and "LAUNCHER_DATA" in empty.stderr and len(empty.stderr.splitlines()) == 1
    made = subprocess.run([sys.executable, "-m", "launcher", "synth", *SYNTH["places365"]], **run_in(tmp_path, env))
    assert made.returncode == 0, made.stderr
    printed = shlex.split(made.stdout.strip().splitlines()[-1])
    run = subprocess.run(
        [sys.executable, "-m", "launcher", *printed[1:], "cluster=local", "wait=false"], **run_in(tmp_path, env)
    )
    assert run.returncode == 0, run.stdout + run.stderr
    follow = next(line for line in run.stdout.splitlines() if line.startswith("follow progress with: "))
    pasted = shlex.split(follow.removeprefix("follow progress with: "))
    assert pasted[:2] == ["launcher", "status"] and "dataset=places365_synthetic" in pasted, pasted
    deadline = time.time() + 120
    while True:
        status = subprocess.run([sys.executable, "-m", "launcher", *pasted[1:]], **run_in(tmp_path, env))
        if not re.search(r"running|queued", status.stdout) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert status.returncode == 0, status.stdout + status.stderr
    assert (
        f"root {tmp_path / 'data' / 'places365'} (dataset=places365_synthetic, storage.format=folder)" in status.stdout
    ), status.stdout
    assert not (tmp_path / "data" / "imagenet").exists()
    # the finalize units of a run that did not wait are left behind: status says so and how to finish
    assert "not submitted and nothing left running: finalize-train, finalize-val" in status.stdout, status.stdout
    finish = shlex.split(status.stdout.split("finish with:\n", 1)[1].splitlines()[0])
    assert subprocess.run([sys.executable, "-m", "launcher", *finish[1:]], **run_in(tmp_path, env)).returncode == 0
    done = subprocess.run([sys.executable, "-m", "launcher", *pasted[1:]], **run_in(tmp_path, env))
    assert "train   4/4 complete" in done.stdout and "not submitted" not in done.stdout, done.stdout


def run_in(cwd: Path, env: dict) -> dict:
    return {"cwd": cwd, "env": env, "capture_output": True, "text": True, "timeout": 300}
