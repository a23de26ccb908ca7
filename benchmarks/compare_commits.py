"""Two commits of launcher side by side: `prepare split=all` (cluster=local) on the same synthetic
archives, with and without the md5, in alternating (ABBA) order, fresh roots each time; medians of
wall time and CPU seconds (all processes). A regression check across a change, on a noisy machine:
both commits see the same load.

    python benchmarks/compare_commits.py 83c4dbe HEAD --rounds 5

Each commit is checked out into a temporary `git worktree` and imported through PYTHONPATH (the
C extension is not needed: prepare does not decode).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = {"md5": [], "no md5": ["prepare.check_md5=false"]}


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(where), rev], check=True)
    return where


def launcher(tree: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args], env=env, cwd="/tmp", capture_output=True, text=True
    )


def synthesize(tree: Path, archives: Path, classes: int) -> list[str]:
    """Synthetic archives (~0.6 MB per class) and the md5 overrides synth prints."""
    out = launcher(
        tree,
        ["synth", f"storage.archive_dir={archives}", f"synth.classes={classes}", "synth.train_min=10"]
        + ["synth.train_max=10", "synth.val_per_class=2", "synth.min_side=350", "synth.max_side=500"],
    )
    if out.returncode:
        sys.exit(out.stderr)
    return [w for w in out.stdout.split() if w.startswith("dataset.archives.")]


def timed_prepare(tree: Path, archives: Path, root: Path, extra: list[str]) -> tuple[float, float]:
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = launcher(
        tree,
        ["prepare", "dataset=synthetic", f"storage.archive_dir={archives}", f"storage.root={root}", "cluster=local"]
        + extra,
    )
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        sys.exit(out.stderr)
    shutil.rmtree(root, ignore_errors=True)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the commit before the change")
    ap.add_argument("new", help="the commit after it")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians over them)")
    ap.add_argument("--classes", type=int, default=300, help="classes of the synthetic archives")
    ap.add_argument("--work", default="/dev/shm", help="a tmpfs folder for archives and roots")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.work, prefix="launcher-compare-") as tmp:
        work = Path(tmp)
        trees = {rev: checkout(rev, work / f"tree-{i}") for i, rev in enumerate((a.old, a.new))}
        try:
            md5 = synthesize(trees[a.new], work / "archives", a.classes)
            MODES["md5"] = md5
            times: dict[tuple[str, str], list[tuple[float, float]]] = {(r, m): [] for r in trees for m in MODES}
            for n in range(a.rounds):
                order = list(trees) if n % 2 == 0 else list(reversed(trees))
                for mode, extra in MODES.items():
                    for rev in order if mode == "md5" else reversed(order):
                        times[(rev, mode)].append(timed_prepare(trees[rev], work / "archives", work / "root", extra))
                print(f"round {n + 1}/{a.rounds} done; load {os.getloadavg()}", file=sys.stderr)
            print(f"prepare split=all, {a.classes} classes, cluster=local, {a.rounds} rounds (median wall s, CPU s)")
            for mode in MODES:
                row = [
                    f"{rev}: {statistics.median(w for w, _ in times[(rev, mode)]):.2f} s wall, "
                    f"{statistics.median(c for _, c in times[(rev, mode)]):.2f} s CPU"
                    for rev in trees
                ]
                print(f"  {mode:7s} " + " | ".join(row))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
