"""bench: iterate the composed loader on one or many ranks; images/s, time to first batch, coverage.

    driver (the `bench` command)                 every rank (a job task, through dispatch)
    BenchRequest -> dispatch.run_distributed --> bench_rank: init torch.distributed (gloo on CPU,
                                                 nccl on GPU) -> build_dataset/build_loader -> epochs
                                                 -> per-sample counts, all_reduce -> coverage (rank 0)
    <- per-rank results: table, coverage, one row appended to the sweep table (CSV + Markdown)

Coverage, per epoch: eval sees every sample exactly once across the ranks; train sees each at most
once when drop_last (and the dropped count is what drop_last allows), else each at least once, with
only DistributedSampler's padding as duplicates. The delivered targets are also checked against
the dataset's (the order the sampler gave). With bench.max_batches the epoch is partial and only
the duplicates are checked.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = [
    "time",
    "overrides",
    "split",
    "transform",
    "output",
    "batch_size",
    "num_workers",
    "ranks",
    "executor",
    "images",
    "seconds",
    "images_per_s",
    "images_per_s_per_rank",
    "first_batch_s",
    "dataset_s",
    "coverage",
    "job_id",
]


@dataclass
class BenchRequest:
    # {"storage": {...}, "transform": {...}, "loader": {...}}: plain values launcher.data reads
    config: dict
    split: str = "train"
    epochs: int = 1
    max_batches: int | None = None
    check_coverage: bool = True
    # CSV of the sweep; a Markdown rendering is written beside it (.md)
    table: Path | None = None
    # the overrides of this run (the row's label in the table)
    overrides: list[str] = field(default_factory=list)
    log_dir: Path | None = None


# ---------------------------------------------------------------- in every rank


def init_distributed() -> bool:
    """init_process_group from the env (RANK, WORLD_SIZE, MASTER_ADDR/PORT) when world size > 1;
    True when this call initialized it."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://")
    return True


def bench_rank(req: BenchRequest) -> dict:
    """What each rank runs: build the loader, iterate `epochs`, check coverage; returns its figures."""
    import torch
    import torch.distributed as dist

    from launcher.data import build_dataset, make_loader, normalize_on_device, rank_and_world, set_epoch

    owns = init_distributed()
    try:
        rank, world = rank_and_world()
        t0 = time.perf_counter()
        dataset = build_dataset(req.config, req.split)
        dataset_s = time.perf_counter() - t0
        loader = make_loader(dataset, req.split == "train", req.config.get("loader"), rank, world)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        uint8 = getattr(dataset.transform, "output", "float") == "uint8"
        transform = dataset.transform

        def to_device(x):  # what a training step starts with
            return normalize_on_device(x, transform.mean, transform.std, device) if uint8 else x.to(device)

        images = batches = 0
        first_batch_s = None
        coverage: list[dict] = []
        start = time.perf_counter()
        for epoch in range(req.epochs):
            set_epoch(loader, epoch)
            order = list(iter(loader.sampler))  # the indices this rank asks for, in order
            seen, taken, first = run_epoch(loader, req.max_batches, to_device if device is not None else None)
            images += sum(len(y) for y in seen)
            batches += taken
            if first_batch_s is None:
                first_batch_s = first
            if device is not None:
                torch.cuda.synchronize()
            if req.check_coverage:
                partial = req.max_batches is not None
                coverage.append(epoch_coverage(dataset, loader, order, seen, world, req.split == "train", partial))
        seconds = time.perf_counter() - start
        return {
            "rank": rank,
            "world_size": world,
            "host": socket.gethostname(),
            "images": images,
            "batches": batches,
            "seconds": seconds,
            "images_per_s": images / seconds if seconds > 0 else 0.0,
            "first_batch_s": first_batch_s or 0.0,
            "dataset_s": dataset_s,
            "workers": loader.num_workers,
            "decode": decode_mode(dataset.transform),
            "coverage": coverage if rank == 0 else [],
        }
    finally:
        if owns:
            dist.destroy_process_group()


def run_epoch(loader, max_batches: int | None, to_device) -> tuple[list, int, float | None]:
    """One pass over `loader` (at most `max_batches`): the target batches seen, the batches taken and
    the seconds to the first batch (None without one); each image batch goes through `to_device`."""
    seen: list = []
    batches = 0
    first_batch_s = None
    t = time.perf_counter()
    for batch, (x, y) in enumerate(loader):
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t
        if to_device is not None:
            x = to_device(x)
        seen.append(y)
        batches += 1
        if max_batches is not None and batch + 1 >= max_batches:
            break
    return seen, batches, first_batch_s


