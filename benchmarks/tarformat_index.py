"""The tar index's build time against one `md5sum` pass over the same train tar (a script, not a test).

Writes an ILSVRC2012-shaped train tar (a tar of class tars; image bytes are random, the index never
decodes them) under --workdir (default /dev/shm: tmpfs, so the figures are CPU, not disk), then times,
alternating, median of --runs:

- `md5sum` of the archive (the floor any preparation that checks the md5 pays);
- launcher.tarformat.index.index_archive(md5=True): the index and the md5 in one sequential read;
- index_archive() without md5: headers only (one 512-byte pread per member);
- writing + reading back the index file, with its size per image.

    python benchmarks/tarformat_index.py                                  # ~1.1 GB, 10,000 images
    python benchmarks/tarformat_index.py --classes 100 --per-class 1281 --image-bytes 600   # count-bound
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

from launcher.datasets.imagenet.devkit import Devkit
from launcher.datasets.imagenet.synth import tar_bytes, tar_info
from launcher.tarformat import index as T
from launcher.tarformat.indexfile import read_index, write_index

# conf/dataset/imagenet.yaml's dataset.patterns
IMAGENET_PATTERNS = {
    "wnid": r"n[0-9]{8}",
    "train_class": r"n[0-9]{8}\.tar",
    "train_image": r"{wnid}_[0-9]+\.JPEG",
    "val_image": r"ILSVRC2012_val_([0-9]{8})\.JPEG",
}


def write_train_tar(path: Path, classes: int, per_class: int, image_bytes: int, seed: int = 0) -> Devkit:
    """Class tars n00000000.tar ... of `per_class` images of ~image_bytes (±50%) each."""
    rng = random.Random(seed)
    wnids = [f"n{10_000_000 + 7919 * i:08d}" for i in range(classes)]
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as outer:
        for wnid in wnids:
            numbers = rng.sample(range(1, 40_000), per_class)
            sizes = [rng.randint(image_bytes // 2, image_bytes * 3 // 2) for _ in numbers]
            inner = tar_bytes((f"{wnid}_{n}.JPEG", rng.randbytes(k)) for n, k in zip(numbers, sizes))
            info = tar_info(f"{wnid}.tar", len(inner))
            outer.addfile(info, io.BytesIO(inner))
    os.replace(tmp, path)
    return Devkit({w: (f"class {w}",) for w in wnids}, {w: per_class for w in wnids}, [])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm/launcher-bench-tarformat"))
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-bytes", type=int, default=110_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"train-{args.classes}x{args.per_class}x{args.image_bytes}.tar"
    devkit = write_train_tar(path, args.classes, args.per_class, args.image_bytes)
    patterns = T.Patterns.of(IMAGENET_PATTERNS)
    rows: dict[str, list[float]] = {"md5sum": [], "index + md5, one read": [], "index, headers only": []}
    rows["index file write + read"] = []
    index, out = None, args.workdir / "tarindex-train.bin"

    def write_and_read(index: T.TarIndex) -> None:
        write_index(out, index)
        read_index(out, "train")

    for _ in range(args.runs):
        rows["md5sum"].append(timed(lambda: subprocess.run(["md5sum", str(path)], check=True, capture_output=True)))
        rows["index + md5, one read"].append(timed(lambda: T.index_archive(path, "train", devkit, patterns, md5=True)))
        start = time.perf_counter()
        index = T.index_archive(path, "train", devkit, patterns)
        rows["index, headers only"].append(time.perf_counter() - start)
        rows["index file write + read"].append(timed(lambda: write_and_read(index)))  # noqa: B023
    size = out.stat().st_size
    images, nbytes = len(index), path.stat().st_size
    base = statistics.median(rows["md5sum"])
    print(f"{path.name}: {nbytes / 1e9:.2f} GB, {images:,} images in {args.classes} class tars; median of {args.runs}")
    print("| step | seconds | vs md5sum | µs per image |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / base:.2f}x | {median / images * 1e6:.1f} |")
    per_image = size / images
    scaled = per_image * 1.331167
    print(f"index file: {size:,} bytes, {per_image:.1f} bytes per image (1,331,167 images: ~{scaled:.0f} MB)")
    path.unlink()


if __name__ == "__main__":
    main()
