"""Names from archives and the devkit are untrusted until they match their pattern in ASCII.

Class-systematic: each name field that becomes a path or an index (a WNID in meta.mat, an
ILSVRC2012_ID in meta.mat, a ground-truth line, a class tar's name, a member of a class tar, a member
of the val tar) gets each hostile value in turn, inside a real synthetic archive; prepare must
refuse with a line naming the archive, the field or member and the pattern, write nothing outside
the root and record nothing complete.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from launcher import compose_config
from launcher.archive.index import index_val

from archive_tools import copy_archives, hostile_tar, members, rewrite_class, rewrite_devkit, write_tar
from conftest import FILES, GROUND_TRUTH, META, dataset_overrides, launch, storage_overrides

ARABIC = {ord(str(d)): chr(0x0660 + d) for d in range(10)}  # Arabic-Indic digits: \d and int() take them
FULL_WIDTH = {ord(str(d)): chr(0xFF10 + d) for d in range(10)}
DEVANAGARI = {ord(str(d)): chr(0x0966 + d) for d in range(10)}


def hostile_values(legit: str) -> dict[str, str]:
    """Hostile variants of a legitimate value of a field (`legit`: a WNID, an image number, ...)."""
    return {
        "parent ../x": "../x",
        "absolute /abs": "/abs",
        "nested a/b": "a/b",
        "dot-dot": "..",
        "NUL": legit[:-1] + "\0",
        "Arabic-Indic digits": legit.translate(ARABIC),
        "full-width digits": legit.translate(FULL_WIDTH),
        "Devanagari digits": legit[:-1] + legit[-1].translate(DEVANAGARI),
        "Cyrillic lookalike": legit.replace("n", "\u043f", 1) if legit.startswith("n") else "\u0031\u0338" + legit,
        "trailing newline": legit + "\n",
        "empty": "",
        "overlong": legit + "0" * 300,
    }


def set_meta_field(data: bytes, leaf: int, field: str, value) -> bytes:
    import scipy.io

    synsets = scipy.io.loadmat(io.BytesIO(data))["synsets"]
    synsets[field][0][leaf] = np.array([value])
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def leaf_wnids(data: bytes) -> list[str]:
    import scipy.io

    synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    return [str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0]


def inject(field: str, value: str, d: Path) -> None:
    """Put `value` into `field` of the archives copied to `d`."""
    if field in ("WNID", "ILSVRC2012_ID"):

        def change(ms):
            return [(n, set_meta_field(data, 0, field, value) if n == META else data) for n, data in ms]

        rewrite_devkit(d, change)
    elif field == "ground-truth line":
        rewrite_devkit(d, lambda ms: [(n, gt_with(data, value) if n == GROUND_TRUTH else data) for n, data in ms])
    elif field == "class tar name":
        outer = members(d / FILES["train"])
        outer[0] = (f"{value}.tar", outer[0][1])
        (d / FILES["train"]).write_bytes(hostile_tar(outer))
    elif field == "inner member name":
        rewrite_class(
            d, 0, lambda imgs: hostile_tar([(f"{imgs[0][0].split('_')[0]}_{value}.JPEG", imgs[0][1]), *imgs[1:]])
        )
    elif field == "val member name":
        images = members(d / FILES["val"])
        images[0] = (f"ILSVRC2012_val_{value}.JPEG", images[0][1])
        (d / FILES["val"]).write_bytes(hostile_tar(images))


def gt_with(data: bytes, value: str) -> bytes:
    lines = data.decode().split("\n")
    lines[0] = value
    return "\n".join(lines).encode("utf-8", "surrogateescape")


# field -> (a legitimate value, where the error must point: the archive, and a word naming the field)
FIELDS = {
    "WNID": ("n01440764", "devkit", "WNID"),
    "ILSVRC2012_ID": ("1", "devkit", "ILSVRC2012_ID"),
    "ground-truth line": ("1", "devkit", ": line "),
    "class tar name": ("n01440764", "train", "member"),
    "inner member name": ("1", "train", "member"),
    "val member name": ("00000001", "val", "member"),
}
CASES = [(field, name) for field, (legit, _, _) in FIELDS.items() for name in hostile_values(legit)]


def snapshot(sandbox: Path, root: Path) -> dict:
    return {str(p): p.lstat().st_mode for p in sandbox.rglob("*") if root not in p.parents and p != root}


@pytest.mark.parametrize("field,case", CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_hostile_name_is_refused_before_any_byte_escapes(field, case, archives, tmp_path, capsys):
    result = archives("tiny")
    sandbox = tmp_path / "sandbox"
    d = copy_archives(result, sandbox / "archives")
    legit, archive, word = FIELDS[field]
    inject(field, hostile_values(legit)[case], d)
    root = sandbox / "data" / "root"
    root.parent.mkdir()
    before = snapshot(sandbox, root)
    nulls = [f"dataset.archives.{k}.md5=null" for k in FILES]
    capsys.readouterr()
    split = "all" if archive == "devkit" else archive  # the other split has nothing to show here
    overrides = [*storage_overrides(d, root), *dataset_overrides(result), "cluster=debug", f"split={split}"]
    code = launch("prepare", [*overrides, *nulls])
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    lines = [line for line in err.splitlines() if FILES[archive] in line and word in line]
    assert lines, err[-2000:]
    # the pattern (or, for a number field of meta.mat holding text, the field's type) is named
    assert any(re.search(r"pattern|where (a whole number >= 0|text) belongs", line) for line in lines), lines
    assert "Traceback" not in err
    assert snapshot(sandbox, root) == before
    for split in ("train", "val"):
        assert not (root / ".launcher" / f"complete-{split}.json").exists()
    for path in root.rglob("*"):
        assert root in path.resolve().parents or path.resolve() == root


def test_issue_example_wnid_outside_the_root(archives, tmp_path, capsys):
    """The issue's case: a meta.mat WNID `../../x` made `prepare split=val` write outside the root."""
    result = archives("tiny")
    d = copy_archives(result, tmp_path / "sandbox" / "archives")
    rewrite_devkit(
        d, lambda ms: [(n, set_meta_field(data, 0, "WNID", "../../x") if n == META else data) for n, data in ms]
    )
    root = tmp_path / "sandbox" / "data" / "root"
    overrides = [*storage_overrides(d, root), *dataset_overrides(result), "cluster=debug", "split=val"]
    assert launch("prepare", [*overrides, "dataset.archives.devkit.md5=null"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"ILSVRC2012_devkit_t12\.tar\.gz.*WNID.*'\.\./\.\./x'.*pattern", err), err
    assert not (tmp_path / "sandbox" / "x").exists() and not (tmp_path / "x").exists()
    assert not (root / ".launcher" / "complete-val.json").exists()


def test_arabic_indic_val_member_does_not_alias_another_image(archives, tmp_path, capsys):
    """The issue's case: ILSVRC2012_val_<Arabic-Indic digits>.JPEG was read as image 1 by int(), so the
    real image 1 went missing while val was recorded complete."""
    result = archives("tiny")
    d = copy_archives(result, tmp_path / "archives")
    images = members(d / FILES["val"])
    images.append(("ILSVRC2012_val_" + "00000001".translate(ARABIC) + ".JPEG", b"not the real image 1"))
    write_tar(d / FILES["val"], images)
    root = tmp_path / "root"
    overrides = [*storage_overrides(d, root), *dataset_overrides(result), "cluster=debug", "split=val"]
    assert launch("prepare", [*overrides, "dataset.archives.val.md5=null"]) == 1
    err = capsys.readouterr().err
    assert FILES["val"] in err and "does not match the pattern" in err
    assert not (root / ".launcher" / "complete-val.json").exists()


def test_unit_checks_the_names_it_reads_back(archives, tmp_path, capsys):
    """Indexes on disk are input too: a val unit refuses a name altered in index-val.json."""
    import json

    result = archives("tiny")
    root = tmp_path / "root"
    overrides = [*storage_overrides(result.archive_dir, root), *dataset_overrides(result), "cluster=debug"]
    val_tar = result.archive_dir / FILES["val"]
    data = index_val(val_tar, compose_config("prepare").dataset.patterns.val_image, len(members(val_tar)))
    data["members"][0][0] = "../../escaped.JPEG"
    (root / ".launcher").mkdir(parents=True)
    (root / ".launcher" / "index-val.json").write_text(json.dumps(data))
    assert launch("prepare", [*overrides, "split=val"]) == 1
    err = capsys.readouterr().err
    assert "'../../escaped.JPEG'" in err and "pattern" in err
    assert not (tmp_path / "escaped.JPEG").exists() and not (root / "escaped.JPEG").exists()
    assert not (root / ".launcher" / "complete-val.json").exists()
