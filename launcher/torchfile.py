"""torch.save's file format for plain Python values (meta.bin), written and read without importing
torch (~2 s of start-up and ~300 MB per process). Anything else goes to torch itself."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

from launcher import safefs

# torch.save's zip records beside data.pkl (torch 2.x)
RECORDS = {".format_version": b"1", ".storage_alignment": b"64", "byteorder": b"little", "version": b"3\n"}


def save(path: Path, obj: Any) -> int:
    """What `torch.save(obj, path)` writes for plain Python values (no tensors): a zip of
    `<stem>/data.pkl` (a protocol-2 pickle, byte for byte torch's) beside torch's version records;
    `torch.load(path, weights_only=True)` reads it as it reads torch's own. Atomic: .part + rename.
    Returns the size."""
    stem, data = path.name.rsplit(".", 1)[0], pickle.dumps(obj, protocol=2)
    records = {"data.pkl": data, **RECORDS, ".data/serialization_id": hashlib.sha1(data).hexdigest().encode()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, record in records.items():
            archive.writestr(zipfile.ZipInfo(f"{stem}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), record)
    data = buf.getvalue()
    safefs.write_atomic(path, data, temp=f"{path.name}.part")  # O_EXCL temporary, renameat, no links
    return len(data)


class PlainValues(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings and numbers only: no class, no tensor."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a tensor or storage")


def load_plain(path: Path) -> tuple[bool, Any]:
    """(True, value) when `path` is a torch.save zip of plain Python values, which
    `torch.load(path, weights_only=True)` returns the same; (False, None) for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            prefix = names[0].split("/", 1)[0] if names else ""
            if not all(n.startswith(prefix + "/") for n in names) or f"{prefix}/version" not in names:
                return False, None
            if int(archive.read(f"{prefix}/version").strip() or 0) > int(RECORDS["version"]):
                return False, None
            data = archive.read(f"{prefix}/data.pkl")
        return True, PlainValues(io.BytesIO(data)).load()
    except Exception:  # not a zip, no data.pkl, not plain values, cut short: torch decides
        return False, None


def load(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, importing torch only when the file is not plain values."""
    plain, value = load_plain(path)
    if plain:
        return value
    import torch

    return torch.load(path, weights_only=True)
