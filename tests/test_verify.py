"""verify: a clean root passes with its odd files noted; each fault, on its own copy of a root (ours,
with a manifest, and torchvision's, without), fails naming the file; fix makes every file a JPEG
that torchvision.io.decode_jpeg reads."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launcher.check.imagebounds import Limits
from launcher.check.images import check_file, decode
from launcher.check.shard import verify_shard
from launcher.datasets.imagenet.meta import load_meta
from launcher.datasets.imagenet.synth import encode_image

from conftest import cli, dataset_overrides, launch, storage_overrides, tree_bytes
from hostile_files import BOMBS, NON_REGULAR, deadline, jpeg, plant

DEBUG = ["dataset=synthetic", "cluster=debug"]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ours(archives, tmp_path_factory) -> Path:
    """A root prepared by launcher from the small archives (with manifests and records)."""
    result = archives("small")
    root = tmp_path_factory.mktemp("verify-ours") / "root"
    code = launch(
        "prepare", [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
    )
    assert code == 0
    return root


@pytest.fixture(params=["ours", "torchvision"])
def root_of(request, ours, oracle):
    """Which prepared root a test copies: ours or torchvision's (no manifest, archives in the root)."""
    return request.param, ours if request.param == "ours" else oracle("small")


def copy_root(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("verify", "verify-*.json"))
    return dst


def run_verify(root: Path, archive_dir: Path, *extra: str, split: str = "all") -> tuple[int, dict]:
    code = launch("verify", [*storage_overrides(archive_dir, root), *DEBUG, f"split={split}", *extra])
    report = json.loads((root / ".launcher" / f"verify-{split}.json").read_text())
    assert report["ok"] == (code == 0), report["failures"]
    return code, report


def failing(report: dict) -> dict[str, str]:
    """path -> its failures, "check: reason" joined by " | "."""
    out: dict[str, str] = {}
    for f in report["failures"]:
        out[f["path"]] = " | ".join([*([out[f["path"]]] if f["path"] in out else []), f"{f['check']}: {f['reason']}"])
    return out


def images(root: Path, split: str = "train") -> list[Path]:
    return sorted(p for p in (root / split).rglob("*.JPEG"))


def plain_jpeg(odd: dict, root: Path) -> Path:
    """An ordinary RGB train JPEG of the root (not one of the odd files)."""
    return next(p for p in images(root) if str(p.relative_to(root)) not in odd)


def jpeg_bytes(size=(96, 72), mode="RGB", seed=0) -> bytes:
    return encode_image(np.random.default_rng(seed), size, mode, "JPEG", 90)


# ---------------------------------------------------------------- one file


