"""Run one command and report its wall time, CPU time and I/O counters, children included.

    python benchmarks/iowrap.py OUT.json -- command args...

This process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts the command,
then reaps every descendant, including those orphaned when their parent exits first (submitit's
local jobs, `tar` in a shell loop). The kernel adds a reaped child's /proc/<pid>/io counters and
rusage to the parent's, so /proc/self/io read after the last `wait` minus the same read before the
start is the command's total: the process and all its children. Counters (see proc(5)):
  rchar, wchar             bytes passed to read()/write()-like syscalls (count on tmpfs too)
  read_bytes, write_bytes  bytes the block layer reads / pages dirtied for a block device (0 on tmpfs)
  cancelled_write_bytes    dirty bytes dropped again (a file written then deleted before writeback)
Stdout and stderr of the command go to OUT.stdout / OUT.stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {key: int(value) for key, value in (line.split(":") for line in f)}


def reap_all() -> None:
    """Wait for every remaining descendant (they are ours to reap as a subreaper)."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def main() -> int:
    out, sep, *command = sys.argv[1:]
    assert sep == "--" and command, __doc__
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before, cpu_before = io_counters(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(f"{out}.stdout", "wb") as stdout, open(f"{out}.stderr", "wb") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        code = proc.wait()
        t1 = time.perf_counter()
        reap_all()
        t2 = time.perf_counter()
    after, cpu = io_counters(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "returncode": code,
        "seconds": t1 - t0,  # until the command itself exits
        "seconds_all": t2 - t0,  # until its last descendant exits
        "user_s": cpu.ru_utime - cpu_before.ru_utime,
        "sys_s": cpu.ru_stime - cpu_before.ru_stime,
        "max_rss_kb": cpu.ru_maxrss,
        "io": {key: after[key] - before.get(key, 0) for key in after},
    }
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
