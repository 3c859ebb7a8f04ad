"""Name-keyed registries, one per component family (students, teachers, alignments, ...).

Plugins fill them from their ``haste_register_*`` hooks with ``registry.add(name, cls, **fixed)``: ``cls`` is
the component class, ``fixed`` are constructor arguments that define this name and are not recipe settings
(``registry.add("sit_xl_2", SiT, arch=SiTArch(depth=28, ...))``). A recipe node ``{name: ..., **settings}``
is validated against ``cls.Config`` and built with ``cls(config, **fixed, **runtime)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from haste_core.errors import PluginError, RecipeError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    """One registered component: its class, the fixed constructor arguments, and the plugin that added it."""

    name: str
    cls: type
    plugin: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def build(self, config: Any, **runtime: Any) -> Any:
        """Construct the component from its validated ``Config`` and the runtime objects it needs."""
        return self.cls(config, **self.fixed, **runtime)

    def describe(self, config: Any, **specs: Any) -> Any:
        """The component's ``describe`` (students, teachers, data sets) for ``config``, with its fixed arguments."""
        return self.cls.describe(config, **specs, **self.fixed)


class Registry:
    """Components of one family, keyed by name. Duplicate names are errors naming both plugins."""

    def __init__(self, family: str, base: type) -> None:
        self.family = family
        self.base = base
        self._entries: dict[str, Entry] = {}
        self._plugin: str | None = None

    @contextmanager
    def registering(self, plugin: str) -> Iterator[Registry]:
        """Attribute every ``add`` inside the block to ``plugin`` (the plugin manager does this)."""
        self._plugin = plugin
        try:
            yield self
        finally:
            self._plugin = None

    def add(self, name: str, cls: type, **fixed: Any) -> None:
        """Register ``cls`` under ``name``; ``fixed`` are constructor arguments that this name stands for."""
        plugin = self._plugin or "<direct call>"
        where = f"plugin '{plugin}' tried to register {self.family} '{name}'"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(f"{where}: names are lower-case snake_case (like 'sit_xl_2'), got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(f"{where}: {cls!r} is not a subclass of {self.base.__module__}.{self.base.__name__}")
        _check_config_class(cls, where)
        overlap = sorted(set(fixed) & {f.name for f in dataclasses.fields(cls.Config)})
        if overlap:
            raise PluginError(f"{where}: fixed arguments {overlap} are also Config fields; keep each in one place")
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.family} '{name}' is registered twice: by plugin '{other}' and by plugin '{plugin}'. "
                f"Block one of them with HASTE_BLOCK_PLUGINS={plugin} (or {other}), or rename the component."
            )
        self._entries[name] = Entry(name=name, cls=cls, plugin=plugin, fixed=dict(fixed))

    def get(self, name: str) -> Entry:
        """The entry registered as ``name``; a ``RecipeError`` listing the valid names otherwise."""
        if name in self._entries:
            return self._entries[name]
        raise RecipeError(self.unknown_message(name), "name")

    def unknown_message(self, name: object) -> str:
        """'unknown teacher 'x' (did you mean 'y'?); available: a, b, c'."""
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        available = ", ".join(self.names()) or "none: no plugin registered one"
        return f"unknown {self.family} {name!r}{hint}; available: {available}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _check_config_class(cls: type, where: str) -> None:
    config = getattr(cls, "Config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise PluginError(
            f"{where}: {cls.__name__} needs a nested `@dataclass(kw_only=True, frozen=True) class Config`"
        )
    if not config.__dataclass_params__.frozen:
        raise PluginError(f"{where}: {cls.__name__}.Config must be frozen (@dataclass(kw_only=True, frozen=True))")
    positional = [f.name for f in dataclasses.fields(config) if not f.kw_only]
    if positional:
        raise PluginError(f"{where}: {cls.__name__}.Config fields {positional} must be keyword-only (kw_only=True)")
