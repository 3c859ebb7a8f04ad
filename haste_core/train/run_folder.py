"""A run's folder: deciding, before anything is written, whether to start fresh or resume.

``<output_dir>/<name>/`` holds ``recipe.yaml`` (the resolved recipe), ``tensorboard/``, ``checkpoints/`` and
``samples/``. A folder that holds a different run, or files that are not a haste run, is never written to.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import yaml

from haste_core.config.recipe import Recipe
from haste_core.errors import CheckpointError, RecipeError, RunFolderError
from haste_core.train import fork
from haste_core.train.lock import LOCK_FILE
from haste_core.weights import checkpoint

RECIPE_FILE = "recipe.yaml"
# Settings that may change when a run is continued: where its folder is, how long it runs, how often it logs and
# saves, and how a step is computed (micro-batches, compilation, recomputation: the same step, another speed).
# Everything else must be what the checkpoint was trained with.
CHANGEABLE_ON_RESUME = {
    "run.name", "run.output_dir", "run.max_steps", "run.resume", "run.log_every", "run.checkpoint_every",
    "run.keep_checkpoints", "run.sample_every", "run.device", "run.collective_timeout_s", "data.num_workers",
    "data.micro_batch_size", "compile", "activation_checkpointing", "perf",
}  # fmt: skip
# Which plugin modules load is not what a run is: observers (monitors such as TensorBoard, a user's logger) do not
# change training, and the components that do are compared through their own nodes (registered name, settings).
NOT_IDENTITY = {"plugins"}


def resume_source(recipe: Recipe) -> Path | None:
    """The checkpoint to resume from (None: start fresh); ``RunFolderError`` if the folder must not be used."""
    run_dir = recipe.run_dir
    saved = run_dir / RECIPE_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(
            f"{run_dir} is a file, not a run folder; nothing was written. Choose another run.name or run.output_dir."
        )
    held = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []
    if held and not saved.is_file() and not has_checkpoints(run_dir):
        raise RunFolderError(
            f"{run_dir} already holds files but no {RECIPE_FILE}, so it is not a haste run folder; nothing was "
            "written. Choose another run.name or run.output_dir."
        )
    # a folder whose run never saved a checkpoint (it failed early) is free: the corrected command may use it
    if saved.is_file() and has_checkpoints(run_dir):
        differences = recipe_differences(read_saved_recipe(saved), recipe.to_dict())
        if differences:
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise RunFolderError(
                f"{run_dir} already holds a different run ({shown}); nothing was changed. Choose another "
                "run.name (e.g. add run.name=... to the command), or delete that folder to start it over."
            )
    latest = checkpoint.latest_path(run_dir)
    if recipe.run.resume == "never":
        if latest.exists():
            raise RunFolderError(
                f"{run_dir} already holds checkpoints of this run and run.resume is 'never'; set run.resume=auto "
                "to continue it, or choose another run.name to start a new one."
            )
        check_init_from(recipe)
        return None
    source = Path(recipe.run.resume) if recipe.run.resume != "auto" else latest if latest.exists() else None
    point = fork.read(run_dir) if source is None and recipe.run.resume == "auto" else None
    if point is not None:  # a branch of a termination sweep, before its own first checkpoint
        check_parent_recipe(checkpoint.load_meta(point.parent), recipe, point)
        return point.parent
    if source is not None:  # readable, and written by this recipe: found out now, before anything is written
        check_checkpoint_recipe(checkpoint.load_meta(source), recipe, source)
    else:
        check_init_from(recipe)
    return source


def has_checkpoints(run_dir: Path) -> bool:
    return checkpoint.latest_path(run_dir).exists() or bool(checkpoint.step_files(run_dir))


def read_saved_recipe(path: Path) -> dict[str, Any]:
    """A run folder's ``recipe.yaml`` as a dict; ``RunFolderError`` naming the file if it is damaged."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise RunFolderError(
            f"{path} is damaged ({type(exc).__name__}: {detail}); nothing was changed. The checkpoints hold the "
            "recipe too: delete that file to let haste write it again from this command's recipe, or restore it."
        ) from None
    if saved is not None and not isinstance(saved, dict):
        raise RunFolderError(
            f"{path} is damaged (it holds a {type(saved).__name__}, not a recipe mapping); nothing was changed. "
            "Delete that file to let haste write it again from this command's recipe, or restore it."
        )
    return saved or {}


def check_init_from(recipe: Recipe) -> None:
    """A fresh run's ``run.init_from`` must exist (a resumed run never reads it, so it may be gone by then)."""
    init_from = recipe.run.init_from
    if init_from and not Path(init_from).exists():
        raise RecipeError(
            f"checkpoint {init_from!r} does not exist; give a REPA/HASTE/DiT checkpoint or a haste .pt file",
            "run.init_from",
        )


def recipe_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'path: old -> new' for every setting that differs, except those allowed to change on resume and the plugin
    modules loaded."""
    if prefix in CHANGEABLE_ON_RESUME or prefix in NOT_IDENTITY:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{key}" if prefix else str(key)
            out += recipe_differences(old.get(key), new.get(key), path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in recipe_differences(a, b, f"{prefix}.{i}")
        ]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def write_recipe(recipe: Recipe) -> None:
    """Create the run folder and write the resolved recipe (rank 0 only), atomically."""
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    header = f"# resolved recipe of run '{recipe.run.name}' (from {recipe.source}); haste writes this file\n"
    temporary = run_dir / f".{RECIPE_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.write_text(header + recipe.to_yaml())
    temporary.replace(run_dir / RECIPE_FILE)


def check_checkpoint_recipe(state: dict[str, Any], recipe: Recipe, source: Any) -> None:
    """Refuse to resume a checkpoint that a different recipe wrote (settings changeable on resume aside)."""
    differences = recipe_differences(state.get("recipe", {}), recipe.to_dict())
    if differences:
        raise CheckpointError(
            f"checkpoint {source} was written by a different recipe ({'; '.join(differences[:3])}); "
            "resume it with the recipe it was trained with"
        )


def check_parent_recipe(state: dict[str, Any], recipe: Recipe, point: fork.ForkPoint) -> None:
    """A branch's recipe must be its parent's but for the acting termination policies (``haste_core.train.fork``)."""
    if int(state["step"]) != point.step:
        raise CheckpointError(
            f"{point.parent} holds step {state['step']}, but {fork.FORK_FILE} forks at step {point.step}"
        )
    parent = fork.without_acting_policies(state.get("recipe", {}))
    branch = fork.without_acting_policies(recipe.to_dict())
    differences = recipe_differences(parent, branch)
    if differences:
        raise CheckpointError(
            f"{recipe.run_dir} forks {point.parent}, but the recipes differ in more than the termination policy "
            f"({'; '.join(differences[:3])}); a branch changes only termination"
        )
