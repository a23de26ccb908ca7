"""The commands: each turns the composed config into plain values and calls its stage module.

This is the only place, with config.py, where Hydra and OmegaConf meet the stages. `COMMANDS` is
importable without Hydra or torch so that `launcher --help` answers at once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("launcher")


@dataclass(frozen=True)
class Command:
    summary: str
    function: str


COMMANDS = {
    "prepare": Command("archives in storage.archive_dir -> torchvision ImageNet root, as sharded units", "cmd_prepare"),
    "verify": Command("check a prepared root (structure, counts, every file) and write a report", "cmd_verify"),
    "status": Command("one line per split of the latest runs on this root; failed units with log tails", "cmd_status"),
    "synth": Command("write synthetic ILSVRC2012-shaped archives into storage.archive_dir", "cmd_synth"),
    "demo": Command("synth + prepare + verify + one loader epoch, on a small set under ./data", "cmd_demo"),
    "bench": Command("iterate the composed loader (one or many ranks) and report images/s", "cmd_bench"),
    "stage": Command("copy a prepared root to node-local storage, once per node", "cmd_stage"),
}


# ---------------------------------------------------------------- running under Hydra


def run_with_hydra(command: str, overrides: list[str], program: str | None = None) -> int:
    """Run `command` as a Hydra app (so --help, --cfg, --info, -m work as in any Hydra app)."""
    import hydra

    from launcher.config import register_configs

    if (code := check_overrides(overrides)) is not None:
        return code
    if (code := check_composes(command, overrides)) is not None:
        return code
    register_configs()
    codes: list[int] = []

    def task(cfg: DictConfig) -> None:
        codes.append(run_command(cfg))

    task.__module__ = "launcher"  # Hydra names the job after this unless hydra.job.name is set
    saved = sys.argv
    from launcher import site_searchpath

    sys.argv = [program or f"launcher {command}", *site_searchpath(overrides), *overrides]  # before --cfg etc.
    try:
        hydra.main(version_base=None, config_path="pkg://launcher.conf", config_name=command)(task)()
    finally:
        sys.argv = saved
    return max(codes, default=0)


def run_command(cfg: DictConfig) -> int:
    """Run one composed config; a LauncherError becomes its message and a non-zero exit code."""
    from omegaconf.errors import OmegaConfBaseException

    from launcher.errors import ConfigError, LauncherError, describe_os_error

    function = globals()[COMMANDS[cfg.command].function]
    try:
        check_config(cfg)
        return int(function(cfg) or 0)
    except LauncherError as err:
        print(f"launcher {cfg.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OmegaConfBaseException as err:  # a mandatory option not set, a value of the wrong type
        print(f"launcher {cfg.command}: error: {ConfigError(config_message(err))}", file=sys.stderr)
        return ConfigError.exit_code
    except OSError as err:
        where = cfg.storage.get("root") if "storage" in cfg else None
        print(f"launcher {cfg.command}: error: {describe_os_error(err, where)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"launcher {cfg.command}: interrupted", file=sys.stderr)
        return 130


def unknown_option(overrides: list[str]) -> str | None:
    """The message for an override of an unknown option of a known group (Hydra lets `+` add any)."""
    from dataclasses import fields

    from launcher.config import GROUP_SCHEMAS

    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or "." not in key or key.startswith("hydra"):
            continue
        group, option = key.split(".")[:2]
        schema = GROUP_SCHEMAS.get(group)
        valid = [f.name for f in fields(schema)] if schema else []
        if schema and option not in valid:
            return f"unknown option {group}.{option} in {item!r}; valid options of {group}: {', '.join(valid)}"
    return None


def check_overrides(overrides: list[str]) -> int | None:
    message = unknown_option(overrides)
    if any(item.split("=", 1)[0].lstrip("+~") == "command" for item in overrides):
        message = "command= is set by the command word: run `launcher <command> ...` instead (e.g. launcher verify)"
    if message:
        print(f"launcher: {message}", file=sys.stderr)
        return 2
    return None


HYDRA_FLAGS = ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "-h", "--help", "-hh", "--hydra-help", "-sc")


def check_composes(command: str, overrides: list[str]) -> int | None:
    """Compose once before Hydra runs, so that a config mistake is one line and exit 2 (Hydra itself
    prints several lines and exits 1); Hydra's own flags and sweeps are left to Hydra."""
    if any(a in HYDRA_FLAGS or a.startswith(("--", "hydra.", "+hydra")) for a in overrides):
        return None
    from launcher import compose_config

    try:
        compose_config(command, overrides)
    except Exception as err:  # Hydra's and OmegaConf's composition errors
        print(f"launcher {command}: error: {config_message(err)}", file=sys.stderr)
        return 2
    return None


