"""Synthetic ILSVRC2012 archives of the real shape, deterministic for a seed.

The devkit tar.gz holds `data/meta.mat` (a scipy struct array with the eight synset fields, leaf
and non-leaf synsets, ILSVRC2012_IDs shuffled so that their order is not sorted-WNID order), the
validation ground truth and the blacklist; the train tar holds one inner tar per class with uneven
class sizes; the val tar is flat. The odd files of the real set are added: a CMYK JPEG, a PNG named
.JPEG and a grayscale JPEG. The writers are public so tests can build broken and hostile archives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import tarfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from launcher.core.errors import LauncherError

SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)
RECORD = "synth.json"
MAT_HEADER = b"MATLAB 5.0 MAT-file, written by launcher synth".ljust(116, b" ")
MD5SUMS = "MD5SUMS"
ARCHIVE_KEYS = ("devkit", "train", "val")


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 10
    train_min: int = 4
    train_max: int = 8
    val_per_class: int = 3
    nonleaf: int = 5
    min_side: int = 32
    max_side: int = 64
    quality: int = 90
    odd_files: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Synset:
    ilsvrc_id: int
    wnid: str
    words: str
    children: tuple[int, ...] = ()
    num_train_images: int = 0


@dataclass
class SynthResult:
    archive_dir: Path
    files: dict[str, Path]
    md5: dict[str, str]
    wnids: list[str]
    train_counts: dict[str, int]
    val_wnids: list[str]
    odd_files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False

    def md5_overrides(self) -> list[str]:
        return [f"dataset.archives.{key}.md5={self.md5[key]}" for key in ARCHIVE_KEYS]

    def prepare_command(self, overrides: list[str]) -> str:
        """The `launcher prepare` that prepares these archives: dataset=synthetic, their md5s, and the
        storage and dataset overrides synth ran with (so it finds them), each shell-quoted."""
        keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
        kept = [o for o, k in zip(overrides, keys) if k.startswith(("storage", "dataset.")) and not k.endswith(".md5")]
        return shlex.join(["launcher", "prepare", "dataset=synthetic", *kept, *self.md5_overrides()])


# ---------------------------------------------------------------- images


def encode_image(rng: np.random.Generator, size: tuple[int, int], mode: str, fmt: str, quality: int):
    """A smooth random picture with some grain, encoded as JPEG or PNG bytes."""
    from PIL import Image

    width, height = size
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 10, size=(height, width, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB").convert(mode)
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def random_size(rng: np.random.Generator, spec: SynthSpec) -> tuple[int, int]:
    return tuple(int(x) for x in rng.integers(spec.min_side, spec.max_side + 1, size=2))


# ---------------------------------------------------------------- tar writing


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1_330_000_000  # fixed: the same seed writes the same bytes
    info.mode = 0o644
    info.uname = info.gname = "imagenet"
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(tar_info(name, len(data)), io.BytesIO(data))


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    return buf.getvalue()


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """An uncompressed tar of (name, bytes) members, written atomically."""
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    os.replace(tmp, path)


def write_tar_gz(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A gzip-compressed tar with a fixed gzip timestamp, written atomically."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                add_bytes(tar, name, data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- devkit


def meta_mat_bytes(synsets: list[Synset]) -> bytes:
    """meta.mat as the devkit has it: a struct array `synsets` with the eight fields, in order."""
    import scipy.io

    heights = {s.ilsvrc_id: (1 if s.children else 0) for s in synsets}
    records = np.empty(len(synsets), dtype=[(name, object) for name in SYNSET_FIELDS])
    for i, s in enumerate(synsets):
        records[i] = (
            np.int64(s.ilsvrc_id),
            s.wnid,
            s.words,
            f"gloss of {s.words.split(', ')[0]}",
            np.int64(len(s.children)),
            np.array(s.children, dtype=np.int64),
            np.int64(heights[s.ilsvrc_id]),
            np.int64(s.num_train_images),
        )
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": records})
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER  # savemat stamps the time into the 116-byte text header: fix it
    return bytes(data)


def devkit_members(
    synsets: list[Synset],
    val_ids: list[int],
    meta_member: str,
    ground_truth_member: str,
) -> list[tuple[str, bytes]]:
    """The members of ILSVRC2012_devkit_t12.tar.gz (meta.mat, ground truth, and the rest)."""
    top = meta_member.split("/", 1)[0]
    ground_truth = "".join(f"{i}\n" for i in val_ids).encode()
    blacklisted = "".join(f"{i}\n" for i in range(1, len(val_ids) + 1, 29)).encode()
    return [
        (meta_member, meta_mat_bytes(synsets)),
        (ground_truth_member, ground_truth),
        (f"{top}/data/ILSVRC2012_validation_blacklisted.txt", blacklisted),
        (f"{top}/evaluation/eval.m", b"% synthetic devkit: evaluation code is not included\n"),
        (f"{top}/readme.txt", b"Synthetic ILSVRC2012 devkit written by launcher synth.\n"),
        (f"{top}/COPYING", b"Synthetic data, no rights reserved.\n"),
    ]


# ---------------------------------------------------------------- the dataset


def make_synsets(rng: np.random.Generator, spec: SynthSpec, counts: list[int]) -> list[Synset]:
    """Leaves with ILSVRC2012_IDs 1..C in shuffled WNID order, then non-leaf synsets above them."""
    numbers = rng.choice(np.arange(1_000_000, 99_999_999), size=spec.classes + spec.nonleaf, replace=False)
    wnids = sorted(f"n{n:08d}" for n in numbers[: spec.classes])
    order = rng.permutation(spec.classes)
    if spec.classes > 1 and (order == np.arange(spec.classes)).all():
        order = np.roll(order, 1)  # ILSVRC2012_ID order must not be sorted-WNID order
    leaves = [
        Synset(
            ilsvrc_id=int(rank) + 1,
            wnid=wnids[i],
            words=f"class {i:04d}, synthetic {wnids[i]}",
            num_train_images=counts[i],
        )
        for i, rank in enumerate(order)
    ]
    leaves.sort(key=lambda s: s.ilsvrc_id)
    parents = []
    for j in range(spec.nonleaf):
        children = tuple(s.ilsvrc_id for s in leaves[j :: spec.nonleaf]) or (leaves[j % len(leaves)].ilsvrc_id,)
        wnid = f"n{numbers[spec.classes + j]:08d}"
        total = sum(s.num_train_images for s in leaves if s.ilsvrc_id in children)
        parents.append(Synset(spec.classes + j + 1, wnid, f"group {j}, synthetic {wnid}", children, total))
    return leaves + parents


ODD_KINDS = (("CMYK", "JPEG", "cmyk"), ("RGB", "PNG", "png"), ("L", "JPEG", "grayscale"))


def odd_file_plan(n_classes: int, spec: SynthSpec) -> dict[tuple[int, int], tuple[str, str, str]]:
    """(class index, image index) -> (PIL mode, format, kind) of the odd files of the real set."""
    if not spec.odd_files:
        return {}
    return {(i % n_classes, i // n_classes): kind for i, kind in enumerate(ODD_KINDS)}


def class_images(rng, spec, wnid, count, odd) -> list[tuple[str, bytes, str | None]]:
    """(name, bytes, odd kind or None) of one class's train images, numbered as in the real set."""
    numbers = sorted(rng.choice(np.arange(1, 40_000), size=count, replace=False))
    images = []
    for j, number in enumerate(numbers):
        mode, fmt, kind = odd.get(j, ("RGB", "JPEG", None))
        data = encode_image(rng, random_size(rng, spec), mode, fmt, spec.quality)
        images.append((f"{wnid}_{number}.JPEG", data, kind))
    return images


