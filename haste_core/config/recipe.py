"""Recipes: YAML in, a frozen and fully validated ``Recipe`` out, before any process group or allocation.

A recipe names a component per family (``{name: <registry name>, ...its Config fields}``, ``config/nodes.py``)
plus the core sections (``config/sections.py``). Every error names its YAML path and what would be valid. The
resolved recipe (every default filled in, local plugin files as absolute paths) is what is written to the run
folder and into checkpoints; validating it again gives the same recipe, from any folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haste_core.config.coerce import build_config, to_plain, unknown_key_message
from haste_core.config.nodes import (
    AlignmentNode,
    DataNode,
    Node,
    alignment_nodes,
    component,
    data_node,
    unique_labels,
)
from haste_core.config.policy_metrics import check_metrics_read
from haste_core.config.sections import (
    EMAConfig,
    EvalConfig,
    OptimizerConfig,
    PrecisionConfig,
    RunConfig,
    SamplingConfig,
)
from haste_core.config.source import SECTIONS, apply_overrides, dump_yaml, find_recipe, read_yaml
from haste_core.config.speed import ActivationCheckpointingConfig, CompileConfig, DistributedConfig, PerfConfig
from haste_core.errors import RecipeError
from haste_core.interfaces import DataSpec, StudentSpec, TeacherSpec
from haste_core.plugins import Plugins, load_plugins

SINGLE_TEACHER_KEY = "teacher"
_SPEED_SECTIONS = {
    "compile": CompileConfig,
    "activation_checkpointing": ActivationCheckpointingConfig,
    "perf": PerfConfig,
    "distributed": DistributedConfig,
}
BUILT_IN_SAMPLERS = ("euler", "heun", "sde")  # haste_core.eval.samplers; an objective may add its own


@dataclass(frozen=True)
class Recipe:
    run: RunConfig
    data: DataNode
    student: Node
    objective: Node
    teachers: Mapping[str, Node]
    alignments: tuple[AlignmentNode, ...]
    termination: Node | None
    optimizer: OptimizerConfig
    ema: EMAConfig
    precision: PrecisionConfig
    sampling: SamplingConfig
    plugins: tuple[str, ...]
    data_spec: DataSpec
    student_spec: StudentSpec
    teacher_specs: Mapping[str, TeacherSpec]
    source: str
    watch: tuple[Node, ...] = ()  # termination.watch: policies that only observe (haste_core/train/phase.py)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)  # in-training FID (off by default)
    compile: CompileConfig = dataclasses.field(default_factory=CompileConfig)
    activation_checkpointing: ActivationCheckpointingConfig = dataclasses.field(
        default_factory=ActivationCheckpointingConfig
    )
    perf: PerfConfig = dataclasses.field(default_factory=PerfConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    @property
    def watch_names(self) -> list[str]:
        """The names of the watching policies (the labelling rule of alignments)."""
        return unique_labels([node.name for node in self.watch])

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data; ``validate`` of it gives back an equal recipe."""
        out: dict[str, Any] = {
            "run": to_plain(self.run),
            "data": self.data.to_dict(),
            "student": self.student.to_dict(),
            "objective": self.objective.to_dict(),
        }
        if self.teachers:
            out["teachers"] = {key: node.to_dict() for key, node in self.teachers.items()}
        if self.alignments:
            out["alignment"] = [node.to_dict() for node in self.alignments]
        if self.termination is not None or self.watch:
            out["termination"] = self.termination.to_dict() if self.termination is not None else {}
            if self.watch:
                out["termination"]["watch"] = [node.to_dict() for node in self.watch]
        for key in ("optimizer", "ema", "precision", "sampling"):
            out[key] = to_plain(getattr(self, key))
        if self.eval.every:
            out["eval"] = to_plain(self.eval)
        for key in _SPEED_SECTIONS:  # written only when set, like eval: a recipe without them reads as before
            if getattr(self, key) != _SPEED_SECTIONS[key]():
                out[key] = to_plain(getattr(self, key))
        if self.plugins:
            out["plugins"] = list(self.plugins)
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


# --- loading --------------------------------------------------------------------------------------------------


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, world_size: int | None = None
) -> tuple[Recipe, Plugins]:
    """Find (a path or a shipped recipe's name), read, override, load the plugins the recipe names, and validate,
    files on this machine included (``check_files``). Raises ``HasteError`` subclasses."""
    path = find_recipe(path)
    raw = apply_overrides(read_yaml(path), overrides)
    raw["plugins"] = resolve_plugin_paths(plugin_list(raw), path.parent)
    plugins = load_plugins(raw["plugins"])
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    recipe = validate(raw, plugins, world_size=world, source=str(path))
    check_files(recipe)
    return recipe, plugins