def config_message(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line errors as one line: what was wrong, the option, the choices."""
    causes = [err]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    inner = causes[-1]
    lines = [line.strip() for line in str(inner).splitlines()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    lines = [line for line in lines if line and not line.startswith(("reference_type", "object_type", "full_key"))]
    text, listing = "", False
    for line in lines:
        text += (", " if listing and not text.endswith(":") else " ") + line
        listing = listing or line.endswith(":")
    text = text.strip()
    key = getattr(inner, "full_key", None) or getattr(err, "full_key", None)
    if key and "Missing mandatory value" in text:
        return f"{key} is not set: pass {key}=... on the command line (or set it in a config of that group)"
    first = str(err).splitlines()[0].strip() if inner is not err else ""
    where = f"{first}: " if first else (f"{key}: " if key else "")
    return where + text


POSITIVE = (
    "prepare.train_shards",
    "prepare.val_shards",
    "verify.shards",
    "verify.fix_quality",
    "cluster.workers",
    "cluster.array_parallelism",
    "cluster.max_array_size",
    "cluster.cpus_per_task",
    "cluster.nodes",
    "cluster.tasks_per_node",
    "cluster.timeout_min",
    "cluster.poll_s",
    "loader.batch_size",
    "loader.eval_batch_size",
    "loader.prefetch_factor",
    "bench.epochs",
    "bench.max_batches",
    "stage.threads",
    "synth.classes",
    "synth.train_min",
    "synth.val_per_class",
)
FORBIDDEN_MODE_BITS = {
    "file_mode": (0o7002, "setuid, setgid, sticky or world-write"),
    "dir_mode": (0o5002, "setuid, sticky or world-write"),
}


def check_config(cfg: DictConfig) -> None:
    """Values the schema's types admit but the work cannot use: refused before anything runs (exit 2)."""
    check_counts(cfg)
    for key, (forbidden, words) in FORBIDDEN_MODE_BITS.items():
        check_mode(f"storage.{key}", cfg.storage[key], forbidden, words)
    if "root" in cfg.storage and "state_dir" in cfg.storage:
        check_state_dir(Path(cfg.storage.root).absolute(), Path(cfg.storage.state_dir).absolute())


def check_counts(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from launcher.errors import ConfigError

    for key in POSITIVE:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} must be a positive number (or null where the option allows it)")


def check_mode(key: str, value: str, forbidden: int, words: str) -> None:
    import re

    from launcher.errors import ConfigError

    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3,4}", value, re.ASCII):
        raise ConfigError(f"{key}={value!r} is not an octal mode like 0644 (three or four digits 0-7)")
    if int(value, 8) & forbidden:
        safe = f"{int(value, 8) & ~forbidden & 0o7777:04o}"
        raise ConfigError(f"{key}={value} sets {words} bits, which launcher does not give; use e.g. {key}={safe}")


def check_state_dir(root: Path, state_dir: Path) -> None:
    """A state folder inside a split (or .partial) would be taken for a class folder, or removed
    with it: refused, with the option that moves it."""
    from launcher.errors import ConfigError

    for part in ("train", "val", ".partial"):
        folder = root / part
        if state_dir == folder or folder in state_dir.parents:
            raise ConfigError(
                f"storage.state_dir={state_dir} lies inside {folder}, which prepare fills with class folders: "
                f"set storage.state_dir outside {folder} (the default is {root / '.launcher'})"
            )


