"""`python -m launcher <command> [hydra overrides]`: take the command off argv, hand the rest to Hydra.

Nothing heavy is imported before a command runs: `--help` answers without torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from launcher.cli.commands import COMMANDS

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
    """The CLI; output piped into a reader that stops early (`launcher prepare --help | head`) ends quietly."""
    try:
        code = run(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout at exit
        return 0


def run(argv: list[str]) -> int:
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
    from launcher.cli.commands import run_with_hydra

    return run_with_hydra(command, overrides)


BASH_COMPLETION = """export _LAUNCHER_OLD_COMP=$(complete -p launcher 2> /dev/null)
_launcher_completion()
{
    local words=($COMP_LINE) helper
    if [ "${words[0]}" == "launcher" ]; then
        helper="launcher"
    elif [[ "$(basename -- "${words[0]}")" == python* && "${words[1]}" == "-m" && "${words[2]}" == "launcher" ]]; then
        helper="${words[0]} -m launcher"
    else
        return 1
    fi
    local choices=$(COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE $helper -sc query=bash)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "${COMP_WORDS[$COMP_CWORD]}"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
COMP_WORDBREAKS=$COMP_WORDBREAKS complete -o nospace -o default -F _launcher_completion launcher python python3
"""
HIDDEN = ("schema/", "command=")


def shell_completion(argv: list[str]) -> int:
    """Shell completion with the command word in front of the overrides, for `launcher` and
    `python -m launcher`: `eval "$(launcher -sc install=bash)"`, then `launcher prepare clu<TAB>`.
    Hydra's own completion answers, without the schema groups and `command=`."""
    if argv[1:2] == ["install=bash"]:
        print(BASH_COMPLETION, end="")
        return 0
    from launcher.cli.commands import run_with_hydra

    if len(argv) < 2 or not argv[1].startswith("query="):
        return run_with_hydra("prepare", argv, program="launcher")  # other shells, uninstall=
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    start = words.index("launcher") + 1 if "launcher" in words else 1
    words = words[start:]
    typing_command = not words or (len(words) == 1 and not line.endswith(" "))
    if typing_command:
        print(" ".join(c for c in COMMANDS if c.startswith(words[0] if words else "")))
        return 0
    if words[0] not in COMMANDS:
        return 0
    os.environ["COMP_LINE"] = " ".join(["launcher", *words[1:]]) + (" " if line.endswith(" ") else "")
    answer = io.StringIO()
    with contextlib.redirect_stdout(answer):
        code = run_with_hydra(words[0], argv, program="launcher")
    print(" ".join(w for w in answer.getvalue().split() if not w.startswith(HIDDEN)))
    return code


if __name__ == "__main__":
    sys.exit(main())