def epoch_coverage(dataset, loader, order: list[int], seen: list, world: int, train: bool, partial: bool) -> dict:
    """Counts of every sample over all ranks (all_reduce) -> the coverage verdict of one epoch."""
    import torch
    import torch.distributed as dist

    delivered = int(sum(len(y) for y in seen))
    indices = torch.tensor(order[:delivered], dtype=torch.int64)
    targets = torch.cat(seen) if seen else torch.empty(0, dtype=torch.int64)
    expected_targets = torch.as_tensor(dataset.targets, dtype=torch.int64)[indices]
    wrong = int((targets != expected_targets).sum())
    counts = torch.bincount(indices, minlength=len(dataset)).to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
        wrong_t = torch.tensor([wrong], dtype=torch.int64)
        dist.all_reduce(wrong_t)
        wrong = int(wrong_t)
    return coverage_verdict(
        counts,
        train=train,
        drop_last=loader.drop_last,
        batch_size=loader.batch_size,
        world=world,
        partial=partial,
        wrong_targets=wrong,
    )


def coverage_verdict(
    counts, train: bool, drop_last: bool, batch_size: int, world: int, partial: bool = False, wrong_targets: int = 0
) -> dict:
    """What the per-sample counts of one epoch (summed over ranks) say about coverage."""
    n = len(counts)
    seen, missing = int(counts.sum()), int((counts == 0).sum())
    duplicates = int((counts.clamp(min=1) - 1).sum())
    problems = []
    if wrong_targets:
        problems.append(f"{wrong_targets} targets differ from the dataset's for the indices asked")
    if partial:
        expected = None
        if not train and duplicates:
            problems.append(f"{duplicates} duplicates in a partial eval epoch")
    elif not train:
        expected = n
        if missing or duplicates:
            problems.append(
                f"eval must see each of {n} samples exactly once: {missing} missing, {duplicates} twice or more"
            )
    elif drop_last:
        expected = world * ((n // world) // batch_size) * batch_size
        if duplicates:
            problems.append(f"{duplicates} samples seen twice in one epoch")
        if seen != expected:
            problems.append(f"{seen} samples seen, drop_last allows exactly {expected}")
    else:
        expected = world * math.ceil(n / world)
        if missing:
            problems.append(f"{missing} samples never seen")
        if seen != expected or duplicates != expected - n:
            problems.append(f"{seen} seen with {duplicates} duplicates; expected {expected} (padding {expected - n})")
    return {
        "samples": n,
        "seen": seen,
        "expected": expected,
        "missing": missing,
        "duplicates": duplicates,
        "partial": partial,
        "ok": not problems,
        "problems": problems,
    }


# ---------------------------------------------------------------- the driver


def run_bench(req: BenchRequest, cluster) -> int:
    """The bench command: run bench_rank on every rank of one job, report, append to the table."""
    from launcher.core import dispatch

    folder = (req.log_dir or Path("bench-logs")) / time.strftime("bench-%Y%m%d-%H%M%S")
    job = dispatch.run_distributed(cluster, folder, "bench", bench_rank, req)
    ranks = cluster.config.nodes * cluster.config.tasks_per_node
    print(f"bench: {ranks} rank(s) on {cluster.executor} (job {job.job_id}); logs in {folder}", flush=True)
    errors = dispatch.wait([job], cluster.poll_s)
    if errors:
        for job_id, err in errors.items():
            print(f"bench job {job_id} failed:\n  " + "\n  ".join(err.strip().splitlines()[-15:]), file=sys.stderr)
        return 1
    results = sorted(dispatch.results(job), key=lambda r: r["rank"])
    summary = summarize(results)
    print_report(req, results, summary)
    if req.table:
        row = table_row(req, cluster, job.job_id, summary)
        append_row(req.table, row)
        print(f"table: {req.table} (+ {req.table.with_suffix('.md').name})")
    return 0 if summary["coverage"] in ("ok", "partial ok", "not checked") else 1


def summarize(results: list[dict]) -> dict:
    images = sum(r["images"] for r in results)
    seconds = max(r["seconds"] for r in results)
    coverage = [c for r in results for c in r["coverage"]]
    if not coverage:
        verdict = "not checked"
    elif all(c["ok"] for c in coverage):
        verdict = "partial ok" if any(c["partial"] for c in coverage) else "ok"
    else:
        verdict = "FAILED"
    return {
        "ranks": len(results),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "images_per_s_per_rank": sum(r["images_per_s"] for r in results) / len(results),
        "first_batch_s": max(r["first_batch_s"] for r in results),
        "dataset_s": max(r["dataset_s"] for r in results),
        "coverage": verdict,
        "epochs": coverage,
    }


def decode_mode(transform) -> str:
    """How the loader decodes: the crop alone (launcher.data._jpeg) or whole images, and why."""
    from launcher import data

    if getattr(transform, "fuses_crop", False):
        return "only each JPEG's random crop (launcher.data._jpeg)"
    if data._jpeg is None:
        return (
            "whole images (launcher.data._jpeg is not importable: it was built without libjpeg's headers, e.g. "
            "libjpeg62-turbo-dev, or this runs from a source tree an install did not compile it into)"
        )
    return "whole images (the transform does not start with RandomResizedCrop)"


def print_report(req: BenchRequest, results: list[dict], s: dict) -> None:
    from launcher.core.progress import table

    rows = [
        [
            r["rank"],
            r["host"],
            r["workers"],
            r["images"],
            f"{r['seconds']:.2f}",
            f"{r['images_per_s']:,.1f}",
            f"{r['first_batch_s']:.2f}",
            f"{r['dataset_s']:.3f}",
        ]
        for r in results
    ]
    rows.append(
        [
            "all",
            "",
            "",
            s["images"],
            f"{s['seconds']:.2f}",
            f"{s['images_per_s']:,.1f}",
            f"{s['first_batch_s']:.2f}",
            f"{s['dataset_s']:.3f}",
        ]
    )
    headers = ["rank", "host", "workers", "images", "seconds", "images/s", "first batch s", "dataset s"]
    print(table(headers, rows, "llrrrrrr"))
    print(f"decode: {results[0]['decode']}")
    for epoch, c in enumerate(s["epochs"]):
        what = "ok" if c["ok"] else "FAILED: " + "; ".join(c["problems"])
        extent = "partial epoch" if c["partial"] else f"expected {c['expected']}"
        print(
            f"coverage {req.split} epoch {epoch}: {c['seen']} of {c['samples']} samples seen "
            f"({extent}, {c['missing']} missing, {c['duplicates']} duplicates): {what}"
        )
    if not s["epochs"]:
        print("coverage: not checked (bench.check_coverage=false)")


def table_row(req: BenchRequest, cluster, job_id: str, s: dict) -> dict:
    t, lo = req.config.get("transform", {}), req.config.get("loader", {})
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "overrides": " ".join(req.overrides),
        "split": req.split,
        "transform": t.get("name", ""),
        "output": t.get("output", ""),
        "batch_size": lo.get("batch_size", ""),
        "num_workers": lo.get("num_workers", ""),
        "ranks": s["ranks"],
        "executor": cluster.executor,
        "images": s["images"],
        "seconds": f"{s['seconds']:.3f}",
        "images_per_s": f"{s['images_per_s']:.1f}",
        "images_per_s_per_rank": f"{s['images_per_s_per_rank']:.1f}",
        "first_batch_s": f"{s['first_batch_s']:.3f}",
        "dataset_s": f"{s['dataset_s']:.4f}",
        "coverage": s["coverage"],
        "job_id": job_id,
    }


def append_row(path: Path, row: dict) -> None:
    """Add a row to the CSV (under a lock: sweep jobs may finish together) and re-render the Markdown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        path.with_suffix(".md").write_text(render_markdown(rows))


def render_markdown(rows: list[dict]) -> str:
    shown = [
        ("overrides", "run"),
        ("split", "split"),
        ("ranks", "ranks"),
        ("num_workers", "workers"),
        ("batch_size", "batch"),
        ("output", "output"),
        ("images_per_s", "images/s"),
        ("images_per_s_per_rank", "images/s per rank"),
        ("first_batch_s", "first batch s"),
        ("coverage", "coverage"),
    ]
    lines = ["| " + " | ".join(h for _, h in shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for r in rows:
        lines.append(
            "| "
            + " | ".join((r.get(k) or "(defaults)") if k == "overrides" else str(r.get(k, "")) for k, _ in shown)
            + " |"
        )
    return "\n".join(lines) + "\n"


def require_root(
    root: str,
    split: str,
    adapter: str,
    storage_format: str = "folder",
    state_dir=None,
    top_files=("meta.bin",),
    archive_dir=None,
) -> None:
    """The root holds `split` as the dataset's adapter reads it (its `require_prepared`: a few stats;
    storage.format=tar: its label files `top_files`, the split's tar index and its archive, still the
    file the index recorded), or one line saying what to do, before any job starts."""
    from launcher.core.errors import LauncherError
    from launcher.datasets import adapter_of

    if storage_format != "tar":
        return adapter_of(adapter).require_prepared(root, split)
    state = Path(state_dir) if state_dir is not None else Path(root) / ".launcher"
    wanted = [Path(root) / name for name in top_files] + [state / f"tarindex-{split}.bin"]
    missing = [str(p) for p in wanted if not p.is_file()]
    if missing:
        raise LauncherError(
            f"{root} is not a prepared tar root ({', '.join(missing)} missing). Run `launcher prepare "
            f"storage.format=tar storage.root={root} split={split}` first (or point storage.root at one)."
        )
    from launcher.tarformat.archivefile import open_checked
    from launcher.tarformat.dataset import tar_split

    index, archive, _, label = tar_split(root, split, state_dir, archive_dir)
    os.close(open_checked(str(archive), index.archive, label))
    return None
