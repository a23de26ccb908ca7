"""verify and stage on a prepared Places365 root: a clean root passes at every level (on cluster=debug
and sharded on cluster=local, status showing the verify units); each fault, on its own copy of the
root, fails naming the file; verify.fix re-encodes PNG-as-JPEG and CMYK files as it does for
ImageNet; stage copies the root and the staged copy reads in torchvision's Places365 as the source."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_places365_pipeline import synth_then_prepare

from conftest import launch

LISTS = ("categories_places365.txt", "places365_train_standard.txt", "places365_val.txt")


@pytest.fixture(scope="module")
def p365(tmp_path_factory) -> tuple[Path, list[str]]:
    """A Places365 root prepared by launcher from synthetic archives; the prepare overrides (dataset,
    archive folder, md5s) verify reuses."""
    base = tmp_path_factory.mktemp("p365-verify")
    overrides = synth_then_prepare(base / "archives", classes=5)
    assert launch("prepare", [*overrides, f"storage.root={base / 'root'}", "cluster=debug"]) == 0
    return base / "root", overrides


def copy_of(p365, tmp_path: Path) -> tuple[Path, list[str]]:
    source, overrides = p365
    root = tmp_path / "root"
    shutil.copytree(source, root, symlinks=True, ignore=shutil.ignore_patterns("verify", "verify-*.json"))
    return root, [*overrides, f"storage.root={root}"]


def run_verify(root: Path, overrides: list[str], *extra: str) -> tuple[int, dict]:
    code = launch("verify", [*overrides, "cluster=debug", *extra])
    report = json.loads((root / ".launcher" / "verify-all.json").read_text())
    assert report["ok"] == (code == 0), report["failures"]
    return code, report


def failing(report: dict) -> dict[str, str]:
    """path -> "check: reason" of its failures, joined by " | "."""
    out: dict[str, list[str]] = {}
    for f in report["failures"]:
        out.setdefault(f["path"], []).append(f"{f['check']}: {f['reason']}")
    return {path: " | ".join(reasons) for path, reasons in out.items()}


def train_images(root: Path) -> list[Path]:
    return sorted((root / "data_large_standard").rglob("*.jpg"))


def val_images(root: Path) -> list[Path]:
    return sorted((root / "val_large").glob("*.jpg"))


def rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


# ---------------------------------------------------------------- a clean root


@pytest.mark.parametrize("level", ["exists", "header", "decode"])
def test_a_prepared_root_passes_at_every_level(p365, tmp_path, capsys, level):
    root, overrides = copy_of(p365, tmp_path)
    code, report = run_verify(root, overrides, f"verify.level={level}")
    out = capsys.readouterr().out
    assert code == 0 and report["ok"], report["failures"]
    assert {s: c["images"] for s, c in report["counts"].items()} == {"train": 15, "val": 10}
    assert {s: c["checked"] for s, c in report["counts"].items()} == {"train": 15, "val": 10}
    assert (
        report["checks"]["labels"]["-"]["failed"] == 0 and "filelist_places365-standard.tar" in report["expected_from"]
    )
    assert f"verify {level}: no problems in train, val of {root}" in out


def test_sharded_verify_on_cluster_local_passes_finds_and_shows_in_status(p365, tmp_path, capsys):
    """cluster=local, 3 shards a split: a clean root passes and status lists the 7 verify units
    complete (exit 0); a truncated val image then fails naming it, and status exits 1."""
    root, overrides = copy_of(p365, tmp_path)
    local = [*overrides, "cluster=local", "verify.shards=3", "verify.level=decode"]
    assert launch("verify", local) == 0
    report = json.loads((root / ".launcher" / "verify-all.json").read_text())
    assert len(report["shards"]) == 6 and sum(s["images"] for s in report["shards"]) == 25
    capsys.readouterr()
    assert launch("status", [*overrides, "status.units=true"]) == 0
    out = capsys.readouterr().out
    units = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("verify-")}
    assert len(units) == 7 and set(units.values()) == {"complete"}, out
    assert "verify-val-decode-0000-of-0003" in units and "verify-report" in units, out
    assert "train   3/3 complete; 15 images" in out and "verify: ok, no problems" in out, out

    victim = val_images(root)[3]
    victim.write_bytes(victim.read_bytes()[:200])
    assert launch("verify", local) == 1
    report = json.loads((root / ".launcher" / "verify-all.json").read_text())
    assert rel(root, victim) in failing(report) and not report["ok"]
    assert launch("status", overrides) == 1


# ---------------------------------------------------------------- faults


def missing_train_image(root: Path) -> tuple[str, str]:
    victim = train_images(root)[4]
    victim.unlink()
    return rel(root, victim), "exists: missing: places365_train_standard.txt names it"


def missing_val_image(root: Path) -> tuple[str, str]:
    victim = val_images(root)[2]
    victim.unlink()
    return rel(root, victim), "exists: missing: places365_val.txt names it"


def truncated_jpeg(root: Path) -> tuple[str, str]:
    victim = train_images(root)[0]
    victim.write_bytes(victim.read_bytes()[:-400])
    return rel(root, victim), "header: truncated"


def extra_train_file(root: Path) -> tuple[str, str]:
    extra = train_images(root)[0].parent / "99999999.jpg"
    shutil.copy(train_images(root)[1], extra)
    return rel(root, extra), "structure: extra file: not in places365_train_standard.txt"


def extra_val_file(root: Path) -> tuple[str, str]:
    extra = root / "val_large" / "Places365_val_00009999.jpg"
    shutil.copy(val_images(root)[0], extra)
    return rel(root, extra), "structure: extra file: not in places365_val.txt"


def label_file_changed(root: Path) -> tuple[str, str]:
    path = root / "places365_val.txt"
    lines = path.read_text().split("\n")
    name, label = lines[0].split(" ")
    lines[0] = f"{name} {(int(label) + 1) % 5}"
    path.write_text("\n".join(lines))
    return "places365_val.txt", "labels: differs from the places365_val.txt of the file lists of"


def label_file_missing(root: Path) -> tuple[str, str]:
    (root / "categories_places365.txt").unlink()
    return "categories_places365.txt", "labels: missing: torchvision's Places365 reads it. Move it aside"


def label_file_a_link(root: Path) -> tuple[str, str]:
    path = root / "places365_train_standard.txt"
    target = root.parent / "elsewhere.txt"
    shutil.move(path, target)
    path.symlink_to(target)
    return "places365_train_standard.txt", "labels: "


def class_folder_missing(root: Path) -> tuple[str, str]:
    folder = train_images(root)[-1].parent
    shutil.rmtree(folder)
    return rel(root, folder), "structure: class folder missing"


def stray_folder(root: Path) -> tuple[str, str]:
    (root / "data_large_standard" / "z" / "zebra_stable").mkdir(parents=True)
    return "data_large_standard/z", "structure: a folder of no class of categories_places365.txt"


FAULTS = [
    missing_train_image,
    missing_val_image,
    truncated_jpeg,
    extra_train_file,
    extra_val_file,
    label_file_changed,
    label_file_missing,
    label_file_a_link,
    class_folder_missing,
    stray_folder,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_each_fault_fails_naming_the_file(p365, tmp_path, capsys, fault):
    root, overrides = copy_of(p365, tmp_path)
    path, expected = fault(root)
    code, report = run_verify(root, overrides, "verify.level=header")
    out = capsys.readouterr().out
    assert code == 1 and not report["ok"]
    assert path in failing(report) and expected in failing(report)[path], report["failures"]
    assert f"  {path}: " in out and "FAILED" in out, out


def test_a_missing_images_folder_is_one_finding_and_no_shards(p365, tmp_path):
    root, overrides = copy_of(p365, tmp_path)
    shutil.rmtree(root / "val_large")
    code, report = run_verify(root, overrides, "verify.level=exists")
    assert code == 1 and "structure: missing:" in failing(report)["val_large"]
    assert report["counts"]["val"]["images"] == 0 and report["counts"]["train"]["images"] == 15


# ---------------------------------------------------------------- verify.fix


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def cmyk_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 4), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="CMYK").save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_fix_re_encodes_png_and_cmyk_and_the_records_follow(p365, tmp_path):
    """Synth writes only RGB JPEGs: a PNG (train) and a CMYK JPEG (val) are planted by hand. Without
    fix they are notes; verify.fix=true re-encodes them to RGB JPEG, keeps the originals, puts the new
    sizes in the manifests, and verify at level exists (sizes against the manifest) passes again."""
    root, overrides = copy_of(p365, tmp_path)
    png, cmyk = train_images(root)[2], val_images(root)[5]
    png.write_bytes(png_bytes(1))
    cmyk.write_bytes(cmyk_bytes(2))
    # the manifests say the planted sizes (as if the archives held these files)
    for split, path, base in (("train", png, "data_large_standard"), ("val", cmyk, "val_large")):
        mpath = root / ".launcher" / f"manifest-{split}.json"
        manifest = json.loads(mpath.read_text())
        manifest["sizes"][manifest["paths"].index(str(path.relative_to(root / base)))] = path.stat().st_size
        mpath.write_text(json.dumps(manifest))
    code, report = run_verify(root, overrides, "verify.level=decode")
    assert code == 0 and {n["path"]: n["kind"] for n in report["notes"]} == {
        rel(root, png): "png",
        rel(root, cmyk): "cmyk",
    }
    originals = {rel(root, p): p.read_bytes() for p in (png, cmyk)}
    code, report = run_verify(root, overrides, "verify.level=decode", "verify.fix=true")
    assert code == 0, report["failures"]
    assert {f["path"]: f["old_kind"] for f in report["fixed"]} == {rel(root, png): "png", rel(root, cmyk): "cmyk"}
    for path in (png, cmyk):
        with Image.open(path) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB")
        kept = root / ".launcher" / "fix-originals" / rel(root, path)
        assert kept.read_bytes() == originals[rel(root, path)]
    assert {str(root / ".launcher" / f"manifest-{s}.json") for s in ("train", "val")} <= set(report["updated_records"])
    code, report = run_verify(root, overrides, "verify.level=exists")
    assert code == 0, report["failures"]


# ---------------------------------------------------------------- stage


@pytest.mark.torch
def test_stage_copies_a_root_places365_reads_as_the_source(p365, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from test_places365 import patch_torchvision_md5s
    from test_places365_pipeline import md5s_of

    source, overrides = p365
    archive_dir = Path(next(o for o in overrides if o.startswith("storage.archive_dir=")).split("=", 1)[1])
    Places365 = patch_torchvision_md5s(monkeypatch, SimpleNamespace(md5=md5s_of(archive_dir)))
    dest = tmp_path / "node" / "places365"
    stage = [*overrides, f"stage.source={source}", f"storage.root={dest}", "cluster=debug"]
    assert launch("stage", stage) == 0
    out = capsys.readouterr().out
    assert "copied 25 of 25 files" in out, out
    for name in LISTS:
        assert (dest / name).read_bytes() == (source / name).read_bytes()
    for split in ("train-standard", "val"):
        theirs, ours = Places365(str(source), split=split), Places365(str(dest), split=split)
        assert (ours.classes, ours.class_to_idx, ours.targets) == (theirs.classes, theirs.class_to_idx, theirs.targets)
        assert ours.imgs == [(p.replace(str(source), str(dest), 1), t) for p, t in theirs.imgs]
        assert all(Path(p).read_bytes() == Path(q).read_bytes() for (p, _), (q, _) in zip(ours.imgs, theirs.imgs))
    assert launch("stage", stage) == 0
    assert "reused a complete copy of 25 files" in capsys.readouterr().out
    code, report = run_verify(dest, [*overrides, f"storage.root={dest}"], "verify.level=decode")
    assert code == 0, report["failures"]
    assert os.path.isfile(dest / ".launcher" / "manifest-train.json")


def test_verify_of_a_missing_root_names_places365s_reader(p365, tmp_path, capsys):
    _, overrides = p365
    assert launch("verify", [*overrides, f"storage.root={tmp_path / 'nowhere'}", "cluster=debug"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "is not a folder" in errors[0] and "torchvision.datasets.Places365" in errors[0]
