"""The parsers' fuzz properties (tests/test_fuzz.py) run for longer than CI does: rounds of fresh
random examples until the time is up. CI runs 200 derandomized examples per parser (~30 s); this
runs `--examples` per parser per round, each round with new random draws.

    python benchmarks/fuzz.py                         # 10 minutes, 2,000 examples per parser per round
    python benchmarks/fuzz.py --minutes 60 --examples 5000
    python benchmarks/fuzz.py --rounds 1 -k tarscan   # one round of one parser

Prints, per round and in total, the parser calls made per test and any failure (hypothesis prints
the shrunk input that fails); exits 1 when a round failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="stop starting rounds after this long")
    p.add_argument("--rounds", type=int, default=0, help="at most this many rounds (0: until --minutes)")
    p.add_argument("--examples", type=int, default=2000, help="examples per parser per round")
    p.add_argument("-k", default="", help="pytest -k expression: only some parsers")
    return p.parse_args(argv)


def run_round(args: argparse.Namespace, counts: Path) -> int:
    env = {
        **os.environ,
        "LAUNCHER_FUZZ_EXAMPLES": str(args.examples),
        "LAUNCHER_FUZZ_RANDOM": "1",
        "LAUNCHER_FUZZ_COUNTS": str(counts),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:cacheprovider"]
    command += ["-k", args.k] if args.k else []
    return subprocess.run(command, cwd=REPO, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started, totals, failed, rounds = time.monotonic(), Counter(), 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        while (not args.rounds or rounds < args.rounds) and time.monotonic() - started < args.minutes * 60:
            counts = Path(tmp) / f"round-{rounds}.jsonl"
            code = run_round(args, counts)
            rounds, failed = rounds + 1, failed + (code != 0)
            lines = counts.read_text().splitlines() if counts.exists() else []
            this = Counter({r["test"]: r["calls"] for r in map(json.loads, lines)})
            totals.update(this)
            print(f"round {rounds}: exit {code}, {sum(this.values()):,} calls: {dict(this)}", flush=True)
    minutes = (time.monotonic() - started) / 60
    print(f"{rounds} rounds in {minutes:.1f} min, {failed} failed; {sum(totals.values()):,} parser calls in all:")
    for test, calls in sorted(totals.items()):
        print(f"  {test:24} {calls:>10,}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
