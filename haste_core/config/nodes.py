"""Component nodes of a recipe: ``{name: <registered name>, ...settings}`` checked against the component's
``Config``, plus the keys the core reads on data and alignment nodes (``global_batch_size``, ``weight``...)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from haste_core.config.coerce import build_config, to_plain
from haste_core.errors import RecipeError
from haste_core.registry import Entry, Registry

DEFAULT_ALIGNMENT_WEIGHT = 0.5  # lambda_proj = lambda_attn = 0.5 in REPA and HASTE


@dataclass(frozen=True)
class Node:
    """A validated component node: registry entry plus its Config, and where it sits in the YAML."""

    name: str
    config: Any
    entry: Entry
    path: str

    def build(self, **runtime: Any) -> Any:
        return self.entry.build(self.config, **runtime)

    def describe(self, **specs: Any) -> Any:
        """The component's ``describe`` for this node, its errors prefixed with the node's YAML path."""
        return self.call(lambda: self.entry.describe(self.config, **specs))

    def call(self, fn: Any) -> Any:
        """Run one of the component's recipe-time checks; its ``RecipeError`` names this node's YAML path."""
        try:
            return fn()
        except RecipeError as exc:
            raise exc.within(self.path) from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **to_plain(self.config)}


@dataclass(kw_only=True, frozen=True)
class DataCore:
    """The keys of the ``data`` node that the core reads."""

    global_batch_size: int  # summed over all processes
    num_workers: int = 0  # data-loading processes per training process
    micro_batch_size: int = 0  # samples per forward/backward on a process (gradient accumulation); 0: all at once

    def __post_init__(self) -> None:
        if self.micro_batch_size < 0:
            raise RecipeError(f"expected an integer of 0 or more, got {self.micro_batch_size}", "micro_batch_size")
        if self.global_batch_size < 1:
            raise RecipeError(f"expected a positive integer, got {self.global_batch_size}", "global_batch_size")
        if self.num_workers < 0:
            raise RecipeError(f"expected an integer of 0 or more, got {self.num_workers}", "num_workers")


@dataclass(frozen=True)
class DataNode(Node):
    core: DataCore

    @property
    def global_batch_size(self) -> int:
        return self.core.global_batch_size

    @property
    def num_workers(self) -> int:
        return self.core.num_workers

    @property
    def micro_batch_size(self) -> int:
        return self.core.micro_batch_size

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **to_plain(self.core)}


@dataclass(kw_only=True, frozen=True)
class AlignmentCore:
    """The keys of an alignment node that the core reads."""

    weight: float = DEFAULT_ALIGNMENT_WEIGHT  # multiplies the loss in the total
    teacher: str = ""  # key into the recipe's teachers; empty: the only one
    termination: Any = None  # this term's own policy node; None: the run-wide one

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise RecipeError(f"expected a number of 0 or more, got {self.weight}", "weight")


@dataclass(frozen=True)
class AlignmentNode(Node):
    label: str  # align/<label> in TensorBoard, the key of its state in checkpoints
    weight: float
    teacher: str  # key into Recipe.teachers
    termination: Node | None  # this term's own policy; None: the run's

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "weight": self.weight, "teacher": self.teacher}
        if self.termination is not None:
            out["termination"] = self.termination.to_dict()
        return out


def unique_labels(names: Sequence[str]) -> list[str]:
    """The labelling rule of alignments and watch policies: the registry name, or ``<name>_<index>`` (its index in
    the list) when two share a name."""
    return [name if list(names).count(name) == 1 else f"{name}_{index}" for index, name in enumerate(names)]


def split_node(raw: Any, path: str, core: type | None = None) -> tuple[str, dict[str, Any], Any]:
    """(name, the component's settings, the core keys as ``core`` (a dataclass) or None)."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"expected a component node like {{name: ..., ...settings}}, got {raw!r}", path)
    name = raw.get("name")
    if not isinstance(name, str):
        raise RecipeError("every component node needs 'name: <registered name>'", f"{path}.name")
    core_keys = set(core.__dataclass_fields__) if core is not None else set()
    settings = {k: v for k, v in raw.items() if k != "name" and k not in core_keys}
    core_values = build_config(core, {k: v for k, v in raw.items() if k in core_keys}, path) if core else None
    return name, settings, core_values


def component(raw: Any, registry: Registry, path: str) -> Node:
    name, settings, _ = split_node(raw, path)
    entry = lookup(registry, name, path)
    return Node(name=name, config=build_config(entry.cls.Config, settings, path), entry=entry, path=path)


def lookup(registry: Registry, name: str, path: str) -> Entry:
    if name not in registry:
        raise RecipeError(registry.unknown_message(name), f"{path}.name")
    return registry.get(name)


def data_node(raw: Any, registry: Registry, world_size: int) -> DataNode:
    name, settings, core = split_node(raw, "data", DataCore)
    entry = lookup(registry, name, "data")
    batch = core.global_batch_size
    if batch % world_size:
        lower, upper = batch - batch % world_size, batch + world_size - batch % world_size
        raise RecipeError(
            f"{batch} does not divide over {world_size} processes (WORLD_SIZE={world_size}); "
            f"use a multiple of {world_size}, such as {lower or upper} or {upper}",
            "data.global_batch_size",
        )
    per_rank, micro = batch // world_size, core.micro_batch_size
    if micro and per_rank % micro:
        raise RecipeError(
            f"{micro} does not divide the {per_rank} samples each of the {world_size} process(es) trains on per "
            f"step (global_batch_size {batch}); use a divisor of {per_rank}, or 0 for no accumulation",
            "data.micro_batch_size",
        )
    config = build_config(entry.cls.Config, settings, "data")
    return DataNode(name=name, config=config, entry=entry, path="data", core=core)


def alignment_nodes(
    raw: Any, registry: Registry, policies: Registry, teachers: Mapping[str, Node]
) -> tuple[AlignmentNode, ...]:
    if not isinstance(raw, list):
        raise RecipeError("expected a list of alignment nodes", "alignment")
    parts = [split_node(item, f"alignment[{index}]", AlignmentCore) for index, item in enumerate(raw)]
    labels = unique_labels([name for name, _, _ in parts])
    nodes = []
    for index, ((name, settings, core), label) in enumerate(zip(parts, labels, strict=True)):
        path = f"alignment[{index}]"
        entry = lookup(registry, name, path)
        policy = None if core.termination is None else component(core.termination, policies, f"{path}.termination")
        nodes.append(
            AlignmentNode(
                name=name,
                config=build_config(entry.cls.Config, settings, path),
                entry=entry,
                path=path,
                label=label,
                weight=core.weight,
                teacher=_teacher_key(core.teacher, teachers, path),
                termination=policy,
            )
        )
    return tuple(nodes)


def _teacher_key(key: str, teachers: Mapping[str, Node], path: str) -> str:
    if not key:
        if len(teachers) != 1:
            choices = ", ".join(teachers) or "none are defined"
            raise RecipeError(f"say which teacher this alignment uses (teachers: {choices})", f"{path}.teacher")
        return next(iter(teachers))
    if key not in teachers:
        close = difflib.get_close_matches(key, list(teachers), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(
            f"unknown teacher key {key!r}{hint}; defined: {', '.join(teachers) or 'none'}", f"{path}.teacher"
        )
    return key
