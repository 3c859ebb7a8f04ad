"""Turning plain YAML values into frozen ``Config`` dataclasses, with errors that name the YAML path.

Supported field types: bool, int, float, str, ``Literal[...]``, ``X | None``, ``tuple[T, ...]``, ``tuple[A, B]``,
``list[T]``, ``dict[str, T]``, nested dataclasses and ``Any``. YAML 1.1 (PyYAML) reads ``1e-4`` as a string, so
numeric strings are accepted for float fields; everything else must have the declared type.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from haste_core.errors import RecipeError


def build_config(config_cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """``config_cls(**values)`` after checking every key and value; errors carry ``path``-prefixed YAML paths."""
    if not isinstance(values, Mapping):
        raise RecipeError(f"expected a mapping of settings, got {_describe(values)}", path)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    for key in values:
        if key not in fields:
            raise RecipeError(unknown_key_message(key, fields), _join(path, str(key)))
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"missing required setting '{missing[0]}' ({_type_name(hints[missing[0]])})", path)
    kwargs = {key: coerce(value, hints[key], _join(path, key)) for key, value in values.items()}
    try:
        return config_cls(**kwargs)
    except RecipeError as exc:
        raise exc.within(path) from None
    except (TypeError, ValueError) as exc:
        raise RecipeError(str(exc), path) from None


def unknown_key_message(key: object, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(valid) or 'none'}"


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against ``annotation`` and convert containers (lists to tuples where declared)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return coerce(value, option, path)
            except RecipeError:
                continue
        raise RecipeError(f"expected {_type_name(annotation)}, got {_describe(value)}", path)
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        choices = ", ".join(repr(a) for a in args)
        raise RecipeError(f"{value!r} is not a valid choice{hint}; choose one of {choices}", path)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"expected true or false, got {_describe(value)}", path)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"expected an integer, got {_describe(value)}", path)
    if annotation is float:
        number = _to_float(value)
        if number is None:
            raise RecipeError(f"expected a number, got {_describe(value)}", path)
        if not math.isfinite(number):  # nan or inf passes every comparison check below and then cannot train
            raise RecipeError(f"expected a finite number, got {value!r}", path)
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise RecipeError(f"expected a string, got {_describe(value)}", path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"expected a list ({_type_name(annotation)}), got {_describe(value)}", path)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(
                f"expected a list of {len(args)} values ({_type_name(annotation)}), got {len(value)}", path
            )
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"expected a list ({_type_name(annotation)}), got {_describe(value)}", path)
        return [coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"expected a mapping ({_type_name(annotation)}), got {_describe(value)}", path)
        return {coerce(k, args[0], path): coerce(v, args[1], _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return build_config(annotation, value, path)
    raise RecipeError(f"haste cannot check settings of type {annotation!r}; use a supported type", path)


def to_plain(value: Any) -> Any:
    """A config (or any value inside one) as plain YAML-ready Python: tuples become lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _to_float(value: Any) -> float | None:
    """A YAML number (or numeric string, see the module docstring) as a float; None if it is not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list of {_type_name(args[0])}"
    if origin in (tuple, list):
        return "list of [" + ", ".join(_type_name(a) for a in args) + "]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
