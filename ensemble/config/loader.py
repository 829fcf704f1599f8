"""Run configs: frozen dataclasses loaded from YAML, validated on creation.

``load_config(path, overrides=["run.samples=4"])`` reads YAML, applies dotted
``key=value`` overrides (values parsed as YAML), and builds ``Config``. Unknown keys
are rejected with the valid ones listed; wrong types and bad values name the field,
the value and how to fix it. The schema classes themselves live in
``ensemble.config.schema``; this module is the generic machinery.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ensemble.errors import EnsembleError
from ensemble.registry import unknown_name

T = TypeVar("T")


class ConfigError(EnsembleError):
    """A config value is invalid; the message names source, field, value and fix."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (give the path to a YAML file, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict copy."""
    out = _deepcopy(data)
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. run.samples=4")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, source: str = "config",
              prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, checking keys and types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: {unknown_name('key', prefix + str(key), [prefix + f for f in fields])}")
    kwargs = {name: _coerce(hints[name], data[name], source, prefix + name) for name in fields if name in data}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _coerce(tp: Any, value: Any, source: str, field: str) -> Any:
    """Check ``value`` against type ``tp`` (converting lists to tuples, ints to floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, field)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1]
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: field '{field}' is {value!r}; use one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, prefix=field + ".")  # type: ignore[arg-type]  # tp is a class here
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected
        _expect(isinstance(value, (list, tuple)), source, field, value, "a list")
        item_tp = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_coerce(item_tp, v, source, f"{field}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        _expect(isinstance(value, dict), source, field, value, "a mapping")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_tp, v, source, f"{field}.{k}") for k, v in value.items()}
    if tp is bool:
        _expect(isinstance(value, bool), source, field, value, "true or false")
        return value
    if tp is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), source, field, value, "an integer")
        return value
    if tp is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), source, field, value, "a number")
        return float(value)
    if tp is str:
        _expect(isinstance(value, (str, int, float)) and not isinstance(value, bool), source, field, value, "a string")
        return str(value)
    return value


def _expect(ok: bool, source: str, field: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: field '{field}' is {value!r}; expected {what}")


def check(ok: bool, field: str, value: Any, fix: str) -> None:
    """Validation helper for ``__post_init__``: ``check(x > 0, "run.samples", x, "use 1 or more")``."""
    if not ok:
        raise ConfigError(f"field '{field}' is {value!r}; {fix}")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON/YAML-safe dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load ``Config`` from a YAML file with optional ``key=value`` overrides."""
    from ensemble.config.schema import Config

    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(Config, data, source=str(path))
    return dataclasses.replace(cfg, source=str(path))


if typing.TYPE_CHECKING:  # pragma: no cover
    from ensemble.config.schema import Config
