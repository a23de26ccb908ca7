"""Build broken and hostile variants of the synthetic archives (real tar files, written by tarfile)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from launcher.datasets.imagenet.synth import add_bytes, tar_bytes, tar_info, write_tar, write_tar_gz

from conftest import FILES


def copy_archives(result, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        shutil.copy(result.archive_dir / name, dest / name)
    return dest


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def gz_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def rewrite_class(archive_dir: Path, index: int, change) -> str:
    """Replace the inner tar of class `index` by change(list of (name, bytes)) -> bytes of a tar."""
    path = archive_dir / FILES["train"]
    outer = members(path)
    name, data = outer[index]
    with tarfile.open(fileobj=io.BytesIO(data)) as inner:
        images = [(m.name, inner.extractfile(m).read()) for m in inner.getmembers()]
    outer[index] = (name, change(images))
    write_tar(path, outer)
    return name


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def hostile_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A tar with raw TarInfo entries (links, devices, odd names) and plain (name, bytes) files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                add_bytes(tar, *entry)
    return buf.getvalue()


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tar_info(name, 0)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tar_info(name, 0)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


def rewrite_devkit(archive_dir: Path, change) -> None:
    path = archive_dir / FILES["devkit"]
    write_tar_gz(path, change(gz_members(path)))


__all__ = ["tar_bytes", "write_tar", "write_tar_gz"]