def task_overrides() -> list[str]:
    """The overrides this run was started with (for the ledger and the commands printed)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed through compose_config, not run by Hydra
        return []


# ---------------------------------------------------------------- config -> plain values


def hydra_overrides() -> list[str] | None:
    """The command line's overrides when run by Hydra; None when composed through compose_config."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return None


def shown(value) -> str:
    return "null" if value is None else str(value)


def dataset_differences(chosen: dict, stored: dict) -> list[str]:
    """The facts (archive names and md5s, expected counts, devkit members, name patterns) on which two
    dataset configs disagree; an md5 left null on either side does not count."""
    out = []
    for group in ("archives", "expected", "devkit", "patterns"):
        a, b = chosen.get(group) or {}, stored.get(group) or {}
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) or isinstance(y, dict):
                x, y = x or {}, y or {}
                for sub in sorted(set(x) | set(y)):
                    if x.get(sub) != y.get(sub) and not (sub == "md5" and None in (x.get(sub), y.get(sub))):
                        out.append(
                            f"dataset.{group}.{key}.{sub} is {shown(x.get(sub))} here, {shown(y.get(sub))} there"
                        )
            elif x != y:
                out.append(f"dataset.{group}.{key} is {shown(x)} here, {shown(y)} there")
    return out


def DatasetMismatch(message: str):
    """A config mistake (exit 2): the chosen dataset is not the one the root was prepared with."""
    from launcher.errors import LauncherError

    err = LauncherError(message)
    err.exit_code = 2
    return err


def use_root_dataset(cfg: DictConfig) -> None:
    """verify/status/bench on a prepared root: without `dataset=<choice>` on the command line, take
    the dataset config the root was prepared with (dataset.* overrides still apply on top); with a
    choice that disagrees with it, stop with a message naming both configs."""
    from omegaconf import OmegaConf

    from launcher.prepare import root_dataset

    overrides = hydra_overrides()
    stored = root_dataset(layout_of(cfg)) if overrides is not None else None
    if stored is None:
        return
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    if "dataset" in keys:
        if diff := dataset_differences(plain(cfg.dataset), stored):
            raise DatasetMismatch(
                f"dataset={cfg.dataset.name} disagrees with dataset={stored.get('name')}, the one "
                f"{layout_of(cfg).root} was prepared with ({'; '.join(diff[:3])}). Leave dataset=... out to "
                f"use the root's, or pass dataset={stored.get('name')}."
            )
        return
    from launcher.config import DatasetConfig

    kept = {k: OmegaConf.select(cfg, k) for k in keys if k.startswith("dataset.")}
    cfg.dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), stored)
    for key, value in kept.items():
        OmegaConf.update(cfg, key, value)


