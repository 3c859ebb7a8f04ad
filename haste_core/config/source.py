"""A recipe's text: finding the file (a path, or a shipped recipe's name), reading its YAML, and applying
``key.path=value`` overrides, so that an override is checked exactly like the file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from haste_core.config import shipped
from haste_core.errors import RecipeError

SECTIONS = (
    "run", "data", "student", "objective", "teacher", "teachers", "alignment", "termination",
    "optimizer", "ema", "precision", "sampling", "eval", "plugins", "compile", "activation_checkpointing", "perf",
    "distributed",
)  # fmt: skip


def find_recipe(path: str | Path) -> Path:
    """``path`` if it is a file, else the shipped recipe of that name (``quickstart``); a ``RecipeError`` listing the
    shipped recipes otherwise."""
    path = Path(path)
    if path.is_file():
        return path
    found = shipped.find(str(path))
    if found is None:
        names = ", ".join(shipped.shipped()) or "none are installed"
        raise RecipeError(
            f"recipe file {path} does not exist, and no shipped recipe has that name (shipped: {names}; "
            "haste recipes lists them)"
        )
    return found


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}); save the recipe "
            "as UTF-8 (most editors offer it under 'encoding')"
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)})")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides (values parsed as YAML scalars) to a copy of ``raw``."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for item in overrides:
        key_path, sep, text = item.partition("=")
        if not sep or not key_path:
            raise RecipeError(f"override {item!r} is not of the form key.path=value (e.g. optimizer.lr=3e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise RecipeError(
                f"override {item!r}: {text!r} is not a valid YAML value ({problem}); quote strings and close "
                "brackets, e.g. optimizer.betas=[0.9,0.999] or run.name=my-run"
            ) from None
        keys = key_path.split(".")
        node: Any = raw
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise RecipeError(
                        f"override {item!r}: {where} does not exist ({len(node)} entries, 0..{len(node) - 1})"
                    )
                key = int(key)
            elif not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {'.'.join(keys[:depth])} is a value, not a section")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return raw


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None, width=110)