def test_check_file_levels(tmp_path):
    good = jpeg_bytes()
    cases = {
        "good.JPEG": good,
        "truncated.JPEG": good[: len(good) // 2],
        "empty.JPEG": b"",
        "random.JPEG": np.random.default_rng(1).integers(0, 256, len(good), dtype=np.uint8).tobytes(),
        "no-end.JPEG": good[:-2],
        "png.JPEG": encode_image(np.random.default_rng(2), (40, 30), "RGB", "PNG", 90),
        "cmyk.JPEG": jpeg_bytes(mode="CMYK"),
        "gray.JPEG": jpeg_bytes(mode="L"),
        "trailing.JPEG": good + b"junk after the end",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    at = {level: {n: check_file(tmp_path / n, level) for n in cases} for level in ("exists", "header", "decode")}
    assert at["exists"]["good.JPEG"] == (True, None, None)
    assert at["exists"]["empty.JPEG"][:2] == (False, "exists: empty file (0 bytes)")
    for level in ("header", "decode"):
        assert at[level]["good.JPEG"] == (True, None, None)
        for bad, why in [("truncated", "truncated"), ("empty", "empty"), ("random", "not a JPEG"), ("no-end", "FFD9")]:
            ok, reason, _ = at[level][f"{bad}.JPEG"]
            assert not ok and reason.startswith("header:") and why in reason, (level, bad, reason)
        for odd, word in [("png", "PNG"), ("cmyk", "CMYK"), ("gray", "grayscale"), ("trailing", "after the end")]:
            ok, reason, note = at[level][f"{odd}.JPEG"]
            assert ok and reason is None and word in note, (level, odd, note)
    assert check_file(tmp_path / "good.JPEG", "exists", size=len(good) + 1)[1].startswith("exists:")
    assert not check_file(tmp_path / "gone.JPEG", "header")[0]


def test_decode_finds_what_the_header_and_pil_verify_cannot(tmp_path):
    """A marker in the middle of the image data, head and end intact: header passes, PIL's
    verify() passes, only a full decode fails."""
    data = bytearray(jpeg_bytes(size=(400, 300), seed=3))
    middle = len(data) // 3
    data[middle : middle + 2] = b"\xff\xd8"
    path = tmp_path / "corrupt.JPEG"
    path.write_bytes(bytes(data))
    with Image.open(path) as im:
        im.verify()  # does not raise: it does not decode
    assert check_file(path, "header")[0]
    ok, reason, _ = check_file(path, "decode")
    assert not ok and reason.startswith("decode: PIL cannot decode it")


def fails(decoder, data: bytes) -> bool:
    try:
        decoder(data)
        return False
    except Exception:
        return True


def full_size_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def test_decode_fails_exactly_the_files_a_full_size_decode_fails():
    """verify decodes JPEGs at 1/8 scale (DCT domain): on truncations, bit flips, stray markers and
    garbage blocks of baseline, 4:4:4, progressive, restart-marker, grayscale and CMYK JPEGs, it
    fails exactly where a full-size `Image.open().load()` fails."""
    rng = np.random.default_rng(6)
    base = Image.open(io.BytesIO(jpeg_bytes(size=(160, 120), seed=7)))
    variants = {
        "baseline": ("RGB", {}),
        "444": ("RGB", {"subsampling": 0}),
        "progressive": ("RGB", {"progressive": True}),
        "restart": ("RGB", {"restart_marker_blocks": 2}),
        "grayscale": ("L", {}),
        "cmyk": ("CMYK", {}),
    }
    failed = cases = 0
    for mode, options in variants.values():
        buf = io.BytesIO()
        base.convert(mode).save(buf, "JPEG", quality=90, **options)
        good = buf.getvalue()
        n = len(good)
        damaged = [good[:cut] for cut in range(300, n, n // 12)]
        for k in range(48):
            data, at = bytearray(good), int(rng.integers(300, n - 2))
            if k % 3 == 0:
                data[at] ^= 1 << int(rng.integers(0, 8))
            elif k % 3 == 1:
                data[at : at + 2] = bytes([0xFF, int(rng.integers(0, 256))])
            else:
                data[at : at + 200] = rng.integers(0, 256, len(data[at : at + 200]), dtype=np.uint8).tobytes()
            damaged.append(bytes(data))
        for data in damaged:
            full = fails(full_size_decode, data)
            assert fails(decode, data) == full, (mode, options, len(data))
            cases, failed = cases + 1, failed + full
    assert failed > cases // 4, "the corpus must hold files a full decode rejects"


def test_header_reads_past_large_segments(tmp_path):
    """The frame header after 90 KB of comment segments is found (segments are followed, not
    searched for in the first bytes), and its dimensions match the decode."""
    data = jpeg_bytes(size=(123, 45))
    comment = b"\xff\xfe" + (30_002).to_bytes(2, "big") + b"x" * 30_000
    path = tmp_path / "big-header.JPEG"
    path.write_bytes(data[:2] + comment * 3 + data[2:])
    assert check_file(path, "header") == (True, None, None)
    assert check_file(path, "decode") == (True, None, None)
    path.write_bytes(data[:2] + comment * 3)  # the file ends inside the header
    ok, reason, _ = check_file(path, "header")
    assert not ok and "truncated" in reason


@pytest.mark.torch
def test_meta_loads_as_torchvision_loads_it(ours, tmp_path):
    """load_meta (no torchvision import) accepts and refuses what torchvision's load_meta_file does."""
    import torch
    from torchvision.datasets.imagenet import load_meta_file

    good = (ours / "meta.bin").read_bytes()
    legacy = io.BytesIO()
    torch.save(load_meta_file(str(ours)), legacy, _use_new_zipfile_serialization=False)
    cases = {"good": good, "legacy": legacy.getvalue(), "cut": good[: len(good) // 2], "garbage": b"not torch"}

    def outcome(loader, root):
        try:
            return loader(root)
        except Exception:
            return "refused"

    for name, data in cases.items():
        root = tmp_path / name
        root.mkdir()
        (root / "meta.bin").write_bytes(data)
        assert outcome(load_meta, root) == outcome(lambda r: load_meta_file(str(r)), root), name
    assert outcome(load_meta, tmp_path / "good") != "refused" and outcome(load_meta, tmp_path / "cut") == "refused"
    assert outcome(load_meta, tmp_path / "empty-root") == "refused"


# ---------------------------------------------------------------- whole roots


def test_clean_roots_pass_with_odd_files_noted(root_of, archives, tmp_path, capsys):
    kind, src = root_of
    result = archives("small")
    root = copy_root(src, tmp_path)
    code, report = run_verify(root, result.archive_dir, "verify.level=decode")
    assert code == 0, report["failures"]
    assert {n["path"]: n["kind"] for n in report["notes"] if n["path"].startswith("train/")} == result.odd_files
    assert report["counts"]["train"]["images"] == sum(result.train_counts.values())
    assert report["counts"]["val"]["images"] == len(result.val_wnids)
    assert (report["counts"]["train"]["manifest"] is None) == (kind == "torchvision")
    assert report["expected_from"].startswith("devkit")
    out = capsys.readouterr().out
    assert f"report: {root / '.launcher' / 'verify-all.json'}" in out and "no problems" in out


def truncate(root, odd, archives):
    path = plain_jpeg(odd, root)
    path.write_bytes(path.read_bytes()[:300])
    return {str(path.relative_to(root)): "header: truncated"}


def zero_bytes(root, odd, archives):
    path = plain_jpeg(odd, root)
    path.write_bytes(b"")
    return {str(path.relative_to(root)): "empty file"}


def random_bytes(root, odd, archives):
    path = images(root, "val")[0]
    path.write_bytes(np.random.default_rng(5).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
    return {str(path.relative_to(root)): "header: not a JPEG or PNG"}


def missing_image(root, odd, archives):
    path = images(root, "val")[1]
    path.unlink()
    return {str(path.relative_to(root)): "missing"}


def missing_class(root, odd, archives):
    folder = sorted((root / "train").iterdir())[2]
    shutil.rmtree(folder)
    return {str(folder.relative_to(root)): "class folder missing"}


def extra_file(root, odd, archives):
    folder = sorted((root / "train").iterdir())[1]
    (folder / "notes.txt").write_text("not an image")
    (root / "val" / "desktop.ini").write_text("stray")
    return {f"train/{folder.name}/notes.txt": "move it out", "val/desktop.ini": "stray file"}


def moved_image(root, odd, archives):
    path = images(root, "val")[2]
    other = next(p for p in sorted((root / "val").iterdir()) if p != path.parent)
    path.rename(other / path.name)
    return {f"val/{other.name}/{path.name}": "the ground truth puts val image", str(path.relative_to(root)): "missing"}


def moved_train_image(root, odd, archives):
    path = plain_jpeg(odd, root)
    other = next(p for p in sorted((root / "train").iterdir()) if p != path.parent)
    path.rename(other / path.name)
    return {
        f"train/{other.name}/{path.name}": f"the name says class {path.parent.name}",
        str(path.parent.relative_to(root)): "num_train_images",
    }


def other_devkit_meta(root, odd, archives):
    from launcher.datasets.imagenet import torchfile
    from launcher.datasets.imagenet.devkit import parse_devkit

    from conftest import GROUND_TRUTH, META

    tiny = archives("tiny")
    kit = parse_devkit(
        tiny.files["devkit"], META, GROUND_TRUTH, 1 << 28, wnid_pattern=r"n[0-9]{8}", id_pattern=r"[1-9][0-9]{0,6}"
    )
    torchfile.save(root / "meta.bin", (kit.wnid_to_classes, kit.val_wnids))
    return {"meta.bin": "from another devkit"}


def leftovers(root, odd, archives):
    (root / ".partial" / "train" / "n00000001").mkdir(parents=True)
    (root / ".partial" / "train" / "n00000001" / "n00000001_1.JPEG").write_bytes(b"half")
    folder = sorted((root / "val").iterdir())[0]
    (folder / ".ILSVRC2012_val_00000077.JPEG.part").write_bytes(b"half")
    return {
        ".partial/train/n00000001/n00000001_1.JPEG": "interrupted prepare",
        f"val/{folder.name}/.ILSVRC2012_val_00000077.JPEG.part": "temporary file",
    }


FAULTS = [
    truncate,
    zero_bytes,
    random_bytes,
    missing_image,
    missing_class,
    extra_file,
    moved_image,
    moved_train_image,
    other_devkit_meta,
    leftovers,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_each_fault_fails_naming_the_file(fault, root_of, archives, tmp_path, capsys):
    kind, src = root_of
    result = archives("small")
    root = copy_root(src, tmp_path)
    expect = fault(root, result.odd_files, archives)
    code, report = run_verify(root, result.archive_dir, "verify.level=header")
    assert code != 0
    found = failing(report)
    for path, words in expect.items():
        assert path in found, f"{kind}: {path} not among the failures {found}"
        assert words in found[path], found[path]
    out = capsys.readouterr().out
    assert all(path in out for path in expect) and "FAILED" in out


def test_root_without_devkit_is_checked_against_meta_bin(oracle, tmp_path):
    """A torchvision root with no devkit anywhere: classes and val labels come from meta.bin."""
    root = copy_root(oracle("small"), tmp_path)
    for archive in root.glob("ILSVRC2012_*"):
        archive.unlink()
    empty = tmp_path / "no-archives"
    empty.mkdir()
    code, report = run_verify(root, empty)
    assert code == 0 and report["expected_from"].startswith("meta.bin"), report["failures"]
    path = images(root, "val")[0]
    other = next(p for p in sorted((root / "val").iterdir()) if p != path.parent)
    path.rename(other / path.name)
    code, report = run_verify(root, empty)
    assert code != 0 and f"val/{other.name}/{path.name}" in failing(report)


def test_every_run_checks_again(ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    assert run_verify(root, result.archive_dir)[0] == 0
    path = plain_jpeg(result.odd_files, root)
    path.write_bytes(path.read_bytes()[:-100])
    code, report = run_verify(root, result.archive_dir)
    assert code != 0 and str(path.relative_to(root)) in failing(report)
    runs = list((root / ".launcher" / "verify").iterdir())
    assert len(runs) == 2, "each verify run keeps its records in a folder of its own"


def test_exists_level_compares_sizes_with_the_manifest(ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    path = plain_jpeg(result.odd_files, root)
    path.write_bytes(path.read_bytes() + b"\0")
    code, report = run_verify(root, result.archive_dir, "verify.level=exists", split="train")
    assert code != 0 and "the manifest says" in failing(report)[str(path.relative_to(root))]


def test_md5_of_the_archives(ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    code, report = run_verify(root, result.archive_dir, "verify.check_md5=true", *result.md5_overrides())
    assert code == 0 and report["md5"] == {"devkit": True, "train": True, "val": True}
    wrong = "dataset.archives.val.md5=" + "0" * 32
    code, report = run_verify(root, result.archive_dir, "verify.check_md5=true", *result.md5_overrides(), wrong)
    assert code != 0 and report["md5"]["val"] is False
    assert "md5 mismatch" in failing(report)[result.files["val"].name]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["verify.level=exists", "verify.fix=true"], "verify.fix=true needs verify.level=header or decode"),
        (["verify.max_pixels=0"], "verify.max_pixels=0 must be a positive whole number"),
        (["verify.max_scans=-5"], "verify.max_scans=-5 must be a positive whole number"),
    ],
)
def test_bad_options_are_refused(ours, archives, overrides, message, capsys):
    code = launch("verify", [*storage_overrides(archives("small").archive_dir, ours), *DEBUG, *overrides])
    assert code == 1 and message in capsys.readouterr().err


def test_unknown_level_is_refused_at_compose():
    from hydra.errors import ConfigCompositionException

    from launcher import compose_config

    with pytest.raises(ConfigCompositionException) as err:
        compose_config("verify", ["verify.level=pixels"])
    assert "expected one of [exists, header, decode]" in str(err.value.__cause__)


def test_missing_root_is_refused(archives, tmp_path, capsys):
    code = launch("verify", [*storage_overrides(archives("small").archive_dir, tmp_path / "nowhere"), *DEBUG])
    assert code == 1 and "is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- fix


@pytest.mark.torch
def test_fix_makes_every_file_a_jpeg_decode_jpeg_reads(ours, archives, tmp_path):
    import torch

    from launcher.data.imageio import ImageReadMode, decode_jpeg

    result = archives("small")
    root = copy_root(ours, tmp_path)
    png = next(p for p, k in result.odd_files.items() if k == "png")

    def decodes(path: Path) -> bool:
        try:
            decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
            return True
        except RuntimeError:
            return False

    assert not decodes(root / png)
    code, report = run_verify(root, result.archive_dir, "verify.level=decode", "verify.fix=true")
    assert code == 0, report["failures"]
    fixed = {f["path"]: f for f in report["fixed"]}
    assert {p: f["old_kind"] for p, f in fixed.items()} == {
        p: k for p, k in result.odd_files.items() if k != "grayscale"
    }
    for path, f in fixed.items():
        data = (root / path).read_bytes()
        assert f["new_size"] == len(data) and f["md5_after"] != f["md5_before"]
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
    assert all(decodes(p) for split in ("train", "val") for p in images(root, split))
    log = [json.loads(line) for line in (root / ".launcher" / "verify-fixes.jsonl").read_text().splitlines()]
    assert sorted(x["path"] for x in log if x["state"] == "intent") == sorted(fixed)
    assert sorted(x["path"] for x in log if x["state"] == "applied") == sorted(fixed)

    # the manifest and prepare's records follow the new sizes: exists passes, prepare stays a no-op
    manifest = json.loads((root / ".launcher" / "manifest-train.json").read_text())
    on_disk = {p: (root / "train" / p).stat().st_size for p in manifest["paths"]}
    assert dict(zip(manifest["paths"], manifest["sizes"])) == on_disk
    assert run_verify(root, result.archive_dir, "verify.level=exists")[0] == 0
    code, again = run_verify(root, result.archive_dir, "verify.level=header", "verify.fix=true")
    assert code == 0 and again["fixed"] == [] and {n["kind"] for n in again["notes"]} == {"grayscale"}
    before = tree_bytes(root)
    prepare = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
    assert launch("prepare", prepare) == 0
    assert tree_bytes(root) == before


# ---------------------------------------------------------------- real processes, the CLI, SLURM


def test_local_cluster_runs_shards_in_processes(ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    path = plain_jpeg(result.odd_files, root)
    path.write_bytes(path.read_bytes()[:500])
    overrides = [
        *storage_overrides(result.archive_dir, root),
        "dataset=synthetic",
        "cluster=local",
        "cluster.workers=2",
    ]
    code = launch("verify", [*overrides, "verify.level=decode", "cluster.poll_s=0.1"])
    report = json.loads((root / ".launcher" / "verify-all.json").read_text())
    assert code != 0 and str(path.relative_to(root)) in failing(report)
    assert len(report["shards"]) == 8  # twice the 2 workers, per split
    # two local jobs (processes) pull the shards from one queue; whichever took them, not this process
    ledger = [json.loads(line) for line in (root / ".launcher" / "ledger.jsonl").read_text().splitlines()]
    submitted = {j["job_id"] for j in ledger[-1]["jobs"]}
    ran = {str(s["job"]) for s in report["shards"]}
    assert len(submitted) == 2 and ran <= submitted and str(os.getpid()) not in ran, (submitted, ran)


def test_shard_with_processes_finds_the_same(ours, archives, tmp_path):
    """On SLURM a shard uses its cpus_per_task as processes: same findings as one process."""
    result = archives("small")
    root = copy_root(ours, tmp_path)
    images(root, "val")[0].write_bytes(b"")
    (root / "train" / result.wnids[0] / "stray.txt").write_text("x")
    run_verify(root, result.archive_dir, "verify.shards=1")
    run_dir = next((root / ".launcher" / "verify").iterdir())
    for split in ("train", "val"):
        uid = f"verify-{split}-header-0000-of-0001"
        one = json.loads((run_dir / "units" / f"{uid}.json").read_text())
        two = verify_shard(str(root), split, str(run_dir / "inputs" / f"{uid}.json"), "header", processes=2)
        for key in ("images", "checked", "bytes", "counts", "failures", "notes"):
            assert two[key] == one[key], (split, key)
        assert two["failures"], split


def test_multirun_over_splits(ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    images(root, "val")[0].write_bytes(b"")
    run = cli("verify", "-m", "split=train,val", *storage_overrides(result.archive_dir, root), *DEBUG, cwd=tmp_path)
    assert run.returncode != 0, run.stdout + run.stderr
    train = json.loads((root / ".launcher" / "verify-train.json").read_text())
    val = json.loads((root / ".launcher" / "verify-val.json").read_text())
    assert train["ok"] and train["splits"] == ["train"]
    assert not val["ok"] and val["splits"] == ["val"]
    assert str(root / ".launcher" / "verify-train.json") in run.stdout
    assert str(root / ".launcher" / "verify-val.json") in run.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_submits_and_the_report_job_writes_the_report(slurm_cluster, ours, archives, tmp_path):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    path = plain_jpeg(result.odd_files, root)
    path.write_bytes(b"")
    slurm = ["cluster=slurm", "cluster.timeout_min=10", "cluster.mem_gb=1", "verify.shards=2"]
    run = cli("verify", *storage_overrides(result.archive_dir, root), "dataset=synthetic", *slurm, cwd=tmp_path)
    assert run.returncode == 0 and "submitted" in run.stdout, run.stdout + run.stderr
    report_file = root / ".launcher" / "verify-all.json"
    deadline = time.time() + 120
    while not report_file.exists() and time.time() < deadline:
        time.sleep(1)
    report = json.loads(report_file.read_text())
    assert not report["ok"] and str(path.relative_to(root)) in failing(report)
    assert report["shards"] and all(s["job"] for s in report["shards"]), "shards ran as SLURM jobs"


# ---------------------------------------------------------------- bounds: files, pixels, scans, meta.bin


@pytest.mark.parametrize("kind", NON_REGULAR)
def test_non_regular_files_fail_naming_the_file_and_never_hang(kind, ours, archives, tmp_path):
    """A FIFO (whose open waits for a writer forever), a link to /dev/zero (a read that never ends), a
    socket or a folder where an image belongs: verify decode fails naming it, within seconds."""
    result = archives("small")
    root = copy_root(ours, tmp_path)
    victim = plain_jpeg(result.odd_files, root)
    plant(kind, victim)
    with deadline(120):
        code, report = run_verify(root, result.archive_dir, "verify.level=decode", split="train")
    rel = str(victim.relative_to(root))
    found = failing(report)
    assert code != 0 and rel in found, found
    want = "a folder in a class folder" if kind == "folder" else "not a regular file"
    assert want in found[rel], found[rel]
    for level in ("exists", "header", "decode"):  # one file at each level
        with deadline(10):
            ok, reason, _ = check_file(victim, level)
        assert not ok and ("not a regular file" in reason or kind == "folder"), (level, reason)


@pytest.mark.parametrize("bomb", BOMBS)
def test_bomb_images_fail_at_header_and_decode(bomb, tmp_path):
    """A JPEG declaring 30000x30000 pixels (780 bytes; 2.7 GB for a decoder) and a progressive JPEG
    of 1000 scans (14 KB; a second of libjpeg): both fail at header and at decode, naming the bound,
    without a decode of their pixels."""
    path = tmp_path / f"{bomb}.JPEG"
    path.write_bytes(BOMBS[bomb]())
    for level in ("header", "decode"):
        started = time.perf_counter()
        ok, reason, _ = check_file(path, level)
        assert not ok and reason.startswith("header:") and f"verify.max_{bomb}" in reason, (level, reason)
        assert time.perf_counter() - started < 0.5, level
    raised = check_file(path, "decode", limits=Limits(max_pixels=30000 * 30000 + 1, max_scans=1000))
    assert raised[0] if bomb == "scans" else "truncated" in raised[1] or "PIL" in raised[1]
    ok, reason, _ = check_file(path, "decode", limits=Limits(max_pixels=10, max_scans=1))
    assert not ok and "more than verify.max_" in reason


def test_bombs_in_a_root_fail_naming_each_file(ours, archives, tmp_path, capsys):
    result = archives("small")
    root = copy_root(ours, tmp_path)
    train = [p for p in images(root) if str(p.relative_to(root)) not in result.odd_files]
    for path, bomb in zip(train, BOMBS.values()):
        data = bomb()
        path.write_bytes(data)
    manifest = root / ".launcher" / "manifest-train.json"
    text = json.loads(manifest.read_text())
    for path in train[:2]:
        text["sizes"][text["paths"].index(str(path.relative_to(root / "train")))] = path.stat().st_size
    manifest.write_text(json.dumps(text))
    code, report = run_verify(root, result.archive_dir, "verify.level=header", split="train")
    found = failing(report)
    assert code != 0
    assert "verify.max_pixels" in found[str(train[0].relative_to(root))]
    assert "verify.max_scans" in found[str(train[1].relative_to(root))]
    code, report = run_verify(root, result.archive_dir, "verify.level=header", "verify.max_scans=2000", split="train")
    assert str(train[1].relative_to(root)) not in failing(report)


@pytest.mark.parametrize(
    "hostile",
    [
        ("long strings", lambda w, v: (w, ["n" + "9" * 9500] * len(v)), "not a string of at most 64"),
        ("many val entries", lambda w, v: (w, v * 300), "more than"),
        ("many classes", lambda w, v: ({f"n{i:08d}": ("x",) for i in range(5000)}, v), "more than"),
    ],
    ids=lambda h: h[0],
)
def test_hostile_meta_bin_is_bounded(hostile, ours, archives, tmp_path):
    """meta.bin of a hundred kilobytes naming one 9.5 KB string for every val image (or far more
    entries than the devkit's): refused before verify builds its expected layout from it (the run's
    expected.json stays small; on main it held every copy of the string)."""
    from launcher.datasets.imagenet import torchfile

    _, make, why = hostile
    result = archives("small")
    root = copy_root(ours, tmp_path)
    wnid_to_classes, val_wnids = load_meta(root)
    size = torchfile.save(root / "meta.bin", make(wnid_to_classes, val_wnids))
    assert size < 4 << 20
    code, report = run_verify(root, result.archive_dir, "verify.level=exists")
    assert code != 0
    assert why in failing(report)["meta.bin"], failing(report)["meta.bin"]
    for expected in (root / ".launcher" / "verify").glob("*/expected.json"):
        assert expected.stat().st_size < 1 << 20


# short, 10 KB (past the 4 KB old verify searched) ending in a JPEG's start, and end markers then bytes
TRAILING = [b"junk after the end", bytes(range(256)) * 40 + b"\xff\xd8\xff\xe0", b"\xff\xd9" * 3 + b"exif"]


@pytest.mark.parametrize("extra", TRAILING, ids=["short", "10KB-then-SOI", "markers-then-bytes"])
@pytest.mark.parametrize("progressive", [False, True])
def test_trailing_bytes_after_the_end_marker_are_a_note(extra, progressive, tmp_path):
    """Bytes after the end-of-image marker (cameras append thumbnails and maker data, 10 KB here) are
    a note at header and decode, wherever the marker is (found by walking the scans, not searched
    for near the end); a file without one is truncated. (A baseline file whose last two bytes are
    FFD9 is taken to end there: the marker cannot hide in the image data, and reading every file
    whole would cost level=header its speed.)"""
    good = jpeg(flat=False, progressive=progressive)
    path = tmp_path / "trailing.JPEG"
    path.write_bytes(good + extra)
    for level in ("header", "decode"):
        ok, reason, note = check_file(path, level)
        assert ok and reason is None and "trailing bytes after the end marker" in note, (level, reason)
        assert f"{len(extra)} bytes after the end-of-image marker" in note
    path.write_bytes(good[:-2] + extra.replace(b"\xff\xd9", b""))
    for level in ("header", "decode"):
        ok, reason, _ = check_file(path, level)
        assert not ok and "truncated" in reason, (level, reason)


def test_hostile_meta_bin_without_devkit_is_bounded(oracle, tmp_path):
    """No devkit anywhere, so meta.bin alone would give the expected layout: 120 KB of pickle naming
    one 9.5 KB string for each of 50,000 val images made a 476 MB expected.json on main."""
    from launcher.datasets.imagenet import torchfile

    root = copy_root(oracle("small"), tmp_path)
    for archive in root.glob("ILSVRC2012_*"):
        archive.unlink()
    empty = tmp_path / "no-archives"
    empty.mkdir()
    wnid_to_classes, _ = load_meta(root)
    assert torchfile.save(root / "meta.bin", (wnid_to_classes, ["n" + "9" * 9500] * 50_000)) < 200_000
    code, report = run_verify(root, empty, "verify.level=exists")
    # refused by the meta.bin reader (it expands past its bound) or by verify's bounds on what it read
    why = failing(report)["meta.bin"]
    assert code != 0 and ("not a string of at most 64" in why or "is not a meta.bin this tool" in why), why
    assert all(p.stat().st_size < 1 << 20 for p in (root / ".launcher" / "verify").glob("*/expected.json"))


@pytest.mark.parametrize("kind", ["fifo", "nested", "shape"])
def test_hostile_manifest_is_a_finding(kind, ours, archives, tmp_path):
    """verify's JSON inputs are bounded: a FIFO planted as the manifest (an open that never returns),
    JSON nested 100,000 deep (RecursionError on main) or columns of another shape are each a finding
    naming the file, and the root is checked without the manifest."""
    result = archives("small")
    root = copy_root(ours, tmp_path)
    manifest = root / ".launcher" / "manifest-train.json"
    if kind == "fifo":
        plant("fifo", manifest)
    elif kind == "nested":
        manifest.write_text("[" * 100_000 + "]" * 100_000)
    else:
        text = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**text, "paths": [p.replace("/", "") for p in text["paths"]]}))
    with deadline(120):
        code, report = run_verify(root, result.archive_dir, "verify.level=exists", split="train")
    assert code != 0
    assert "not read" in failing(report)[str(manifest)] or "not a manifest" in failing(report)[str(manifest)]
    assert report["counts"]["train"]["images"] == len(images(ours))


def test_report_dash_writes_the_report_alone_to_stdout(archives, tmp_path):
    result = archives("tiny")
    overrides = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    assert launch("prepare", [*overrides, "cluster=debug"]) == 0
    run = cli("verify", *overrides, "cluster=debug", "verify.report=-")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)  # nothing else on stdout
    assert report["ok"] is True and report["splits"] == ["train", "val"]
    assert "no problems" in run.stderr
    assert json.loads((tmp_path / "root" / ".launcher" / "verify-all.json").read_text()) == report
