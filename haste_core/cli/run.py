"""``haste run RECIPE [key.path=value ...]`` trains; ``haste check RECIPE ...`` (or ``run --check``) only validates.

Everything is validated (recipe, plugins, files, the run folder) before a process group exists or anything is
written; a problem prints one paragraph and exits with status 2. Under torchrun either form works::

    torchrun --standalone --nproc_per_node=8 --no-python haste run recipes/haste_sit_xl2_dinov2b_in256.yaml
    torchrun --standalone --nproc_per_node=8 -m haste_core.run recipes/haste_sit_xl2_dinov2b_in256.yaml
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from haste_core.cli.common import add_recipe_arguments, report, setup_logging


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_recipe_arguments(parser)
    if verb == "run":
        parser.add_argument("--check", action="store_true", help="validate and print the resolved recipe, then stop")


def run(args: argparse.Namespace) -> int:
    from haste_core import cluster, distributed
    from haste_core.config.recipe import load_recipe
    from haste_core.errors import HasteError
    from haste_core.train import run_folder
    from haste_core.train.lock import RunLock

    setup_logging()
    check = args.verb == "check" or getattr(args, "check", False)
    lock = None
    try:
        if not check:
            cluster.check_launcher([str(args.recipe), *args.overrides])
        recipe, plugins = load_recipe(args.recipe, args.overrides)
        missing = recipe.data_spec.unavailable
        if missing and not check:
            raise HasteError(f"data: {missing}")
        if not check and distributed.env_rank() == 0:  # held until this process ends: one run per folder
            lock = RunLock.acquire(recipe.run_dir)
        resume_from = run_folder.resume_source(recipe)
    except HasteError as exc:
        if lock is not None:
            lock.release(remove_new_folder=True)
        return report(exc)
    if check:
        print(recipe.to_yaml(), end="")
        print(f"# ok: {summary(recipe)}; {'resume from ' + str(resume_from) if resume_from else 'fresh start'}")
        if missing:
            print(f"# note: data: {missing}")
        from haste_core.weights.prefetch import missing_notes

        for note in missing_notes(recipe, plugins, str(args.recipe)):
            print(f"# note: weights: {note}")
        if recipe.eval.every:
            from haste_core.eval.inception import fid_weights_note

            if note := fid_weights_note(recipe.eval.inception):
                print(f"# note: eval: {note}")
        return 0

    from haste_core.train.log_file import log_to_file
    from haste_core.train.trainer import Trainer  # imported late: a check never pays for it

    def train(env: distributed.DistEnv) -> None:
        source = distributed.broadcast_object(resume_from)  # rank 0 decided under the lock; every rank follows it
        trainer = Trainer(recipe, plugins, env, resume_from=source)  # what can fail fails before anything is written
        if env.is_main:
            run_folder.write_recipe(recipe)
        distributed.barrier()
        with log_to_file(recipe.run_dir, env.is_main):  # opened after recipe.yaml: the folder is this run's now
            trainer.fit()

    try:
        return distributed.run_command(recipe.run.device, train, recipe.run.collective_timeout)
    finally:
        if lock is not None:
            lock.release()


def summary(recipe: Any) -> str:
    """One line: the data, the student, the teachers and the run folder of a validated recipe."""
    s, d = recipe.student_spec, recipe.data_spec
    teachers = ", ".join(
        f"{t.name} ({t.depth} blocks, {t.num_heads} heads, grid {t.grid})" for t in recipe.teacher_specs.values()
    )
    items = "not prepared yet" if d.unavailable else f"{d.num_items} items"
    return (
        f"data {recipe.data.name} x{list(d.x_shape)} ({items}); student {s.name} ({s.depth} blocks, "
        f"{s.num_heads} heads, grid {s.grid}); teachers: {teachers or 'none'}; run folder {recipe.run_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m haste_core.run``: the same as ``haste run``."""
    from haste_core.cli import main as haste

    return haste(["run", *(sys.argv[1:] if argv is None else argv)])
