"""Shared by the benchmark scripts: whole-command timing with I/O counters, alternating runs,
medians and marginal costs, the machine header, synthetic archives at scale, and the writers of
BENCHMARKS.md and results.json.

Whole commands run under `iowrap.py` (wall time, CPU time and /proc/<pid>/io of the command and
all its children). A comparison runs every (contender, size) pair `runs` times in alternating
order (forward on even runs, reversed on odd ones), each in a fresh output folder, and reports
medians. Where start-up would swamp a small synthetic set, the figure compared is the marginal
cost: the median over rounds of T(2S) - T(S), the cost of the second S of work; start-up (the
fixed part, 2 T(S) - T(2S)) is reported on its own.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IOWRAP = HERE / "iowrap.py"
FILES = {
    "devkit": "ILSVRC2012_devkit_t12.tar.gz",
    "train": "ILSVRC2012_img_train.tar",
    "val": "ILSVRC2012_img_val.tar",
}
META = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the machine


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def machine() -> dict:
    """Cores, CPU, memory, Python and the libraries that matter, without importing torch."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "pillow": package_version("Pillow"),
        "submitit": package_version("submitit"),
        "hydra": package_version("hydra-core"),
        "tar": tar[0] if tar else "-",
        "commit": (commit.stdout.strip() or "?") + (" + uncommitted changes" if dirty.stdout.strip() else ""),
        "load_average": os.getloadavg(),
    }


def filesystem(path: Path) -> str:
    """The file system type of the mount holding `path` (tmpfs, ext4, ...)."""
    path, best = os.path.realpath(path), ("", "?")
    for line in open("/proc/mounts"):
        _, mount, kind, *_ = line.split()
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[0]):
            best = (mount, kind)
    return best[1]


# ---------------------------------------------------------------- running whole commands


@dataclass
class Run:
    """One run of a whole command: wall seconds, CPU seconds, I/O counters (children included)."""

    seconds: float
    user_s: float = 0.0
    sys_s: float = 0.0
    io: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def run_command(
    cmd: Sequence[str], out: Path, env: dict | None = None, cwd: Path | None = None, check: bool = True
) -> Run:
    """Run `cmd` under iowrap.py; its stdout/stderr land beside `out` (a JSON file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    setenv = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []  # for the command, not iowrap
    wrapped = [sys.executable, str(IOWRAP), str(out), "--", *setenv, *map(str, cmd)]
    subprocess.run(wrapped, cwd=cwd, check=True)
    result = json.loads(out.read_text())
    if check and result["returncode"] != 0:
        tail = Path(f"{out}.stderr").read_text()[-3000:] + Path(f"{out}.stdout").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result['returncode']}):\n{tail}")
    return Run(result["seconds"], result["user_s"], result["sys_s"], result["io"])


def sync() -> None:
    """Flush dirty pages so one disk run's writeback does not land in the next run's time."""
    subprocess.run(["sync"], check=False)


Contender = Callable[[int], Run]  # run index -> one measurement (the callable makes and removes its folders)


def alternate(contenders: dict[str, Contender], runs: int, label: str = "") -> dict[str, list[Run]]:
    """Every contender `runs` times: forward order on even runs, reversed on odd ones (ABBA)."""
    out: dict[str, list[Run]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(contenders[name](r))
        log(f"{label} run {r + 1}/{runs}: " + ", ".join(f"{n} {out[n][-1].seconds:.2f}s" for n in names))
    return out


def spread_rounds(runs: int, rounds: int) -> set[int]:
    """The `runs` rounds of `rounds` a contender with fewer runs takes part in, evenly spread (1 of 3:
    the middle one; 2 of 3: the first and the last)."""
    return {min(rounds - 1, round((i + 0.5) * rounds / runs - 0.5)) for i in range(runs)}


def alternate_uneven(
    contenders: dict[str, tuple[Contender, int]], rounds: int, label: str = ""
) -> dict[str, list[Run]]:
    """`alternate` for contenders with different numbers of runs (a slow one may run fewer times): in
    every round, forward order on even rounds and reversed on odd ones, each contender in the rounds
    spread_rounds gives it."""
    out: dict[str, list[Run]] = {name: [] for name in contenders}
    names = list(contenders)
    takes = {name: spread_rounds(runs, rounds) for name, (_, runs) in contenders.items()}
    for r in range(rounds):
        ran = []
        for name in names if r % 2 == 0 else names[::-1]:
            if r in takes[name]:
                out[name].append(contenders[name][0](r))
                ran.append(name)
        log(f"{label} round {r + 1}/{rounds}: " + ", ".join(f"{n} {out[n][-1].seconds:.2f}s" for n in ran))
    return out


def median(runs: list[Run], key: str = "seconds") -> float:
    return statistics.median(getattr(r, key) if key in ("seconds", "user_s", "sys_s") else r.io[key] for r in runs)


@dataclass
class Marginal:
    """A contender's values at sizes S and 2S, run by run. The S and 2S runs of one contender are
    adjacent in every round (see `alternate`), so the marginal cost is the median of the per-round
    differences T(2S) - T(S): a slow change of the machine's load between rounds cancels out."""

    small: list[float]
    large: list[float]

    @property
    def at_s(self) -> float:
        return statistics.median(self.small)

    @property
    def at_2s(self) -> float:
        return statistics.median(self.large)

    @property
    def marginal(self) -> float:
        return statistics.median(b - a for a, b in zip(self.small, self.large))

    @property
    def startup(self) -> float:
        """The fixed part: 2 T(S) - T(2S), per round, median."""
        return statistics.median(2 * a - b for a, b in zip(self.small, self.large))

    def to_json(self) -> dict:
        return {
            "S": self.at_s,
            "2S": self.at_2s,
            "marginal": self.marginal,
            "startup": self.startup,
            "runs_S": self.small,
            "runs_2S": self.large,
        }


