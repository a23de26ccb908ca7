"""The README's two set-up commands are what CI and users run, and the first one, run as written in a
fresh clone, installs the package and runs the demo with the crop decoder it compiled."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from conftest import REPO
from venvs import clean_env, clone_head, make_venv

FIRST_COMMAND = "pip install . && launcher demo"
CROP_DECODER = "decode: only each JPEG's random crop (launcher.data._jpeg)"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up on a fresh clone", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0] == FIRST_COMMAND


def test_ci_runs_the_readmes_test_command():
    ci = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [readme_commands()[1]]


@pytest.mark.slow
def test_the_first_command_in_a_fresh_clone_runs_the_crop_decoder(tmp_path):
    """In a fresh clone, in a fresh venv (not the test run's own environment, which `pip install .`
    would replace; torch borrowed, see tests/venvs.py), the README's first command as written."""
    clone = clone_head(REPO, tmp_path / "clone")
    bin_dir = make_venv(tmp_path / "venv")
    start = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", readme_commands()[0]],
        cwd=clone,
        env=clean_env(bin_dir),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert CROP_DECODER in result.stdout, result.stdout[-3000:]
    print(f"the README's first command: {time.monotonic() - start:.1f}s")


# ---------------------------------------------------------------- the README's tables against the code


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    assert f"\n## {title}\n" in text, f"README.md has no section '## {title}'"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table whose first header cell is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    """What a cell names in backticks, outside parentheses (which explain), comma lists split."""
    names = []
    for quoted in re.findall(r"`([^`]+)`", re.sub(r"\([^()]*\)", "", cell)):
        names += [name.strip() for name in re.split(r",(?![^{}]*\})", quoted) if name.strip()]
    return names


def expand(name: str) -> list[str]:
    """Brace expansion as in the README: `archives.{devkit,train,val}.{file,md5}`."""
    if not (m := re.search(r"\{([^{}]*)\}", name)):
        return [name]
    return [out for part in m.group(1).split(",") for out in expand(name[: m.start()] + part + name[m.end() :])]


def both_ways(what: str, readme: set[str], code: set[str]) -> list[str]:
    problems = [f"{what}: {x} is accepted by the code but not in README.md" for x in sorted(code - readme)]
    return problems + [f"{what}: {x} is in README.md but the code does not accept it" for x in sorted(readme - code)]


def cli_commands(capsys) -> list[str]:
    """The commands `launcher --help` lists (the ones __main__ dispatches)."""
    from launcher.__main__ import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    block = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines()]


