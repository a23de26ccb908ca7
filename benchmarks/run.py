"""The one benchmark command (issue #7): synthesize ILSVRC2012-shaped archives, run every row with
alternating A/B runs in fresh folders, print medians and ratios, write BENCHMARKS.md + results.json.

    python benchmarks/run.py                      # every row, the full scale (< 15 min on 2 cores)
    python benchmarks/run.py --rows B1,B7         # some rows; the others keep their last figures
    python benchmarks/run.py --quick              # small and fast: checks that the benchmarks run;
                                                  # writes benchmarks/results/BENCHMARKS-quick.md

Rows come from the bench_*.py modules beside this file. A module takes part by exposing
`ROWS = {"B4": fn, ...}` where `fn(ctx: common.Context) -> common.Section` (or a list of them);
a module without ROWS is run as a script (`python bench_x.py --runs N`) and its printed tables
are included as they are. Row -> module: B1 B2 B6 B7 bench_prepare; B4 bench_verify; B3 B5 B9 (and
B6's time to the first batch) bench_loaders; B8 B10 B3F (B3 at full count) bench_fullcount, on a set of
ImageNet's exact file counts written once into --full-count-dir and kept there (~2 GB; ~1.5 min to write).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HERE,
    IMAGENET_CLASSES,
    IMAGENET_VAL_PER_CLASS,
    Context,
    Row,
    Section,
    full_count_counts,
    log,
    machine,
    markdown_table,
)

ORDER = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B3F"]
# the modules that measure each row, in order
MODULES = {
    "B1": ["bench_prepare"],
    "B2": ["bench_prepare"],
    "B3": ["bench_loaders"],
    "B4": ["bench_verify"],
    "B5": ["bench_loaders"],
    "B6": ["bench_prepare", "bench_loaders"],  # bench_loaders: the time to the first batch
    "B7": ["bench_prepare"],
    "B8": ["bench_fullcount"],  # B8, B10, B3F: ImageNet's file counts (B3F: B3 at full count)
    "B9": ["bench_loaders"],
    "B10": ["bench_fullcount"],
    "B3F": ["bench_fullcount"],
}
# rows a module measures when it has no ROWS and is run as a script
SCRIPT_ROWS = {"bench_verify": ["B4"], "bench_loaders": ["B3", "B5"]}
# how a module without ROWS is run as a script: (arguments, quick arguments); {runs} and {out} filled in
SCRIPTS = {
    "bench_verify": (["--runs", "{runs}"], ["--runs", "{runs}", "--sizes", "100", "400", "--header-scale", "4"]),
    "bench_loaders": (
        ["--runs", "{runs}", "--out", "{out}"],
        ["--runs", "{runs}", "--out", "{out}", "--classes", "200", "--per-class", "50", "--images", "300"],
    ),
}
HEADERS = ["row", "measure", "ours", "baseline", "ratio", "target", "met"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ORDER), help="comma-separated row ids (default: all)")
    p.add_argument("--quick", action="store_true", help="S=100 classes, no disk or SLURM figures; separate outputs")
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each measurement (>= 3 for medians)")
    p.add_argument("--classes", type=int, help="S: classes of the small archive set (default 500; quick 100)")
    p.add_argument("--per-class", type=int, default=10, help="train images per class")
    p.add_argument("--val-per-class", type=int, default=5, help="val images per class")
    p.add_argument("--work", type=Path, default=Path("/dev/shm/launcher-bench"), help="tmpfs work folder")
    p.add_argument(
        "--disk", default="/var/tmp/launcher-bench", help="a folder on the local disk for the disk figures, or 'none'"
    )
    p.add_argument(
        "--full-count-classes",
        type=int,
        help="classes of B8/B10/B3F's full-count set (default 1000 = ImageNet's 1,281,167 + 50,000 images; "
        "fewer keeps its shape at a smaller scale, for checking; quick 10)",
    )
    p.add_argument(
        "--full-count-dir",
        type=Path,
        default=Path("/dev/shm/launcher-bench-fullcount"),
        help="where the full-count archive set is written once and kept (tmpfs)",
    )
    p.add_argument("--slurm", choices=["auto", "yes", "no"], default="auto", help="SLURM figures (auto: if up)")
    p.add_argument(
        "--out",
        type=Path,
        help="where BENCHMARKS.md and results.json go (default: benchmarks/; quick: benchmarks/results/)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folders (archives are reused next time)")
    p.add_argument("--render-only", action="store_true", help="rewrite BENCHMARKS.md from results.json; run nothing")
    return p.parse_args(argv)


def context(args: argparse.Namespace, rows: list[str]) -> Context:
    classes = args.classes or (100 if args.quick else 500)
    disk = None if args.quick or args.disk == "none" else Path(args.disk)
    slurm = {"auto": None, "yes": True, "no": False}[args.slurm]
    args.work.mkdir(parents=True, exist_ok=True)
    full_classes = args.full_count_classes or (10 if args.quick else 1000)
    return Context(
        args.work,
        disk,
        args.runs,
        classes,
        args.per_class,
        args.val_per_class,
        args.quick,
        slurm,
        set(rows),
        full_classes=full_classes,
        full_dir=args.full_count_dir,
    )


def full_count_scale(classes: int) -> str:
    counts = full_count_counts(classes)
    which = "ImageNet's exact counts" if classes == IMAGENET_CLASSES else "ImageNet's shape at reduced scale"
    return (
        f"{classes} classes of {min(counts)}–{max(counts)} train images ({which}: {sum(counts):,} train, "
        f"{classes * IMAGENET_VAL_PER_CLASS:,} val), ~1 KB JPEGs"
    )


def warm_up() -> None:
    """Page cache and .pyc for torch, torchvision and launcher: the first import after a while reads
    ~1 GB of libraries from a slow disk, which no run should pay alone."""
    log("warm-up: import torchvision; launcher prepare --cfg job")
    subprocess.run([sys.executable, "-c", "import torchvision"], check=True)
    subprocess.run([sys.executable, "-m", "launcher", "prepare", "--cfg", "job"], check=True, capture_output=True)


def run_rows(ctx: Context, rows: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """row id -> {sections, seconds}; a module run as a script runs once, for all its rows."""
    done: dict[str, dict] = {}
    scripted: set[str] = set()
    for row in rows:
        t0, sections = time.perf_counter(), []
        for name in MODULES[row]:
            if not (HERE / f"{name}.py").exists():
                sections.append(missing(row, f"benchmarks/{name}.py does not exist yet"))
                continue
            module = importlib.import_module(name)
            if row in getattr(module, "ROWS", {}):
                log(f"{row}: {name}.ROWS[{row!r}]")
                result = module.ROWS[row](ctx)
                sections += result if isinstance(result, list) else [result]
            elif row in SCRIPT_ROWS.get(name, []):
                if name not in scripted:
                    scripted.add(name)
                    sections.append(as_script(ctx, name, [r for r in rows if r in SCRIPT_ROWS[name]], args))
            else:
                sections.append(missing(row, f"{name}.py has no ROWS[{row!r}] (the hook for this part of {row})"))
        if sections:
            done[row] = {"sections": [section_json(s) for s in sections], "seconds": time.perf_counter() - t0}
            log(f"{row}: {done[row]['seconds']:.0f}s")
    return done


def as_script(ctx: Context, name: str, rows: list[str], args: argparse.Namespace) -> Section:
    """A module without ROWS: run it as a script and keep what it prints."""
    log(f"{'/'.join(rows)}: {name}.py has no ROWS; running it as a script")
    out = ctx.work / f"{name}.md"
    argv = [a.format(runs=ctx.runs, out=out) for a in SCRIPTS.get(name, ([], []))[1 if ctx.quick else 0]]
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *argv], capture_output=True, text=True)
    text = out.read_text() if out.exists() else proc.stdout
    if proc.returncode not in (0, 1):  # 1: a target missed
        text += f"\n\n(exit code {proc.returncode})\n```\n{proc.stderr[-2000:]}\n```"
    command = " ".join(["python", f"benchmarks/{name}.py", *[str(a) for a in argv]])
    return Section(
        "/".join(rows),
        f"{name}.py (run as a script: `{command}`)",
        [],
        text.strip(),
        {"returncode": proc.returncode, "stdout": proc.stdout[-20000:]},
    )


def missing(row: str, why: str) -> Section:
    return Section(row, "not measured", [Row(row, why, "", "", "", "", None)], "", {})


def section_json(s: Section) -> dict:
    return {
        "id": s.id,
        "title": s.title,
        "rows": [vars(r) for r in s.rows],
        "text": s.text,
        "data": s.data,
    }


# ---------------------------------------------------------------- writing the results


def merge(path: Path, header: dict, done: dict[str, dict]) -> dict:
    """results.json keeps every row's latest figures; rows run now replace theirs."""
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for row, value in done.items():
        results["rows"][row] = {**value, "machine": header}
    results["latest"] = header
    path.write_text(json.dumps(results, indent=1, default=str))
    return results