def values(runs: list[Run], key: str = "seconds") -> list[float]:
    return [getattr(r, key) if key in ("seconds", "user_s", "sys_s") else r.io[key] for r in runs]


def marginal(small: list[Run], large: list[Run], key: str = "seconds") -> Marginal:
    return Marginal(values(small, key), values(large, key))


def fresh(path: Path) -> Path:
    """An empty folder at `path` (whatever was there is removed first)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------- synthetic archives at scale


def photo_jpeg(rng, width: int, height: int, quality: int = 90) -> bytes:
    """Smooth colour regions, mid-frequency texture and grain: ~100 KB at 500x375, q90 (ImageNet's mean
    is ~110 KB), so bytes and decode cost are those of real photos."""
    import numpy as np
    from PIL import Image

    low = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    low = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.float32)
    mid = rng.integers(0, 256, (height // 2 + 1, width // 2 + 1, 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(mid).resize((width, height), Image.BILINEAR), dtype=np.float32)
    pixels = low * 0.7 + mid * 0.3 + rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


SHAPES = ((500, 375), (375, 500), (500, 333), (500, 400), (333, 500), (500, 357))


@functools.cache
def jpeg_pool(size: int, seed: int = 0) -> list[bytes]:
    """`size` distinct realistic JPEGs; archives reuse them under many names (prepare never decodes,
    and the bytes per file are what cost)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [photo_jpeg(rng, *SHAPES[k % len(SHAPES)]) for k in range(size)]


@functools.cache
def tiny_jpeg_pool(size: int, seed: int = 0) -> list[bytes]:
    """`size` distinct real JPEGs of ~1 KB (40x30, q75: ~975 bytes, 1 KiB of tar data each): at
    ImageNet's file counts the cost is per file, and a full-count set stays ~2 GB on tmpfs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [photo_jpeg(rng, 40, 30, quality=75) for _ in range(size)]


# ImageNet's train split: 1000 classes of 732-1300 images, 1,281,167 in all; 50 val images per class
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000
IMAGENET_VAL_PER_CLASS = 50


@functools.cache
def imagenet_counts() -> tuple[int, ...]:
    """A deterministic per-class train count list of ImageNet's shape: 966 classes of 1300 (most of
    ImageNet's have 1300), 33 of 732 (its minimum), one of 1211; the sum is exactly 1,281,167. The
    short classes sit at fixed, spread-out positions (a seeded permutation)."""
    import numpy as np

    counts = np.full(IMAGENET_CLASSES, 1300)
    short = np.random.default_rng(2012).permutation(IMAGENET_CLASSES)[:34]
    counts[short[:33]] = 732
    counts[short[33]] = IMAGENET_TRAIN_IMAGES - int(counts.sum() - counts[short[33]])
    assert counts.sum() == IMAGENET_TRAIN_IMAGES and counts.min() >= 732 and counts.max() <= 1300
    return tuple(int(c) for c in counts)


def full_count_counts(classes: int = IMAGENET_CLASSES) -> list[int]:
    """ImageNet's per-class counts (imagenet_counts) at `classes` classes: all 1000 of them, or that
    many evenly spread quantiles of them (the same share of short classes at a smaller scale, for
    checking the benchmarks)."""
    full = imagenet_counts()
    if classes == IMAGENET_CLASSES:
        return list(full)
    ranked = sorted(full)
    return [ranked[(2 * i + 1) * IMAGENET_CLASSES // (2 * classes)] for i in range(classes)]


# ---------------------------------------------------------------- tar bytes written directly


@functools.cache
def _ustar_template() -> tuple[bytes, bytes, bytes, int]:
    """The parts of a header tarfile writes for synth.tar_info's fields that do not depend on the name
    or the size (mode/uid/gid, mtime, typeflag onwards), and their byte sum with the checksum as spaces."""
    from launcher.datasets.imagenet.synth import tar_info

    header = tar_info("x", 0).tobuf(format=0)  # tarfile.USTAR_FORMAT
    ids, mtime, rest = header[100:124], header[136:148], header[156:512]
    return ids, mtime, rest, sum(ids) + sum(mtime) + 8 * ord(" ") + sum(rest)


def ustar_header(name: bytes, size: int) -> bytes:
    """The 512-byte header tarfile writes for tar_info(name, size) in USTAR format (byte for byte: a
    test compares), ~20x faster (a million members a second or so)."""
    ids, mtime, rest, fixed = _ustar_template()
    size_field = b"%011o\0" % size
    checksum = fixed + sum(name) + sum(size_field)
    return b"".join((name.ljust(100, b"\0"), ids, size_field, mtime, b"%06o\0 " % checksum, rest))


BLOCK, RECORD = 512, 20 * 512


def tar_chunks(members: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """The bytes of an uncompressed USTAR tar of (name, data) members, in pieces, as tarfile writes it
    (headers, data padded to 512, two zero blocks, zeros up to a 10 KiB record)."""
    written = 0
    for name, data in members:
        pad = -len(data) % BLOCK
        yield ustar_header(name.encode(), len(data))
        yield data
        if pad:
            yield bytes(pad)
        written += BLOCK + len(data) + pad
    end = 2 * BLOCK
    yield bytes(end + -(written + end) % RECORD)


def fast_tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """synth.tar_bytes, written directly."""
    return b"".join(tar_chunks(members))


def fast_write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """synth.write_tar (atomically: a .part file renamed), written directly."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb", buffering=8 << 20) as f:
        for chunk in tar_chunks(members):
            f.write(chunk)
    os.replace(tmp, path)


