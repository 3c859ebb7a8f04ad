"""Every hook a haste plugin can implement.

The same text, with an example per hook, is in ``docs/plugin_hooks.md``; ``tests/api/test_hook_docs.py`` fails when
the two drift apart. Registration hooks fill name-keyed registries; lifecycle hooks observe a run and return
None; ``haste_resolve_weights`` answers a single question.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from haste_core.interfaces import RunContext
    from haste_core.registry import Registry

hookspec = pluggy.HookspecMarker("haste")
hookimpl = pluggy.HookimplMarker("haste")


# --- registration -------------------------------------------------------------------------------------------


@hookspec
def haste_register_students(registry: Registry) -> None:
    """Add student classes (subclasses of ``Student``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


@hookspec
def haste_register_teachers(registry: Registry) -> None:
    """Add teacher classes (subclasses of ``Teacher``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


@hookspec
def haste_register_alignments(registry: Registry) -> None:
    """Add alignment losses (subclasses of ``Alignment``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


@hookspec
def haste_register_terminations(registry: Registry) -> None:
    """Add termination policies (subclasses of ``Termination``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


@hookspec
def haste_register_objectives(registry: Registry) -> None:
    """Add training objectives (subclasses of ``Objective``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


@hookspec
def haste_register_datasets(registry: Registry) -> None:
    """Add data sets (subclasses of ``Dataset``) with ``registry.add(name, cls, **fixed)``.

    Called once per process, on every rank, before the recipe is validated. Every implementation runs.
    Registering a name that another plugin already registered raises an error naming both plugins.
    """


# --- lifecycle (observers) ----------------------------------------------------------------------------------


@hookspec
def haste_train_start(run: RunContext) -> None:
    """Observe the start of training, after every component is built and any checkpoint is loaded.

    Called once, on every rank (``run.is_main`` tells rank 0), before the first step of this process.
    ``run.step`` is 0 for a fresh run and the checkpoint's step for a resumed one. Return None.
    """


@hookspec
def haste_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """Observe the end of an optimiser step.

    Called after every optimiser step, on every rank, with the 1-based ``step`` just completed. ``metrics``
    is empty except on logging steps (every ``log_every`` steps of the recipe, the last step, and the step
    a termination fires), where it maps TensorBoard tags (``loss/total``, ``align/<name>``,
    ``perf/step_s``...) to values averaged over the steps since the previous logging step and across ranks,
    identical on every rank.
    Return None.
    """


@hookspec
def haste_histograms(run: RunContext, step: int, histograms: dict[str, Tensor]) -> None:
    """Observe distributions of the alignment, for histograms (the cosine similarities of ``repa``, say).

    Called on every rank at logging steps while an alignment is active, after ``haste_step_end``, with this
    rank's own values from the step's last forward pass: ``histograms`` maps a tag (``align/<label>/<name>``)
    to a detached 1-D tensor on the training device (an ``Alignment`` gives them by ``histograms()``). Moving
    them to the CPU is the implementation's cost; the TensorBoard monitor does it on rank 0 only. Return None.
    """


@hookspec
def haste_alignment_terminated(run: RunContext, step: int, alignment: str, reason: str) -> None:
    """Observe the termination of one alignment term (the end of its Phase I).

    Called on every rank, once per alignment, right after the optimiser step ``step`` at which its
    termination policy fired (``step`` is the last aligned step); ``alignment`` is the term's label as used
    in ``align/<label>`` and ``reason`` is the policy's explanation. Once the last alignment has stopped,
    the teacher is gone. Return None.
    """


@hookspec
def haste_checkpoint_saved(run: RunContext, step: int, path: Path) -> None:
    """Observe a checkpoint that was written completely and atomically to ``path``.

    Called on every rank after the save of step ``step`` finished (only rank 0 writes; the others have waited
    for it). Return None.
    """


@hookspec
def haste_samples_saved(run: RunContext, step: int, grid: object, path: Path) -> None:
    """Observe a grid of samples drawn from the EMA student and written as a PNG to ``path``.

    Called on rank 0 only (the rank that samples), every ``sample_every`` steps of the recipe and at the end of
    training. ``grid`` is a uint8 tensor of shape C×H×W holding the picture that was written. Return None.
    """


@hookspec
def haste_images(run: RunContext, step: int, images: dict[str, Tensor]) -> None:
    """Observe pictures drawn beside the sample grid: the attention maps of the alignments.

    Called on rank 0 only, at the same steps as ``haste_samples_saved``, when an alignment has an
    ``attention_view``. ``images`` maps a tag (``attention/<label>/<pair>``) to a uint8 C×H×W tensor on the
    CPU, also written as a PNG under ``<run>/attention/``. While aligned, the left half of a picture is the
    teacher's maps and the right half the student's; after termination it holds the student's maps alone.
    Return None.
    """


@hookspec
def haste_train_end(run: RunContext) -> None:
    """Observe the end of training, whether it finished or failed.

    Called once, on every rank, when the loop stops; ``run.error`` is None after a normal finish and holds
    the exception otherwise (it is re-raised afterwards). Use it to flush and close what you opened.
    Return None.
    """


# --- single answers -----------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def haste_resolve_weights(kind: str, name: str) -> Path | None:
    """Return a local file holding the weights of component ``name`` of family ``kind``, or None.

    ``kind`` is ``"teacher"`` or ``"student"``. Called on every rank that builds the component, before any
    download or cache lookup, so that a site plugin can point every teacher at a mirror. Stops at the first
    non-None result; mark your implementation ``tryfirst=True`` to take precedence over other plugins.
    """
