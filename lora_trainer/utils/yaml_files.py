"""YAML files written by people: duplicate keys refused (naming both lines), syntax errors with line and
column, non-UTF-8 text and folders named as files reported as ConfigError, never as a traceback."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from ..errors import ConfigError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last one)."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"key {key!r} appears twice, on line {first_line} and line {second_line}")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
        return super().construct_mapping(node, deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based)."""
    if isinstance(exc, DuplicateKeyError):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_yaml_file(path: Path, what: str = "config file") -> Any:
    """Parse a YAML file written by a person; every problem is a ConfigError naming the file and the place."""
    if path.is_dir():
        inside = path / "config.yaml"
        hint = f" (did you mean {str(inside)!r}?)" if inside.is_file() else ""
        raise ConfigError(f"config error: {what} {str(path)!r} is a folder, not a YAML file{hint}")
    if not path.is_file():
        raise ConfigError(f"config error: {what} {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error: {path} is not UTF-8 text (byte {exc.start} cannot be read): save it "
                          f"as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config error: {what} {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: {path}: {yaml_problem(exc)}") from None
