"""Loading plugins, filling the registries, and the typed facade the rest of the core calls hooks through.

Load order: the recipe's ``plugins:`` modules (local plugins), then ``HASTE_BLOCK_PLUGINS=a,b`` blocks names,
then every entry point of the ``haste`` group unless ``HASTE_DISABLE_PLUGIN_AUTOLOAD=1`` (built-in plugins are
entry points too), then ``check_pending`` so that a misspelled hook fails at once. ``HASTE_TRACE_PLUGINS=1``
prints every hook call on rank 0. ``haste plugins`` lists what is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from haste_core import hookspecs
from haste_core.errors import PluginError
from haste_core.registry import Registry

ENTRY_POINT_GROUP = "haste"
# family (hook suffix) -> singular used in messages ("unknown teacher 'x'")
FAMILY_LABELS = {
    "students": "student",
    "teachers": "teacher",
    "alignments": "alignment",
    "terminations": "termination",
    "objectives": "objective",
    "datasets": "dataset",
}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


class Plugins:
    """The loaded plugins: one registry per family and one typed method per lifecycle hook."""

    def __init__(self, pm: pluggy.PluginManager, sources: dict[str, str]) -> None:
        from haste_core.interfaces import FAMILIES

        self.pm = pm
        self.sources = sources  # plugin name -> "distribution version" or "local module"
        self.registries = {family: Registry(FAMILY_LABELS[family], base) for family, base in FAMILIES.items()}
        for family, registry in self.registries.items():
            caller = getattr(pm.hook, f"haste_register_{family}")
            for impl in reversed(caller.get_hookimpls()):  # pluggy's own call order
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(
                        f"plugin '{impl.plugin_name}': haste_register_{family} cannot be a hook wrapper; "
                        "registration hooks are plain functions that call registry.add(...)"
                    )
                _trace(f"haste_register_{family}() -> plugin {impl.plugin_name}")
                with registry.registering(impl.plugin_name):
                    impl.function(registry=registry)

    def registry(self, family: str) -> Registry:
        return self.registries[family]

    # lifecycle hooks: observers, results ignored
    def train_start(self, run: Any) -> None:
        self.pm.hook.haste_train_start(run=run)

    def step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        self.pm.hook.haste_step_end(run=run, step=step, metrics=metrics)

    def histograms(self, run: Any, step: int, histograms: dict[str, Any]) -> None:
        self.pm.hook.haste_histograms(run=run, step=step, histograms=histograms)

    def alignment_terminated(self, run: Any, step: int, alignment: str, reason: str) -> None:
        self.pm.hook.haste_alignment_terminated(run=run, step=step, alignment=alignment, reason=reason)

    def checkpoint_saved(self, run: Any, step: int, path: Path) -> None:
        self.pm.hook.haste_checkpoint_saved(run=run, step=step, path=path)

    def samples_saved(self, run: Any, step: int, grid: Any, path: Path) -> None:
        self.pm.hook.haste_samples_saved(run=run, step=step, grid=grid, path=path)

    def images(self, run: Any, step: int, images: dict[str, Any]) -> None:
        self.pm.hook.haste_images(run=run, step=step, images=images)

    def train_end(self, run: Any) -> None:
        self.pm.hook.haste_train_end(run=run)

    def resolve_weights(self, kind: str, name: str) -> Path | None:
        """A local weights file offered by a plugin, or None."""
        result = self.pm.hook.haste_resolve_weights(kind=kind, name=name)
        return Path(result) if result is not None else None

    def describe(self) -> list[dict[str, Any]]:
        """One record per plugin: name, source, hooks implemented, component names it registered."""
        records = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:  # a blocked name
                continue
            components = {
                family: [entry.name for entry in registry.entries() if entry.plugin == name]
                for family, registry in self.registries.items()
            }
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            records.append(
                {
                    "name": name,
                    "source": self.sources.get(name, "registered directly"),
                    "hooks": hooks,
                    "components": {family: names for family, names in components.items() if names},
                }
            )
        return records


def load_plugins(local: Sequence[str] = (), *, base_dir: Path | None = None) -> Plugins:
    """Create the plugin manager, load plugins in the documented order, and fill the registries."""
    pm = pluggy.PluginManager("haste")
    pm.add_hookspecs(hookspecs)
    sources: dict[str, str] = {}
    local_files: set[Path] = set()
    for spec in local:
        name, module = _import_local(spec, base_dir)
        _register(pm, module, name)
        sources[name] = f"local module {module.__file__}"
        local_files.add(Path(module.__file__).resolve())
    for name in _env_list("HASTE_BLOCK_PLUGINS"):
        pm.set_blocked(name)
    if not _env_flag("HASTE_DISABLE_PLUGIN_AUTOLOAD"):
        _load_entry_points(pm, sources, local_files)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = sorted(name for name in dir(pm.hook) if name.startswith("haste_"))
        raise PluginError(
            f"plugin '{pm.get_name(exc.plugin)}' implements a hook that does not exist ({exc}); "
            f"the hooks are: {', '.join(hooks)} (docs/plugin_hooks.md)"
        ) from None
    if _env_flag("HASTE_TRACE_PLUGINS") and os.environ.get("RANK", "0") == "0":
        pm.add_hookcall_monitoring(_before_hook, _after_hook)
    return Plugins(pm, sources)


def _register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        detail = " ".join(str(exc).split())  # pluggy's message spans lines; ours is one paragraph
        raise PluginError(
            f"plugin '{name}' has a hook implementation haste cannot call: {detail}. Hook arguments must be named as "
            "in docs/plugin_hooks.md (an implementation may take fewer of them, not others)."
        ) from None


def _import_local(spec: str, base_dir: Path | None) -> tuple[str, ModuleType]:
    """Import a recipe's ``plugins:`` entry: a dotted module name or a ``.py`` file (relative to the recipe)."""
    if spec.endswith(".py"):
        path = Path(spec) if base_dir is None or Path(spec).is_absolute() else base_dir / spec
        if not path.is_file():
            raise PluginError(f"plugins: local plugin file {path} does not exist")
        name = path.stem
        module_spec = importlib.util.spec_from_file_location(f"haste_local_{name}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses (a component's Config) look their module up there
        loader = module_spec.loader
        try:
            loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_spec.name, None)
            raise PluginError(f"plugins: local plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
        return name, module
    try:
        return spec, importlib.import_module(spec)
    except Exception as exc:
        raise PluginError(
            f"plugins: local plugin module '{spec}' failed to import: {type(exc).__name__}: {exc}. "
            "List importable module names (on PYTHONPATH) or .py files relative to the recipe."
        ) from exc


def _load_entry_points(pm: pluggy.PluginManager, sources: dict[str, str], local_files: set[Path]) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue  # blocked, or the same distribution seen twice on sys.path
        if local_files and _module_file(ep.module) in local_files:
            continue  # the recipe's plugins: list named this module's file already
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin '{ep.name}' ({ep.value}, from {dist}) failed to import: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall it, or skip it with HASTE_BLOCK_PLUGINS={ep.name}."
            ) from exc
        if pm.is_registered(module):
            continue  # the recipe's plugins: list named this module already
        _register(pm, module, ep.name)
        sources[ep.name] = dist


def _module_file(name: str) -> Path | None:
    """The file module ``name`` would be imported from (its parent packages are imported), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        return None  # ep.load() reports the failure with the plugin's name
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def _trace(message: str) -> None:
    if _env_flag("HASTE_TRACE_PLUGINS") and os.environ.get("RANK", "0") == "0":
        print(f"[haste trace] {message}", file=sys.stderr, flush=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _before_hook(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
    _trace(f"{hook_name}({args}) -> plugins {[impl.plugin_name for impl in impls]}")


def _after_hook(outcome: Any, hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    if outcome.exception is not None:
        _trace(f"{hook_name} raised {outcome.exception!r}")
