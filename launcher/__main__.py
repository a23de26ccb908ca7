"""`python -m launcher <command> [hydra overrides]`: take the command off argv, hand the rest to Hydra.

Nothing heavy is imported before a command runs: `--help` answers without torch.
"""

from __future__ import annotations

import os
import sys

from launcher.commands import COMMANDS

USAGE = """usage: launcher <command> [overrides...] [--help | --cfg job | --info | -m]
       launcher --version

Hydra-configured ImageNet (ILSVRC2012) preparation for SLURM clusters.

commands:
{commands}

`launcher <command> --help` lists the config groups and options of that command.
examples:
  launcher demo
  launcher prepare storage=lustre storage.root=/lustre/datasets/imagenet cluster=slurm
  launcher verify verify.level=decode cluster=slurm wait=true
  launcher bench -m transform=standard,randaugment loader.num_workers=1,2
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-sc", "--shell-completion"):
        return shell_completion(argv)
    if argv[:1] == ["--version"]:
        from launcher import DISTRIBUTION, __version__

        print(f"launcher {__version__} ({DISTRIBUTION})")
        return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        valid = ", ".join(COMMANDS)
        print(f"launcher: unknown command {command!r}; valid commands: {valid}", file=sys.stderr)
        return 2
    from launcher.commands import run_with_hydra

    return run_with_hydra(command, overrides)


def shell_completion(argv: list[str]) -> int:
    """Hydra's shell completion, with the command word in front of the overrides:
    `eval "$(launcher -sc install=bash)"`, then `launcher prepare clu<TAB>`."""
    from launcher.commands import run_with_hydra

    if len(argv) < 2 or not argv[1].startswith("query="):
        return run_with_hydra("prepare", argv, program="launcher")  # install=/uninstall= print the script
    words = os.environ.get("COMP_LINE", "").split()
    start = words.index("launcher") + 1 if "launcher" in words else 1
    words = words[start:]
    typing_command = not words or (len(words) == 1 and not os.environ.get("COMP_LINE", "").endswith(" "))
    if typing_command:
        print(" ".join(c for c in COMMANDS if c.startswith(words[0] if words else "")))
        return 0
    if words[0] not in COMMANDS:
        return 0
    os.environ["COMP_LINE"] = " ".join(["launcher", *words[1:]]) + (
        " " if os.environ["COMP_LINE"].endswith(" ") else ""
    )
    return run_with_hydra(words[0], argv, program="launcher")


if __name__ == "__main__":
    sys.exit(main())
