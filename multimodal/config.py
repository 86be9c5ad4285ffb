"""Configs are plain YAML instances of dataclass schemas (DESIGN.md principle 6).

`from_dict` turns a parsed YAML mapping into a dataclass, recursively, with strict keys: an unknown
key is an error that names its dotted path and suggests the closest valid name. Two field
conventions cover the pluggable families without any interpolation:

* a field with ``metadata={"select": resolver}`` holds a config whose class depends on its own
  ``name`` key (for example ``sampler: {name: low_confidence, steps: 64}``); ``resolver(name)``
  returns the dataclass for that name;
* a field with ``metadata={"presets": resolver}`` accepts ``preset: <name>`` plus field overrides;
  ``resolver(name)`` returns the preset instance to start from, whose class the section takes (a
  backbone family's own settings class, multimodal/backbone/families.py); a resolved config written back
  names its preset in ``name``, which picks the same class again.

`apply_overrides` implements ``--set a.b=c`` (values parsed as YAML scalars) before validation, so
an override can also switch a selected class. `dump` writes the fully resolved config back to YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from multimodal.registry import suggest

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides in place; the value is parsed as YAML (so 3, 0.5, true, [1,2] work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override '{item}' has an empty key")
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{key}' holds a value, not a section")
            node = child
        node[keys[-1]] = _scalar(raw)
    return data


def _scalar(raw: str) -> Any:
    """A YAML scalar, except that numbers like 5e-4 (a string to YAML 1.1) are numbers."""
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from a mapping, validating keys and value types recursively."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or cls.__name__}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}{key}'{suggest(str(key), tuple(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        field = fields[name]
        kwargs[name] = _convert(value, hints[name], field, f"{where}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid '{where.rstrip('.') or cls.__name__}': {err}") from None


def _convert(value: Any, hint: Any, field: dataclasses.Field | None, where: str) -> Any:
    meta = field.metadata if field is not None else {}
    if "select" in meta:
        value = dict(value or {})
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        name = value.get("name", getattr(default, "name", None))
        try:
            target = meta["select"](name)
        except KeyError as err:
            raise ConfigError(f"'{where}.name': {err.args[0]}") from None
        return from_dict(target, value, where + ".")
    if "presets" in meta and isinstance(value, Mapping) and "preset" in value:
        value = dict(value)
        preset_name = value.pop("preset")
        try:
            base = meta["presets"](preset_name)
        except KeyError as err:
            raise ConfigError(f"'{where}.preset': {err.args[0]}") from None
        merged = {**dataclasses.asdict(base), **value}
        return from_dict(type(base), merged, where + ".")
    if "presets" in meta and isinstance(value, Mapping) and isinstance(value.get("name"), str):
        try:  # a resolved config written back: its preset's name picks the settings class (a family's own)
            return from_dict(type(meta["presets"](value["name"])), value, where + ".")
        except KeyError:
            pass  # a name of the user's own: the field's class
    return _convert_type(value, hint, where)


def _convert_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert_type(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{where}': {value!r} fits none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"'{where}' must be one of {list(args)}, not {value!r}{suggest(str(value), [str(a) for a in args])}"
            )
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping")
        return from_dict(hint, value, where + ".")
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, not {value!r}")
        item = args[0] if args else Any
        items = [_convert_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{where}' must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{where}' must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, not {value!r}")
        return value
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-safe data (tuples become lists)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    return clean(dataclasses.asdict(config))


def dump(config: Any, path: str | Path | None = None) -> str:
    """Serialise a config dataclass to YAML; write it to `path` when given."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
