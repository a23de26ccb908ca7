"""State read back without doubt: every state file launcher reads back may be torn by a crash or
garbled; a damaged one is skipped and reported with its path, never a traceback, and the work it
recorded counts as not done (it runs again)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from launcher.core.layout import read_json, read_lines

from conftest import cli, dataset_overrides, launch, storage_overrides, tree_bytes

STATE_FILES = [
    "ledger.jsonl",
    "devkit.json",
    "identity.json",
    "index-train.json",
    "index-val.json",
    "units/meta.json",
    "units/train-0000-of-0002.json",
    "units/val-0000-of-0001.json",
    "complete-train.json",
    "complete-val.json",
    "manifest-train.json",
]
GARBLED = ["ledger.jsonl", "units/train-0000-of-0002.json", "manifest-train.json"]


def prepare_args(result, root: Path) -> list[str]:
    return [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]


@pytest.fixture(scope="module")
def clean_root(archives, tmp_path_factory) -> Path:
    """A root prepared and verified once; each test damages a copy."""
    result = archives("tiny")
    root = tmp_path_factory.mktemp("state") / "root"
    args = prepare_args(result, root)
    assert cli("prepare", *args, "prepare.train_shards=2").returncode == 0
    assert cli("verify", *args, "verify.level=exists").returncode == 0
    return root


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "torn":  # a crash mid-append or mid-write: the end is missing
        path.write_bytes(data[:-20])
    else:  # garbled: bytes in the middle overwritten
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\x00\xff garbled \x00" + data[middle + 12 :])


def run_all(args: list[str], capsys) -> tuple[dict[str, int], str]:
    """prepare, status, verify in this process (as the CLI runs them after composing)."""
    codes = {
        "prepare": launch("prepare", [*args, "prepare.train_shards=2"]),
        "status": launch("status", [a for a in args if a.startswith("storage.")]),
        "verify": launch("verify", [*args, "verify.level=exists"]),
    }
    out = capsys.readouterr()
    return codes, out.out + out.err


@pytest.mark.parametrize("name,how", [(n, "torn") for n in STATE_FILES] + [(n, "garbled") for n in GARBLED])
def test_damaged_state_file_is_skipped_and_reported(name, how, clean_root, archives, tmp_path, capsys):
    """Damage one state file after a real run (and forget that val is complete, so that prepare
    plans again and reads what it recorded): prepare, status and verify skip it naming the path,
    redo what it recorded, and end with the root a clean run leaves."""
    root = tmp_path / "root"
    shutil.copytree(clean_root, root, symlinks=True)
    (path,) = (root / ".launcher").glob(name)
    if name != "complete-val.json":
        (root / ".launcher" / "complete-val.json").unlink()
    damage(path, how)
    codes, said = run_all(prepare_args(archives("tiny"), root), capsys)
    assert codes == {"prepare": 0, "status": 0, "verify": 0}, said
    assert re.search(rf"skipped a damaged (line \d+ of|record) {re.escape(str(path))}", said), said
    assert tree_bytes(root) == tree_bytes(clean_root)
    for split in ("train", "val"):
        assert json.loads((root / ".launcher" / f"complete-{split}.json").read_text())["images"] > 0


def test_damaged_state_through_the_cli_is_one_line(clean_root, archives, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(clean_root, root, symlinks=True)
    unit = root / ".launcher" / "units" / "train-0000-of-0002.json"
    damage(unit, "torn")
    (root / ".launcher" / "complete-train.json").unlink()
    run = cli("prepare", *prepare_args(archives("tiny"), root), "prepare.train_shards=2")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert [line for line in run.stderr.splitlines() if "damaged" in line] == [
        f"launcher: skipped a damaged record {unit} (JSONDecodeError: "
        + run.stderr.split(f"{unit} (JSONDecodeError: ", 1)[1].split("\n", 1)[0]
    ]
    assert json.loads(unit.read_text())["unit"] == "train-0000-of-0002"  # the unit ran again


def test_torn_ledger_line_keeps_the_entries_around_it(clean_root, archives, tmp_path, capsys):
    """A crash mid-append leaves half a line; the next submission still lands on a line of its own."""
    root = tmp_path / "root"
    shutil.copytree(clean_root, root, symlinks=True)
    ledger = root / ".launcher" / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    ledger.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    shutil.rmtree(root / "val")
    (root / ".launcher" / "complete-val.json").unlink()
    for record in (root / ".launcher" / "units").glob("val-*.json"):
        record.unlink()
    assert cli("prepare", *prepare_args(archives("tiny"), root), "prepare.train_shards=2").returncode == 0
    entries = read_lines(ledger)
    assert [e["command"] for e in entries] == ["prepare", "prepare"]
    assert f"skipped a damaged line 2 of {ledger}" in capsys.readouterr().err


def test_read_json_reports_each_damaged_file_once(tmp_path, capsys):
    path = tmp_path / "record.json"
    for content, expected in [(b'{"a": 1}', {"a": 1}), (b'{"a": ', None), (b"[1, 2]", None), (b"\xff\xfe", None)]:
        path.write_bytes(content)
        assert read_json(path) == expected
    assert read_json(tmp_path / "missing.json", default={}) == {}
    err = capsys.readouterr().err
    assert err.count(f"skipped a damaged record {path}") == 3 and "Traceback" not in err
