"""FSDP2 (``distributed.strategy: fsdp2``): the student, its EMA and the alignment heads sharded over the processes.

Each student block is one ``fully_shard`` unit, and the student's remaining parameters (embedders, final layer)
another, so a forward all-gathers one block at a time and a backward reduce-scatters its gradients; every rank
then holds 1/N of the parameters, gradients, Adam moments and EMA. The EMA copy is sharded exactly like the
student, so its update is a local lerp of shards. Each alignment's heads are a unit of their own, so the phase
change drops them without touching the student. Teachers are frozen and replicated. With bf16 precision the
units all-gather bf16 parameters and reduce fp32 gradients (``MixedPrecisionPolicy``); autocast stays on, so the
losses are computed as under DDP.

Sampling, the in-training FID and the attention pictures need whole models: ``full_copy`` gathers one
(collective: every rank calls it) into an unsharded copy built from a parameter-free template, used, then freed.
With one process nothing is sharded; checkpoints are still sharded folders, so a run moves between process
counts in either direction.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from haste_core.distributed import DistEnv


class Sharding:
    """How this run shards its modules (``None`` mesh with one process: modules stay whole)."""

    def __init__(self, env: DistEnv, precision: str, template: nn.Module) -> None:
        self.device = env.device
        self.mesh = init_device_mesh(env.device.type, (env.world_size,)) if env.world_size > 1 else None
        bf16 = torch.bfloat16 if precision == "bf16" else None
        self.policy = MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=torch.float32 if bf16 else None)
        # the student's architecture without storage: what a gathered copy is built from
        self.template = copy.deepcopy(template).to("meta")

    def shard_student(self, student: nn.Module) -> None:
        """Shard every block, then the rest of the student (in place; parameter names are unchanged)."""
        if self.mesh is None:
            return
        for block in getattr(student, "blocks", []):
            fully_shard(block, mesh=self.mesh, mp_policy=self.policy)
        fully_shard(student, mesh=self.mesh, mp_policy=self.policy)

    def shard_heads(self, module: nn.Module) -> None:
        """An alignment's heads as one unit (an alignment without parameters stays as it is)."""
        if self.mesh is not None and any(True for _ in module.parameters()):
            fully_shard(module, mesh=self.mesh, mp_policy=self.policy)

    def full_copy(self, student: nn.Module) -> nn.Module:
        """An unsharded copy of a sharded student (or EMA) on every rank; the module itself when not sharded."""
        if self.mesh is None:
            return student
        whole = copy.deepcopy(self.template).to_empty(device=self.device)
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in student.state_dict().items()}
        whole.load_state_dict(state)
        return whole.train(student.training).requires_grad_(False)


def fsdp_units(module: nn.Module) -> list[FSDPModule]:
    """The FSDP units inside ``module`` (the training module holds the student's and the heads')."""
    return [m for m in module.modules() if isinstance(m, FSDPModule)]