def synthesize(
    archive_dir: Path,
    spec: SynthSpec,
    files: dict[str, str],
    meta_member: str,
    ground_truth_member: str,
    overwrite: bool = False,
) -> SynthResult:
    """Write the three archives, MD5SUMS and a record of the spec into archive_dir."""
    start = time.perf_counter()
    archive_dir = Path(archive_dir)
    check_spec(spec)
    paths = {key: archive_dir / files[key] for key in ARCHIVE_KEYS}
    reused = reuse_if_same(archive_dir, paths, spec)
    if reused is not None:
        return reused
    refuse_foreign_archives(archive_dir, paths, overwrite)
    archive_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(spec.seed)
    counts = [int(c) for c in rng.integers(spec.train_min, spec.train_max + 1, size=spec.classes)]
    synsets = make_synsets(rng, spec, counts)
    leaves = [s for s in synsets if not s.children]
    wnids = sorted(s.wnid for s in leaves)
    odd = odd_file_plan(spec.classes, spec)
    odd_files: dict[str, str] = {}

    def train_members():
        for i, wnid in enumerate(wnids):
            odd_here = {j: kind for (c, j), kind in odd.items() if c == i}
            images = class_images(rng, spec, wnid, counts[i], odd_here)
            odd_files.update({f"train/{wnid}/{name}": kind for name, _, kind in images if kind})
            yield f"{wnid}.tar", tar_bytes((name, data) for name, data, _ in images)

    write_tar(paths["train"], train_members())

    id_of = {s.wnid: s.ilsvrc_id for s in leaves}
    val_wnids = [wnids[int(c)] for c in rng.permutation(np.repeat(np.arange(spec.classes), spec.val_per_class))]
    val_images = [
        (f"ILSVRC2012_val_{k:08d}.JPEG", encode_image(rng, random_size(rng, spec), "RGB", "JPEG", spec.quality))
        for k in range(1, len(val_wnids) + 1)
    ]
    write_tar(paths["val"], val_images)
    val_ids = [id_of[w] for w in val_wnids]
    write_tar_gz(paths["devkit"], devkit_members(synsets, val_ids, meta_member, ground_truth_member))

    md5 = {key: md5_of(paths[key]) for key in ARCHIVE_KEYS}
    write_md5sums(archive_dir / MD5SUMS, {paths[k].name: md5[k] for k in ARCHIVE_KEYS})
    result = SynthResult(
        archive_dir=archive_dir,
        files=paths,
        md5=md5,
        wnids=wnids,
        train_counts=dict(zip(wnids, counts)),
        val_wnids=val_wnids,
        odd_files=odd_files,
    )
    write_record(archive_dir / RECORD, spec, result)
    result.seconds = time.perf_counter() - start
    return result


