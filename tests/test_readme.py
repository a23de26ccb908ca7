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
CROP_DECODER = "decode: only each JPEG's random crop (launcher._jpeg)"


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
    """Every leaf option of a group's schema as Hydra validates it (nested dataclasses as a.b.c), or
    None for a group without a schema."""
    from dataclasses import is_dataclass

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import launcher

    launcher.compose_config("status")  # registers the schemas
    store = ConfigStore.instance()
    if group not in store.list("schema"):
        return None

    def leaves(node, prefix: str) -> set[str]:
        out = set()
        for key in node:
            if is_dataclass(OmegaConf.get_type(node, key)):
                out |= leaves(node[key], f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")
        return out

    return leaves(store.load(f"schema/{group}/base.yaml").node, "")


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
            named = {full for name in ticked(row[2]) for full in expand(name)}
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