def plugin_list(raw: Mapping[str, Any]) -> list[str]:
    value = raw.get("plugins") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError("expected a list of module names or .py files", "plugins")
    return value


def resolve_plugin_paths(specs: Sequence[str], base_dir: Path) -> list[str]:
    """Local plugin files as absolute paths (relative ones are relative to the recipe's folder); module names
    unchanged. The resolved recipe then works from any folder, and so does a checkpoint's."""
    return [str((base_dir / spec).resolve()) if spec.endswith(".py") else spec for spec in specs]


def validate(raw: Mapping[str, Any], plugins: Plugins, *, world_size: int = 1, source: str = "<dict>") -> Recipe:
    """Check every section and cross-reference; build the frozen ``Recipe``. Nothing on this machine is looked at
    but what the components' own ``describe`` reads (``check_files`` does the rest)."""
    for key in raw:
        if key not in SECTIONS:
            raise RecipeError(f"unknown section; {unknown_key_message(key, SECTIONS)}", str(key))
    for key in ("run", "data", "student", "objective"):
        if raw.get(key) is None:
            raise RecipeError(f"the recipe needs a '{key}' section (see docs/recipes.md)", key)
    run = build_config(RunConfig, raw["run"], "run")
    data = data_node(raw["data"], plugins.registry("datasets"), world_size)
    data_spec = data.describe()
    if not data_spec.unavailable and data.global_batch_size > data_spec.num_items:
        raise RecipeError(
            f"{data.global_batch_size} is larger than the training set ({data_spec.num_items} items of "
            f"{data.name}); use at most {data_spec.num_items}",
            "data.global_batch_size",
        )
    student = component(raw["student"], plugins.registry("students"), "student")
    student_spec = student.describe(data=data_spec)
    objective = component(raw["objective"], plugins.registry("objectives"), "objective")
    teachers = _teacher_nodes(raw, plugins)
    teacher_specs = {key: node.describe(data=data_spec, student=student_spec) for key, node in teachers.items()}
    alignments = alignment_nodes(
        raw.get("alignment") or [], plugins.registry("alignments"), plugins.registry("terminations"), teachers
    )
    for node in alignments:
        spec = teacher_specs[node.teacher]
        node.call(lambda n=node, spec=spec: n.entry.cls.check(n.config, student=student_spec, teacher=spec))
    termination, watch = None, ()
    if raw.get("termination") is not None:
        termination_raw, watch = _watch_nodes(raw["termination"], plugins)
        if termination_raw or not watch:  # {watch: [...]} alone: observers, every alignment has its own policy
            termination = component(termination_raw, plugins.registry("terminations"), "termination")
    _check_termination(alignments, termination, watch, plugins.registry("terminations").names())
    unused = sorted(set(teachers) - {node.teacher for node in alignments})
    if unused:
        raise RecipeError(
            "no alignment uses this teacher; remove it or point an alignment at it",
            _teacher_path(raw, unused[0]),
        )
    sampling = build_config(SamplingConfig, raw.get("sampling") or {}, "sampling")
    check_sampling(sampling, objective)
    return Recipe(
        run=run,
        data=data,
        student=student,
        objective=objective,
        teachers=teachers,
        alignments=alignments,
        termination=termination,
        optimizer=build_config(OptimizerConfig, raw.get("optimizer") or {}, "optimizer"),
        ema=build_config(EMAConfig, raw.get("ema") or {}, "ema"),
        precision=build_config(PrecisionConfig, raw.get("precision") or {}, "precision"),
        sampling=sampling,
        plugins=tuple(plugin_list(raw)),
        data_spec=data_spec,
        student_spec=student_spec,
        teacher_specs=teacher_specs,
        source=source,
        watch=watch,
        eval=build_config(EvalConfig, raw.get("eval") or {}, "eval"),
        **{key: build_config(cls, raw.get(key) or {}, key) for key, cls in _SPEED_SECTIONS.items()},
    )