def render(results: dict, command: str) -> str:
    latest = results["latest"]
    rows = [r for r in ORDER if r in results["rows"]]
    table_rows, sections, stale = [], [], []
    for row in rows:
        entry = results["rows"][row]
        if entry["machine"]["date"] != latest["date"]:
            stale.append(f"{row} ({entry['machine']['date']})")
        for s in entry["sections"]:
            for r in s["rows"]:
                table_rows.append(Row(**r).cells())
            body = s["text"] or ""
            notes = [f"- {r['id']}: {r['note']}" for r in s["rows"] if r.get("note")]
            if body or notes:
                sections.append(
                    f"### {s['id']}: {s['title']}\n\n" + "\n\n".join(filter(None, [body, "\n".join(notes)]))
                )
    m = latest
    lines = [
        "# Benchmarks",
        "",
        f"Latest run: {m['date']} on `{m['host']}`: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}; Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"Pillow {m['pillow']}, submitit {m['submitit']}, hydra {m['hydra']}, {m['tar']}; commit {m['commit']}. "
        f"Load average at the start {fmt_load(m['load_average'])}, at the end {fmt_load(m.get('load_end'))} "
        "(the machine is shared: figures are medians of alternating runs).",
        "",
        f"Reproduce (one command, from the repository root): `{command}` (this run took "
        f"{m.get('seconds', 0) / 60:.1f} min; rows can be rerun alone with `--rows B1,B7`).",
        "",
        f"Scale: {m['scale']}. Whole commands run under `benchmarks/iowrap.py`: wall time until the command "
        "exits; bytes from `/proc/<pid>/io` of the command and all its children (a subreaper reaps "
        "orphans too). Bytes written are `wchar` (write() calls) on tmpfs, where the block counters stay 0; "
        "on the disk, `write_bytes − cancelled_write_bytes` (pages dirtied, less those dropped again). "
        "Marginal = the median over rounds of T(2S) − T(S) (a contender's two runs are adjacent in every "
        "round, in ABBA order); start-up = the median of 2 T(S) − T(2S).",
        "",
    ]
    if stale:
        lines += [f"Rows not rerun in the latest run keep their figures of: {', '.join(stale)}.", ""]
    lines += [markdown_table(HEADERS, table_rows), "", "## Where the time goes", ""]
    lines += ["\n\n".join(sections), ""]
    misses = [r for row in rows for s in results["rows"][row]["sections"] for r in s["rows"] if r["met"] is False]
    lines += ["## Rows that miss their target", ""]
    lines += [f"- {r['id']} {r['what']}: {r.get('why') or 'see its section'}" for r in misses] or ["None."]
    return "\n".join(lines) + "\n"


