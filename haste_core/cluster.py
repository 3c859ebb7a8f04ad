"""Launching on clusters: a Slurm step that started ``python -m haste_core.run`` once per task without torchrun.

Each such task would see no torchrun variables, run as a single process, and write into the same run folder as
its siblings. Caught before anything is read or written, with the command that starts one job instead (one
torchrun per node, joined by torchrun's c10d rendezvous; docs/clusters.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from haste_core.errors import HasteError

# Set by torchrun (and by any launcher that speaks its protocol) for every process it starts.
TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE")


def slurm_command(args: Sequence[str]) -> str:
    """The command for an sbatch script: one torchrun per node, every GPU of the node, one rendezvous."""
    return (
        'srun --ntasks-per-node=1 torchrun --nnodes="$SLURM_NNODES" --nproc_per_node=gpu '
        '--rdzv_backend=c10d --rdzv_id="$SLURM_JOB_ID" '
        '--rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500" '
        f"-m haste_core.run {' '.join(args)}"
    )


def check_launcher(args: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """Fail when Slurm started several tasks of this program and torchrun started none of them."""
    environ = os.environ if environ is None else environ
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1")
    if "SLURM_PROCID" not in environ or tasks <= 1 or any(key in environ for key in TORCHRUN_VARIABLES):
        return
    raise HasteError(
        f"Slurm started {tasks} tasks of this program without torchrun, so each would train alone in the same run "
        f"folder; nothing was written. Start one torchrun per node instead (see docs/clusters.md):\n  "
        f"{slurm_command(args)}"
    )