@dataclass
class ArchiveSet:
    """Three ILSVRC2012-shaped archives in `folder`, their md5s and sizes."""

    folder: Path
    classes: int
    train_images: int
    val_images: int
    md5: dict[str, str]
    sizes: dict[str, int]

    def path(self, key: str) -> Path:
        return self.folder / FILES[key]

    def md5_overrides(self, keys: Sequence[str] = ("devkit", "train", "val")) -> list[str]:
        return [f"dataset.archives.{k}.md5={self.md5[k]}" for k in keys]

    def to_json(self) -> dict:
        return {
            "folder": str(self.folder),
            "classes": self.classes,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "bytes": self.sizes,
        }


def make_archives(
    folder: Path,
    classes: int,
    per_class: int,
    val_per_class: int,
    pool_size: int = 96,
    seed: int = 0,
    counts: Sequence[int] | None = None,
    tiny: bool = False,
):
    """ILSVRC2012-shaped archives: a devkit whose meta.mat has shuffled ILSVRC2012_IDs
    (launcher.datasets.imagenet.synth's writer), a train tar of `classes` inner class tars of `per_class`
    JPEGs (or counts[i] in the i-th class, in WNID order), a flat val tar of `val_per_class` images per
    class. The JPEGs come from a pool of `pool_size` distinct ones: ~500x375 photos of ~100 KB, or
    with `tiny` ~1 KB ones (tiny_jpeg_pool). Tar bytes are written directly (tar_chunks: a full-count
    set in about a minute). Written once; an existing set with the same shape is reused."""
    import numpy as np

    from launcher.datasets.imagenet.synth import SynthSpec, devkit_members, make_synsets, write_tar_gz

    counts = list(counts) if counts is not None else [per_class] * classes
    assert len(counts) == classes, (len(counts), classes)
    record = folder / "bench-archives.json"
    shape = {
        "classes": classes,
        "per_class": per_class,
        "val_per_class": val_per_class,
        "pool": pool_size,
        "seed": seed,
    }
    if counts != [per_class] * classes:
        shape["counts"] = counts
    if tiny:
        shape["tiny"] = True
    if record.exists():
        saved = json.loads(record.read_text())
        if saved["shape"] == shape and all((folder / FILES[k]).exists() for k in FILES):
            return ArchiveSet(folder, classes, sum(counts), classes * val_per_class, saved["md5"], saved["sizes"])
    fresh(folder)
    pool = tiny_jpeg_pool(pool_size) if tiny else jpeg_pool(pool_size)
    rng = np.random.default_rng(seed)
    spec = SynthSpec(classes=classes, train_min=min(counts), train_max=max(counts), val_per_class=val_per_class)
    synsets = make_synsets(rng, spec, counts)
    leaves = [s for s in synsets if not s.children]
    wnids = sorted(s.wnid for s in leaves)
    picks = iter(rng.integers(0, len(pool), size=sum(counts) + classes * val_per_class).tolist())

    def class_tars():
        for wnid, count in zip(wnids, counts):
            numbers = sorted(rng.choice(np.arange(1, 40_000), size=count, replace=False).tolist())
            yield f"{wnid}.tar", fast_tar_bytes((f"{wnid}_{n}.JPEG", pool[next(picks)]) for n in numbers)

    fast_write_tar(folder / FILES["train"], class_tars())
    order = rng.permutation(np.repeat(np.arange(classes), val_per_class))
    val_wnids = [wnids[int(c)] for c in order]
    fast_write_tar(
        folder / FILES["val"],
        ((f"ILSVRC2012_val_{k:08d}.JPEG", pool[next(picks)]) for k in range(1, len(val_wnids) + 1)),
    )
    id_of = {s.wnid: s.ilsvrc_id for s in leaves}
    write_tar_gz(folder / FILES["devkit"], devkit_members(synsets, [id_of[w] for w in val_wnids], META, GROUND_TRUTH))
    md5 = {k: md5_of(folder / name) for k, name in FILES.items()}
    sizes = {k: (folder / name).stat().st_size for k, name in FILES.items()}
    record.write_text(json.dumps({"shape": shape, "md5": md5, "sizes": sizes}))
    return ArchiveSet(folder, classes, sum(counts), len(val_wnids), md5, sizes)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def link_archives(archives: ArchiveSet, into: Path, keys: Sequence[str] = ("devkit", "train", "val")) -> None:
    """Hard links to the archives in `into` (torchvision looks for them in its root); a copy across
    file systems."""
    into.mkdir(parents=True, exist_ok=True)
    for key in keys:
        try:
            os.link(archives.path(key), into / FILES[key])
        except OSError:
            shutil.copy(archives.path(key), into / FILES[key])


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table."""

    id: str
    what: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: reported only
    note: str = ""
    # for a row that misses: why, and what would close it
    why: str = ""

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "**NO**")
        return [self.id, self.what, self.ours, self.baseline, self.ratio, self.target, met]


@dataclass
class Section:
    """A row group's results: table rows, prose on where the time goes, raw figures for the JSON."""

    id: str
    title: str
    rows: list[Row] = field(default_factory=list)
    text: str = ""
    data: dict = field(default_factory=dict)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(x: float) -> str:
    return f"{x:.2f} s" if abs(x) >= 0.1 else f"{x * 1000:.0f} ms"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if abs(n) >= 2**20 else f"{n / 1024:,.1f} KiB"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# ---------------------------------------------------------------- what every row gets