def fmt_load(load) -> str:
    return " ".join(f"{x:.1f}" for x in load) if load else "?"


def warn_if_compiling_every_process() -> None:
    """An editable install under PYTHONDONTWRITEBYTECODE has no .pyc files: every process prepare,
    verify and the jobs start compiles our modules again (B1's CPU seconds +50 % in one run here)."""
    import launcher

    if os.environ.get("PYTHONDONTWRITEBYTECODE") and "site-packages" not in launcher.__file__:
        print(
            f"WARNING: launcher is imported from {Path(launcher.__file__).parent} (an editable install) and "
            "PYTHONDONTWRITEBYTECODE is set: every process recompiles it. Measure a normal install: pip install .",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows = [r.strip().upper() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in MODULES]
    if unknown:
        sys.exit(f"unknown rows {unknown}; rows: {', '.join(ORDER)}")
    rows = [r for r in ORDER if r in rows]
    suffix = "-quick" if args.quick else ""
    if args.render_only:
        out = args.out or (HERE / "results" if args.quick else HERE)
        command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
        text = render(json.loads((out / f"results{suffix}.json").read_text()), command)
        (out / f"BENCHMARKS{suffix}.md").write_text(text)
        print(text)
        return 0
    warn_if_compiling_every_process()
    ctx = context(args, rows)
    header = machine()
    header["scale"] = (
        f"S = {ctx.classes} classes, 2S = {2 * ctx.classes} classes; {ctx.per_class} train and "
        f"{ctx.val_per_class} val images per class (~500×375 JPEGs, ~95 KB); {ctx.runs} alternating runs; "
        f"B8, B10 and B3F at full count: {full_count_scale(ctx.full_classes)}"
    )
    t0 = time.perf_counter()
    try:
        warm_up()
        done = run_rows(ctx, rows, args)
    finally:
        if not args.keep:
            shutil.rmtree(ctx.work, ignore_errors=True)
            if ctx.disk:
                shutil.rmtree(ctx.disk, ignore_errors=True)
    header["load_end"] = os.getloadavg()
    header["seconds"] = time.perf_counter() - t0
    args.out = args.out or (HERE / "results" if args.quick else HERE)  # benchmarks/results/ is git-ignored
    args.out.mkdir(parents=True, exist_ok=True)
    results = merge(args.out / f"results{suffix}.json", header, done)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    text = render(results, command)
    (args.out / f"BENCHMARKS{suffix}.md").write_text(text)
    print(text)
    log(
        f"all rows in {header['seconds'] / 60:.1f} min; wrote {args.out}/BENCHMARKS{suffix}.md and results{suffix}.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
