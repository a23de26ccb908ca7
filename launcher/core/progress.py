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


def human_seconds(seconds: float) -> str:
    """3s, 4m05s, 2h03m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Bytes read out of the plan's remaining bytes, with rate and ETA, and units done out of every
    unit of the plan (finalize and md5 units included). On a terminal tqdm redraws one line in place;
    elsewhere (a log file, a pipe, a SLURM job) a plain line at the start, at most every `every_s`
    seconds while units finish, when one fails, and at the end: no carriage returns."""

    def __init__(
        self, label: str, total_units: int, total_bytes: int, stream=None, every_s: float = 30.0, done_units: int = 0
    ):
        from tqdm import tqdm

        self.label, self.total_units, self.total_bytes = label, total_units, total_bytes
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.time()
        self.every_s, self.last_core, self.last_time = every_s, None, 0.0
        self.done_units = done_units
        self.bar = tqdm(
            total=total_bytes,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=self.stream,
            disable=not self.tty,
            dynamic_ncols=True,
            leave=True,
        )

    def postfix(self, done_units: int, failed: int) -> str:
        return f"{done_units}/{self.total_units} units" + (f", {failed} failed" if failed else "")

    def update(self, done_units: int, done_bytes: int, failed: int = 0, final: bool = False) -> None:
        done_bytes = min(done_bytes, self.total_bytes)
        if self.tty:
            self.bar.set_postfix_str(self.postfix(done_units, failed), refresh=False)
            self.bar.update(done_bytes - self.bar.n)
            if final:
                self.bar.close()
            return
        now = time.time()
        first, failing = self.last_core is None, self.last_core is not None and failed != self.last_core[1]
        core = (done_units, failed)
        if final or first or failing or (core != self.last_core and now - self.last_time >= self.every_s):
            print(self.plain_line(done_units, done_bytes, failed, now), file=self.stream, flush=True)
            self.last_core, self.last_time = core, now
        if final:
            self.bar.close()

    def plain_line(self, done_units: int, done_bytes: int, failed: int, now: float) -> str:
        """tqdm's own meter (percent, bytes, elapsed<remaining, rate) without the bar, as one line."""
        meter = self.bar.format_meter(
            done_bytes,
            self.total_bytes,
            now - self.start,
            prefix=self.label,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            postfix=self.postfix(done_units, failed),
            bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )
        return meter.replace("\r", "")