@dataclass
class Context:
    """Where the rows work and at what scale; archive sets and shared measurements are cached."""

    # tmpfs folder for archives, outputs and logs
    work: Path
    # a folder on the local disk for the disk figures; None skips them
    disk: Path | None
    # alternating runs of every measurement
    runs: int
    # S: classes of the small archive set (2S has twice as many)
    classes: int
    # train images per class
    per_class: int
    # val images per class
    val_per_class: int
    # smaller and fewer measurements (a smoke test of the benchmarks themselves)
    quick: bool = False
    # measure on the local SLURM cluster too (None: when `sinfo` answers)
    slurm: bool | None = None
    # the rows being run (rows that share measurements add their contenders to one group)
    rows: set[str] = field(default_factory=set)
    # classes of the full-count set (ImageNet's 1000: 1,281,167 train images; fewer keeps its shape)
    full_classes: int = IMAGENET_CLASSES
    # where the full-count archive set is written once and kept (tmpfs; not removed after a run)
    full_dir: Path = Path("/dev/shm/launcher-bench-fullcount")
    _memo: dict = field(default_factory=dict)

    @property
    def sizes(self) -> tuple[int, int]:
        return self.classes, 2 * self.classes

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def archives(self, classes: int, on_disk: bool = False) -> ArchiveSet:
        key = ("archives", classes, on_disk)
        if key not in self._memo:
            tmpfs = make_archives(self.work / f"archives-{classes}", classes, self.per_class, self.val_per_class)
            self._memo[key] = copy_archives(tmpfs, self.disk / f"archives-{classes}") if on_disk else tmpfs
        return self._memo[key]

    def memo(self, key, compute: Callable):
        """compute() once per key (rows that share measurements run them once)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def copy_archives(archives: ArchiveSet, folder: Path) -> ArchiveSet:
    """The same archives in another folder (the disk), copied once."""
    record = folder / "bench-archives.json"
    source = archives.folder / "bench-archives.json"
    if not (record.exists() and record.read_text() == source.read_text()):
        fresh(folder)
        for name in FILES.values():
            shutil.copyfile(archives.folder / name, folder / name)
        shutil.copyfile(source, record)
        sync()
    return ArchiveSet(
        folder, archives.classes, archives.train_images, archives.val_images, archives.md5, archives.sizes
    )
