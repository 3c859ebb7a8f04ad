"""Recipes: YAML in, a frozen and fully validated ``Recipe`` out, before any process group or allocation.

A recipe names a component per family (``{name: <registry name>, ...its Config fields}``) plus the core
sections below. ``key.path=value`` overrides are applied to the YAML before validation, so an override is
checked exactly like the file. Every error names its YAML path and what would be valid. The resolved recipe
(every default filled in) is what is written to the run folder and into checkpoints; loading it back gives
the same recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from haste_core.config import shipped
from haste_core.config.coerce import build_config, to_plain, unknown_key_message
from haste_core.config.sections import (
    EMAConfig,
    EvalConfig,
    OptimizerConfig,
    PrecisionConfig,
    RunConfig,
    SamplingConfig,
)
from haste_core.errors import RecipeError
from haste_core.interfaces import DataSpec, StudentSpec, TeacherSpec
from haste_core.plugins import Plugins, load_plugins
from haste_core.registry import Entry

# --- component nodes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A validated component node: registry entry plus its Config, and where it sits in the YAML."""

    name: str
    config: Any
    entry: Entry
    path: str

    def build(self, **runtime: Any) -> Any:
        return self.entry.build(self.config, **runtime)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **to_plain(self.config)}


@dataclass(frozen=True)
class DataNode(Node):
    global_batch_size: int
    num_workers: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "global_batch_size": self.global_batch_size,
            "num_workers": self.num_workers,
        }


@dataclass(frozen=True)
class AlignmentNode(Node):
    label: str  # align/<label> in TensorBoard
    weight: float
    teacher: str  # key into Recipe.teachers
    termination: Node | None  # this term's own policy; None: the run's

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "weight": self.weight, "teacher": self.teacher}
        if self.termination is not None:
            out["termination"] = self.termination.to_dict()
        return out


DATA_CORE_KEYS = {"global_batch_size", "num_workers"}
ALIGNMENT_CORE_KEYS = {"weight", "teacher", "termination"}
DEFAULT_ALIGNMENT_WEIGHT = 0.5  # lambda_proj = lambda_attn = 0.5 in REPA and HASTE (haste_spec.md §3.5)
SINGLE_TEACHER_KEY = "teacher"
SECTIONS = (
    "run", "data", "student", "objective", "teacher", "teachers", "alignment", "termination",
    "optimizer", "ema", "precision", "sampling", "eval", "plugins",
)  # fmt: skip


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
    watch: tuple[Node, ...] = ()  # termination.watch: policies that only observe (haste_core/phase.py)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)  # in-training FID (off by default)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

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
        if self.plugins:
            out["plugins"] = list(self.plugins)
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None, width=110)


# --- loading --------------------------------------------------------------------------------------------------


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, world_size: int | None = None
) -> tuple[Recipe, Plugins]:
    """Read, override, load the plugins the recipe names, and validate. Raises ``HasteError`` subclasses."""
    path = find_recipe(path)
    raw = read_yaml(path)
    raw = apply_overrides(raw, overrides)
    plugins = load_plugins(_plugin_list(raw), base_dir=path.parent)
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    return validate(raw, plugins, world_size=world, source=str(path)), plugins


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
        raw = yaml.safe_load(path.read_text())
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
        value = yaml.safe_load(text) if text.strip() else None
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


def _plugin_list(raw: Mapping[str, Any]) -> list[str]:
    value = raw.get("plugins") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError("expected a list of module names or .py files", "plugins")
    return value


