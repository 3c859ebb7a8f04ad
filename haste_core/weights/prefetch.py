"""Fetch every pretrained weight a recipe needs into the caches, or report what is missing (``haste prefetch``).

For clusters whose login node has internet and whose compute nodes do not: run it on the login node (it stores
the files in the Hugging Face cache, ``HF_HUB_CACHE`` / ``$HF_HOME/hub``), then train on the compute nodes with
``HF_HUB_OFFLINE=1``. With ``check`` nothing is downloaded. Components name their hub files with a
``hub_files(config, **fixed)`` class method (the student, the data set, e.g. the latents' preview VAE, and every
teacher); a ``haste_resolve_weights`` plugin's answer, or a weights file named in the recipe, needs nothing from
the hub.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from haste_core.config.recipe import Node, Recipe
from haste_core.plugins import Plugins
from haste_core.weights import hub as weights

BYTES_PER_MB = 1024 * 1024
RESOLVED_KINDS = ("student", "teacher")  # the kinds haste_resolve_weights answers for (haste_core/hookspecs.py)
LOCAL_COPY = {"data": "data.vae: /path/to/a/folder that AutoencoderKL.save_pretrained wrote"}  # else weights:


def needs(recipe: Recipe) -> list[tuple[Node, str]]:
    """Every component node that may load weights, with its kind (``student`` and ``teacher`` nodes are asked
    of ``haste_resolve_weights`` first; the data set's, e.g. the latents' preview VAE, come from the hub)."""
    return [
        (recipe.student, "student"),
        *((node, "teacher") for node in recipe.teachers.values()),
        (recipe.data, "data"),
    ]


def hub_files(node: Node) -> list[weights.HubFile]:
    return list(node.entry.cls.hub_files(node.config, **node.entry.fixed))


def missing_notes(recipe: Recipe, plugins: Plugins, recipe_arg: str = "RECIPE.yaml") -> list[str]:
    """One line per weights file the recipe needs that is not on this machine, saying how to get it; nothing is
    downloaded (``haste check``)."""
    notes = []
    for node, kind in needs(recipe):
        files = hub_files(node)
        offered = plugins.resolve_weights(kind, node.name) if files and kind in RESOLVED_KINDS else None
        if offered is not None:
            if not offered.is_file():
                notes.append(f"{node.path} ({node.name}): {offered}, which a haste_resolve_weights plugin names, "
                             "does not exist; put the file there or fix that plugin")  # fmt: skip
            continue
        for hub in files:
            if weights.cached(hub) is None:
                local = LOCAL_COPY.get(kind, f"{node.path}.weights: /path/to/{hub.filenames[0]}")
                notes.append(
                    f"{node.path} ({node.name}): {hub} is not in the Hugging Face cache ({weights.hub_cache_dir()}); "
                    f"get it with `haste prefetch {recipe_arg}` on a machine with internet (or `huggingface-cli "
                    f"download {hub.repo_id} {hub.filenames[0]}`), or give a local copy ({local})"
                )
    return notes


def prefetch(recipe: Recipe, plugins: Plugins, *, check: bool, out: TextIO | None = None) -> int:
    """Fetch (or with ``check`` only look up) each hub file; print one line per file; 1 if any is missing."""
    out = out or sys.stdout
    missing = 0
    for node, kind in needs(recipe):
        files = hub_files(node)
        if not files:
            continue
        offered = plugins.resolve_weights(kind, node.name) if kind in RESOLVED_KINDS else None
        if offered is not None:
            state = "ok" if offered.is_file() else "MISSING"
            missing += state == "MISSING"
            print(f"{node.path} ({node.name}): from haste_resolve_weights: {offered} [{state}]", file=out)
            continue
        for hub in files:
            found = weights.cached(hub)
            if found is None and not check:
                found = weights.fetch(hub, f"{kind} {node.name}", LOCAL_COPY.get(kind, ""))
                print(f"{node.path} ({node.name}): stored {hub} at {found} ({_size(found)})", file=out)
            elif found is None:
                missing += 1
                print(f"{node.path} ({node.name}): MISSING {hub} (not in {weights.hub_cache_dir()})", file=out)
            else:
                print(f"{node.path} ({node.name}): cached {hub} at {found} ({_size(found)})", file=out)
    if not any(hub_files(node) for node, _ in needs(recipe)):
        print("nothing to fetch: no component of this recipe loads weights from the hub", file=out)
    if missing and check:
        print(f"{missing} missing; run without --check on a machine with internet to fetch them", file=out)
    return 1 if missing else 0


def _size(path: Path) -> str:
    return f"{path.stat().st_size / BYTES_PER_MB:.1f} MB"