def plain(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def layout_of(cfg: DictConfig):
    from launcher.layout import Layout

    return Layout.of(cfg.storage.root, cfg.storage.state_dir)


def output_of(cfg: DictConfig, fsync: bool = False):
    from launcher.extract import Output

    s = cfg.storage
    return Output.of(s.file_mode, s.dir_mode, s.group, fsync)


def cluster_of(cfg: DictConfig):
    from launcher.dispatch import Cluster

    return Cluster.from_config({**plain(cfg.cluster), "wait": cfg.wait})


def prepare_request(cfg: DictConfig):
    from launcher.prepare import PrepareRequest

    d, o = cfg.dataset, cfg.prepare
    return PrepareRequest(
        layout=layout_of(cfg),
        archive_dir=Path(cfg.storage.archive_dir).absolute(),
        archives={k: (d.archives[k].file, d.archives[k].md5) for k in ("devkit", "train", "val")},
        expected=plain(d.expected),
        devkit_meta=d.devkit.meta,
        devkit_ground_truth=d.devkit.ground_truth,
        devkit_max_bytes=d.devkit.max_bytes,
        train_class_pattern=d.patterns.train_class,
        train_image_pattern=d.patterns.train_image,
        val_image_pattern=d.patterns.val_image,
        wnid_pattern=d.patterns.wnid,
        ilsvrc_id_pattern=d.patterns.ilsvrc_id,
        splits=list(cfg.split.splits),
        train_shards=o.train_shards,
        val_shards=o.val_shards,
        dry_run=o.dry_run,
        force=o.force,
        check_md5=o.check_md5,
        output=output_of(cfg, o.fsync),
        stripe_count=cfg.storage.stripe_count,
        log_dir=Path(cfg.storage.log_dir).absolute(),
        argv=task_overrides(),
        storage=cfg.storage.name,
        config=run_config(cfg),
    )


def run_config(cfg: DictConfig) -> dict:
    """The config of this run, interpolations and ${oc.env:...} resolved, paths made absolute (the
    ledger keeps it so that a resubmission runs the same thing wherever it is typed)."""
    config = plain(cfg)
    for key in ("archive_dir", "root", "state_dir", "log_dir"):
        if config["storage"].get(key) is not None:
            config["storage"][key] = str(Path(config["storage"][key]).absolute())
    return config


def synth_spec(options):
    from launcher.synth import SynthSpec

    return SynthSpec(**{k: v for k, v in plain(options).items() if k != "overwrite"})


# ---------------------------------------------------------------- the commands


def cmd_prepare(cfg: DictConfig) -> int:
    from launcher.prepare import run_prepare

    return run_prepare(prepare_request(cfg), cluster_of(cfg))


def cmd_synth(cfg: DictConfig) -> int:
    from launcher.synth import synthesize

    result = synthesize(
        Path(cfg.storage.archive_dir).absolute(),
        synth_spec(cfg.synth),
        {k: cfg.dataset.archives[k].file for k in ("devkit", "train", "val")},
        cfg.dataset.devkit.meta,
        cfg.dataset.devkit.ground_truth,
        overwrite=cfg.synth.overwrite,
    )
    verb = "reused" if result.reused else f"wrote in {result.seconds:.1f}s"
    print(
        f"synth: {verb} {len(result.wnids)} classes, {sum(result.train_counts.values())} train and "
        f"{len(result.val_wnids)} val images in {result.archive_dir}"
    )
    for key, path in result.files.items():
        print(f"  {key:6} {path.name}  {path.stat().st_size:,} bytes  md5 {result.md5[key]}")
    print("prepare them (md5s checked) with:\n  " + result.prepare_command(task_overrides()))
    return 0


def not_built(name: str, issue: str) -> int:
    print(f"launcher {name}: not built yet ({issue}); nothing was done.", file=sys.stderr)
    return 4


def verify_request(cfg: DictConfig):
    from launcher.imagebounds import Limits
    from launcher.verify import VerifyRequest

    d, o = cfg.dataset, cfg.verify
    return VerifyRequest(
        layout=layout_of(cfg),
        archive_dir=Path(cfg.storage.archive_dir).absolute(),
        archives={k: (d.archives[k].file, d.archives[k].md5) for k in ("devkit", "train", "val")},
        expected=plain(d.expected),
        devkit_meta=d.devkit.meta,
        devkit_ground_truth=d.devkit.ground_truth,
        devkit_max_bytes=d.devkit.max_bytes,
        train_image_pattern=d.patterns.train_image,
        val_image_pattern=d.patterns.val_image,
        wnid_pattern=d.patterns.wnid,
        ilsvrc_id_pattern=d.patterns.ilsvrc_id,
        splits=list(cfg.split.splits),
        level=o.level,
        fix=o.fix,
        fix_quality=o.fix_quality,
        shards=o.shards,
        check_md5=o.check_md5,
        report=Path(o.report).absolute(),
        log_dir=Path(cfg.storage.log_dir).absolute(),
        argv=task_overrides(),
        limits=Limits(o.max_file_bytes, o.max_pixels, o.max_scans, "verify"),
        config=run_config(cfg),
    )


def cmd_verify(cfg: DictConfig) -> int:
    from launcher.verify import run_verify

    use_root_dataset(cfg)
    if cfg.verify.report == "-":
        return verify_to_stdout(cfg)
    return run_verify(verify_request(cfg), cluster_of(cfg))


@contextlib.contextmanager
def logging_to_stderr():
    """Point the root logger's stdout handlers (Hydra's job logging) at stderr for a while."""
    moved = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is sys.stdout]
    for handler in moved:
        handler.setStream(sys.stderr)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def verify_to_stdout(cfg: DictConfig) -> int:
    """verify.report=-: the JSON report alone on stdout (kept in the state folder as well), and what
    verify says meanwhile on stderr."""
    import json

    from omegaconf import open_dict

    from launcher.layout import read_json
    from launcher.verify import run_verify

    report = Path(cfg.storage.state_dir).absolute() / f"verify-{cfg.split.name}.json"
    with open_dict(cfg):
        cfg.verify.report = str(report)
    report.unlink(missing_ok=True)
    with logging_to_stderr(), contextlib.redirect_stdout(sys.stderr):
        code = run_verify(verify_request(cfg), cluster_of(cfg))
    if (written := read_json(report)) is not None:
        print(json.dumps(written, indent=1))
    else:
        print(f"verify.report=-: no report yet; its job writes {report} (see `launcher status`)", file=sys.stderr)
    return code


