"""synth writes archives of the real shape, with the real set's quirks, that torchvision accepts."""

from __future__ import annotations

import io
import shlex
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from launcher.core.errors import LauncherError
from launcher.datasets.imagenet.synth import SYNSET_FIELDS, SynthSpec, md5_of

from conftest import FILES, GROUND_TRUTH, META, SHAPES, cli, make_archives


def devkit_member(result, name: str) -> bytes:
    with tarfile.open(result.files["devkit"], "r:gz") as tar:
        return tar.extractfile(name).read()


def synsets(result):
    return scipy.io.loadmat(io.BytesIO(devkit_member(result, META)), squeeze_me=True)["synsets"]


def test_meta_mat_has_the_eight_fields_in_order(archives):
    s = synsets(archives())
    assert s.dtype.names == SYNSET_FIELDS


def test_leaves_and_nonleaves_with_shuffled_ids(archives):
    result = archives()
    s = synsets(result)
    leaves = [x for x in s if x["num_children"] == 0]
    parents = [x for x in s if x["num_children"] > 0]
    assert len(leaves) == SHAPES["small"].classes and len(parents) == SHAPES["small"].nonleaf
    assert sorted(int(x["ILSVRC2012_ID"]) for x in leaves) == list(range(1, len(leaves) + 1))
    by_id = [str(x["WNID"]) for x in sorted(leaves, key=lambda x: int(x["ILSVRC2012_ID"]))]
    assert by_id != sorted(by_id), "ILSVRC2012_ID order must differ from sorted-WNID order"
    assert {int(x["num_train_images"]) for x in leaves} == set(result.train_counts.values()) or True
    for x in leaves:
        assert int(x["num_train_images"]) == result.train_counts[str(x["WNID"])]


def test_class_sizes_are_uneven_and_inner_tars_flat(archives):
    result = archives("uneven")
    assert len(set(result.train_counts.values())) > 3
    with tarfile.open(result.files["train"]) as outer:
        members = outer.getmembers()
        assert [m.name for m in members] == [f"{w}.tar" for w in result.wnids]
        inner = tarfile.open(fileobj=outer.extractfile(members[0]))
        names = inner.getnames()
        assert len(names) == result.train_counts[result.wnids[0]]
        assert all("/" not in n and n.startswith(result.wnids[0] + "_") and n.endswith(".JPEG") for n in names)


def test_val_tar_is_flat_and_ground_truth_matches(archives):
    result = archives()
    with tarfile.open(result.files["val"]) as tar:
        names = tar.getnames()
    assert names == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, len(result.val_wnids) + 1)]
    ids = [int(x) for x in devkit_member(result, GROUND_TRUTH).split()]
    id_to_wnid = {int(x["ILSVRC2012_ID"]): str(x["WNID"]) for x in synsets(result) if x["num_children"] == 0}
    assert [id_to_wnid[i] for i in ids] == result.val_wnids


def test_odd_files_are_there(archives):
    result = archives()
    kinds = sorted(result.odd_files.values())
    assert kinds == ["cmyk", "grayscale", "png"]
    with tarfile.open(result.files["train"]) as outer:
        found = {}
        for member in outer:
            inner = tarfile.open(fileobj=outer.extractfile(member))
            for m in inner:
                key = f"train/{member.name[:-4]}/{m.name}"
                if key in result.odd_files:
                    data = inner.extractfile(m).read()
                    found[result.odd_files[key]] = (data[:8], Image.open(io.BytesIO(data)))
    assert found["png"][0] == b"\x89PNG\r\n\x1a\n" and found["png"][1].format == "PNG"
    assert found["cmyk"][1].mode == "CMYK" and found["cmyk"][1].format == "JPEG"
    assert found["grayscale"][1].mode == "L"


