"""The schemas in Hydra's ConfigStore, and what help shows of them: each option's one-line comment,
a command's own options, each group's choices (the YAML files of launcher.conf)."""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from launcher.config.commands import COMMAND_SCHEMAS, CommandConfig
from launcher.config.schema import CLUSTER_SCHEMAS, GROUP_SCHEMAS


def option_docs(schema: type) -> dict[str, str]:
    """field name -> the one-line comment above it in the schema's source (the documentation of each option)."""
    import inspect
    import re

    docs, comment = {}, []
    for line in inspect.getsource(schema).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            comment.append(text[1:].strip())
        elif (m := re.match(r"(\w+):", text, re.ASCII)) and comment:
            docs[m.group(1)] = " ".join(comment)
            comment = []
        else:
            comment = []
    return docs


def own_options(command: str) -> list[tuple[str, Any, str]]:
    """(key, default, comment) of every option a command has beyond the groups every command composes."""
    from dataclasses import MISSING as NO_DEFAULT
    from dataclasses import fields, is_dataclass

    schema = COMMAND_SCHEMAS[command]
    shared = {f.name for f in fields(CommandConfig)} - {"wait"}
    docs = option_docs(CommandConfig) | option_docs(schema)
    rows = []
    for f in fields(schema):
        if f.name in shared or f.name == "command":
            continue
        node = f.default_factory() if f.default_factory is not NO_DEFAULT else f.default
        if is_dataclass(node):
            inner = option_docs(type(node))
            rows += [(f"{f.name}.{g.name}", getattr(node, g.name), inner.get(g.name, "")) for g in fields(node)]
        else:
            rows.append((f.name, node, docs.get(f.name, "")))
    return rows


def group_choices() -> dict[str, list[str]]:
    """group -> its options, from the YAML files of launcher.conf (the schema groups are not choices)."""
    from importlib.resources import files

    conf = files("launcher.conf")
    return {
        group: sorted(p.name.removesuffix(".yaml") for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        for group in GROUP_SCHEMAS
    }


def command_help(command: str) -> str:
    """The head of `launcher <command> --help`: what the command does, its own options, the groups."""
    from launcher.cli.commands import COMMANDS

    def shown(value: Any) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    options = [(f"{key}={shown(default)}", doc) for key, default, doc in own_options(command)]
    width = min(max((len(o) for o, _ in options), default=0), 28)
    lines = [
        f"launcher {command}: {COMMANDS[command].summary}",
        "",
        f"usage: launcher {command} [group=option ...] [key=value ...] [--cfg job | --info | -m]",
        "",
        f"options of {command} (key=default):",
        *(f"  {o:<{width}}  {doc}" if len(o) <= width else f"  {o}\n  {'':<{width}}  {doc}" for o, doc in options),
        "",
        "config groups (group=option; every group's options are in the config below):",
        *(f"  {group}: {', '.join(choices)}" for group, choices in group_choices().items()),
    ]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the help template with string.Template


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore and the help resolver in OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("launcher_help"):
        OmegaConf.register_new_resolver("launcher_help", command_help)
    cs = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=f"schema/{group}", name="base", node=schema)
    for backend, schema in CLUSTER_SCHEMAS.items():
        cs.store(group="schema/cluster", name=backend, node=schema)
    for command, schema in COMMAND_SCHEMAS.items():
        cs.store(group="schema/command", name=command, node=schema)
