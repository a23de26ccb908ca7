"""The commands: each turns the composed config into plain values and calls its stage module.

This is the only place, with launcher.config.store, where Hydra and OmegaConf meet the stages
(launcher.cli.checks catches config mistakes, launcher.cli.requests builds the stages' requests).
`COMMANDS` is importable without Hydra or torch so that `launcher --help` answers at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

from launcher.cli.checks import check_config, check_overrides, config_message, use_root_dataset
from launcher.cli.requests import (
    bench_request,
    cluster_of,
    layout_of,
    not_built,
    plain,
    prepare_request,
    synth_spec,
    task_overrides,
    verify_request,
)

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


def run_with_hydra(command: str, overrides: list[str], program: str | None = None) -> int:
    """Run `command` as a Hydra app (so --help, --cfg, --info, -m work as in any Hydra app)."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from launcher.config.store import register_configs

    if (code := check_overrides(overrides)) is not None:
        return code
    register_configs()
    codes: list[int] = []
    started: list[bool] = []

    def task(cfg: DictConfig) -> None:
        started.append(True)
        with ours_unset():
            codes.append(run_command(cfg))

    task.__module__ = "launcher"  # Hydra names the job after this unless hydra.job.name is set
    saved = sys.argv
    from launcher import site_searchpath

    sys.argv = [program or f"launcher {command}", *site_searchpath(overrides), *overrides]  # before --cfg etc.
    try:
        with composition_errors_raised():
            hydra.main(version_base=None, config_path="pkg://launcher.conf", config_name=command)(task)()
    except (HydraException, OmegaConfBaseException) as err:  # composition errors: before any task ran
        if started or USERS_FULL_ERROR:  # not a config mistake: a bug, with its traceback
            raise
        print(f"launcher {command}: error: {config_message(err)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return max(codes, default=0)


FULL_ERROR = "HYDRA_FULL_ERROR"
USERS_FULL_ERROR = FULL_ERROR in os.environ  # a user debugging Hydra keeps its tracebacks


@contextlib.contextmanager
def composition_errors_raised():
    """Hydra prints a composition error in several lines and exits 1; with HYDRA_FULL_ERROR=1 it
    raises it instead, so that run_with_hydra can say it in one line and exit 2. The config is
    composed once (by Hydra), not a second time beforehand."""
    if USERS_FULL_ERROR:
        yield
        return
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    finally:
        os.environ.pop(FULL_ERROR, None)


@contextlib.contextmanager
def ours_unset():
    """HYDRA_FULL_ERROR unset while a command runs (the jobs it submits inherit the environment)."""
    if USERS_FULL_ERROR:
        yield
        return
    os.environ.pop(FULL_ERROR, None)
    try:
        yield
    finally:
        os.environ[FULL_ERROR] = "1"


def run_command(cfg: DictConfig) -> int:
    """Run one composed config; a LauncherError becomes its message and a non-zero exit code."""
    from omegaconf.errors import OmegaConfBaseException

    from launcher.core.errors import ConfigError, LauncherError, describe_os_error

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


def pipeline_missing(cfg: DictConfig, command: str) -> int | None:
    """A command the dataset's adapter is not wired for (its PIPELINE names those it is; both
    adapters here support every command, a new one may start with prepare): one line, exit 4,
    instead of failing half-way."""
    from launcher.datasets import adapter_of

    supported = getattr(adapter_of(cfg.dataset.adapter), "PIPELINE", ())
    if command in supported:
        return None
    return not_built(
        f"{command} dataset={cfg.dataset.name}",
        f"the {cfg.dataset.adapter} adapter supports {', '.join(supported) or 'no command'}; "
        f"add {command!r} to PIPELINE in launcher/datasets/{cfg.dataset.adapter}/adapter.py once it works",
    )


def cmd_prepare(cfg: DictConfig) -> int:
    if (missing := pipeline_missing(cfg, "prepare")) is not None:
        return missing
    from launcher.prepare.run import run_prepare

    return run_prepare(prepare_request(cfg), cluster_of(cfg))


def cmd_synth(cfg: DictConfig) -> int:
    from launcher.datasets import adapter_of

    adapter = adapter_of(cfg.dataset.adapter)
    archive_dir = Path(cfg.storage.archive_dir).absolute()
    for line in adapter.synthesize(archive_dir, plain(cfg.synth), plain(cfg.dataset), task_overrides()):
        print(line)
    return 0


def cmd_verify(cfg: DictConfig) -> int:
    from launcher.check.verify import run_verify

    use_root_dataset(cfg)
    if (missing := pipeline_missing(cfg, "verify")) is not None:
        return missing
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

    from launcher.check.verify import run_verify
    from launcher.core.layout import read_json

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
    from launcher.core.status import show_status

    use_root_dataset(cfg)
    if (missing := pipeline_missing(cfg, "status")) is not None:
        return missing
    o = cfg.status
    return show_status(layout_of(cfg), o.tail, units=o.units, as_json=o.json)


def use_source_dataset(cfg: DictConfig) -> None:
    """stage from a prepared root: without `dataset=<choice>`, the dataset the source was prepared with."""
    from launcher.core.layout import Layout

    source = Path(cfg.stage.source).absolute() if cfg.stage.source else None
    if source is not None and source.is_dir():
        use_root_dataset(cfg, Layout.of(source, cfg.stage.source_state_dir or source / ".launcher"))


def stage_job(cfg: DictConfig) -> tuple:
    """(function, args) that stage one node, by stage.mode: a prepared root, or the archives + prepare."""
    import functools

    from launcher import stage
    from launcher.datasets import adapter_of

    o = cfg.stage
    source = Path(o.source).absolute()
    keys = [cfg.dataset.labels.archive, *cfg.split.splits]
    names = [cfg.dataset.archives[k].file for k in keys]
    mode = o.mode
    top_files = adapter_of(cfg.dataset.adapter).root_files(plain(cfg.dataset))
    if mode == "auto":
        mode = "archives" if not (source / top_files[0]).exists() and (source / names[0]).exists() else "root"
    root, state_dir = Path(cfg.storage.root).absolute(), Path(cfg.storage.state_dir).absolute()
    if str(cfg.storage.get("format") or "folder") == "tar":
        return tar_stage_job(cfg, source, root, state_dir, mode, top_files)
    if mode == "root":
        splits, folders = list(cfg.split.splits), dict(layout_of(cfg).folders)
        stage.check_source(source, splits, top_files, folders)  # here, in one line, before a job is queued
        args = (source, root, splits, o.source_state_dir, state_dir, None, o.reuse, o.threads, o.wait_s)
        return stage.stage_root, (*args, top_files, folders)
    if mode == "archives":
        from launcher.config.schema import DebugClusterConfig
        from launcher.core.backends import backend_of
        from launcher.prepare.run import run_prepare

        here = backend_of(DebugClusterConfig(), wait=True)
        prepare = functools.partial(run_prepare, prepare_request(cfg), here)
        archive_dir = Path(cfg.storage.archive_dir).absolute()
        return stage.stage_archives, (source, names, archive_dir, root, prepare, state_dir, None, o.reuse, o.wait_s)
    from launcher.core.errors import LauncherError

    raise LauncherError(f"stage.mode={mode!r} is not one of auto, root, archives")


def tar_stage_job(cfg: DictConfig, source: Path, root: Path, state_dir: Path, mode: str, top_files: list) -> tuple:
    """storage.format=tar: a prepared tar root (its archives, indexes, overlays) into storage.root and
    storage.archive_dir; checked here, in one line, before a job is queued."""
    from launcher.core.errors import ConfigError
    from launcher.tarformat import staging

    if mode not in ("auto", "root"):
        raise ConfigError(
            f"stage.mode={mode} with storage.format=tar: stage copies a prepared tar root (stage.mode=root); "
            "to prepare on the node, run `launcher prepare storage.format=tar` there"
        )
    o, splits = cfg.stage, list(cfg.split.splits)
    src_state = Path(o.source_state_dir).absolute() if o.source_state_dir else source / ".launcher"
    staging.check_tar_source(source, src_state, splits, top_files)
    archive_dir = Path(cfg.storage.archive_dir).absolute()
    args = (source, root, archive_dir, splits, src_state, state_dir, None, o.reuse, o.wait_s, top_files)
    return staging.stage_tar, args


def with_prepare_again(err: Exception, storage: dict) -> Exception:
    """A tar root's changed archive, with the prepare that made the root to run again (its ledger)."""
    from launcher.core.errors import LauncherError
    from launcher.core.layout import Layout
    from launcher.core.status import prepare_again

    command = prepare_again(Layout.of(storage["root"], storage["state_dir"]))
    return LauncherError(f"{err} The prepare that made this root: `{command}`.") if command else err


def cmd_bench(cfg: DictConfig) -> int:
    from launcher.data.bench import require_root, run_bench
    from launcher.datasets import adapter_of
    from launcher.tarformat.archivefile import ArchiveChanged

    if cfg.bench.split not in ("train", "val"):
        from launcher.core.errors import LauncherError

        raise LauncherError(f"bench.split={cfg.bench.split!r} is not train or val")
    use_root_dataset(cfg)
    if (missing := pipeline_missing(cfg, "bench")) is not None:
        return missing
    request = bench_request(cfg)
    storage = request.config["storage"]
    top_files = adapter_of(cfg.dataset.adapter).root_files(plain(cfg.dataset))
    storage_format = storage.get("format") or "folder"
    try:
        require_root(
            storage["root"],
            request.split,
            cfg.dataset.adapter,
            storage_format,
            storage["state_dir"],
            top_files,
            storage.get("archive_dir"),
        )
    except ArchiveChanged as err:
        raise with_prepare_again(err, storage) from None
    warn_batch_larger_than_split(cfg)
    return run_bench(request, cluster_of(cfg))


def warn_batch_larger_than_split(cfg: DictConfig) -> None:
    """One line on stderr when the batch size bench.split uses exceeds the images the split holds
    (from its complete record): a train epoch with drop_last then has no batch at all."""
    from launcher.core.layout import read_json

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
    from launcher.core import dispatch

    use_source_dataset(cfg)
    if (missing := pipeline_missing(cfg, "stage")) is not None:
        return missing
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
    from launcher.datasets.imagenet.synth import synthesize

    result = synthesize(
        Path(cfg.storage.archive_dir).absolute(),
        synth_spec(cfg.synth),
        {k: cfg.dataset.archives[k].file for k in ("devkit", "train", "val")},
        cfg.dataset.labels.members.meta,
        cfg.dataset.labels.members.ground_truth,
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
    from launcher.prepare.run import run_prepare

    code = run_prepare(prepare_request(cfg), cluster_of(cfg))
    if code:
        return code
    print("demo 3/4 verify: every file decoded, structure and counts against the devkit")
    from launcher.check.verify import run_verify

    code = run_verify(verify_request(cfg), cluster_of(cfg))
    if code:
        return code
    print("demo 4/4 loader: one epoch of the train loader, as a training job would build it")
    from launcher.data.bench import run_bench

    code = run_bench(bench_request(cfg), cluster_of(cfg))
    if code:
        return code
    print(f"demo: done in {time.time() - t0:.1f}s; torchvision root {Path(cfg.storage.root).absolute()}")
    return 0
