"""Slow metadata operations under one folder, as on a busy Lustre: builds and drives slowfs.c, an
LD_PRELOAD shim (see its header for exactly which calls it delays and how a path is matched).

    shim = SlowFs.build()                                   # gcc, cached by the source's hash
    env = shim.env(prefix, counts_file, delay_s=0.0005)     # LD_PRELOAD + SLOWFS_* for a child process
    ...run the child...
    shim.read(counts_file)  -> Counts(seen, delayed, slept_s)

The shim acts in processes started with that environment (and their forked or exec'd children, which
inherit LD_PRELOAD); this process is never affected. With delay_s=0 it only counts.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "slowfs.c"
KINDS = ("open", "stat", "fstat", "opendir")
LAYOUT = struct.Struct(f"<{2 * len(KINDS) + 1}Q")  # seen[4], delayed[4], slept_ns


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "launcher-bench"


@dataclass
class Counts:
    """What the shim counted in every process that shared one counts file."""

    seen: dict[str, int]
    delayed: dict[str, int]
    slept_s: float

    @property
    def total_delayed(self) -> int:
        return sum(self.delayed.values())

    @property
    def mean_delay_s(self) -> float:
        return self.slept_s / self.total_delayed if self.total_delayed else 0.0

    def to_json(self) -> dict:
        return {"seen": self.seen, "delayed": self.delayed, "slept_s": self.slept_s}


@dataclass
class SlowFs:
    library: Path

    @classmethod
    def build(cls) -> SlowFs:
        """slowfs.c compiled with gcc into the cache folder, once per version of the source."""
        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
        library = cache_dir() / f"slowfs-{digest}.so"
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            tmp = library.with_suffix(f".{os.getpid()}.tmp")
            cmd = ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"]
            subprocess.run(cmd, check=True)
            os.replace(tmp, library)
        return cls(library)

    def env(self, prefix: Path, counts: Path, delay_s: float = 0.0005) -> dict[str, str]:
        """The environment that loads the shim: operations under `prefix` delayed by `delay_s` and
        counted into `counts` (created empty here)."""
        counts.unlink(missing_ok=True)
        preload = " ".join(filter(None, [str(self.library), os.environ.get("LD_PRELOAD", "")]))
        return {
            "LD_PRELOAD": preload,
            "SLOWFS_PREFIX": str(prefix),
            "SLOWFS_DELAY_NS": str(round(delay_s * 1e9)),
            "SLOWFS_COUNTS": str(counts),
        }

    @staticmethod
    def read(counts: Path) -> Counts:
        """The counters the shim left in `counts` (all zero when no process loaded it)."""
        data = counts.read_bytes() if counts.exists() else b""
        values = LAYOUT.unpack(data[: LAYOUT.size]) if len(data) >= LAYOUT.size else (0,) * (2 * len(KINDS) + 1)
        n = len(KINDS)
        return Counts(dict(zip(KINDS, values[:n])), dict(zip(KINDS, values[n : 2 * n])), values[-1] / 1e9)
