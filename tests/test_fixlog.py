"""verify.fix interrupted at each moment of a fix (after the intent is logged, after the temporary is
written, after the rename, after the manifest is updated), then run again: the originals are
recoverable, the manifest and records agree with the files, `verify level=exists` passes and prepare
is still complete. A file PIL cannot re-encode is a note naming it; the shard goes on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from test_faults import CALL, injection_keys, run_traced, target_call

from conftest import dataset_overrides, launch, storage_overrides, tree_bytes

pytestmark = pytest.mark.faults
RENAMES = "rename,renameat,renameat2"
DEBUG = ["dataset=synthetic", "cluster=debug"]
MOMENTS = {
    # name: (syscalls, the call of a traced clean fix run it is killed at)
    "after the intent is logged": ("write", r"\.fix\.part$"),
    "after the temporary is written": (RENAMES, r"\.fix\.part$"),
    "after the rename": (RENAMES, r"\.launcher/\.manifest-train\.json\.tmp$"),
    "after the manifest is updated": (RENAMES, r"\.launcher/\.complete-train\.json\.tmp$"),
}


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
    """A root prepared from the tiny archives (two odd train files verify.fix re-encodes)."""
    result = archives("tiny")
    root = tmp_path_factory.mktemp("fixlog") / "root"
    assert launch("prepare", [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), *DEBUG]) == 0
    assert [k for k in result.odd_files.values() if k in ("png", "cmyk")]
    return result, root


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def fix_args(result, root: Path, *extra: str) -> list[str]:
    return ["verify", *storage_overrides(result.archive_dir, root), *DEBUG, "verify.level=header", *extra]


@pytest.fixture(scope="module")
def clean_fix(prepared, tmp_path_factory):
    """Traces of a clean verify.fix run: per syscall set, (root, paths, strace -P keys)."""
    result, root = prepared
    base = tmp_path_factory.mktemp("fixlog-traces")
    traces = {}
    for syscalls in (RENAMES, "write"):
        copy = copy_root(root, base / syscalls.split(",")[0])
        log = base / f"{syscalls.split(',')[0]}.strace"
        run = run_traced(fix_args(result, copy, "verify.fix=true"), syscalls, log=log)
        assert run.returncode == 0, run.stderr
        calls = [m for m in map(CALL.match, log.read_text().splitlines()) if m]
        paths = [m["fd"] or os.path.join(m["dir"] or "", m["src"]) for m in calls]
        traces[syscalls] = (copy, paths, [injection_keys(m) for m in calls])
    return traces


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fix_log(root: Path) -> list[dict]:
    path = root / ".launcher" / "verify-fixes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_consistent(result, root: Path, reference: Path, capsys) -> None:
    """Records agree with the files, originals are recoverable, exists passes, prepare is complete."""
    state = root / ".launcher"
    assert launch("verify", fix_args(result, root)[1:-1] + ["verify.level=exists"]) == 0  # reconciles first
    log = fix_log(root)
    intents = [x for x in log if x["state"] == "intent"]
    closed = {(x["run"], x["path"]) for x in log if x["state"] != "intent"}
    assert all((x["run"], x["path"]) in closed for x in intents), log
    for rel in result.odd_files:  # every original byte is somewhere: in place, or kept
        original = (reference / rel).read_bytes()
        kept = [Path(x["original"]) for x in intents if x["path"] == rel]
        assert (root / rel).read_bytes() == original or any(k.read_bytes() == original for k in kept), rel
    for x in intents:
        assert md5(Path(x["original"]).read_bytes()) == x["md5_before"]
    manifest = json.loads((state / "manifest-train.json").read_text())
    on_disk = {p: (root / "train" / p).stat().st_size for p in manifest["paths"]}
    assert dict(zip(manifest["paths"], manifest["sizes"])) == on_disk
    recorded = {}
    for record in (state / "units").glob("train-*.json"):
        rec = json.loads(record.read_text())
        recorded.update({f"{w}/{n}": s for w, files in rec["classes"].items() for n, s in files})
        assert rec["bytes"] == sum(s for files in rec["classes"].values() for _, s in files)
    assert recorded == on_disk
    assert json.loads((state / "complete-train.json").read_text())["bytes"] == sum(on_disk.values())
    before = tree_bytes(root)
    capsys.readouterr()
    assert launch("prepare", [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), *DEBUG]) == 0
    assert "already complete" in capsys.readouterr().out
    assert tree_bytes(root) == before


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_fix_killed_then_rerun(moment, prepared, clean_fix, tmp_path, capsys):
    result, reference = prepared
    syscalls, spec = MOMENTS[moment]
    clean_root, paths, keys = clean_fix[syscalls]
    key, n = target_call(paths, keys, spec)
    root = copy_root(reference, tmp_path / "root")
    key = str(root) + key.removeprefix(str(clean_root))
    crashed = run_traced(fix_args(result, root, "verify.fix=true"), syscalls, inject_at=n, path=key)
    assert crashed.returncode in (-9, 137), f"not killed at call {n} on {key}: {crashed.stderr[-800:]}"
    assert [x for x in fix_log(root) if x["state"] == "intent"], "killed before any intent was logged"
    assert_consistent(result, root, reference, capsys)
    # and a later verify.fix finishes the work: every odd file re-encoded, the records still agree
    assert launch("verify", fix_args(result, root, "verify.fix=true")[1:]) == 0
    assert_consistent(result, root, reference, capsys)


def test_prepare_reconciles_an_interrupted_fix(prepared, clean_fix, tmp_path, capsys):
    """Killed after the rename, then prepare (not verify) runs first: it brings the manifest up to
    date, so `verify level=exists` passes."""
    result, reference = prepared
    clean_root, paths, keys = clean_fix[RENAMES]
    key, n = target_call(paths, keys, MOMENTS["after the rename"][1])
    root = copy_root(reference, tmp_path / "root")
    crashed = run_traced(
        fix_args(result, root, "verify.fix=true"),
        RENAMES,
        inject_at=n,
        path=str(root) + key.removeprefix(str(clean_root)),
    )
    assert crashed.returncode in (-9, 137), crashed.stderr[-800:]
    capsys.readouterr()
    assert launch("prepare", [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), *DEBUG]) == 0
    assert launch("verify", fix_args(result, root)[1:-1] + ["verify.level=exists"]) == 0


def test_a_file_pil_cannot_reencode_is_a_note_and_the_shard_goes_on(prepared, tmp_path, capsys):
    result, reference = prepared
    root = copy_root(reference, tmp_path / "root")
    png = next(p for p, k in result.odd_files.items() if k == "png")
    cmyk = next(p for p, k in result.odd_files.items() if k == "cmyk")
    data = (root / png).read_bytes()
    broken = data[:64] + bytes(len(data) - 76) + data[-12:]  # PNG header and end PIL reads, data it cannot
    (root / png).write_bytes(broken)
    # the sizes of the prepared root stay right: the file keeps its size
    code = launch("verify", fix_args(result, root, "verify.fix=true", "split=train")[1:])
    report = json.loads((root / ".launcher" / "verify-train.json").read_text())
    unfixable = [n for n in report["notes"] if n["kind"] == "unfixable"]
    assert [n["path"] for n in unfixable] == [png] and "cannot be re-encoded" in unfixable[0]["note"], unfixable
    assert (root / png).read_bytes() == broken
    assert [f["path"] for f in report["fixed"]] == [cmyk] and code == (0 if report["ok"] else 1)