def cmd_status(cfg: DictConfig) -> int:
    from launcher.status import show_status

    use_root_dataset(cfg)
    o = cfg.status
    return show_status(layout_of(cfg), o.tail, units=o.units, as_json=o.json)


def loader_config(cfg: DictConfig) -> dict:
    """storage (absolute paths), transform and loader as plain values, for launcher.data in a job."""
    storage = plain(cfg.storage)
    for key in ("root", "state_dir"):
        storage[key] = str(Path(storage[key]).absolute())
    return {"storage": storage, "transform": plain(cfg.transform), "loader": plain(cfg.loader)}


def bench_table(cfg: DictConfig) -> Path:
    """bench.table, else bench.csv in the sweep folder (under -m) or in the state folder."""
    if cfg.bench.table:
        return Path(cfg.bench.table).absolute()
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).absolute() / "bench.csv"
    return Path(cfg.storage.state_dir).absolute() / "bench.csv"


def bench_request(cfg: DictConfig):
    from launcher.bench import BenchRequest

    o = cfg.bench
    return BenchRequest(
        config=loader_config(cfg),
        split=o.split,
        epochs=o.epochs,
        max_batches=o.max_batches,
        check_coverage=o.check_coverage,
        table=bench_table(cfg),
        overrides=task_overrides(),
        log_dir=Path(cfg.storage.log_dir).absolute(),
    )


def stage_job(cfg: DictConfig) -> tuple:
    """(function, args) that stage one node, by stage.mode: a prepared root, or the archives + prepare."""
    import functools

    from launcher import stage

    o = cfg.stage
    source = Path(o.source).absolute()
    keys = ["devkit", *cfg.split.splits]
    names = [cfg.dataset.archives[k].file for k in keys]
    mode = o.mode
    if mode == "auto":
        mode = "archives" if not (source / "meta.bin").exists() and (source / names[0]).exists() else "root"
    root, state_dir = Path(cfg.storage.root).absolute(), Path(cfg.storage.state_dir).absolute()
    if mode == "root":
        args = (source, root, list(cfg.split.splits), o.source_state_dir, state_dir, None, o.reuse, o.threads, o.wait_s)
        return stage.stage_root, args
    if mode == "archives":
        from launcher.dispatch import Cluster
        from launcher.prepare import run_prepare

        here = Cluster.from_config({"executor": "debug", "wait": True})
        prepare = functools.partial(run_prepare, prepare_request(cfg), here)
        archive_dir = Path(cfg.storage.archive_dir).absolute()
        return stage.stage_archives, (source, names, archive_dir, root, prepare, state_dir, None, o.reuse, o.wait_s)
    from launcher.errors import LauncherError

    raise LauncherError(f"stage.mode={mode!r} is not one of auto, root, archives")


