"""TensorBoard monitor: writes a run's metrics, termination events, sample grids and attention pictures (rank 0).

Event files go to ``<run_dir>/tensorboard/``. Scalars are the tags of the ``metrics`` that ``haste_step_end``
receives (``loss/total``, ``loss/denoise``, ``align/<label>``, ``align/active``, ``optim/lr``,
``optim/grad_norm``, ``perf/step_s``, ``perf/samples_per_s``, ``perf/peak_mem_mb``, ``termination/fired``),
already averaged over steps and ranks; the resolved recipe is text, and each alignment's termination is text
under its own tag (``termination/<label>``, so two alignments stopping at one step are two texts); sample grids
are images under ``samples/ema``, attention pictures (``haste_images``) under ``attention/<label>/<pair>``;
alignment distributions (``haste_histograms``, e.g. ``align/repa/cosine``) are histograms of rank 0's values.
The HParams tab compares runs by their settings (``hparams.py``) and the final ``loss/total`` and
``loss/denoise``. Block it with ``HASTE_BLOCK_PLUGINS=monitor.tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haste_core import RunContext, hookimpl
from haste_tensorboard.hparams import METRICS, hparams

_writers: dict[Path, Any] = {}  # run folder -> SummaryWriter, for the runs of this process


@hookimpl
def haste_train_start(run: RunContext) -> None:
    if not run.is_main:
        return
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    # A resumed run re-logs the steps after its checkpoint: hide what a crashed process wrote for them.
    writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=run.step + 1 if run.step else None)
    writer.add_text("recipe", "```yaml\n" + run.recipe.to_yaml() + "```", global_step=run.step)
    # the HParams tab: settings now, metrics are the last values of the METRICS scalars whenever it is read
    for summary in hparams_summaries(hparams(run.recipe), dict.fromkeys(METRICS, 0.0)):
        writer.file_writer.add_summary(summary, global_step=run.step)
    _writers[run.run_dir] = writer


@hookimpl
def haste_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    writer = _writers.get(run.run_dir)
    if writer is None or not metrics:
        return
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, global_step=step)


@hookimpl
def haste_histograms(run: RunContext, step: int, histograms: dict[str, Any]) -> None:
    writer = _writers.get(run.run_dir)
    if writer is None:
        return
    for tag, values in histograms.items():
        writer.add_histogram(tag, values.detach().float().cpu(), global_step=step)


@hookimpl
def haste_alignment_terminated(run: RunContext, step: int, alignment: str, reason: str) -> None:
    writer = _writers.get(run.run_dir)
    if writer is not None:
        text = f"step {step}: alignment `{alignment}` stopped ({reason})"
        writer.add_text(f"termination/{alignment}", text, global_step=step)


@hookimpl
def haste_samples_saved(run: RunContext, step: int, grid: Any, path: Path) -> None:
    writer = _writers.get(run.run_dir)
    if writer is not None:
        writer.add_image("samples/ema", grid, global_step=step, dataformats="CHW")


@hookimpl
def haste_images(run: RunContext, step: int, images: dict[str, Any]) -> None:
    writer = _writers.get(run.run_dir)
    if writer is not None:
        for tag, picture in images.items():
            writer.add_image(tag, picture, global_step=step, dataformats="CHW")


@hookimpl
def haste_checkpoint_saved(run: RunContext, step: int, path: Path) -> None:
    writer = _writers.get(run.run_dir)
    if writer is not None:
        writer.flush()


@hookimpl
def haste_train_end(run: RunContext) -> None:
    writer = _writers.pop(run.run_dir, None)
    if writer is not None:
        writer.close()
