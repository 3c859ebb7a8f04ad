"""The recipe stored in a checkpoint, rebuilt for a tool that reads the checkpoint (``haste sample``).

A checkpoint is data, and may come from anyone: the local plugin modules its recipe lists (``plugins:``, often
paths relative to wherever it was trained) are never imported from it. Its components are looked up among the
installed (entry-point) plugins plus the local plugin modules the user names on the command line
(``--plugin MODULE_OR_FILE``). A checkpoint that needs a plugin that is not there fails with a message naming it
and the flag that would load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haste_core.config.recipe import Recipe, validate
from haste_core.errors import PluginError, RecipeError
from haste_core.plugins import Plugins, load_plugins


def checkpoint_recipe(state: dict[str, Any], path: Path, local_plugins: Sequence[str] = ()) -> tuple[Recipe, Plugins]:
    """The validated recipe of checkpoint ``state`` (read from ``path``), with only installed plugins and
    ``local_plugins`` (what the user named) loaded."""
    raw = dict(state["recipe"])
    named = [str(spec) for spec in raw.get("plugins") or []]
    given = [str(Path(spec).resolve()) if spec.endswith(".py") else spec for spec in local_plugins]
    plugins = load_plugins(given)
    raw["plugins"] = given
    try:
        return validate(raw, plugins, source=str(path)), plugins
    except RecipeError as exc:
        raise PluginError(_missing_plugin_message(exc, state, path, named, given)) from None


def _missing_plugin_message(
    exc: RecipeError, state: dict[str, Any], path: Path, named: list[str], given: list[str]
) -> str:
    """Which plugin the checkpoint needs (from the plugin records it stores) and how to load it."""
    wanted = exc.message.split("'")[1] if exc.message.count("'") >= 2 else ""
    owners = [
        f"{record['name']} ({record.get('source', 'unknown source')})"
        for record in state.get("plugins") or []
        if any(wanted in names for names in (record.get("components") or {}).values())
    ]
    by = f"; the run that wrote it had it from plugin {', '.join(owners)}" if owners else ""
    local = [spec for spec in named if spec not in given]
    if local:
        flags = " ".join(f"--plugin {spec}" for spec in local)
        hint = (
            f"Its recipe lists local plugins ({', '.join(local)}), which are never imported from a checkpoint, "
            f"since that would run code the file names: if you trust them, name them yourself ({flags})."
        )
    else:
        hint = "Install the package that provides it, or name a local plugin module with --plugin MODULE_OR_FILE."
    return f"checkpoint {path} needs a plugin that is not loaded ({exc}){by}. {hint}"