def check_files(recipe: Recipe) -> None:
    """What a recipe asks of this machine, checked before a run starts: the checkpoint to resume, a CUDA device,
    the in-training FID files. (A checkpoint's stored recipe is validated elsewhere without these.)"""
    run, evaluation = recipe.run, recipe.eval
    if run.resume not in {"auto", "never"} and not Path(run.resume).exists():
        raise RecipeError(
            f"checkpoint {run.resume!r} does not exist; give 'auto', 'never' or the path of a .pt file (a .dcp "
            "folder for fsdp2 runs)",
            "run.resume",
        )
    if run.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RecipeError("'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'", "run.device")
    if evaluation.every and not Path(evaluation.reference).is_file():
        raise RecipeError(
            f"reference {evaluation.reference!r} does not exist; give an ADM-layout .npz of real images "
            "(e.g. VIRTUAL_imagenet256_labeled.npz), or set eval.every=0",
            "eval.reference",
        )
    if evaluation.every and evaluation.inception and not Path(evaluation.inception).expanduser().is_file():
        raise RecipeError(
            f"Inception weights {evaluation.inception!r} do not exist; give the path of "
            "pt_inception-2015-12-05-6726825d.pth, or leave it empty to use the haste or torch.hub cache",
            "eval.inception",
        )


def check_sampling(sampling: SamplingConfig, objective: Node) -> None:
    """The sampler is a built-in one or one the objective adds, and the objective can honour the settings."""
    extra = tuple(objective.entry.cls.extra_samplers)
    if sampling.sampler not in (*BUILT_IN_SAMPLERS, *extra):
        offered = f"; objective '{objective.name}' adds {', '.join(extra)}" if extra else ""
        raise RecipeError(
            f"unknown sampler {sampling.sampler!r}; the built-in samplers are {', '.join(BUILT_IN_SAMPLERS)}{offered}",
            "sampling.sampler",
        )
    try:
        objective.entry.cls.check_sampling(objective.config, sampling)
    except RecipeError as exc:
        raise exc.within("sampling") from None


def _teacher_nodes(raw: Mapping[str, Any], plugins: Plugins) -> dict[str, Node]:
    registry = plugins.registry("teachers")
    if raw.get("teacher") is not None and raw.get("teachers") is not None:
        raise RecipeError("give either 'teacher' (one teacher) or 'teachers' (several, by key), not both", "teachers")
    if raw.get("teacher") is not None:
        return {SINGLE_TEACHER_KEY: component(raw["teacher"], registry, "teacher")}
    many = raw.get("teachers") or {}
    if not isinstance(many, Mapping):
        raise RecipeError("expected a mapping of key -> teacher node, like {features: {name: ...}}", "teachers")
    return {str(key): component(node, registry, f"teachers.{key}") for key, node in many.items()}


def _teacher_path(raw: Mapping[str, Any], key: str) -> str:
    return "teacher" if raw.get("teacher") is not None else f"teachers.{key}"


def _check_termination(
    alignments: Sequence[AlignmentNode], termination: Node | None, watch: Sequence[Node], policies: Sequence[str]
) -> None:
    """Every alignment has exactly one governing policy, and each policy accepts the labels it will see."""
    if not alignments and (termination is not None or watch):
        raise RecipeError(
            "there is no alignment to terminate; remove this section or add an 'alignment' list",
            "termination",
        )
    orphans = [node for node in alignments if node.termination is None]
    if alignments and not orphans and termination is not None:
        raise RecipeError(
            "every alignment has its own termination, so this run-wide one would never apply; remove it (a "
            "'termination' section holding only 'watch: [...]' is allowed)",
            "termination",
        )
    if orphans and termination is None:
        watching = " (termination.watch policies only observe)" if watch else ""
        raise RecipeError(
            f"{orphans[0].path} has no termination policy{watching}; add a run-wide 'termination' section "
            f"({{name: ...}} with one of: {', '.join(policies) or 'none registered'}) or one on the alignment",
            "termination",
        )
    governed = [(termination, [node.label for node in orphans])] if termination is not None else []
    governed += [(node.termination, [node.label]) for node in alignments if node.termination is not None]
    governed += [(policy, [node.label for node in alignments]) for policy in watch]
    for policy, labels in governed:
        policy.call(lambda p=policy, labels=labels: check_metrics_read(p.entry.cls, p.config, labels))
        policy.call(lambda p=policy, labels=labels: p.entry.cls.check(p.config, labels=labels))


def _watch_nodes(raw: Any, plugins: Plugins) -> tuple[Any, tuple[Node, ...]]:
    """Split ``termination.watch`` (a list of policy nodes that only observe) off the run-wide node."""
    if not isinstance(raw, Mapping) or raw.get("watch") is None:
        return raw, ()
    items = raw["watch"]
    if not isinstance(items, list):
        raise RecipeError(
            "expected a list of termination nodes that only observe, like [{name: plateau}, {name: fade, start: 10, "
            "steps: 10}]",
            "termination.watch",
        )
    registry = plugins.registry("terminations")
    nodes = tuple(component(item, registry, f"termination.watch[{index}]") for index, item in enumerate(items))
    return {key: value for key, value in raw.items() if key != "watch"}, nodes