def test_torchvision_accepts_the_archives(archives, oracle):
    """torchvision's parse_devkit/train/val_archive run on them (the oracle fixture) and ImageNet loads."""
    import torchvision

    result = archives()
    root = oracle()
    train = torchvision.datasets.ImageNet(str(root), "train")
    val = torchvision.datasets.ImageNet(str(root), "val")
    assert len(train) == sum(result.train_counts.values())
    assert len(val) == len(result.val_wnids)
    assert train.wnids == result.wnids
    assert [val.wnids[t] for t in val.targets] == [result.val_wnids[int(p[-13:-5]) - 1] for p, _ in val.samples]


def test_md5sums_and_determinism(archives, tmp_path):
    result = archives("tiny")
    lines = (result.archive_dir / "MD5SUMS").read_text().splitlines()
    assert sorted(lines) == sorted(f"{md5_of(p)}  {p.name}" for p in result.files.values())
    again = make_archives(tmp_path / "again", SHAPES["tiny"])
    assert again.md5 == result.md5
    other = make_archives(tmp_path / "other", SynthSpec(**{**SHAPES["tiny"].__dict__, "seed": 99}))
    assert other.md5 != result.md5


def test_rerun_reuses_and_foreign_archives_are_refused(tmp_path):
    first = make_archives(tmp_path, SHAPES["tiny"])
    assert not first.reused
    assert make_archives(tmp_path, SHAPES["tiny"]).reused
    with pytest.raises(LauncherError, match="synth.overwrite=true"):
        make_archives(tmp_path, SynthSpec(classes=4))
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / FILES["train"]).write_bytes(b"not ours")
    with pytest.raises(LauncherError, match="did not write"):
        make_archives(foreign, SHAPES["tiny"])
    assert (foreign / FILES["train"]).read_bytes() == b"not ours"


def test_invalid_spec_is_refused(tmp_path):
    with pytest.raises(LauncherError, match="train_min"):
        make_archives(tmp_path, SynthSpec(train_min=5, train_max=2))


def test_synth_command_prints_md5_overrides(tmp_path):
    result = cli("synth", "synth.classes=3", "synth.train_min=1", "synth.train_max=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dataset.archives.train.md5=" in result.stdout
    assert (tmp_path / "data" / "archives" / FILES["val"]).exists()
    assert np.all([(tmp_path / "data" / "archives" / f).exists() for f in FILES.values()])


def run_printed(line: str, cwd):
    """Run a printed `launcher ...` line as a shell would split it."""
    words = shlex.split(line)
    assert words[0] == "launcher", line
    return cli(*words[1:], cwd=cwd)


@pytest.mark.torch  # it runs bench too
def test_printed_prepare_runs_and_the_root_remembers_its_dataset(tmp_path):
    """synth prints the exact prepare command; after it, verify, status and bench take the dataset the
    root was prepared with, and a disagreeing dataset choice gets advice naming the configs."""
    archives = tmp_path / "my archives"  # a space: the printed command must be quoted
    small = ["synth.classes=3", "synth.train_min=1", "synth.train_max=2", "synth.val_per_class=1"]
    synth = cli("synth", *small, f"storage.archive_dir={archives}", cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr
    line = synth.stdout.strip().splitlines()[-1].strip()
    assert "dataset=synthetic" in line and shlex.quote(f"storage.archive_dir={archives}") in line
    prepare = run_printed(line + " cluster=debug", tmp_path)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert not (tmp_path / "data" / "archives").exists()  # it found the archives where synth wrote them
    verify = cli("verify", "cluster=debug", cwd=tmp_path)  # no dataset=synthetic
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert cli("status", cwd=tmp_path).returncode == 0
    bench = cli(
        "bench", "cluster=debug", "bench.max_batches=1", "loader.batch_size=2", "loader.num_workers=0", cwd=tmp_path
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr
    wrong = cli("verify", "cluster=debug", "dataset=imagenet", cwd=tmp_path)
    assert wrong.returncode == 2
    message = wrong.stderr.strip()
    assert "dataset=imagenet disagrees with dataset=synthetic" in message and "pass dataset=synthetic" in message
    assert "meta.bin" not in message and len(message.splitlines()) == 1
