"""Typed configs from YAML: one loader for every dataclass config of the project.

Unknown keys and wrongly typed values are refused with the key's name; missing keys take the
dataclass defaults, so a YAML file and the Python defaults can never disagree silently.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if dataclasses.is_dataclass(hint):                 # a nested config: a mapping of its fields
        return config_from_dict(hint, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if item is None and args and len(args) != len(value):
            raise ValueError(f"{name}: expected {len(args)} values, got {len(value)}")
        hints = [item] * len(value) if item is not None else (args or [Any] * len(value))
        return tuple(_coerce(f"{name}[{i}]", v, h) for i, (v, h) in enumerate(zip(value, hints)))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ValueError(f"{name}: expected {hint.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[T], raw: dict, source: str = "config") -> T:
    """Build dataclass `cls` from a dict, checking keys and value types."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    try:
        values = {k: _coerce(k, v, hints[k]) for k, v in raw.items()}
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass `cls` (an empty file gives the defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    return config_from_dict(cls, raw, str(path))