def validate(raw: Mapping[str, Any], plugins: Plugins, *, world_size: int = 1, source: str = "<dict>") -> Recipe:
    """Check every section and cross-reference; build the frozen ``Recipe``."""
    for key in raw:
        if key not in SECTIONS:
            raise RecipeError(f"unknown section; {unknown_key_message(key, SECTIONS)}", str(key))
    for key in ("run", "data", "student", "objective"):
        if raw.get(key) is None:
            raise RecipeError(f"the recipe needs a '{key}' section (see docs/recipes.md)", key)
    run = build_config(RunConfig, raw["run"], "run")
    data = _data_node(raw["data"], plugins, world_size)
    data_spec = _call(data, lambda: data.entry.cls.describe(data.config, **data.entry.fixed))
    if not data_spec.unavailable and data.global_batch_size > data_spec.num_items:
        raise RecipeError(
            f"{data.global_batch_size} is larger than the training set ({data_spec.num_items} items of "
            f"{data.name}); use at most {data_spec.num_items}",
            "data.global_batch_size",
        )
    student = _component(raw["student"], plugins.registry("students"), "student")
    student_spec = _call(
        student, lambda: student.entry.cls.describe(student.config, data=data_spec, **student.entry.fixed)
    )
    objective = _component(raw["objective"], plugins.registry("objectives"), "objective")
    teachers = _teacher_nodes(raw, plugins)
    teacher_specs = {
        key: _call(
            node,
            lambda n=node: n.entry.cls.describe(n.config, data=data_spec, student=student_spec, **n.entry.fixed),
        )
        for key, node in teachers.items()
    }
    alignments = _alignment_nodes(raw.get("alignment") or [], plugins, teachers)
    for node in alignments:
        teacher_spec = teacher_specs[node.teacher]
        _call(
            node,
            lambda n=node, ts=teacher_spec: n.entry.cls.check(n.config, student=student_spec, teacher=ts),
        )
    termination, watch = None, ()
    if raw.get("termination") is not None:
        termination_raw, watch = _watch_nodes(raw["termination"], plugins)
        if termination_raw or not watch:  # {watch: [...]} alone: observers, every alignment has its own policy
            termination = _component(termination_raw, plugins.registry("terminations"), "termination")
    _check_termination(alignments, termination, watch)
    unused = sorted(set(teachers) - {node.teacher for node in alignments})
    if unused:
        raise RecipeError(
            "no alignment uses this teacher; remove it or point an alignment at it",
            _teacher_path(raw, unused[0]),
        )
    sampling = build_config(SamplingConfig, raw.get("sampling") or {}, "sampling")
    _check_sampler(sampling, objective)
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
        plugins=tuple(_plugin_list(raw)),
        data_spec=data_spec,
        student_spec=student_spec,
        teacher_specs=teacher_specs,
        source=source,
        watch=watch,
        eval=build_config(EvalConfig, raw.get("eval") or {}, "eval"),
    )


def _call(node: Node, fn: Any) -> Any:
    """Run a component's describe/check and put the node's YAML path in front of its errors."""
    try:
        return fn()
    except RecipeError as exc:
        raise exc.within(node.path) from None


