"""``torch.compile`` of the student (and, if asked, the teachers' ``encode``), per the recipe's ``compile`` section.

The student is compiled in place (``nn.Module.compile``: parameter names and checkpoints unchanged). Its forward
has no graph break, so a step runs one graph; what the student captures is part of the graph's guards, so the
phase change (capture on → off) recompiles once, and the trainer says so. Everything else that calls the
student (the EMA copy, the FLOP count, the attention pictures) runs eagerly.

Under FSDP2 each block is compiled instead (``per_block``): every block is an FSDP unit whose all-gather hooks run
around it, outside the graph, as in torchtitan; the embedders and the final layer stay eager.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from haste_core.config.speed import CompileConfig
from haste_core.interfaces import Teacher

log = logging.getLogger("haste")


def compile_student(student: nn.Module, config: CompileConfig, per_block: bool = False) -> None:
    if not config.student:
        return
    blocks = getattr(student, "blocks", None) if per_block else None
    for module in blocks if isinstance(blocks, nn.ModuleList) else [student]:
        module.compile(mode=config.mode, backend=config.backend)


def compile_teachers(teachers: dict[str, Teacher], config: CompileConfig) -> None:
    if config.teacher:
        for teacher in teachers.values():
            teacher.encode = torch.compile(teacher.encode, mode=config.mode, backend=config.backend)


def note_phase_change(config: CompileConfig, step: int) -> None:
    if config.student:
        log.info(f"step {step}: the compiled student recompiles once for the new capture (expected, not per step)")