def shared_defaults() -> dict[str, str]:
    """group -> default choice, from the defaults list every command's primary config shares."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    common = OmegaConf.load(str(files("launcher.conf").joinpath("common.yaml")))
    out = {}
    for item in common.defaults:
        if isinstance(item, str):  # _self_
            continue
        ((key, value),) = item.items()
        if not key.startswith("override "):
            out[key.removeprefix("optional ")] = value
    return out


def group_choices(group: str, default: str) -> set[str]:
    """A group's choices: its YAML files in launcher.conf, and the default the defaults list names
    (an optional group such as launcher_site ships none: its default is the user's own file)."""
    from importlib.resources import files

    folder = files("launcher.conf").joinpath(group)
    return {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")} | {default}


def schema_options(group: str) -> set[str] | None:
    """Every leaf option of a group's schema as Hydra validates it (nested dataclasses as a.b.c; the
    union over the subclasses of a base, as for cluster), or None for a group without a schema."""
    from dataclasses import fields as dataclass_fields
    from dataclasses import is_dataclass
    from typing import Any

    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig, OmegaConf

    import launcher

    launcher.compose_config("status")  # registers the schemas
    store = ConfigStore.instance()
    if group not in store.list("schema"):
        return None

    def leaves(node, prefix: str) -> set[str]:
        out = set()
        for key in node:
            child = node._get_node(key)
            if is_dataclass(OmegaConf.get_type(node, key)):
                out |= leaves(node[key], f"{prefix}{key}.")
            elif isinstance(child, DictConfig):  # a dict of the user's keys: dataset.archives.<key>.file
                element = child._metadata.element_type  # Any: free-form (additional_parameters), one option
                fields_ = [f.name for f in dataclass_fields(element)] if is_dataclass(element) else [""]
                if element is Any:
                    out.add(f"{prefix}{key}")
                else:
                    out |= {f"{prefix}{key}.<*>" + (f".{f}" if f else "") for f in fields_}
            else:
                out.add(f"{prefix}{key}")
        return out

    # a group whose schema is a base plus one subclass per choice (cluster) accepts the union
    return set().union(
        *(leaves(store.load(f"schema/{group}/{name}").node, "") for name in store.list(f"schema/{group}"))
    )


def test_commands_table_matches_the_cli(capsys):
    import launcher

    readme = [ticked(row[0])[0] for row in table_rows(readme_section("Commands"), "command")]
    commands = cli_commands(capsys)
    assert len(readme) == len(set(readme)), f"a command is listed twice in README.md: {readme}"
    assert not (problems := both_ways("command", set(readme), set(commands))), problems
    for command in commands:
        assert launcher.compose_config(command) is not None


def test_config_groups_table_matches_the_conf_and_the_schemas():
    rows = {ticked(row[0])[0]: row for row in table_rows(readme_section("Config groups"), "group")}
    defaults = shared_defaults()
    problems = both_ways("config group", set(rows), set(defaults))
    for group in sorted(set(rows) & set(defaults)):
        row = rows[group]
        problems += both_ways(f"choice of {group}", set(ticked(row[1])), group_choices(group, defaults[group]))
        marked = re.findall(r"`([^`]+)` \(default\b", row[1])
        if marked != [defaults[group]]:
            problems.append(f"{group}: README.md marks {marked} as default, the defaults list says {defaults[group]}")
        if (options := schema_options(group)) is not None:
            named = {re.sub(r"<[^<>]*>", "<*>", full) for name in ticked(row[2]) for full in expand(name)}
            problems += both_ways(
                f"option of {group}", {f"{group}.{n}" for n in named}, {f"{group}.{o}" for o in options}
            )
    assert not problems, "\n".join(problems)


def command_nodes(commands: list[str]) -> dict[str, dict[str, set[str]]]:
    """node -> command -> its options, of every key a command composes beyond the config groups
    (`wait`, a top-level value, has no options); `command` is set by the command word."""
    from omegaconf import DictConfig

    import launcher

    groups = set(shared_defaults())
    nodes: dict[str, dict[str, set[str]]] = {}
    for command in commands:
        cfg = launcher.compose_config(command)
        for key in cfg:
            if key in groups or key == "command":
                continue
            options = set(cfg[key]) if isinstance(cfg[key], DictConfig) else set()
            nodes.setdefault(key, {})[command] = options
    return nodes


def test_command_options_table_matches_the_schemas(capsys):
    from launcher.__main__ import main

    commands = cli_commands(capsys)
    assert main(["status", "command=verify"]) == 2, "command= is not an option: the command word sets it"
    capsys.readouterr()
    rows = table_rows(readme_section("Config groups"), "node")
    readme = {ticked(row[0])[0].removesuffix(".*"): row for row in rows}
    code = command_nodes(commands)
    problems = both_ways("command option node", set(readme), set(code))
    for node in sorted(set(readme) & set(code)):
        _, options, composed_by = readme[node]
        by = set(commands) if composed_by == "every command" else set(ticked(composed_by))
        problems += both_ways(f"command composing {node}", by, set(code[node]))
        for command, accepted in code[node].items():
            named = {f"{node}.{o}" for o in ticked(options)}
            problems += both_ways(f"option of {command}", named, {f"{node}.{o}" for o in accepted})
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the README's SLURM transcript

TRANSCRIPT = "### A failed run and its fix, on SLURM"
DEMO = "/dev/shm/ops15-demo"  # the folder the transcript ran in; the test runs it in a folder of its own
STEP = "::launcher-transcript-step::"
# (command starting with, which occurrence) -> lines its output must hold (in the README and when run)
ESSENTIAL = {
    ("launcher prepare", 0): [
        r"^submitted \d+ jobs to slurm \(job ids [\d, ]+\); logs in /\S+/\.launcher/logs/prepare-\S+$",
        r"^follow progress with: launcher status storage=nfs storage\.root=/\S+/imagenet dataset=synthetic$",
    ],
    ("launcher status", 0): [
        r"^  train +1/3 complete, 2 failed; 55 images, [\d.]+ KB done$",
        r"^--- md5-train \(job \d+_\d+, log /\S+_log\.err\)$",
        r"ERROR unit md5-train failed after [\d.]+s: md5 mismatch for /\S+/imagenet/ILSVRC2012_img_train\.tar",
        r"^--- finalize-train \(job \d+, ",
        r"^after fixing the cause, resubmit what is missing with:$",
    ],
    ("echo $?", 0): [r"^1$"],
    ("cp download/ILSVRC2012_img_train.tar imagenet/", 0): [],
    ("launcher prepare", 1): [
        r"ILSVRC2012_img_train\.tar changed since train was prepared from it",
        r"^submitted 2 jobs to slurm \(job ids \d+\); logs in /\S+/\.launcher/logs/prepare-\S+$",
        r"^prepare: 100% .*8/8 units\]$",
        r"^train +1 +0 +0 +55 ",
    ],
    ("launcher status", 1): [
        r"^  common +2/2 complete",
        r"^  train +3/3 complete; 55 images, [\d.]+ KB done$",
        r"^  val +3/3 complete; 30 images, [\d.]+ KB done$",
    ],
    ("echo $?", 1): [r"^0$"],
}
NEVER = {("launcher status", 0): [r"ETA"], ("launcher status", 1): [r"failed|queued|running|ETA"]}


def transcript_steps(text: str) -> list[tuple[str, str]]:
    """(command, output) of each `$ ` line of a transcript; a `…` line marks a trim."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return [(command, "\n".join(out)) for command, out in steps]


def readme_transcript() -> list[tuple[str, str]]:
    section = readme_section("On a real cluster")
    assert TRANSCRIPT in section, f"README.md has no '{TRANSCRIPT}' under '## On a real cluster'"
    block = re.search(r"```console\n(.*?)```", section.split(TRANSCRIPT, 1)[1], re.S)
    return transcript_steps(block.group(1))


def run_transcript(commands: list[str], env: dict, timeout: float = 300) -> list[tuple[str, str]]:
    """Run the commands in one bash, as typed (each sees the exit code of the one before), and
    return (command, output with stderr merged) of each."""
    script = ["rc=0"]
    for command in commands:
        script += [f"echo '{STEP}'", f"{{ (exit $rc); {command}\n}} 2>&1; rc=$?"]
    run = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    outputs = run.stdout.split(STEP + "\n")[1:]
    assert len(outputs) == len(commands), run.stdout + run.stderr
    return [(command, out.rstrip("\n")) for command, out in zip(commands, outputs)]


def check_essentials(steps: list[tuple[str, str]], where: str) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    found = {}
    for command, out in steps:
        for start in {start for start, _ in ESSENTIAL}:
            if command.startswith(start):
                found[(start, seen.get(start, 0))] = out
                seen[start] = seen.get(start, 0) + 1
    for key, patterns in ESSENTIAL.items():
        if key not in found:
            problems.append(f"{where}: no step {key[1] + 1} starting with {key[0]!r}")
            continue
        problems += [f"{where}: {key}: no line matches {p!r}" for p in patterns if not re.search(p, found[key], re.M)]
        problems += [f"{where}: {key}: a line matches {p!r}" for p in NEVER.get(key, []) if re.search(p, found[key])]
    return problems


def test_the_transcript_in_the_readme_shows_the_failure_and_the_fix():
    steps = readme_transcript()
    assert steps[0][0] == f"mkdir {DEMO} && cd {DEMO}", "the transcript starts outside the clone, in its own folder"
    assert not (problems := check_essentials(steps, "README.md")), "\n".join(problems)


@pytest.mark.slurm
@pytest.mark.slow
def test_the_readme_transcript_runs_as_shown(slurm_cluster, tmp_path):
    """The README's transcript, run as written (in a folder of its own, with the `launcher` script)
    on the local cluster: the failed unit and its log, status exit 1, the fix, status exit 0."""
    import os
    import shutil

    assert shutil.which("launcher"), "the `launcher` script is not on PATH"
    demo = tmp_path / "demo"  # made by the transcript's first command
    commands = [command.replace(DEMO, str(demo)) for command, _ in readme_transcript()]
    start = time.monotonic()
    steps = run_transcript(commands, dict(os.environ))
    text = "\n".join(f"$ {c}\n{o}" for c, o in steps)
    assert not (problems := check_essentials(steps, "the run")), "\n".join(problems) + "\n" + text
    print(f"the README's transcript: {time.monotonic() - start:.1f}s")