def _split(raw: Any, path: str, core_keys: set[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"expected a component node like {{name: ..., ...settings}}, got {raw!r}", path)
    name = raw.get("name")
    if not isinstance(name, str):
        raise RecipeError("every component node needs 'name: <registered name>'", f"{path}.name")
    settings = {k: v for k, v in raw.items() if k != "name" and k not in core_keys}
    core = {k: v for k, v in raw.items() if k in core_keys}
    return name, settings, core


def _component(raw: Any, registry: Any, path: str) -> Node:
    name, settings, _ = _split(raw, path, set())
    entry = _lookup(registry, name, path)
    return Node(name=name, config=build_config(entry.cls.Config, settings, path), entry=entry, path=path)


def _lookup(registry: Any, name: str, path: str) -> Entry:
    if name not in registry:
        raise RecipeError(registry.unknown_message(name), f"{path}.name")
    return registry.get(name)


def _data_node(raw: Any, plugins: Plugins, world_size: int) -> DataNode:
    name, settings, core = _split(raw, "data", DATA_CORE_KEYS)
    entry = _lookup(plugins.registry("datasets"), name, "data")
    config = build_config(entry.cls.Config, settings, "data")
    if "global_batch_size" not in core:
        raise RecipeError("missing required setting 'global_batch_size' (int, summed over all processes)", "data")
    batch = core["global_batch_size"]
    workers = core.get("num_workers", 0)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise RecipeError(f"expected a positive integer, got {batch!r}", "data.global_batch_size")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise RecipeError(f"expected an integer of 0 or more, got {workers!r}", "data.num_workers")
    if batch % world_size:
        lower, upper = batch - batch % world_size, batch + world_size - batch % world_size
        raise RecipeError(
            f"{batch} does not divide over {world_size} processes (WORLD_SIZE={world_size}); "
            f"use a multiple of {world_size}, such as {lower or upper} or {upper}",
            "data.global_batch_size",
        )
    node = DataNode(name=name, config=config, entry=entry, path="data", global_batch_size=batch, num_workers=workers)
    return node


def _teacher_nodes(raw: Mapping[str, Any], plugins: Plugins) -> dict[str, Node]:
    registry = plugins.registry("teachers")
    if raw.get("teacher") is not None and raw.get("teachers") is not None:
        raise RecipeError("give either 'teacher' (one teacher) or 'teachers' (several, by key), not both", "teachers")
    if raw.get("teacher") is not None:
        return {SINGLE_TEACHER_KEY: _component(raw["teacher"], registry, "teacher")}
    many = raw.get("teachers") or {}
    if not isinstance(many, Mapping):
        raise RecipeError("expected a mapping of key -> teacher node, like {dino: {name: dinov2_vitb14}}", "teachers")
    return {str(key): _component(node, registry, f"teachers.{key}") for key, node in many.items()}


def _teacher_path(raw: Mapping[str, Any], key: str) -> str:
    return "teacher" if raw.get("teacher") is not None else f"teachers.{key}"


def _alignment_nodes(raw: Any, plugins: Plugins, teachers: Mapping[str, Node]) -> tuple[AlignmentNode, ...]:
    if not isinstance(raw, list):
        raise RecipeError("expected a list of alignment nodes", "alignment")
    registry = plugins.registry("alignments")
    names = [node.get("name") if isinstance(node, Mapping) else None for node in raw]
    nodes = []
    for index, item in enumerate(raw):
        path = f"alignment[{index}]"
        name, settings, core = _split(item, path, ALIGNMENT_CORE_KEYS)
        entry = _lookup(registry, name, path)
        weight = core.get("weight", DEFAULT_ALIGNMENT_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise RecipeError(f"expected a number of 0 or more, got {weight!r}", f"{path}.weight")
        teacher = core.get("teacher")
        if teacher is None:
            if len(teachers) != 1:
                choices = ", ".join(teachers) or "none are defined"
                raise RecipeError(f"say which teacher this alignment uses (teachers: {choices})", f"{path}.teacher")
            teacher = next(iter(teachers))
        elif teacher not in teachers:
            close = difflib.get_close_matches(str(teacher), list(teachers), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(
                f"unknown teacher key {teacher!r}{hint}; defined: {', '.join(teachers) or 'none'}",
                f"{path}.teacher",
            )
        policy = None
        if core.get("termination") is not None:
            policy = _component(core["termination"], plugins.registry("terminations"), f"{path}.termination")
        label = name if names.count(name) == 1 else f"{name}_{index}"
        nodes.append(
            AlignmentNode(
                name=name,
                config=build_config(entry.cls.Config, settings, path),
                entry=entry,
                path=path,
                label=label,
                weight=float(weight),
                teacher=str(teacher),
                termination=policy,
            )
        )
    return tuple(nodes)


def _check_sampler(sampling: SamplingConfig, objective: Node) -> None:
    """The DDPM ancestral sampler needs a discrete schedule (``objective: ddpm``) and guides every step."""
    if sampling.sampler != "ddpm":
        return
    if not hasattr(objective.entry.cls, "discrete_schedule"):
        raise RecipeError(
            f"the ddpm sampler needs an objective with a discrete schedule (objective: {{name: ddpm}}); objective "
            f"'{objective.name}' has none: use euler, heun or sde",
            "sampling.sampler",
        )
    if sampling.cfg_scale != 1.0 and sampling.guidance_interval != (0.0, 1.0):
        raise RecipeError(
            f"the ddpm sampler guides every step; leave guidance_low at 0 and guidance_high at 1 (got "
            f"[{sampling.guidance_low}, {sampling.guidance_high}]), or use the euler, heun or sde sampler",
            "sampling.guidance_high",
        )


def _check_termination(alignments: Sequence[AlignmentNode], termination: Node | None, watch: Sequence[Node]) -> None:
    if not alignments and (termination is not None or watch):
        raise RecipeError(
            "there is no alignment to terminate; remove this section or add an 'alignment' list",
            "termination",
        )
    orphans = [node.path for node in alignments if node.termination is None]
    if alignments and not orphans and termination is not None:
        raise RecipeError(
            "every alignment has its own termination, so this run-wide one would never apply; remove it (a "
            "'termination' section holding only 'watch: [...]' is allowed)",
            "termination",
        )
    if orphans and termination is None:
        watching = " (termination.watch policies only observe)" if watch else ""
        raise RecipeError(
            f"{orphans[0]} has no termination policy{watching}; add a run-wide 'termination' section "
            "(e.g. {name: fixed_step, step: 250000}, or {name: never} for REPA) or one on the alignment",
            "termination",
        )


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
    nodes = tuple(_component(item, registry, f"termination.watch[{index}]") for index, item in enumerate(items))
    return {key: value for key, value in raw.items() if key != "watch"}, nodes


def replace_run(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy of ``recipe`` with some ``run`` settings changed (used by tests and benchmarks)."""
    return dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, **changes))
