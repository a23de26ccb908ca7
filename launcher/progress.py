"""What the user sees while units run (a live line on a terminal, plain log lines otherwise), and
the summary table at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(headers: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A plain text table; `align` has one of l/r per column (default: first left, rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


class Progress:
    """Units done out of total, bytes, running and failed jobs; redrawn on a terminal."""

    def __init__(self, label: str, total_units: int, total_bytes: int, stream=None, every_s: float = 60.0):
        self.label, self.total_units, self.total_bytes = label, total_units, total_bytes
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.time()
        self.every_s, self.last_line, self.last_time = every_s, "", 0.0

    def update(self, done_units: int, done_bytes: int, failed: int = 0, final: bool = False) -> None:
        elapsed = time.time() - self.start
        rate = done_bytes / elapsed if elapsed > 0 else 0
        frac = done_bytes / self.total_bytes if self.total_bytes else 1.0
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        line = (
            f"{self.label} [{bar}] {done_units}/{self.total_units} units  "
            f"{human_bytes(done_bytes)}/{human_bytes(self.total_bytes)}  {human_bytes(rate)}/s  "
            f"{elapsed:5.1f}s" + (f"  {failed} failed" if failed else "")
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
            return
        now = time.time()
        core = (done_units, failed)
        if final or core != self.last_line or now - self.last_time >= self.every_s:
            print(line, file=self.stream, flush=True)
            self.last_line, self.last_time = core, now
