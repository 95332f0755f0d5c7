"""Which configs are text-model configs: `task: text` in the YAML (or `--set task=text`). The CLI's one
dispatch point asks `text_command`; everything heavy is imported only when a text command runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import ConfigError
from ..utils.yaml_files import read_yaml_file

TEXT_COMMANDS = ("train", "check", "plan")


def config_task(config_path: str, sets: Optional[List[str]] = None) -> Optional[str]:
    """The `task` a config asks for (a `--set task=...` wins), or None; unreadable files give None (the
    normal loader reports them, with the same reader)."""
    for pair in reversed(sets or []):
        key, _, value = pair.partition("=")
        if key.strip() == "task":
            return value.strip() or None
    try:
        raw = read_yaml_file(Path(config_path))
    except ConfigError:
        return None
    task = raw.get("task") if isinstance(raw, dict) else None
    return str(task) if task is not None else None


def text_command(args: argparse.Namespace) -> Optional[Callable[[argparse.Namespace], int]]:
    """The text trainer's version of `args.command` when the config (or `keys --task`) says `text`, else None."""
    if args.command == "keys":
        wanted = getattr(args, "task", None) == "text"
    else:
        wanted = args.command in TEXT_COMMANDS and config_task(args.config, args.set) == "text"
    if not wanted:
        return None
    from . import cli

    return getattr(cli, f"cmd_{args.command}")
