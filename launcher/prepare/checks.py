"""prepare's checks of its inputs before anything is written: archives present, root writable, and
the warnings for probable mistakes (unchecked md5s, a login node, a foreign folder)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

from launcher.archive import safedir
from launcher.core.errors import LauncherError
from launcher.core.layout import Layout

if TYPE_CHECKING:
    from launcher.core import dispatch

from launcher.prepare.request import PrepareRequest


def check_archives(req: PrepareRequest) -> None:
    """Every archive the splits need is there and readable, or the error says where to put it."""
    for key in req.archive_keys():
        path = req.archive(key)
        if not path.is_file():
            raise LauncherError(
                f"The archive {req.archives[key][0]} is not in {req.archive_dir} (looked for {path}). "
                f"Place it there, or point storage.archive_dir=<folder> (or "
                f"dataset.archives.{key}.file=<name>) at it."
            )
        if not os.access(path, os.R_OK):
            raise LauncherError(f"The archive {path} is not readable by this user; fix its permissions.")


def check_writable(layout: Layout, replace: bool = False) -> None:
    for folder in (layout.root, layout.state_dir):
        try:
            with safedir.Dir.of(folder, create=True, replace=replace) as d:
                probe = f".write-test-{os.getpid()}"
                os.close(d.create(probe, replace_temp=True))
                d.unlink_entry(probe)
        except OSError as err:
            raise LauncherError(
                f"cannot write into the output folder {folder}: {err.strerror or err}. Point "
                "storage.root (or storage.state_dir) at a writable folder."
            ) from err


def warn_unchecked_md5(req: PrepareRequest) -> None:
    for key in req.archive_keys():
        if req.archives[key][1] is None:
            print(
                f"warning: dataset.archives.{key}.md5 is null: {req.archive(key).name} is not md5-checked.",
                file=sys.stderr,
            )


SHARED_STORAGE = ("lustre", "nfs")


# what prepare keeps in a root beside the dataset's label files and split folders
OURS = {".partial", ".launcher"}


def warn_probable_mistakes(req: PrepareRequest, backend: dispatch.Backend) -> None:
    """One line on stderr for each setting that is probably a mistake; the work goes on."""
    for message in (login_node_warning(req, backend), foreign_folder_warning(req), *stripe_warnings(req)):
        if message:
            print(f"warning: {message}", file=sys.stderr)


# an archive read in place (storage.format=tar) at least this large should span several Lustre OSTs
STRIPED_FROM_BYTES = 1 << 30
# the stripe count the advice asks for (each OST adds its bandwidth to the archive's reads)
ADVISED_STRIPES = 8


def stripe_warnings(req: PrepareRequest) -> list[str]:
    """storage.format=tar reads the archives in place at training time: one on a single Lustre stripe
    sits on one storage target and caps every epoch at that target's bandwidth. Where `lfs` exists,
    each large split archive's stripe count is asked (`lfs getstripe -c`); single-striped ones are
    named, with the commands that copy the run's archives into a striped folder (the originals stay)."""
    if req.storage_format != "tar" or not shutil.which("lfs"):
        return []
    single = [
        req.archive(key) for key in req.archive_keys() if key != req.labels_key and on_one_stripe(req.archive(key))
    ]
    if not single:
        return []
    folder = req.archive_dir / "striped"
    everything = [str(req.archive(key)) for key in req.archive_keys()]
    return [
        f"{', '.join(map(str, single))} {'is' if len(single) == 1 else 'are'} on one Lustre stripe (lfs getstripe -c: "
        "1): with storage.format=tar every epoch reads from one storage target, at its bandwidth. Copy the "
        f"archives into a striped folder and prepare from it: {shlex.join(['mkdir', '-p', str(folder)])} && "
        f"{shlex.join(['lfs', 'setstripe', '-c', str(ADVISED_STRIPES), str(folder)])} && "
        f"{shlex.join(['cp', *everything, str(folder)])}, then storage.archive_dir={shlex.quote(str(folder))}"
    ]


def on_one_stripe(path) -> bool:
    """A large archive whose `lfs getstripe -c` says 1 (lfs not answering, or a small file: not flagged)."""
    try:
        if path.stat().st_size < STRIPED_FROM_BYTES:
            return False
        run = subprocess.run(["lfs", "getstripe", "-c", str(path)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and run.stdout.strip() == "1"


def login_node_warning(req: PrepareRequest, backend: dispatch.Backend) -> str | None:
    """Work on this machine, on shared storage, where SLURM is at hand but no job runs: a login node."""
    if backend.queued or not req.storage.startswith(SHARED_STORAGE):
        return None
    if not shutil.which("sbatch") or os.environ.get("SLURM_JOB_ID"):
        return None
    return (
        f"cluster={backend.executor} runs the units on this machine, which looks like a login node (sbatch is "
        f"here, SLURM_JOB_ID is not set), with storage={req.storage}: pass cluster=slurm to run them as "
        "SLURM jobs, or run this inside a job (salloc/srun)."
    )


def foreign_folder_warning(req: PrepareRequest) -> str | None:
    """storage.root holds things that are neither the dataset's root files, ours, nor the archives."""
    from launcher.datasets import adapter_of

    root = req.layout.root
    if not root.is_dir() or (req.layout.state_dir / "identity.json").exists():
        return None
    adapter = adapter_of(req.adapter)
    added = [*adapter.root_files({"labels": req.labels}), *(f"{s['folder']}/" for s in req.sources.values())]
    ours = OURS | {name.rstrip("/") for name in added}
    archives = {name for name, _ in req.archives.values()}
    try:
        names = sorted(e.name for e in os.scandir(root) if e.name not in ours | archives)
    except OSError:
        return None
    if not names or ours & set(os.listdir(root)) - {".launcher"}:
        return None  # empty, or a root of its own (the identity guard decides about it)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"storage.root={root} is not empty ({shown}) and is not a root of {adapter.TORCHVISION_CLASS}: prepare "
        f"adds {', '.join(added)} beside what is there. Point storage.root at a new folder if that is not "
        "what you want."
    )
