"""Fresh virtual environments for the install tests (tests/test_readme.py, tests/test_package.py).

A venv without this interpreter's site-packages (so neither the editable install of the test run nor
setuptools, auditwheel or anything else installed here is visible) in which pip installs what a user's
install would. Only torch and torchvision, with everything they require, and pip itself are borrowed
from this interpreter: a folder of links to them is put on the venv's path by a .pth file, so that pip
sees them installed and does not copy several GB of CUDA libraries per test, and the venv's `pip`
script is pip's own entry point (`ensurepip` takes 40 s on a loaded 2-core machine, this 1 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

BORROWED = ("torch", "torchvision", "pip")
PIP_SCRIPT = "#!{python}\nimport sys\n\nfrom pip._internal.cli.main import main\n\nsys.exit(main())\n"


def requirement_closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, transitively (extras included), with markers evaluated here."""
    seen: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        dist = seen.setdefault(name, metadata.distribution(name))
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
    return list(seen.values())


def link_distributions(target: Path, names: tuple[str, ...]) -> Path:
    """`target`: links to the top-level files and folders (packages, .dist-info) of the closure of `names`."""
    target.mkdir(parents=True, exist_ok=True)
    for dist in requirement_closure(names):
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or (target / top).exists():
                continue
            if (site / top).exists():
                (target / top).symlink_to(site / top)
    return target


def make_venv(path: Path, borrow: tuple[str, ...] = BORROWED) -> Path:
    """A venv at `path` that sees `borrow` and their requirements, with a `pip`; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, env=clean_env())
    bin_dir = path / "bin"
    site = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(f"{link_distributions(path / 'borrowed', borrow)}\n")
    if "pip" in borrow:
        (bin_dir / "pip").write_text(PIP_SCRIPT.format(python=bin_dir / "python"))
        (bin_dir / "pip").chmod(0o755)
    return bin_dir


def clean_env(bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment without anything that points Python at our tree or our site, `bin_dir` first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env.update(extra)
    return env


def clone_head(repo: Path, dest: Path) -> Path:
    """A fresh clone of `repo` at its checked-out commit (what CI starts from: committed files only)."""
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", head.stdout.strip()], check=True)
    return dest