def cmd_bench(cfg: DictConfig) -> int:
    from launcher.bench import require_root, run_bench

    if cfg.bench.split not in ("train", "val"):
        from launcher.errors import LauncherError

        raise LauncherError(f"bench.split={cfg.bench.split!r} is not train or val")
    use_root_dataset(cfg)
    request = bench_request(cfg)
    require_root(request.config["storage"]["root"])
    warn_batch_larger_than_split(cfg)
    return run_bench(request, cluster_of(cfg))


def warn_batch_larger_than_split(cfg: DictConfig) -> None:
    """One line on stderr when the batch size bench.split uses exceeds the images the split holds
    (from its complete record): a train epoch with drop_last then has no batch at all."""
    from launcher.layout import read_json

    split, o = cfg.bench.split, cfg.loader
    done = read_json(layout_of(cfg).complete_file(split)) or {}
    images = done.get("images")
    key = "batch_size" if split == "train" or o.eval_batch_size is None else "eval_batch_size"
    size = o[key]
    if images is None or size <= images:
        return
    why = " with loader.drop_last=true an epoch has no batch;" if split == "train" and o.drop_last else ""
    print(
        f"warning: loader.{key}={size} is larger than the {split} split ({images} images):{why} lower loader.{key}.",
        file=sys.stderr,
    )


def cmd_stage(cfg: DictConfig) -> int:
    """Stage on every node of the job (cluster=debug: in this process, e.g. under srun)."""
    from launcher import dispatch

    fn, args = stage_job(cfg)
    cluster = cluster_of(cfg)
    folder = Path(cfg.storage.log_dir).absolute() / time.strftime("stage-%Y%m%d-%H%M%S")
    job = dispatch.run_distributed(cluster, folder, "stage", fn, *args)
    errors = dispatch.wait([job], cluster.poll_s)
    if errors:
        for job_id, err in errors.items():
            print(f"stage job {job_id} failed:\n  " + "\n  ".join(err.strip().splitlines()[-12:]), file=sys.stderr)
        return 1
    for r in dispatch.results(job):
        what = {"copied": f"copied {r.copied_files} of", "reused": "reused a complete copy of", "waited": "waited for"}
        print(
            f"stage: local rank {r.local_rank} on {r.host} {what[r.action]} {r.files} files "
            f"({r.bytes:,} bytes) in {r.seconds:.1f}s -> {r.root}"
        )
    return 0


def cmd_demo(cfg: DictConfig) -> int:
    """synth -> prepare -> verify -> one epoch of the train loader; says what each step did."""
    t0 = time.time()
    print("demo 1/4 synth: synthetic ILSVRC2012-shaped archives")
    from launcher.synth import synthesize

    result = synthesize(
        Path(cfg.storage.archive_dir).absolute(),
        synth_spec(cfg.synth),
        {k: cfg.dataset.archives[k].file for k in ("devkit", "train", "val")},
        cfg.dataset.devkit.meta,
        cfg.dataset.devkit.ground_truth,
        overwrite=cfg.synth.overwrite,
    )
    print(
        f"  {len(result.wnids)} classes, {sum(result.train_counts.values())} train, "
        f"{len(result.val_wnids)} val images in {result.archive_dir}"
    )
    print("demo 2/4 prepare: archives -> torchvision root")
    from omegaconf import open_dict

    with open_dict(cfg):
        for key in ("devkit", "train", "val"):
            cfg.dataset.archives[key].md5 = result.md5[key]
    from launcher.prepare import run_prepare

    code = run_prepare(prepare_request(cfg), cluster_of(cfg))
    if code:
        return code
    print("demo 3/4 verify: every file decoded, structure and counts against the devkit")
    from launcher.verify import run_verify

    code = run_verify(verify_request(cfg), cluster_of(cfg))
    if code:
        return code
    print("demo 4/4 loader: one epoch of the train loader, as a training job would build it")
    from launcher.bench import run_bench

    code = run_bench(bench_request(cfg), cluster_of(cfg))
    if code:
        return code
    print(f"demo: done in {time.time() - t0:.1f}s; torchvision root {Path(cfg.storage.root).absolute()}")
    return 0
