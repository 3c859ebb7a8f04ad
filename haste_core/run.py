"""Train from a recipe: ``[torchrun ...] python -m haste_core.run RECIPE.yaml [key.path=value ...] [--check]``.

Everything is validated (recipe, plugins, files, the run folder) before a process group exists or anything is
written; a problem prints one paragraph and exits with status 2. ``--check`` validates, prints the resolved
recipe and exits.
"""

from __future__ import annotations

import logging
import sys

from haste_core import distributed, run_folder
from haste_core.errors import HasteError
from haste_core.recipe import load_recipe

USAGE = "usage: python -m haste_core.run RECIPE.yaml [key.path=value ...] [--check]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    flags = [a for a in args if a.startswith("-")]
    if flags or not args:
        print(f"{USAGE}\n(settings are changed with key.path=value, e.g. optimizer.lr=3e-4; unknown: {flags})"
              if flags else USAGE, file=sys.stderr)  # fmt: skip
        return 2
    is_main = distributed.env_rank() == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="[haste] %(message)s")
    try:
        recipe, plugins = load_recipe(args[0], args[1:])
        resume_from = run_folder.resume_source(recipe)
    except HasteError as exc:
        if is_main:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = recipe.data_spec.unavailable
    if check:
        print(recipe.to_yaml(), end="")
        print(f"# ok: {_summary(recipe)}; {'resume from ' + str(resume_from) if resume_from else 'fresh start'}")
        if missing:
            print(f"# note: data: {missing}")
        if recipe.eval.every:
            from haste_core.inception import fid_weights_note

            if note := fid_weights_note(recipe.eval.inception):
                print(f"# note: eval: {note}")
        return 0
    if missing:
        if is_main:
            print(f"error: data: {missing}", file=sys.stderr)
        return 2

    from haste_core.trainer import Trainer  # imported late: --check never pays for it

    def train(env: distributed.DistEnv) -> None:
        if env.is_main:
            run_folder.write_recipe(recipe)
        distributed.barrier()
        Trainer(recipe, plugins, env, resume_from=resume_from).fit()

    return distributed.run_command(recipe.run.device, train)


def _summary(recipe: object) -> str:
    s, d = recipe.student_spec, recipe.data_spec
    teachers = ", ".join(
        f"{t.name} ({t.depth} blocks, {t.num_heads} heads, grid {t.grid})" for t in recipe.teacher_specs.values()
    )
    items = "not prepared yet" if d.unavailable else f"{d.num_items} items"
    return (
        f"data {recipe.data.name} x{list(d.x_shape)} ({items}); student {s.name} ({s.depth} blocks, "
        f"{s.num_heads} heads, grid {s.grid}); teachers: {teachers or 'none'}; run folder {recipe.run_dir}"
    )


if __name__ == "__main__":
    sys.exit(main())