def check_spec(spec: SynthSpec) -> None:
    problems = []
    if spec.classes < 1:
        problems.append("synth.classes must be at least 1")
    if not 1 <= spec.train_min <= spec.train_max:
        problems.append("synth.train_min must be at least 1 and at most synth.train_max")
    if spec.val_per_class < 0:
        problems.append("synth.val_per_class must not be negative")
    if not 8 <= spec.min_side <= spec.max_side:
        problems.append("synth.min_side must be at least 8 and at most synth.max_side")
    if spec.odd_files and spec.classes * spec.train_min < len(ODD_KINDS):
        problems.append(f"synth.odd_files needs at least {len(ODD_KINDS)} train images in all")
    if problems:
        raise LauncherError("invalid synth options: " + "; ".join(problems))


# ---------------------------------------------------------------- records


def md5_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_md5sums(path: Path, sums: dict[str, str]) -> None:
    path.write_text("".join(f"{md5}  {name}\n" for name, md5 in sums.items()))


def write_record(path: Path, spec: SynthSpec, result: SynthResult) -> None:
    record = {
        "spec": asdict(spec),
        "files": {k: p.name for k, p in result.files.items()},
        "md5": result.md5,
        "sizes": {k: p.stat().st_size for k, p in result.files.items()},
        "wnids": result.wnids,
        "train_counts": result.train_counts,
        "val_wnids": result.val_wnids,
        "odd_files": result.odd_files,
    }
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def reuse_if_same(archive_dir: Path, paths: dict[str, Path], spec: SynthSpec) -> SynthResult | None:
    """The archives already written for this very spec, untouched since, are reused as they are."""
    try:
        record = json.loads((archive_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    same = record.get("spec") == asdict(spec) and all(
        paths[k].name == record["files"].get(k)
        and paths[k].exists()
        and paths[k].stat().st_size == record["sizes"].get(k)
        for k in ARCHIVE_KEYS
    )
    if not same:
        return None
    return SynthResult(
        archive_dir=archive_dir,
        files=paths,
        md5=record["md5"],
        wnids=record["wnids"],
        train_counts=record["train_counts"],
        val_wnids=record["val_wnids"],
        odd_files=record["odd_files"],
        reused=True,
    )


def refuse_foreign_archives(archive_dir: Path, paths: dict[str, Path], overwrite: bool) -> None:
    """Never overwrite archives synth did not write (they may be the real ImageNet)."""
    present = [p for p in paths.values() if p.exists()]
    if not present or overwrite:
        return
    ours = (archive_dir / RECORD).exists()
    what = "synthetic archives written with other options" if ours else "archives synth did not write"
    raise LauncherError(
        f"{archive_dir} already holds {what}: {', '.join(p.name for p in present)}. "
        "Pass synth.overwrite=true to replace them, or point storage.archive_dir "
        "(or storage.base) somewhere else."
    )
