"""A split's samples from the prepare manifest, as compact columns cached per user (no directory walk)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

from launcher.core.manifest import read_manifest

try:  # the C extension (launcher/data/_jpeg.c, built against libjpeg-turbo): decodes only a train crop
    from launcher.data import _jpeg
except ImportError:  # built without libjpeg's headers: every image is decoded whole
    _jpeg = None


def manifest_for(state_dir: str | Path | None, split: str) -> Columns | dict | None:
    """The columns of the prepare manifest of `split` (None when there is none): from the binary
    cache of that manifest when it matches (one stat, one read), else parsed and then cached."""
    if state_dir is None:
        return None
    path = Path(state_dir) / f"manifest-{split}.json"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "split": split}
    caches = cache_paths(path)
    for cache in caches:
        if (columns := Columns.read(cache, key)) is not None:
            return columns
    manifest = read_manifest(path)
    if manifest is None or manifest.get("split") != split or len(manifest["paths"]) != len(manifest["targets"]):
        return None
    columns = Columns.from_manifest(manifest)
    if columns is None:
        return manifest
    for cache in caches:
        if columns.write(cache, key):
            break
    return columns


def cache_paths(manifest: Path) -> list[Path]:
    """Beside the manifest, or (read-only state folder) in the user's cache folder."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "launcher"
    digest = hashlib.sha1(str(manifest.absolute()).encode()).hexdigest()[:16]
    return [manifest.with_suffix(".columns"), user / f"{manifest.stem}-{digest}.columns"]


class Columns:
    """A split's manifest in ImageFolder's order as compact columns: per class (sorted class folders) its
    image count, and every file name in one UTF-8 string with offsets. Stored as a binary cache of
    the JSON manifest, it loads in milliseconds for 1.28 M images."""

    MAGIC = b"launcher-columns 2\n"

    def __init__(self, wnids: list, classes: list, counts: list[int], names: bytes, offsets: array):
        self.wnids, self.classes, self.counts, self.names, self.offsets = wnids, classes, counts, names, offsets

    @classmethod
    def from_manifest(cls, manifest: dict) -> Columns | None:
        """None when the manifest is not in ImageFolder's order (classes sorted, files under their class)."""
        wnids, paths, targets = manifest["wnids"], manifest["paths"], manifest["targets"]
        if wnids != sorted(wnids) or any(b < a for a, b in zip(targets, targets[1:])):
            return None
        names = []
        for path, target in zip(paths, targets):
            folder, _, name = path.rpartition("/")  # a class folder may be nested (a/arena/hockey)
            if folder != wnids[target] or not name:
                return None
            names.append(name.encode())
        offsets = array("q", [0])
        offsets.extend(itertools.accumulate(map(len, names)))
        counts = [0] * len(wnids)
        for target in targets:
            counts[target] += 1
        return cls(wnids, manifest["classes"], counts, b"".join(names), offsets)

    def target_list(self) -> list[int]:
        targets: list[int] = []
        for target, count in enumerate(self.counts):
            targets += [target] * count
        return targets

    def write(self, path: Path, key: dict) -> bool:
        """Write atomically; False when the folder is not writable."""
        header = {**key, "wnids": self.wnids, "classes": self.classes, "counts": self.counts}
        header["sizes"] = [len(self.offsets) * self.offsets.itemsize, len(self.names)]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(self.MAGIC + json.dumps(header).encode() + b"\n")
                f.write(self.offsets.tobytes())
                f.write(self.names)
            os.replace(tmp, path)
            return True
        except OSError:
            tmp.unlink(missing_ok=True)
            return False

    @classmethod
    def read(cls, path: Path, key: dict) -> Columns | None:
        """The cached columns when `path` holds them for this manifest (`key`), else None."""
        try:
            with open(path, "rb") as f:
                if f.readline() != cls.MAGIC or sys.byteorder != "little":
                    return None
                header = json.loads(f.readline())
                if any(header.get(k) != v for k, v in key.items()):
                    return None
                offsets = array("q")
                offsets.frombytes(f.read(header["sizes"][0]))
                names = f.read()
        except (OSError, ValueError, KeyError):
            return None
        if len(names) != header["sizes"][1] or len(offsets) != sum(header["counts"]) + 1:
            return None
        return cls(header["wnids"], header["classes"], header["counts"], names, offsets)


class SampleList(Sequence):
    """torchvision's `samples` (and `imgs`): (path, class index) of every image, equal to the list
    ImageFolder builds, with each tuple made on access from the file names (no million tuples to
    build at start, nor to copy into every DataLoader worker)."""

    __slots__ = ("prefixes", "names", "offsets", "targets")

    def __init__(self, prefixes: list[str], names: bytes, offsets: array, targets: list[int]):
        self.prefixes, self.names, self.offsets, self.targets = prefixes, names, offsets, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self.targets)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("sample index out of range")
        target = self.targets[index]
        return self.prefixes[target] + self.names[self.offsets[index] : self.offsets[index + 1]].decode(), target

    def __iter__(self) -> Iterator[tuple[str, int]]:
        prefixes, names, offsets = self.prefixes, self.names, self.offsets
        for i, target in enumerate(self.targets):
            yield prefixes[target] + names[offsets[i] : offsets[i + 1]].decode(), target

    def __eq__(self, other) -> bool:
        if isinstance(other, SampleList):
            mine = (self.prefixes, self.names, self.offsets, self.targets)
            return mine == (other.prefixes, other.names, other.offsets, other.targets)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} samples of {len(self.prefixes)} classes>"
